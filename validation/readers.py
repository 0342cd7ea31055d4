"""Read any of the three hit formats into one in-memory hit table.

Formats (detected by content, not by name):

* larnd-sim packets HDF5 (dataset ``packets``): see :mod:`sparsetpc.packets`; needs the layout's wiring.
* reference npz (``pixel_ids``, ``adc`` (U, 10), ``ticks`` (U, 10)): the differentiable reference model
  (top-level ``*_fwd.npz``, pedestal 74.3656, ticks = (600/6004)·ic) or the original larnd-sim kernels
  (``original/*_nd_njit.npz``, pedestal 74, ticks = linspace(0, 600, 6004)[ic] = (600/6003)·ic).
* sparsetpc output HDF5 (dataset ``hits`` with :data:`sparsetpc.hits.HIT_DTYPE`).

Times: every reader returns ``t`` in true µs after the event start (crossing tick × 0.1 µs), the axis sparsetpc
uses.  ``raw_time=True`` keeps each format's own numbers instead (reference ``ticks`` as stored, packet
``timestamp`` × 0.1 µs).
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sparsetpc.exceptions import GeometryError, InputFormatError
from sparsetpc.hits import HIT_DTYPE, check_finite_readouts
from sparsetpc.layout import PixelLayout, from_larnd_pixel_id

#: Reference-model tick lengths [µs per crossing tick] of the stored ``ticks``.
TICK_STEP_ORIGINAL = 600.0 / 6003.0        # linspace(0, 600, 6004)
TICK_STEP_DIFFERENTIABLE = 600.0 / 6004.0  # fee_ep: (600/6004)·ic
CLOCK_US = 0.1
PEDESTAL_RELAXED = 74.3656                  # digitize(0) of the differentiable model (float ADC)
PEDESTAL_INTEGER = 74.0                     # larnd-sim's integer ADC of zero charge

#: module-0 detector properties the pixel centres default to (larnd-sim detector_properties/module0.yaml)
MODULE0_TPC_CENTERS = [[0.0, -21.8236, 0.0], [0.0, -21.8236, 0.0]]
MODULE0_DRIFT_LENGTH = 30.27225

KINDS = ("packets", "reference-original", "reference-differentiable", "sparsetpc")


@dataclass
class HitTable:
    """Readouts of one file: ``hits`` (HIT_DTYPE, sorted by event, plane, ix, iy, readout) plus provenance."""

    hits: np.ndarray
    source: str
    kind: str
    adc_pedestal: float
    time_axis: str = "true"          # "true" µs or "raw"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.hits)

    def events(self) -> np.ndarray:
        return np.unique(self.hits["event_id"])


def _sorted(hits: np.ndarray) -> np.ndarray:
    order = np.lexsort((hits["readout"], hits["pixel_iy"], hits["pixel_ix"], hits["pixel_plane"], hits["event_id"]))
    return hits[order]


def default_borders(layout: PixelLayout) -> np.ndarray:
    return layout.tpc_borders(MODULE0_TPC_CENTERS, MODULE0_DRIFT_LENGTH)


def detect_format(path) -> str:
    """'packets', 'sparsetpc' or 'reference' from the file's content; InputFormatError otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputFormatError(f"{path}: no such file")
    if path.is_dir():
        raise InputFormatError(f"{path}: is a directory, expected a hits file")
    import h5py
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                keys = list(f.keys())
        except OSError as error:
            raise InputFormatError(f"{path}: cannot open as HDF5 ({error})") from error
        if "packets" in keys:
            return "packets"
        if "hits" in keys:
            return "sparsetpc"
        raise InputFormatError(f"{path}: HDF5 file has neither 'packets' (larnd-sim) nor 'hits' (sparsetpc) "
                               f"(found: {', '.join(keys) or 'nothing'})")
    if zipfile.is_zipfile(path):
        return "reference"
    raise InputFormatError(f"{path}: not an HDF5 file nor an npz archive; cannot read hits from it")


def read_hits(path, *, layout: Optional[PixelLayout] = None, borders: Optional[np.ndarray] = None,
              raw_time: bool = False, allow_empty: bool = False) -> HitTable:
    """Read ``path`` (any supported format) into a :class:`HitTable`.

    ``layout``: pixel layout (default: ``PixelLayout.default()``, the 2.2.16 geometry with its built-in wiring;
    packets files need a layout with the chip/channel wiring).  ``borders``: plane borders for pixel centres (default module 0).
    Raises :class:`InputFormatError` naming the file and problem (missing datasets, empty, mismatched layout).
    """
    kind = detect_format(path)
    layout = layout or PixelLayout.default()
    borders = default_borders(layout) if borders is None else np.asarray(borders, dtype=np.float64)
    if kind == "packets":
        table = _read_packets(path, layout, borders, raw_time)
    elif kind == "sparsetpc":
        table = _read_sparsetpc(path, layout, borders, raw_time)
    else:
        table = _read_reference(path, layout, borders, raw_time)
    if len(table.hits) == 0 and not allow_empty:
        raise InputFormatError(f"{path}: no readouts in the file (empty event); nothing to compare")
    check_finite_readouts(table.hits, str(path), "cannot compare")
    if not math.isfinite(table.adc_pedestal):
        raise InputFormatError(f"{path}: ADC pedestal is not finite ({table.adc_pedestal})")
    return table


# ---------------------------------------------------------------------------- packets
def _read_packets(path, layout: PixelLayout, borders, raw_time: bool) -> HitTable:
    from sparsetpc.packets import read_packets
    if not layout.has_wiring:
        raise InputFormatError(f"{path}: a packets file names chips and channels; reading it needs the LArPix "
                               "wiring: give the layout YAML (--layout multi_tile_layout-2.2.16.yaml)")
    pf = read_packets(path, layout, borders=borders, time_axis="raw" if raw_time else "auto")
    return HitTable(hits=_sorted(pf.hits), source=str(path), kind="packets", adc_pedestal=PEDESTAL_INTEGER,
                    time_axis="raw" if raw_time else "true",
                    info={"packets_time_axis": pf.time_axis, "events_without_data": pf.n_events_without_data})


# ---------------------------------------------------------------------------- sparsetpc output
def _read_sparsetpc(path, layout: PixelLayout, borders, raw_time: bool = False) -> HitTable:
    import h5py
    with h5py.File(path, "r") as f:
        dset = f["hits"]
        if not isinstance(dset, h5py.Dataset):
            raise InputFormatError(f"{path}: 'hits' is a group, expected a dataset of sparsetpc.hits.HIT_DTYPE")
        names = dset.dtype.names or ()
        missing = [n for n in HIT_DTYPE.names if n not in names]
        if missing:
            raise InputFormatError(f"{path}: dataset 'hits' lacks field(s) {', '.join(missing)} "
                                   "(expected sparsetpc.hits.HIT_DTYPE)")
        data = dset[()]
        attrs = {**dict(f.attrs), **dict(dset.attrs)}
    unit = attrs.get("t", attrs.get("units_t"))
    if isinstance(unit, bytes):
        unit = unit.decode()
    if isinstance(unit, str) and "us" not in unit and "µs" not in unit:
        raise InputFormatError(f"{path}: hits 't' is in {unit!r}; sparsetpc hits are in µs")
    hits = np.zeros(len(data), dtype=HIT_DTYPE)
    for name in HIT_DTYPE.names:
        hits[name] = data[name]
    _check_pixels(path, hits, layout, borders)
    pedestal = attrs.get("adc_pedestal")
    if pedestal is None:
        adc = hits["adc"]
        pedestal = PEDESTAL_INTEGER if len(adc) and np.all(adc == np.round(adc)) else PEDESTAL_RELAXED
    # sparsetpc's own times are true µs already: "raw" and "true" are the same numbers
    return HitTable(hits=_sorted(hits), source=str(path), kind="sparsetpc", adc_pedestal=float(pedestal),
                    time_axis="raw" if raw_time else "true", info={"mode": str(attrs.get("mode", "unknown"))})


def _check_pixels(path, hits: np.ndarray, layout: PixelLayout, borders, tolerance: float = 1e-3) -> None:
    """Pixels inside the layout and x, y at their centres (else the file was made with another layout)."""
    nx, ny = layout.n_pixels
    plane, ix, iy = (hits[f].astype(np.int64) for f in ("pixel_plane", "pixel_ix", "pixel_iy"))
    bad = (plane < 0) | (plane >= len(borders)) | (ix < 0) | (ix >= nx) | (iy < 0) | (iy >= ny)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputFormatError(f"{path}: mismatched layout: pixel (plane {plane[k]}, ix {ix[k]}, iy {iy[k]}) is "
                               f"outside {len(borders)} planes of {nx}x{ny} pixels")
    if len(hits):
        x, y = layout.pixel_center(borders, plane, ix, iy)
        off = np.maximum(np.abs(x - hits["x"]), np.abs(y - hits["y"]))
        if off.max() > tolerance:
            k = int(np.argmax(off))
            raise InputFormatError(f"{path}: mismatched layout: hit {k} at (x, y) = ({hits['x'][k]:.4f}, "
                                   f"{hits['y'][k]:.4f}) cm but pixel ({plane[k]}, {ix[k]}, {iy[k]}) of the layout is "
                                   f"centred at ({x[k]:.4f}, {y[k]:.4f}) cm")


# ---------------------------------------------------------------------------- reference npz
def _npz_event_id(data) -> int:
    if "input_segments" not in data.files:
        return 0
    rows = data["input_segments"]
    if rows.dtype.names and "eventID" in rows.dtype.names:
        ids = np.unique(rows["eventID"])
    elif "input_fields" in data.files and rows.ndim == 2:
        fields = [str(f) for f in data["input_fields"]]
        if "eventID" not in fields:
            return 0
        ids = np.unique(rows[:, fields.index("eventID")])
    else:
        return 0
    return int(ids[0]) if len(ids) == 1 else 0


def _read_reference(path, layout: PixelLayout, borders, raw_time: bool) -> HitTable:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputFormatError(f"{path}: cannot read npz ({error})") from error
    with data:
        missing = [k for k in ("pixel_ids", "adc", "ticks") if k not in data.files]
        if missing:
            raise InputFormatError(f"{path}: reference npz lacks array(s) {', '.join(missing)} "
                                   f"(found: {', '.join(data.files)})")
        pixel_ids, adc, ticks = data["pixel_ids"], data["adc"], data["ticks"]
        if pixel_ids.ndim != 2 or pixel_ids.shape[1] != 2 or adc.shape != ticks.shape or adc.ndim != 2 \
                or adc.shape[0] != len(pixel_ids):
            raise InputFormatError(f"{path}: inconsistent shapes pixel_ids {pixel_ids.shape}, adc {adc.shape}, "
                                   f"ticks {ticks.shape} (expected (U, 2), (U, R), (U, R))")
        for name, array in (("adc", adc), ("ticks", ticks)):
            if array.dtype.kind not in "fiu":
                raise InputFormatError(f"{path}: array {name!r} has dtype {array.dtype}, expected numbers")
            bad = ~np.isfinite(array.astype(np.float64))
            if bad.any():
                raise InputFormatError(f"{path}: array {name!r} has {int(bad.sum())} non-finite value(s) (first at "
                                       f"{tuple(int(i) for i in np.argwhere(bad)[0])}); cannot compare")
        meta = {}
        if "meta" in data.files:
            try:
                meta = json.loads(str(data["meta"]))
            except ValueError:
                meta = {}
        original = "integral" in data.files or "hits_index" in data.files or "time_ticks_step" in meta
        step = float(meta.get("time_ticks_step", TICK_STEP_ORIGINAL if original else TICK_STEP_DIFFERENTIABLE))
        if "adc_pedestal" in data.files:
            pedestal = float(data["adc_pedestal"])
        else:
            pedestal = PEDESTAL_INTEGER if original else PEDESTAL_RELAXED
        event = _npz_event_id(data)
        centres = (data["pixel_x"], data["pixel_y"]) if "pixel_x" in data.files and "pixel_y" in data.files else None
    nx = layout.n_pixels[0]
    plane, ix, iy = from_larnd_pixel_id(pixel_ids, nx=nx)
    # readouts: ADC above the pedestal (the pedestal value means "no readout")
    above = adc > pedestal + 1e-9
    rows, slots = np.nonzero(above)
    hits = np.zeros(len(rows), dtype=HIT_DTYPE)
    hits["event_id"] = event
    hits["pixel_plane"], hits["pixel_ix"], hits["pixel_iy"] = plane[rows], ix[rows], iy[rows]
    hits["readout"] = slots
    hits["adc"] = adc[rows, slots]
    raw = ticks[rows, slots]
    hits["t"] = raw if raw_time else raw / step * CLOCK_US
    try:
        hits["x"], hits["y"] = layout.pixel_center(borders, np.clip(hits["pixel_plane"], 0, len(borders) - 1),
                                                   hits["pixel_ix"], hits["pixel_iy"])
    except (IndexError, GeometryError) as error:
        raise InputFormatError(f"{path}: mismatched layout ({error})") from error
    _check_pixels(path, hits, layout, borders)
    if centres is not None and len(rows):
        off = max(np.abs(centres[0][rows] - hits["x"]).max(), np.abs(centres[1][rows] - hits["y"]).max())
        if off > 1e-3:
            raise InputFormatError(f"{path}: mismatched layout: stored pixel centres differ from the layout's by "
                                   f"up to {off:.4f} cm")
    kind = "reference-original" if original else "reference-differentiable"
    return HitTable(hits=_sorted(hits), source=str(path), kind=kind, adc_pedestal=pedestal,
                    time_axis="raw" if raw_time else "true",
                    info={"tick_step_us": step, "n_pixels_considered": int(len(pixel_ids))})


# ---------------------------------------------------------------------------- sparsetpc output writer
def write_sparsetpc_hits(path, hits, *, adc_pedestal: Optional[float] = None, mode: Optional[str] = None) -> None:
    """Write a hit table as sparsetpc output HDF5 (dataset ``hits``, HIT_DTYPE, units in attrs), atomically."""
    from sparsetpc.io import write_hits
    write_hits(path, hits, adc_pedestal=adc_pedestal, mode=mode)
