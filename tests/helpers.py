"""Shared helpers of the tests: locating ../shared/data, building small inputs, checking what plots draw."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from validation.run_reference import segment_rows as reference_rows  # noqa: F401  (re-exported for the tests)
from validation.run_reference import shared_data_dir

REPO = Path(__file__).resolve().parents[1]

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared reference data not found: place it at "
                                  "<repo>/../shared/data or set SPARSETPC_SHARED_DATA")


def make_rows(starts, ends, dEdx=2.1, event=0, track=1):
    """Segment rows in sparsetpc's frame (z = drift) from start/end points [cm]."""
    from sparsetpc.segments import SEGMENT_DTYPE
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    ends = np.atleast_2d(np.asarray(ends, dtype=np.float64))
    rows = np.zeros(len(starts), dtype=SEGMENT_DTYPE)
    length = np.linalg.norm(ends - starts, axis=1)
    rows["eventID"], rows["trackID"], rows["pdgId"] = event, track, 13
    rows["dEdx"] = dEdx
    rows["dx"] = length
    rows["dE"] = dEdx * length
    for axis, name in enumerate("xyz"):
        rows[name + "_start"] = starts[:, axis]
        rows[name + "_end"] = ends[:, axis]
        rows[name] = 0.5 * (starts[:, axis] + ends[:, axis])
    return rows


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


def check_fit_plots(out, redrawn):
    """The fit's PNGs draw its history and result: redrawn from history.json and result.json, the figures hold
    exactly those numbers, and the PNGs written by the fit are these figures pixel for pixel."""
    import matplotlib.image as mpimg
    from calibration.history import History
    from calibration.plots import plot_fit
    hist = json.loads((out / "history.json").read_text())
    res = json.loads((out / "result.json").read_text())
    figures = plot_fit(History.load(out / "history.json"), res, str(redrawn))
    assert sorted(figures) == sorted(p.name for p in (out / "plots").iterdir()) == \
        ["convergence.png", "correlation.png", "loss.png"]
    for ax, name in zip(figures["convergence.png"].axes, hist["params"]):
        fit_line, target_line, initial_line = ax.lines
        np.testing.assert_array_equal(fit_line.get_xdata(), hist["iteration"])
        np.testing.assert_array_equal(fit_line.get_ydata(), hist["values"][name])
        assert list(target_line.get_ydata()) == [hist["target"][name]] * 2
        assert list(initial_line.get_ydata()) == [hist["initial"][name]] * 2
        assert ax.get_ylabel().startswith(name)
    (loss_ax,) = figures["loss.png"].axes
    np.testing.assert_array_equal(loss_ax.lines[0].get_ydata(), hist["loss"])
    assert loss_ax.get_yscale() == ("log" if all(v > 0 for v in hist["loss"]) else "linear")
    corr_ax = figures["correlation.png"].axes[0]
    np.testing.assert_allclose(corr_ax.images[0].get_array(), res["correlation"], rtol=1e-15)
    assert [t.get_text() for t in corr_ax.texts] == [f"{v:.2f}" for row in res["correlation"] for v in row]
    for name in figures:
        np.testing.assert_array_equal(mpimg.imread(out / "plots" / name), mpimg.imread(redrawn / name))


def check_comparison_plots(ref_path, ours_path, plots_dir, redrawn_dir, max_events: int = 5) -> dict:
    """The PNGs of ``python -m validation compare --plots`` (or run-reference) draw the two files: redrawn from
    the files, each event figure shows every readout of ref and ours at its (x, y) and (x, t), ours coloured by
    its ADC; the residual histograms count every matched readout; the PNGs written are these figures pixel for
    pixel.  Returns the figures by file name."""
    import matplotlib.image as mpimg
    from validation.compare import compare_tables
    from validation.plots import plot_comparison
    from validation.readers import read_hits
    ref, ours = read_hits(ref_path), read_hits(ours_path)
    summary = compare_tables(ref, ours)
    figures = {}
    plot_comparison(ref, ours, summary, redrawn_dir, max_events=max_events, figures=figures)
    figures = {Path(k).name: v for k, v in figures.items()}
    assert sorted(figures) == sorted(p.name for p in Path(plots_dir).iterdir())
    for event in summary["events"][:max_events]:
        fig = figures[f"event_{event}.png"]
        r, o = ref.hits[ref.hits["event_id"] == event], ours.hits[ours.hits["event_id"] == event]
        for ax, column in zip(fig.axes[:2], ("y", "t")):
            hollow, coloured = ax.collections
            assert sorted(map(tuple, hollow.get_offsets().tolist())) == sorted(zip(r["x"].tolist(), r[column].tolist()))
            drawn = sorted(zip(*coloured.get_offsets().T.tolist(), coloured.get_array().tolist()))
            assert drawn == pytest.approx(sorted(zip(o["x"].tolist(), o[column].tolist(), o["adc"].tolist())))
    for ax in figures["residuals.png"].axes:
        assert sum(p.get_height() for p in ax.patches) == summary["matched"]
    for name in figures:
        np.testing.assert_array_equal(mpimg.imread(Path(plots_dir) / name), mpimg.imread(Path(redrawn_dir) / name))
    return figures
