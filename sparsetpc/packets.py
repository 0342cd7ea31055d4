"""larnd-sim's output format: LArPix ``Packet_v2`` rows in an HDF5 file (LArPix+HDF5 format version 2.4).

Written here with numpy and h5py (no larpix-control dependency; docs/validation.md says why).  The layout of a
file, as larnd-sim's ``fee.export_to_hdf5`` writes it through larpix-control 3.7.0:

* ``packets`` (:data:`PACKET_DTYPE`), attribute ``packet_types``; ``mc_packets_assn`` (``track_ids`` (5,) i8 per
  packet, -1 = none); ``messages`` and ``configs`` (empty); group ``_header`` with attributes ``version``
  ('2.4'), ``created`` and ``modified`` (unix time).
* per event: a timestamp packet (packet_type 4), two trigger packets (packet_type 7, io_group 1 and 2,
  trigger_type 2, timestamp = event x 6000 clock ticks, i.e. events are 600 µs windows), then one data packet
  (packet_type 0) per readout in pixel order (larnd-sim pixel id, then readout slot): chip key from the layout,
  ``dataword`` = ADC, ``timestamp`` = event x 6000 + floor(t / 0.1 µs), ``first_packet`` = 1, odd parity.
* readouts on chips that ``tile_chip_to_io`` does not list, and on the tile-edge channels that larnd-sim's
  writer treats as disabled (:func:`larndsim_disabled`), are not written.

The 64-bit ``Packet_v2`` word (bit 0 first): packet_type 0-1, chip_id 2-9, channel_id 10-15, timestamp
16-46, first_packet 47, dataword 48-55, trigger_type 56-57, local_fifo 58-59, shared_fifo 60-61,
downstream_marker 62, parity 63 = 1 - (number of set bits in 0-62 mod 2).  From format 2.3 on every column of
a row is filled from the bits whatever the packet type, so data packets also carry ``register_address``
(bits 10-17) and ``register_data`` (bits 18-25).

Time axis.  The commit of larnd-sim behind the reference files puts a readout at ``linspace(0, 600, 6004)[ic]``
(step 600/6003 µs) for crossing tick ``ic`` and writes ``floor(that / 0.1)``, which is one less than ``ic``
for most ticks.  :func:`write_packets` writes ``floor(t / 0.1 µs)`` of the true time by default
(``time_axis="clock"``) or reproduces larnd-sim's numbers (``time_axis="larnd-sim"``), and records which in
the root attribute ``sparsetpc_time_axis``; :func:`read_packets` undoes either (a file without the attribute
is taken to come from larnd-sim).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .exceptions import GeometryError, InputFormatError
from .hits import HIT_DTYPE
from .io import atomic_write

#: ``packets`` row of LArPix+HDF5 format 2.4 (larpix-control ``hdf5format.dtypes['2.4']['packets']``).
PACKET_DTYPE = np.dtype([
    ("io_group", "u1"), ("io_channel", "u1"), ("chip_id", "u1"), ("packet_type", "u1"),
    ("downstream_marker", "u1"), ("parity", "u1"), ("valid_parity", "u1"), ("channel_id", "u1"),
    ("timestamp", "<u8"), ("dataword", "u1"), ("trigger_type", "u1"), ("local_fifo", "u1"),
    ("shared_fifo", "u1"), ("register_address", "u1"), ("register_data", "u1"), ("direction", "u1"),
    ("local_fifo_events", "u1"), ("shared_fifo_events", "<u2"), ("counter", "<u4"),
    ("fifo_diagnostics_enabled", "u1"), ("first_packet", "u1"), ("receipt_timestamp", "<u4"),
])
MC_ASSN_DTYPE = np.dtype([("track_ids", "<i8", (5,))])
MESSAGE_DTYPE = np.dtype([("message", "S64"), ("timestamp", "<u8"), ("index", "<u4")])
CONFIG_DTYPE = np.dtype([("timestamp", "<u8"), ("io_group", "u1"), ("io_channel", "u1"), ("chip_id", "u1"),
                         ("registers", "u1", (239,))])
FORMAT_VERSION = "2.4"
PACKET_TYPES_ATTR = ("\n0: 'data',\n1: 'test',\n2: 'config write',\n3: 'config read',\n"
                     "4: 'timestamp',\n5: 'message',\n")

DATA_PACKET, TIMESTAMP_PACKET, TRIGGER_PACKET = 0, 4, 7
CLOCK_US = 0.1                 #: LArPix clock tick [µs]
EVENT_WINDOW_TICKS = 6000      #: larnd-sim: 3 x time_interval[1] (200 µs) / 0.1 µs
TIMESTAMP_LIMIT = 1 << 31      #: the data-packet timestamp has 31 bits
ADC_MAX = 255
#: larnd-sim's per-event time axis: linspace(0, 600, 6004) (physics.md §2.7)
LARNDSIM_TIME_TICKS = np.linspace(0.0, 600.0, 6004)
TIME_AXES = ("clock", "larnd-sim")

# Tile-edge channels larnd-sim's writer skips (fee.py of the reference commit), as (chips, channels):
# the row of channels along the top edge of the top chip row, the bottom edge of the bottom chip row and the
# inner edge of the last chip column.  In layout 2.2.16's wiring these are exactly the pixels with j = 69,
# j = 0 and i = 69 of the tile's wiring frame (tests/test_packets.py checks it).
_DISABLED = (
    (tuple(range(11, 21)), (1, 2, 3, 60, 61, 62, 63)),
    (tuple(range(101, 111)), (28, 29, 30, 31, 33, 34, 35)),
    (tuple(range(20, 111, 10)), (35, 41, 45, 48, 52, 53, 60)),
)


def larndsim_disabled(chip_id, channel_id) -> np.ndarray:
    """True for the (chip, channel) pairs that larnd-sim's packet writer does not write (vectorised)."""
    chip = np.asarray(chip_id, dtype=np.int64)
    channel = np.asarray(channel_id, dtype=np.int64)
    out = np.zeros(np.broadcast(chip, channel).shape, dtype=bool)
    for chips, channels in _DISABLED:
        out |= np.isin(chip, chips) & np.isin(channel, channels)
    return out


def _popcount_parity(word: np.ndarray) -> np.ndarray:
    """LArPix odd parity bit of the low 63 bits of each word."""
    low = word & np.uint64((1 << 63) - 1)
    return (1 - (np.bitwise_count(low).astype(np.int64) % 2)).astype(np.uint8)


def data_packet_rows(io_group, io_channel, chip_id, channel_id, timestamp, dataword) -> np.ndarray:
    """``packets`` rows of data packets (first_packet = 1, normal trigger, parity assigned)."""
    n = np.broadcast(np.asarray(io_group), np.asarray(timestamp)).shape
    rows = np.zeros(n, dtype=PACKET_DTYPE)
    fields = dict(io_group=io_group, io_channel=io_channel, chip_id=chip_id, channel_id=channel_id,
                  timestamp=timestamp, dataword=dataword)
    limits = dict(io_group=255, io_channel=255, chip_id=255, channel_id=63, timestamp=TIMESTAMP_LIMIT - 1,
                  dataword=ADC_MAX)
    for name, value in fields.items():
        value = np.asarray(value, dtype=np.int64)
        if value.size and (value.min() < 0 or value.max() > limits[name]):
            raise InputFormatError(f"packet field {name} out of range [0, {limits[name]}]: "
                                   f"{value.min()}..{value.max()}")
        rows[name] = value
    word = (rows["packet_type"].astype(np.uint64)
            | rows["chip_id"].astype(np.uint64) << np.uint64(2)
            | rows["channel_id"].astype(np.uint64) << np.uint64(10)
            | rows["timestamp"].astype(np.uint64) << np.uint64(16)
            | np.uint64(1) << np.uint64(47)
            | rows["dataword"].astype(np.uint64) << np.uint64(48))
    rows["first_packet"] = 1
    rows["parity"] = _popcount_parity(word)
    rows["valid_parity"] = 1
    rows["register_address"] = ((word >> np.uint64(10)) & np.uint64(0xFF)).astype(np.uint8)
    rows["register_data"] = ((word >> np.uint64(18)) & np.uint64(0xFF)).astype(np.uint8)
    return rows


def packet_parity_ok(rows: np.ndarray) -> np.ndarray:
    """Whether each data-packet row's parity bit matches its other fields."""
    word = (rows["packet_type"].astype(np.uint64) & np.uint64(3)
            | rows["chip_id"].astype(np.uint64) << np.uint64(2)
            | (rows["channel_id"].astype(np.uint64) & np.uint64(63)) << np.uint64(10)
            | (rows["timestamp"].astype(np.uint64) & np.uint64(TIMESTAMP_LIMIT - 1)) << np.uint64(16)
            | (rows["first_packet"].astype(np.uint64) & np.uint64(1)) << np.uint64(47)
            | rows["dataword"].astype(np.uint64) << np.uint64(48)
            | (rows["trigger_type"].astype(np.uint64) & np.uint64(3)) << np.uint64(56)
            | (rows["local_fifo"].astype(np.uint64) & np.uint64(3)) << np.uint64(58)
            | (rows["shared_fifo"].astype(np.uint64) & np.uint64(3)) << np.uint64(60)
            | (rows["downstream_marker"].astype(np.uint64) & np.uint64(1)) << np.uint64(62))
    return _popcount_parity(word) == rows["parity"]


def clock_ticks(t_us, time_axis: str = "clock") -> np.ndarray:
    """Packet timestamps (event-relative, int64) of true times ``t_us`` [µs].

    ``clock``: floor(t / 0.1) (times on the 0.1 µs tick axis are taken to their tick, ignoring rounding
    noise below 1e-6 tick).  ``larnd-sim``: the tick ``ic = round(t / 0.1)`` is placed at
    ``linspace(0, 600, 6004)[ic]`` and floored as larnd-sim's writer does (ic must be < 6004).
    """
    t = np.asarray(t_us, dtype=np.float64)
    if not np.isfinite(t).all():
        raise InputFormatError("hit times must be finite")
    if (t < 0).any():
        raise InputFormatError(f"hit times must be >= 0 µs on the event axis, got min {t.min()}")
    if time_axis == "clock":
        return np.floor(t / CLOCK_US + 1e-6).astype(np.int64)
    if time_axis == "larnd-sim":
        ic = np.rint(t / CLOCK_US).astype(np.int64)
        if ic.size and ic.max() >= len(LARNDSIM_TIME_TICKS):
            raise InputFormatError(f"time {t.max()} µs is beyond larnd-sim's 600.3 µs event axis")
        return np.floor(LARNDSIM_TIME_TICKS[ic] / CLOCK_US).astype(np.int64)
    raise ValueError(f"time_axis must be one of {TIME_AXES}, got {time_axis!r}")


def times_from_ticks(ticks, time_axis: str = "clock") -> np.ndarray:
    """Inverse of :func:`clock_ticks`: true time [µs] of event-relative packet timestamps.

    ``larnd-sim``: the smallest crossing tick whose larnd-sim timestamp equals ``ticks``, times 0.1 µs (exact
    except at timestamps 0, 2000 and 4000, which ticks 0/1, 2001/2002 and 4002/4003 share).
    """
    ticks = np.asarray(ticks, dtype=np.int64)
    if time_axis == "clock":
        return ticks * CLOCK_US
    if time_axis == "larnd-sim":
        table = np.floor(LARNDSIM_TIME_TICKS / CLOCK_US).astype(np.int64)     # nondecreasing
        ic = np.searchsorted(table, ticks, side="left")
        inside = (ic < len(table))
        inside[inside] &= table[ic[inside]] == ticks[inside]
        # beyond the table: exact-arithmetic inverse of floor(ic * 6000 / 6003)
        ic = np.where(inside, ic, (ticks * 6003 + 5999) // 6000)
        return ic * CLOCK_US
    raise ValueError(f"time_axis must be one of {TIME_AXES}, got {time_axis!r}")


def _as_hit_table(hits) -> np.ndarray:
    if hasattr(hits, "to_numpy") and not isinstance(hits, np.ndarray):
        hits = hits.to_numpy()
    hits = np.asarray(hits)
    if hits.dtype.names is None:
        raise InputFormatError("hits must be a structured array with sparsetpc.hits.HIT_DTYPE fields or a Hits object")
    missing = [f for f in ("event_id", "pixel_plane", "pixel_ix", "pixel_iy", "t", "adc", "readout")
               if f not in hits.dtype.names]
    if missing:
        raise InputFormatError(f"hit table lacks field(s) {', '.join(missing)}")
    return hits


@dataclass
class PacketWriteSummary:
    path: str
    n_hits: int
    n_data_packets: int
    n_unconnected: int      # readouts on chips absent from tile_chip_to_io
    n_disabled: int         # readouts on larnd-sim's disabled tile-edge channels
    n_events: int


def write_packets(path, hits, layout, *, track_ids: Optional[np.ndarray] = None, time_axis: str = "clock",
                  drop_disabled: bool = True) -> PacketWriteSummary:
    """Write readouts as a larnd-sim-compatible packets HDF5 file (atomically).

    ``hits``: :class:`sparsetpc.hits.Hits` or a structured array with ``HIT_DTYPE`` fields (t in µs on the
    event axis, ADC with pedestal).  ``layout``: :class:`sparsetpc.layout.PixelLayout` with wiring (from the
    YAML).  ``track_ids`` [N, 5] int: ``mc_packets_assn`` rows per hit (default -1).  ``time_axis``: see the
    module docstring.  ``drop_disabled``: skip larnd-sim's disabled edge channels, as larnd-sim does.
    The dataword is floor(ADC) clipped to 0..255 (larnd-sim: ``int(adc)``).
    """
    if time_axis not in TIME_AXES:
        raise ValueError(f"time_axis must be one of {TIME_AXES}, got {time_axis!r}")
    layout.require_wiring("writing LArPix packets")
    hits = _as_hit_table(hits)
    n = len(hits)
    if track_ids is None:
        track_ids = np.full((n, 5), -1, dtype=np.int64)
    track_ids = np.asarray(track_ids, dtype=np.int64)
    if track_ids.shape != (n, 5):
        raise InputFormatError(f"track_ids must have shape ({n}, 5), got {track_ids.shape}")
    event = np.asarray(hits["event_id"], dtype=np.int64)
    plane, ix, iy = (np.asarray(hits[f], dtype=np.int64) for f in ("pixel_plane", "pixel_ix", "pixel_iy"))
    nx = layout.n_pixels[0]
    order = np.lexsort((np.asarray(hits["readout"]), iy, ix + nx * plane, event))
    hits, track_ids, event, plane, ix, iy = (a[order] for a in (hits, track_ids, event, plane, ix, iy))
    if n and event.min() < 0:
        raise InputFormatError("event ids must be >= 0")
    try:
        io_group, io_channel, chip, channel = layout.pixel_to_channel(plane, ix, iy)
    except GeometryError as error:
        raise InputFormatError(f"hits do not fit layout {layout.source}: {error}") from error
    connected = io_group >= 0
    disabled = connected & larndsim_disabled(chip, channel) if drop_disabled else np.zeros(n, bool)
    keep = connected & ~disabled
    adc = np.asarray(hits["adc"], dtype=np.float64)
    if not np.isfinite(adc).all():
        raise InputFormatError("hit ADC values must be finite")
    dataword = np.clip(np.floor(adc), 0, ADC_MAX).astype(np.int64)
    ticks = event * EVENT_WINDOW_TICKS + clock_ticks(hits["t"], time_axis)
    if n and ticks.max() >= TIMESTAMP_LIMIT:
        raise InputFormatError(f"event {event.max()}: timestamp {ticks.max()} does not fit the 31-bit packet "
                               "timestamp (event ids above 357913 cannot be written)")

    rows, assn = [], []
    none = np.full((1, 5), -1, dtype=np.int64)
    events = np.unique(event)
    starts = np.searchsorted(event, events, side="left")
    stops = np.searchsorted(event, events, side="right")
    for ev, a, b in zip(events, starts, stops):
        header = np.zeros(3, dtype=PACKET_DTYPE)
        header["packet_type"] = (TIMESTAMP_PACKET, TRIGGER_PACKET, TRIGGER_PACKET)
        header["timestamp"] = (ev, ev * EVENT_WINDOW_TICKS, ev * EVENT_WINDOW_TICKS)
        header["io_group"] = (0, 1, 2)
        header["trigger_type"] = (0, 2, 2)
        rows.append(header)
        assn.append(np.repeat(none, 3, axis=0))
        sel = np.arange(a, b)[keep[a:b]]
        rows.append(data_packet_rows(io_group[sel], io_channel[sel], chip[sel], channel[sel], ticks[sel],
                                     dataword[sel]))
        assn.append(track_ids[sel])
    packets = np.concatenate(rows) if rows else np.zeros(0, dtype=PACKET_DTYPE)
    mc = np.zeros(len(packets), dtype=MC_ASSN_DTYPE)
    if len(packets):
        mc["track_ids"] = np.concatenate(assn)
    _write_file(Path(path), packets, mc, time_axis)
    return PacketWriteSummary(path=str(path), n_hits=n, n_data_packets=int(keep.sum()),
                              n_unconnected=int((~connected).sum()), n_disabled=int(disabled.sum()),
                              n_events=len(events))


def _write_file(path: Path, packets: np.ndarray, mc: np.ndarray, time_axis: str) -> None:
    import h5py
    directory = path.resolve().parent
    if not directory.is_dir():
        raise InputFormatError(f"{path}: directory {directory} does not exist")
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            header = f.create_group("_header")
            now = time.time()
            header.attrs["version"] = FORMAT_VERSION
            header.attrs["created"] = now
            header.attrs["modified"] = now
            dset = f.create_dataset("packets", data=packets, maxshape=(None,), dtype=PACKET_DTYPE)
            dset.attrs["packet_types"] = PACKET_TYPES_ATTR
            f.create_dataset("messages", shape=(0,), maxshape=(None,), dtype=MESSAGE_DTYPE)
            f.create_dataset("configs", shape=(0,), maxshape=(None,), dtype=CONFIG_DTYPE)
            f.create_dataset("mc_packets_assn", data=mc, dtype=MC_ASSN_DTYPE)
            f.attrs["sparsetpc_time_axis"] = time_axis


@dataclass
class PacketFile:
    """Data packets of a packets file decoded to pixels (one entry per written readout)."""

    hits: np.ndarray               # HIT_DTYPE, in file order
    packet_index: np.ndarray       # row of ``packets`` of each hit
    track_ids: Optional[np.ndarray]  # [N, 5] from mc_packets_assn, or None
    time_axis: str                 # axis the timestamps were decoded with ("clock", "larnd-sim" or "raw")
    n_events_without_data: int     # trigger groups with no data packet after them


def read_packets(path, layout, borders: Optional[np.ndarray] = None, time_axis: str = "auto") -> PacketFile:
    """Read a packets HDF5 file into a hit table.

    Events: each new trigger-packet timestamp opens an event ``timestamp // 6000``; a data packet before any
    trigger goes to event ``timestamp // 6000``.  ``t`` = true µs after the event start, decoded per the
    file's ``sparsetpc_time_axis`` attribute (absent: larnd-sim's axis) when ``time_axis='auto'``, or as
    given (``'clock'``, ``'larnd-sim'``, or ``'raw'`` = timestamp x 0.1 µs without any correction).  ``readout``
    counts the pixel's packets in file order.  ``borders``: plane borders [n_planes, 3, 2] cm for x, y (default
    module 0 with this layout).  Raises :class:`InputFormatError` naming the file and the problem.
    """
    import h5py
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as error:
        raise InputFormatError(f"{path}: cannot open as HDF5 ({error})") from error
    with handle:
        if "packets" not in handle:
            raise InputFormatError(f"{path}: no dataset 'packets' (found: {', '.join(handle.keys()) or 'nothing'}); "
                                   "not a larnd-sim/LArPix packets file")
        packets = handle["packets"][()]
        need = ("io_group", "io_channel", "chip_id", "packet_type", "channel_id", "timestamp", "dataword")
        names = packets.dtype.names or ()
        missing = [f for f in need if f not in names]
        if missing:
            raise InputFormatError(f"{path}: dataset 'packets' lacks field(s) {', '.join(missing)}")
        track_ids = None
        if "mc_packets_assn" in handle:
            assn = handle["mc_packets_assn"][()]
            if assn.dtype.names and "track_ids" in assn.dtype.names and len(assn) == len(packets):
                ids = np.asarray(assn["track_ids"])
                track_ids = ids.reshape(len(assn), -1) if len(assn) else ids.reshape(0, max(ids.size, 5))
        file_axis = handle.attrs.get("sparsetpc_time_axis", "larnd-sim")
        if isinstance(file_axis, bytes):
            file_axis = file_axis.decode()
    if time_axis == "auto":
        time_axis = str(file_axis)
    if time_axis not in TIME_AXES + ("raw",):
        raise InputFormatError(f"{path}: unknown time axis {time_axis!r}")

    ptype = packets["packet_type"].astype(np.int64)
    stamp = packets["timestamp"].astype(np.int64)
    # event of each packet: the latest trigger's timestamp, else the packet's own window
    trig = ptype == TRIGGER_PACKET
    last_trigger = np.where(trig, np.arange(len(packets)), -1)
    last_trigger = np.maximum.accumulate(last_trigger) if len(packets) else last_trigger
    window_start = np.where(last_trigger >= 0, stamp[np.maximum(last_trigger, 0)],
                            (stamp // EVENT_WINDOW_TICKS) * EVENT_WINDOW_TICKS)
    data = np.flatnonzero(ptype == DATA_PACKET)
    trigger_starts = np.unique(stamp[trig])
    n_empty = int(len(set(trigger_starts.tolist()) - set(window_start[data].tolist())))

    d = packets[data]
    plane, ix, iy = layout.channel_to_pixel(d["io_group"], d["io_channel"], d["chip_id"], d["channel_id"])
    unknown = plane < 0
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        raise InputFormatError(
            f"{path}: mismatched layout: {int(unknown.sum())} data packet(s) name channels that layout "
            f"{layout.source} does not have (first: packet {int(data[k])}, io_group {d['io_group'][k]}, "
            f"io_channel {d['io_channel'][k]}, chip {d['chip_id'][k]}, channel {d['channel_id'][k]})")
    rel = stamp[data] - window_start[data]
    if (rel < 0).any():
        raise InputFormatError(f"{path}: data packet timestamps precede their trigger")
    hits = np.zeros(len(data), dtype=HIT_DTYPE)
    hits["event_id"] = window_start[data] // EVENT_WINDOW_TICKS
    hits["pixel_plane"], hits["pixel_ix"], hits["pixel_iy"] = plane, ix, iy
    hits["t"] = rel * CLOCK_US if time_axis == "raw" else times_from_ticks(rel, time_axis)
    hits["adc"] = d["dataword"]
    if borders is None:
        from .detector import MODULE0_PROPERTIES
        borders = layout.tpc_borders(MODULE0_PROPERTIES["tpc_centers"], MODULE0_PROPERTIES["drift_length"])
    hits["x"], hits["y"] = layout.pixel_center(borders, plane, ix, iy)
    # readout slot: running count per (event, pixel) in file order
    key = ((hits["event_id"].astype(np.int64) * layout.n_planes + plane) * layout.n_pixels[0] + ix) \
        * layout.n_pixels[1] + iy
    order = np.lexsort((np.arange(len(key)), key))
    sorted_key = key[order]
    first = np.r_[True, sorted_key[1:] != sorted_key[:-1]] if len(key) else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0)) if len(key) else first
    slot = np.empty(len(key), dtype=np.int64)
    slot[order] = np.arange(len(key)) - group_start
    hits["readout"] = slot
    return PacketFile(hits=hits, packet_index=data, track_ids=None if track_ids is None else track_ids[data],
                      time_axis=time_axis, n_events_without_data=n_empty)
