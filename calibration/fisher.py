"""Expected Fisher information of the readout likelihood for one set of tracks, at the true parameters.

What it computes.  The readout likelihood (``calibration/losses/likelihood.py``) models, per pixel, the number N
of readouts by the nested slot probabilities of the relaxed front end, P(N = n) = w_{n−1} − w_n (w_{−1} = 1), and
the (ADC, time) x_s of slot s, given that it exists, as a chain: a readout's window starts where the previous one
ended, so its values are correlated with the previous readout's crossing time.  Slot 0 has the 2-D Gaussian
density N₂(μ_0, Σ_0) (ADC variance, time variance + a tick's quantisation 0.1²/12 µs², their covariance,
|ρ| ≤ 0.99); slot s ≥ 1 the Gaussian regression on the previous slot's observed time t_{s−1}
(``conditional_readout``):

    x_s | t_{s−1} ~ N₂(m_s, Σc_s),   m_s = μ_s + β_s d_s,   d_s = t_{s−1} − μ_{s−1,t},   β_s = c_s / V_s,
    Σc_s = Σ_s − c_s c_sᵀ / V_s,     c_s = (Cov(ADC_s, t_{s−1}), Cov(t_s, t_{s−1}))   [ADC·µs, µs²]

with V_s = Σ_{s−1,tt} the previous readout's time variance + the floor [µs²] (c capped to |correlation| ≤ 0.99,
Σc's own correlation capped too), so that a pixel's likelihood is
P(N = n) · p(x_0) · Π_{0<s<n} p(x_s | t_{s−1}).

The information.  Taking that model as the distribution of the data (count drawn independently of the values,
slot 0 from its marginal, each later slot from its conditional given the drawn t_{s−1}), the score of the pixel is
a sum of terms each of zero mean given everything before it (the count, x_0, ..., x_{s−1}): their covariances
vanish, and F is the sum of each term's expected information.  For slot s, given d_s the conditional Gaussian
has the Fisher information ∂m_sᵀ Σc⁻¹ ∂m_s + ½ tr(Σc⁻¹ ∂Σc Σc⁻¹ ∂Σc) (per pair of parameters i, j), with

    ∂m_s = (∂μ_s − β_s ∂μ_{s−1,t}) + ∂β_s · d_s         (d_s moves with θ through μ_{s−1,t})

Under the model d_s has mean 0 and variance V_s (by induction along the chain: E[t_{s−1}] = μ_{s−1,t} +
β_{s−1,t} E[d_{s−1}] = μ_{s−1,t}, Var(t_{s−1}) = β_{s−1,t}² V_{s−1} + Σc_{s−1,tt} = Σ_{s−1,tt} = V_s, the floor
included), so the mean's cross term vanishes and, weighting by w_s = P(N > s) (the value density enters the
likelihood only when slot s is read; the count is independent of the values),

    F = Σ_n ∂P_n ∂P_nᵀ / P_n                                                       (count term)
      + Σ_s w_s · [ a_sᵀ Σc_s⁻¹ a_s + V_s · ∂β_sᵀ Σc_s⁻¹ ∂β_s ]                      (mean term)
      + Σ_s w_s · ½ tr(Σc_s⁻¹ ∂_iΣc_s Σc_s⁻¹ ∂_jΣc_s)                               (covariance term)

with a_s = ∂μ_s − β_s ∂μ_{s−1,t} (2 × P), summed over pixels (pixels are independent in the likelihood, and so
are tracks in different events or on different pixels: F is additive).  For slot 0 (c = 0: β = 0, Σc = Σ) this is
the independent readout's J_sᵀ Σ_s⁻¹ J_s + ½ tr(Σ_s⁻¹ ∂Σ_s Σ_s⁻¹ ∂Σ_s).  ``chain=False`` gives the information of
the likelihood without the previous-readout covariances (every slot scored by its marginal, as if a pixel's
readouts were independent).  The likelihood adds ``count_floor`` (1e-6) to P_n, so the count term divides by
P_n + count_floor: the information the likelihood itself can draw from a count the model calls (almost)
impossible, not more.  The likelihood's broad (1 %, 30× wider) and outlier components are left out: they are
there for robustness far from the truth and lower the information at the truth by about their weight
(tests/test_fisher.py measures the score's variance under the full likelihood).

Why this form and not the average Hessian of the NLL over noise seeds: it needs no target and no second
derivatives (which the simulator's checkpointed graph does not provide): 1 + 2P forward passes of the relaxed
model (no backward), where a finite-difference Hessian needs 2P forward + backward passes per noise seed and
several seeds to average out the seed-to-seed spread of the observed information.  It is the information of
the likelihood as written: if the likelihood matches the noise of the hard front end (docs/calibration.md: the
model's σ_ADC and σ_t agree with 1000 hard-mode seeds within 4 %: "How far to trust these σ" there), it equals
the inverse covariance of the maximum-likelihood fit, which tests/test_fisher.py checks against the spread of the
score over hard-mode noise seeds.

How: the derivatives of every readout's (w, μ, Σ, previous covariances) by central finite differences of the
relaxed model (one forward pass per ±h_k step, relative step ``relative_step`` of each parameter's value; the
relaxed model is smooth, and tests/test_fisher.py checks these derivatives against autograd).  β_s and Σc_s are
computed in each evaluation from its own values (slot s and the same pixel's slot s − 1) by the likelihood's
``conditional_readout``, so that the caps act as in the likelihood, and differenced like the rest.  Readouts are
matched across the evaluations by their key (event, plane, ix, iy, slot); a slot reported in one evaluation and
not another (its weight crossed ``FrontEnd.min_weight``, 1e-9) has weight 0 where absent and contributes no value
term; a slot whose previous slot is not reported in every evaluation is taken with its marginal density (the
likelihood conditions only on a previous slot the model reports).

σ per parameter: marginal sqrt((F⁻¹)_ii) (the others fitted too) and conditional 1/sqrt(F_ii) (the others known).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .losses.likelihood import COUNT_FLOOR, MAX_CORRELATION, TIME_VARIANCE_FLOOR, conditional_readout

#: per-readout quantities the Fisher information needs, in the order of :func:`readout_table`'s columns:
#: weight, ADC [ADC], t [µs], their variances [ADC², µs²] and covariance [ADC·µs], and the covariances of the ADC
#: [ADC·µs] and of t [µs²] with the previous readout's (slot s − 1, same pixel) time
COLUMNS = ("weight", "adc", "t", "adc_variance", "t_variance", "adc_t_covariance", "adc_t_previous_covariance",
           "t_previous_covariance")


def readout_table(hits) -> tuple:
    """(keys [N, 5] int64: event, plane, ix, iy, slot; values [N, 8] float: ``COLUMNS``) of relaxed-mode hits."""
    for name in COLUMNS:
        if getattr(hits, name, None) is None:
            raise ValueError(f"hits.{name} is missing: the Fisher information needs relaxed-mode hits")
    keys = torch.stack([hits.event.long(), hits.plane.long(), hits.ix.long(), hits.iy.long(), hits.readout.long()],
                       dim=1)
    values = torch.stack([getattr(hits, name).detach() for name in COLUMNS], dim=1)
    return keys, values


@dataclass
class FisherInformation:
    """Expected Fisher information [P, P] in physical units (1/unit_i/unit_j) and its parts."""

    names: List[str]
    values: Dict[str, float]                 # the parameters' values at which F is evaluated
    matrix: np.ndarray                       # count + mean + covariance terms
    count_term: np.ndarray
    mean_term: np.ndarray                    # Σ w_s [a_sᵀ Σc⁻¹ a_s + V_s ∂β_sᵀ Σc⁻¹ ∂β_s] (module docstring)
    covariance_term: np.ndarray              # Σ w_s ½ tr(Σc⁻¹ ∂Σc Σc⁻¹ ∂Σc)
    n_readouts: int                          # (pixel, slot) entries reported by the model
    expected_readouts: float                 # Σ w_s
    n_pixels: int
    steps: Dict[str, float] = field(default_factory=dict)

    def sigma(self) -> Dict[str, float]:
        """Marginal σ_i = sqrt((F⁻¹)_ii) (every parameter of ``names`` free); NaN if F is singular."""
        return dict(zip(self.names, marginal_sigma(self.matrix)))

    def conditional_sigma(self) -> Dict[str, float]:
        """σ_i = 1/sqrt(F_ii) (the other parameters known)."""
        diag = np.diag(self.matrix)
        return {n: (1.0 / math.sqrt(d) if d > 0 else math.nan) for n, d in zip(self.names, diag)}

    def __add__(self, other: "FisherInformation") -> "FisherInformation":
        """Information of independent data sets adds (tracks in different events, or on disjoint pixels)."""
        if list(self.names) != list(other.names):
            raise ValueError("cannot add Fisher matrices of different parameter lists")
        return FisherInformation(list(self.names), dict(self.values), self.matrix + other.matrix,
                                 self.count_term + other.count_term, self.mean_term + other.mean_term,
                                 self.covariance_term + other.covariance_term, self.n_readouts + other.n_readouts,
                                 self.expected_readouts + other.expected_readouts, self.n_pixels + other.n_pixels,
                                 dict(self.steps))


def marginal_sigma(matrix: np.ndarray) -> np.ndarray:
    """sqrt(diag F⁻¹), computed on the correlation-scaled matrix (F spans many orders of magnitude in physical
    units); NaN where F is not positive definite."""
    matrix = np.asarray(matrix, dtype=np.float64)
    diag = np.diag(matrix)
    if matrix.size == 0 or np.any(diag <= 0):
        return np.full(len(diag), np.nan)
    scale = 1.0 / np.sqrt(diag)
    scaled = matrix * np.outer(scale, scale)
    eig = np.linalg.eigvalsh(scaled)
    if eig[0] <= 1e-14 * eig[-1]:
        return np.full(len(diag), np.nan)
    inverse = np.linalg.inv(scaled)
    return np.sqrt(np.diag(inverse)) * scale


def _evaluate(segments, detector, params, front_end, memory_budget, simulate=None):
    import sparsetpc as st
    with torch.no_grad():
        if simulate is not None:
            hits = simulate(params, segments)
        else:
            hits = st.simulate(segments, detector, params, mode="relaxed", front_end=front_end,
                               memory_budget=memory_budget)
    return readout_table(hits)


def previous_rows(keys: torch.Tensor) -> torch.Tensor:
    """[N] row of the same pixel's previous slot (key slot − 1) for each row of ``keys`` [N, 5] (event, plane, ix,
    iy, slot); −1 for slot 0 or where that slot is not in ``keys``."""
    n_rows = keys.shape[0]
    if n_rows == 0:
        return torch.zeros(0, dtype=torch.long, device=keys.device)
    pixel_keys, pixel_row = torch.unique(keys[:, :4], dim=0, return_inverse=True)
    slot = keys[:, 4].long()
    table = torch.full((pixel_keys.shape[0], int(slot.max()) + 1), -1, dtype=torch.long, device=keys.device)
    table[pixel_row, slot] = torch.arange(n_rows, device=keys.device)
    previous = table[pixel_row, torch.clamp(slot - 1, min=0)]
    return torch.where(slot > 0, previous, torch.full_like(previous, -1))


def conditional_moments(values: torch.Tensor, previous_values: torch.Tensor, chained: torch.Tensor,
                        time_variance_floor: float = TIME_VARIANCE_FLOOR, max_correlation: float = MAX_CORRELATION):
    """(β [N, 2]: the regression slope (ADC, t) on the previous readout's time deviation [ADC/µs, 1], Σc [N, 2, 2]:
    the covariance of (ADC, t) given that time [ADC², ADC·µs, µs²]) as the likelihood builds them
    (:func:`conditional_readout`, caps included).  ``values``, ``previous_values`` [N, 8] (``COLUMNS``) of each
    readout and of its pixel's previous readout; where ``chained`` [N] is False the readout's marginal density
    (β = 0, Σc = Σ with the time floor and the correlation cap, as ``readout_covariance``)."""
    zero = torch.zeros_like(values[:, 0])
    previous_time_variance = torch.where(chained, previous_values[:, 4], zero)
    adc_previous_covariance = torch.where(chained, values[:, 6], zero)
    time_previous_covariance = torch.where(chained, values[:, 7], zero)
    # mean 0 and a deviation of 1 µs: the returned means are the slopes β themselves
    beta_a, beta_t, var_a, var_t, covariance = conditional_readout(
        zero, zero, values[:, 3], values[:, 4], values[:, 5], previous_time_variance, adc_previous_covariance,
        time_previous_covariance, torch.ones_like(zero), time_variance_floor, max_correlation)
    beta = torch.stack([beta_a, beta_t], dim=1)
    sigma = torch.stack([torch.stack([var_a, covariance], dim=1), torch.stack([covariance, var_t], dim=1)], dim=1)
    return beta, sigma


@dataclass
class ReadoutDerivatives:
    """The relaxed model's readouts at the parameters and their central-difference derivatives.

    ``keys`` [U, 5] (event, plane, ix, iy, slot): the union over the 1 + 2P evaluations; ``values`` [U, 8]
    (``COLUMNS``) at the parameters (weight 0 where not reported); ``derivative`` [P, U, 8] per unit of each
    parameter; ``shifted`` [2P, U, 8] the ± evaluations (for derivatives of functions of the values);
    ``everywhere`` [U]: reported in every evaluation; ``steps``: the absolute step per parameter."""

    names: List[str]
    keys: torch.Tensor
    values: torch.Tensor
    derivative: torch.Tensor
    shifted: torch.Tensor
    present: torch.Tensor
    everywhere: torch.Tensor
    steps: Dict[str, float]


def readout_derivatives(segments, params, names: Sequence[str], *, detector=None, front_end=None,
                        relative_step: float = 1e-4, memory_budget="1GB", simulate=None) -> ReadoutDerivatives:
    """Evaluate the relaxed model at ``params`` and at ±h_k of each parameter of ``names`` (h_k =
    ``relative_step`` × |value|) and match the readouts by key.  See :class:`ReadoutDerivatives`.
    ``simulate(params, segments) -> Hits``: the relaxed model to evaluate (e.g. a fit's own forward, with its
    clock phases and field response); default ``sparsetpc.simulate`` with ``detector``, ``front_end`` and
    ``memory_budget``."""
    import sparsetpc as st
    from sparsetpc.electronics import FrontEnd
    detector = detector or st.Detector.default()
    front_end = front_end or FrontEnd(tick=detector.tick)
    names = list(names)
    base = params.replace(**{n: getattr(params, n).detach().clone() for n in params.names()})
    dtype, device = base.dtype, base.device
    if dtype != torch.float64:
        raise ValueError("the Fisher information is taken by finite differences: use float64 parameters")
    tables = [_evaluate(segments, detector, base, front_end, memory_budget, simulate)]
    steps = {}
    for name in names:
        value = float(getattr(base, name))
        step = relative_step * abs(value) if value != 0 else relative_step
        steps[name] = step
        for sign in (+1.0, -1.0):
            shifted = base.replace(**{name: value + sign * step})
            tables.append(_evaluate(segments, detector, shifted, front_end, memory_budget, simulate))
    # the union of keys over all evaluations; values [E, U, 8] (weight 0 and present False where absent)
    all_keys = torch.cat([keys for keys, _ in tables])
    union, inverse = torch.unique(all_keys, dim=0, return_inverse=True)
    n_union = union.shape[0]
    stacked = torch.zeros((len(tables), n_union, len(COLUMNS)), dtype=dtype, device=device)
    present = torch.zeros((len(tables), n_union), dtype=torch.bool, device=device)
    offset = 0
    for index, (keys, values) in enumerate(tables):
        rows = inverse[offset:offset + keys.shape[0]]
        offset += keys.shape[0]
        stacked[index, rows] = values.to(dtype)
        present[index, rows] = True
    derivative = torch.zeros((len(names), n_union, len(COLUMNS)), dtype=dtype, device=device)
    everywhere = present.all(dim=0)
    for k, name in enumerate(names):
        derivative[k] = (stacked[1 + 2 * k] - stacked[2 + 2 * k]) / (2.0 * steps[name])
    return ReadoutDerivatives(names=names, keys=union, values=stacked[0], derivative=derivative,
                              shifted=stacked[1:], present=present[0], everywhere=everywhere, steps=steps)


def expected_fisher(segments, params, names: Sequence[str], *, detector=None, front_end=None,
                    relative_step: float = 1e-4, memory_budget="1GB", count_floor: float = COUNT_FLOOR,
                    time_variance_floor: float = TIME_VARIANCE_FLOOR, max_correlation: float = MAX_CORRELATION,
                    n_slots: Optional[int] = None, chain: bool = True, simulate=None) -> FisherInformation:
    """Expected Fisher information of the readout likelihood of ``segments`` (st.Segments, z = drift) at
    ``params`` (st.Params, float64; its device is used) for the parameters ``names``.  See the module docstring.

    ``relative_step``: the central-difference step of each parameter, relative to its value.
    ``front_end``: the relaxed front end (``FrontEnd(clock_phases=K)``), default ``FrontEnd()`` at the
    detector's tick.  ``n_slots``: readouts per pixel (default ``front_end.max_readouts``).  ``chain``: the
    likelihood with the previous-readout covariances (slot s scored given slot s − 1's time, as ``HitsLoss``);
    False: every slot by its marginal density (``readout_nll`` without them).  ``simulate``: as
    :func:`readout_derivatives` (``front_end`` still gives the readouts per pixel)."""
    from sparsetpc.electronics import FrontEnd
    import sparsetpc as st
    detector = detector or st.Detector.default()
    front_end = front_end or FrontEnd(tick=detector.tick)
    n_slots = int(front_end.max_readouts if n_slots is None else n_slots)
    names = list(names)
    derivatives = readout_derivatives(segments, params, names, detector=detector, front_end=front_end,
                                      relative_step=relative_step, memory_budget=memory_budget,
                                      simulate=simulate)
    values = {n: float(getattr(params, n).detach()) for n in names}
    return fisher_from_derivatives(derivatives, n_slots, values=values, count_floor=count_floor,
                                   time_variance_floor=time_variance_floor, max_correlation=max_correlation,
                                   chain=chain)


def fisher_from_derivatives(d: ReadoutDerivatives, n_slots: int, *, values: Optional[Dict[str, float]] = None,
                            count_floor: float = COUNT_FLOOR, time_variance_floor: float = TIME_VARIANCE_FLOOR,
                            max_correlation: float = MAX_CORRELATION, chain: bool = True) -> FisherInformation:
    """The expected Fisher information (module docstring) from the readouts and derivatives of
    :func:`readout_derivatives`; ``n_slots`` readouts per pixel; ``values``: the parameters' values (reported
    with the result); the options as :func:`expected_fisher`."""
    names = list(d.names)
    union, center, derivative, everywhere, steps = d.keys, d.values, d.derivative, d.everywhere, d.steps
    stacked = torch.cat([center[None], d.shifted])
    dtype, device = center.dtype, center.device
    n_params, n_union = len(names), union.shape[0]

    # count term: per pixel, P_n = w_{n-1} − w_n, n = 0..n_slots (w_{-1} = 1, w_{n_slots} = 0)
    pixel_keys, pixel_row = torch.unique(union[:, :4], dim=0, return_inverse=True)
    n_pixels = pixel_keys.shape[0]
    slot = union[:, 4]
    if n_union and int(slot.max()) >= n_slots:
        raise ValueError(f"readout slot beyond the front end's {n_slots} readouts per pixel")
    w_table = torch.zeros((n_pixels, n_slots + 2), dtype=dtype, device=device)       # column s + 1 holds w_s
    w_table[:, 0] = 1.0
    w_table[pixel_row, slot + 1] = center[:, 0]
    dw_table = torch.zeros((n_params, n_pixels, n_slots + 2), dtype=dtype, device=device)
    dw_table[:, pixel_row, slot + 1] = derivative[:, :, 0]
    probability = torch.clamp(w_table[:, :-1] - w_table[:, 1:], min=0.0)              # [pixels, n_slots + 1]
    dprobability = dw_table[:, :, :-1] - dw_table[:, :, 1:]                          # [P, pixels, n_slots + 1]
    count = torch.einsum("ipn,jpn->ij", dprobability, dprobability / (probability + count_floor))

    # value terms over readouts reported in every evaluation, weighted by their existence probability w_s; slot
    # s ≥ 1 given the previous slot's time (chain), when that slot is reported in every evaluation too
    use = everywhere & (center[:, 0] > 0)
    previous = previous_rows(union)
    chained = (previous >= 0) & everywhere[torch.clamp(previous, min=0)] if chain else torch.zeros_like(use)
    previous = torch.clamp(previous, min=0)[use]
    chained = chained[use]
    weight = center[use, 0]
    moments = [conditional_moments(table[use], table[previous], chained, time_variance_floor, max_correlation)
               for table in stacked]                                   # per evaluation: (β [N, 2], Σc [N, 2, 2])
    beta, sigma = moments[0]
    precision = torch.linalg.inv(sigma)
    # a_s = ∂μ_s − β_s ∂μ_{s−1,t} [P, N, 2] (the previous mean's derivative is 0 where not chained: β = 0 there)
    jac_previous_time = torch.where(chained, derivative[:, previous, 2], torch.zeros_like(weight))
    jac_mean = derivative[:, use][:, :, 1:3] - beta[None] * jac_previous_time[:, :, None]
    # ∂β_s and ∂Σc_s through the likelihood's own construction (floor constant, caps) by the same differences
    dbeta = torch.zeros((n_params,) + beta.shape, dtype=dtype, device=device)
    dsigma = torch.zeros((n_params,) + sigma.shape, dtype=dtype, device=device)
    for k, name in enumerate(names):
        (beta_plus, sigma_plus), (beta_minus, sigma_minus) = moments[1 + 2 * k], moments[2 + 2 * k]
        dbeta[k] = (beta_plus - beta_minus) / (2.0 * steps[name])
        dsigma[k] = (sigma_plus - sigma_minus) / (2.0 * steps[name])
    # Var(d_s) = V_s, the previous readout's time variance + the floor [µs²] (0 where not chained: ∂β = 0 there)
    deviation_variance = torch.where(chained, center[previous, 4] + time_variance_floor, torch.zeros_like(weight))
    mean = torch.einsum("n,ina,nab,jnb->ij", weight, jac_mean, precision, jac_mean)
    mean = mean + torch.einsum("n,ina,nab,jnb->ij", weight * deviation_variance, dbeta, precision, dbeta)
    product = torch.einsum("nab,inbc->inac", precision, dsigma)           # Σc⁻¹ ∂_iΣc  [P, N, 2, 2]
    covariance = 0.5 * torch.einsum("n,inab,jnba->ij", weight, product, product)
    to_numpy = lambda x: x.detach().cpu().double().numpy()
    count_np, mean_np, covariance_np = to_numpy(count), to_numpy(mean), to_numpy(covariance)
    matrix = count_np + mean_np + covariance_np
    matrix = 0.5 * (matrix + matrix.T)
    return FisherInformation(names=names, values=dict(values or {}), matrix=matrix, count_term=count_np,
                             mean_term=mean_np, covariance_term=covariance_np,
                             n_readouts=int(d.present.sum()), expected_readouts=float(center[:, 0].sum()),
                             n_pixels=int(n_pixels), steps=steps)


def hits_pixel_keys(hits) -> torch.Tensor:
    """[N, 4] (event, plane, ix, iy) of each readout, as the likelihood keys pixels."""
    return torch.stack([hits.event.reshape(-1).long(), hits.plane.reshape(-1).long(), hits.ix.reshape(-1).long(),
                        hits.iy.reshape(-1).long()], dim=1)


def sample_model_readouts(keys: torch.Tensor, values: torch.Tensor, generator: torch.Generator, *,
                          time_variance_floor: float = TIME_VARIANCE_FLOOR, max_correlation: float = MAX_CORRELATION,
                          chain: bool = True):
    """One draw of target readouts from the likelihood's core model: per pixel a count N with P(N = n) =
    w_{n−1} − w_n, then slots 0..N−1: slot 0 (ADC, t) ~ N₂(μ_0, Σ_0), each later slot from its density given the
    drawn time of the slot before, N₂(μ_s + β_s (t_{s−1} − μ_{s−1,t}), Σc_s) (:func:`conditional_moments`, as the
    likelihood builds it; ``chain=False``: every slot from its marginal N₂(μ_s, Σ_s), independently).  ``keys``
    [U, 5], ``values`` [U, 8] as :func:`readout_table`.  Returns (pixel keys [M, 4], slot [M], adc [M], t [M]).
    (For checks of the Fisher information: the score's covariance under these draws is F.)"""
    dtype, device = values.dtype, values.device
    n_rows = keys.shape[0]
    pixel_keys, pixel_row = torch.unique(keys[:, :4], dim=0, return_inverse=True)
    # one uniform per pixel: slot s is read iff u < w_s (nested weights: the count follows P(N = n))
    uniform = torch.rand(pixel_keys.shape[0], generator=generator, dtype=dtype, device=device)
    read = uniform[pixel_row] < values[:, 0]
    previous = previous_rows(keys)
    slot = keys[:, 4].long()
    draw = torch.zeros((n_rows, 2), dtype=dtype, device=device)          # (ADC [ADC], t [µs]) of every row
    # slot by slot (vectorised over pixels): the previous slot's draw is there before its successor's
    for current in range(int(slot.max()) + 1 if n_rows else 0):
        rows = torch.nonzero(slot == current)[:, 0]
        before = previous[rows]
        chained = (before >= 0) if chain else torch.zeros_like(before, dtype=torch.bool)
        before = torch.clamp(before, min=0)
        beta, sigma = conditional_moments(values[rows], values[before], chained, time_variance_floor, max_correlation)
        deviation = torch.where(chained, draw[before, 1] - values[before, 2], torch.zeros_like(beta[:, 0]))   # [µs]
        normal = torch.randn(rows.shape[0], 2, 1, generator=generator, dtype=dtype, device=device)
        draw[rows] = values[rows, 1:3] + beta * deviation[:, None] + (torch.linalg.cholesky(sigma) @ normal)[:, :, 0]
    return keys[read, :4], keys[read, 4], draw[read, 0], draw[read, 1]
