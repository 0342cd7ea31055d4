"""Space-match loss (physics.md §4.2), done properly.

For every hit of one cloud the partner in the other cloud is chosen by *position* only (the first ``n_pos``
columns, e.g. x, y, t), and the per-axis normalised squared difference of *all* columns (position and ADC)
is penalised.  Differences from the reference ``calc_loss``:

* symmetric: output→target and target→output terms are averaged, so a guess that produces too few hits is
  penalised (the reference only looks from the output side);
* every axis is divided by its own scale (``scales``), instead of fixed detector lengths and 200 µs;
* optional soft assignment: partner weights softmax(−d²/τ) over the positional distance with temperature τ
  (τ → 0 recovers the hard argmin), which makes the loss continuous when the nearest neighbour changes.
"""
from __future__ import annotations

from typing import Optional

import torch


def _one_side(a: torch.Tensor, b: torch.Tensor, n_pos: int, temperature: Optional[float]) -> torch.Tensor:
    diff2 = (a[:, None, :] - b[None, :, :]) ** 2                # [Na, Nb, D]
    cost = diff2.sum(-1)                                         # all columns
    dpos = diff2[..., :n_pos].sum(-1)                            # assignment distance
    if temperature is None or temperature <= 0:
        idx = dpos.detach().argmin(dim=1)
        return cost.gather(1, idx[:, None]).squeeze(1).mean()
    weights = torch.softmax(-dpos / temperature, dim=1)
    return (weights * cost).sum(1).mean()


def space_match_loss(out: torch.Tensor, target: torch.Tensor, scales: torch.Tensor, n_pos: int = 3,
                     temperature: Optional[float] = None, symmetric: bool = True) -> torch.Tensor:
    """Space-match loss between hit clouds ``out`` [N, D] and ``target`` [M, D] (columns e.g. x, y, t, adc).

    ``scales`` [D]: each column is divided by its scale first.  ``n_pos``: the first ``n_pos`` columns decide
    the assignment.  ``temperature``: None/0 = hard nearest neighbour, > 0 = soft assignment (in scaled units²).
    Both clouds must be non-empty (see :func:`calibration.losses.hits_loss` for empty-cloud handling).
    """
    a = out / scales
    b = target / scales
    forward = _one_side(a, b, n_pos, temperature)
    if not symmetric:
        return forward
    return 0.5 * (forward + _one_side(b, a, n_pos, temperature))
