"""Soft-DTW (Cuturi & Blondel 2017) and its non-negative divergence (Blondel, Mensch & Vert 2021).

Pure PyTorch, any device and dtype.  The recursion R[i,j] = D[i,j] + softmin_γ(R[i−1,j−1], R[i−1,j], R[i,j−1])
is evaluated one anti-diagonal at a time (all cells of a diagonal are independent), so there are N+M Python
steps of vectorised work and autograd provides the gradient.  Why not ``pysdtw``: see docs/calibration.md.
"""
from __future__ import annotations

import torch

_BIG = 1.0e10   # finite stand-in for +inf: keeps logsumexp gradients NaN-free in unreachable cells


def _pairwise_cost(a: torch.Tensor, b: torch.Tensor, cost: str) -> torch.Tensor:
    diff = a[:, None, :] - b[None, :, :]
    if cost == "sq":
        return (diff ** 2).sum(-1)
    if cost == "l1":
        return diff.abs().sum(-1)
    raise ValueError(f"unknown soft-DTW cost {cost!r} (use 'sq' or 'l1')")


def soft_dtw(a: torch.Tensor, b: torch.Tensor, gamma: float = 1.0, cost: str = "sq") -> torch.Tensor:
    """Soft-DTW value between sequences ``a`` [N, D] and ``b`` [M, D] (N, M ≥ 1)."""
    dist = _pairwise_cost(a, b, cost)
    n, m = dist.shape
    big = torch.full((n + 1,), _BIG, dtype=dist.dtype, device=dist.device)
    prev2 = big.clone()
    prev2[0] = 0.0                      # diagonal 0 (padded indices): R[0,0] = 0
    prev1 = big.clone()                 # diagonal 1: R[0,1] = R[1,0] = inf
    rows = torch.arange(1, n + 1, device=dist.device)
    for d in range(2, n + m + 1):
        cols = d - rows                                         # padded column index J for each padded row I
        valid = (cols >= 1) & (cols <= m)
        dij = dist[(rows - 1).clamp(0, n - 1), (cols - 1).clamp(0, m - 1)]
        r = torch.stack([prev2[:-1], prev1[:-1], prev1[1:]])    # R[I-1,J-1], R[I-1,J], R[I,J-1]
        soft = -gamma * torch.logsumexp(-r / gamma, dim=0)
        inner = torch.where(valid, dij + soft, torch.full_like(soft, _BIG))
        cur = torch.cat([big[:1], inner])
        prev2, prev1 = prev1, cur
    return prev1[n]


def soft_dtw_divergence(a: torch.Tensor, b: torch.Tensor, gamma: float = 1.0, cost: str = "sq") -> torch.Tensor:
    """sdtw(a, b) − ½ (sdtw(a, a) + sdtw(b, b)): ≥ 0 for the squared cost, 0 iff a = b."""
    return soft_dtw(a, b, gamma, cost) - 0.5 * (soft_dtw(a, a, gamma, cost) + soft_dtw(b, b, gamma, cost))


def sdtw_loss(out: torch.Tensor, target: torch.Tensor, scales: torch.Tensor, gamma: float = 1.0,
              cost: str = "sq") -> torch.Tensor:
    """Soft-DTW divergence between hit sequences (rows in readout order), columns divided by ``scales``."""
    return soft_dtw_divergence(out / scales, target / scales, gamma, cost)
