"""Readout χ² loss, the inverse normalisation, the L-BFGS polish, χ² (sum) mode and degeneracy warnings."""
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from calibration.batching import row_batches
from calibration.fitter import FitConfig, Fitter
from calibration.losses import HitsLoss, noise_sigma_adc, readout_chi2
from calibration.losses.chi2 import threshold_adc
from calibration.paramsets import ParamSet, ParamSpec
from calibration.toy import ToyForward, ToyHits, make_toy_tracks
from calibration.uncertainty import covariance_from_hessian, degeneracy_warnings

K = lambda rows: torch.tensor(rows, dtype=torch.int64)


def test_noise_sigma_from_the_front_end_model():
    # sqrt(900^2 + 500^2) e- times the digitize slope 4e-3 mV/e- * 256 / (1300 - 288) mV
    assert noise_sigma_adc() == pytest.approx(math.hypot(900, 500) * 4e-3 * 256 / 1012, rel=1e-12)
    assert 1.03 < noise_sigma_adc() < 1.05
    from sparsetpc.electronics import FrontEnd
    assert noise_sigma_adc(FrontEnd(reset_noise=0.0, uncorrelated_noise=988.28125)) == pytest.approx(1.0, rel=1e-6)


def test_chi2_hand_computed_matching_and_unmatched():
    ko = K([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 2, 5, 0]])
    kt = K([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [1, 0, 2, 5, 0]])     # same first two keys, other order; third differs
    ao = torch.tensor([100.0, 90.0, 120.0], dtype=torch.float64)
    at = torch.tensor([93.0, 98.0, 85.0], dtype=torch.float64)
    chi2, counts = readout_chi2(ko, ao, kt, at, sigma=2.0)
    assert float(chi2) == pytest.approx(((100 - 98) / 2) ** 2 + ((90 - 93) / 2) ** 2)
    assert counts == {"matched": 2, "unmatched_guess": 1, "unmatched_target": 1}
    thr = threshold_adc()
    chi2_t, _ = readout_chi2(ko, ao, kt, at, sigma=2.0, unmatched="threshold")
    extra = (max(0.0, 120 - thr) / 2) ** 2 + (max(0.0, 85 - thr) / 2) ** 2
    assert float(chi2_t) == pytest.approx(float(chi2) + extra) and extra > 0
    # a slot shift (crossing times 3 us apart) is not a match
    to = torch.tensor([1.0, 5.0, 9.0], dtype=torch.float64)
    tt = torch.tensor([5.2, 4.0, 9.0], dtype=torch.float64)
    chi2_dt, counts_dt = readout_chi2(ko, ao, kt, at, sigma=2.0, t_out=to, t_target=tt, max_dt=1.0)
    assert float(chi2_dt) == pytest.approx(((90 - 93) / 2) ** 2) and counts_dt["matched"] == 1
    with pytest.raises(ValueError):
        readout_chi2(K([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0]]), ao[:2], kt, at, sigma=1.0)
    with pytest.raises(ValueError):
        readout_chi2(ko, ao, kt, at, sigma=1.0, unmatched="zero")


@pytest.mark.parametrize("unmatched", ["ignore", "threshold"])
def test_gradcheck_chi2(unmatched):
    g = torch.Generator().manual_seed(0)
    ko = K([[0, 0, i % 3, i // 3, 0] for i in range(6)])
    kt = K([[0, 0, i % 3, i // 3, 0] for i in (5, 0, 2, 1, 7, 4)])
    ao = (80 + 20 * torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    at = (80 + 20 * torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    fn = lambda a, b: readout_chi2(ko, a, kt, b, sigma=1.3, unmatched=unmatched)[0]
    assert torch.autograd.gradcheck(fn, (ao, at), eps=1e-6, atol=1e-6)


def _hits(adc, readout=None):
    n = adc.shape[0]
    z = torch.zeros(n, dtype=torch.int64)
    ix = torch.arange(n)
    return type("H", (), dict(event=z, plane=z, ix=ix, iy=z, readout=z if readout is None else readout,
                              t=torch.arange(n, dtype=adc.dtype), adc=adc))()


def test_hitsloss_chi2_is_per_unit_and_flagged():
    loss = HitsLoss("chi2", sigma=2.0)
    a = torch.tensor([90.0, 100.0], dtype=torch.float64)
    b = torch.tensor([92.0, 96.0], dtype=torch.float64)
    assert loss.chi2 and not HitsLoss("mse").chi2
    assert float(loss(_hits(a), _hits(b), n_units=2)) == pytest.approx((1 + 4) / 2)
    assert float(loss(_hits(a), _hits(a))) == 0.0
    assert loss.last_counts["matched"] == 2
    with pytest.raises(ValueError):
        loss(ToyHits(*(torch.zeros(2),) * 5), ToyHits(*(torch.zeros(2),) * 5))


# --------------------------------------------------------------------------- inverse normalisation
def test_inverse_normalisation_round_trip_jacobian_bounds():
    spec = ParamSpec("lifetime", norm="inverse", bounds=(500.0, 5000.0))
    assert spec.to_internal(2200.0) == pytest.approx(1.0)
    assert spec.to_physical(spec.to_internal(3700.0)) == pytest.approx(3700.0)
    lo, hi = spec.internal_bounds()
    assert lo == pytest.approx(2200 / 5000) and hi == pytest.approx(2200 / 500)
    q = torch.tensor(spec.to_internal(4000.0), dtype=torch.float64, requires_grad=True)
    (dp,) = torch.autograd.grad(spec.to_physical(q), q)
    assert spec.jacobian_at(4000.0) == pytest.approx(float(dp)) and float(dp) < 0
    ps = ParamSet([ParamSpec("Ab"), spec])
    assert ps.jacobians({"Ab": 0.8, "lifetime": 4000.0}) == pytest.approx([0.8, -4000.0 ** 2 / 2200])
    with pytest.raises(Exception):
        spec.jacobian                                   # not affine


def _toy_fitter(specs, target, loss="mse", **cfg):
    ps = ParamSet(specs)
    batches = row_batches(make_toy_tracks(4, seed=1), 2)
    defaults = dict(iterations=30, progress=False, plots=False, hessian=True)
    defaults.update(cfg)
    return Fitter(ps, ToyForward(waveforms=loss == "mse"), HitsLoss(loss), batches, FitConfig(**defaults),
                  target_values=target)


def test_inverse_lifetime_fit_and_polish_converge_reports_microseconds():
    specs = [ParamSpec("Ab", lr=0.02), ParamSpec("lifetime", lr=0.02, norm="inverse", bounds=(500.0, 5000.0))]
    target = {"Ab": 0.84, "lifetime": 3500.0}
    result = _toy_fitter(specs, target, iterations=30, polish_lbfgs=5).run()
    assert result["polish"]["steps"] >= 1 and result["polish"]["evaluations"] >= 1
    assert result["polish"]["stopped"] in ("steps done", "converged (decrease over a whole step <= polish_ftol)")
    for name, value in target.items():
        assert abs(result["params"][name]["fitted"] / value - 1) < 1e-4, result["params"][name]
    assert result["final_loss"] < 1e-10
    # the waveform MSE is not a likelihood: no sigma (the Hessian is still computed and reported)
    assert result["params"]["lifetime"]["sigma"] is None and result["params"]["lifetime"]["unit"] == "us"
    assert result["hessian_posdef"]
    no_polish = _toy_fitter(specs, target, iterations=30, hessian=False).run()
    assert no_polish["final_loss"] > 100 * result["final_loss"]     # the polish is what gets there


def test_polish_line_search_outside_bounds_is_clamped():
    # start at a bound, target far away: the line search probes outside [low, high]; nothing may fail
    specs = [ParamSpec("Ab", lr=0.02, bounds=(0.78, 0.88)), ParamSpec("eField", lr=0.02, bounds=(0.45, 0.55))]
    f = _toy_fitter(specs, {"Ab": 0.87, "eField": 0.46}, iterations=0, polish_lbfgs=3, hessian=False)
    f.initial_values = {"Ab": 0.78, "eField": 0.55}
    result = f.run()
    for name, (lo, hi) in (("Ab", (0.78, 0.88)), ("eField", (0.45, 0.55))):
        assert lo <= result["params"][name]["fitted"] <= hi
    assert abs(result["params"]["Ab"]["fitted"] / 0.87 - 1) < 1e-3


def test_polish_holds_a_parameter_at_its_bound_and_fits_the_rest():
    # target Ab outside its bounds: the polish must end with Ab held exactly at the bound and eField at its best
    # value given that Ab (the minimum of the same fit with Ab fixed there), not stall at the first projection
    specs = [ParamSpec("Ab", lr=0.02, bounds=(0.78, 0.85)), ParamSpec("eField", lr=0.02, bounds=(0.40, 0.60))]
    target = {"Ab": 0.87, "eField": 0.46}
    f = _toy_fitter(specs, target, iterations=0, polish_lbfgs=15, hessian=False)
    result = f.run()
    assert result["params"]["Ab"]["fitted"] == pytest.approx(0.85, abs=1e-12)
    assert result["polish"]["lbfgs_starts"] >= 2          # the active set changed once Ab reached its bound
    ps_one = ParamSet([ParamSpec("eField", lr=0.02, bounds=(0.40, 0.60))])
    one = Fitter(ps_one, ToyForward(waveforms=True), HitsLoss("mse"), row_batches(make_toy_tracks(4, seed=1), 2),
                 FitConfig(iterations=0, polish_lbfgs=15, progress=False, plots=False, hessian=False),
                 target_values=target, fixed={"Ab": 0.85}).run()
    assert result["params"]["eField"]["fitted"] == pytest.approx(one["params"]["eField"]["fitted"], rel=1e-6)
    assert result["params"]["eField"]["fitted"] != pytest.approx(0.46, rel=1e-3)   # it compensates Ab


# --------------------------------------------------------------------------- χ² sum mode, degeneracy
class _Chi2Half:
    """χ²-flagged toy loss: Σ ((adc_g − adc_t)/0.5)² per unit (the toy's noise RMS is 0.5 ADC)."""
    chi2 = True

    def __call__(self, guess, target, n_units=None):
        return ((guess.adc - target.adc) / 0.5).pow(2).sum() / n_units


def test_chi2_mode_sums_over_units_for_the_hessian():
    ps = ParamSet.from_names(["Ab"], lr=0.02)
    batches = row_batches(make_toy_tracks(5, seed=1), 2)             # units 2, 2, 1
    f = Fitter(ps, ToyForward(), _Chi2Half(), batches, FitConfig(iterations=1, progress=False, plots=False,
                                                                 hessian=False), target_values={"Ab": 0.84})
    theta = torch.tensor([1.0], dtype=torch.float64)
    total, _ = f.evaluate(theta, need_grad=False)
    mean, _ = f.evaluate(theta, need_grad=False, total=False)
    assert float(total) == pytest.approx(5 * float(mean))
    full = ToyForward()(ps.build_params([theta[0]], f.base), make_toy_tracks(5, seed=1))
    target = ToyForward()(f.base.replace(Ab=0.84), make_toy_tracks(5, seed=1))
    assert float(total) == pytest.approx(float(((full.adc - target.adc) / 0.5).pow(2).sum()))


def test_chi2_sigma_matches_noise_spread_on_toy():
    # the toy adds N(0, 0.5²) to every ADC: with the χ² above and cov = 2H⁻¹ the reported sigma must match the
    # spread of the fitted values over noise seeds (this test fails if the fitter averaged over units)
    ps = ParamSet.from_names(["Ab"], lr=0.02)
    fits, sigmas = [], []
    for seed in range(8):
        f = Fitter(ps, ToyForward(), _Chi2Half(), row_batches(make_toy_tracks(4, seed=1), 2),
                   FitConfig(iterations=0, polish_lbfgs=3, progress=False, plots=False, seed=seed),
                   target_values={"Ab": 0.84}, target_noise=True)
        r = f.run()
        fits.append(r["params"]["Ab"]["fitted"])
        sigmas.append(r["params"]["Ab"]["sigma"])
        assert r["loss_is_chi2"]
    spread = np.std(fits, ddof=1)
    assert 0.5 < np.mean(sigmas) / spread < 2.0, (np.mean(sigmas), spread)


def _degenerate_forward(params, tracks, noise=False, seed=None):
    # adc depends on Ab and MeVToElectrons only through their product (as Birks' law does)
    k = tracks.shape[0]
    adc = (params.Ab * params.MeVToElectrons / 4e4) * tracks[:, 6] * (1 + 0.1 * torch.arange(k, dtype=tracks.dtype))
    z = torch.arange(k)
    return ToyHits(z, tracks[:, 0] * 0, tracks[:, 1] * 0, tracks[:, 2] * 0, adc)


def test_degenerate_pair_is_reported():
    ps = ParamSet.from_names(["Ab", "MeVToElectrons"], lr=0.01)
    f = Fitter(ps, _degenerate_forward, _Chi2Half(), row_batches(make_toy_tracks(4, seed=1)),
               FitConfig(iterations=60, polish_lbfgs=3, progress=False, plots=False),
               target_values={"Ab": 0.84, "MeVToElectrons": 4.6e4})
    r = f.run()
    product = r["params"]["Ab"]["fitted"] * r["params"]["MeVToElectrons"]["fitted"]
    assert product == pytest.approx(0.84 * 4.6e4, rel=1e-6)
    assert abs(r["params"]["Ab"]["fitted"] / 0.84 - 1) > 1e-3        # the individual values are not recovered
    assert any("degenerate" in w or "ill-conditioned" in w or "not positive definite" in w
               for w in r["warnings"]), r["warnings"]
    assert r["hessian_condition"] is None or r["hessian_condition"] > 1e6
    direction = np.array(r["hessian_flattest_direction"])
    assert abs(abs(direction[0]) - abs(direction[1])) < 0.2 and direction[0] * direction[1] < 0   # along Ab·M = const


def test_degeneracy_warnings_thresholds():
    unc = covariance_from_hessian(np.array([[1.0, 0.995], [0.995, 1.0]]))
    assert unc["correlation"][0, 1] < -0.99
    w = degeneracy_warnings(["a", "b"], unc)
    assert any("degenerate" in x for x in w)
    assert degeneracy_warnings(["a", "b"], covariance_from_hessian(np.array([[1.0, 0.5], [0.5, 1.0]]))) == []


# ---------------------------------------------------------------- per-readout sigma from noisy replicas
@dataclass
class _ReadoutHits:
    event: torch.Tensor
    plane: torch.Tensor
    ix: torch.Tensor
    iy: torch.Tensor
    readout: torch.Tensor
    t: torch.Tensor
    adc: torch.Tensor

    def __len__(self):
        return int(self.adc.shape[0])


_NOISE_SCALE = torch.tensor([0.8, 6.0] * 6, dtype=torch.float64)     # per readout: quiet and jittery ones


def _hetero_forward(params, tracks, noise=False, seed=None):
    """12 readouts on one pixel row; ADC ∝ Ab with readout-dependent noise (what the noise model cannot see)."""
    n = _NOISE_SCALE.shape[0]
    coeff = 40.0 + 5.0 * torch.arange(n, dtype=torch.float64)
    adc = params.Ab * coeff * tracks[:, 6].sum() / tracks[:, 6].sum().detach()
    if noise:
        gen = torch.Generator().manual_seed(int(seed or 0))
        adc = adc + torch.randn(n, generator=gen, dtype=torch.float64) * _NOISE_SCALE
    zeros = torch.zeros(n, dtype=torch.int64)
    idx = torch.arange(n)
    return _ReadoutHits(zeros, zeros, idx, zeros, zeros, idx.to(torch.float64), adc)


def test_per_readout_sigma_in_chi2_by_hand_and_gradcheck():
    ko = K([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 2, 5, 0]])
    kt = K([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [1, 0, 2, 5, 0]])
    ao = torch.tensor([100.0, 90.0, 120.0], dtype=torch.float64)
    at = torch.tensor([93.0, 98.0, 85.0], dtype=torch.float64)
    sig = torch.tensor([3.0, 0.5, 7.0], dtype=torch.float64)          # per target readout
    chi2, _ = readout_chi2(ko, ao, kt, at, sigma=sig)
    assert float(chi2) == pytest.approx(((100 - 98) / 0.5) ** 2 + ((90 - 93) / 3.0) ** 2)
    thr = threshold_adc()
    chi2_t, _ = readout_chi2(ko, ao, kt, at, sigma=sig, unmatched="threshold")
    extra = (max(0.0, 120 - thr) / 3.0) ** 2 + (max(0.0, 85 - thr) / 7.0) ** 2     # guess side: median sigma
    assert float(chi2_t) == pytest.approx(float(chi2) + extra)
    with pytest.raises(ValueError, match="per-readout sigma"):
        readout_chi2(ko, ao, kt, at, sigma=sig[:2])
    a = ao.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: readout_chi2(ko, x, kt, at, sigma=sig, unmatched="threshold")[0], (a,))
    # HitsLoss reads the target's adc_sigma when no sigma option is given
    from calibration.readout_sigma import with_readout_sigma
    guess = _hetero_forward(ParamSet.from_names(["Ab"]).base_params(), make_toy_tracks(2))
    target = with_readout_sigma(_hetero_forward(ParamSet.from_names(["Ab"]).base_params().replace(Ab=0.9),
                                                make_toy_tracks(2)), _NOISE_SCALE)
    expected = float(((guess.adc - target.adc) / _NOISE_SCALE).pow(2).sum())
    assert float(HitsLoss("chi2")(guess, target, n_units=1)) == pytest.approx(expected)
    assert float(HitsLoss("chi2", sigma=2.0)(guess, target, n_units=1)) == pytest.approx(
        float(((guess.adc - target.adc) / 2.0).pow(2).sum()))


def test_replica_sigma_recovers_per_readout_noise_floor_and_fallback():
    from calibration.readout_sigma import replica_sigma
    base = ParamSet.from_names(["Ab"]).base_params()
    tracks = make_toy_tracks(2)
    target = _hetero_forward(base, tracks, noise=True, seed=99)
    sigma = replica_sigma(_hetero_forward, base, tracks, target, n_replicas=400, seed=1000, sigma_model=1.0, floor=0.1)
    assert torch.allclose(sigma, _NOISE_SCALE, rtol=0.12)
    # floor: never below floor × model sigma
    sigma_floor = replica_sigma(_hetero_forward, base, tracks, target, n_replicas=50, seed=1000, sigma_model=2.0,
                                floor=0.5)
    assert float(sigma_floor.min()) == pytest.approx(1.0) and float(sigma_floor.max()) > 4.0
    # target readouts the replicas never produce keep the model sigma
    odd = _ReadoutHits(*(getattr(target, f) for f in ("event", "plane")), target.ix + 100,
                       *(getattr(target, f) for f in ("iy", "readout", "t", "adc")))
    assert torch.all(replica_sigma(_hetero_forward, base, tracks, odd, 20, seed=1, sigma_model=1.3) == 1.3)
    with pytest.raises(ValueError):
        replica_sigma(_hetero_forward, base, tracks, target, n_replicas=1, seed=1)


def test_sigma_replicas_make_chi2_uncertainty_match_spread():
    # Readouts with 10x different noise: with the single model sigma (1 ADC) the reported sigma is far below
    # the true spread of the fitted values; with per-readout sigmas from replicas the fit is weighted correctly
    # and the reported sigma matches the spread over noise seeds.
    ps = ParamSet.from_names(["Ab"], lr=0.02)
    ratios = {}
    for replicas in (0, 200):
        fits, sigmas = [], []
        for seed in range(16):
            f = Fitter(ps, _hetero_forward, HitsLoss("chi2", sigma=None) if replicas else HitsLoss("chi2", sigma=1.0),
                       row_batches(make_toy_tracks(2, seed=1)),
                       FitConfig(iterations=0, polish_lbfgs=3, progress=False, plots=False, seed=seed,
                                 sigma_replicas=replicas),
                       target_values={"Ab": 0.84}, target_noise=True)
            r = f.run()
            fits.append(r["params"]["Ab"]["fitted"])
            sigmas.append(r["params"]["Ab"]["sigma"])
            if replicas:
                assert r["readout_sigma"]["readouts"] == 12
        ratios[replicas] = np.mean(sigmas) / np.std(fits, ddof=1)
    assert ratios[0] < 0.6, ratios
    assert 0.7 < ratios[200] < 1.4, ratios
    with pytest.raises(ValueError, match="chi2"):
        Fitter(ps, _hetero_forward, HitsLoss("space_match"), row_batches(make_toy_tracks(2, seed=1)),
               FitConfig(iterations=0, progress=False, plots=False, sigma_replicas=5), target_values={"Ab": 0.84})


# ---------------------------------------------------------------- sandwich covariance
def test_sandwich_covariance_formula_and_refusals():
    from calibration.uncertainty import sandwich_covariance
    rng = np.random.default_rng(3)
    hess = np.array([[4.0, 1.0], [1.0, 2.0]])
    # per-batch scores of a correct model: their sum over the B batches has covariance H (H the total loss's
    # Hessian), so each batch's has H/B, and H⁻¹VH⁻¹ = H⁻¹
    grads = rng.multivariate_normal(np.zeros(2), hess / 4000, size=4000)
    result = sandwich_covariance(hess, list(grads))
    np.testing.assert_allclose(result["covariance"], np.linalg.inv(hess), rtol=0.1, atol=0.01)
    # scores varying twice as much as the curvature says: σ grows by √2
    inflated = sandwich_covariance(hess, list(grads * np.sqrt(2.0)))
    np.testing.assert_allclose(inflated["sigma"] / result["sigma"], np.sqrt(2.0), rtol=1e-9)
    few = sandwich_covariance(hess, list(grads[:5]))
    assert few["covariance"] is None and "5 independent batch" in few["reason"]
    flat = sandwich_covariance(np.array([[1.0, 0.0], [0.0, -1.0]]), list(grads))
    assert flat["covariance"] is None and "not positive definite" in flat["reason"]


class _Chi2Assumed:
    """χ² with an assumed ADC noise σ (the toy's true noise is 0.5)."""
    chi2 = True

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, guess, target, n_units=None):
        return ((guess.adc - target.adc) / self.sigma).pow(2).sum() / n_units


@pytest.mark.parametrize("assumed", [0.5, 0.25])
def test_sandwich_sigma_corrects_a_wrong_noise_model(assumed):
    """A χ² that assumes half the true noise reports σ half the true spread; the sandwich σ (per-track scores
    at the fitted point) sees the real spread of the scores and is ≈ 2× the Hessian's.  With the right noise
    model the two agree.  One fit's V comes from 18 unequal tracks (per-seed ratios 0.5–1.4 with the right
    model), so the ratio is averaged over 8 noise seeds."""
    ps = ParamSet.from_names(["Ab"], lr=0.02)
    ratios = []
    for seed in range(8):
        f = Fitter(ps, ToyForward(), _Chi2Assumed(assumed), row_batches(make_toy_tracks(18, seed=2), 1),
                   FitConfig(iterations=0, polish_lbfgs=5, progress=False, plots=False, seed=seed),
                   target_values={"Ab": 0.84}, target_noise=True)
        r = f.run()
        ratios.append(r["params"]["Ab"]["sigma_sandwich"] / r["params"]["Ab"]["sigma"])
        assert r["sandwich"]["batches"] == 18 and r["sandwich"]["reason"] is None
    expected = 0.5 / assumed
    assert 0.7 * expected < np.mean(ratios) < 1.3 * expected, ratios


# ---------------------------------------------------------------- replica sandwich (score over drawn targets)
@pytest.mark.parametrize("assumed", [0.5, 0.25])
def test_replica_sandwich_sigma_corrects_a_wrong_noise_model_from_one_batch(assumed):
    """The same wrong noise model, all 18 tracks in one batch: the batch sandwich needs ≥ 2 batches per parameter
    and gives nothing, while the replica sandwich (the score at the fitted point over 40 targets drawn with the
    toy's true noise at the fitted parameters) is ≈ 0.5/assumed × the Hessian's σ (σ from 40 replicas is known to
    ≈ 11 %; asserted within 25 %), and its V/(2·up·H) diagnostic ≈ (0.5/assumed)²."""
    ps = ParamSet.from_names(["Ab"], lr=0.02)
    f = Fitter(ps, ToyForward(), _Chi2Assumed(assumed), row_batches(make_toy_tracks(18, seed=2), 18),
               FitConfig(iterations=0, polish_lbfgs=5, progress=False, plots=False, seed=1, score_replicas=40),
               target_values={"Ab": 0.84}, target_noise=True)
    data_targets = f.targets
    r = f.run()
    assert f.targets is data_targets                        # the fit's own targets are back after the replicas
    assert r["sandwich"]["batches"] == 1 and r["params"]["Ab"]["sigma_sandwich"] is None
    replica = r["replica_sandwich"]
    assert replica["reason"] is None and replica["replicas"] == 40
    expected = 0.5 / assumed
    ratio = r["params"]["Ab"]["sigma_replica_sandwich"] / r["params"]["Ab"]["sigma"]
    assert 0.75 * expected < ratio < 1.25 * expected, ratio
    assert 0.5 * expected ** 2 < replica["variance_over_curvature"]["Ab"] < 1.6 * expected ** 2


def test_replica_sandwich_refusals():
    ps = ParamSet.from_names(["Ab"], lr=0.02)
    with pytest.raises(ValueError, match="score_replicas must be 0 or >= 10"):
        Fitter(ps, ToyForward(), _Chi2Assumed(0.5), row_batches(make_toy_tracks(4, seed=2), 4),
               FitConfig(iterations=0, progress=False, plots=False, score_replicas=3), target_values={"Ab": 0.84})
    # a loss that is not a likelihood: no σ at all, and the replica sandwich says why
    f = Fitter(ps, ToyForward(), HitsLoss("space_match"), row_batches(make_toy_tracks(4, seed=2), 4),
               FitConfig(iterations=0, progress=False, plots=False, score_replicas=10), target_values={"Ab": 0.84})
    r = f.run()
    assert r["params"]["Ab"]["sigma_replica_sandwich"] is None
    assert r["replica_sandwich"]["reason"] == "not a likelihood or chi2"
