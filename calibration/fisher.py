"""Expected Fisher information of the readout likelihood for one set of tracks, at the true parameters.

What it computes.  The readout likelihood (``calibration/losses/likelihood.py``) models, per pixel, the number N
of readouts by the nested slot probabilities of the relaxed front end, P(N = n) = w_{n−1} − w_n (w_{−1} = 1), and
the (ADC, time) of slot s, given that it exists, by a 2-D Gaussian with the model's mean μ_s and covariance Σ_s
(ADC variance, time variance + a tick's quantisation 0.1²/12 µs², their covariance, |ρ| ≤ 0.99).  Taking that
model as the distribution of the data, the expected Fisher information of one pixel is exactly

    F = Σ_n ∂P_n ∂P_nᵀ / P_n                                              (count term)
      + Σ_s w_s · [ J_sᵀ Σ_s⁻¹ J_s + ½ tr(Σ_s⁻¹ ∂_iΣ_s Σ_s⁻¹ ∂_jΣ_s) ]       (value terms: mean, covariance)

with J_s = ∂μ_s/∂θ (2 × P) and w_s = P(N > s) the probability that slot s is read (its value density enters the
likelihood only then), summed over pixels (pixels are independent in the likelihood, and so are tracks in
different events or on different pixels: F is additive).  The likelihood adds ``count_floor`` (1e-6) to P_n,
so the count term divides by P_n + count_floor: the information the likelihood itself can draw from a count
the model calls (almost) impossible, not more.  The likelihood's broad (1 %, 30× wider) and outlier components
are left out: they are there for robustness far from the truth and lower the information at the truth by
about their weight (tests/test_fisher.py measures the score's variance under the full likelihood).

Why this form and not the average Hessian of the NLL over noise seeds: it needs no target and no second
derivatives (which the simulator's checkpointed graph does not provide): 1 + 2P forward passes of the relaxed
model (no backward), where a finite-difference Hessian needs 2P forward + backward passes per noise seed and
several seeds to average out the seed-to-seed spread of the observed information.  It is the information of
the likelihood as written: if the likelihood matches the noise of the hard front end (docs/calibration.md: the
model's σ_ADC and σ_t agree with 1000 hard-mode seeds within 4 %; readouts of one pixel are correlated, which
the likelihood ignores: "How far to trust these σ" there), it equals the inverse covariance of the
maximum-likelihood fit, which tests/test_fisher.py checks against the spread of the score over hard-mode noise
seeds.

How: the derivatives of every readout's (w, μ, Σ) by central finite differences of the relaxed model (one
forward pass per ±h_k step, relative step ``relative_step`` of each parameter's value; the relaxed model is
smooth, and tests/test_fisher.py checks these derivatives against autograd).  Readouts are matched across the
evaluations by their key (event, plane, ix, iy, slot); a slot reported in one evaluation and not another (its
weight crossed ``FrontEnd.min_weight``, 1e-9) has weight 0 where absent and contributes no value term.

σ per parameter: marginal sqrt((F⁻¹)_ii) (the others fitted too) and conditional 1/sqrt(F_ii) (the others known).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .losses.likelihood import COUNT_FLOOR, MAX_CORRELATION, TIME_VARIANCE_FLOOR, readout_covariance

#: per-readout quantities the Fisher information needs, in the order of :func:`readout_table`'s columns
COLUMNS = ("weight", "adc", "t", "adc_variance", "t_variance", "adc_t_covariance")


def readout_table(hits) -> tuple:
    """(keys [N, 5] int64: event, plane, ix, iy, slot; values [N, 6] float: ``COLUMNS``) of relaxed-mode hits."""
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
    mean_term: np.ndarray
    covariance_term: np.ndarray
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


def _evaluate(segments, detector, params, front_end, memory_budget):
    import sparsetpc as st
    with torch.no_grad():
        hits = st.simulate(segments, detector, params, mode="relaxed", front_end=front_end,
                           memory_budget=memory_budget)
    return readout_table(hits)


def _likelihood_covariance(values: torch.Tensor, time_variance_floor: float, max_correlation: float) -> torch.Tensor:
    """[N, 2, 2] covariance of (ADC, t) as the likelihood uses it (:func:`readout_covariance`)."""
    var_a, var_t, cov = readout_covariance(values[:, 3], values[:, 4], values[:, 5], time_variance_floor,
                                           max_correlation)
    return torch.stack([torch.stack([var_a, cov], dim=1), torch.stack([cov, var_t], dim=1)], dim=1)


@dataclass
class ReadoutDerivatives:
    """The relaxed model's readouts at the parameters and their central-difference derivatives.

    ``keys`` [U, 5] (event, plane, ix, iy, slot): the union over the 1 + 2P evaluations; ``values`` [U, 6]
    (``COLUMNS``) at the parameters (weight 0 where not reported); ``derivative`` [P, U, 6] per unit of each
    parameter; ``shifted`` [2P, U, 6] the ± evaluations (for derivatives of functions of the values);
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
                        relative_step: float = 1e-4, memory_budget="1GB") -> ReadoutDerivatives:
    """Evaluate the relaxed model at ``params`` and at ±h_k of each parameter of ``names`` (h_k =
    ``relative_step`` × |value|) and match the readouts by key.  See :class:`ReadoutDerivatives`."""
    import sparsetpc as st
    from sparsetpc.electronics import FrontEnd
    detector = detector or st.Detector.default()
    front_end = front_end or FrontEnd(tick=detector.tick)
    names = list(names)
    base = params.replace(**{n: getattr(params, n).detach().clone() for n in params.names()})
    dtype, device = base.dtype, base.device
    if dtype != torch.float64:
        raise ValueError("the Fisher information is taken by finite differences: use float64 parameters")
    tables = [_evaluate(segments, detector, base, front_end, memory_budget)]
    steps = {}
    for name in names:
        value = float(getattr(base, name))
        step = relative_step * abs(value) if value != 0 else relative_step
        steps[name] = step
        for sign in (+1.0, -1.0):
            shifted = base.replace(**{name: value + sign * step})
            tables.append(_evaluate(segments, detector, shifted, front_end, memory_budget))
    # the union of keys over all evaluations; values [E, U, 6] (weight 0 and present False where absent)
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
                    n_slots: Optional[int] = None) -> FisherInformation:
    """Expected Fisher information of the readout likelihood of ``segments`` (st.Segments, z = drift) at
    ``params`` (st.Params, float64; its device is used) for the parameters ``names``.  See the module docstring.

    ``relative_step``: the central-difference step of each parameter, relative to its value.
    ``front_end``: the relaxed front end (``FrontEnd(clock_phases=K)``), default ``FrontEnd()`` at the
    detector's tick.  ``n_slots``: readouts per pixel (default ``front_end.max_readouts``)."""
    from sparsetpc.electronics import FrontEnd
    import sparsetpc as st
    detector = detector or st.Detector.default()
    front_end = front_end or FrontEnd(tick=detector.tick)
    n_slots = int(front_end.max_readouts if n_slots is None else n_slots)
    names = list(names)
    d = readout_derivatives(segments, params, names, detector=detector, front_end=front_end,
                            relative_step=relative_step, memory_budget=memory_budget)
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

    # value terms over readouts reported in every evaluation, weighted by their existence probability w_s
    use = everywhere & (center[:, 0] > 0)
    weight = center[use, 0]
    sigma = _likelihood_covariance(center[use], time_variance_floor, max_correlation)      # [N, 2, 2]
    precision = torch.linalg.inv(sigma)
    jac_mean = derivative[:, use][:, :, 1:3]                                               # [P, N, 2]
    mean = torch.einsum("n,ina,nab,jnb->ij", weight, jac_mean, precision, jac_mean)
    # ∂Σ through the likelihood's own construction (floor constant, correlation cap) by the same differences
    dsigma = torch.zeros((n_params,) + sigma.shape, dtype=dtype, device=device)
    for k, name in enumerate(names):
        plus = _likelihood_covariance(stacked[1 + 2 * k][use], time_variance_floor, max_correlation)
        minus = _likelihood_covariance(stacked[2 + 2 * k][use], time_variance_floor, max_correlation)
        dsigma[k] = (plus - minus) / (2.0 * steps[name])
    product = torch.einsum("nab,inbc->inac", precision, dsigma)           # Σ⁻¹ ∂_iΣ  [P, N, 2, 2]
    covariance = 0.5 * torch.einsum("n,inab,jnba->ij", weight, product, product)
    to_numpy = lambda x: x.detach().cpu().double().numpy()
    count_np, mean_np, covariance_np = to_numpy(count), to_numpy(mean), to_numpy(covariance)
    matrix = count_np + mean_np + covariance_np
    matrix = 0.5 * (matrix + matrix.T)
    return FisherInformation(names=names, values={n: float(getattr(params, n).detach()) for n in names},
                             matrix=matrix, count_term=count_np, mean_term=mean_np, covariance_term=covariance_np,
                             n_readouts=int(d.present.sum()), expected_readouts=float(center[:, 0].sum()),
                             n_pixels=int(n_pixels), steps=steps)


def hits_pixel_keys(hits) -> torch.Tensor:
    """[N, 4] (event, plane, ix, iy) of each readout, as the likelihood keys pixels."""
    return torch.stack([hits.event.reshape(-1).long(), hits.plane.reshape(-1).long(), hits.ix.reshape(-1).long(),
                        hits.iy.reshape(-1).long()], dim=1)


def sample_model_readouts(keys: torch.Tensor, values: torch.Tensor, generator: torch.Generator, *,
                          time_variance_floor: float = TIME_VARIANCE_FLOOR, max_correlation: float = MAX_CORRELATION):
    """One draw of target readouts from the likelihood's core model: per pixel a count N with P(N = n) =
    w_{n−1} − w_n, then slots 0..N−1 with (ADC, t) ~ N₂(μ_s, Σ_s) (Σ as the likelihood builds it).  ``keys``
    [U, 5], ``values`` [U, 6] as :func:`readout_table`.  Returns (pixel keys [M, 4], slot [M], adc [M], t [M]).
    (For checks of the Fisher information: the score's covariance under these draws is F.)"""
    dtype, device = values.dtype, values.device
    pixel_keys, pixel_row = torch.unique(keys[:, :4], dim=0, return_inverse=True)
    # one uniform per pixel: slot s is read iff u < w_s (nested weights: the count follows P(N = n))
    uniform = torch.rand(pixel_keys.shape[0], generator=generator, dtype=dtype, device=device)
    read = uniform[pixel_row] < values[:, 0]
    sigma = _likelihood_covariance(values, time_variance_floor, max_correlation)
    chol = torch.linalg.cholesky(sigma)
    normal = torch.randn(values.shape[0], 2, 1, generator=generator, dtype=dtype, device=device)
    draw = values[:, 1:3] + (chol @ normal)[:, :, 0]
    return keys[read, :4], keys[read, 4], draw[read, 0], draw[read, 1]
