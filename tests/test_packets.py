"""larnd-sim packets HDF5: writer reproduces larnd-sim's files, reader recovers every readout."""
import os

import h5py
import numpy as np
import pytest

from sparsetpc.exceptions import GeometryError, InputFormatError
from sparsetpc.hits import HIT_DTYPE
from sparsetpc.layout import PixelLayout, from_larnd_pixel_id
from sparsetpc.packets import (CONFIG_DTYPE, LARNDSIM_TIME_TICKS, MC_ASSN_DTYPE, MESSAGE_DTYPE, PACKET_DTYPE,
                               clock_ticks, data_packet_rows, larndsim_disabled, packet_parity_ok, read_packets,
                               times_from_ticks, write_packets)
from validation.run_reference import shared_data_dir

SHARED = shared_data_dir()
REASON = "shared data not found (set SPARSETPC_SHARED_DATA or place it at <repo>/../shared/data)"
needs_shared = pytest.mark.skipif(SHARED is None, reason=REASON)
#: case -> (data packets written, readouts in the original npz, unconnected-chip readouts, disabled-edge readouts)
CASES = {"test_track0": (106, 122, 15, 1), "mixed_trk0": (9, 12, 0, 3), "mixed_trk1": (32, 32, 0, 0),
         "mixed_trk4": (31, 31, 0, 0)}


@pytest.fixture(scope="module")
def layout():
    if SHARED is None:
        pytest.skip(REASON)
    return PixelLayout.from_yaml(SHARED / "detector" / "multi_tile_layout-2.2.16.yaml")


def original_hits(case):
    """Readouts of reference/original/<case>_nd_njit.npz as a HIT_DTYPE table (t in true µs) + track ids."""
    o = np.load(SHARED / "reference" / "original" / f"{case}_nd_njit.npz")
    hi = o["hits_index"]
    plane, ix, iy = from_larnd_pixel_id(o["pixel_ids"][hi[:, 0]])
    h = np.zeros(len(hi), HIT_DTYPE)
    h["pixel_plane"], h["pixel_ix"], h["pixel_iy"] = plane, ix, iy
    h["t"] = o["ticks"][hi[:, 0], hi[:, 1]] * 6003 / 600 * 0.1
    h["adc"] = o["adc"][hi[:, 0], hi[:, 1]]
    h["readout"] = hi[:, 1]
    return h, o["backtracked_id"][hi[:, 0], hi[:, 1]], o


def reference_file(case):
    return SHARED / "reference" / "larndsim_packets" / f"{case}_larndsim_packets.h5"


@needs_shared
def test_dtypes_and_header_match_reference():
    with h5py.File(reference_file("mixed_trk1"), "r") as f:
        assert f["packets"].dtype == PACKET_DTYPE
        assert f["mc_packets_assn"].dtype == MC_ASSN_DTYPE
        assert f["messages"].dtype == MESSAGE_DTYPE
        assert f["configs"].dtype == CONFIG_DTYPE
        assert f["_header"].attrs["version"] == "2.4"
        assert set(f["_header"].attrs) == {"version", "created", "modified"}


@needs_shared
@pytest.mark.parametrize("case", sorted(CASES))
def test_writer_reproduces_larndsim_file(case, layout, tmp_path):
    hits, track_ids, _ = original_hits(case)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(hits))              # the writer orders readouts itself
    out = tmp_path / f"{case}.h5"
    summary = write_packets(out, hits[shuffled], layout, track_ids=track_ids[shuffled], time_axis="larnd-sim")
    written, total, unconnected, disabled = CASES[case]
    assert (summary.n_data_packets, summary.n_hits, summary.n_unconnected, summary.n_disabled) == \
        (written, total, unconnected, disabled)
    with h5py.File(out, "r") as a, h5py.File(reference_file(case), "r") as b:
        assert a["packets"][()].tobytes() == b["packets"][()].tobytes()
        assert a["mc_packets_assn"][()].tobytes() == b["mc_packets_assn"][()].tobytes()
        for name in ("messages", "configs"):
            assert a[name].shape == b[name].shape == (0,) and a[name].dtype == b[name].dtype
        assert dict(a["packets"].attrs) == dict(b["packets"].attrs)
        assert a["_header"].attrs["version"] == "2.4"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]     # no temporary left behind


@needs_shared
@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_recovers_every_packet(case, layout):
    _, _, o = original_hits(case)
    pf = read_packets(reference_file(case), layout)
    h = pf.hits
    assert len(h) == CASES[case][0] and pf.time_axis == "larnd-sim"
    lookup = {tuple(p): r for r, p in enumerate(np.stack(from_larnd_pixel_id(o["pixel_ids"]), 1).tolist())}
    rows = np.array([lookup[(p, x, y)] for p, x, y in zip(h["pixel_plane"], h["pixel_ix"], h["pixel_iy"])])
    np.testing.assert_array_equal(h["adc"], o["adc"][rows, h["readout"]])
    # (row, slot) is one of the npz's readouts
    hit_set = set(map(tuple, o["hits_index"].tolist()))
    assert all((r, s) in hit_set for r, s in zip(rows, h["readout"]))
    # time: crossing tick x 0.1 µs, the original's ticks are linspace(0, 600, 6004)[ic]
    np.testing.assert_allclose(h["t"], o["ticks"][rows, h["readout"]] * 6003 / 600 * 0.1, atol=1e-9)
    np.testing.assert_allclose(h["x"], o["pixel_x"][rows], atol=1e-9)
    np.testing.assert_allclose(h["y"], o["pixel_y"][rows], atol=1e-9)
    np.testing.assert_array_equal(pf.track_ids, o["backtracked_id"][rows, h["readout"]])
    assert (h["event_id"] == 0).all()


@needs_shared
def test_reference_packets_parity_and_raw_time(layout):
    with h5py.File(reference_file("test_track0"), "r") as f:
        rows = f["packets"][()]
    data = rows[rows["packet_type"] == 0]
    assert packet_parity_ok(data).all()
    flipped = data.copy()
    flipped["dataword"] ^= 1
    assert not packet_parity_ok(flipped).any()
    raw = read_packets(reference_file("test_track0"), layout, time_axis="raw").hits
    np.testing.assert_allclose(np.sort(raw["t"]), np.sort(data["timestamp"] * 0.1), atol=1e-12)


def test_parity_and_register_bits_of_a_known_word():
    # chip 51, channel 3, timestamp 98, dataword 88: first data packet of larnd-sim's test_track0 file
    row = data_packet_rows(2, 29, 51, 3, 98, 88)
    assert int(row["parity"]) == 0 and int(row["register_address"]) == 131 and int(row["register_data"]) == 24
    row2 = data_packet_rows(2, 29, 51, 2, 95, 89)
    assert int(row2["parity"]) == 1 and int(row2["register_address"]) == 194 and int(row2["register_data"]) == 23
    with pytest.raises(InputFormatError, match="dataword"):
        data_packet_rows(1, 1, 11, 0, 5, 300)


@needs_shared
def test_disabled_channels_are_three_tile_edges(layout):
    """larnd-sim's disabled chip/channel lists are the pixels j = 69, j = 0 and i = 69 of the wiring frame."""
    cc = np.array(list(layout.chip_channel_to_position))
    ij = np.array(list(layout.chip_channel_to_position.values()))
    off = larndsim_disabled(cc // 1000, cc % 1000)
    edge = (ij[:, 1] == 0) | (ij[:, 1] == 69) | (ij[:, 0] == 69)
    np.testing.assert_array_equal(off, edge)
    assert off.sum() == 208


def test_time_axes_invert():
    ic = np.arange(6004)
    t = ic * 0.1
    np.testing.assert_array_equal(clock_ticks(t, "clock"), ic)
    np.testing.assert_allclose(times_from_ticks(ic, "clock"), t)
    ts = clock_ticks(t, "larnd-sim")
    np.testing.assert_array_equal(ts, np.floor(LARNDSIM_TIME_TICKS / 0.1).astype(int))
    back = times_from_ticks(ts, "larnd-sim")
    ambiguous = np.flatnonzero(np.r_[False, ts[1:] == ts[:-1]])    # two ticks share a timestamp
    np.testing.assert_array_equal(ambiguous, [1, 2002, 4003])   # timestamps 0, 2000, 4000
    ok = np.setdiff1d(ic, ambiguous)
    np.testing.assert_allclose(back[ok], t[ok], atol=1e-9)
    assert ts[1000] == 999                         # larnd-sim's timestamp lags the crossing tick
    with pytest.raises(InputFormatError, match="600.3"):
        clock_ticks([700.0], "larnd-sim")
    with pytest.raises(ValueError):
        clock_ticks([1.0], "bogus")


def test_clock_ticks_floor_times_between_ticks():
    """The clock axis takes a time to the tick it falls in, floor(t / 0.1 µs) (the module docstring), not the
    nearest one; times a rounding error below a tick still count as that tick."""
    t = np.array([0.0, 0.04, 0.06, 0.0999, 0.1, 1.26, 1.24, 12.349, 12.351, 599.95])
    np.testing.assert_array_equal(clock_ticks(t, "clock"), [0, 0, 0, 0, 1, 12, 12, 123, 123, 5999])
    ic = np.arange(1, 6004)
    np.testing.assert_array_equal(clock_ticks(ic * 0.1 * (1 - 1e-12), "clock"), ic)


def synthetic_hits(layout, n_events=3, seed=1):
    """Random readouts on connected, enabled channels in several events, times on the 0.1 µs grid."""
    rng = np.random.default_rng(seed)
    rows = []
    for ev in (0, 3, 11)[:n_events]:
        for _ in range(40):
            p, x, y = rng.integers(0, 2), rng.integers(0, 140), rng.integers(0, 280)
            g, _, chip, ch = layout.pixel_to_channel(p, x, y)
            if g < 0 or larndsim_disabled(chip, ch):
                continue
            for k in range(rng.integers(1, 4)):
                rows.append((ev, p, x, y, 0.0, 0.0, rng.integers(0, 5000) * 0.1, float(rng.integers(75, 256)), k))
    hits = np.array(rows, dtype=HIT_DTYPE)
    _, first = np.unique(hits[["event_id", "pixel_plane", "pixel_ix", "pixel_iy", "readout"]], return_index=True)
    return hits[np.sort(first)]


@needs_shared
def test_round_trip_several_events(layout, tmp_path):
    hits = synthetic_hits(layout)
    track_ids = np.arange(len(hits) * 5).reshape(-1, 5)
    out = tmp_path / "rt.h5"
    s = write_packets(out, hits, layout, track_ids=track_ids)
    assert s.n_data_packets == len(hits) and s.n_events == 3
    with h5py.File(out, "r") as f:
        p = f["packets"][()]
        assert f.attrs["sparsetpc_time_axis"] == "clock"
    assert (p["packet_type"] == 4).sum() == 3 and (p["packet_type"] == 7).sum() == 6
    np.testing.assert_array_equal(np.unique(p["timestamp"][p["packet_type"] == 7]), [0, 18000, 66000])
    pf = read_packets(out, layout)
    got = pf.hits
    key = lambda h: np.lexsort((h["readout"], h["pixel_iy"], h["pixel_ix"], h["pixel_plane"], h["event_id"]))
    a, b = hits[key(hits)], got[key(got)]
    for name in ("event_id", "pixel_plane", "pixel_ix", "pixel_iy", "adc", "readout"):
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_allclose(a["t"], b["t"], atol=1e-9)
    # the readout slot written is the time order within the pixel when the input is time ordered per pixel
    order = np.argsort(pf.packet_index)
    assert len(pf.track_ids) == len(got)
    assert set(map(tuple, pf.track_ids[order].tolist())) == set(map(tuple, track_ids.tolist()))


@needs_shared
def test_written_timestamp_and_dataword_are_floors(layout, tmp_path):
    """Hits between clock ticks and between ADC counts (relaxed times and ADCs are continuous): each data packet's
    timestamp is event x 6000 + the tick the time falls in (integer ticks k plus 0.01..0.99 of a tick -> k) and its
    dataword the ADC count below (larnd-sim's int(adc): n + 0.01..0.99 -> n); the reader gives back k x 0.1 µs."""
    hits = synthetic_hits(layout)
    rng = np.random.default_rng(7)
    ticks = rng.integers(0, 5000, len(hits))
    counts = rng.integers(75, 255, len(hits))
    hits["t"] = (ticks + rng.uniform(0.01, 0.99, len(hits))) * 0.1
    hits["adc"] = counts + rng.uniform(0.01, 0.99, len(hits))
    out = tmp_path / "frac.h5"
    write_packets(out, hits, layout)
    with h5py.File(out, "r") as f:
        p = f["packets"][()]
    data = p[p["packet_type"] == 0]
    # packets matched to hits as multisets of (timestamp, channel, dataword)
    g, c, chip, ch = layout.pixel_to_channel(hits["pixel_plane"], hits["pixel_ix"], hits["pixel_iy"])
    expected = sorted(zip(hits["event_id"] * 6000 + ticks, g, c, chip, ch, counts))
    got = sorted(zip(data["timestamp"].astype(np.int64), data["io_group"], data["io_channel"], data["chip_id"],
                     data["channel_id"], data["dataword"].astype(int)))
    assert [tuple(map(int, e)) for e in expected] == [tuple(map(int, x)) for x in got]
    back = read_packets(out, layout).hits
    np.testing.assert_allclose(np.sort(back["t"] + 1000 * back["event_id"]),
                               np.sort(ticks * 0.1 + 1000 * hits["event_id"]), atol=1e-9)


@needs_shared
def test_writer_drops_unwritten_and_clips_adc(layout, tmp_path):
    hits = np.zeros(3, HIT_DTYPE)
    # pixel (1, 0, 0) sits on a disabled edge channel? find one of each kind from the mapping
    plane, ix, iy = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(140), np.arange(280), indexing="ij"))
    g, _, chip, ch = layout.pixel_to_channel(plane, ix, iy)
    unconnected = np.flatnonzero(g < 0)[0]
    disabled = np.flatnonzero((g >= 0) & larndsim_disabled(chip, ch))[0]
    normal = np.flatnonzero((g >= 0) & ~larndsim_disabled(chip, ch))[0]
    for k, idx in enumerate((unconnected, disabled, normal)):
        hits[k] = (0, plane[idx], ix[idx], iy[idx], 0, 0, 1.0, 300.7, 0)
    s = write_packets(tmp_path / "a.h5", hits, layout)
    assert (s.n_unconnected, s.n_disabled, s.n_data_packets) == (1, 1, 1)
    assert read_packets(tmp_path / "a.h5", layout).hits["adc"].tolist() == [255.0]
    s = write_packets(tmp_path / "b.h5", hits, layout, drop_disabled=False)
    assert s.n_data_packets == 2


def test_writer_needs_wiring(tmp_path):
    with pytest.raises(GeometryError, match="--layout"):
        write_packets(tmp_path / "x.h5", np.zeros(1, HIT_DTYPE), PixelLayout.default(wiring=False))
    assert not any(tmp_path.iterdir())


@needs_shared
def test_writer_errors_leave_no_file(layout, tmp_path):
    out = tmp_path / "keep.h5"
    out.write_bytes(b"previous")
    bad = np.zeros(1, HIT_DTYPE)
    bad["pixel_ix"] = 500
    with pytest.raises(InputFormatError, match="do not fit layout"):
        write_packets(out, bad, layout)
    big = np.zeros(1, HIT_DTYPE)
    big["event_id"] = 400000
    big["pixel_ix"], big["pixel_iy"] = 70, 100
    with pytest.raises(InputFormatError, match="31-bit"):
        write_packets(out, big, layout)
    with pytest.raises(InputFormatError, match="lacks field"):
        write_packets(out, np.zeros(1, dtype=[("t", "f8")]), layout)
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["keep.h5"]


@needs_shared
def test_reader_errors(layout, tmp_path):
    with h5py.File(tmp_path / "nopackets.h5", "w") as f:
        f.create_dataset("hits", data=np.zeros(1))
    with pytest.raises(InputFormatError, match="no dataset 'packets'"):
        read_packets(tmp_path / "nopackets.h5", layout)
    with h5py.File(tmp_path / "fields.h5", "w") as f:
        f.create_dataset("packets", data=np.zeros(2, dtype=[("io_group", "u1"), ("timestamp", "u8")]))
    with pytest.raises(InputFormatError, match="lacks field"):
        read_packets(tmp_path / "fields.h5", layout)
    # a channel the layout does not have (io_group 7)
    rows = np.concatenate([np.zeros(1, PACKET_DTYPE), data_packet_rows([7], [1], [11], [0], [10], [100])])
    rows["packet_type"][0] = 7
    with h5py.File(tmp_path / "mismatch.h5", "w") as f:
        f.create_dataset("packets", data=rows)
    with pytest.raises(InputFormatError, match="mismatched layout"):
        read_packets(tmp_path / "mismatch.h5", layout)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputFormatError, match="cannot open"):
        read_packets(tmp_path / "text.h5", layout)


@needs_shared
def test_cross_check_with_larpix_control(layout):
    """Optional: larpix-control's own reader sees the same packets (only when it is installed)."""
    hdf5format = pytest.importorskip("larpix.format.hdf5format", reason="larpix-control not installed (optional)")
    from larpix.packet import Packet_v2
    pf = read_packets(reference_file("mixed_trk4"), layout)
    loaded = hdf5format.from_file(str(reference_file("mixed_trk4")))["packets"]
    data = [p for p in loaded if isinstance(p, Packet_v2)]
    assert len(data) == len(pf.hits)
    assert all(p.has_valid_parity() for p in data)
    assert [p.dataword for p in data] == [int(a) for a in pf.hits["adc"]]


def test_random_packets_match_larpix_control(tmp_path):
    """Optional: larpix-control writes the same rows for random data packets (only when it is installed)."""
    hdf5format = pytest.importorskip("larpix.format.hdf5format", reason="larpix-control not installed (optional)")
    from larpix.packet import PacketCollection, Packet_v2
    rng = np.random.default_rng(3)
    n = 500
    fields = [rng.integers(1, 3, n), rng.integers(1, 33, n), rng.integers(11, 111, n), rng.integers(0, 64, n),
              rng.integers(0, 2 ** 31, n), rng.integers(0, 256, n)]
    packets = []
    for g, c, chip, ch, ts, dw in zip(*fields):
        p = Packet_v2()
        p.dataword, p.timestamp, p.channel_id = int(dw), int(ts), int(ch)
        p.chip_key = "%i-%i-%i" % (g, c, chip)
        p.packet_type, p.first_packet = 0, 1
        p.assign_parity()
        packets.append(p)
    hdf5format.to_file(str(tmp_path / "lpx.h5"), PacketCollection(packets, read_id=0, message=""), mode="w")
    with h5py.File(tmp_path / "lpx.h5", "r") as f:
        assert f["packets"][()].tobytes() == data_packet_rows(*fields).tobytes()
