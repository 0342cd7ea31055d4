"""Negative log-likelihood of target readouts (packets: pixel, slot, time, ADC) under the relaxed model.

The relaxed front end gives, for every pixel and readout slot s, the probability ``w_s`` that hard mode with
noise stores an s-th readout (nested: w_0 ≥ w_1 ≥ ...), and the mean and variance of its ADC and crossing
time given that it exists (``Hits.weight``, ``adc``, ``t``, ``adc_variance``, ``t_variance``).  For a pixel on
which the target holds n readouts (slots 0..n−1, in time order), the likelihood is

    P(N = n) · Π_{s<n} p_s(adc_s, t_s),      P(N = n) = w_{n−1} − w_n   (w_{−1} = 1, w_s = 0 past the last slot)

with the readout density a 2-D Gaussian in (ADC, t) with the model's covariance Σ_s (variances and the ADC–time
covariance: a high reset baseline both raises the read value and triggers earlier).  A pixel's readouts are a
chain: slot s starts where slot s − 1 ended, so with the front end's covariances of (ADC_s, t_s) with t_{s−1}
(``Hits.adc_t_previous_covariance``, ``t_previous_covariance``) slot s ≥ 1 is scored by its density given the
target's own t_{s−1} (:func:`conditional_readout`: the Gaussian regression on the previous crossing), so the
pixel's density is p(x_0) Π p(x_s | t_{s−1}), not the product of marginals that would count the jitter shared by
consecutive readouts of a long pulse several times over.  The density is given 1 % of its weight in
a component 30 times wider (heavy tails: far from the truth, where every readout is many σ from the model, the
likelihood still slopes towards it instead of going flat), and an outlier component (a slot whose readout is
far from the model's, e.g. after a noise-shifted slot, or a slot the model thinks improbable):

    p_s(x) = (w_s · [0.99·N₂(x; μ_s, Σ_s) + 0.01·N₂(x; μ_s, 30²Σ_s)] + η · B) / (w_s + η),
    B = exp(−χ²_out / 2) / (2π σ_a0 σ_t0)       (σ_a0 the noise model's σ_ADC, σ_t0 one tick, χ²_out = 50)

so that a readout beyond the broad component's reach costs a constant, and a slot
that fades out of the model (w_s → 0) joins the outlier term continuously.  η = 1e-6: the model's weight
w_s/(w_s + η) is 1 to 1e-6/w_s, so the values do not depend on w_s where the slot exists (with η = 1 they did, and
the score at the truth had a mean of −Σ ∂w_s/(w_s + 1): a bias of ≈ 0.1 σ per track).  Pixels where either side has
readouts all count (a pixel the model fires and the target does not: −log(1 − w_0)).  ``count_floor`` is
added to P(N = n): a target count the model calls impossible costs −log(count_floor), not infinity.

The value is −log L summed over pixels (up to a constant): a likelihood, so the curvature at the minimum
gives σ with ``up = 0.5`` (cov = H⁻¹).  Everything is smooth in the guess's tensors: no matching by
threshold, no argmin; the slots are matched by index as the hardware counts them.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from .chi2 import key_rows, noise_sigma_adc

#: defaults: the readout density's broad component (weight, width in units of the model's σ), the flat
#: outlier density's level (the density of a χ² = OUTLIER_CHI2 readout at σ_a0, σ_t0), P(N = n) floor
BROAD_WEIGHT = 0.01
BROAD_SCALE = 30.0
OUTLIER_CHI2 = 50.0
COUNT_FLOOR = 1e-6
OUTLIER_WEIGHT = 1e-6
#: the time-variance floor [µs²] (a tick's quantisation) and the cap on |correlation| of a readout's (ADC, t)
TIME_VARIANCE_FLOOR = 0.1 ** 2 / 12.0
MAX_CORRELATION = 0.99
#: the chain count: conditional existence probabilities kept in [ε, 1 − ε], and the cap on the probit slope [1/µs]
EXISTENCE_EPSILON = 1e-12
MAX_EXISTENCE_SLOPE = 20.0
EXISTENCE_DENSITY_FLOOR = math.exp(-8.0) / math.sqrt(2.0 * math.pi)        # φ(4)


def existence_probit(weight: torch.Tensor, previous_weight: torch.Tensor, existence_slope: torch.Tensor,
                     epsilon: float = EXISTENCE_EPSILON, max_slope: float = MAX_EXISTENCE_SLOPE):
    """(z, k): the probability that a slot exists given that the previous one does and that the previous crossing
    came d [µs] after the model's mean is Φ(z + k·d), with Φ(z) = w_s/w_{s−1} (kept in [ε, 1 − ε]) and
    k = ∂(w_s/w_{s−1})/∂t_{s−1} / max(φ(z), φ(4)) (``existence_slope``, capped at ``max_slope``): the existence's
    derivative with respect to the start carried as a shift of its probit."""
    tiny = torch.finfo(weight.dtype).tiny
    ratio = torch.where(previous_weight > tiny, weight / torch.clamp(previous_weight, min=tiny), torch.zeros_like(weight))
    z = torch.special.ndtri(torch.clamp(ratio, epsilon, 1.0 - epsilon))
    # the density floored at φ(4): where the slot is all but certain (or impossible) a slope of roundoff size
    # must not become a probit shift (φ(7) ≈ 1e-11 turned a 3e-6/µs slope into the cap)
    density = torch.clamp(torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi), min=EXISTENCE_DENSITY_FLOOR)
    k = torch.clamp(existence_slope / density, -max_slope, max_slope)
    return z, k


def readout_covariance(adc_variance: torch.Tensor, time_variance: torch.Tensor, adc_time_covariance: torch.Tensor,
                       time_variance_floor: float = TIME_VARIANCE_FLOOR, max_correlation: float = MAX_CORRELATION):
    """(var_ADC, var_t, cov) of a readout's density as the likelihood uses them: the time floor added, the
    covariance capped at ``max_correlation``·σ_ADC·σ_t."""
    var_t = time_variance + time_variance_floor
    limit = max_correlation * torch.sqrt(adc_variance * var_t)
    return adc_variance, var_t, torch.maximum(torch.minimum(adc_time_covariance, limit), -limit)


def conditional_readout(adc: torch.Tensor, time: torch.Tensor, adc_variance: torch.Tensor, time_variance: torch.Tensor,
                        adc_time_covariance: torch.Tensor, previous_time_variance: torch.Tensor,
                        adc_previous_covariance: torch.Tensor, time_previous_covariance: torch.Tensor,
                        deviation: torch.Tensor, time_variance_floor: float = TIME_VARIANCE_FLOOR,
                        max_correlation: float = MAX_CORRELATION):
    """(mean ADC, mean t, var_ADC, var_t, cov) of a readout's density given the previous readout of its pixel
    observed ``deviation`` [µs] from the model's mean crossing time.

    A readout's window starts where the previous one's ended, so its (ADC, t) depend on the previous crossing:
    with V = the previous readout's time variance (+ the floor) and c = (Cov(ADC, t_prev), Cov(t, t_prev)) from
    the front end (|correlations| capped at ``max_correlation``), the Gaussian regression gives the mean
    μ + c·deviation/V and the covariance Σ − c cᵀ/V (its own correlation capped as :func:`readout_covariance`).
    With c = 0 (a pixel's first readout) this is the marginal density of :func:`readout_covariance`."""
    previous = previous_time_variance + time_variance_floor
    var_t = time_variance + time_variance_floor
    limit_t = max_correlation * torch.sqrt(var_t * previous)
    limit_a = max_correlation * torch.sqrt(adc_variance * previous)
    c_t = torch.maximum(torch.minimum(time_previous_covariance, limit_t), -limit_t)
    c_a = torch.maximum(torch.minimum(adc_previous_covariance, limit_a), -limit_a)
    beta_t, beta_a = c_t / previous, c_a / previous
    var_a_c = adc_variance - c_a * beta_a
    var_t_c = var_t - c_t * beta_t
    covariance = adc_time_covariance - c_a * beta_t
    limit = max_correlation * torch.sqrt(var_a_c * var_t_c)
    covariance = torch.maximum(torch.minimum(covariance, limit), -limit)
    return adc + beta_a * deviation, time + beta_t * deviation, var_a_c, var_t_c, covariance


def readout_nll(pixel_guess: torch.Tensor, slot_guess: torch.Tensor, weight: torch.Tensor, adc: torch.Tensor,
                time: torch.Tensor, adc_variance: torch.Tensor, time_variance: torch.Tensor,
                pixel_target: torch.Tensor, slot_target: torch.Tensor, adc_target: torch.Tensor,
                time_target: torch.Tensor, adc_time_covariance: Optional[torch.Tensor] = None,
                adc_previous_covariance: Optional[torch.Tensor] = None,
                time_previous_covariance: Optional[torch.Tensor] = None,
                existence_slope: Optional[torch.Tensor] = None, *, chain_count: bool = False, n_slots: int = 10,
                broad_weight: float = BROAD_WEIGHT, broad_scale: float = BROAD_SCALE, outlier_chi2: float = OUTLIER_CHI2,
                outlier_weight: float = OUTLIER_WEIGHT, count_floor: float = COUNT_FLOOR, min_weight: float = 1e-9,
                sigma_adc0: Optional[float] = None, sigma_time0: float = 0.1,
                time_variance_floor: float = TIME_VARIANCE_FLOOR, terms: str = "all") -> Tuple[torch.Tensor, Dict[str, float]]:
    """(−log L, summary) for guess readouts (pixel keys [Ng, K], slot [Ng], weight, adc, time, variances [Ng])
    and target readouts (pixel keys [Nt, K], slot [Nt], adc, time [Nt]).  See the module docstring.
    ``adc_time_covariance`` [Ng] (optional): the covariance of each guess readout's ADC and time; the readout
    density is then the correlated 2-D Gaussian (|correlation| capped at 0.99).
    ``time_variance_floor`` [µs²] is added to the model's time variance (a tick's quantisation, 0.1²/12: the model
    is not exact to better than that, and a crossing certain to one tick would otherwise have zero width).
    ``adc_previous_covariance``, ``time_previous_covariance`` [Ng] (optional, together): the covariance of each
    guess readout's ADC and time with the previous readout's time on its pixel (``Hits.adc_t_previous_covariance``,
    ``t_previous_covariance``); a target readout of slot s ≥ 1 is then scored by its density given the target's
    own readout of slot s − 1 (:func:`conditional_readout`): the chain p(x_0) Π p(x_s | t_{s−1}) of a pixel's
    readouts, which are correlated through their shared starts, instead of their product as if independent.
    ``existence_slope`` [Ng] (optional, with the covariances) and ``chain_count=True`` (experimental, off by
    default): ∂P(slot s exists | slot s − 1 does)/∂t_{s−1} [1/µs] (``Hits.existence_slope``); the count is then
    scored along the chain too: P(N = n) =
    w_0 · Π_{0<s<n} Φ(z_s + k_s d_{s−1}) · (1 − Φ(z_n + k_n d_{n−1})) (:func:`existence_probit`, d the target's
    previous crossing minus the model's mean), which is w_{n−1} − w_n where the slopes are 0.  It follows hard
    mode where a long pulse ends (tests/test_hit_likelihood.py), but calibration/fisher.py has no exact expected
    information for it yet (the chain's existence probabilities average to Φ(z/√(1 + k²V)), not the model's
    w_s/w_{s−1}), so the default count is the marginal P(N = n) = w_{n−1} − w_n.
    ``terms``: ``all`` (−log L), or one part of it for diagnostics: ``count`` (−Σ log P(N = n)) or ``value`` (the
    readouts' densities)."""
    if terms not in ("all", "count", "value"):
        raise ValueError(f"terms must be 'all', 'count' or 'value', not {terms!r}")
    dtype, device = adc.dtype, adc.device
    sigma_adc0 = noise_sigma_adc() if sigma_adc0 is None else float(sigma_adc0)
    log_outlier = math.log(outlier_weight) - 0.5 * outlier_chi2 - math.log(2.0 * math.pi * sigma_adc0 * sigma_time0)
    zero = adc.sum() * 0.0 + weight.sum() * 0.0
    n_guess, n_target = pixel_guess.shape[0], pixel_target.shape[0]
    if n_guess + n_target == 0:
        return zero, {"pixels": 0, "target_readouts": 0, "expected_readouts": 0.0}
    if n_target and int(slot_target.max()) >= n_slots or n_guess and int(slot_guess.max()) >= n_slots:
        raise ValueError(f"readout slot beyond the front end's {n_slots} readouts per pixel")
    union = torch.unique(torch.cat([pixel_guess, pixel_target.to(pixel_guess.dtype)]), dim=0)
    n_pixels = union.shape[0]
    row_guess = key_rows(pixel_guess, union)
    row_target = key_rows(pixel_target.to(pixel_guess.dtype), union)
    # w[p, s], s = 0..n_slots (the last column stays 0: no readout past the last slot)
    table = torch.zeros((n_pixels, n_slots + 1), dtype=dtype, device=device)
    table = table.index_put((row_guess, slot_guess), weight.to(dtype))
    counts = torch.bincount(row_target, minlength=n_pixels)
    before = torch.where(counts > 0, table[torch.arange(n_pixels, device=device), torch.clamp(counts - 1, min=0)],
                         torch.ones(n_pixels, dtype=dtype, device=device))
    after = table[torch.arange(n_pixels, device=device), counts]
    probability = torch.clamp(before - after, min=0.0)
    # which guess / target readout holds each (pixel, slot) [n_pixels, n_slots] (−1: none)
    where = torch.full((n_pixels, n_slots), -1, dtype=torch.long, device=device)
    where[row_guess, slot_guess] = torch.arange(n_guess, device=device)
    target_at = torch.full((n_pixels, n_slots), -1, dtype=torch.long, device=device)
    target_at[row_target, slot_target] = torch.arange(n_target, device=device)
    chained_count = (chain_count and existence_slope is not None and time_previous_covariance is not None
                     and adc_previous_covariance is not None)
    if not chained_count:
        count_term = -torch.log(probability + count_floor).sum()
    else:
        # the count along the chain: each slot's existence given the previous crossing the target shows; tables
        # [n_pixels, n_slots + 1] by slot (as ``table``), shifted by one slot for the previous readout's
        shift = lambda x, fill: torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)
        # the readout before slot s = 0..n_slots (the index tables end at slot n_slots − 1)
        previous_guess, previous_target = [torch.cat([torch.full_like(at_slot[:, :1], -1), at_slot], dim=1)
                                           for at_slot in (where, target_at)]
        both = (previous_guess >= 0) & (previous_target >= 0)
        deviation = torch.where(both, time_target.to(dtype)[torch.clamp(previous_target, min=0)]
                                - time.to(dtype)[torch.clamp(previous_guess, min=0)], torch.zeros_like(table))
        slope_table = torch.zeros((n_pixels, n_slots + 1), dtype=dtype, device=device)
        slope_table = slope_table.index_put((row_guess, slot_guess), existence_slope.to(dtype))
        z, k = existence_probit(table, shift(table, 1.0), slope_table)
        x = z + k * deviation
        slot_index = torch.arange(n_slots + 1, device=device)[None, :]
        log_exists = torch.where(slot_index < counts[:, None], torch.special.log_ndtr(x), torch.zeros_like(x)).sum(1)
        log_ends = torch.special.log_ndtr(-x).gather(1, counts[:, None])[:, 0]
        count_term = -torch.logaddexp(log_exists + log_ends,
                                      torch.full_like(log_ends, math.log(count_floor))).sum()
    # values of the target readouts against the guess's slot (absent slot: weight 0 → the outlier density)
    at = where[row_target, slot_target] if n_target else torch.zeros(0, dtype=torch.long, device=device)
    present = at >= 0
    index = torch.clamp(at, min=0)
    value_term = zero
    if n_target and bool(present.any()):
        pick = lambda x: x[index]
        # a slot is reported while w ≥ min_weight (FrontEnd.min_weight): w − min_weight reaches 0 where it drops
        # out, so the density passes into the outlier term continuously however small B is
        w = torch.where(present, torch.clamp(pick(weight) - min_weight, min=0.0), torch.zeros_like(adc_target, dtype=dtype))
        covariance_in = pick(adc_time_covariance) if adc_time_covariance is not None else torch.zeros_like(w)
        mean_a, mean_t = pick(adc), pick(time)
        if time_previous_covariance is not None and adc_previous_covariance is not None:
            # the target's previous readout on the pixel and the guess's slot it is scored against
            previous_slot = torch.clamp(slot_target - 1, min=0)
            previous_target = target_at[row_target, previous_slot]
            previous_guess = where[row_target, previous_slot]
            chained = present & (slot_target > 0) & (previous_target >= 0) & (previous_guess >= 0)
            previous_guess = torch.clamp(previous_guess, min=0)
            previous_target = torch.clamp(previous_target, min=0)
            zero_c = torch.zeros_like(w)
            c_a = torch.where(chained, pick(adc_previous_covariance), zero_c)
            c_t = torch.where(chained, pick(time_previous_covariance), zero_c)
            deviation = torch.where(chained, time_target.to(dtype)[previous_target] - time[previous_guess], zero_c)
            mean_a, mean_t, var_a, var_t, covariance = conditional_readout(
                mean_a, mean_t, pick(adc_variance), pick(time_variance), covariance_in,
                torch.where(chained, time_variance[previous_guess], zero_c), c_a, c_t, deviation,
                time_variance_floor)
        else:
            var_a, var_t, covariance = readout_covariance(pick(adc_variance), pick(time_variance), covariance_in,
                                                          time_variance_floor)
        var_a = torch.where(present, var_a, torch.ones_like(w))
        var_t = torch.where(present, var_t, torch.ones_like(w))
        covariance = torch.where(present, covariance, torch.zeros_like(w))
        da = adc_target.to(dtype) - mean_a
        dt = time_target.to(dtype) - mean_t
        determinant = var_a * var_t - covariance * covariance
        chi2 = (var_t * da * da - 2.0 * covariance * da * dt + var_a * dt * dt) / determinant
        log_narrow = -0.5 * chi2 - 0.5 * torch.log(determinant) - math.log(2.0 * math.pi)
        if broad_weight > 0:
            # the same Gaussian, broad_scale times wider in both axes (determinant × scale⁴)
            log_broad = (-0.5 * chi2 / broad_scale ** 2 - 0.5 * torch.log(determinant) - 2.0 * math.log(broad_scale)
                         - math.log(2.0 * math.pi))
            log_gauss = torch.logaddexp(math.log1p(-broad_weight) + log_narrow, math.log(broad_weight) + log_broad)
        else:
            log_gauss = log_narrow
        log_w = torch.log(torch.clamp(w, min=torch.finfo(dtype).tiny))
        mixed = torch.logaddexp(log_w + log_gauss, torch.full_like(w, log_outlier))
        log_p = mixed - torch.log(w + outlier_weight)
        # absent slots: (0 + ηB)/(0 + η) = B exactly
        log_p = torch.where(present, log_p, torch.full_like(log_p, log_outlier - math.log(outlier_weight)))
        value_term = -log_p.sum()
    elif n_target:
        value_term = zero + n_target * -(log_outlier - math.log(outlier_weight))
    summary = {"pixels": int(n_pixels), "target_readouts": int(n_target),
               "expected_readouts": float(weight.detach().sum()),
               "target_slots_absent_in_model": int((~present).sum()) if n_target else 0}
    if n_target and bool(present.any()):
        # goodness of fit: the target readouts' χ² against the model's (conditional) Gaussian, 2 per readout on
        # average where the model describes the data
        summary["chi2_sum"] = float(chi2.detach()[present].sum())
        summary["chi2_readouts"] = int(present.sum())
    if terms == "count":
        return count_term + zero, summary
    if terms == "value":
        return value_term + zero, summary
    return count_term + value_term, summary
