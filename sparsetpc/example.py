"""Seeded example data in edep-sim's ``segments`` format (so the CLI and tests need no external files).

Two kinds of events:

* ``mixed`` (default): straight muons, charged pions and protons at random angles with sin θ ≥ 0.3 (θ the angle
  to the drift axis), cut into edep-sim-like steps of jittered length;
* ``steep``: straight minimum-ionising muons with cot θ (drift extent |Δx| over transverse extent) drawn
  log-uniformly in a chosen range and a drift extent drawn uniformly in a chosen range, each inside ONE drift
  volume (|x| in (0.5, 29.5) cm on one side of the cathode), cut into equal steps of at most ``step`` cm: the long
  pulses that make a pixel fire many readouts.

dE/dx:
* muons and pions: minimum-ionising ≈ 2.1 (μ) / 2.3 (π) MeV/cm with a 10% Gaussian spread per step;
* protons: stopping in the volume, dE/dx from the Bragg–Kleeman range–energy law for LAr,
  dE/dx(R) = A·R^(−0.42) MeV/cm with A = 17 (R the residual range in cm), evaluated at the step midpoint.
Coordinates are written in edep-sim's frame (x = drift axis), in cm, inside module 0's two drift volumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .io import atomic_write
from .segments import FRAME_EDEPSIM, SEGMENT_DTYPE

#: module-0 active volume in edep-sim's frame [cm]: x = drift (two volumes either side of the cathode)
DRIFT_RANGE = (0.5, 29.5)           # |x| inside one drift volume, away from anode and cathode
Y_RANGE = (-80.0, 37.0)
Z_RANGE = (-28.0, 28.0)
PARTICLES = {13: "mu-", 211: "pi+", 2212: "proton"}
KINDS = ("mixed", "steep")
#: largest drift extent a track can have inside one drift volume [cm]
MAX_DRIFT_EXTENT = DRIFT_RANGE[1] - DRIFT_RANGE[0]
#: defaults of the steep kind: the ranges of the shared steep reference track
#: (cot θ 5–50, |Δx| 15–27 cm, 0.4 cm steps)
STEEP_COT_THETA = (5.0, 50.0)
STEEP_DRIFT_EXTENT = (15.0, 27.0)
STEEP_STEP = 0.4


def _direction(rng: np.random.Generator, min_sin_theta: float = 0.3) -> np.ndarray:
    """Isotropic unit vector whose angle to the drift (x) axis has sin θ ≥ ``min_sin_theta``."""
    while True:
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        if np.hypot(v[1], v[2]) >= min_sin_theta:
            return v


def _track(rng: np.random.Generator, pdg: int, length: float, step: float):
    """Start, direction and per-step (dEdx, dx) of one straight track that stays inside one drift volume."""
    side = rng.choice([-1.0, 1.0])
    for _ in range(1000):
        start = np.array([side * rng.uniform(*DRIFT_RANGE), rng.uniform(*Y_RANGE), rng.uniform(*Z_RANGE)])
        direction = _direction(rng)
        end = start + direction * length
        inside = (DRIFT_RANGE[0] <= side * end[0] <= DRIFT_RANGE[1] and Y_RANGE[0] <= end[1] <= Y_RANGE[1]
                  and Z_RANGE[0] <= end[2] <= Z_RANGE[1])
        if inside:
            break
    else:  # pragma: no cover - the volume is large compared with the lengths used
        raise RuntimeError("could not place a track inside the volume")
    n_steps = max(1, int(np.ceil(length / step)))
    edges = np.linspace(0.0, length, n_steps + 1)
    # jitter interior step boundaries as edep-sim's variable steps do
    if n_steps > 1:
        edges[1:-1] += rng.uniform(-0.3, 0.3, n_steps - 1) * (length / n_steps)
        edges = np.sort(edges)
    dx = np.diff(edges)
    middle = 0.5 * (edges[1:] + edges[:-1])
    if pdg == 2212:
        residual = np.clip(length - middle, 0.05, None)
        dedx = 17.0 * residual ** -0.42
    else:
        mip = 2.1 if pdg == 13 else 2.3
        dedx = np.clip(rng.normal(mip, 0.1 * mip, n_steps), 1.0, None)
    return start, direction, edges, dx, dedx


def check_arguments(n_events: int, tracks_per_event: int, seed: int, step: float) -> None:
    """Raise ``ValueError`` naming the first argument that cannot make an example file."""
    for name, value in (("n_events", n_events), ("tracks_per_event", tracks_per_event)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"step must be a positive length in cm, got {step!r}")


def _range(name: str, value) -> tuple:
    """(low, high) floats of a two-number range, ValueError naming ``name`` when it is not one."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (min max), got {value!r}") from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{name} must be finite, got {low:g} {high:g}")
    if low > high:
        raise ValueError(f"{name}: min {low:g} is larger than max {high:g}")
    return low, high


def default_step(kind: str) -> float:
    """Default segment length [cm] of an example kind."""
    return STEEP_STEP if kind == "steep" else 0.5


def widest_transverse_extent() -> float:
    """The longest transverse (y, z) extent a track can have inside the module [cm]: the diagonal."""
    return float(np.hypot(Y_RANGE[1] - Y_RANGE[0], Z_RANGE[1] - Z_RANGE[0]))


def check_steep_arguments(cot_theta, drift_extent) -> tuple:
    """Validated ``(cot_theta, drift_extent)`` ranges of the steep kind; ValueError naming the first impossible one."""
    cot_theta = _range("cot_theta", cot_theta)
    drift_extent = _range("drift_extent", drift_extent)
    if cot_theta[0] <= 0:
        raise ValueError(f"cot_theta must be positive (drift extent over transverse extent), got min {cot_theta[0]:g}")
    if drift_extent[0] <= 0:
        raise ValueError(f"drift_extent must be positive, got min {drift_extent[0]:g} cm")
    if drift_extent[1] > MAX_DRIFT_EXTENT:
        raise ValueError(f"drift_extent max {drift_extent[1]:g} cm does not fit in one drift volume "
                         f"(|x| in ({DRIFT_RANGE[0]:g}, {DRIFT_RANGE[1]:g}) cm: at most {MAX_DRIFT_EXTENT:g} cm)")
    widest = widest_transverse_extent()
    if drift_extent[0] / cot_theta[1] > widest:
        raise ValueError(f"transverse extent drift_extent/cot_theta ≥ {drift_extent[0] / cot_theta[1]:g} cm is wider "
                         f"than the module ({widest:.1f} cm diagonal): raise cot_theta or lower drift_extent")
    return cot_theta, drift_extent


def _steep_track(rng: np.random.Generator, cot_theta: tuple, drift_extent: tuple):
    """Start and end [cm] of a straight track inside one drift volume with |Δx| in ``drift_extent`` and
    |Δx|/|Δ(y, z)| in ``cot_theta`` (log-uniform), its transverse direction uniform in azimuth.  A draw whose
    transverse extent does not fit in the module's (y, z) extent is redrawn (never with the default ranges)."""
    log_cot = np.log(cot_theta)
    y_width, z_width = Y_RANGE[1] - Y_RANGE[0], Z_RANGE[1] - Z_RANGE[0]
    for _ in range(1000):
        extent = rng.uniform(*drift_extent)
        cot = float(np.exp(rng.uniform(*log_cot)))
        transverse = extent / cot
        phi = rng.uniform(0.0, 2.0 * np.pi)
        dy, dz = transverse * np.cos(phi), transverse * np.sin(phi)
        if abs(dy) <= y_width and abs(dz) <= z_width:
            break
    else:
        raise ValueError("could not place a track of the requested cot_theta and drift_extent in the module: "
                         "raise cot_theta or lower drift_extent")
    side = rng.choice([-1.0, 1.0])
    near = rng.uniform(DRIFT_RANGE[0], DRIFT_RANGE[1] - extent)           # |x| of the end nearer the cathode
    towards_anode = rng.random() < 0.5
    x0, x1 = (near, near + extent) if towards_anode else (near + extent, near)
    y0 = rng.uniform(Y_RANGE[0] + max(0.0, -dy), Y_RANGE[1] - max(0.0, dy))
    z0 = rng.uniform(Z_RANGE[0] + max(0.0, -dz), Z_RANGE[1] - max(0.0, dz))
    start = np.array([side * x0, y0, z0])
    end = np.array([side * x1, y0 + dy, z0 + dz])
    return start, end


def _generate_steep(n_events: int, tracks_per_event: int, seed: int, step: float, cot_theta: tuple,
                    drift_extent: tuple) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for event in range(n_events):
        for track in range(tracks_per_event):
            start, end = _steep_track(rng, cot_theta, drift_extent)
            length = float(np.linalg.norm(end - start))
            n_steps = max(1, int(np.ceil(length / step - 1e-9)))
            fractions = np.linspace(0.0, 1.0, n_steps + 1)
            points = start[None, :] + fractions[:, None] * (end - start)[None, :]
            points[-1] = end
            dx = np.linalg.norm(np.diff(points, axis=0), axis=1)
            dedx = np.clip(rng.normal(2.1, 0.21, n_steps), 1.0, None)
            block = np.zeros(n_steps, dtype=SEGMENT_DTYPE)
            block["eventID"], block["trackID"], block["pdgId"] = event, track + 1, 13
            block["dEdx"], block["dx"], block["dE"] = dedx, dx, dedx * dx
            for axis, name in enumerate("xyz"):
                a, b = points[:-1, axis], points[1:, axis]
                block[name + "_start"], block[name + "_end"], block[name] = a, b, 0.5 * (a + b)
            rows.append(block)
    return np.concatenate(rows)


def generate(n_events: int = 3, tracks_per_event: int = 3, seed: int = 0, step: Optional[float] = None, *,
             kind: str = "mixed", cot_theta=STEEP_COT_THETA, drift_extent=STEEP_DRIFT_EXTENT) -> np.ndarray:
    """Structured array of segments (edep-sim frame) for ``n_events`` events, reproducible from ``seed``.

    ``kind``: ``mixed`` (μ, π, p at random angles; ``cot_theta``/``drift_extent`` unused) or ``steep`` (muons with
    cot θ in ``cot_theta`` and |Δx| in ``drift_extent`` [cm], each a (min, max) range).  ``step`` [cm]: the
    segment length (default 0.5 for ``mixed``, jittered; 0.4 for ``steep``, equal steps of at most ``step``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown example kind {kind!r}: one of {', '.join(KINDS)}")
    step = default_step(kind) if step is None else step
    check_arguments(n_events, tracks_per_event, seed, step)
    if kind == "steep":
        cot_theta, drift_extent = check_steep_arguments(cot_theta, drift_extent)
        return _generate_steep(n_events, tracks_per_event, seed, step, cot_theta, drift_extent)
    rng = np.random.default_rng(seed)
    rows = []
    for event in range(n_events):
        for track in range(tracks_per_event):
            pdg = int(rng.choice(list(PARTICLES)))
            length = float(rng.uniform(3.0, 12.0)) if pdg == 2212 else float(rng.uniform(5.0, 25.0))
            start, direction, edges, dx, dedx = _track(rng, pdg, length, step)
            for k in range(len(dx)):
                row = np.zeros((), dtype=SEGMENT_DTYPE)
                a = start + direction * edges[k]
                b = start + direction * edges[k + 1]
                row["eventID"], row["trackID"], row["pdgId"] = event, track + 1, pdg
                row["dEdx"], row["dx"], row["dE"] = dedx[k], dx[k], dedx[k] * dx[k]
                for axis, name in enumerate("xyz"):
                    row[name + "_start"], row[name + "_end"], row[name] = a[axis], b[axis], 0.5 * (a[axis] + b[axis])
                rows.append(row)
    return np.array(rows, dtype=SEGMENT_DTYPE)


def write_example(path, n_events: int = 3, tracks_per_event: int = 3, seed: int = 0, step: Optional[float] = None, *,
                  kind: str = "mixed", cot_theta=STEEP_COT_THETA, drift_extent=STEEP_DRIFT_EXTENT) -> Path:
    """Write generated segments (:func:`generate`) to an edep-sim-format HDF5 file (dataset ``segments``),
    atomically: every argument is checked before the file is opened."""
    import h5py
    path = Path(path)
    step = default_step(kind) if step is None else step
    rows = generate(n_events, tracks_per_event, seed, step, kind=kind, cot_theta=cot_theta, drift_extent=drift_extent)
    description = f"sparsetpc.example seed={seed} events={n_events} tracks/event={tracks_per_event}"
    if kind == "steep":
        (c0, c1), (d0, d1) = check_steep_arguments(cot_theta, drift_extent)
        description += f" kind=steep cot_theta={c0:g}..{c1:g} drift_extent={d0:g}..{d1:g}cm step={step:g}cm"
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("segments", data=rows)
            dset.attrs["units"] = "cm, MeV, MeV/cm, us"
            dset.attrs["frame"] = FRAME_EDEPSIM
            f.attrs["generator"] = description
    return path
