"""The expected Fisher information of the readout likelihood (calibration/fisher.py).

Checked against independent computations on a short track (3 cm, cot θ = 1, one clock phase so that the hard
front end, which runs at phase 0, is the model's own phase):
* the finite-difference derivatives of every readout's (w, ADC, t, variances, covariance) against autograd;
* F against the covariance of the score ∂(−log L)/∂θ — computed by autograd through the simulator — over draws
  of targets from the likelihood's own model (must agree to the Monte-Carlo precision) and over hard-mode noise
  seeds (agree as far as the model describes the hard front end);
* additivity: n identical independent tracks give n·F, σ/√n."""
import numpy as np
import pytest
import torch

import sparsetpc as st
from calibration.fisher import (COLUMNS, expected_fisher, hits_pixel_keys, marginal_sigma, readout_derivatives,
                                readout_table, sample_model_readouts)
from calibration.losses import readout_nll
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


def _scores(setup, targets, **likelihood_options):
    """Score ∂(−log L)/∂θ [S, P] for each target (pixel keys, slot, adc, t): the likelihood's gradient with respect
    to the model's readouts (autograd of readout_nll) times the autograd Jacobian of the simulator."""
    keys, values, jacobian = setup["keys"], setup["values"], setup["jacobian"]
    scores = []
    for pixel_target, slot_target, adc_target, time_target in targets:
        quantities = [values[:, k].clone().requires_grad_(True) for k in range(len(COLUMNS))]
        weight, adc, time, adc_variance, time_variance, covariance = quantities
        nll, _ = readout_nll(keys[:, :4], keys[:, 4], weight, adc, time, adc_variance, time_variance, pixel_target,
                             slot_target, adc_target, time_target, covariance, **likelihood_options)
        grads = torch.autograd.grad(nll, quantities)
        gradient = torch.stack(grads, dim=1)                                              # [N, 6]
        scores.append(torch.einsum("nc,ncp->p", gradient, jacobian))
    return torch.stack(scores).numpy()


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
    """Draws from the likelihood's core model (count from the nested weights, Gaussian values), scored with the
    core likelihood (no broad or outlier component): Var(score) = F to the Monte-Carlo precision (2000 draws:
    eigenvalues of F^{-1/2} V F^{-1/2} within ±15 %), and the mean score is 0."""
    generator = torch.Generator().manual_seed(11)
    draws = [sample_model_readouts(setup["keys"], setup["values"], generator) for _ in range(2000)]
    scores = _scores(setup, draws, broad_weight=0.0, outlier_weight=1e-30)
    fisher = setup["fisher"].matrix
    covariance = np.cov(scores, rowvar=False)
    eig = _whitened_eigenvalues(fisher, covariance)
    assert eig.min() > 0.85 and eig.max() < 1.15, eig
    ratio = np.diag(covariance) / np.diag(fisher)
    assert np.all(np.abs(ratio - 1) < 0.12), ratio
    # mean score within 4 standard errors of 0
    standard_error = np.sqrt(np.diag(covariance) / len(scores))
    assert np.all(np.abs(scores.mean(axis=0)) < 4 * standard_error), scores.mean(axis=0) / standard_error


def test_fisher_against_hard_mode_noise_seeds(setup):
    """The score's covariance V over hard-mode targets (the same track in 400 events, one noise draw each: the hard
    front end at phase 0, as the one-phase model) against F.  They agree only as far as the likelihood describes
    the hard front end: measured with 1000 seeds, diag(V)/diag(F) = 1.14, 1.28, 1.49, 1.14 (lifetime, long_diff,
    tran_diff, Ab) and the eigenvalues of F^{-1/2} V F^{-1/2} 1.0–2.2 (docs/calibration.md, "Which tracks
    constrain what").  Bounds that a wrong F (a missing term, a factor 2) fails: diagonal in (0.8, 1.7),
    eigenvalues in (0.5, 3)."""
    n_copies = 400
    segments = st.Segments.from_numpy(_rows(n_copies))
    target = st.simulate(segments, st.Detector.default(), setup["params"], mode="hard", noise=True, seed=5)
    pixels = hits_pixel_keys(target)
    draws = []
    for event in range(n_copies):
        mask = pixels[:, 0] == event
        pixel = pixels[mask].clone()
        pixel[:, 0] = 0
        draws.append((pixel, target.readout[mask].long(), target.adc[mask], target.t[mask]))
    scores = _scores(setup, draws)
    fisher = setup["fisher"].matrix
    covariance = np.cov(scores, rowvar=False)
    ratio = np.diag(covariance) / np.diag(fisher)
    eig = _whitened_eigenvalues(fisher, covariance)
    assert np.all((ratio > 0.8) & (ratio < 1.7)), ratio
    assert eig.min() > 0.5 and eig.max() < 3.0, eig


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
