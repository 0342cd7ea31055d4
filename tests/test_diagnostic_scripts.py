"""Smoke tests of the calibration diagnostics: the score spread over noise seeds against the Fisher information
(calibration/scripts/score_spread.py) and the slot-by-slot comparison of the relaxed and hard front ends
(benchmarks/slot_moments.py), on one short steep muon."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from helpers import REPO
from sparsetpc.example import write_example


@pytest.fixture(scope="module")
def steep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("diagnostics") / "steep.h5"
    write_example(path, n_events=1, tracks_per_event=1, seed=2, kind="steep", cot_theta=(3.0, 3.0),
                  drift_extent=(2.5, 2.5))
    return path


def test_score_spread_report(steep_file, tmp_path, capsys):
    from calibration.scripts.score_spread import main
    out = tmp_path / "spread.json"
    assert main(["--input", str(steep_file), "--params", "lifetime", "tran_diff", "--seeds", "4",
                 "--clock-phases", "1", "--split", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["params"] == ["lifetime", "tran_diff"] and len(report["scores"]) == 4
    fisher = np.array(report["fisher"])
    assert np.all(np.linalg.eigvalsh(fisher) > 0)                     # an information matrix
    for name in ("lifetime", "tran_diff"):
        assert 0 < report["variance_over_fisher"][name] < 50
        assert report["sigma_fisher_percent"][name] > 0 and report["sigma_sandwich_percent"][name] > 0
    assert "eigenvalues of F^-1/2 V F^-1/2" in capsys.readouterr().out
    # the count and value terms split the information and the score
    split = report["split"]
    for name in ("lifetime", "tran_diff"):
        assert split["count"]["share_of_fisher"][name] + split["value"]["share_of_fisher"][name] == \
            pytest.approx(1.0, rel=1e-9)
        assert split["value"]["variance_over_fisher"][name] > 0


def test_likelihood_terms_add_up():
    """readout_nll(terms='count') + readout_nll(terms='value') is the whole −log L, in value and gradient."""
    import torch
    from calibration.losses import readout_nll
    d = torch.float64
    pixel = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 1]])
    slot = torch.tensor([0, 1, 0])
    weight = torch.tensor([0.9, 0.5, 0.3], dtype=d, requires_grad=True)
    args = (pixel, slot, weight, torch.tensor([100.0, 90.0, 80.0], dtype=d), torch.tensor([10.0, 12.0, 11.0], dtype=d),
            torch.ones(3, dtype=d), torch.full((3,), 0.05, dtype=d), pixel[:2], slot[:2],
            torch.tensor([101.0, 89.0], dtype=d), torch.tensor([10.1, 12.3], dtype=d))
    parts = [readout_nll(*args, terms=t)[0] for t in ("all", "count", "value")]
    assert float(parts[1] + parts[2]) == pytest.approx(float(parts[0]), rel=1e-13)
    grads = [torch.autograd.grad(p, weight)[0] for p in parts]
    assert torch.allclose(grads[1] + grads[2], grads[0], rtol=1e-12)
    assert float(grads[1].abs().sum()) > 0 and float(grads[2].abs().sum()) > 0
    with pytest.raises(ValueError, match="terms"):
        readout_nll(*args, terms="counts")


def test_slot_moments_report(steep_file, tmp_path):
    spec = importlib.util.spec_from_file_location("slot_moments", REPO / "benchmarks" / "slot_moments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "slots.json"
    module.main(["--input", str(steep_file), "--copies", "20", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["unmatched_hard_readouts"] == 0
    total_weight = sum(row["sum_weight"] for row in report["by_slot"])
    total_frequency = sum(row["sum_frequency"] for row in report["by_slot"])
    assert total_weight > 3 and total_frequency == pytest.approx(total_weight, rel=0.1)


@pytest.mark.parametrize("arguments, message", [
    (["--seeds", "1"], "at least 2 noise seeds"),
    (["--clock-phases", "0"], "--clock-phases 0"),
    (["--params", "lifetime", "foo"], "unknown parameter(s) foo"),
    (["--params", "lifetime", "lifetime"], "given twice"),
    (["--seeds", "abc"], "invalid int value"),
])
def test_score_spread_refuses_bad_arguments(steep_file, arguments, message, capsys):
    """A new user's mistakes: one line naming the problem, exit 2, no traceback, before any simulation."""
    from calibration.scripts.score_spread import main
    try:
        code = main(["--input", str(steep_file)] + arguments)
    except SystemExit as exit_:                     # argparse's own errors exit from the parser
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error and error.count("\n") == 1, error


def test_score_spread_refuses_bad_files(tmp_path, capsys):
    from calibration.scripts.score_spread import main
    assert main(["--input", str(tmp_path / "missing.h5"), "--seeds", "2"]) == 2
    assert "missing.h5" in capsys.readouterr().err
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not HDF5")
    assert main(["--input", str(not_hdf5), "--seeds", "2", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "is a directory" in error and error.count("\n") == 1
