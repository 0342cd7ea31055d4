"""1-D loss scans: the loss of each candidate function as one parameter moves across its range, the others
held at their target values; plus simple smoothness figures to compare losses.

Smoothness figures per (parameter, loss), on the curve normalised to [0, 1]:
``n_local_minima`` (interior strict local minima; 1 is ideal), ``argmin_offset`` (scan minimum − target, in
units of the scan step), ``roughness`` (Σ|second difference| / number of points: 0 for a straight line,
small for a parabola, large for a jagged curve), ``monotone_fraction`` (fraction of steps whose slope sign
points towards the target: 1 means every gradient step goes the right way).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Sequence

import numpy as np
import torch

from .forward import accepts, call_forward


def smoothness(values: Sequence[float], losses: Sequence[float], target: float) -> dict:
    x = np.asarray(values, float)
    y = np.asarray(losses, float)
    ok = np.isfinite(y)
    if ok.sum() < 3:
        return {"n_local_minima": None, "argmin_offset": None, "roughness": None, "monotone_fraction": None}
    x, y = x[ok], y[ok]
    span = y.max() - y.min()
    yn = (y - y.min()) / (span if span > 0 else 1.0)
    interior = (yn[1:-1] < yn[:-2]) & (yn[1:-1] < yn[2:])
    step = np.median(np.diff(x))
    slope = np.diff(yn)
    mid = 0.5 * (x[1:] + x[:-1])
    towards = np.where(mid < target, slope < 0, slope > 0)
    return {"n_local_minima": int(interior.sum() + (yn[0] < yn[1]) + (yn[-1] < yn[-2])),
            "argmin_offset": float((x[np.argmin(y)] - target) / step),
            "roughness": float(np.abs(np.diff(yn, 2)).sum() / len(yn)),
            "monotone_fraction": float(towards.mean())}


def loss_scan(forward: Callable, paramset, batches: Sequence, targets: Sequence, losses: Mapping[str, Callable],
              name: str, values: Sequence[float], centre: Mapping[str, float], *, dtype, device,
              fixed: Mapping[str, float] = None) -> Dict:
    """Loss (unit-weighted mean over batches) for each value of parameter ``name``; other fitted parameters at
    ``centre``.  Each loss in ``losses`` is evaluated on the same simulated output."""
    base = paramset.base_params(dtype=dtype, device=device, fixed=fixed)
    out = {k: [] for k in losses}
    with torch.no_grad():
        for v in values:
            params = base.replace(**{**{k: float(c) for k, c in centre.items()}, name: float(v)})
            sums = {k: 0.0 for k in losses}
            n = 0
            for batch, target in zip(batches, targets):
                guess = call_forward(forward, params, batch.data, noise=False, seed=0)
                for k, fn in losses.items():
                    value = fn(guess, target, n_units=batch.n_units) if accepts(fn, "n_units") else fn(guess, target)
                    sums[k] += float(value) * batch.n_units
                n += batch.n_units
            for k in losses:
                out[k].append(sums[k] / max(n, 1))
    target = centre.get(name)
    return {"param": name, "values": [float(v) for v in values], "losses": out, "target": target,
            "smoothness": {k: smoothness(values, out[k], target) for k in losses} if target is not None else None}
