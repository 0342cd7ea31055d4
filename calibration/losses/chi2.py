"""χ² on matched readouts: Σ (ADC_guess − ADC_target)² / σ_ADC², for fits to noisy targets.

Readouts are matched by their key (event, plane, ix, iy, readout slot).  σ_ADC comes from the electronics
noise model (``sparsetpc.electronics``): every read carries the reset noise of the preceding reset (900 e⁻)
plus the uncorrelated noise of the read itself (500 e⁻), i.e. √(900² + 500²) ≈ 1030 e⁻, converted to ADC
counts with the slope of ``digitize`` (gain · 256 / (v_ref − v_cm) ≈ 1/988 ADC per e⁻), ≈ 1.04 ADC.  Not included:
the jitter of the integration window (the crossing time moves with the noise) and, in hard mode, the ADC
rounding (1/√12 ADC) — pass ``sigma`` to override.

Unmatched readouts (a key on one side only: threshold effects, noise-induced extra triggers) are handled
explicitly, by ``unmatched``:

* ``"ignore"`` (default): left out of the sum; their numbers are returned.  They are discrete events of the hit
  *set*, with no useful gradient; keeping them out makes the χ² a function of the matched readouts only.
* ``"threshold"``: each unmatched readout is compared with the ADC of the threshold charge (the most the missing
  side could have read without triggering): max(0, ADC − ADC_thr)² / σ², one-sided.

``max_dt`` [µs]: a key match whose crossing times differ by more than this is treated as two unmatched readouts
(a slot shift: one side triggered an extra time earlier on that pixel, so later slots are different charge).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

UNMATCHED = ("ignore", "threshold")


def noise_sigma_adc(front_end=None) -> float:
    """σ of one read in ADC counts from the noise model of ``front_end`` (default ``FrontEnd()``)."""
    from sparsetpc.electronics import FrontEnd
    fe = front_end or FrontEnd()
    adc_per_electron = fe.gain * fe.adc_counts / (fe.v_ref - fe.v_cm)
    return math.hypot(fe.reset_noise, fe.uncorrelated_noise) * adc_per_electron


def threshold_adc(front_end=None) -> float:
    from sparsetpc.electronics import FrontEnd, digitize
    fe = front_end or FrontEnd()
    return float(digitize(torch.tensor(fe.threshold, dtype=torch.float64), fe))


def readout_chi2(keys_out: torch.Tensor, adc_out: torch.Tensor, keys_target: torch.Tensor, adc_target: torch.Tensor,
                 sigma, unmatched: str = "ignore", adc_threshold: Optional[float] = None,
                 t_out: Optional[torch.Tensor] = None, t_target: Optional[torch.Tensor] = None,
                 max_dt: Optional[float] = None) -> Tuple[torch.Tensor, Dict[str, int]]:
    """(χ², counts) for readouts with integer keys [N, K] (unique per side) and ADC values [N].

    ``sigma``: one σ_ADC for every readout, or a tensor [N_target] of per-target-readout σ (e.g. from
    ``calibration.readout_sigma``); then unmatched guess readouts (``unmatched="threshold"``) use its median."""
    per_readout = torch.is_tensor(sigma) and sigma.dim() > 0
    if per_readout and sigma.shape[0] != keys_target.shape[0]:
        raise ValueError(f"per-readout sigma has {sigma.shape[0]} entries for {keys_target.shape[0]} target readouts")
    if unmatched not in UNMATCHED:
        raise ValueError(f"unmatched must be one of {UNMATCHED}, got {unmatched!r}")
    n_out, n_tgt = keys_out.shape[0], keys_target.shape[0]
    adc_target = adc_target.to(adc_out.dtype)
    zero = adc_out.sum() * 0.0
    if n_out + n_tgt == 0:
        return zero, {"matched": 0, "unmatched_guess": 0, "unmatched_target": 0}
    keys = torch.cat([keys_out, keys_target], dim=0)
    union, inverse = torch.unique(keys, dim=0, return_inverse=True)
    inv_out, inv_tgt = inverse[:n_out], inverse[n_out:]
    count_out = torch.zeros(union.shape[0], dtype=torch.long, device=keys.device).index_add_(
        0, inv_out, torch.ones_like(inv_out))
    count_tgt = torch.zeros(union.shape[0], dtype=torch.long, device=keys.device).index_add_(
        0, inv_tgt, torch.ones_like(inv_tgt))
    if bool((count_out > 1).any()) or bool((count_tgt > 1).any()):
        raise ValueError("readout keys must be unique on each side")
    both = (count_out == 1) & (count_tgt == 1)
    # position of each union key on either side (-1 if absent)
    pos_out = torch.full((union.shape[0],), -1, dtype=torch.long, device=keys.device)
    pos_out[inv_out] = torch.arange(n_out, device=keys.device)
    pos_tgt = torch.full((union.shape[0],), -1, dtype=torch.long, device=keys.device)
    pos_tgt[inv_tgt] = torch.arange(n_tgt, device=keys.device)
    if max_dt is not None and t_out is not None and t_target is not None:
        idx = torch.nonzero(both).squeeze(1)
        dt = (t_out.detach()[pos_out[idx]] - t_target.detach().to(t_out.dtype)[pos_tgt[idx]]).abs()
        both[idx[dt > max_dt]] = False
    m = torch.nonzero(both).squeeze(1)
    diff = adc_out[pos_out[m]] - adc_target[pos_tgt[m]]
    sigma_target = sigma.to(adc_out.dtype) if per_readout else sigma
    sigma_matched = sigma_target[pos_tgt[m]] if per_readout else sigma
    chi2 = zero + (diff / sigma_matched).pow(2).sum()
    matched_out = torch.zeros(n_out, dtype=torch.bool, device=keys.device)
    matched_out[pos_out[m]] = True
    matched_tgt = torch.zeros(n_tgt, dtype=torch.bool, device=keys.device)
    matched_tgt[pos_tgt[m]] = True
    counts = {"matched": int(m.numel()), "unmatched_guess": int((~matched_out).sum()),
              "unmatched_target": int((~matched_tgt).sum())}
    if unmatched == "threshold":
        thr = threshold_adc() if adc_threshold is None else float(adc_threshold)
        sigma_guess = sigma_target.median() if per_readout else sigma
        sigma_tgt = sigma_target[~matched_tgt] if per_readout else sigma
        chi2 = chi2 + (torch.clamp(adc_out[~matched_out] - thr, min=0.0) / sigma_guess).pow(2).sum()
        chi2 = chi2 + (torch.clamp(adc_target[~matched_tgt] - thr, min=0.0) / sigma_tgt).pow(2).sum()
    return chi2, counts


def readout_keys(hits) -> torch.Tensor:
    """[N, 5] int64 keys (event, plane, ix, iy, readout slot) of a ``Hits`` object."""
    cols = [hits.event, hits.plane, hits.ix, hits.iy, hits.readout]
    return torch.stack([c.reshape(-1).to(torch.int64) for c in cols], dim=1)


def key_rows(keys_from: torch.Tensor, keys_in: torch.Tensor) -> torch.Tensor:
    """Row of ``keys_in`` holding each row of ``keys_from`` (−1 where absent); keys unique within each side."""
    if keys_from.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=keys_from.device)
    if keys_in.shape[0] == 0:
        return torch.full((keys_from.shape[0],), -1, dtype=torch.long, device=keys_from.device)
    union, inverse = torch.unique(torch.cat([keys_from, keys_in]), dim=0, return_inverse=True)
    where = torch.full((union.shape[0],), -1, dtype=torch.long, device=keys_from.device)
    where[inverse[keys_from.shape[0]:]] = torch.arange(keys_in.shape[0], device=keys_from.device)
    return where[inverse[:keys_from.shape[0]]]
