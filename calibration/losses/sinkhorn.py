"""Debiased Sinkhorn divergence between hit clouds (entropic optimal transport, uniform weights).

OT_ε(a, b) is computed with log-domain Sinkhorn iterations on the squared scaled distance; the divergence
S = OT_ε(a, b) − ½ OT_ε(a, a) − ½ OT_ε(b, b) is ≥ 0 and zero when the clouds coincide.  The iterations are
unrolled, so autograd differentiates through them (exact for the truncated iteration).
"""
from __future__ import annotations

import math

import torch


def _ot_eps(a: torch.Tensor, b: torch.Tensor, eps: float, n_iter: int) -> torch.Tensor:
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)              # [N, M]
    n, m = cost.shape
    log_mu = torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
    log_nu = torch.full((m,), -math.log(m), dtype=cost.dtype, device=cost.device)
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    for _ in range(n_iter):
        f = -eps * torch.logsumexp(log_nu[None, :] + (g[None, :] - cost) / eps, dim=1)
        g = -eps * torch.logsumexp(log_mu[:, None] + (f[:, None] - cost) / eps, dim=0)
    log_plan = log_mu[:, None] + log_nu[None, :] + (f[:, None] + g[None, :] - cost) / eps
    return (log_plan.exp() * cost).sum()


def sinkhorn_loss(out: torch.Tensor, target: torch.Tensor, scales: torch.Tensor, eps: float = 0.05,
                  n_iter: int = 50, debias: bool = True) -> torch.Tensor:
    """Sinkhorn divergence between ``out`` [N, D] and ``target`` [M, D] after dividing columns by ``scales``.

    ``eps``: entropic blur in scaled units² (smaller = closer to exact OT, needs more iterations).
    """
    a = out / scales
    b = target / scales
    value = _ot_eps(a, b, eps, n_iter)
    if debias:
        value = value - 0.5 * (_ot_eps(a, a, eps, n_iter) + _ot_eps(b, b, eps, n_iter))
    return value
