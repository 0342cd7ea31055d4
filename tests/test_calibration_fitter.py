"""Fitter on the toy forward model: convergence, determinism, exact resume, history, uncertainties, CLI."""
import json
import math
import os

import h5py
import numpy as np
import pytest
import torch

from calibration.batching import row_batches
from calibration.cli import main
from calibration.fitter import FitConfig, Fitter
from calibration.history import History
from calibration.losses import HitsLoss
from calibration.paramsets import ParamSet
from calibration.toy import ToyForward, make_toy_tracks
from calibration.uncertainty import autograd_hessian, covariance_from_hessian, fd_hessian
from helpers import check_fit_plots

TARGET = {"Ab": 0.84, "vdrift": 0.15}


def make_fitter(out_dir=None, names=("Ab", "vdrift"), loss="space_match", n_tracks=4, per_batch=2, target_noise=False,
                **cfg):
    ps = ParamSet.from_names(list(names), lr=0.02)
    batches = row_batches(make_toy_tracks(n_tracks, seed=1), per_batch)
    defaults = dict(iterations=40, progress=False, plots=False, checkpoint_every=5, hessian=False)
    defaults.update(cfg)
    return Fitter(ps, ToyForward(waveforms=loss == "mse"), HitsLoss(loss), batches, FitConfig(**defaults),
                  target_values={k: TARGET.get(k, ps[k].nominal) for k in names}, target_noise=target_noise,
                  out_dir=None if out_dir is None else str(out_dir))


def test_closure_converges_on_toy():
    fitter = make_fitter(iterations=150, scheduler="ExponentialLR", scheduler_kwargs={"gamma": 0.97}, hessian=True)
    result = fitter.run()
    for name, target in TARGET.items():
        assert abs(result["params"][name]["fitted"] / target - 1) < 5e-3, result["params"][name]
        # space_match is not a likelihood: no sigma, and the reason says so
        assert result["params"][name]["sigma"] is None
    assert "not a likelihood" in result["sigma_reason"] and result["hessian_posdef"]
    assert result["final_loss"] < 1e-3
    corr = np.array(result["correlation"])
    assert np.allclose(np.diag(corr), 1.0) and np.allclose(corr, corr.T)


def test_same_seed_same_trajectory_and_seed_matters():
    kw = dict(noise_guess=True, target_noise=True, n_tracks=6, per_batch=2, iterations=12)
    h1 = make_fitter(**kw).run()
    h2 = make_fitter(**kw).run()
    h3 = make_fitter(seed=5, **kw).run()
    assert h1["params"] == h2["params"]
    assert h1["params"]["Ab"]["fitted"] != h3["params"]["Ab"]["fitted"]


@pytest.mark.parametrize("opt,sched", [("adam", ("ExponentialLR", {"gamma": 0.9}, "epoch")),
                                       ("sgd", ("StepLR", {"step_size": 4, "gamma": 0.5}, "iteration"))])
def test_kill_and_resume_is_bit_for_bit(tmp_path, opt, sched):
    kw = dict(noise_guess=True, target_noise=True, n_tracks=6, per_batch=2, iterations=23, optimizer=opt,
              optimizer_kwargs={"momentum": 0.9} if opt == "sgd" else {}, scheduler=sched[0],
              scheduler_kwargs=sched[1], scheduler_step=sched[2], checkpoint_every=5)
    full = make_fitter(tmp_path / "full", **kw).run()
    stopped = make_fitter(tmp_path / "cut", stop_after=13, **kw).run()          # "killed" after iteration 13
    assert stopped == {"interrupted": True, "iteration": 13}
    assert not (tmp_path / "cut" / "result.json").exists()
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert ck["iteration"] == 10                                                # last checkpoint before the kill
    torch.manual_seed(12345)                                                    # disturb global RNG: must be restored
    resumed = make_fitter(tmp_path / "cut", **kw).run(resume=True)
    for name in TARGET:
        assert resumed["params"][name]["fitted"] == full["params"][name]["fitted"]   # exact
    h_full = History.load(tmp_path / "full" / "history.json")
    h_res = History.load(tmp_path / "cut" / "history.json")
    assert h_full.values == h_res.values and h_full.grads == h_res.grads and h_full.loss == h_res.loss
    assert h_full.lr == h_res.lr and h_res.iteration == list(range(23))


def test_resume_refuses_other_parameters(tmp_path):
    make_fitter(tmp_path, iterations=5).run()
    with pytest.raises(ValueError):
        make_fitter(tmp_path, names=("Ab", "kb"), iterations=8).run(resume=True)


def test_history_readable_without_our_code(tmp_path):
    make_fitter(tmp_path / "j", iterations=6).run()
    make_fitter(tmp_path / "h", iterations=6, history_format="hdf5").run()
    with open(tmp_path / "j" / "history.json") as f:
        d = json.load(f)
    assert d["params"] == ["Ab", "vdrift"] and len(d["loss"]) == 6 and len(d["grads"]["Ab"]) == 6
    assert d["values"]["Ab"][0] == pytest.approx(0.8) and d["target"]["vdrift"] == 0.15
    with h5py.File(tmp_path / "h" / "history.h5", "r") as f:
        assert f["values/Ab"].shape == (6,) and json.loads(f.attrs["params"]) == ["Ab", "vdrift"]
        np.testing.assert_array_equal(f["values/Ab"][()], d["values"]["Ab"])   # same trajectory in both formats


def test_nan_gradient_skips_step(tmp_path):
    calls = {"n": 0}
    base = HitsLoss("space_match")

    def flaky(guess, target, n_units=None):
        calls["n"] += 1
        value = base(guess, target, n_units)
        return value * float("nan") if calls["n"] == 3 else value

    ps = ParamSet.from_names(["Ab"], lr=0.02)
    fitter = Fitter(ps, ToyForward(), flaky, row_batches(make_toy_tracks(2, seed=1)),
                    FitConfig(iterations=5, progress=False, plots=False, hessian=False),
                    target_values={"Ab": 0.84})
    fitter.run()
    h = fitter.history
    assert math.isnan(h.grads["Ab"][2]) and math.isnan(h.loss[2])
    assert h.values["Ab"][3] == h.values["Ab"][2]            # step skipped
    assert h.values["Ab"][2] != h.values["Ab"][1] and h.values["Ab"][4] != h.values["Ab"][3]
    h.save(tmp_path / "h.json")                               # strict JSON: NaN written as null, read back as NaN
    raw = json.loads((tmp_path / "h.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert raw["grads"]["Ab"][2] is None and math.isnan(History.load(tmp_path / "h.json").grads["Ab"][2])


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs", "adamw"])
def test_other_optimizers_reduce_loss(optimizer):
    kw = {"lbfgs": dict(optimizer_kwargs={"max_iter": 4}), "sgd": dict(optimizer_kwargs={"momentum": 0.5})}.get(optimizer, {})
    f = make_fitter(iterations=15, optimizer=optimizer, per_batch=4 if optimizer == "lbfgs" else 2, **kw)
    theta0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loss0 = float(f.evaluate(theta0, need_grad=False)[0])
    result = f.run()
    assert result["final_loss"] < 0.5 * loss0


def test_fd_hessian_matches_autograd_and_chi2_convention():
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sig = torch.tensor([0.1, 2.0, 0.5], dtype=torch.float64)
    rho = 0.6
    inv = torch.linalg.inv(torch.tensor([[sig[0] ** 2, rho * sig[0] * sig[1], 0],
                                         [rho * sig[0] * sig[1], sig[1] ** 2, 0], [0, 0, sig[2] ** 2]], dtype=torch.float64))

    def chi2(th):
        d = th - mu
        return d @ inv @ d + 0.1 * (d ** 4).sum()          # exact chi2 near the minimum, quartic further out

    def grad(th):
        th = th.clone().requires_grad_(True)
        return torch.autograd.grad(chi2(th), th)[0]

    h_fd = fd_hessian(grad, mu, 1e-4)
    np.testing.assert_allclose(h_fd, autograd_hessian(chi2, mu), rtol=1e-6, atol=1e-6)
    unc = covariance_from_hessian(h_fd, up=1.0)                # chi2: 1 sigma at delta = 1
    np.testing.assert_allclose(unc["sigma"], sig.numpy(), rtol=1e-5)
    assert unc["correlation"][0, 1] == pytest.approx(rho, rel=1e-5) and unc["hessian_posdef"]
    nll = covariance_from_hessian(h_fd, up=0.5)                # NLL convention: same Hessian, sigma / sqrt(2)
    np.testing.assert_allclose(nll["sigma"], sig.numpy() / math.sqrt(2), rtol=1e-5)
    bad = covariance_from_hessian(np.array([[1.0, 0.0], [0.0, -1.0]]))
    assert not bad["hessian_posdef"] and np.isnan(bad["sigma"][1])


def _cli(out, *extra):
    return main(["fit", "--forward", "toy", "--ntracks", "4", "--tracks-per-batch", "2", "--params", "Ab", "vdrift",
                 "--closure-seed", "1", "--iterations", "20", "--lr", "0.02", "--out", str(out), "--no-progress",
                 "--checkpoint-every", "4", "--seed", "3", *extra])


def test_cli_result_and_resume(tmp_path):
    assert _cli(tmp_path / "a") == 0
    res = json.loads((tmp_path / "a" / "result.json").read_text())
    assert set(res) >= {"params", "iterations", "final_loss", "correlation", "wall_time_s"}
    assert set(res["params"]["Ab"]) >= {"initial", "target", "fitted", "sigma"}
    assert res["iterations"] == 20 and len(res["correlation"]) == 2
    check_fit_plots(tmp_path / "a", tmp_path / "redrawn")
    assert _cli(tmp_path / "b", "--stop-after", "9") == 3
    assert _cli(tmp_path / "b", "--resume") == 0
    res_b = json.loads((tmp_path / "b" / "result.json").read_text())
    assert res_b["params"] == res["params"] and res_b["final_loss"] == res["final_loss"]


def test_cli_param_file_and_errors(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("Ab: 0.02\neField: 0.02\n")
    assert main(["fit", "--forward", "toy", "--param-file", str(f), "--link-vdrift-efield", "--target-values",
                 "Ab=0.82", "eField=0.52", "--iterations", "3", "--out", str(tmp_path / "o"), "--no-progress",
                 "--no-plots", "--no-hessian", "--history-format", "hdf5"]) == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["link_vdrift_efield"] and res["params"]["eField"]["target"] == 0.52 and res["correlation"] is None
    assert res["params"]["Ab"]["lr"] == 0.02 and res["params"]["eField"]["lr"] == 0.02      # the file's rates
    assert main(["fit", "--forward", "toy", "--params", "Ab", "--out", str(tmp_path / "x")]) == 2   # no target given
    assert "choose targets" in capsys.readouterr().err


def test_real_sigkill_then_resume_matches(tmp_path):
    """A CLI fit killed with SIGKILL right after its first checkpoint resumes to the uninterrupted result."""
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["fit", "--forward", "toy", "--ntracks", "4", "--tracks-per-batch", "2", "--params", "Ab", "vdrift",
            "--closure-seed", "1", "--iterations", "150", "--lr", "0.02", "--no-progress", "--no-plots", "--no-hessian",
            "--checkpoint-every", "10", "--seed", "3", "--threads", "1", "--loss", "space_match"]
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "calibration", *args, "--out", str(out)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if (out / "result.json").exists():
        pytest.skip("the fit finished before it could be killed")
    done = torch.load(out / "checkpoint.pt", weights_only=False)["iteration"]
    assert 0 < done < 150
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    a = json.loads((out / "result.json").read_text())
    b = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert a["params"] == b["params"] and a["final_loss"] == b["final_loss"]
    assert json.loads((out / "history.json").read_text())["values"] == \
        json.loads((tmp_path / "straight" / "history.json").read_text())["values"]
