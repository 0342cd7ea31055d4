"""Loss scans: smoothness figures on known curves, a toy scan with its minimum at the target, plots."""
import json

import numpy as np
import pytest

from calibration.batching import row_batches
from calibration.losses import HitsLoss
from calibration.paramsets import ParamSet
from calibration.plots import plot_scan, plot_scans_from_json
from calibration.scan import loss_scan, smoothness
from calibration.targets import simulate_targets
from calibration.toy import ToyForward, make_toy_tracks


def test_smoothness_figures():
    x = np.linspace(0, 1, 21)
    parabola = smoothness(x, (x - 0.5) ** 2, 0.5)
    assert parabola["n_local_minima"] == 1 and parabola["monotone_fraction"] == 1.0
    assert parabola["argmin_offset"] == 0.0 and parabola["roughness"] < 0.02
    wiggly = smoothness(x, (x - 0.5) ** 2 + 0.05 * np.sin(40 * x), 0.5)
    assert wiggly["n_local_minima"] > 1 and wiggly["roughness"] > parabola["roughness"]
    assert wiggly["monotone_fraction"] < 1.0


def test_toy_scan_minimum_at_target(tmp_path):
    import torch
    ps = ParamSet.from_names(["Ab", "vdrift"])
    batches = row_batches(make_toy_tracks(3, seed=1))
    target = {"Ab": 0.83, "vdrift": 0.15}
    forward = ToyForward(waveforms=True)
    targets = simulate_targets(forward, ps, batches, target, dtype=torch.float64, device="cpu")
    values = np.linspace(0.78, 0.88, 11)
    scan = loss_scan(forward, ps, batches, targets, {"mse": HitsLoss("mse"), "space_match": HitsLoss("space_match")},
                     "Ab", values, target, dtype=torch.float64, device="cpu")
    for name in ("mse", "space_match"):
        losses = np.asarray(scan["losses"][name])
        assert values[np.argmin(losses)] == pytest.approx(0.83, abs=0.006)
        assert scan["smoothness"][name]["n_local_minima"] == 1
    fig = plot_scan(scan, tmp_path / "scan.png")
    (ax,) = fig.axes
    curves = [line for line in ax.lines if line.get_label() in scan["losses"]]
    assert [line.get_label() for line in curves] == list(scan["losses"])
    for line in curves:                                   # each loss mapped to [0, 1]: (L − min) / (max − min)
        losses = np.asarray(scan["losses"][line.get_label()])
        np.testing.assert_allclose(line.get_xdata(), values, rtol=1e-15)
        np.testing.assert_allclose(line.get_ydata(), (losses - losses.min()) / (losses.max() - losses.min()),
                                   rtol=1e-12, atol=1e-15)
    (target_line,) = [line for line in ax.lines if line.get_label() == "target"]
    assert list(target_line.get_xdata()) == [0.83, 0.83]
    assert ax.get_xlabel() == "Ab"
    # redrawn from scan.json: the same picture
    import matplotlib.image as mpimg
    (tmp_path / "scan.json").write_text(json.dumps({"scans": [scan]}))
    (png,) = plot_scans_from_json(tmp_path / "scan.json", tmp_path / "re")
    np.testing.assert_array_equal(mpimg.imread(png), mpimg.imread(tmp_path / "scan.png"))


def test_cli_scan_toy(tmp_path):
    from calibration.cli import main
    assert main(["scan", "--forward", "toy", "--ntracks", "2", "--params", "Ab", "kb", "--closure-seed", "1",
                 "--points", "5", "--no-noise", "--losses", "mse", "space_match:temperature=0.1", "--out",
                 str(tmp_path)]) == 0
    data = json.loads((tmp_path / "scan.json").read_text())
    assert [s["param"] for s in data["scans"]] == ["Ab", "kb"]
    assert set(data["scans"][0]["losses"]) == {"mse", "space_match:temperature=0.1"}
    # the PNGs are the curves of scan.json (whose drawing test_toy_scan_minimum_at_target checks), pixel for pixel
    import matplotlib.image as mpimg
    for png in plot_scans_from_json(tmp_path / "scan.json", tmp_path / "redrawn"):
        name = png.rsplit("/", 1)[-1]
        np.testing.assert_array_equal(mpimg.imread(png), mpimg.imread(tmp_path / name))
