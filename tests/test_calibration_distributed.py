"""Data parallel: 2 CPU processes (gloo, localhost) give the single-process gradient on the same tracks."""
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from calibration.batching import row_batches, segment_batches
from calibration.distributed import DistContext
from calibration.fitter import FitConfig, Fitter
from calibration.losses import HitsLoss
from calibration.paramsets import ParamSet
from calibration.toy import ToyForward, make_toy_tracks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_SIM = False
try:
    import sparsetpc as st
    HAVE_SIM = hasattr(st, "simulate")
except ImportError:  # pragma: no cover
    pass

NAMES = ["Ab", "vdrift", "lifetime"]
TARGET = {"Ab": 0.83, "vdrift": 0.152, "lifetime": 2500.0}
POINT = {"Ab": 0.81, "vdrift": 0.156, "lifetime": 2300.0}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(kind, dist, sim_file=None):
    ps = ParamSet.from_names(NAMES)
    if kind == "toy":
        batches, forward = row_batches(make_toy_tracks(5, seed=2)), ToyForward()   # 5 units: ranks get 3 and 2
    else:
        segs = st.load_segments(sim_file, cuts=st.Cuts(), dtype=torch.float64)
        batches = segment_batches(segs, ntracks=3)
        from calibration.forward import SimForward
        forward = SimForward(clock_phases=1)      # one phase: 3x faster; sharding is the subject
    cfg = FitConfig(iterations=1, progress=False, plots=False, hessian=False)
    return Fitter(ps, forward, HitsLoss("space_match"), batches, cfg, target_values=TARGET, initial_values=POINT,
                  dist=dist)


def gradients(fitter):
    leaves = fitter.paramset.make_leaves(POINT)
    loss = fitter._loss_and_grad(leaves, 0, 0)
    theta = torch.stack([l.detach() for l in leaves])
    eval_loss, eval_grad = fitter.evaluate(theta)
    return {"grad": [float(l.grad) for l in leaves], "loss": float(loss), "eval_grad": eval_grad.tolist(),
            "eval_loss": float(eval_loss)}


def _worker(rank, world, port, kinds, sim_file, out_path):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        results = {}
        for kind in kinds:
            fitter = build(kind, DistContext(rank, world), sim_file)
            results[kind] = gradients(fitter)
            results[kind]["n_local"] = fitter.local_batches[0].n_units
        with open(f"{out_path}.{rank}", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def run_two_ranks(kinds, tmp_path, sim_file=None):
    """One spawn of 2 gloo ranks computing every kind (process start-up dominates the cost)."""
    out = str(tmp_path / "grad")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, kinds, sim_file, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("distributed worker did not finish in time")
        assert p.exitcode == 0
    return [json.load(open(f"{out}.{r}")) for r in range(2)]


def test_gloo_two_processes_gradient_equals_single_process(tmp_path):
    """Toy model always; the real simulator too when available (3 tracks from the example generator)."""
    kinds = ["toy"]
    sim_file = None
    if HAVE_SIM:
        from sparsetpc.example import write_example
        sim_file = str(write_example(tmp_path / "ex.h5", seed=3, step=1.0))
        kinds.append("sim")
    ranks = run_two_ranks(kinds, tmp_path, sim_file)
    for kind in kinds:
        single = gradients(build(kind, DistContext(), sim_file))
        assert ranks[0][kind]["n_local"] + ranks[1][kind]["n_local"] == (5 if kind == "toy" else 3)
        assert ranks[0][kind]["n_local"] != ranks[1][kind]["n_local"]          # unequal shards: weighting matters
        for r in ranks:                                                         # every rank holds the average
            np.testing.assert_allclose(r[kind]["grad"], single["grad"], rtol=1e-9, atol=1e-12, err_msg=kind)
            np.testing.assert_allclose(r[kind]["eval_grad"], single["eval_grad"], rtol=1e-9, atol=1e-12, err_msg=kind)
            assert r[kind]["loss"] == pytest.approx(single["loss"], rel=1e-10)
        assert all(abs(g) > 1e-8 for g in single["grad"]), (kind, single["grad"])   # not trivially zero
    if not HAVE_SIM:
        pytest.skip("toy checked; sparsetpc.simulate not available for the simulator check")


def test_torchrun_cli_matches_single_process(tmp_path):
    common = ["-m", "calibration", "fit", "--forward", "toy", "--ntracks", "5", "--params", "Ab", "vdrift",
              "--closure-seed", "4", "--iterations", "6", "--lr", "0.02", "--no-progress", "--no-plots",
              "--no-noise", "--checkpoint-every", "3"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], cwd=ROOT, env=env, check=True,
                   timeout=180, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), *common, "--out", str(tmp_path / "two")],
                          cwd=ROOT, env=env, timeout=240, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["world_size"] == 2
    for name in ("Ab", "vdrift"):
        assert two["params"][name]["fitted"] == pytest.approx(one["params"][name]["fitted"], rel=1e-9)
    assert np.allclose(two["hessian_internal"], one["hessian_internal"], rtol=1e-5)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-9)
