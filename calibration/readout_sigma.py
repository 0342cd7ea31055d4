"""Empirical per-readout σ_ADC for the χ² loss, from noisy replicas of the guess.

The noise model's σ_ADC (``losses/chi2.noise_sigma_adc``, ≈1.04 ADC) is the spread of one read at a fixed
integration window.  With noise the window itself moves: the threshold crossing shifts and the integrated
charge with it, so readouts on steep pulses scatter several times more than the model says while others
scatter less.  ``replica_sigma`` measures that: it simulates the guess ``n_replicas`` times with independent
noise seeds and returns, for every *target* readout, the standard deviation of the ADC of the replicas' readouts
with the same key (event, plane, ix, iy, readout slot) and a crossing time within ``max_dt`` of the noise-free
guess's.  Readouts seen in fewer than ``min_replicas`` replicas, or absent from the noise-free guess, keep the
model σ; every σ is floored at ``floor`` × the model σ (an estimate from few replicas can come out small).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

from .forward import call_forward
from .losses.chi2 import key_rows, noise_sigma_adc, readout_keys


#: a readout seen in fewer replicas keeps the model σ, so fewer replicas than this change nothing
MIN_REPLICAS = 5


@torch.no_grad()
def replica_sigma(forward: Callable, params, data, target, n_replicas: int, seed: int,
                  max_dt: Optional[float] = 1.0, min_replicas: int = MIN_REPLICAS, floor: float = 0.5,
                  sigma_model: Optional[float] = None) -> torch.Tensor:
    """σ_ADC [n_target] per target readout (see the module docstring).  ``seed`` + replica index seed the noise."""
    if n_replicas < 2:
        raise ValueError(f"n_replicas must be >= 2 to estimate a spread, got {n_replicas}")
    sigma_model = noise_sigma_adc() if sigma_model is None else float(sigma_model)
    keys_target = readout_keys(target)
    clean = call_forward(forward, params, data, noise=False, seed=None)
    at_clean = key_rows(keys_target, readout_keys(clean))
    t_clean = clean.t.detach()
    dtype = clean.adc.dtype
    n = keys_target.shape[0]
    count = torch.zeros(n, dtype=dtype, device=keys_target.device)
    total = torch.zeros_like(count)
    total_sq = torch.zeros_like(count)
    for r in range(n_replicas):
        rep = call_forward(forward, params, data, noise=True, seed=int(seed) + r)
        at = key_rows(keys_target, readout_keys(rep))
        ok = (at >= 0) & (at_clean >= 0)
        if max_dt is not None:
            dt = torch.full((n,), float("inf"), dtype=dtype, device=count.device)
            dt[ok] = (rep.t.detach()[at[ok]] - t_clean[at_clean[ok]]).abs()
            ok = ok & (dt <= max_dt)
        adc = torch.zeros_like(count)
        adc[ok] = rep.adc.detach()[at[ok]].to(dtype)
        count += ok.to(dtype)
        total += adc
        total_sq += adc * adc
    enough = count >= max(min_replicas, 2)
    safe = torch.clamp(count, min=2.0)
    variance = torch.clamp((total_sq - total * total / safe) / (safe - 1.0), min=0.0)
    sigma = torch.where(enough, variance.sqrt(), torch.full_like(variance, sigma_model))
    return torch.clamp(sigma, min=floor * sigma_model)


def with_readout_sigma(target, sigma: torch.Tensor):
    """A shallow copy of ``target`` carrying ``adc_sigma`` (read by the χ² loss)."""
    out = copy.copy(target)
    out.adc_sigma = sigma
    return out
