"""Induced current on the pixel pads, accumulated sparsely (physics.md §2.5).

Model.  A segment carries n_e electrons spread uniformly along start → end.  Each point of the line drifts to
the anode with its own drift time, attachment and diffusion (:mod:`sparsetpc.drift`), is smeared by a Gaussian
(σ_T, σ_T, σ_L) and induces on the pad beneath it the current of physics.md §2.5: a truncated exponential
rise I(t) = A·f(t; b) + (1−A)·f(t; c), f(t; s) = exp(−(t₀'−t)/s)/s for t < t₀', whose shape coefficients are
quadratics in the offset from the pad centre.  Only charge above the pad induces (no neighbour induction),
as in larnd-sim.

Quadrature (where the dense reference spends its memory, we integrate what matters):
* along the segment, midpoint samples restricted to the part whose projection is within the pad ± 5σ_T
  (:mod:`sparsetpc.pixels`), spaced by at most one diffusion width (σ_T across, σ_L along the drift axis);
* across the segment, the Gaussian's fraction over the pad is exact: F = ΔΦ_x·ΔΦ_y, and the response seen by
  that part of the cloud enters through the moments of its landing points' distance from the pad centre
  (exact mean delay, delay spread added to the time smearing, shape at the mean distance);
* along the drift axis the longitudinal smearing of the arrival time is exact: the Gaussian-smeared truncated
  exponential is the exponentially-modified Gaussian (:func:`smeared_truncated_exponential`);
* each sample is evaluated only on its own tick window, from where its response tail falls below
  ``tail_tolerance`` to 5σ_t after arrival — no event-wide time axis.
Values (electrons per tick) are scatter-added into per-pixel windows of a flat buffer (COO (pixel, tick)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import drift as drift_stage
from .detector import Detector
from .params import RANGES, Params
from .pixels import Pairs

#: Quadratic shape coefficients (c0 + c1·x + c2·y + c3·x·y + c4·x² + c5·y², x, y = |offset| in cm) of the
#: pad response (larnd-sim detsim B/C/D/t0 params).  amplitude: fraction in the fast component (clipped ≤ 1);
#: fast/slow: time constants b, c [µs]; delay: Δt₀ [µs] added to the arrival time.
RESPONSE_COEFFICIENTS = {
    "amplitude": (1.060, -0.909, -0.909, 5.856, 0.207, 0.207),
    "fast": (0.679, -1.083, -1.083, 8.772, -5.521, -5.521),
    "slow": (2.644, -9.174, -9.174, 13.483, 45.887, 45.887),
    "delay": (2.948, -2.705, -2.705, 4.825, 20.814, 20.814),
}

_SQRT2 = math.sqrt(2.0)
_SIGMA_TIME_FLOOR = 1e-6   # µs; keeps the smeared response finite when long_diff = 0
SAMPLE_WIDTH_FLOOR = 1e-3  # cm; the narrowest transverse cloud the sample grid resolves


@dataclass
class InductionOptions:
    """Numerical options of the induction stage.

    ``n_sigma_pad``: transverse reach (in σ_T of the widest cloud of the parameter ranges) of a segment around a
    pad.  ``n_sigma_late``: the near window ends n σ_t after the mean arrival.  ``tail_taper_ticks``: width of the
    smooth step that brings each early tail in from its cut.  ``sample_spacing``: sample step along
    a segment in units of the local diffusion width (1.0 → quadrature error ≪ 1e-6).  ``max_sample_step`` cm.
    ``tail_tolerance``: size of each component's response tail dropped before its window starts, relative to the
    charge of the sample's node (not to its part on the pad: a sample at the edge of a pad's reach has a short
    tail or none).  ``min_pad_fraction``: a sample whose part on the pad is below this fraction of its node's
    charge carries none (it fades in smoothly up to 10× this fraction), so far neighbours of a narrow cloud cost
    nothing.
    ``reference_time_axis``: reproduce the differentiable reference's per-segment time axis (current evaluated at
    t_lo + k·tick but deposited at tick round(t_lo/tick) + k, nothing before t_lo = t_start − 5 µs); off by default
    (physically the current is evaluated at the tick times).  Only for parity studies (either response: the
    analytic pad response or a table, whose exact cloud integration is compared there with the continuum).
    """

    n_sigma_pad: float = 6.0
    n_sigma_late: float = 8.0
    tail_taper_ticks: float = 3.0
    sample_spacing: float = 1.0
    max_sample_step: float = 0.05
    tail_tolerance: float = 1e-5
    min_pad_fraction: float = 1e-7
    reference_time_axis: bool = False
    reference_time_padding: float = 5.0   # µs, t_lo = t_start − padding in reference mode


# ---------------------------------------------------------------------------------------------- pure functions
def quadratic(coefficients, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    c0, c1, c2, c3, c4, c5 = coefficients
    return c0 + c1 * x + c2 * y + c3 * x * y + c4 * x * x + c5 * y * y


def response_shape(offset_x: torch.Tensor, offset_y: torch.Tensor):
    """(A, b, c, Δt₀) of the pad response for |offsets| [cm] from the pad centre (each ≤ pitch/2)."""
    amplitude = torch.clamp(quadratic(RESPONSE_COEFFICIENTS["amplitude"], offset_x, offset_y), max=1.0)
    fast = quadratic(RESPONSE_COEFFICIENTS["fast"], offset_x, offset_y)
    slow = quadratic(RESPONSE_COEFFICIENTS["slow"], offset_x, offset_y)
    delay = quadratic(RESPONSE_COEFFICIENTS["delay"], offset_x, offset_y)
    return amplitude, fast, slow, delay


def smeared_truncated_exponential(t: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E[f(t; s)] for a cut-off time t₀' ~ N(μ, σ²), f = exp(−(t₀'−t)/s)/s for t < t₀' (else 0).

    Closed form (exponentially modified Gaussian), evaluated without overflow in both tails:
    w = ((t−μ)/σ + σ/s)/√2;  w ≥ 0: erfcx(w)·exp(−(t−μ)²/2σ²)/(2s);  w < 0: exp((t−μ)/s + σ²/2s²)·erfc(w)/(2s).
    """
    delta = t - mu
    w = (delta / sigma + sigma / scale) / _SQRT2
    positive = w >= 0
    w_pos = torch.clamp(w, min=0.0)
    w_neg = torch.clamp(w, max=0.0)
    gauss_branch = torch.special.erfcx(w_pos) * torch.exp(-0.5 * (delta / sigma) ** 2)
    exponent = torch.clamp(delta / scale + 0.5 * (sigma / scale) ** 2, max=0.0)
    exp_branch = torch.exp(exponent) * torch.special.erfc(w_neg)
    return torch.where(positive, gauss_branch, exp_branch) / (2.0 * scale)


def _normal_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Φ(b) − Φ(a) for a ≤ b, without cancellation when both are in the same tail (two erfc evaluations).

    Mirrored so that the interval's lower end x = a (or −b when b < 0, both in the left tail) is the one nearer
    0: for x > 0 (one tail) Φ(y) − Φ(x) = ½(erfc(x/√2) − erfc(y/√2)); otherwise x ≤ 0 ≤ y and
    Φ(y) − Φ(x) = 1 − ½erfc(|x|/√2) − ½erfc(y/√2)."""
    mirrored = b < 0
    x = torch.where(mirrored, -b, a) / _SQRT2
    y = torch.where(mirrored, -a, b) / _SQRT2
    near = torch.special.erfc(x.abs())
    far = torch.special.erfc(y)
    return torch.where(x > 0, 0.5 * (near - far), 1.0 - 0.5 * (near + far))


def pad_cloud(position: torch.Tensor, center: torch.Tensor, half_pitch: float, sigma: torch.Tensor):
    """The part of an isotropic 2-D Gaussian (σ) centred at ``position`` [S, 2] that falls on the pads [S, 2].

    Returns the fraction on the pad [S] and, per axis, the first two moments of the landing point's distance
    from the pad centre over that part, E|x − x_c| and E(x − x_c)² [S, 2] (a normal truncated to the pad and
    folded at its centre, where the response has its cusp).
    """
    s = sigma[:, None]
    m = position - center
    a = (-half_pitch - m) / s
    zero = -m / s
    b = (half_pitch - m) / s
    inv_root = 1.0 / math.sqrt(2 * math.pi)
    phi_a, phi_0, phi_b = (torch.exp(-0.5 * v * v) * inv_root for v in (a, zero, b))
    left = _normal_interval(a, zero)       # P(−h < x < 0)
    right = _normal_interval(zero, b)      # P(0 < x < h)
    per_axis = left + right
    # partial moments ∫ x dP and ∫ x² dP over each side, for x = m + s·z
    first_left = m * left + s * (phi_a - phi_0)
    first_right = m * right + s * (phi_0 - phi_b)
    second = (m * m + s * s) * per_axis + 2 * m * s * (phi_a - phi_b) + s * s * (a * phi_a - b * phi_b)
    floor = 1e-300 if position.dtype == torch.float64 else 1e-37
    safe = torch.clamp(per_axis, min=floor)
    mean_abs = (first_right - first_left) / safe
    mean_square = second / safe
    tiny = per_axis < 1e-12
    fallback = torch.clamp(m.abs(), max=half_pitch)
    mean_abs = torch.where(tiny, fallback, torch.clamp(mean_abs, 0.0, half_pitch))
    mean_square = torch.where(tiny, fallback ** 2, torch.maximum(mean_square, mean_abs ** 2))
    return per_axis[:, 0] * per_axis[:, 1], mean_abs, mean_square


def pad_fraction(position: torch.Tensor, center: torch.Tensor, half_pitch: float, sigma: torch.Tensor) -> torch.Tensor:
    """Fraction of an isotropic 2-D Gaussian (σ) centred at ``position`` [S, 2] falling on the pads [S, 2]."""
    return pad_cloud(position, center, half_pitch, sigma)[0]


def cloud_delay(mean_abs: torch.Tensor, mean_square: torch.Tensor):
    """Mean and (linearised) variance of the response delay Δt₀ over the landing points on the pad.

    Δt₀ is quadratic in the offsets, so its mean is exact from the first two moments; its variance uses the
    slope at the mean offsets.
    """
    c0, c1, c2, c3, c4, c5 = RESPONSE_COEFFICIENTS["delay"]
    ex, ey = mean_abs[:, 0], mean_abs[:, 1]
    mean = c0 + c1 * ex + c2 * ey + c3 * ex * ey + c4 * mean_square[:, 0] + c5 * mean_square[:, 1]
    variance = torch.clamp(mean_square - mean_abs ** 2, min=0.0)
    slope_x = c1 + c3 * ey + 2 * c4 * ex
    slope_y = c2 + c3 * ex + 2 * c5 * ey
    return mean, slope_x ** 2 * variance[:, 0] + slope_y ** 2 * variance[:, 1]


# ---------------------------------------------------------------------------------------------- data carriers
@dataclass
class SegmentState:
    """Per-segment inputs of the induction stage (float tensors may carry gradients)."""

    start: torch.Tensor          # [N, 3] cm
    end: torch.Tensor            # [N, 3] cm
    n_electrons: torch.Tensor    # [N] after recombination, before attachment
    t_start: torch.Tensor        # [N] µs creation time at start
    t_end: torch.Tensor          # [N] µs creation time at end
    z_anode: torch.Tensor        # [N] cm
    time_shift: torch.Tensor     # [N] µs (0 unless reference_time_axis)
    first_tick: torch.Tensor     # [N] int64, earliest tick that may receive current


@dataclass
class Waveforms:
    """Per-pixel induced charge on a global 0.1 µs tick axis, stored as padded per-pixel windows.

    ``pixel_table`` [U, 4] (event, plane, ix, iy); ``start_tick`` [U] global tick of column 0; ``width`` [U] valid
    columns; ``charge`` [U, W] electrons per tick (zero beyond ``width``).
    """

    pixel_table: torch.Tensor
    start_tick: torch.Tensor
    width: torch.Tensor
    charge: torch.Tensor

    def to_coo(self):
        """(pixel row, global tick, electrons) of the non-zero entries."""
        rows, cols = torch.nonzero(self.charge.detach() != 0, as_tuple=True)
        return rows, self.start_tick[rows] + cols, self.charge[rows, cols]

    def total_charge(self) -> torch.Tensor:
        return self.charge.sum(dim=1)


@dataclass
class SamplePlan:
    """Charge samples (integer layout only; values are recomputed with gradients per chunk)."""

    pair: torch.Tensor           # [S] pair row
    u: torch.Tensor              # [S] cm along the segment (detached)
    weight: torch.Tensor         # [S] fraction of the segment's charge represented (detached)
    first_tick: torch.Tensor     # [S, 3] int64: first tick of the near window, fast tail, slow tail
    n_ticks: torch.Tensor        # [S, 3] int64: their lengths
    pixel_of_pair: torch.Tensor  # [M] pixel row
    pixel_start: torch.Tensor    # [U] global tick of the pixel window's column 0
    pixel_width: torch.Tensor    # [U]
    pixel_offset: torch.Tensor   # [U] offset of the pixel window in the flat buffer
    buffer_size: int
    horizon_pair: Optional[torch.Tensor] = None    # [S'] all samples with charge (those evaluated and those
    horizon_u: Optional[torch.Tensor] = None       # below min_pad_fraction): the window ends and the trigger
    horizon_weight: Optional[torch.Tensor] = None  # horizon are taken over them

    @property
    def n_elements(self) -> int:
        return int(self.n_ticks.sum())


# ---------------------------------------------------------------------------------------------- sample physics
def fade_in(fraction: torch.Tensor, lowest: float) -> torch.Tensor:
    """C¹ step in log(fraction) from 0 at ``lowest`` to 1 at 10·``lowest``."""
    safe = torch.clamp(fraction, min=0.5 * lowest)
    x = torch.clamp(torch.log10(safe / lowest), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def sample_geometry(u, pair_rows, pairs: Pairs, segments: SegmentState, params: Params, detector: Detector):
    """Where and when each sample's charge starts (differentiable): (segment row, position [S, 3] cm, drift
    velocity, drift distance [S] cm, drift time to the response region [S] µs, creation time [S] µs)."""
    seg = pairs.segment[pair_rows]
    start = segments.start[seg]
    end = segments.end[seg]
    delta = end - start
    length = torch.linalg.norm(delta, dim=1)
    safe_length = torch.where(length > 0, length, torch.ones_like(length))
    direction = delta / safe_length[:, None]
    position = start + u[:, None] * direction
    fraction_along = u / safe_length
    velocity = params.drift_velocity()
    distance = drift_stage.drift_distance(position[:, 2], segments.z_anode[seg])
    t_drift = drift_stage.drift_time(distance, velocity, detector.response_offset)
    created = segments.t_start[seg] + fraction_along * (segments.t_end[seg] - segments.t_start[seg])
    return seg, position, velocity, distance, t_drift, created


def _sample_state(u, weight, pair_rows, pairs: Pairs, segments: SegmentState, params: Params,
                  detector: Detector, min_pad_fraction: float = 0.0):
    """Charge, arrival-time distribution, response shape and part on the pad of each sample (differentiable).
    Samples whose part on the pad is below ``min_pad_fraction`` carry no charge (see :func:`fade_in`)."""
    seg, position, velocity, distance, t_drift, created = sample_geometry(u, pair_rows, pairs, segments, params,
                                                                         detector)
    arrival = created + t_drift
    sigma_t = drift_stage.diffusion_sigma(distance, velocity, params.tran_diff)
    sigma_l = drift_stage.diffusion_sigma(distance, velocity, params.long_diff)
    sigma_time = torch.clamp(sigma_l / velocity, min=_SIGMA_TIME_FLOOR)
    center = pairs.center[pair_rows]
    half = detector.pixel_pitch / 2
    # The pad response depends on where each electron lands.  The diffused cloud's part on the pad enters
    # through the moments of its distance from the pad centre: the delay's mean (exact, Δt₀ is quadratic) and
    # spread (which widens the arrival-time smearing); the shape (A, b, c) is taken at the mean distance.
    on_pad, mean_abs, mean_square = pad_cloud(position[:, :2], center, half, sigma_t)
    amplitude, fast, slow, _ = response_shape(mean_abs[:, 0], mean_abs[:, 1])
    delay, delay_variance = cloud_delay(mean_abs, mean_square)
    sigma_time = torch.sqrt(sigma_time ** 2 + delay_variance)
    charge = segments.n_electrons[seg] * weight * drift_stage.attenuation(t_drift, params) * on_pad
    if min_pad_fraction > 0:
        charge = charge * fade_in(on_pad, min_pad_fraction)
    return charge, arrival + delay, sigma_time, amplitude, fast, slow, on_pad


def window_offset(plan: SamplePlan, pixel: torch.Tensor, first_tick: torch.Tensor) -> torch.Tensor:
    """Flat-buffer position of global tick ``first_tick`` in the window of ``pixel`` (element-wise)."""
    return plan.pixel_offset[pixel] + first_tick - plan.pixel_start[pixel]


def pixel_windows(lo: torch.Tensor, hi: torch.Tensor):
    """Per-pixel windows for charge on global ticks [lo, hi]: one leading empty tick (for the discriminator) and
    19 trailing ones (integration end).  Returns (start tick, width, offset in the flat buffer, buffer size)."""
    start = lo - 1
    width = hi - start + 1 + 19
    offset = torch.cumsum(width, 0) - width
    return start, width, offset, int(width.sum())


def horizon_columns(last: torch.Tensor, pixel: torch.Tensor, plan: SamplePlan) -> torch.Tensor:
    """Per pixel, the last column [U] at which its window may trigger, from each sample's last signal tick
    ``last`` [S] (continuous) and its ``pixel`` [S]: the latest one plus the integration ticks, ∈ [W − 2, W − 1)
    (the partially exposed column is always inside the window, W = hi − start + 20)."""
    n_pixels = plan.pixel_width.numel()
    horizon = torch.full((n_pixels,), -1e30, dtype=last.dtype, device=last.device).scatter_reduce(
        0, pixel, last, "amax", include_self=False)
    return horizon - plan.pixel_start.to(last.dtype) + 18.0


def _elements(plan: SamplePlan, lo: int, hi: int, part: int):
    """Element layout of window ``part`` of samples [lo, hi): (local sample index, tick within the sample's
    window, flat position)."""
    counts = plan.n_ticks[lo:hi, part]
    n = int(counts.sum())
    device = counts.device
    owner = torch.repeat_interleave(torch.arange(hi - lo, device=device), counts, output_size=n)
    first = torch.cumsum(counts, 0) - counts
    step = torch.arange(n, device=device) - first[owner]
    flat = window_offset(plan, plan.pixel_of_pair[plan.pair[lo:hi]], plan.first_tick[lo:hi, part])[owner] + step
    return owner, step, flat


def plan_diffusion(params: Params):
    """(velocity, transverse, longitudinal diffusion) the sample grid is built for: the narrowest clouds of the
    parameters' documented ranges (fastest drift, smallest coefficients), or the current values outside them."""
    velocity = torch.clamp(params.drift_velocity().detach(), min=RANGES["vdrift"][2])
    tran = torch.clamp(params.tran_diff.detach(), max=RANGES["tran_diff"][1])
    long = torch.clamp(params.long_diff.detach(), max=RANGES["long_diff"][1])
    return velocity, tran, long


def association_diffusion(params: Params):
    """(velocity, transverse diffusion) the pad association margin is built for: the widest clouds of the
    documented ranges (slowest drift, largest coefficient), or the current values outside them, so that the
    (segment, pixel) pairs do not change while a fit moves the parameters inside their ranges."""
    velocity = torch.clamp(params.drift_velocity().detach(), max=RANGES["vdrift"][1])
    tran = torch.clamp(params.tran_diff.detach(), min=RANGES["tran_diff"][2])
    return velocity, tran


@torch.no_grad()
def association_width(start: torch.Tensor, end: torch.Tensor, z_anode: torch.Tensor, params: Params) -> torch.Tensor:
    """Transverse width [N] cm of each segment's widest cloud, at its end farthest from the anode, for the widest
    clouds of the parameter ranges (:func:`association_diffusion`): the unit of the (segment, pad) association
    margin."""
    far = torch.maximum(drift_stage.drift_distance(start[:, 2], z_anode), drift_stage.drift_distance(end[:, 2], z_anode))
    velocity, tran = association_diffusion(params)
    return drift_stage.diffusion_sigma(far, velocity, tran)


def exact_from(mu: torch.Tensor, sigma_time: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Time [µs] before which a component (time constant ``scale``) is its pure exponential tail to 1e-9:
    μ − σ(6 + σ/s): there Φ = 1 to 1e-9 and the smeared response is the pure exponential
    exp((t − μ)/s + σ²/2s²)/s (the form the early tails are evaluated in, :func:`_chunk_charge`)."""
    return mu - sigma_time * (6.0 + sigma_time / scale)


def tail_cuts(mu, sigma_time, amplitude, fast, slow, eps: float, fraction):
    """Times [µs] where the fast and slow components' early tails fall below ``eps`` of the charge of the
    sample's node: reach s·log(1 + w/eps) before the exact region (w = fraction on the pad × the component's
    weight), which is smooth in w and tends to 0 for a component carrying less than eps.  The tails are tapered
    to zero at the cuts."""
    fast_weight = torch.clamp(fraction * amplitude, min=0.0)
    slow_weight = torch.clamp(fraction * (1.0 - amplitude), min=0.0)
    fast_cut = exact_from(mu, sigma_time, fast) - fast * torch.log1p(fast_weight / eps)
    slow_cut = exact_from(mu, sigma_time, slow) - slow * torch.log1p(slow_weight / eps)
    return fast_cut, slow_cut


def tail_taper(t: torch.Tensor, cut: torch.Tensor, width: float) -> torch.Tensor:
    """Smooth step (C¹) from 0 at ``cut`` to 1 at ``cut + width``: a tail window's first tick then enters with
    zero weight, so the loss does not step when a parameter moves the window by a tick."""
    x = torch.clamp((t - cut) / width, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _chunk_charge(lo: int, hi: int, plan: SamplePlan, pairs: Pairs, segments: SegmentState, params: Params,
                  detector: Detector, backend: str, options: "InductionOptions", *grad_inputs):
    """Charge per tick [flat buffer] induced by samples [lo, hi).  ``grad_inputs`` only registers the tensors
    that carry gradients with the checkpoint; the computation reads them through the data carriers."""
    rows = plan.pair[lo:hi]
    charge, mu, sigma_time, amplitude, fast, slow, on_pad = _sample_state(
        plan.u[lo:hi], plan.weight[lo:hi], rows, pairs, segments, params, detector, options.min_pad_fraction)
    shift = segments.time_shift[pairs.segment[rows]]
    fast_cut, slow_cut = tail_cuts(mu, sigma_time, amplitude, fast, slow, options.tail_tolerance, on_pad)
    taper_width = options.tail_taper_ticks * detector.tick
    tick_size = detector.tick
    values, positions = [], []
    # near the arrival: both components, exact smeared form (tapered in from their cuts where those lie within)
    owner, j, flat = _elements(plan, lo, hi, 0)
    if owner.numel():
        t = (plan.first_tick[lo:hi, 0].to(mu.dtype) * tick_size + shift)[owner] + j.to(mu.dtype) * tick_size
        m, s, a = mu[owner], sigma_time[owner], amplitude[owner]
        response = a * smeared_truncated_exponential(t, m, s, fast[owner]) * tail_taper(t, fast_cut[owner], taper_width)
        response = response + (1.0 - a) * smeared_truncated_exponential(t, m, s, slow[owner]) \
            * tail_taper(t, slow_cut[owner], taper_width)
        values.append(charge[owner] * tick_size * response)
        positions.append(flat)
    # early tails: pure exponentials, value_j = prefactor · exp(j · tick/s) from each window's first tick; the
    # taper (< 1 only on a window's first ⌈taper_ticks⌉ ticks) enters as a correction on those ticks
    head = int(math.ceil(options.tail_taper_ticks))
    for part, scale, component, cut in ((1, fast, amplitude, fast_cut), (2, slow, 1.0 - amplitude, slow_cut)):
        owner, j, flat = _elements(plan, lo, hi, part)
        if owner.numel() == 0:
            continue
        t0 = plan.first_tick[lo:hi, part].to(mu.dtype) * tick_size + shift
        exponent = (t0 - mu) / scale + 0.5 * (sigma_time / scale) ** 2
        prefactor = charge * component * tick_size / scale * torch.exp(torch.clamp(exponent, max=0.0))
        rate = tick_size / scale
        values.append(prefactor[owner] * torch.exp(j.to(mu.dtype) * rate[owner]))
        positions.append(flat)
        # taper corrections on the head ticks (j < head) of every window
        count = plan.n_ticks[lo:hi, part]
        steps = torch.arange(head, device=count.device)
        inside = steps[None, :] < count[:, None]
        sample_index, step = torch.nonzero(inside, as_tuple=True)
        step_f = step.to(mu.dtype)
        t_head = t0[sample_index] + step_f * tick_size
        taper = tail_taper(t_head, cut[sample_index], taper_width)
        head_value = prefactor[sample_index] * torch.exp(step_f * rate[sample_index])
        values.append(head_value * (taper - 1.0))
        positions.append(window_offset(plan, plan.pixel_of_pair[rows[sample_index]],
                                       plan.first_tick[lo:hi, part][sample_index]) + step)
    if not values:
        return charge.new_zeros(plan.buffer_size) + 0.0 * charge.sum()
    return scatter_sum(torch.cat(values), torch.cat(positions), plan.buffer_size, backend)


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int, backend: str = "torch") -> torch.Tensor:
    """Σ values into ``size`` bins.  ``torch``: native ``scatter_add`` (its graph keeps the index, not the values);
    ``torch_scatter``: ``segment_coo`` of the optional torch-scatter extension (deterministic on GPU with sorted
    indices)."""
    if backend == "torch":
        return torch.zeros(size, dtype=values.dtype, device=values.device).scatter_add(0, index, values)
    if backend == "torch_scatter":
        try:
            import torch_scatter
        except ImportError as error:
            raise ImportError("backend 'torch_scatter' needs the optional torch-scatter package "
                              "(pip install 'sparsetpc[scatter]')") from error
        order = torch.argsort(index)
        return torch_scatter.segment_coo(values[order], index[order], dim_size=size, reduce="sum")
    raise ValueError(f"unknown scatter backend {backend!r}: 'torch' or 'torch_scatter'")


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class SegmentPieces:
    """Pieces of each segment for the node grid: ``start``/``end`` [N, P] cm along the segment, ``near_distance``
    [N, P] cm, the drift distance of the piece's end nearest the anode, ``used`` [N, P]."""

    start: torch.Tensor
    end: torch.Tensor
    near_distance: torch.Tensor
    used: torch.Tensor


#: pieces per segment at most (distance ratio 2^(P−1) from the nearest piece to the farthest)
MAX_PIECES = 16
#: distance [cm] below which a segment's nearest piece is not split further
PIECE_DISTANCE_FLOOR = 0.01


def segment_pieces(distance_start: torch.Tensor, distance_end: torch.Tensor, length: torch.Tensor,
                   offset_start: torch.Tensor, delta_z: torch.Tensor) -> SegmentPieces:
    """Cut each segment at the drift distances d_near·2^k between its ends (geometry only: the pieces do not
    depend on the parameters).  A segment that crosses the anode plane (``offset_start`` and
    ``offset_start + delta_z`` of opposite signs) or keeps its distance stays one piece."""
    n = length.shape[0]
    near = torch.minimum(distance_start, distance_end)
    far = torch.maximum(distance_start, distance_end)
    crosses = (offset_start * (offset_start + delta_z)) < 0
    lowest = torch.clamp(near, min=PIECE_DISTANCE_FLOOR)
    count = torch.ceil(torch.log2(torch.clamp(far / lowest, min=1.0)) - 1e-9).long().clamp(min=1, max=MAX_PIECES)
    count = torch.where(crosses | (far - near <= 1e-9) | (length == 0), torch.ones_like(count), count)
    width = int(count.max()) if n else 1
    k = torch.arange(width + 1, device=length.device, dtype=length.dtype)
    # breakpoints in distance: near, lowest·2, lowest·4, ..., far (the last piece absorbs what the cap leaves)
    breaks = lowest[:, None] * torch.exp2(k)[None, :]
    breaks[:, 0] = near
    breaks = torch.where(k[None, :] >= count[:, None], far[:, None], torch.minimum(breaks, far[:, None]))
    # distance → position along the segment (distance is linear in u when the plane is not crossed)
    change = distance_end - distance_start
    safe_change = torch.where(change.abs() > 1e-12, change, torch.ones_like(change))
    position = torch.clamp((breaks - distance_start[:, None]) / safe_change[:, None], 0.0, 1.0) * length[:, None]
    position = torch.where((change.abs() > 1e-12)[:, None] & ~crosses[:, None], position,
                           torch.cat([torch.zeros_like(length)[:, None], length[:, None].expand(n, width)], dim=1))
    lower = torch.minimum(position[:, :-1], position[:, 1:])
    upper = torch.maximum(position[:, :-1], position[:, 1:])
    near_distance = torch.where(crosses[:, None], torch.zeros_like(lower), breaks[:, :-1])
    near_distance = torch.where((change.abs() > 1e-12)[:, None] | crosses[:, None], near_distance, near[:, None])
    used = torch.arange(width, device=length.device)[None, :] < count[:, None]
    return SegmentPieces(start=lower, end=torch.where(used, upper, lower), near_distance=near_distance, used=used)


@torch.no_grad()
def sample_nodes(pairs: Pairs, segments: SegmentState, detached: Params, options):
    """The charge samples of every pair: (pair row [S], position u along the segment [S] cm, fraction of the
    segment's charge [S]), from the node grid (integer layout only, no gradients; ``options`` gives
    ``max_sample_step`` and ``sample_spacing``)."""
    device = pairs.segment.device
    dtype = segments.start.dtype
    seg = pairs.segment
    # Nodes: each segment is cut into pieces at fixed drift distances d_near·2^k (k = 1, 2, ...), so that the
    # diffusion width changes by at most √2 within a piece; each piece has its own midpoint grid,
    # u_i = u_piece + (i + ½)·ℓ/n, shared by the pairs of the segment, and a node never moves with the
    # parameters; each pair takes the nodes inside its stretch [u_start, u_end].  A piece's step is at most one
    # diffusion width at its end nearest the anode (σ_T across the drift axis, σ_L along it) and at most
    # max_sample_step.  (One grid per segment at its nearest point made a 3 cm segment ending 1 mm from the
    # anode cost as many nodes as 30 m of track.)
    seg_start = segments.start.detach()
    seg_delta = segments.end.detach() - seg_start
    seg_length = torch.linalg.norm(seg_delta, dim=1)
    seg_direction = seg_delta / torch.where(seg_length > 0, seg_length, torch.ones_like(seg_length))[:, None]
    seg_z_anode = segments.z_anode.detach()
    distance_start = drift_stage.drift_distance(seg_start[:, 2], seg_z_anode)
    distance_end = drift_stage.drift_distance(seg_start[:, 2] + seg_delta[:, 2], seg_z_anode)
    # The node grid must not move while a fit varies the parameters (a changed node count is a step in the
    # loss): it is built for the narrowest clouds of the documented ranges (or narrower, outside them).
    grid_velocity, grid_tran, grid_long = plan_diffusion(detached)
    transverse = torch.maximum(seg_direction[:, 0].abs(), seg_direction[:, 1].abs())
    pieces = segment_pieces(distance_start, distance_end, seg_length, seg_start[:, 2] - seg_z_anode,
                            seg_delta[:, 2])                                          # [N, P] cm along the segment
    near = pieces.near_distance                                                      # [N, P]
    # widths below 10 µm (charge within ~0.2 mm of the anode, or no diffusion at all) are sampled as 10 µm: the
    # grid stays finite (a zero width would ask for infinitely many nodes)
    sigma_t = torch.clamp(drift_stage.diffusion_sigma(near, grid_velocity, grid_tran), min=SAMPLE_WIDTH_FLOOR)
    sigma_l = torch.clamp(drift_stage.diffusion_sigma(near, grid_velocity, grid_long), min=float(grid_velocity) * 0.01)
    step = torch.full_like(sigma_t, options.max_sample_step)
    step = torch.minimum(step, options.sample_spacing * sigma_t / torch.clamp(transverse, min=1e-12)[:, None])
    step = torch.minimum(step, options.sample_spacing * sigma_l
                         / torch.clamp(seg_direction[:, 2].abs(), min=1e-12)[:, None])
    piece_length = pieces.end - pieces.start
    # node count rounded up to the grid 2^(k/4): it changes only where ℓ/step crosses a grid point
    raw = torch.clamp(piece_length / step, min=1.0)
    n_nodes = torch.ceil(torch.exp2(torch.ceil(4.0 * torch.log2(raw) - 1e-9) / 4.0) - 1e-9).clamp(min=1)
    n_nodes = torch.where(pieces.used, n_nodes, torch.zeros_like(n_nodes))
    spacing = piece_length / torch.clamp(n_nodes, min=1.0)
    # (pair, piece) → the piece's nodes inside the pair's stretch
    point_like = (seg_length == 0)[seg]
    piece_start, piece_spacing, piece_nodes = pieces.start[seg], spacing[seg], n_nodes[seg]   # [M, P]
    safe_spacing = torch.where(piece_spacing > 0, piece_spacing, torch.ones_like(piece_spacing))
    first_node = torch.ceil((pairs.u_start[:, None] - piece_start) / safe_spacing - 0.5).long().clamp(min=0)
    last_node = torch.minimum(torch.floor((pairs.u_end[:, None] - piece_start) / safe_spacing - 0.5).long(),
                              piece_nodes.long() - 1)
    n_samples = torch.clamp(last_node - first_node + 1, min=0)
    n_samples = torch.where(piece_spacing > 0, n_samples, torch.zeros_like(n_samples))
    # a point-like segment is one node with all its charge, in its first piece
    n_samples[:, 0] = torch.where(point_like, torch.ones_like(n_samples[:, 0]), n_samples[:, 0])
    first_node[:, 0] = torch.where(point_like, torch.zeros_like(first_node[:, 0]), first_node[:, 0])
    n_pieces = n_samples.shape[1]
    n_samples = n_samples.reshape(-1)
    total = int(n_samples.sum())
    combination = torch.repeat_interleave(torch.arange(n_samples.numel(), device=device), n_samples,
                                          output_size=total)
    pair_of_sample = combination // n_pieces
    first = torch.cumsum(n_samples, 0) - n_samples
    node = first_node.reshape(-1)[combination] + (torch.arange(total, device=device) - first[combination])
    u = piece_start.reshape(-1)[combination] + (node.to(dtype) + 0.5) * piece_spacing.reshape(-1)[combination]
    safe_length = torch.where(seg_length > 0, seg_length, torch.ones_like(seg_length))[seg]
    weight = piece_spacing.reshape(-1)[combination] / safe_length[pair_of_sample]
    sample_point_like = point_like[pair_of_sample]
    u = torch.where(sample_point_like, torch.zeros_like(u), u)
    weight = torch.where(sample_point_like, torch.ones_like(u), weight)
    return pair_of_sample, u, weight


@torch.no_grad()
def plan_samples(pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int, segments: SegmentState,
                 params: Params, detector: Detector, options: InductionOptions) -> SamplePlan:
    """Choose the samples along each pair's stretch of segment and the tick window of each sample."""
    device = pairs.segment.device
    detached = params.detached()
    pair_of_sample, u, weight = sample_nodes(pairs, segments, detached, options)
    # tick window of each sample
    charge, mu, sigma_time, amplitude, fast, slow, on_pad = _sample_state(u, weight, pair_of_sample, pairs,
                                                                          segments, detached, detector)
    # Tick windows.  Near the arrival (from where either component's pure-exponential form stops being exact,
    # t > μ − σ(6 + σ/s), to μ + n_late·σ) both components are evaluated exactly; before that each component's tail is
    # a pure exponential, evaluated until it falls below tail_tolerance (relative to the charge of the sample's node).
    eps = options.tail_tolerance
    shift = segments.time_shift.detach()[pairs.segment[pair_of_sample]]
    earliest = segments.first_tick[pairs.segment[pair_of_sample]]
    near_start = torch.minimum(exact_from(mu, sigma_time, fast), exact_from(mu, sigma_time, slow))
    near_first = torch.floor((near_start - shift) / detector.tick).long() + 1
    near_last = torch.floor((mu + options.n_sigma_late * sigma_time - shift) / detector.tick).long()
    fast_cut, slow_cut = tail_cuts(mu, sigma_time, amplitude, fast, slow, eps, on_pad)
    fast_first = torch.ceil((fast_cut - shift) / detector.tick).long()
    slow_first = torch.ceil((slow_cut - shift) / detector.tick).long()
    first_tick = torch.stack([near_first, fast_first, slow_first], dim=1)
    last_tick = torch.stack([near_last, near_first - 1, near_first - 1], dim=1)
    first_tick = torch.maximum(first_tick, earliest[:, None])
    n_ticks = torch.clamp(last_tick - first_tick + 1, min=0)
    # Samples without charge (outside the pad's Gaussian reach) or without ticks are dropped.  The pixel windows'
    # ends and the trigger horizon (pixel_horizon) are taken over all the others, so that they do not step when
    # a sample's part on the pad crosses min_pad_fraction; only samples above it are evaluated.
    present = (n_ticks.sum(dim=1) > 0) & (charge != 0)
    evaluated = present & (on_pad > options.min_pad_fraction)
    big = torch.iinfo(torch.long).max
    pixel_all = pixel_of_pair[pair_of_sample[present]]
    hi = torch.full((n_pixels,), -big, dtype=torch.long, device=device).scatter_reduce(
        0, pixel_all, near_last[present], "amax")
    horizon_samples = (pair_of_sample[present], u[present], weight[present])
    pair_of_sample, u, weight = pair_of_sample[evaluated], u[evaluated], weight[evaluated]
    first_tick, n_ticks, last_tick = first_tick[evaluated], n_ticks[evaluated], last_tick[evaluated]
    used = n_ticks > 0
    first_tick_any = torch.where(used, first_tick, torch.full_like(first_tick, big)).amin(dim=1)
    # pixel windows (pixel_windows): from the earliest evaluated tick to the last tick of any sample with charge
    pixel = pixel_of_pair[pair_of_sample]
    lo = torch.full((n_pixels,), big, dtype=torch.long, device=device).scatter_reduce(0, pixel, first_tick_any, "amin")
    no_samples = hi == -big
    hi = torch.where(no_samples, torch.zeros_like(hi), hi)
    lo = torch.where(lo == big, hi, lo)
    pixel_start, pixel_width, pixel_offset, buffer_size = pixel_windows(lo, hi)
    return SamplePlan(pair=pair_of_sample, u=u, weight=weight, first_tick=first_tick, n_ticks=n_ticks,
                      pixel_of_pair=pixel_of_pair, pixel_start=pixel_start, pixel_width=pixel_width,
                      pixel_offset=pixel_offset, buffer_size=buffer_size,
                      horizon_pair=horizon_samples[0], horizon_u=horizon_samples[1],
                      horizon_weight=horizon_samples[2])


def chunk_bounds(n_ticks: torch.Tensor, max_elements: int):
    """Split samples into consecutive chunks of at most ``max_elements`` elements (a sample is never split)."""
    counts = n_ticks.cpu()
    if counts.numel() == 0:
        return []
    cumulative = torch.cumsum(counts, 0)
    bounds = []
    lo = 0
    total = int(cumulative[-1])
    done = 0
    while lo < counts.numel():
        target = done + max(max_elements, 1)
        hi = int(torch.searchsorted(cumulative, torch.tensor(target), right=True))
        hi = max(hi, lo + 1)
        bounds.append((lo, hi))
        done = int(cumulative[hi - 1])
        lo = hi
    assert done == total
    return bounds


#: Bytes per (sample, tick) element, in units of the float size, that the graph of the induction holds for
#: backward when its chunks are not checkpointed (measured: 7.1e6 elements, float64, +0.76 GB peak RSS).
GRAPH_FLOATS_PER_ELEMENT = 16


def induce(pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int, segments: SegmentState, params: Params,
           detector: Detector, options: Optional[InductionOptions] = None, max_elements: int = 2_000_000,
           checkpoint: Optional[bool] = None, backend: str = "torch", progress=None,
           graph_budget: Optional[int] = None):
    """Flat per-pixel-window charge buffer (electrons per tick) and the plan describing its layout.

    Samples are processed in chunks of at most ``max_elements`` (sample, tick) elements.  With gradients each
    chunk is wrapped in ``torch.utils.checkpoint`` (backward then holds one chunk's intermediates at a time and
    recomputes the chunk) when ``checkpoint`` is True, or when it is None and the graph of all chunks would
    exceed ``graph_budget`` bytes (None: always).
    """
    options = options or InductionOptions()
    plan = plan_samples(pairs, pixel_of_pair, n_pixels, segments, params, detector, options)
    dtype = segments.start.dtype
    device = segments.start.device
    grad_inputs = [t for t in (segments.start, segments.end, segments.n_electrons, segments.t_start,
                               segments.t_end, *[getattr(params, n) for n in params.names()]) if t.requires_grad]
    use_checkpoint = (torch.is_grad_enabled() and bool(grad_inputs)) if checkpoint is None else checkpoint
    if checkpoint is None and use_checkpoint and graph_budget is not None:
        itemsize = torch.finfo(dtype).bits // 8
        use_checkpoint = plan.n_elements * GRAPH_FLOATS_PER_ELEMENT * itemsize > graph_budget
    buffer = torch.zeros(plan.buffer_size, dtype=dtype, device=device)
    bounds = chunk_bounds(plan.n_ticks.sum(dim=1), max_elements)
    for lo, hi in bounds:
        if use_checkpoint:
            part = torch.utils.checkpoint.checkpoint(_chunk_charge, lo, hi, plan, pairs, segments, params, detector,
                                                     backend, options, *grad_inputs, use_reentrant=False)
        else:
            part = _chunk_charge(lo, hi, plan, pairs, segments, params, detector, backend, options)
        buffer = buffer + part
        if progress is not None:
            progress(hi - lo)
    return buffer, plan


def pixel_horizon(plan: SamplePlan, pairs: Pairs, segments: SegmentState, params: Params, detector: Detector,
                  options: InductionOptions) -> torch.Tensor:
    """Last column [U] (continuous, differentiable) at which a pixel's window may trigger: the latest sample's
    μ + n_late·σ_t plus the integration ticks.  The relaxed front end weighs ticks beyond it out smoothly, so
    the number of ticks in which noise may trigger on a residual charge does not step with the parameters."""
    n_pixels = plan.pixel_width.numel()
    dtype = segments.start.dtype
    pair = plan.pair if plan.horizon_pair is None else plan.horizon_pair
    u = plan.u if plan.horizon_u is None else plan.horizon_u
    weight = plan.weight if plan.horizon_weight is None else plan.horizon_weight
    if pair.numel() == 0:
        return torch.full((n_pixels,), -1.0, dtype=dtype, device=segments.start.device)
    _, mu, sigma_time, _, _, _, _ = _sample_state(u, weight, pair, pairs, segments, params, detector)
    shift = segments.time_shift[pairs.segment[pair]]
    last = (mu + options.n_sigma_late * sigma_time - shift) / detector.tick
    return horizon_columns(last, plan.pixel_of_pair[pair], plan)


def to_waveforms(buffer: torch.Tensor, plan: SamplePlan, pixel_table: torch.Tensor) -> Waveforms:
    """Padded [U, W_max] view of the flat buffer (differentiable gather)."""
    n_pixels = plan.pixel_width.numel()
    device = buffer.device
    if n_pixels == 0:
        return Waveforms(pixel_table, plan.pixel_start, plan.pixel_width, buffer.new_zeros((0, 20)))
    width_max = int(plan.pixel_width.max())
    column = torch.arange(width_max, device=device)
    index = plan.pixel_offset[:, None] + column[None, :]
    inside = column[None, :] < plan.pixel_width[:, None]
    padded = torch.cat([buffer, buffer.new_zeros(1)])
    index = torch.where(inside, index, torch.full_like(index, plan.buffer_size))
    return Waveforms(pixel_table=pixel_table, start_tick=plan.pixel_start, width=plan.pixel_width,
                     charge=padded[index])


class Induction(nn.Module):
    """Thin module wrapper of :func:`induce`."""

    def __init__(self, detector: Detector, options: Optional[InductionOptions] = None):
        super().__init__()
        self.detector = detector
        self.options = options or InductionOptions()

    def forward(self, pairs, pixel_of_pair, n_pixels, segments: SegmentState, params: Params):
        return induce(pairs, pixel_of_pair, n_pixels, segments, params, self.detector, self.options)
