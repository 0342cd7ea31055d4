"""The expected Fisher information of the readout likelihood (calibration/fisher.py).

Checked against independent computations on a short track (3 cm, cot θ = 1, one clock phase so that the hard
front end, which runs at phase 0, is the model's own phase):
* the finite-difference derivatives of every readout's (w, ADC, t, variances, covariances, covariances with the
  previous readout's time) against autograd;
* F against the covariance of the score ∂(−log L)/∂θ — computed by autograd through the chain likelihood
  (slot s given the target's slot s − 1) times the simulator's Jacobian — over draws of targets from the
  likelihood's own model (must agree to the Monte-Carlo precision) and over hard-mode noise seeds (agree as far
  as the model describes the hard front end);
* on a steep track whose pixel fires 8 readouts: the chain F differs from the independent one and is the score's
  covariance under draws along the chain;
* additivity: n identical independent tracks give n·F, σ/√n."""
import numpy as np
import pytest
import torch

import sparsetpc as st
from calibration.fisher import (COLUMNS, expected_fisher, fisher_from_derivatives, hits_pixel_keys, marginal_sigma,
                                readout_derivatives, readout_table, sample_model_readouts)
from calibration.losses import readout_nll
from calibration.losses.likelihood import TIME_VARIANCE_FLOOR
from sparsetpc.electronics import FrontEnd
from sparsetpc.example import generate

NAMES = ["lifetime", "long_diff", "tran_diff", "Ab"]
D = torch.float64


def _rows(n_copies=1, seed=3, cot=1.0, drift_extent=2.1):
    """A ~3 cm straight muon (edep-sim frame), repeated in events 0..n_copies−1."""
    one = generate(1, 1, seed=seed, kind="steep", cot_theta=(cot, cot), drift_extent=(drift_extent, drift_extent))
    copies = []
    for event in range(n_copies):
        block = one.copy()
        block["eventID"] = event
        copies.append(block)
    return np.concatenate(copies)


@pytest.fixture(scope="module")
def setup():
    front_end = FrontEnd(clock_phases=1)
    segments = st.Segments.from_numpy(_rows())
    params = st.Params.nominal(dtype=D)
    fisher = expected_fisher(segments, params, NAMES, front_end=front_end)
    # autograd Jacobian of every reported readout's six quantities
    leaf = st.Params.nominal(dtype=D).requires_grad_(NAMES)
    hits = st.simulate(segments, st.Detector.default(), leaf, mode="relaxed", front_end=front_end)
    outputs = torch.stack([getattr(hits, name) for name in COLUMNS], dim=1)          # [N, 6]
    leaves = [getattr(leaf, n) for n in NAMES]
    jacobian = torch.zeros(outputs.shape + (len(NAMES),), dtype=D)
    for i in range(outputs.shape[0]):
        for j in range(outputs.shape[1]):
            grads = torch.autograd.grad(outputs[i, j], leaves, retain_graph=True, allow_unused=True)
            jacobian[i, j] = torch.stack([g if g is not None else torch.zeros((), dtype=D) for g in grads])
    keys, values = readout_table(hits)
    return dict(front_end=front_end, segments=segments, params=params, fisher=fisher, keys=keys,
                values=values.detach(), jacobian=jacobian, hits=hits)


def _replicate(keys, values, n_copies):
    """The model's readouts (keys [U, 5], values [U, 8]) repeated in ``n_copies`` blocks of events: copy k's event e
    becomes k·E + e (E events per copy), so that pixels of different copies are different pixels of one table."""
    n_events = int(keys[:, 0].max()) + 1
    copy = torch.arange(n_copies).repeat_interleave(keys.shape[0])
    repeated = keys.repeat(n_copies, 1)
    repeated[:, 0] += copy * n_events
    return repeated, values.repeat(n_copies, 1)


def _scores(keys, values, jacobian, target, n_copies, chain=True, **likelihood_options):
    """Score ∂(−log L)/∂θ [n_copies, P] of each copy's target: the likelihood's gradient with respect to the model's
    readouts (autograd of readout_nll, with the previous-readout covariances as HitsLoss passes them; ``chain=False``:
    without) times the Jacobian [U, 8, P] of the model's readouts.  ``target`` (pixel keys [M, 4], slot, adc, t):
    one table for all copies, copy k in events k·E..k·E + E − 1 (:func:`_replicate`).  The likelihood is a sum over
    pixels, so one call gives every copy's gradient."""
    repeated_keys, repeated_values = _replicate(keys, values, n_copies)
    quantities = [repeated_values[:, k].clone().requires_grad_(True) for k in range(len(COLUMNS))]
    (weight, adc, time, adc_variance, time_variance, covariance, adc_previous_covariance,
     time_previous_covariance) = quantities
    if not chain:
        adc_previous_covariance = time_previous_covariance = None
    pixel_target, slot_target, adc_target, time_target = target
    nll, _ = readout_nll(repeated_keys[:, :4], repeated_keys[:, 4], weight, adc, time, adc_variance, time_variance,
                         pixel_target, slot_target, adc_target, time_target, covariance, adc_previous_covariance,
                         time_previous_covariance, **likelihood_options)
    grads = torch.autograd.grad(nll, quantities, allow_unused=True)
    gradient = torch.stack([torch.zeros_like(q) if g is None else g for q, g in zip(quantities, grads)], dim=1)
    gradient = gradient.reshape(n_copies, keys.shape[0], len(COLUMNS))
    return torch.einsum("knc,ncp->kp", gradient, jacobian).numpy()


def _model_scores(keys, values, jacobian, n_draws, seed, chain=True):
    """(scores [n_draws, P], the draws) of ``n_draws`` targets drawn from the likelihood's core model (chain or
    independent) with the core likelihood (no broad or outlier component); draw k in events k·E..
    (:func:`_replicate`)."""
    generator = torch.Generator().manual_seed(seed)
    repeated_keys, repeated_values = _replicate(keys, values, n_draws)
    target = sample_model_readouts(repeated_keys, repeated_values, generator, chain=chain)
    scores = _scores(keys, values, jacobian, target, n_draws, chain=chain, broad_weight=0.0, outlier_weight=1e-30)
    return scores, target


def _whitened_eigenvalues(fisher_matrix, covariance):
    """Eigenvalues of F^{-1/2} V F^{-1/2} (all 1 when V = F), in the correlation scaling of F."""
    scale = 1.0 / np.sqrt(np.diag(fisher_matrix))
    f = fisher_matrix * np.outer(scale, scale)
    v = covariance * np.outer(scale, scale)
    root = np.linalg.cholesky(f)
    inverse_root = np.linalg.inv(root)
    return np.linalg.eigvalsh(inverse_root @ v @ inverse_root.T)


def test_finite_differences_match_autograd(setup):
    derivs = readout_derivatives(setup["segments"], setup["params"], NAMES, front_end=setup["front_end"])
    rows = torch.stack([torch.nonzero((derivs.keys == key).all(dim=1))[0, 0] for key in setup["keys"]])
    assert bool(derivs.everywhere[rows].all())
    finite = derivs.derivative[:, rows].permute(1, 2, 0)                                 # [N, 6, P]
    auto = setup["jacobian"]
    for k, name in enumerate(NAMES):
        scale = auto[:, :, k].abs().amax(dim=0) + 1e-300                                  # per quantity
        error = ((finite[:, :, k] - auto[:, :, k]).abs().amax(dim=0) / scale).max()
        assert float(error) < 1e-3, (name, float(error))
    # the derivatives are not trivially zero: lifetime moves the ADC, tran_diff the weights
    assert float(auto[:, 1, 0].abs().max()) > 0 and float(auto[:, 0, 2].abs().max()) > 0


def test_fisher_is_the_score_covariance_under_the_model(setup):
    """Draws from the likelihood's core model (count from the nested weights, Gaussian values along each pixel's
    chain), scored with the core likelihood (no broad or outlier component): Var(score) = F to the Monte-Carlo
    precision (10000 draws: eigenvalues of F^{-1/2} V F^{-1/2} within ±10 %), and the mean score is 0."""
    scores, _ = _model_scores(setup["keys"], setup["values"], setup["jacobian"], 10000, seed=11)
    fisher = setup["fisher"].matrix
    covariance = np.cov(scores, rowvar=False)
    eig = _whitened_eigenvalues(fisher, covariance)
    assert eig.min() > 0.9 and eig.max() < 1.1, eig
    ratio = np.diag(covariance) / np.diag(fisher)
    assert np.all(np.abs(ratio - 1) < 0.08), ratio
    # mean score within 4 standard errors of 0
    standard_error = np.sqrt(np.diag(covariance) / len(scores))
    assert np.all(np.abs(scores.mean(axis=0)) < 4 * standard_error), scores.mean(axis=0) / standard_error


def test_fisher_against_hard_mode_noise_seeds(setup):
    """The score's covariance V over hard-mode targets (the same track in 400 events, one noise draw each: the hard
    front end at phase 0, as the one-phase model) against F.  They agree only as far as the likelihood describes
    the hard front end: measured with 1000 events (chain likelihood), diag(V)/diag(F) = 1.04, 1.15, 1.29, 1.04
    (lifetime, long_diff, tran_diff, Ab) and the eigenvalues of F^{-1/2} V F^{-1/2} 0.97–1.56 (with the likelihood
    that took a pixel's readouts as independent: 1.14, 1.28, 1.49, 1.14 and 1.0–2.2, docs/calibration.md, "Which
    tracks constrain what").  Bounds that a wrong F (a missing term, a factor 2) fails: diagonal in (0.8, 1.7),
    eigenvalues in (0.5, 3)."""
    n_copies = 400
    segments = st.Segments.from_numpy(_rows(n_copies))
    target = st.simulate(segments, st.Detector.default(), setup["params"], mode="hard", noise=True, seed=5)
    # the track is event 0 of the model's table: copy k of it is event k of the target
    assert int(setup["keys"][:, 0].max()) == 0
    draws = (hits_pixel_keys(target), target.readout.long(), target.adc, target.t)
    scores = _scores(setup["keys"], setup["values"], setup["jacobian"], draws, n_copies)
    fisher = setup["fisher"].matrix
    covariance = np.cov(scores, rowvar=False)
    ratio = np.diag(covariance) / np.diag(fisher)
    eig = _whitened_eigenvalues(fisher, covariance)
    assert np.all((ratio > 0.8) & (ratio < 1.7)), ratio
    assert eig.min() > 0.5 and eig.max() < 3.0, eig


def test_chain_fisher_on_a_pixel_with_many_readouts():
    """A steep track (cot θ = 30, 4 cm of drift, 11 segments): one pixel fires 8 readouts, each window starting where
    the previous one ended, their crossing times correlated 0.7–0.9 with the previous readout's.  The chain Fisher
    (slot s scored given the observed t_{s−1}) differs from the independent one (every slot by its marginal, the
    likelihood without the previous-readout covariances) by tens of %, and it is the covariance of the chain
    likelihood's score under draws along the chain (20000 draws: eigenvalues within ±8 %, diagonal ±6 %), where the
    independent one is not.  The draws have the model's covariances of each readout's (ADC, t) with the previous
    readout's time.  The Jacobian of the readouts is the finite differences' (checked against autograd above)."""
    front_end = FrontEnd(clock_phases=1)
    rows = generate(1, 1, seed=3, kind="steep", cot_theta=(30.0, 30.0), drift_extent=(4.0, 4.0))
    derivatives = readout_derivatives(st.Segments.from_numpy(rows), st.Params.nominal(dtype=D), NAMES,
                                      front_end=front_end)
    assert bool(derivatives.everywhere.all())
    keys, values = derivatives.keys, derivatives.values
    assert int(keys[:, 4].max()) >= 5, keys                                      # ≥ 6 readouts on one pixel
    jacobian = derivatives.derivative.permute(1, 2, 0)                           # [U, 8, P]
    chain = fisher_from_derivatives(derivatives, front_end.max_readouts)
    independent = fisher_from_derivatives(derivatives, front_end.max_readouts, chain=False)
    # measured: eigenvalues of the independent F in the chain F's metric 0.71–1.62
    difference = _whitened_eigenvalues(chain.matrix, independent.matrix)
    assert difference.min() < 0.8 and difference.max() > 1.4, difference

    scores, target = _model_scores(keys, values, jacobian, 20000, seed=5)
    covariance = np.cov(scores, rowvar=False)
    eig = _whitened_eigenvalues(chain.matrix, covariance)
    assert eig.min() > 0.92 and eig.max() < 1.08, eig                           # measured 0.97–1.03
    ratio = np.diag(covariance) / np.diag(chain.matrix)
    assert np.all(np.abs(ratio - 1) < 0.06), ratio
    standard_error = np.sqrt(np.diag(covariance) / len(scores))
    assert np.all(np.abs(scores.mean(axis=0)) < 4 * standard_error), scores.mean(axis=0) / standard_error
    wrong = _whitened_eigenvalues(independent.matrix, covariance)                # measured 0.61–1.40
    assert wrong.min() < 0.85 and wrong.max() > 1.15, wrong

    # the draws along the chain: Cov(ADC_s, t_{s−1}) and Cov(t_s, t_{s−1}) of the long pixel as the model's
    pixel_target, slot_target, adc_target, time_target = target
    long_pixel = keys[keys[:, 4] == int(keys[:, 4].max()), 1:4][0]
    on_pixel = (pixel_target[:, 1:4] == long_pixel).all(dim=1)
    n_slots = int(keys[:, 4].max()) + 1
    adc_table = torch.full((20000, n_slots), float("nan"), dtype=D)
    time_table = torch.full((20000, n_slots), float("nan"), dtype=D)
    adc_table[pixel_target[on_pixel, 0], slot_target[on_pixel]] = adc_target[on_pixel]
    time_table[pixel_target[on_pixel, 0], slot_target[on_pixel]] = time_target[on_pixel]
    model = values[(keys[:, 1:4] == long_pixel).all(dim=1)]
    model = model[torch.argsort(keys[(keys[:, 1:4] == long_pixel).all(dim=1), 4])]
    checked = 0
    for slot in range(1, n_slots):
        both = torch.isfinite(time_table[:, slot]) & torch.isfinite(time_table[:, slot - 1])
        if int(both.sum()) < 5000:
            continue
        previous = time_table[both, slot - 1]
        for column, table in ((6, adc_table), (7, time_table)):
            sample = np.cov(table[both, slot].numpy(), previous.numpy())[0, 1]
            scale = np.sqrt(float(table[both, slot].var()) * float(previous.var()))
            # the sample covariance's standard error is ≤ scale/√n ≈ 0.01·scale: a 5 % band
            assert abs(sample - float(model[slot, column])) < 0.05 * scale, (slot, column, sample, model[slot])
        checked += 1
    assert checked >= 5
    # the times really are chained (the check above would pass trivially for covariances of 0)
    variance = model[:, 4] + TIME_VARIANCE_FLOOR                                 # [µs²]
    correlation = model[1:, 7] / torch.sqrt(variance[1:] * variance[:-1])
    assert float(correlation.max()) > 0.7, correlation


def test_identical_independent_tracks_add(setup):
    """n copies of the track in n events: F is n times one track's, σ falls as 1/√n; two different tracks in two
    events: F is the sum of the two."""
    one = setup["fisher"]
    three = expected_fisher(st.Segments.from_numpy(_rows(3)), setup["params"], NAMES, front_end=setup["front_end"])
    np.testing.assert_allclose(three.matrix, 3 * one.matrix, rtol=1e-6, atol=0)
    np.testing.assert_allclose(marginal_sigma(three.matrix), marginal_sigma(one.matrix) / np.sqrt(3), rtol=1e-6)
    other_rows = _rows(seed=8, cot=3.0, drift_extent=2.5)
    other = expected_fisher(st.Segments.from_numpy(other_rows), setup["params"], NAMES, front_end=setup["front_end"])
    other_rows["eventID"] = 1
    both_rows = np.concatenate([_rows(), other_rows])
    both = expected_fisher(st.Segments.from_numpy(both_rows), setup["params"], NAMES, front_end=setup["front_end"])
    np.testing.assert_allclose(both.matrix, (one + other).matrix, rtol=1e-6, atol=0)


def test_step_size_does_not_matter(setup):
    coarse = expected_fisher(setup["segments"], setup["params"], NAMES, front_end=setup["front_end"],
                             relative_step=1e-3)
    np.testing.assert_allclose(marginal_sigma(coarse.matrix), marginal_sigma(setup["fisher"].matrix), rtol=0.02)


def test_marginal_sigma_of_a_known_matrix():
    covariance = np.array([[4.0, 1.2], [1.2, 1.0]])          # σ = 2, 1; ρ = 0.6
    np.testing.assert_allclose(marginal_sigma(np.linalg.inv(covariance)), [2.0, 1.0], rtol=1e-12)
    assert np.all(np.isnan(marginal_sigma(np.array([[1.0, 1.0], [1.0, 1.0]]))))
