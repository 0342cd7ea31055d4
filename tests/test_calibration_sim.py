"""Calibration against the real simulator (skipped until ``sparsetpc.simulate`` exists).

Tracks: the two shortest selected tracks of ``sparsetpc.example.write_example(seed=3, step=1.0)``
(≈0.2 s forward+backward each on 2 cores), so the closure fit stays well under a minute.
"""
import json
import time
import warnings

import numpy as np
import pytest
import torch

st = pytest.importorskip("sparsetpc")
if not hasattr(st, "simulate"):
    pytest.skip("sparsetpc.simulate not available", allow_module_level=True)

from calibration.batching import segment_batches
from calibration.cli import main
from calibration.fitter import FitConfig, Fitter
from calibration.forward import SimForward
from calibration.history import History
from calibration.losses import HitsLoss
from calibration.paramsets import ParamSet
from helpers import check_fit_plots

TARGET = {"Ab": 0.83, "vdrift": 0.152}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a loaded 2-core machine (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from sparsetpc.example import write_example
    path = write_example(tmp_path_factory.mktemp("sim") / "ex.h5", seed=3, step=1.0)
    segs = st.load_segments(path, cuts=st.Cuts(), dtype=torch.float64)
    whole = segment_batches(segs)[0]
    lengths = [float(whole.select_units([u]).data.dx.sum()) for u in range(whole.n_units)]
    batch = whole.select_units(sorted(np.argsort(lengths)[:2].tolist()))
    return path, batch


def fitter(batch, out_dir=None, target_noise=False, **cfg):
    ps = ParamSet.from_names(list(TARGET), lr=0.02)
    config = FitConfig(**{"progress": False, "plots": False, "hessian": False, **cfg})
    # one clock phase (3x faster; the phase average is tested in test_pipeline / test_expected_frontend)
    return Fitter(ps, SimForward(clock_phases=1), HitsLoss("space_match"), [batch], config, target_values=TARGET,
                  target_noise=target_noise, out_dir=None if out_dir is None else str(out_dir))


def test_closure_two_parameters_converges(example, tmp_path):
    _, batch = example
    t0 = time.perf_counter()
    f = fitter(batch, tmp_path, iterations=40, scheduler="ExponentialLR", scheduler_kwargs={"gamma": 0.97},
               scheduler_step="iteration", hessian=True, hessian_step=1e-2, plots=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = f.run()
    elapsed = time.perf_counter() - t0
    for name, target in TARGET.items():
        entry = result["params"][name]
        assert abs(entry["fitted"] / target - 1) < 0.02, entry
        assert abs(entry["initial"] / target - 1) > 0.03            # it really moved
        assert entry["sigma"] is None                     # space_match: not a likelihood, no sigma
    assert result["final_loss"] < result_loss_at_start(f)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["iterations"] == 40
    check_fit_plots(tmp_path, tmp_path / "redrawn")
    print(f"closure: {json.dumps({k: v['residual_rel'] for k, v in result['params'].items()})} in {elapsed:.1f} s")


def result_loss_at_start(f):
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    return float(f.evaluate(theta, need_grad=False)[0])


def test_kill_and_resume_bit_for_bit(example, tmp_path):
    _, batch = example
    kw = dict(iterations=8, checkpoint_every=3, noise_guess=True, target_noise=True, scheduler="ExponentialLR",
              scheduler_kwargs={"gamma": 0.9}, scheduler_step="iteration")
    r_full = fitter(batch, tmp_path / "full", **kw).run()
    assert fitter(batch, tmp_path / "cut", stop_after=5, **kw).run()["interrupted"]
    torch.manual_seed(99)
    r_res = fitter(batch, tmp_path / "cut", **kw).run(resume=True)
    for name in TARGET:
        assert r_res["params"][name]["fitted"] == r_full["params"][name]["fitted"]
    h1, h2 = History.load(tmp_path / "full" / "history.json"), History.load(tmp_path / "cut" / "history.json")
    assert h1.values == h2.values and h1.grads == h2.grads and h1.loss == h2.loss


def test_cli_on_simulator(example, tmp_path):
    path, _ = example
    rc = main(["fit", "--input", str(path), "--params", "Ab", "--closure-seed", "1", "--ntracks", "1",
               "--iterations", "2", "--out", str(tmp_path), "--no-progress", "--no-plots", "--no-noise-guess",
               "--memory-budget", "1GB", "--loss", "chamfer"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["iterations"] == 2 and res["meta"]["input"]["group"] == "track" and res["meta"]["noise_target"]
    assert res["params"]["Ab"]["sigma"] is None and "not a likelihood" in res["sigma_reason"]


def test_chi2_loss_through_the_simulator(example):
    """Readout χ² on real Hits: 0 at identity; d/dAb by autograd equals a central difference; a noisy target
    gives χ²/readout of order 1 with the noise-model σ (the σ is what makes the χ² a χ²)."""
    _, batch = example
    forward = SimForward(clock_phases=1)
    loss = HitsLoss("chi2")
    base = st.Params.nominal(dtype=torch.float64)
    target = forward(base.replace(Ab=0.83), batch.data)
    assert float(loss(target, target, n_units=batch.n_units)) == 0.0

    def chi2(ab):
        return loss(forward(base.replace(Ab=ab), batch.data), target, n_units=batch.n_units) * batch.n_units

    ab = torch.tensor(0.81, dtype=torch.float64, requires_grad=True)
    value = chi2(ab)
    (grad,) = torch.autograd.grad(value, ab)
    h = 1e-6
    fd = (float(chi2(torch.tensor(0.81 + h, dtype=torch.float64))) - float(chi2(torch.tensor(0.81 - h, dtype=torch.float64)))) / (2 * h)
    assert float(grad) == pytest.approx(fd, rel=1e-4) and float(grad) < 0
    # a noisy target is data (hard front end); the relaxed guess is its expectation: over 20 noise seeds the
    # matched readouts' mean ADC difference is zero within its statistical error, and the χ² per readout with
    # the noise-model σ is of order one, larger by the integration-window jitter the noise model leaves out
    differences, per_readout = [], []
    for seed in range(20):
        noisy = forward(base.replace(Ab=0.83), batch.data, noise=True, seed=seed)
        assert torch.equal(noisy.adc, torch.round(noisy.adc))            # hard-mode ADC
        per_readout.append(float(loss(target, noisy, n_units=1)) / loss.last_counts["matched"])
        expected = {(tuple(target.pixel_table[int(p)].tolist()), int(r)): float(a)
                    for p, r, a in zip(target.pixel, target.readout, target.adc)}
        for p, r, a in zip(noisy.pixel, noisy.readout, noisy.adc):
            key = (tuple(noisy.pixel_table[int(p)].tolist()), int(r))
            if key in expected:
                differences.append(float(a) - expected[key])
    differences = np.asarray(differences)
    assert abs(differences.mean()) < 3 * differences.std() / np.sqrt(len(differences)) + 0.05, differences.mean()
    assert 0.5 < float(np.mean(per_readout)) < 15.0, per_readout


def test_sim_forward_shows_the_readout_cap_warning_once_per_event_set_and_notes_it():
    """A fit simulates the same events hundreds of times: the cap warning appears once per event set, other
    warnings pass through every time, and notes() names the events for the result's warnings."""
    import warnings
    import torch
    from types import SimpleNamespace
    from calibration.forward import SimForward

    def fake_simulate(segments, detector, params, **kwargs):
        warnings.warn("an expected 2.00 pixel(s) (2 with probability ≥ 0.5) would fire more than max_readouts=10 "
                      "readouts: readouts past the 10th are dropped", UserWarning)
        warnings.warn("something else", RuntimeWarning)
        return "hits"

    forward = SimForward(detector=object())
    forward._simulate = fake_simulate
    first = SimpleNamespace(event_id=torch.tensor([4, 4, 7]))
    second = SimpleNamespace(event_id=torch.tensor([9]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert forward(None, first) == "hits"
        forward(None, second)
    cap = [str(w.message) for w in caught if "max_readouts" in str(w.message)]
    other = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(cap) == 2 and cap[0].startswith("events [4, 7]:") and cap[1].startswith("events [9]:")
    assert len(other) == 4
    notes = forward.notes()
    assert len(notes) == 1 and "[4, 7, 9]" in notes[0]
    assert SimForward(detector=object()).notes() == []
