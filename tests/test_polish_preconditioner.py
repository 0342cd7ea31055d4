"""The L-BFGS polish run in the coordinates whitened by a curvature (calibration/curvature.py): same minimum, fewer
evaluations on a badly scaled problem, bounds still held, a useless curvature falls back; the Fisher curvature of
the simulator is the Fisher information computed directly; the CLI option."""
import numpy as np
import pytest
import torch

from calibration.batching import row_batches
from calibration.curvature import FisherCurvature, fisher_unavailable, whitening
from calibration.fitter import MAX_CURVATURES, MAX_MEAN_CHI2, FitConfig, Fitter
from calibration.losses import HitsLoss
from calibration.paramsets import ParamSet, ParamSpec
from calibration.toy import ToyForward, make_toy_tracks

NOISE_ADC = 0.5          # the toy's ADC noise RMS
N_TRACKS = 40            # in batches of 2: enough for the four parameters to have an interior minimum


class _Chi2:
    """χ² of the toy's ADC with its noise RMS, per unit (a statistical loss: the fitter sums it over units); like
    the readout likelihood it reports the readouts' χ² (goodness of fit: 1 per readout at the truth)."""
    chi2 = True

    def __call__(self, guess, target, n_units=None):
        chi2 = ((guess.adc - target.adc) / NOISE_ADC).pow(2)
        self.last_counts = {"chi2_sum": float(chi2.detach().sum()), "chi2_readouts": int(chi2.numel())}
        return chi2.sum() / n_units


class _GaussNewton:
    """The Gauss–Newton curvature 2 JᵀJ / σ² of the χ² above, J = ∂adc/∂(physical parameters) by autograd."""

    def __init__(self, names):
        self.names = list(names)
        self.calls = 0

    def __call__(self, params, tracks):
        self.calls += 1
        values = [getattr(params, n).detach().clone().requires_grad_(True) for n in self.names]
        adc = ToyForward()(params.replace(**dict(zip(self.names, values))), tracks).adc
        rows = []
        for k in range(adc.shape[0]):
            grads = torch.autograd.grad(adc[k], values, retain_graph=True, allow_unused=True)
            rows.append([0.0 if g is None else float(g) for g in grads])
        jac = np.array(rows)
        return 2.0 * jac.T @ jac / NOISE_ADC ** 2


class _Useless:
    calls = 0

    def __call__(self, params, tracks):
        self.calls += 1
        return np.full((4, 4), np.nan)


NAMES = ["Ab", "kb", "lifetime", "long_diff"]
TARGET = {"Ab": 0.83, "kb": 0.052, "lifetime": 2700.0, "long_diff": 5.0e-6}


def _fitter(curvature=None, specs=None, target=TARGET, seed=3, paramset=None, initial_values=None, **config):
    ps = paramset or (ParamSet(specs) if specs is not None else ParamSet.from_names(NAMES, lr=0.02))
    settings = dict(iterations=0, polish_lbfgs=60, progress=False, plots=False, hessian=False, seed=seed,
                    polish_ftol=1e-14)
    settings.update(config)
    return Fitter(ps, ToyForward(), _Chi2(), row_batches(make_toy_tracks(N_TRACKS, seed=2), 2), FitConfig(**settings),
                  target_values=target, target_noise=True, initial_values=initial_values, curvature=curvature)


def _fit(curvature=None, **options):
    return _fitter(curvature, **options).run()


class TestWhitening:
    def test_whitens_a_symmetric_positive_matrix(self):
        rng = np.random.default_rng(0)
        a = rng.normal(size=(5, 5)) * np.logspace(0, 3, 5)[None, :]     # condition ~1e6
        c = a.T @ a
        r = whitening(c)
        np.testing.assert_allclose(r.T @ c @ r, np.eye(5), atol=1e-8)

    def test_raises_eigenvalues_below_the_floor(self):
        c = np.diag([1.0, 1e-20, -3.0])
        r = whitening(c, relative_floor=1e-6)
        np.testing.assert_allclose(np.sort(np.diag(r.T @ r)), np.sort([1.0, 1e6, 1e6]))

    def test_refuses_what_cannot_whiten(self):
        assert whitening(np.full((2, 2), np.nan)) is None
        assert whitening(-np.eye(3)) is None
        assert whitening(np.zeros((0, 0))) is None


class TestPreconditionedPolish:
    def test_same_minimum_in_fewer_evaluations(self):
        plain = _fit(hessian=True)
        hook = _GaussNewton(NAMES)
        whitened = _fit(curvature=hook, hessian=True)
        assert plain["polish"]["stopped"].startswith("converged"), plain["polish"]
        assert whitened["polish"]["stopped"].startswith("converged (estimated distance"), whitened["polish"]
        assert plain["converged"] and whitened["converged"]            # by the Hessian of the loss at the end
        for name in NAMES:        # polish_edm 1e-6 against the χ²'s up = 1: within ~1e-3 σ
            sigma = plain["params"][name]["sigma"]
            assert abs(whitened["params"][name]["fitted"] - plain["params"][name]["fitted"]) < 1e-2 * sigma
        assert whitened["final_loss"] <= plain["final_loss"] + 1e-5
        # the toy's curvature spans orders of magnitude between these parameters in internal units
        assert whitened["polish"]["evaluations"] < plain["polish"]["evaluations"], \
            (whitened["polish"]["evaluations"], plain["polish"]["evaluations"])
        pre = whitened["polish"]["preconditioner"]
        # one curvature per L-BFGS start after the first (plain) step, each summed over the 20 batches
        assert pre["computations"] == hook.calls // (N_TRACKS // 2) == whitened["polish"]["lbfgs_starts"] - 1 >= 1
        assert pre["fallbacks"] == 0 and pre["newton_accepted"] >= 1
        assert plain["polish"]["preconditioner"] is None

    def test_the_minimum_is_the_losss_not_the_curvatures(self):
        # a wrong (but positive) curvature changes the path, not where the fit ends
        class Wrong(_GaussNewton):
            def __call__(self, params, tracks):
                c = super().__call__(params, tracks)
                return c + np.diag(np.diag(c)) * 50.0
        plain = _fit(hessian=True)
        wrong = _fit(curvature=Wrong(NAMES), hessian=True)
        assert wrong["converged"], wrong["warnings"]                  # by the Hessian of the loss at the end
        for name in NAMES:
            sigma = plain["params"][name]["sigma"]
            assert abs(wrong["params"][name]["fitted"] - plain["params"][name]["fitted"]) < 2e-2 * sigma

    def test_a_useless_curvature_falls_back_to_internal_units(self):
        hook = _Useless()
        result = _fit(curvature=hook, hessian=True)
        plain = _fit(hessian=True)
        pre = result["polish"]["preconditioner"]
        assert pre["fallbacks"] == pre["computations"] >= 1 and pre["newton_trials"] == 0
        assert result["polish"]["stopped"].startswith("converged (decrease") and result["converged"]
        for name in NAMES:
            sigma = plain["params"][name]["sigma"]
            assert abs(result["params"][name]["fitted"] - plain["params"][name]["fitted"]) < 1e-2 * sigma

    def test_waits_until_the_model_describes_the_target(self):
        # started far (Ab −14 %, lifetime ×0.4): the mean χ² per readout is far above MAX_MEAN_CHI2, and still above
        # it after the first plain step (2 iterations here), so the plain L-BFGS goes on (memory kept) before the
        # curvature is computed
        start = {"Ab": 0.72, "kb": 0.048, "lifetime": 1100.0, "long_diff": 4.0e-6}
        ps = ParamSet.from_names(NAMES, lr=0.02, default_bounds=False)
        make = lambda curvature: _fitter(curvature, paramset=ps, initial_values=start, hessian=True,
                                         polish_plain_iterations=2)
        first = make(None)
        theta = torch.tensor([s.to_internal(start[s.name]) for s in ps], dtype=torch.float64)
        first.evaluate(theta, need_grad=False)
        assert first.last_mean_chi2 > 5 * MAX_MEAN_CHI2
        plain, whitened = first.run(), make(_GaussNewton(NAMES)).run()
        pre = whitened["polish"]["preconditioner"]
        assert pre["waits"] >= 1 and pre["computations"] >= 1, pre
        assert whitened["converged"] and plain["converged"]
        for name in NAMES:
            sigma = plain["params"][name]["sigma"]
            assert abs(whitened["params"][name]["fitted"] - plain["params"][name]["fitted"]) < 1e-2 * sigma

    def test_holds_a_parameter_at_its_bound(self):
        # Ab's target lies outside its bounds: held at one, the others fitted in the whitened sub-block
        specs = [ParamSpec("Ab", lr=0.02, bounds=(0.78, 0.82)), ParamSpec("kb", lr=0.02),
                 ParamSpec("lifetime", lr=0.02), ParamSpec("long_diff", lr=0.02)]
        plain = _fit(specs=specs)
        hook = _GaussNewton(NAMES)
        whitened = _fit(curvature=hook, specs=specs)
        assert whitened["params"]["Ab"]["fitted"] == plain["params"]["Ab"]["fitted"]
        assert min(abs(whitened["params"]["Ab"]["fitted"] - bound) for bound in (0.78, 0.82)) < 1e-12
        assert whitened["polish"]["lbfgs_starts"] >= 2
        assert 1 <= whitened["polish"]["preconditioner"]["computations"] <= MAX_CURVATURES
        for name in NAMES[1:]:
            assert whitened["params"][name]["fitted"] == pytest.approx(plain["params"][name]["fitted"], rel=1e-5)


def _segments():
    """A ~3 cm straight muon (sparsetpc.example, edep-sim frame)."""
    import sparsetpc as st
    from sparsetpc.example import generate
    return st.Segments.from_numpy(generate(1, 1, seed=3, kind="steep", cot_theta=(1.0, 1.0), drift_extent=(2.1, 2.1)))


class TestFisherCurvature:
    def test_is_the_fisher_information_of_the_fits_forward(self):
        import sparsetpc as st
        from calibration.fisher import expected_fisher
        from calibration.forward import SimForward
        from sparsetpc.electronics import FrontEnd
        segments = _segments()
        params = st.Params.nominal(dtype=torch.float64)
        names = ["Ab", "lifetime", "vdrift"]
        forward = SimForward(mode="relaxed", memory_budget="1GB", clock_phases=1)
        front_end = FrontEnd(tick=forward.detector.tick, clock_phases=1)
        hook = FisherCurvature(forward, names, front_end=front_end)
        direct = expected_fisher(segments, params, names, front_end=front_end, memory_budget="1GB")
        matrix = hook(params, segments)
        assert np.all(np.diag(direct.matrix) > 0)
        np.testing.assert_allclose(matrix, direct.matrix, rtol=1e-12)

    def test_applies_only_to_the_likelihood_in_float64_relaxed(self):
        ps = ParamSet.from_names(["Ab"])
        likelihood = HitsLoss("likelihood")
        assert fisher_unavailable(likelihood, "relaxed", ps, torch.float64) is None
        assert "likelihood" in fisher_unavailable(HitsLoss("chi2"), "relaxed", ps, torch.float64)
        assert "float64" in fisher_unavailable(likelihood, "relaxed", ps, torch.float32)
        assert "relaxed" in fisher_unavailable(likelihood, "hard", ps, torch.float64)
        linked = ParamSet.from_names(["eField"], link_vdrift_efield=True)
        assert "eField" in fisher_unavailable(likelihood, "relaxed", linked, torch.float64)


@pytest.mark.parametrize("options, words", [
    (["--forward", "toy", "--target-values", "Ab=0.84"], "toy"),
    (["--loss", "chi2", "--target-values", "Ab=0.84"], "likelihood"),
])
def test_cli_refuses_fisher_where_it_does_not_apply(tmp_path, capsys, options, words):
    from calibration.cli import main
    from sparsetpc.example import generate
    import h5py
    path = tmp_path / "muon.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("segments", data=generate(1, 1, seed=3, kind="steep", cot_theta=(1.0, 1.0),
                                                   drift_extent=(2.1, 2.1)))
    source = [] if "toy" in options else ["--input", str(path)]
    code = main(["fit", *source, "--params", "Ab", "--iterations", "1", "--polish-lbfgs", "2",
                 "--precondition", "fisher", "--out", str(tmp_path / "fit"), "--no-progress", "--no-plots",
                 *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--precondition fisher" in err[0] and words in err[0], err
    assert not (tmp_path / "fit").exists()


class _NotFiniteBelow:
    """The toy, with every ADC NaN where the lifetime is below ``limit`` µs (a model undefined there)."""

    def __init__(self, limit):
        self.limit = limit

    def __call__(self, params, tracks, noise=False, seed=None):
        hits = ToyForward()(params, tracks, noise=noise, seed=seed)
        if float(params.lifetime.detach()) < self.limit:
            hits.adc = hits.adc * float("nan")
        return hits


@pytest.mark.parametrize("whitened", [False, True])
def test_polish_backs_off_where_the_model_is_not_finite(whitened):
    # lifetime without bounds, its minimum just above where the model stops being finite: the line search's
    # probes below must not end the fit, and it must end at the minimum
    ps = ParamSet([ParamSpec("lifetime", lr=0.02), ParamSpec("Ab", lr=0.02)])
    forward = _NotFiniteBelow(1990.0)
    fitter = Fitter(ps, forward, _Chi2(), row_batches(make_toy_tracks(N_TRACKS, seed=2), 2),
                    FitConfig(iterations=0, polish_lbfgs=40, progress=False, plots=False, hessian=False,
                              polish_ftol=1e-14),
                    target_values={"lifetime": 2000.0, "Ab": 0.8}, initial_values={"lifetime": 4000.0, "Ab": 0.8},
                    curvature=_GaussNewton(["lifetime", "Ab"]) if whitened else None)
    result = fitter.run()
    assert result["polish"]["stopped"].startswith("converged"), result["polish"]
    assert result["params"]["lifetime"]["fitted"] == pytest.approx(2000.0, rel=1e-6)
    assert np.isfinite(result["final_loss"])
