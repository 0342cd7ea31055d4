"""Choose a calibration sample: the tracks of an edep-sim file whose readouts constrain the fitted parameters best.

A fit's σ follow from the Fisher information of its readouts, and the information of tracks in different events
adds (``calibration/fisher.py``).  So the question "which N tracks of this file give the smallest σ" has a
cheap answer before any fit: compute each candidate track's Fisher matrix once, at the parameters' nominal values
(not at any truth: a user does not know it), and choose the N whose summed matrix is best.

* :func:`track_candidates` lists the tracks that pass a kinematic selection (particle, length, drift extent,
  angle to the drift axis), one row per (eventID, trackID), from rows already in sparsetpc's frame (z = drift).
* :func:`choose_tracks` picks N of them by a greedy forward selection followed by exchanges (Fedorov's exchange
  algorithm), minimising the largest relative marginal σ, max_i σ_i / (value_i · goal_i), where σ_i =
  sqrt((F⁻¹)_ii) of the summed matrix.  A weak prior (σ = ``prior_relative`` × value, default 100 %) keeps F
  invertible while the first tracks are added; the reported σ are without it.
  ``one_per_event`` keeps at most one track per event (the fit simulates whole events from a target file, and the
  calibration-from-hits closure uses one track per event).

Why this is fair: the choice uses only the nominal parameters and the tracks' own geometry and dE/dx, never the
values a target was simulated at.  Tracks that stop in the detector (a Bragg peak, dE/dx up to tens of MeV/cm)
break the Ab–kb degeneracy of minimum-ionising tracks: Birks' recombination depends on kb · dE/dx.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Dict, List, Optional, Sequence

import numpy as np

#: particles a straight-track calibration uses by default: muons and charged pions (either charge)
DEFAULT_PDG = (13, 211)


@dataclass
class Candidate:
    """One track of the file that passes the kinematic selection.  Lengths in cm, dE/dx in MeV/cm."""

    event: int
    track: int
    pdg: int
    n_segments: int
    length: float              # Σ dx over the track's segments [cm]
    drift_extent: float        # max − min of the segments' z (drift axis) [cm]
    abs_cos_theta: float       # |cos θ| to the drift axis, first start → last end (the direction Cuts uses)
    max_dEdx: float            # largest segment dE/dx [MeV/cm]: a stopping track's Bragg peak

    def as_dict(self) -> dict:
        return asdict(self)


def track_candidates(rows: np.ndarray, *, pdg: Sequence[int] = DEFAULT_PDG, min_length: float = 10.0,
                     min_drift_extent: float = 15.0, max_abs_cos_theta: float = 0.966) -> List[Candidate]:
    """The tracks of ``rows`` (edep-sim segments in sparsetpc's frame, z = drift) that are one of ``pdg``
    (absolute values), at least ``min_length`` cm long (Σdx), span at least ``min_drift_extent`` cm of drift and
    have |cos θ| < ``max_abs_cos_theta``.  Segments with dx ≤ 0 are ignored.  Sorted by (event, track)."""
    rows = rows[np.asarray(rows["dx"], dtype=np.float64) > 0]
    if len(rows) == 0:
        return []
    wanted = {abs(int(p)) for p in pdg}
    key = np.asarray(rows["eventID"]).astype(np.int64) * (1 << 32) + np.asarray(rows["trackID"]).astype(np.int64)
    order = np.argsort(key, kind="stable")                 # file order kept inside each track
    keys, starts = np.unique(key[order], return_index=True)
    bounds = list(starts) + [len(order)]
    out: List[Candidate] = []
    for k in range(len(keys)):
        track = rows[order[bounds[k]:bounds[k + 1]]]
        code = int(track["pdgId"][0])
        if abs(code) not in wanted:
            continue
        length = float(np.sum(np.asarray(track["dx"], dtype=np.float64)))
        z = np.concatenate([np.asarray(track["z_start"], np.float64), np.asarray(track["z_end"], np.float64)])
        extent = float(z.max() - z.min())
        d = np.array([track["x_start"][0] - track["x_end"][-1], track["y_start"][0] - track["y_end"][-1],
                      track["z_start"][0] - track["z_end"][-1]], dtype=np.float64)
        norm = float(np.linalg.norm(d))
        cos = abs(d[2]) / norm if norm > 0 else 1.0
        if length < min_length or extent < min_drift_extent or cos >= max_abs_cos_theta:
            continue
        out.append(Candidate(event=int(track["eventID"][0]), track=int(track["trackID"][0]), pdg=code,
                             n_segments=len(track), length=length, drift_extent=extent, abs_cos_theta=cos,
                             max_dEdx=float(np.max(np.asarray(track["dEdx"], np.float64)))))
    return out


def relative_sigma(matrix: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Marginal σ_i / |value_i| of the information ``matrix`` (physical units); inf where F is not positive
    definite (:func:`calibration.fisher.marginal_sigma`)."""
    from .fisher import marginal_sigma
    sigma = marginal_sigma(matrix) / np.abs(values)
    return np.where(np.isfinite(sigma), sigma, np.inf)


def _criterion(matrix: np.ndarray, values: np.ndarray, goals: np.ndarray) -> float:
    return float(np.max(relative_sigma(matrix, values) / goals))


@dataclass
class Choice:
    """The chosen candidates (indices into the list given) and the predicted relative σ of their sum."""

    indices: List[int]
    relative_sigma: Dict[str, float]       # σ_i / value_i of the chosen tracks together (no prior)
    criterion: float                       # max_i σ_i / (value_i · goal_i)
    exchanges: int                         # exchanges that improved the greedy start
    converged: bool                        # no single exchange improves the criterion (False: max_exchanges hit)


def choose_tracks(matrices: np.ndarray, values: Dict[str, float], n: int, *, goals: Optional[Dict[str, float]] = None,
                  events: Optional[Sequence[int]] = None, one_per_event: bool = True,
                  prior_relative: float = 1.0, max_exchanges: int = 10_000) -> Choice:
    """Choose ``n`` of the K tracks whose Fisher matrices are ``matrices`` [K, P, P] (physical units, the
    parameters in the order of ``values``) minimising max_i σ_i / (value_i · goal_i) of their sum.

    ``goals``: the relative σ aimed at per parameter (default 0.1 each); only their ratios steer the choice.
    Exchanges (the best single swap of a chosen track for an unchosen one, one per round) go on until none
    improves the criterion; each must improve it strictly, so the loop ends; ``max_exchanges`` is a safety cap.
    ``events``: each candidate's eventID, for ``one_per_event``.  Raises ValueError when fewer than ``n``
    candidates (or events) are available."""
    matrices = np.asarray(matrices, dtype=np.float64)
    names = list(values)
    value = np.array([values[k] for k in names], dtype=np.float64)
    goal = np.array([(goals or {}).get(k, 0.1) for k in names], dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (len(names), len(names)):
        raise ValueError(f"matrices must be [K, {len(names)}, {len(names)}], got {list(matrices.shape)}")
    if not np.all(np.isfinite(matrices)):
        raise ValueError("a candidate's Fisher matrix is not finite")
    k_all = matrices.shape[0]
    group = np.arange(k_all) if (events is None or not one_per_event) else np.asarray(events, dtype=np.int64)
    if len(group) != k_all:
        raise ValueError(f"{len(group)} event ids for {k_all} candidates")
    available = len(np.unique(group))
    if n < 1 or n > available:
        unit = "events" if (events is not None and one_per_event) else "candidates"
        raise ValueError(f"cannot choose {n} tracks: {available} {unit} available")
    prior = np.diag(1.0 / (prior_relative * value) ** 2)

    def score(chosen: List[int]) -> float:
        return _criterion(prior + matrices[chosen].sum(axis=0), value, goal)

    chosen: List[int] = []
    for _ in range(n):
        used = {int(group[i]) for i in chosen}
        options = [k for k in range(k_all) if k not in chosen and int(group[k]) not in used]
        best = min(options, key=lambda k: (score(chosen + [k]), k))
        chosen.append(best)
    exchanges, converged = 0, False
    while exchanges < max_exchanges:
        current = score(chosen)
        best_move = None
        for position, old in enumerate(chosen):
            rest = chosen[:position] + chosen[position + 1:]
            used = {int(group[i]) for i in rest}
            for k in range(k_all):
                if k in chosen or int(group[k]) in used:
                    continue
                trial = score(rest + [k])
                if trial < current * (1.0 - 1e-9):
                    current, best_move = trial, (position, k)
        if best_move is None:
            converged = True
            break
        chosen[best_move[0]] = best_move[1]
        exchanges += 1
    chosen = sorted(chosen)
    rel = combined_relative_sigma(matrices, values, chosen)
    return Choice(indices=chosen, relative_sigma=rel, criterion=float(np.max([rel[k] for k in names] / goal)),
                  exchanges=exchanges, converged=converged)


def combined_relative_sigma(matrices: np.ndarray, values: Dict[str, float], indices: Sequence[int]) -> Dict[str, float]:
    """σ_i / value_i of the tracks ``indices`` together (no prior)."""
    names = list(values)
    value = np.array([values[k] for k in names], dtype=np.float64)
    rel = relative_sigma(np.asarray(matrices, np.float64)[list(indices)].sum(axis=0), value)
    return dict(zip(names, map(float, rel)))


def first_per_event(candidates: Sequence[Candidate], n: int) -> List[int]:
    """The baseline a user would take: the first candidate of each event, in event order, ``n`` of them."""
    seen, out = set(), []
    for i, c in enumerate(candidates):
        if c.event not in seen:
            seen.add(c.event)
            out.append(i)
        if len(out) == n:
            break
    return out


def candidate_fisher(rows: np.ndarray, candidates: Sequence[Candidate], names: Sequence[str], *, params,
                     detector=None, front_end=None, memory_budget="1GB", progress: bool = True):
    """Fisher matrices [K, P, P] (physical units) of each candidate track alone, at ``params`` (st.Params,
    float64), and the wall time [s] of each; ``rows`` in sparsetpc's frame.  Warnings of the simulation (e.g. a
    pixel capped at its readouts) are counted per track, not printed."""
    import time
    import warnings
    import torch
    from sparsetpc.segments import Segments
    from .fisher import expected_fisher
    rows = rows[np.asarray(rows["dx"], dtype=np.float64) > 0]
    event = np.asarray(rows["eventID"]).astype(np.int64)
    track = np.asarray(rows["trackID"]).astype(np.int64)
    matrices = np.zeros((len(candidates), len(names), len(names)))
    walls, warned = [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(candidates), desc="Fisher per track", unit="track", dynamic_ncols=True, leave=False)
    try:
        for k, c in enumerate(candidates):
            chosen = rows[(event == c.event) & (track == c.track)]
            segments = Segments.from_numpy(chosen, dtype=params.dtype, device=params.device, swap=False)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                info = expected_fisher(segments, params, names, detector=detector, front_end=front_end,
                                       memory_budget=memory_budget)
            walls.append(time.perf_counter() - start)
            warned.append(len(caught))
            matrices[k] = info.matrix
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return matrices, walls, warned
