"""Seeded example data in edep-sim's ``segments`` format (so the CLI and tests need no external files).

Straight muons, charged pions and protons, cut into edep-sim-like steps.  dE/dx:
* muons and pions: minimum-ionising ≈ 2.1 (μ) / 2.3 (π) MeV/cm with a 10% Gaussian spread per step;
* protons: stopping in the volume, dE/dx from the Bragg–Kleeman range–energy law for LAr,
  dE/dx(R) = A·R^(−0.42) MeV/cm with A = 17 (R the residual range in cm), evaluated at the step midpoint.
Coordinates are written in edep-sim's frame (x = drift axis), in cm, inside module 0's two drift volumes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_write
from .segments import FRAME_EDEPSIM, SEGMENT_DTYPE

#: module-0 active volume in edep-sim's frame [cm]: x = drift (two volumes either side of the cathode)
DRIFT_RANGE = (0.5, 29.5)           # |x| inside one drift volume, away from anode and cathode
Y_RANGE = (-80.0, 37.0)
Z_RANGE = (-28.0, 28.0)
PARTICLES = {13: "mu-", 211: "pi+", 2212: "proton"}


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


def generate(n_events: int = 3, tracks_per_event: int = 3, seed: int = 0, step: float = 0.5) -> np.ndarray:
    """Structured array of segments (edep-sim frame) for ``n_events`` events, reproducible from ``seed``."""
    check_arguments(n_events, tracks_per_event, seed, step)
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


def write_example(path, n_events: int = 3, tracks_per_event: int = 3, seed: int = 0, step: float = 0.5) -> Path:
    """Write generated segments to an edep-sim-format HDF5 file (dataset ``segments``), atomically."""
    import h5py
    path = Path(path)
    rows = generate(n_events, tracks_per_event, seed, step)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("segments", data=rows)
            dset.attrs["units"] = "cm, MeV, MeV/cm, us"
            dset.attrs["frame"] = FRAME_EDEPSIM
            f.attrs["generator"] = f"sparsetpc.example seed={seed} events={n_events} tracks/event={tracks_per_event}"
    return path
