"""Checkpoints record what defines a fit (resume refuses another definition) and the wall time spent."""
import json

import pytest
import torch

import calibration.fitter as fitter_module
from calibration import checkpoint as ckpt
from calibration.batching import row_batches
from calibration.cli import main
from calibration.fitter import FitConfig, Fitter
from calibration.losses import HitsLoss
from calibration.paramsets import ParamSet
from calibration.toy import ToyForward, make_toy_tracks
from sparsetpc.example import write_example

TOY = ["fit", "--forward", "toy", "--ntracks", "4", "--tracks-per-batch", "2", "--params", "Ab", "vdrift",
       "--iterations", "12", "--lr", "0.02", "--no-progress", "--no-plots", "--no-hessian", "--checkpoint-every", "4"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def killed_toy_fit(capsys, out, *extra):
    code, _ = cli(capsys, *TOY, "--closure-seed", "1", "--out", out, "--stop-after", "6", *extra)
    assert code == 3 and (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("change,named", [
    (["--closure-seed", "2"], "targets.closure_seed"),
    (["--closure-seed", "1", "--loss", "chamfer"], "loss.name"),
    (["--closure-seed", "1", "--no-noise"], "noise.target"),
    (["--closure-seed", "1", "--dtype", "float32"], "dtype"),
    (["--closure-seed", "1", "--fixed", "kb=0.05"], "fixed.kb"),
    (["--closure-seed", "1", "--init-values", "Ab=0.82"], "initial.Ab"),
    (["--closure-seed", "1", "--track-seed", "4"], "data.track_seed"),
])
def test_resume_with_another_definition_is_refused_naming_it(tmp_path, capsys, change, named):
    out = tmp_path / "fit"
    killed_toy_fit(capsys, out)
    before = (out / "checkpoint.pt").read_bytes()
    code, err = cli(capsys, *TOY, "--out", out, "--resume", *change)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "different fit" in err and named in err and "--resume-force" in err and str(out / "checkpoint.pt") in err
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "result.json").exists()
    code, err = cli(capsys, *TOY, "--out", out, "--resume-force", *change)     # override: resumes, says what differs
    assert code == 0 and "warning" in err and named in err
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from_iteration"] == 4 and any(named in d for d in result["resume_differences"])


def test_resume_same_definition_matches_uninterrupted(tmp_path, capsys):
    killed_toy_fit(capsys, tmp_path / "cut")
    assert cli(capsys, *TOY, "--closure-seed", "1", "--out", tmp_path / "cut", "--resume")[0] == 0
    assert cli(capsys, *TOY, "--closure-seed", "1", "--out", tmp_path / "full")[0] == 0
    a = json.loads((tmp_path / "cut" / "result.json").read_text())
    b = json.loads((tmp_path / "full" / "result.json").read_text())
    assert a["params"] == b["params"] and a["resume_differences"] is None
    saved = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["meta"]["definition"]
    assert saved["targets"] == {"closure_seed": 1, "values": b["meta"]["definition"]["targets"]["values"]}
    assert [p["name"] for p in saved["paramset"]["params"]] == ["Ab", "vdrift"]
    assert saved["loss"]["name"] == "mse" and saved["dtype"] == "torch.float64"


def test_simulator_fit_records_input_hash_and_selection(tmp_path, capsys):
    data = tmp_path / "in.h5"
    write_example(data, n_events=2, tracks_per_event=2, seed=3, step=1.0)
    base = ["fit", "--input", data, "--params", "Ab", "--closure-seed", "1", "--ntracks", "1", "--iterations", "2",
            "--no-progress", "--no-plots", "--no-hessian", "--no-noise", "--loss", "chamfer", "--out", tmp_path / "o"]
    assert cli(capsys, *base)[0] == 0
    saved = torch.load(tmp_path / "o" / "checkpoint.pt", weights_only=False)["meta"]["definition"]
    assert saved["data"]["input"] == ckpt.file_digest(data)
    assert saved["data"]["selection"]["ntracks"] == 1 and saved["data"]["mode"] == "relaxed"
    code, err = cli(capsys, *base[:-2], "--out", tmp_path / "o", "--resume", "--ntracks", "2")
    assert code == 2 and "data.selection.ntracks (checkpoint 1, now 2)" in err
    write_example(data, n_events=2, tracks_per_event=2, seed=4, step=1.0)      # same path, other bytes
    code, err = cli(capsys, *base, "--resume")
    assert code == 2 and "data.input.sha256" in err


def test_corrupt_and_truncated_checkpoints_are_named(tmp_path, capsys):
    out = tmp_path / "fit"
    killed_toy_fit(capsys, out)
    path = out / "checkpoint.pt"
    good = path.read_bytes()
    for broken in (good[: len(good) // 2], b"garbage", b""):
        path.write_bytes(broken)
        code, err = cli(capsys, *TOY, "--closure-seed", "1", "--out", out, "--resume")
        assert code == 2 and str(path) in err and "checkpoint" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    torch.save({"format": "something else"}, path)
    code, err = cli(capsys, *TOY, "--closure-seed", "1", "--out", out, "--resume")
    assert code == 2 and "not a calibration checkpoint" in err


# ---------------------------------------------------------------------------------------------- wall time
def toy_fitter(out_dir, **cfg):
    ps = ParamSet.from_names(["Ab", "vdrift"], lr=0.02)
    batches = row_batches(make_toy_tracks(4, seed=1), 2)
    config = FitConfig(**{**dict(iterations=30, progress=False, plots=False, checkpoint_every=5, hessian=False), **cfg})
    return Fitter(ps, ToyForward(), HitsLoss("space_match"), batches, config,
                  target_values={"Ab": 0.84, "vdrift": 0.15}, out_dir=str(out_dir))


class FakeClock:
    """time.perf_counter advancing 1 s per call (the fitter reads it once or twice per iteration)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_resumed_fit_continues_the_wall_budget_and_reports_the_total(tmp_path, monkeypatch):
    assert toy_fitter(tmp_path, stop_after=12).run() == {"interrupted": True, "iteration": 12}
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    assert state["iteration"] == 10 and 0 < state["wall_time_s"] < 60
    state["wall_time_s"] = 1000.0                           # as if the first 10 iterations had taken 1000 s
    torch.save(state, path)
    # a budget the first part already spent: the resumed fit stops at once, with the total wall time
    result = toy_fitter(tmp_path, max_wall_s=500.0).run(resume=True)
    assert result["stopped_by_wall_time"] and result["iterations"] == 10
    assert 1000.0 <= result["wall_time_s"] < 1060.0
    # a larger budget: continues to the end, the total counting the first part
    result = toy_fitter(tmp_path, max_wall_s=5000.0).run(resume=True)
    assert not result["stopped_by_wall_time"] and result["iterations"] == 30
    assert 1000.0 <= result["wall_time_s"] < 1060.0
    assert torch.load(path, weights_only=False)["wall_time_s"] >= 1000.0


def test_wall_stop_writes_a_checkpoint_that_a_resume_continues(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(fitter_module, "time", clock)
    result = toy_fitter(tmp_path / "a", max_wall_s=9.5, checkpoint_every=100).run()
    stopped_at = result["iterations"]
    assert result["stopped_by_wall_time"] and 0 < stopped_at < 30
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == stopped_at and state["wall_time_s"] > 9.5     # saved at the stop, with its time
    result = toy_fitter(tmp_path / "a", max_wall_s=9.5, checkpoint_every=100).run(resume=True)
    assert result["stopped_by_wall_time"] and result["iterations"] == stopped_at    # budget already spent
    monkeypatch.undo()
    resumed = toy_fitter(tmp_path / "a", max_wall_s=1e6, checkpoint_every=100).run(resume=True)
    straight = toy_fitter(tmp_path / "b", checkpoint_every=100).run()
    assert resumed["iterations"] == 30 and resumed["params"] == straight["params"]
    assert resumed["wall_time_s"] > state["wall_time_s"]
