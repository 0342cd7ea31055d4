"""Chamfer distance between hit clouds: nearest neighbour in the full scaled (x, y, t, ADC) space, both ways."""
from __future__ import annotations

import torch


def chamfer_loss(out: torch.Tensor, target: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """mean_i min_j |a_i − b_j|² + mean_j min_i |a_i − b_j|², columns divided by ``scales`` [D] first."""
    a = out / scales
    b = target / scales
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return d2.min(dim=1).values.mean() + d2.min(dim=0).values.mean()
