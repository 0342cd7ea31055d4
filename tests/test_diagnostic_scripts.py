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
                 "--clock-phases", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["params"] == ["lifetime", "tran_diff"] and len(report["scores"]) == 4
    fisher = np.array(report["fisher"])
    assert np.all(np.linalg.eigvalsh(fisher) > 0)                     # an information matrix
    for name in ("lifetime", "tran_diff"):
        assert 0 < report["variance_over_fisher"][name] < 50
        assert report["sigma_fisher_percent"][name] > 0 and report["sigma_sandwich_percent"][name] > 0
    assert "eigenvalues of F^-1/2 V F^-1/2" in capsys.readouterr().out


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
