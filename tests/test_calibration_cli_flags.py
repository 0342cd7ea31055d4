"""Every flag of ``python -m calibration fit|scan`` has an effect a user can see; each test checks that effect
against a formula or an independent computation (docs/flag_coverage.md lists flag -> test).

Most tests use the cheap ``--forward toy`` model; the selection flags (--track-seed, --group, --no-cuts,
--min-abs-segment-z), --mode, --memory-budget, --sigma-replicas and the target cache need the simulator and
use a tiny input written here (6 short tracks, 3 segments each).
"""
import json
import math

import h5py
import numpy as np
import pytest
import torch

from calibration.cli import main
from calibration.losses import HitsLoss, noise_sigma_adc
from calibration.toy import N_POINTS, make_toy_tracks, toy_forward
from helpers import make_rows
from sparsetpc.params import RANGES, Params
from sparsetpc.segments import FRAME_SPARSETPC

TOY = ["fit", "--forward", "toy", "--no-progress", "--no-plots", "--no-hessian"]


@pytest.fixture(autouse=True)
def one_thread():
    """--threads changes the process-wide setting: restore it after every test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(capsys, out, *argv):
    """(exit code, stderr) of ``main(argv + --out out)``."""
    code = main([str(a) for a in (*argv, "--out", out)])
    return code, capsys.readouterr().err


def fit(capsys, out, *argv):
    code, err = run(capsys, out, *argv)
    assert code == 0, err
    return json.loads((out / "result.json").read_text())


def history(out):
    return json.loads((out / "history.json").read_text())


def cached_targets(out):
    files = sorted((out / "targets").glob("targets*.pt"))
    assert len(files) == 1, files
    return torch.load(files[0], weights_only=False)


# ---------------------------------------------------------------------------------------------- parameters
# first Adam step: |Δ internal| = lr·|g|/(|g| + eps) (bias-corrected m/(√v + eps)); the internal value of each
# normalisation (docs/calibration.md "Parameter sets"): divide p/nominal, none p, standard (p − nominal)/σ with
# σ = (high − low)/2, inverse nominal/p
NOMINAL, LOW, HIGH = RANGES["Ab"][:3]
INTERNAL = {"divide": lambda p: p / NOMINAL, "none": lambda p: p,
            "standard": lambda p: (p - NOMINAL) / ((HIGH - LOW) / 2), "inverse": lambda p: NOMINAL / p}


@pytest.mark.parametrize("norm", sorted(INTERNAL))
def test_lr_and_norm_set_the_first_adam_step(tmp_path, capsys, norm):
    fit(capsys, tmp_path, *TOY, "--params", "Ab", "--target-values", "Ab=0.85", "--no-noise", "--iterations", "2",
        "--lr", "0.03", "--norm", norm)
    values, grad = history(tmp_path)["values"]["Ab"], history(tmp_path)["grads"]["Ab"][0]
    step = INTERNAL[norm](values[1]) - INTERNAL[norm](values[0])
    assert abs(step) == pytest.approx(0.03 * abs(grad) / (abs(grad) + 1e-8), rel=1e-9)      # Adam's eps = 1e-8
    assert values[1] > values[0]                          # towards the target 0.85
    assert history(tmp_path)["lr"]["Ab"][0] == 0.03


def test_no_bounds_lets_a_step_leave_the_range(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--target-values", "Ab=0.87", "--no-noise", "--iterations", "2", "--norm", "none",
            "--lr", "0.2"]
    fit(capsys, tmp_path / "bounded", *args)
    fit(capsys, tmp_path / "free", *args, "--no-bounds")
    assert history(tmp_path / "bounded")["values"]["Ab"][1] == HIGH               # projected onto RANGES
    assert history(tmp_path / "free")["values"]["Ab"][1] == pytest.approx(NOMINAL + 0.2, rel=1e-6)


def test_sgd_clip_and_momentum_steps(tmp_path, capsys):
    """SGD: Δθ₀ = −lr·g₀; --clip c rescales g to norm c (torch: c/(|g| + 1e-6)); momentum μ: Δθ₁ = −lr(g₁ + μg₀)."""
    base = [*TOY, "--params", "Ab", "--target-values", "Ab=0.85", "--no-noise", "--iterations", "3", "--lr", "0.01",
            "--optimizer", "sgd"]
    theta = lambda out: np.asarray(history(out)["values"]["Ab"]) / NOMINAL
    grads = lambda out: history(out)["grads"]["Ab"]
    fit(capsys, tmp_path / "plain", *base, "--clip", "0")
    g = grads(tmp_path / "plain")
    assert abs(g[0]) > 0.05                                # so that --clip 0.02 below really clips
    np.testing.assert_allclose(np.diff(theta(tmp_path / "plain")), [-0.01 * g[0], -0.01 * g[1]], rtol=1e-9)
    fit(capsys, tmp_path / "clip", *base, "--clip", "0.02")
    g = grads(tmp_path / "clip")
    np.testing.assert_allclose(np.diff(theta(tmp_path / "clip"))[0], -0.01 * g[0] * 0.02 / (abs(g[0]) + 1e-6),
                               rtol=1e-9)
    fit(capsys, tmp_path / "momentum", *base, "--clip", "0", "--optimizer-kwargs", '{"momentum": 0.9}')
    g = grads(tmp_path / "momentum")
    np.testing.assert_allclose(np.diff(theta(tmp_path / "momentum")), [-0.01 * g[0], -0.01 * (g[1] + 0.9 * g[0])],
                               rtol=1e-9)
    r = json.loads((tmp_path / "momentum" / "result.json").read_text())
    assert r["config"]["optimizer"] == "sgd" and r["config"]["optimizer_kwargs"] == {"momentum": 0.9}


@pytest.mark.parametrize("step, expected", [("epoch", [1, 1, 0.5, 0.5, 0.25, 0.25]),
                                            ("iteration", [1, 0.5, 0.25, 0.125, 0.0625, 0.03125])])
def test_scheduler_kwargs_and_step(tmp_path, capsys, step, expected):
    """ExponentialLR(gamma 0.5) stepped per epoch (2 batches of 2 tracks) or per iteration."""
    fit(capsys, tmp_path, *TOY, "--params", "Ab", "--closure-seed", "1", "--no-noise", "--iterations", "6",
        "--ntracks", "4", "--tracks-per-batch", "2", "--lr", "0.01", "--scheduler", "ExponentialLR",
        "--scheduler-kwargs", '{"gamma": 0.5}', "--scheduler-step", step)
    np.testing.assert_allclose(history(tmp_path)["lr"]["Ab"], 0.01 * np.asarray(expected), rtol=1e-12)


def test_tracks_per_batch_and_no_shuffle_set_the_batch_order(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--closure-seed", "1", "--no-noise", "--iterations", "18", "--ntracks", "6"]
    fit(capsys, tmp_path / "one", *args)
    assert set(history(tmp_path / "one")["batch"]) == {0}                     # default: one batch of all tracks
    fit(capsys, tmp_path / "fixed", *args, "--tracks-per-batch", "2", "--no-shuffle")
    assert history(tmp_path / "fixed")["batch"] == [0, 1, 2] * 6
    fit(capsys, tmp_path / "shuffled", *args, "--tracks-per-batch", "1")
    order = np.asarray(history(tmp_path / "shuffled")["batch"]).reshape(3, 6)
    assert all(sorted(epoch) == list(range(6)) for epoch in order.tolist())    # every batch once per epoch
    assert any(epoch != list(range(6)) for epoch in order.tolist())            # ... in a shuffled order


def test_init_values_init_seed_and_closure_seed(tmp_path, capsys):
    """Initial and target values are recorded in result.json and used: history starts at the initial value."""
    base = [*TOY, "--params", "Ab", "kb", "--no-noise", "--iterations", "1"]
    r = fit(capsys, tmp_path / "values", *base, "--closure-seed", "3", "--init-values", "Ab=0.85")
    assert r["params"]["Ab"]["initial"] == 0.85 and r["params"]["kb"]["initial"] == RANGES["kb"][0]
    assert history(tmp_path / "values")["values"]["Ab"][0] == pytest.approx(0.85, rel=1e-15)
    # seeds: uniform in RANGES, numpy default_rng, parameters in order (docs/calibration.md "Fitter")
    rng = np.random.default_rng(3)
    expected = {name: rng.uniform(RANGES[name][1], RANGES[name][2]) for name in ("Ab", "kb")}
    assert {k: v["target"] for k, v in r["params"].items()} == pytest.approx(expected, rel=1e-15)
    seeded = [fit(capsys, tmp_path / f"seed{k}", *base, "--closure-seed", "3", "--init-seed", str(s))
              for k, s in enumerate((5, 5, 6))]
    initial = [{k: v["initial"] for k, v in r["params"].items()} for r in seeded]
    rng = np.random.default_rng(5)
    assert initial[0] == pytest.approx({n: rng.uniform(RANGES[n][1], RANGES[n][2]) for n in ("Ab", "kb")}, rel=1e-15)
    assert initial[0] == initial[1] and initial[0] != initial[2]
    assert history(tmp_path / "seed2")["values"]["kb"][0] == initial[2]["kb"]


def toy_tracks(n=4, seed=0):
    return make_toy_tracks(n, seed=seed, dtype=torch.float64)


def test_fixed_sets_the_non_fitted_value_of_target_and_guess(tmp_path, capsys):
    """--fixed kb=0.06: the toy's Birks factor Ab/(1 + kb·dEdx/(E·ρ)) scales the charge, so the target ADC above
    the toy's offset of 10 changes by (1 + kb₀·dEdx/(Eρ)) / (1 + kb₁·dEdx/(Eρ)); the guess uses it too (loss 0
    at the target's Ab)."""
    args = [*TOY, "--params", "Ab", "--target-values", "Ab=0.8", "--no-noise", "--iterations", "0"]
    r0 = fit(capsys, tmp_path / "nominal", *args)
    r1 = fit(capsys, tmp_path / "fixed", *args, "--fixed", "kb=0.06")
    assert r1["meta"]["definition"]["fixed"] == {"kb": 0.06}
    assert r0["final_loss"] == 0.0 and r1["final_loss"] == 0.0
    (t0,), (t1,) = cached_targets(tmp_path / "nominal"), cached_targets(tmp_path / "fixed")
    dedx = toy_tracks()[:, 6].repeat_interleave(N_POINTS).numpy()
    field_density = RANGES["eField"][0] * RANGES["lArDensity"][0]
    expected = (1 + RANGES["kb"][0] * dedx / field_density) / (1 + 0.06 * dedx / field_density)
    np.testing.assert_allclose((t1.adc.numpy() - 10) / (t0.adc.numpy() - 10), expected, rtol=1e-12)
    np.testing.assert_array_equal(t1.t.numpy(), t0.t.numpy())                 # kb does not move the hits


def test_link_vdrift_efield_makes_the_field_move_the_drift_time(tmp_path, capsys):
    """Unlinked, eField enters recombination only (the toy's times stay at nominal); linked, the drift velocity
    follows the field through the mobility: a higher field drifts faster, so every hit comes earlier."""
    nominal = toy_forward(Params.nominal(), toy_tracks())
    args = [*TOY, "--params", "eField", "--target-values", "eField=0.55", "--no-noise", "--iterations", "0"]
    fit(capsys, tmp_path / "unlinked", *args)
    r = fit(capsys, tmp_path / "linked", *args, "--link-vdrift-efield")
    assert r["link_vdrift_efield"]
    (unlinked,), (linked,) = cached_targets(tmp_path / "unlinked"), cached_targets(tmp_path / "linked")
    np.testing.assert_array_equal(unlinked.t.numpy(), nominal.t.numpy())
    assert bool((unlinked.adc > nominal.adc).all())                          # less recombination at 0.55 kV/cm
    assert bool((linked.t < nominal.t).all())


@pytest.mark.parametrize("flags, target_noisy, guess_noisy", [
    ([], True, True), (["--no-noise"], False, False), (["--no-noise-target"], False, True),
    (["--no-noise-guess"], True, False)])
def test_noise_flags(tmp_path, capsys, flags, target_noisy, guess_noisy):
    """With the target at the initial value, the loss at iteration 0 is zero exactly when neither side is noisy.
    (The relaxed guess is the expectation over the noise; a noisy guess exists in --mode reference only.)"""
    fit(capsys, tmp_path, *TOY, "--params", "Ab", "--target-values", "Ab=0.8", "--iterations", "1", "--mode",
        "reference", "--loss", "chamfer", *flags)
    (target,) = cached_targets(tmp_path)
    clean = toy_forward(Params.nominal(), toy_tracks())
    noise = target.adc - clean.adc
    assert bool((noise != 0).any()) == target_noisy
    if target_noisy:                                                          # the toy's N(0, 0.5²) ADC noise
        assert 0.3 < float(noise.std()) < 0.7
    assert (history(tmp_path)["loss"][0] > 0) == (target_noisy or guess_noisy)
    definition = json.loads((tmp_path / "result.json").read_text())["meta"]["definition"]
    assert definition["noise"] == {"target": target_noisy, "guess": guess_noisy}


def test_seed_draws_the_noise_reproducibly(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--target-values", "Ab=0.8", "--iterations", "0", "--loss", "chamfer"]
    adc = []
    for k, seed in enumerate((1, 1, 2)):
        fit(capsys, tmp_path / str(k), *args, "--seed", str(seed))
        adc.append(cached_targets(tmp_path / str(k))[0].adc)
    assert torch.equal(adc[0], adc[1]) and not torch.equal(adc[0], adc[2])


def test_loss_scales_and_loss_opt_are_recorded_and_scale_the_loss(tmp_path, capsys):
    """chamfer: squared distances of scaled columns, so doubling every scale divides the loss by 4 exactly (the
    nearest neighbours do not change); mse option scale=S divides the squared error by S²."""
    args = [*TOY, "--params", "Ab", "--target-values", "Ab=0.85", "--no-noise", "--iterations", "0"]
    one = fit(capsys, tmp_path / "s1", *args, "--loss", "chamfer", "--loss-scales", "x=1", "y=1", "t=1", "adc=10")
    two = fit(capsys, tmp_path / "s2", *args, "--loss", "chamfer", "--loss-scales", "x=2", "y=2", "t=2", "adc=20")
    assert two["meta"]["loss"]["scales"] == {"x": 2.0, "y": 2.0, "t": 2.0, "adc": 20.0}
    assert one["final_loss"] > 0 and two["final_loss"] == pytest.approx(one["final_loss"] / 4, rel=1e-12)
    a = fit(capsys, tmp_path / "o1", *args, "--loss", "mse", "--loss-opt", "scale=1")
    b = fit(capsys, tmp_path / "o2", *args, "--loss", "mse", "--loss-opt", "scale=2")
    assert b["meta"]["loss"]["name"] == "mse" and b["meta"]["loss"]["options"] == {"scale": 2}
    assert a["final_loss"] > 0 and b["final_loss"] == pytest.approx(a["final_loss"] / 4, rel=1e-12)


def test_errordef_scales_sigma_by_the_square_root(tmp_path, capsys):
    """cov = 2·up·H⁻¹: the same Hessian with up = 0.5 gives sigma / √2.  The CLI passes --errordef to the fitter;
    sigma itself is reported for statistical losses only, so the scaling is checked on the fitter with the toy's
    loss declared statistical (a χ²-like sum over units)."""
    args = ["fit", "--forward", "toy", "--no-progress", "--no-plots", "--params", "Ab", "kb", "--target-values",
            "Ab=0.82", "--no-noise", "--iterations", "0"]
    one = fit(capsys, tmp_path / "up1", *args)
    half = fit(capsys, tmp_path / "up05", *args, "--errordef", "0.5")
    assert half["hessian_internal"] == one["hessian_internal"]
    assert half["config"]["errordef_up"] == 0.5 and one["config"]["errordef_up"] is None
    assert "up = 0.5" in half["uncertainty_convention"] and "up = 1.0" in one["uncertainty_convention"]
    for name in ("Ab", "kb"):                                   # mse: not a likelihood, no sigma
        assert one["params"][name]["sigma"] is None and half["params"][name]["sigma"] is None
    from calibration.batching import row_batches
    from calibration.fitter import FitConfig, Fitter
    from calibration.paramsets import ParamSet
    from calibration.toy import ToyForward, make_toy_tracks
    results = {}
    for up in (1.0, 0.5):
        loss = HitsLoss("mse")
        loss.statistical = True
        fitter = Fitter(ParamSet.from_names(["Ab", "kb"]), ToyForward(waveforms=True), loss,
                        row_batches(make_toy_tracks(4, seed=1), 2),
                        FitConfig(iterations=0, progress=False, plots=False, errordef_up=up),
                        target_values={"Ab": 0.82, "kb": 0.0486})
        results[up] = fitter.run()
    for name in ("Ab", "kb"):
        assert results[1.0]["params"][name]["sigma"] > 0
        assert results[0.5]["params"][name]["sigma"] == pytest.approx(results[1.0]["params"][name]["sigma"] / math.sqrt(2),
                                                                       rel=1e-12)


def test_hessian_step_is_the_central_difference_step(tmp_path, capsys):
    """result.json's Hessian equals (g(θ+h) − g(θ−h)) / 2h with g computed here by autograd through the toy and
    the loss, for each --hessian-step h (θ = Ab/nominal, the divide normalisation)."""
    tracks = toy_tracks()
    loss = HitsLoss("mse")
    for h in (1e-3, 0.05):
        out = tmp_path / str(h)
        r = fit(capsys, out, "fit", "--forward", "toy", "--no-progress", "--no-plots", "--params", "Ab",
                "--target-values", "Ab=0.82", "--no-noise", "--iterations", "0", "--hessian-step", str(h))
        (target,) = cached_targets(out)

        def grad(theta):
            theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
            guess = toy_forward(Params.nominal().replace(Ab=NOMINAL * theta), tracks, waveforms=True)
            return float(torch.autograd.grad(loss(guess, target, n_units=4), theta)[0])

        expected = (grad(1 + h) - grad(1 - h)) / (2 * h)
        assert r["hessian_internal"][0][0] == pytest.approx(expected, rel=1e-9)
        assert f"step {h}" in r["uncertainty_convention"]


def test_max_wall_stops_the_loop_and_says_so(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--closure-seed", "1", "--no-noise", "--iterations", "50"]
    stopped = fit(capsys, tmp_path / "wall", *args, "--max-wall", "1e-9")
    assert stopped["stopped_by_wall_time"] and stopped["iterations"] < 50
    assert len(history(tmp_path / "wall")["loss"]) == stopped["iterations"]
    full = fit(capsys, tmp_path / "full", *args)
    assert not full["stopped_by_wall_time"] and full["iterations"] == 50


def test_polish_lbfgs_and_its_options(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--target-values", "Ab=0.84", "--no-noise", "--iterations", "0", "--loss", "mse"]
    plain = fit(capsys, tmp_path / "plain", *args)
    assert plain["polish"] is None and plain["params"]["Ab"]["fitted"] == NOMINAL
    polished = fit(capsys, tmp_path / "polish", *args, "--polish-lbfgs", "4")
    assert 1 <= polished["polish"]["steps"] <= 4
    assert history(tmp_path / "polish")["batch"] == [-1] * polished["polish"]["steps"]   # polish steps: batch −1
    assert polished["final_loss"] < 1e-6 * plain["final_loss"]
    assert polished["params"]["Ab"]["fitted"] == pytest.approx(0.84, rel=1e-6)
    # --polish-ftol: a step lowering the loss by <= ftol·max(|f|, 1) counts as converged: huge ftol stops at once
    ftol = fit(capsys, tmp_path / "ftol", *args, "--polish-lbfgs", "4", "--polish-ftol", "1e9")
    assert ftol["polish"]["steps"] == 1 and ftol["polish"]["stopped"].startswith("converged")
    # --polish-max-wall: no new evaluation after S seconds, even inside a step (which may take up to 20): the
    # polish ends at the best point evaluated, here the start
    wall = fit(capsys, tmp_path / "wall", *args, "--polish-lbfgs", "4", "--polish-max-wall", "1e-9")
    assert wall["polish"]["steps"] == 0 and wall["polish"]["stopped"] == "polish wall time"
    assert wall["polish"]["evaluations"] == 1 and wall["params"]["Ab"]["fitted"] == NOMINAL
    # --polish-kwargs reach torch.optim.LBFGS: a gradient tolerance above any gradient makes it stand still
    still = fit(capsys, tmp_path / "kwargs", *args, "--polish-lbfgs", "4", "--polish-kwargs",
                '{"tolerance_grad": 1e30, "history_size": 3}')
    assert still["polish"]["kwargs"]["history_size"] == 3
    assert still["params"]["Ab"]["fitted"] == NOMINAL and still["final_loss"] == plain["final_loss"]


def test_history_format_hdf5(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--closure-seed", "1", "--no-noise", "--iterations", "3"]
    fit(capsys, tmp_path / "json", *args)
    r = fit(capsys, tmp_path / "h5", *args, "--history-format", "hdf5")
    assert r["history_file"] == "history.h5" and not (tmp_path / "h5" / "history.json").exists()
    with h5py.File(tmp_path / "h5" / "history.h5") as f:
        np.testing.assert_array_equal(f["values/Ab"][()], history(tmp_path / "json")["values"]["Ab"])
        np.testing.assert_array_equal(f["loss"][()], history(tmp_path / "json")["loss"])


def test_plots_written_unless_no_plots(tmp_path, capsys):
    args = ["fit", "--forward", "toy", "--no-progress", "--no-hessian", "--params", "Ab", "--closure-seed", "1",
            "--iterations", "2"]
    fit(capsys, tmp_path / "p", *args)
    assert sorted(p.name for p in (tmp_path / "p" / "plots").iterdir()) == ["convergence.png", "loss.png"]
    fit(capsys, tmp_path / "n", *args, "--no-plots")
    assert not (tmp_path / "n" / "plots").exists()


def test_threads_progress_device_and_dtype(tmp_path, capsys):
    args = [*TOY, "--params", "Ab", "--closure-seed", "1", "--iterations", "2"]
    torch.set_num_threads(1)
    fit(capsys, tmp_path / "t", *args, "--threads", "2")
    assert torch.get_num_threads() == 2
    # progress bar on stderr unless --no-progress
    code, err = run(capsys, tmp_path / "bar", *[a for a in args if a != "--no-progress"])
    assert code == 0 and "fit:" in err and "2/2" in err
    code, err = run(capsys, tmp_path / "nobar", *args)
    assert code == 0 and "fit:" not in err
    # --device cpu runs; an unknown device is one line, exit 2, before any work
    code, err = run(capsys, tmp_path / "cpu", *args, "--device", "cpu")
    assert code == 0
    code, err = run(capsys, tmp_path / "tpu", *args, "--device", "tpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device 'tpu'" in err
    assert not (tmp_path / "tpu").exists()
    # --dtype float32: targets and guesses in float32
    r = fit(capsys, tmp_path / "f32", *args, "--dtype", "float32")
    assert cached_targets(tmp_path / "f32")[0].adc.dtype == torch.float32
    assert r["meta"]["definition"]["dtype"] == "torch.float32"
    assert cached_targets(tmp_path / "cpu")[0].adc.dtype == torch.float64


def test_scan_points_and_losses(tmp_path, capsys):
    code, _ = run(capsys, tmp_path, "scan", "--forward", "toy", "--ntracks", "2", "--params", "Ab", "--closure-seed",
                  "1", "--no-noise", "--points", "4", "--losses", "chamfer", "space_match:temperature=0.1")
    assert code == 0
    (scan,) = json.loads((tmp_path / "scan.json").read_text())["scans"]
    np.testing.assert_allclose(scan["values"], np.linspace(LOW, HIGH, 4), rtol=1e-15)
    assert set(scan["losses"]) == {"chamfer", "space_match:temperature=0.1"}
    assert all(len(v) == 4 for v in scan["losses"].values())


# ---------------------------------------------------------------------------------------------- simulator
def track(event, trk, x, y, sign):
    """A 4.5 cm track of 3 segments whose |z| midpoints are 14.5, 15.5 and 16.5 cm (z = drift axis)."""
    z = sign * np.array([14.0, 15.0, 16.0, 17.0])
    points = np.stack([x + 0.8 * np.arange(4), y + 0.8 * np.arange(4), z], 1)
    return make_rows(points[:-1], points[1:], event=event, track=trk)


@pytest.fixture(scope="module")
def sim_input(tmp_path_factory):
    """3 events x 2 tracks; every track passes the default track cuts; --min-abs-segment-z decides how many of
    its segments are kept."""
    rows = np.concatenate([track(ev, trk, -20.0 + 12 * ev + 5 * trk, -40.0 + 20 * trk, 1 if ev % 2 else -1)
                           for ev in range(3) for trk in (1, 2)])
    path = tmp_path_factory.mktemp("sim") / "tracks.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("segments", data=rows).attrs["frame"] = FRAME_SPARSETPC
    return path, rows


SIM = ["fit", "--no-progress", "--no-plots", "--no-hessian", "--params", "Ab", "--target-values", "Ab=0.82",
       "--iterations", "0", "--no-noise", "--loss", "chamfer"]


def test_track_seed_ntracks_and_group_select_the_units(sim_input, tmp_path, capsys):
    path, rows = sim_input
    all_tracks = sorted({(int(e), int(t)) for e, t in zip(rows["eventID"], rows["trackID"])})
    units = lambda r: [tuple(u) for batch in r["meta"]["input"]["units"] for u in batch]
    first = fit(capsys, tmp_path / "first", *SIM, "--input", path, "--ntracks", "2")
    assert units(first) == all_tracks[:2]                                   # no seed: the first in (event, track)
    seeded = [units(fit(capsys, tmp_path / f"s{k}", *SIM, "--input", path, "--ntracks", "2", "--track-seed", str(s)))
              for k, s in enumerate((3, 3, 4))]
    assert seeded[0] == seeded[1] and seeded[0] != seeded[2]
    for chosen in seeded:
        assert len(set(chosen)) == 2 and set(chosen) <= set(all_tracks)
    events = fit(capsys, tmp_path / "event", *SIM, "--input", path, "--group", "event")
    assert units(events) == [(0, -1), (1, -1), (2, -1)] and events["meta"]["input"]["group"] == "event"
    assert events["meta"]["input"]["segments"] == first["meta"]["input"]["segments"] * 3


@pytest.mark.parametrize("flags, min_abs_z", [([], 15.0), (["--min-abs-segment-z", "16"], 16.0),
                                              (["--min-abs-segment-z", "none"], 0.0), (["--no-cuts"], 0.0)])
def test_min_abs_segment_z_and_no_cuts_set_the_segments_kept(sim_input, tmp_path, capsys, flags, min_abs_z):
    path, rows = sim_input
    r = fit(capsys, tmp_path, *SIM, "--input", path, *flags)
    zmid = np.abs(0.5 * (rows["z_start"] + rows["z_end"]))
    assert r["meta"]["input"]["segments"] == int((zmid > min_abs_z).sum())
    assert r["meta"]["input"]["units_available"] == 6


def test_memory_budget_does_not_change_the_fit(sim_input, tmp_path, capsys):
    path, _ = sim_input
    args = [*SIM, "--input", path, "--ntracks", "2"]
    large = fit(capsys, tmp_path / "large", *args, "--memory-budget", "4GB")
    tiny = fit(capsys, tmp_path / "tiny", *args, "--memory-budget", "1MB")
    assert large["final_loss"] > 0
    assert tiny["final_loss"] == pytest.approx(large["final_loss"], rel=1e-9, abs=1e-12)
    a, b = cached_targets(tmp_path / "large")[0], cached_targets(tmp_path / "tiny")[0]
    assert torch.equal(a.pixel, b.pixel) and torch.allclose(a.adc, b.adc, rtol=0, atol=1e-9)


def test_mode_hard_makes_integer_adc_targets(sim_input, tmp_path, capsys):
    path, _ = sim_input
    fit(capsys, tmp_path / "hard", *SIM, "--input", path, "--ntracks", "2", "--mode", "hard")
    fit(capsys, tmp_path / "relaxed", *SIM, "--input", path, "--ntracks", "2")
    hard, relaxed = cached_targets(tmp_path / "hard")[0], cached_targets(tmp_path / "relaxed")[0]
    assert len(hard) > 0 and torch.equal(hard.adc, torch.round(hard.adc))
    assert not torch.equal(relaxed.adc, torch.round(relaxed.adc))


def test_sigma_replicas_give_per_readout_sigmas(sim_input, tmp_path, capsys):
    path, _ = sim_input
    args = [*SIM, "--input", path, "--ntracks", "2", "--loss", "chi2"]
    args.remove("--no-noise")
    args.remove("chamfer")
    args.remove("--loss")
    model = fit(capsys, tmp_path / "model", *args, "--no-noise-guess")
    replicas = fit(capsys, tmp_path / "replicas", *args, "--no-noise-guess", "--sigma-replicas", "6")
    assert model["readout_sigma"] is None
    summary = replicas["readout_sigma"]
    assert summary["readouts"] == model["loss_counts"]["matched"] + model["loss_counts"]["unmatched_target"]
    assert summary["source"].startswith("6 noisy replicas")
    sigma_model = noise_sigma_adc()
    assert any(abs(q - sigma_model) > 1e-6 for q in summary["quantiles_adc"].values())   # measured, not the model
    assert replicas["final_loss"] != model["final_loss"]
    # fewer replicas than a readout needs to leave the model sigma would change nothing: refused
    code, err = run(capsys, tmp_path / "few", *args, "--no-noise-guess", "--sigma-replicas", "3")
    assert code == 2 and "--sigma-replicas must be 0 (noise model) or >= 5" in err


def test_score_replicas_give_the_replica_sandwich(sim_input, tmp_path, capsys):
    """--score-replicas N: after the Hessian, N targets drawn by the hard front end with noise at the fitted point;
    the covariance of the likelihood's score over them gives σ = √diag(H⁻¹VH⁻¹) (result.json
    ``sigma_replica_sandwich`` and ``replica_sandwich``; a column of the printed summary).  On 6 short tracks the
    relaxed model is close to hard mode's noise, so V/(2·up·H) is near 1 (10 replicas: ±45 %; asserted 0.3–3);
    the σ is the formula's from the fit's own Hessian and that V.  Refused: N < 10, a loss that reports no σ,
    and --no-hessian."""
    path, _ = sim_input
    args = ["fit", "--no-progress", "--no-plots", "--params", "Ab", "--target-values", "Ab=0.82", "--iterations", "0",
            "--loss", "likelihood", "--input", path, "--ntracks", "2", "--polish-lbfgs", "3", "--clock-phases", "1"]
    assert main([str(a) for a in (*args, "--score-replicas", "10", "--out", tmp_path / "replicas")]) == 0
    assert "replica sandwich" in capsys.readouterr().out                     # the summary's column
    result = json.loads((tmp_path / "replicas" / "result.json").read_text())
    replica = result["replica_sandwich"]
    assert replica["reason"] is None and replica["replicas"] == 10
    ratio = replica["variance_over_curvature"]["Ab"]
    assert 0.3 < ratio < 3.0, ratio
    hessian = np.array(result["hessian_internal"])[0, 0]
    entry = result["params"]["Ab"]
    # one parameter: σ_replica / σ_Hessian = √(V/(2·up·H)) (up = 0.5; H and V in internal units, the same
    # Jacobian converts both σ)
    assert entry["sigma_replica_sandwich"] / entry["sigma"] == pytest.approx(math.sqrt(ratio), rel=1e-9)
    assert hessian > 0
    for extra, message in ((["--score-replicas", "3"], "--score-replicas must be 0 or >= 10"),
                           (["--score-replicas", "10", "--no-hessian"], "--score-replicas needs the Hessian")):
        code, err = run(capsys, tmp_path / "refused", *args, *extra)
        assert code == 2 and message in err and "Traceback" not in err, err
    other = [a for a in args if a != "likelihood"]
    other[other.index("--loss") + 1:other.index("--loss") + 1] = ["space_match"]
    code, err = run(capsys, tmp_path / "refused", *other, "--score-replicas", "10")
    assert code == 2 and "--score-replicas needs --loss likelihood or chi2" in err, err


def test_target_cache_is_reused_and_invalidated_by_a_changed_input(sim_input, tmp_path, capsys):
    """The closure targets are simulated once and cached in OUT/targets; a rerun reads them (shown by doctoring
    the cache); rewriting the input in place, even with the same size, makes new targets."""
    path, rows = sim_input
    data = tmp_path / "input.h5"
    data.write_bytes(path.read_bytes())
    args = [*SIM, "--input", data, "--ntracks", "2"]
    out = tmp_path / "fit"
    first = fit(capsys, out, *args)
    (cache,) = (out / "targets").glob("targets*.pt")
    targets = torch.load(cache, weights_only=False)
    targets[0].adc = targets[0].adc + 5.0                  # doctored: a rerun that reads the cache sees it
    torch.save(targets, cache)
    again = fit(capsys, out, *args)
    assert again["final_loss"] != first["final_loss"]
    # same shape and size, other dE/dx: other targets, simulated afresh
    changed = rows.copy()
    changed["dEdx"] *= 1.5
    changed["dE"] *= 1.5
    with h5py.File(data, "r+") as f:
        f["segments"][...] = changed
    assert data.stat().st_size == path.stat().st_size
    rerun = fit(capsys, out, *args)
    fresh = fit(capsys, tmp_path / "fresh", *args)
    assert len(list((out / "targets").glob("targets*.pt"))) == 2
    assert rerun["final_loss"] == fresh["final_loss"] != again["final_loss"]


def test_layout_is_the_one_that_decodes_a_packets_target(sim_input, tmp_path, capsys):
    """A packets target is decoded with --layout: a layout without the chip/channel wiring cannot read it."""
    import yaml
    from sparsetpc.hits import HIT_DTYPE
    from sparsetpc.layout import PixelLayout
    from sparsetpc.packets import write_packets
    path, _ = sim_input
    hits = np.zeros(1, HIT_DTYPE)
    hits[0] = (0, 0, 30, 40, 0.0, 0.0, 50.0, 90.0, 0)
    write_packets(tmp_path / "target.h5", hits, PixelLayout.default())
    geometry = tmp_path / "geometry_only.yaml"
    lay = PixelLayout.default(wiring=False)
    geometry.write_text(yaml.safe_dump({
        "pixel_pitch": float(lay.pitch_mm),
        "tile_positions": {int(i): [float(v) for v in p] for i, p in zip(lay.tile_ids, lay.tile_positions)},
        "tile_orientations": {int(i): [int(v) for v in o] for i, o in zip(lay.tile_ids, lay.tile_orientations)}}))
    args = ["fit", "--no-progress", "--no-plots", "--no-hessian", "--params", "Ab", "--iterations", "0",
            "--input", path, "--target-file", tmp_path / "target.h5", "--mode", "hard", "--no-noise", "--loss", "chamfer"]
    code, err = run(capsys, tmp_path / "o", *args, "--layout", geometry)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "wiring" in err, err


def test_chi2_uses_the_per_readout_sigma_of_a_simulated_target(sim_input):
    """The σ that --sigma-replicas attaches to the target readouts reaches the χ² also for the simulator's Hits
    (whose likely() selection builds a new object): σ = 2·σ_model everywhere gives a quarter of the χ²."""
    import sparsetpc as st
    from calibration.readout_sigma import with_readout_sigma
    path, _ = sim_input
    segments = st.load_segments(path, cuts=st.Cuts.none())
    target = st.simulate(segments, mode="hard", noise=True, seed=1)
    guess = st.simulate(segments, params=Params.nominal().replace(Ab=0.81))
    loss = HitsLoss("chi2")
    plain = float(loss(guess, target, n_units=1))
    doubled = with_readout_sigma(target, torch.full((len(target),), 2 * noise_sigma_adc(), dtype=torch.float64))
    assert plain > 0 and float(loss(guess, doubled, n_units=1)) == pytest.approx(plain / 4, rel=1e-12)


def test_precondition_whitens_the_likelihood_polish_and_keeps_its_minimum(sim_input, tmp_path, capsys):
    """--precondition fisher (the default for the likelihood): after --precondition-after plain L-BFGS steps, and
    once the model describes the target (mean χ² per readout <= 4), the polish runs in coordinates whitened by the
    expected Fisher information and stops at ½gᵀF⁻¹g <= --polish-edm; the minimum and σ are those of
    --precondition none (the Hessian of the loss at the end is the same computation).  Here vdrift starts 2.4 %
    off: every time misses the target's by many σ (mean χ² ≈ 480), the likelihood is flat there and the Fisher
    information would promise a curvature it does not have (the whitened polish, tried there, stopped on that
    plateau at a loss of 160.7 against the minimum's 9.8): the plain L-BFGS goes on until the times match.
    --polish-edm 0 leaves only --polish-ftol; --precondition-after 0 tries the whitening from the start."""
    path, _ = sim_input
    args = ["fit", "--no-progress", "--no-plots", "--params", "Ab", "vdrift", "--target-values", "Ab=0.82",
            "vdrift=0.155", "--iterations", "0", "--loss", "likelihood", "--input", path, "--ntracks", "2",
            "--clock-phases", "1"]
    plain = fit(capsys, tmp_path / "none", *args, "--precondition", "none")
    auto = fit(capsys, tmp_path / "auto", *args)
    assert plain["polish"]["preconditioner"] is None
    pre = auto["polish"]["preconditioner"]
    assert pre["computations"] >= 1 and pre["after_steps"] == 1 and pre["newton_trials"] >= 1 and pre["waits"] >= 1
    assert auto["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-6)
    assert auto["polish"]["stopped"].startswith("converged (estimated distance"), auto["polish"]
    assert plain["converged"] and auto["converged"]
    for name in ("Ab", "vdrift"):
        a, p = auto["params"][name], plain["params"][name]
        assert abs(a["fitted"] - p["fitted"]) < 1e-2 * p["sigma"]
        assert a["sigma"] == pytest.approx(p["sigma"], rel=1e-2)
    ftol_only = fit(capsys, tmp_path / "edm0", *args, "--polish-edm", "0", "--no-hessian")
    assert ftol_only["polish"]["stopped"].startswith("converged (decrease"), ftol_only["polish"]
    assert ftol_only["polish"]["preconditioner"]["computations"] >= 1
    first = fit(capsys, tmp_path / "after0", *args, "--precondition-after", "0", "--no-hessian")
    assert first["polish"]["preconditioner"]["after_steps"] == 0
    assert first["polish"]["preconditioner"]["newton_trials"] >= 1
    for extra, message in ((["--polish-edm", "-1"], "--polish-edm must be >= 0"),
                           (["--precondition-after", "-2"], "--precondition-after must be >= 0")):
        code, err = run(capsys, tmp_path / "refused", *args, *extra)
        assert code == 2 and message in err and "Traceback" not in err, err
