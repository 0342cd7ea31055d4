"""LArPix front-end electronics: self-trigger, hold/integration, reset and ADC (physics.md §2.7).

Three modes on the same per-pixel charge waveforms (electrons per 0.1 µs tick, column 0 empty):

* ``hard`` — larnd-sim's non-differentiable ``fee.get_adc_values``: sequential walk, trigger when the running
  sum plus a per-tick 500 e⁻ noise draw reaches threshold, integration of ticks c..c+18 on top of the running sum
  *counting the crossing tick twice* (larnd-sim's behaviour; ``FrontEnd(double_count_crossing=False)`` counts it
  once), a 500 e⁻ read noise, reset with a one-tick dead time (plus the loop's own tick after a stored read),
  integer ADC (round half to even, as numpy.around).  Data are simulated in this mode.
* ``relaxed`` (default) — the **expectation of hard mode over its noise**, smooth in every parameter
  (:func:`expected_readout`): the trigger tick is a first-passage distribution over ticks (per-tick hazard
  Φ((running − thr)/σ_tick), the reset baseline integrated by Gauss–Hermite quadrature), the read value and the
  crossing tick are their expectations given that the readout exists, and every readout carries its probability
  of existing (``weight``), so readouts appear and disappear continuously at threshold.  No quantity a parameter
  moves passes through a hard index.  ADC values are the expected ADC of hard mode (linear digitisation: with
  ≈ 1 ADC of noise, E[round(x)] = x to 3e-3 counts).
* ``reference`` — the differentiable reference model's front end (for parity with its outputs): cumulative
  charge, threshold crossing linearly interpolated, read at ⌊crossing⌋ + 18, read charge removed, float ADC +0.5.

Noise (hard and reference modes, seeded through a ``torch.Generator``): reset noise 900 e⁻ on every reset,
uncorrelated noise 500 e⁻ on every read (and, in hard mode, on every tick's trigger decision).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

import torch
from torch import nn


@dataclass
class FrontEnd:
    """LArPix v2 front-end constants (larnd-sim ``fee``).  Charges in electrons, voltages in mV."""

    threshold: float = 7.0e3              # e⁻
    max_readouts: int = 10
    adc_hold_delay: int = 15              # clock cycles
    clock_cycle: float = 0.1              # µs
    tick: float = 0.1                     # µs, sampling of the current
    gain: float = 4.0e-3                  # mV per e⁻
    v_cm: float = 288.0
    v_ref: float = 1300.0
    v_pedestal: float = 580.0
    adc_counts: int = 256
    reset_noise: float = 900.0            # e⁻
    uncorrelated_noise: float = 500.0     # e⁻
    double_count_crossing: bool = True    # hard mode: larnd-sim adds the crossing tick twice
    quadrature_nodes: int = 8             # relaxed mode: Gauss–Hermite nodes over the reset baseline
    min_weight: float = 1e-9              # relaxed mode: readouts less probable than this are not reported
    max_attempts: int = 4                 # relaxed mode: trigger attempts per slot (a failed read walks on)
    clock_phases: int = 3                 # relaxed mode: clock phases averaged over (1: the simulated phase only)

    @property
    def integration_ticks(self) -> int:
        """Ticks from the crossing to the end of integration (3 + hold delay clock cycles)."""
        return int(round((3 * self.clock_cycle + self.adc_hold_delay * self.clock_cycle) / self.tick))

    @property
    def dead_ticks(self) -> int:
        return int(round(self.clock_cycle / self.tick))

    def pedestal(self, hard: bool = False, mode: Optional[str] = None) -> float:
        """ADC of zero charge: 74.3656 for the reference front end (float, +0.5), 74 hard (rounded),
        73.8656 relaxed (the mean of hard mode's rounded value under noise)."""
        if mode is not None:
            return float(digitize(torch.zeros((), dtype=torch.float64), self, mode=mode))
        return float(digitize(torch.zeros((), dtype=torch.float64), self, hard=hard))


def digitize(charge: torch.Tensor, front_end: FrontEnd, hard: bool = False, mode: Optional[str] = None) -> torch.Tensor:
    """ADC counts of an integrated charge [e⁻].  ``mode``: ``reference`` float with +0.5 (also the default when
    ``hard`` is False, for compatibility); ``hard`` rounded (half to even); ``relaxed`` linear (no offset, no
    rounding: the mean of the rounded value under ≈ 1 ADC of noise)."""
    if mode is None:
        mode = "hard" if hard else "reference"
    volts = torch.clamp(charge * front_end.gain + front_end.v_pedestal - front_end.v_cm, min=0.0)
    counts = volts * front_end.adc_counts / (front_end.v_ref - front_end.v_cm)
    if mode == "hard":
        counts = torch.round(counts)
    elif mode == "reference":
        counts = counts + 0.5
    elif mode != "relaxed":
        raise ValueError(f"unknown digitisation mode {mode!r}")
    return torch.clamp(counts, max=float(front_end.adc_counts))


def _normal(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def draw_readout_noise(n_pixels: int, front_end: FrontEnd, like: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard-normal draws [U, 1 + 2R] for :func:`reference_readout` (initial reset, then per pass: read, reset).
    Drawn up front so that a checkpointed recomputation sees the same noise."""
    return _normal((n_pixels, 1 + 2 * front_end.max_readouts), like, generator)


def reference_readout(charge: torch.Tensor, front_end: FrontEnd, noise_draws: Optional[torch.Tensor] = None):
    """The differentiable reference model's self-trigger on waveforms ``charge`` [U, W] (e⁻ per tick, column 0
    empty).  Its read index ⌊crossing⌋ + 18 is hard: smooth between index jumps only (use :func:`expected_readout`
    for fits).

    ``noise_draws``: None (noise off) or the output of :func:`draw_readout_noise`.
    Returns ``adc`` [U, R] (float), ``crossing`` [U, R] (local tick, float, interpolated), ``valid`` [U, R].
    """
    n_pixels, width = charge.shape
    thr = front_end.threshold
    noise = noise_draws is not None
    cumulative = torch.cumsum(charge, dim=1)
    baseline = (noise_draws[:, :1] * front_end.reset_noise) if noise else charge.new_zeros((n_pixels, 1))
    adcs, crossings, valids = [], [], []
    columns = torch.arange(1, width, device=charge.device)
    for pass_index in range(front_end.max_readouts):
        total = cumulative + baseline
        above = (total[:, 1:] >= thr) & (total[:, :-1] <= thr)
        has = above.any(dim=1)
        # first crossing column k ≥ 1
        k = torch.where(above, columns[None, :], torch.full_like(columns[None, :], width)).amin(dim=1)
        k = torch.where(has, k, torch.ones_like(k))
        before = total.gather(1, (k - 1)[:, None]).squeeze(1)
        after = total.gather(1, k[:, None]).squeeze(1)
        step = torch.clamp(after - before, min=torch.finfo(charge.dtype).tiny)
        crossing = (k - 1).to(charge.dtype) + (thr - before) / step
        crossing = torch.where(has, crossing, torch.zeros_like(crossing))
        end = torch.clamp(torch.floor(crossing.detach()).long() + front_end.integration_ticks, max=width - 1)
        read = total.gather(1, end[:, None]).squeeze(1)
        if noise:
            read = read + noise_draws[:, 1 + 2 * pass_index] * front_end.uncorrelated_noise
        passed = has & (read >= thr)
        adcs.append(torch.where(passed, digitize(read, front_end), torch.zeros_like(read)))
        crossings.append(torch.where(passed, crossing, torch.zeros_like(crossing)))
        valids.append(passed)
        removed = cumulative.gather(1, end[:, None])
        cumulative = torch.where(has[:, None], torch.clamp(cumulative - removed, min=0.0), cumulative)
        if noise:
            reset = torch.where(passed, torch.full_like(read, front_end.reset_noise),
                                torch.full_like(read, front_end.uncorrelated_noise))
            baseline = torch.where(has, noise_draws[:, 2 + 2 * pass_index] * reset, baseline.squeeze(1))[:, None]
        if not bool(has.any()):
            # nothing left to trigger: remaining passes would produce no readout
            for _ in range(front_end.max_readouts - len(adcs)):
                adcs.append(torch.zeros_like(read))
                crossings.append(torch.zeros_like(crossing))
                valids.append(torch.zeros_like(passed))
            break
    return torch.stack(adcs, 1), torch.stack(crossings, 1), torch.stack(valids, 1)


def _smooth_floor(value: torch.Tensor, width: float) -> torch.Tensor:
    """max(value, 0) with its corner rounded over ``width`` (smooth: a fit's step never meets a kink)."""
    return 0.5 * (value + torch.sqrt(value * value + width * width))


def _gauss_hermite(n: int, like: torch.Tensor):
    """Nodes and weights of E[g(Z)], Z ~ N(0, 1), by Gauss–Hermite quadrature (probabilists' form)."""
    import numpy as np
    nodes, weights = np.polynomial.hermite_e.hermegauss(int(n))
    weights = weights / weights.sum()
    return (torch.as_tensor(nodes, dtype=like.dtype, device=like.device),
            torch.as_tensor(weights, dtype=like.dtype, device=like.device))


def _walk_attempt(position, sigma_baseline, cumulative, padded, read_charge, columns_f, end_f, front_end,
                  nodes, node_weights, horizon_exposure, last, active=None, slopes=False, exact_start=False):
    """One trigger attempt of the hard walk from the continuous ``position`` [U] with a reset baseline of σ
    ``sigma_baseline``: probabilities and probability-weighted sums of the stored (passed) and failed reads.

    Hard mode starts at integer ticks; a position t = n + φ is the mixture of the walks from n − 1, n, n + 1 and
    n + 2 with the cubic B-spline's weights (1 − φ)³/6, (3φ³ − 6φ² + 4)/6, (−3φ³ + 3φ² + 3φ + 1)/6, φ³/6: a
    distribution of the integer start with mean t and variance 1/3 at every t, and weights twice continuously
    differentiable in t, so the outputs are too (the two-start linear mixture was only continuous: its slope in
    t jumped at every integer, which central differences of a fit's loss see at steps of 1e-4 and above).
    ``exact_start``: the position is a constant integer (the first attempt of the first slot): one walk.

    With ``slopes`` three more outputs (last): the derivatives with respect to t of the stored probability,
    Σ value and Σ crossing, the weights' derivatives applied to the same four walks (continuous in t).

    ``active`` [U] (bool, optional): only these rows are walked; the others' outputs are 0 (rows are
    independent, so the result of a row does not depend on which others are walked).  Columns before the
    earliest start of the walked rows are not evaluated (they are not exposed)."""
    n_total = cumulative.shape[0]
    if active is not None:
        walked = torch.nonzero(active).flatten()
        if walked.numel() < n_total:
            if walked.numel() == 0:
                return tuple(cumulative.new_zeros(n_total) for _ in range(12 if slopes else 9))
            sub = _walk_attempt(position[walked], sigma_baseline, cumulative[walked], padded[walked],
                                read_charge[walked], columns_f, end_f[walked], front_end, nodes, node_weights,
                                horizon_exposure[walked], last[walked], slopes=slopes, exact_start=exact_start)
            return tuple(cumulative.new_zeros(n_total).index_copy(0, walked, value) for value in sub)
    dtype = cumulative.dtype
    n_pixels, width = cumulative.shape
    thr = front_end.threshold
    sigma_tick = max(float(front_end.uncorrelated_noise), 1.0)
    sigma_read = max(float(front_end.uncorrelated_noise), 1.0)
    # a walk cannot start past its own row's end (rows are zero-padded to the group's width): bounded per row,
    # the result does not depend on the padding
    position = torch.minimum(torch.clamp(position, min=0.0), (last + 1).to(dtype))
    lower = torch.minimum(torch.floor(position.detach()).long(), last)
    if exact_start:
        starts = [lower]
    else:
        fraction = position - lower.to(dtype)
        starts = [torch.clamp(lower + offset, min=0) for offset in (-1, 0)] + \
                 [torch.minimum(lower + offset, last + 1) for offset in (1, 2)]
    # columns before the earliest start are not exposed in any row: leave them out
    skip = int(starts[0].min())
    if skip > 0:
        cumulative, read_charge, end_f = cumulative[:, skip:], read_charge[:, skip:], end_f[:, skip:]
        columns_f, horizon_exposure = columns_f[skip:], horizon_exposure[:, skip:]
    start = torch.cat(starts)                                                    # [S·U] integer, S = 1 or 4 starts
    rows = torch.cat([torch.arange(n_pixels, device=start.device)] * len(starts))
    base = padded[rows, start]                                                                 # C(start − 1)
    exposed = columns_f[None, :] >= start.to(dtype)[:, None]                                   # [S·U, W]
    baseline = nodes * sigma_baseline                                                          # [M]
    running = (cumulative[rows] - base[:, None])[:, :, None] + baseline                         # [S·U, W, M]
    exposure = torch.where(exposed, horizon_exposure[rows], torch.zeros_like(horizon_exposure[rows]))
    log_survive = exposure[:, :, None] * torch.special.log_ndtr((thr - running) / sigma_tick)
    survive_through = torch.cumsum(log_survive, dim=1)
    first = torch.exp(survive_through - log_survive) * -torch.expm1(log_survive) * node_weights  # P(c = k, b)
    value = (read_charge[rows] - base[:, None])[:, :, None] + baseline
    z = (value - thr) / sigma_read
    passes = torch.special.ndtr(z)
    stored = first * passes
    failed = first - stored
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    stored_value = first * (value * passes + sigma_read * density)
    # E[X²; X > thr] for X ~ N(v, σ²): (v² + σ²)Φ(z) + σ(v + thr)φ(z)
    stored_square = first * ((value * value + sigma_read ** 2) * passes + sigma_read * (value + thr) * density)
    stored_column = stored.sum(dim=2)                                                           # [S·U, W]
    failed_column = failed.sum(dim=2)
    outputs = torch.stack([stored_column.sum(dim=1), stored_value.sum(dim=(1, 2)),
                           (stored_column * columns_f).sum(dim=1), (stored_column * end_f[rows]).sum(dim=1),
                           failed_column.sum(dim=1), (failed_column * end_f[rows]).sum(dim=1),
                           stored_square.sum(dim=(1, 2)), (stored_column * columns_f * columns_f).sum(dim=1),
                           (stored_value.sum(dim=2) * columns_f).sum(dim=1)])                     # [9, S·U]
    if exact_start:
        return tuple(outputs) + (tuple(torch.zeros_like(outputs[:3])) if slopes else ())
    walks = outputs.reshape(9, 4, n_pixels)                                 # [output, start n − 1 … n + 2, row]
    rest = 1.0 - fraction
    square = fraction * fraction
    weights = torch.stack([rest * rest * rest, (3.0 * fraction - 6.0) * square + 4.0,
                           (-3.0 * fraction + 3.0) * square + 3.0 * fraction + 1.0, square * fraction]) / 6.0
    mixed = (walks * weights).sum(dim=1)
    if not slopes:
        return tuple(mixed)
    derivatives = torch.stack([-0.5 * rest * rest, (1.5 * fraction - 2.0) * fraction,
                               (-1.5 * fraction + 1.0) * fraction + 0.5, 0.5 * square])
    return tuple(mixed) + tuple((walks[:3] * derivatives).sum(dim=1))


def _slot_sums(position, chain, walk, slopes=False, exact_start=False):
    """One readout slot of :func:`expected_readout` from the mean start ``position`` [U] (``chain`` [U]: the
    probability of reaching the slot): its trigger attempts summed, probability-weighted: (probability,
    Σ value, Σ crossing, Σ end, Σ value², Σ crossing², Σ value·crossing), each [U]; with ``slopes`` also the
    derivatives of the first three with respect to the start position (through each attempt's own walk).
    ``exact_start``: ``position`` is a constant integer (the first slot starts at column 0)."""
    cumulative, padded, read_charge, columns_f, end_f, front_end, nodes, node_weights, horizon_exposure, last = walk
    n_pixels = cumulative.shape[0]
    tiny = torch.finfo(cumulative.dtype).tiny
    start = position
    sigma_baseline = float(front_end.reset_noise)
    reach = cumulative.new_ones(n_pixels)           # probability of making this attempt (given the slot)
    probability = cumulative.new_zeros(n_pixels)
    sum_value = cumulative.new_zeros(n_pixels)
    sum_crossing = cumulative.new_zeros(n_pixels)
    sum_end = cumulative.new_zeros(n_pixels)
    sum_square = cumulative.new_zeros(n_pixels)
    sum_crossing_square = cumulative.new_zeros(n_pixels)
    sum_value_crossing = cumulative.new_zeros(n_pixels)
    slope_sums = [cumulative.new_zeros(n_pixels) for _ in range(3)] if slopes else []
    for _attempt in range(front_end.max_attempts):
        # rows whose attempt is less probable than min_weight are not walked (their outputs are not reported)
        active = (chain * reach).detach() >= front_end.min_weight
        p_pass, v_pass, c_pass, e_pass, p_fail, e_fail, v2_pass, c2_pass, vc_pass, *slope = _walk_attempt(
            start, sigma_baseline, cumulative, padded, read_charge, columns_f, end_f, front_end,
            nodes, node_weights, horizon_exposure, last, active, slopes=slopes,
            exact_start=exact_start and _attempt == 0)
        slope_sums = [total + reach * part for total, part in zip(slope_sums, slope)]
        probability = probability + reach * p_pass
        sum_value = sum_value + reach * v_pass
        sum_crossing = sum_crossing + reach * c_pass
        sum_end = sum_end + reach * e_pass
        sum_square = sum_square + reach * v2_pass
        sum_crossing_square = sum_crossing_square + reach * c2_pass
        sum_value_crossing = sum_value_crossing + reach * vc_pass
        # a row walks on while its next attempt is at least min_weight probable (decided per row, so the
        # result does not depend on which rows share the group)
        reach = reach * p_fail
        reach = torch.where((chain * reach).detach() >= front_end.min_weight, reach, torch.zeros_like(reach))
        if not bool((reach.detach() > 0).any()):
            break
        start = e_fail / torch.clamp(p_fail, min=tiny) + 1.0 + front_end.dead_ticks
        sigma_baseline = float(front_end.uncorrelated_noise)
    return (probability, sum_value, sum_crossing, sum_end, sum_square, sum_crossing_square, sum_value_crossing,
            *slope_sums)


def expected_readout(charge: torch.Tensor, front_end: FrontEnd, horizon: Optional[torch.Tensor] = None,
                     row_width: Optional[torch.Tensor] = None, moments: bool = False, overflow: bool = False,
                     previous_covariances: bool = False):
    """The expectation of :func:`hard_readout` with noise, smooth in ``charge`` [U, W] (e⁻ per tick, column 0 empty).

    A walk attempt starts at a continuous position p (0 for the first) with a reset baseline b ~ N(0, σ_b²)
    (integrated over Gauss–Hermite nodes) and the running sum R_k = C_k − C(p−1) + b (C the cumulative charge).
    Tick k ≥ p triggers with the hazard h_k = Φ((R_k − thr)/σ_tick) (σ_tick the per-tick uncorrelated noise).
    First passage: P(c = k | b) = Π_{p≤j<k}(1 − h_j) · h_k; a continuous p = n + φ mixes the walks from the integer
    starts n − 1 … n + 2 with the cubic B-spline's weights (twice differentiable in p; hard mode starts at integer
    ticks; the first slot starts at column 0 exactly).  The read
    value v = C_{min(k+18, W−1)} − C(p−1) + b (+ q_k when the crossing tick is double-counted) plus the read
    noise passes with Φ((v − thr)/σ_read) (E[v + n | pass]: the truncated normal's mean).  A read that fails
    restarts the walk in the same slot two ticks after its end with a 500 e⁻ baseline (further attempts while
    their probability exceeds ``min_weight``, at most ``max_attempts``); a stored read starts the next slot at
    min(c + 18, W − 1) + 3 with a 900 e⁻ baseline.  Positions are carried as their means (the one approximation
    beyond quadrature).  Returned per readout: the probability that it exists (``weight``), the expected ADC and
    crossing column given that it exists.

    ``row_width`` [U] (optional): each row's own window width when rows are zero-padded to a common one (the
    integration end is clamped to the row's last column, so results do not depend on the padding).
    ``horizon`` [U] (optional, continuous column): the last column that may trigger; columns beyond it are
    weighed out smoothly (exposure clamp(horizon + 1 − k, 0, 1)), so that the window over which noise may
    trigger on a residual charge does not step with integer window ends.  Default: the whole window.

    Returns ``adc`` [U, R], ``crossing`` [U, R] (column, float), ``valid`` [U, R] (weight ≥ min_weight),
    ``weight`` [U, R]; with ``moments`` also the variances of hard mode's ADC (including the rounding's 1/12)
    and crossing column given that the readout exists, and their covariance (a high reset baseline both raises the
    read value and triggers earlier: correlations down to −0.7), ``adc_variance``, ``crossing_variance``, ``adc_crossing_covariance`` [U, R]
    (from the same first-passage sums: E[v²] with the read noise, E[c²]).  A slot's start is the previous
    slot's end, so the jitter of one readout's crossing carries into the next ones (a long pulse's later readouts
    jitter ever more, as a random walk): the variance V of the start (0 for the first slot; else the previous
    slot's crossing variance) adds s_c²·V', s_v²·V' and s_v·s_c·V' to the variances and covariance, s the slopes
    of the slot's conditional mean crossing and value with respect to its start (law of total variance, to first
    order; the means stay those of the mean start), V' = V − 1/3: the mixture of the walks from the four integer
    starts around the mean already holds a start variance of 1/3 (V' < 0 takes the excess out, the variances
    floored smoothly at 0).  With
    ``previous_covariances`` (and ``moments``) also the covariances of each readout's ADC and crossing with the previous readout's crossing,
    ``adc_previous_covariance`` [ADC·columns] and ``crossing_previous_covariance`` [columns²] [U, R] (s_v·V and
    s_c·V, V the previous crossing's variance: the start is that crossing + a fixed offset; 0 for the first slot):
    what a likelihood needs to score a pixel's readouts as the chain they are (given the previous crossing); and
    ``existence_slope`` [1/columns] [U, R]: the derivative of the slot's probability of existing given that the
    previous one does (w_s/w_{s−1}) with respect to its start, i.e. the previous crossing (0 for the first slot).
    With ``overflow`` also ``overflow_weight`` [U] (last): the probability that the pixel fires
    more than ``max_readouts`` readouts (the weight of the slot after the last, which hard mode drops; no gradient).
    """
    n_pixels, width = charge.shape
    dtype = charge.dtype
    nodes, node_weights = _gauss_hermite(front_end.quadrature_nodes, charge)
    columns = torch.arange(width, device=charge.device)
    columns_f = columns.to(dtype)
    cumulative = torch.cumsum(charge, dim=1)
    padded = torch.cat([charge.new_zeros((n_pixels, 1)), cumulative], dim=1)  # padded[:, k] = C_{k−1}
    last = torch.full((n_pixels,), width - 1, dtype=torch.long, device=charge.device) if row_width is None \
        else torch.clamp(row_width.to(charge.device).long() - 1, min=0, max=width - 1)
    end_column = torch.minimum(columns[None, :] + front_end.integration_ticks, last[:, None])     # [U, W]
    read_charge = cumulative.gather(1, end_column)                            # C_{min(k+18, W−1)}
    if front_end.double_count_crossing:
        read_charge = read_charge + charge
    end_f = end_column.to(dtype)
    if horizon is None:
        horizon_exposure = charge.new_ones((n_pixels, width))
    else:
        horizon_exposure = torch.clamp(horizon.to(dtype)[:, None] + 1.0 - columns_f[None, :], 0.0, 1.0)
    tiny = torch.finfo(dtype).tiny
    position = charge.new_zeros(n_pixels)
    start_variance = charge.new_zeros(n_pixels)       # of the slot's start position (columns²), moments only
    chain = charge.new_ones(n_pixels)
    adcs, crossings, weights, adc_variances, crossing_variances, covariances = [], [], [], [], [], []
    previous_value_covariances, previous_crossing_covariances, existence_slopes = [], [], []
    if previous_covariances and not moments:
        raise ValueError("expected_readout: previous_covariances=True needs moments=True")
    adc_per_electron = front_end.gain * front_end.adc_counts / (front_end.v_ref - front_end.v_cm)
    walk = (cumulative, padded, read_charge, columns_f, end_f, front_end, nodes, node_weights, horizon_exposure, last)
    capped = False
    for slot in range(front_end.max_readouts):
        (probability, sum_value, sum_crossing, sum_end, sum_square, sum_crossing_square,
         sum_value_crossing, *slopes) = _slot_sums(position, chain, walk, slopes=moments and slot > 0,
                                                   exact_start=slot == 0)
        safe = torch.clamp(probability, min=tiny)
        chain = chain * probability
        mean_value = sum_value / safe
        mean_crossing = sum_crossing / safe
        adcs.append(digitize(mean_value, front_end, mode="relaxed"))
        crossings.append(mean_crossing)
        weights.append(chain)
        if moments:
            value_variance = torch.clamp(sum_square / safe - mean_value * mean_value, min=0.0)
            crossing_variance = torch.clamp(sum_crossing_square / safe - mean_crossing * mean_crossing, min=0.0)
            covariance = sum_value_crossing / safe - mean_value * mean_crossing
            slope_value = slope_crossing = slope_existence = torch.zeros_like(probability)
            if slopes:
                # the walk from a mean start t mixes four integer starts: it already holds a start variance of
                # 1/3; the difference to the start's variance enters through the slopes (law of total variance,
                # first order; negative where the previous crossing jitters less than the mixture)
                spread = start_variance - 1.0 / 3.0
                slope_probability, slope_value_sum, slope_crossing_sum = slopes
                # a slot less probable than min_weight is not reported (chain ≤ probability): its slopes are 0,
                # and the division stays finite (no inf·0 in the backward pass)
                reported = probability.detach() >= front_end.min_weight
                denominator = torch.clamp(probability, min=front_end.min_weight)
                slope_value = torch.where(reported, (slope_value_sum - mean_value * slope_probability) / denominator,
                                          torch.zeros_like(probability))
                slope_crossing = torch.where(reported, (slope_crossing_sum - mean_crossing * slope_probability)
                                             / denominator, torch.zeros_like(probability))
                slope_existence = torch.where(reported, slope_probability, torch.zeros_like(probability))
                value_variance = _smooth_floor(value_variance + slope_value ** 2 * spread, 1.0)
                crossing_variance = _smooth_floor(crossing_variance + slope_crossing ** 2 * spread, 1e-4)
                covariance = covariance + slope_value * slope_crossing * spread
            previous_value_covariances.append(slope_value * start_variance * adc_per_electron)
            previous_crossing_covariances.append(slope_crossing * start_variance)
            existence_slopes.append(slope_existence)
            start_variance = crossing_variance
            adc_variances.append(value_variance * adc_per_electron ** 2 + 1.0 / 12.0)
            crossing_variances.append(crossing_variance)
            covariances.append(covariance * adc_per_electron)
        position = sum_end / safe + 1.0 + front_end.dead_ticks + 1.0
        if not bool((chain.detach() >= front_end.min_weight).any()):
            for _ in range(front_end.max_readouts - len(adcs)):
                for column_list in (adcs, crossings, weights) + ((adc_variances, crossing_variances, covariances,
                                                                  previous_value_covariances,
                                                                  previous_crossing_covariances, existence_slopes)
                                                                 if moments else ()):
                    column_list.append(torch.zeros_like(chain))
            break
    else:
        capped = bool((chain.detach() >= front_end.min_weight).any())
    if overflow:
        # the slot after the last: the probability that the pixel fires more readouts than max_readouts
        # (hard mode drops them); not part of the result's graph
        overflow_weight = charge.new_zeros(n_pixels)
        if capped:
            with torch.no_grad():
                chain_now = chain.detach()
                beyond = chain_now * _slot_sums(position.detach(), chain_now, walk)[0]
                overflow_weight = torch.where(chain_now >= front_end.min_weight, beyond, overflow_weight)
    weight = torch.stack(weights, 1)
    valid = weight.detach() >= front_end.min_weight
    zero = torch.zeros_like(weight)
    adc = torch.where(valid, torch.stack(adcs, 1), zero)
    crossing = torch.where(valid, torch.stack(crossings, 1), zero)
    out = (adc, crossing, valid, weight)
    if moments:
        out = out + (torch.where(valid, torch.stack(adc_variances, 1), zero),
                     torch.where(valid, torch.stack(crossing_variances, 1), zero),
                     torch.where(valid, torch.stack(covariances, 1), zero))
    if previous_covariances:
        out = out + (torch.where(valid, torch.stack(previous_value_covariances, 1), zero),
                     torch.where(valid, torch.stack(previous_crossing_covariances, 1), zero),
                     torch.where(valid, torch.stack(existence_slopes, 1), zero))
    if overflow:
        out = out + (overflow_weight,)
    return out


@torch.no_grad()
def hard_readout(charge: torch.Tensor, front_end: FrontEnd, noise: bool = False,
                 generator: Optional[torch.Generator] = None, return_dropped: bool = False):
    """larnd-sim's self-trigger (non-differentiable), vectorised over pixels.

    Returns ``adc`` [U, R] integer-valued, ``crossing`` [U, R] local tick (integer-valued), ``valid`` [U, R].
    A pixel stops after ``max_readouts`` (R) stored reads, as larnd-sim does; with ``return_dropped`` also
    ``dropped`` [U] (int64): the reads the walk would have stored past the R-th (the walk continued to the end of
    the window; with noise on a copy of ``generator``'s state, so the R readouts and the generator's stream are the
    same as without it).
    """
    n_pixels, width = charge.shape
    cumulative = torch.cumsum(charge, dim=1)
    padded = torch.cat([charge.new_zeros((n_pixels, 1)), cumulative], dim=1)   # padded[:, k] = Σ_{j<k} q_j
    position = torch.zeros(n_pixels, dtype=torch.long, device=charge.device)   # next tick to accumulate
    offset = (_normal((n_pixels,), charge, generator) * front_end.reset_noise) if noise else charge.new_zeros(n_pixels)
    active = torch.ones(n_pixels, dtype=torch.bool, device=charge.device)
    adc, crossing, valid, n_read, position, offset = _hard_walk(
        cumulative, padded, front_end, noise, generator, position, offset, active, front_end.max_readouts)
    if not return_dropped:
        return adc, crossing, valid
    dropped = torch.zeros(n_pixels, dtype=torch.long, device=charge.device)
    capped = (n_read >= front_end.max_readouts) & (position < width)
    if bool(capped.any()):
        rows = torch.nonzero(capped).flatten()
        copy = None
        if noise:
            source = generator
            if source is None:
                source = torch.cuda.default_generators[charge.device.index if charge.device.index is not None
                                                       else torch.cuda.current_device()] \
                    if charge.device.type == "cuda" else torch.default_generator
            copy = torch.Generator(device=charge.device)
            copy.set_state(source.get_state())
        more = _hard_walk(cumulative[rows], padded[rows], front_end, noise, copy, position[rows], offset[rows],
                          torch.ones(len(rows), dtype=torch.bool, device=charge.device), 0)[3]
        dropped[rows] = more
    return adc, crossing, valid, dropped


def _hard_walk(cumulative, padded, front_end: FrontEnd, noise: bool, generator, position, offset, active,
               slots: int):
    """The walk of :func:`hard_readout` from ``position`` (next tick) and ``offset`` (reset baseline) [U] for the
    ``active`` rows, storing the first ``slots`` reads; stops a row after ``slots`` reads (``slots`` = 0: runs to
    the end of the window, counting).  Returns adc, crossing, valid [U, slots], reads [U] and the final
    position and offset [U]."""
    n_pixels, width = cumulative.shape
    thr = front_end.threshold
    limit = slots if slots > 0 else width + 1
    rows = torch.arange(n_pixels, device=cumulative.device)
    columns = torch.arange(width, device=cumulative.device)
    n_read = torch.zeros(n_pixels, dtype=torch.long, device=cumulative.device)
    adc = cumulative.new_zeros((n_pixels, slots))
    crossing = cumulative.new_zeros((n_pixels, slots))
    valid = torch.zeros((n_pixels, slots), dtype=torch.bool, device=cumulative.device)
    span = front_end.integration_ticks
    while bool(active.any()):
        # running sum since the last reset: Σ q[position..k] + offset
        # finished pixels may sit past the last column (position ≤ width + 2): clamp only the gather index;
        # they are masked out of `above` by `active`
        start = torch.clamp(position, max=width)
        running = cumulative - padded.gather(1, start[:, None]) + offset[:, None]
        probe = running
        if noise:
            probe = running + _normal(running.shape, cumulative, generator) * front_end.uncorrelated_noise
        above = (probe >= thr) & (columns[None, :] >= position[:, None]) & active[:, None]
        found = above.any(dim=1)
        c = torch.where(above, columns[None, :], torch.full_like(columns[None, :], width)).amin(dim=1)
        c = torch.where(found, c, torch.zeros_like(c))
        end = torch.clamp(c + span, max=width - 1)
        at_crossing = running.gather(1, c[:, None]).squeeze(1)
        start_sum = c if front_end.double_count_crossing else c + 1
        integrated = padded.gather(1, (end + 1)[:, None]).squeeze(1) - padded.gather(1, start_sum[:, None]).squeeze(1)
        value = at_crossing + integrated
        if noise:
            value = value + _normal((n_pixels,), cumulative, generator) * front_end.uncorrelated_noise
        passed = found & (value >= thr)
        if slots > 0:
            slot = torch.clamp(n_read, max=slots - 1)
            store = passed & (n_read < slots)
            adc[rows[store], slot[store]] = digitize(value[store], front_end, hard=True)
            crossing[rows[store], slot[store]] = c[store].to(cumulative.dtype)
            valid[rows[store], slot[store]] = True
        n_read = n_read + passed.long()      # a passed read is an active row's, below its limit
        # after a read: one dead tick, then the walk goes on (a passed read also skips the loop's own +1)
        next_position = end + 1 + front_end.dead_ticks + passed.long()
        position = torch.where(found, next_position, position)
        if noise:
            reset = torch.where(passed, torch.full_like(value, front_end.reset_noise),
                                torch.full_like(value, front_end.uncorrelated_noise))
            offset = torch.where(found, _normal((n_pixels,), cumulative, generator) * reset, offset)
        else:
            offset = torch.where(found, torch.zeros_like(offset), offset)
        active = found & (n_read < limit) & (position < width)
    return adc, crossing, valid, n_read, position, offset


MODES = ("relaxed", "hard", "reference")


def check_mode(mode: str, noise: bool) -> None:
    """ValueError for an unknown mode, or for noise asked of the relaxed mode (already its expectation)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    if mode == "relaxed" and noise:
        raise ValueError("relaxed mode is the expectation over the electronics noise: simulate noisy data "
                         "with mode='hard', noise=True")


def readout(charge: torch.Tensor, front_end: FrontEnd, mode: str = "relaxed", noise: bool = False,
            generator: Optional[torch.Generator] = None):
    """(adc, crossing, valid, weight) of ``charge`` [U, W] in ``mode`` (weight ≡ 1 outside relaxed mode)."""
    check_mode(mode, noise)
    if mode == "relaxed":
        return expected_readout(charge, front_end)
    if mode == "reference":
        draws = draw_readout_noise(charge.shape[0], front_end, charge, generator) if noise else None
        adc, crossing, valid = reference_readout(charge, front_end, draws)
    else:
        adc, crossing, valid = hard_readout(charge, front_end, noise, generator)
    return adc, crossing, valid, valid.to(charge.dtype)


class Electronics(nn.Module):
    """Thin module wrapper of :func:`readout`."""

    def __init__(self, front_end: Optional[FrontEnd] = None, mode: str = "relaxed"):
        super().__init__()
        self.front_end = front_end or FrontEnd()
        self.mode = mode

    def forward(self, charge, noise: bool = False, generator=None):
        """(adc, crossing, valid, weight), see :func:`readout`."""
        return readout(charge, self.front_end, self.mode, noise, generator)
