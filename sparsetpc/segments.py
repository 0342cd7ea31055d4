"""Input: edep-sim ``segments`` (HDF5 structured arrays) and the track selection of physics.md §1.3.

edep-sim stores x as the drift axis; on reading, x and z are swapped so that inside sparsetpc **z is the drift
axis** and (x, y) is the anode plane (as larnd-sim's ``swap_xz``).  Units: cm, MeV, µs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .exceptions import InputFormatError

#: Fields the simulator reads (all others are carried along untouched in ``Segments.rows``).
REQUIRED_FIELDS = ("eventID", "trackID", "pdgId", "dEdx", "dE", "dx",
                   "x_start", "x_end", "y_start", "y_end", "z_start", "z_end")
FLOAT_FIELDS = ("dEdx", "dE", "dx", "x_start", "x_end", "y_start", "y_end", "z_start", "z_end")

#: The 23-field edep-sim segment dtype (physics.md §1.1), used by the example generator and the writers.
SEGMENT_DTYPE = np.dtype([
    ("eventID", "u4"), ("trackID", "u4"), ("pdgId", "i4"), ("dEdx", "f4"), ("dE", "f4"), ("dx", "f4"),
    ("x", "f4"), ("x_start", "f4"), ("x_end", "f4"), ("y", "f4"), ("y_start", "f4"), ("y_end", "f4"),
    ("z", "f4"), ("z_start", "f4"), ("z_end", "f4"), ("t", "f4"), ("t_start", "f4"), ("t_end", "f4"),
    ("pixel_plane", "u4"), ("tran_diff", "f4"), ("long_diff", "f4"), ("n_electrons", "u4"), ("n_photons", "f4"),
])


#: ``frame`` attribute of a ``segments`` dataset whose rows are already in sparsetpc's frame (z = drift axis),
#: as ``sparsetpc simulate`` writes them; files without the attribute are edep-sim files (x = drift axis).
FRAME_SPARSETPC = "sparsetpc frame: z is the drift axis (edep-sim x and z swapped)"
#: ``frame`` attribute of an edep-sim-frame dataset (x = drift axis), as the example generator writes it.
FRAME_EDEPSIM = "edep-sim frame: x is the drift axis"


def rows_need_swap(frame, source: str = "segments") -> bool:
    """Whether rows with this ``frame`` attribute (None when absent) must have x and z swapped on reading."""
    if frame is None:
        return True
    if isinstance(frame, bytes):
        frame = frame.decode(errors="replace")
    text = str(frame).strip().lower()
    if text.startswith("sparsetpc"):
        return False
    if text.startswith("edep-sim"):
        return True
    raise InputFormatError(f"{source}: unknown frame attribute {str(frame)!r} (expected one starting with "
                           "'sparsetpc' (z = drift axis) or 'edep-sim' (x = drift axis))")


def swap_xz(rows: np.ndarray) -> np.ndarray:
    """Return a copy with the x and z columns (midpoint, start, end) exchanged."""
    out = rows.copy()
    for suffix in ("", "_start", "_end"):
        if "x" + suffix in rows.dtype.names and "z" + suffix in rows.dtype.names:
            out["x" + suffix] = rows["z" + suffix]
            out["z" + suffix] = rows["x" + suffix]
    return out


def check_rows(rows: np.ndarray, source: str = "segments") -> None:
    """Raise :class:`InputFormatError` naming the problem if ``rows`` is not a usable segment array."""
    if not isinstance(rows, np.ndarray) or rows.dtype.names is None:
        raise InputFormatError(f"{source}: expected a structured array of edep-sim segments, got {type(rows).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in rows.dtype.names]
    if missing:
        raise InputFormatError(f"{source}: missing field(s) {', '.join(missing)} (edep-sim segments need {', '.join(REQUIRED_FIELDS)})")
    for name in FLOAT_FIELDS:
        column = np.asarray(rows[name], dtype=np.float64)
        bad = ~np.isfinite(column)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputFormatError(f"{source}: field {name!r} has {int(bad.sum())} non-finite value(s) (first at row {first})")
    for name in ("dE", "dx", "dEdx"):
        if (np.asarray(rows[name]) < 0).any():
            raise InputFormatError(f"{source}: field {name!r} has negative values (units: MeV, cm, MeV/cm)")
    extent = np.abs(np.concatenate([rows[f] for f in ("x_start", "x_end", "y_start", "y_end", "z_start", "z_end")]))
    if extent.size and extent.max() > 1.0e3:
        raise InputFormatError(f"{source}: coordinates up to {extent.max():.3g} — segments must be in cm and inside a "
                               "10 m detector (edep-sim HDF5 stores cm; were they given in mm?)")


@dataclass
class Cuts:
    """Selection of physics.md §1.3 (larnd-sim ``TracksDataset`` defaults).  ``None`` disables a cut.

    Applied in this order: segments with dx > ``dx_min`` (and residual range > ``range_min`` if the file has
    ``range``) form each track; a track is kept if Σdx > ``track_length_min``, |cos θ| < ``max_abs_cos_theta``
    (θ from the drift axis, direction first start → last end) and max |z_mid| < ``track_z_bound``; inside kept
    tracks only segments with |z_mid| > ``min_abs_segment_z`` are simulated.
    """

    dx_min: float = 0.01                       # cm
    track_length_min: Optional[float] = 2.0    # cm
    max_abs_cos_theta: Optional[float] = 0.966
    track_z_bound: Optional[float] = 28.0      # cm
    min_abs_segment_z: Optional[float] = 15.0  # cm
    range_min: Optional[float] = None          # cm, only for files with a `range` field
    drop_nuclei: bool = False                  # drop pdgId >= 1e9 (nuclei)

    @classmethod
    def none(cls) -> "Cuts":
        """Keep every segment with dx > 0."""
        return cls(dx_min=0.0, track_length_min=None, max_abs_cos_theta=None, track_z_bound=None,
                   min_abs_segment_z=None, range_min=None, drop_nuclei=False)

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows kept, for rows already x↔z swapped (z = drift axis)."""
        n = len(rows)
        keep = np.asarray(rows["dx"], dtype=np.float64) > self.dx_min
        if self.range_min is not None and "range" in rows.dtype.names:
            keep &= np.asarray(rows["range"]) > self.range_min
        if self.drop_nuclei:
            keep &= np.asarray(rows["pdgId"]).astype(np.int64) < 1_000_000_000
        if n == 0:
            return keep
        zmid = 0.5 * (np.asarray(rows["z_start"], np.float64) + np.asarray(rows["z_end"], np.float64))
        track_level = (self.track_length_min, self.max_abs_cos_theta, self.track_z_bound)
        if any(c is not None for c in track_level):
            key = np.asarray(rows["eventID"]).astype(np.int64) * (1 << 32) + np.asarray(rows["trackID"]).astype(np.int64)
            idx = np.flatnonzero(keep)
            track_ok = np.zeros(n, dtype=bool)
            if idx.size:
                uniq, inverse = np.unique(key[idx], return_inverse=True)
                ok = np.ones(len(uniq), dtype=bool)
                if self.track_length_min is not None:
                    length = np.bincount(inverse, weights=np.asarray(rows["dx"], np.float64)[idx], minlength=len(uniq))
                    ok &= length > self.track_length_min
                if self.max_abs_cos_theta is not None:
                    # first and last masked segment of each track, in file order
                    first = np.full(len(uniq), np.iinfo(np.int64).max)
                    last = np.full(len(uniq), -1)
                    np.minimum.at(first, inverse, idx)
                    np.maximum.at(last, inverse, idx)
                    start = np.stack([np.asarray(rows[f], np.float64)[first] for f in ("x_start", "y_start", "z_start")], 1)
                    end = np.stack([np.asarray(rows[f], np.float64)[last] for f in ("x_end", "y_end", "z_end")], 1)
                    d = start - end
                    norm = np.linalg.norm(d, axis=1)
                    cos = np.divide(np.abs(d[:, 2]), norm, out=np.ones_like(norm), where=norm > 0)
                    ok &= cos < self.max_abs_cos_theta
                if self.track_z_bound is not None:
                    zmax = np.zeros(len(uniq))
                    np.maximum.at(zmax, inverse, np.abs(zmid[idx]))
                    ok &= zmax < self.track_z_bound
                track_ok[idx] = ok[inverse]
            keep &= track_ok
        if self.min_abs_segment_z is not None:
            keep &= np.abs(zmid) > self.min_abs_segment_z
        return keep


@dataclass
class Segments:
    """Straight energy-deposition segments as tensors (z = drift axis).

    ``start``/``end`` [N, 3] cm; ``dE`` MeV; ``dEdx`` MeV/cm; ``dx`` cm (edep-sim step length, kept for reference:
    the geometry uses end − start); ``t_start``/``t_end`` µs (creation times); integer ids as int64.
    ``rows`` keeps the numpy rows (swapped) for writing the simulated segments back out.
    """

    event_id: torch.Tensor
    track_id: torch.Tensor
    pdg: torch.Tensor
    dEdx: torch.Tensor
    dE: torch.Tensor
    dx: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor
    rows: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.dE.shape[0])

    @property
    def dtype(self):
        return self.dE.dtype

    @property
    def device(self):
        return self.dE.device

    @classmethod
    def from_numpy(cls, rows: np.ndarray, dtype=torch.float64, device="cpu", swap: bool = True,
                   source: str = "segments") -> "Segments":
        """Segments from an edep-sim ``segments`` structured array.

        edep-sim's x is the drift axis, so x and z are exchanged first, as :func:`load_segments` does.  Pass
        ``swap=False`` for rows already in sparsetpc's frame (z = drift), e.g. the ``input_segments`` stored in
        the reference files or the ``segments`` dataset that ``sparsetpc simulate`` writes.
        """
        check_rows(rows, source)
        if swap:
            rows = swap_xz(rows)
        def col(name, fallback=None):
            if name in rows.dtype.names:
                return torch.as_tensor(np.asarray(rows[name], dtype=np.float64), dtype=dtype, device=device)
            return torch.zeros(len(rows), dtype=dtype, device=device) if fallback is None else fallback
        start = torch.stack([col("x_start"), col("y_start"), col("z_start")], dim=1)
        end = torch.stack([col("x_end"), col("y_end"), col("z_end")], dim=1)
        t = col("t")
        return cls(
            event_id=torch.as_tensor(np.asarray(rows["eventID"]).astype(np.int64), device=device),
            track_id=torch.as_tensor(np.asarray(rows["trackID"]).astype(np.int64), device=device),
            pdg=torch.as_tensor(np.asarray(rows["pdgId"]).astype(np.int64), device=device),
            dEdx=col("dEdx"), dE=col("dE"), dx=col("dx"), start=start, end=end,
            t_start=col("t_start", t), t_end=col("t_end", t), rows=np.array(rows, copy=True),
        )

    def select(self, index) -> "Segments":
        """Subset by a boolean mask or index array (numpy or torch)."""
        if torch.is_tensor(index):
            index = index.detach().cpu().numpy()
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        tidx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        changes = {f.name: getattr(self, f.name)[tidx] for f in dataclasses.fields(self) if f.name != "rows"}
        rows = None if self.rows is None else self.rows[index]
        return Segments(**changes, rows=rows)

    def to(self, dtype=None, device=None) -> "Segments":
        changes = {}
        for f in dataclasses.fields(self):
            if f.name == "rows":
                continue
            value = getattr(self, f.name)
            changes[f.name] = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        return Segments(**changes, rows=self.rows)

    def events(self) -> np.ndarray:
        return np.unique(self.event_id.cpu().numpy())


def read_segment_rows(path, dataset: str = "segments") -> np.ndarray:
    """Read the raw (unswapped) edep-sim structured array from an HDF5 file, with clear errors."""
    return read_segment_rows_and_frame(path, dataset)[0]


def read_segment_rows_and_frame(path, dataset: str = "segments"):
    """The stored rows (as in the file, not swapped) and whether they need the x↔z swap (``frame`` attribute)."""
    import h5py
    try:
        handle = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as error:
        raise InputFormatError(f"{path}: cannot open as HDF5 ({error})") from error
    with handle:
        if dataset not in handle:
            raise InputFormatError(f"{path}: no dataset {dataset!r} (found: {', '.join(handle.keys()) or 'nothing'}); "
                                   "sparsetpc reads edep-sim's `segments`")
        node = handle[dataset]
        if not isinstance(node, h5py.Dataset):
            raise InputFormatError(f"{path}: {dataset!r} is a group, not a dataset of segments")
        rows = node[()]
        frame = node.attrs.get("frame")
    check_rows(rows, f"{path}:{dataset}")
    if len(rows) == 0:
        raise InputFormatError(f"{path}:{dataset} is empty (no segments)")
    return rows, rows_need_swap(frame, f"{path}:{dataset}")


def check_events_present(rows: np.ndarray, events: Sequence[int], source: str = "segments") -> None:
    """Raise :class:`InputFormatError` naming the requested eventIDs that ``rows`` does not contain."""
    requested = [int(e) for e in events]
    if not requested:
        raise InputFormatError(f"{source}: an empty list of events was requested")
    present = set(np.unique(np.asarray(rows["eventID"]).astype(np.int64)).tolist())
    missing = sorted(set(requested) - present)
    if missing:
        shown = ", ".join(str(e) for e in missing[:10]) + (" ..." if len(missing) > 10 else "")
        available = sorted(present)
        span = f"{available[0]}..{available[-1]}" if available else "none"
        raise InputFormatError(f"{source}: requested event(s) {shown} not in the file ({len(available)} events, "
                               f"eventIDs {span})")


def load_segments(path, cuts: Optional[Cuts] = None, dtype=torch.float64, device="cpu",
                  events: Optional[Sequence[int]] = None, dataset: str = "segments") -> Segments:
    """Read an edep-sim file, swap x↔z, apply ``cuts`` (default :class:`Cuts`) and return :class:`Segments`.

    Rows whose dataset carries ``frame`` = :data:`FRAME_SPARSETPC` (the ``segments`` that ``sparsetpc simulate``
    writes) are already in sparsetpc's frame and are not swapped again.
    ``events``: keep only these eventIDs; every one must be in the file (else :class:`InputFormatError` naming
    the missing ones).  Raises :class:`InputFormatError` when nothing survives, naming why.
    """
    rows, swap = read_segment_rows_and_frame(path, dataset)
    if swap:
        rows = swap_xz(rows)
    if events is not None:
        check_events_present(rows, events, str(path))
        rows = rows[np.isin(rows["eventID"], np.asarray(list(events), dtype=np.int64))]
    cuts = Cuts() if cuts is None else cuts
    keep = cuts.mask(rows)
    if not keep.any():
        raise InputFormatError(f"{path}: no segment passes the selection {cuts} ({len(rows)} read); "
                               "use Cuts.none() (CLI --no-cuts) to keep every segment with dx > 0")
    return Segments.from_numpy(rows[keep], dtype=dtype, device=device, swap=False, source=str(path))
