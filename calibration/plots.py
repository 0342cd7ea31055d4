"""Fit plots (matplotlib, Agg backend, PNG): convergence, loss curve, correlation matrix, loss scans."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    from ._io import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    import matplotlib.pyplot as plt
    plt.close(fig)


def plot_convergence(history, path):
    """Each parameter's value per iteration, with its target and initial value as lines; returns the Figure."""
    plt = _plt()
    n = len(history.names)
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.0 * n + 0.6), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], history.names):
        vals = np.asarray(history.values[name])
        ax.plot(history.iteration, vals, lw=1.2, label="fit")
        if history.target and name in history.target:
            ax.axhline(history.target[name], color="C3", ls="--", lw=1, label="target")
        if name in history.initial:
            ax.axhline(history.initial[name], color="0.6", ls=":", lw=1, label="initial")
        unit = history.units.get(name, "")
        ax.set_ylabel(f"{name}" + (f" [{unit}]" if unit else ""))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    axes[0, 0].legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("iteration")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_loss(history, path):
    """The batch loss per iteration (log scale when every loss is positive); returns the Figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    loss = np.asarray(history.loss, dtype=float)
    ax.plot(history.iteration, loss, lw=1)
    if np.all(loss[np.isfinite(loss)] > 0) and np.isfinite(loss).any():
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (batch)")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_correlation(names: Sequence[str], corr, path):
    """The correlation matrix as an image with its values written in; returns the Figure."""
    plt = _plt()
    c = np.array([[np.nan if v is None else v for v in row] for row in corr], dtype=float)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.1 * n + 1.8))
    im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            if np.isfinite(c[i, j]):
                ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="correlation")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_scan(scan: Mapping, path):
    """``scan``: {"param": name, "values": [...], "losses": {loss_name: [...]}, "target": float|None}.

    Each loss curve is mapped to [0, 1] ((L − min)/(max − min)) so that losses of different scale and offset
    share one axis.  Returns the Figure.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.asarray(scan["values"], dtype=float)
    for name, losses in scan["losses"].items():
        y = np.asarray(losses, dtype=float)
        lo, hi = (np.nanmin(y), np.nanmax(y)) if np.isfinite(y).any() else (0.0, 1.0)
        ax.plot(x, (y - lo) / (hi - lo if hi > lo else 1.0), marker=".", lw=1, label=name)
    if scan.get("target") is not None:
        ax.axvline(scan["target"], color="k", ls="--", lw=0.8, label="target")
    ax.set_xlabel(scan["param"])
    ax.set_ylabel("(loss − min) / (max − min)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_fit(history, result: Mapping, out_dir) -> dict:
    """Write convergence.png, loss.png and (with a correlation) correlation.png; returns {file name: Figure}."""
    os.makedirs(out_dir, exist_ok=True)
    figures = {"convergence.png": plot_convergence(history, os.path.join(out_dir, "convergence.png")),
               "loss.png": plot_loss(history, os.path.join(out_dir, "loss.png"))}
    if result.get("correlation") is not None:
        figures["correlation.png"] = plot_correlation(history.names, result["correlation"],
                                                      os.path.join(out_dir, "correlation.png"))
    return figures


def plot_scans_from_json(path, out_dir) -> list:
    """Re-draw every scan of a ``scan.json`` (written by ``python -m calibration scan``); returns the PNG paths."""
    import json
    with open(path) as handle:
        data = json.load(handle)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for scan in data["scans"]:
        paths.append(os.path.join(out_dir, f"scan_{scan['param']}.png"))
        plot_scan(scan, paths[-1])
    return paths


def plot_selection(report: Mapping, path):
    """A track selection (``python -m calibration select``): left, the predicted σ per parameter of the chosen
    tracks beside the first-track-per-event baseline; right, each candidate's own σ of the first two
    parameters (log-log), the chosen ones marked.  Returns the Figure."""
    plt = _plt()
    names = list(report["definition"]["params"])
    chosen = [report["predicted_sigma_percent"][n] for n in names]
    baseline = [report["baseline"]["predicted_sigma_percent"][n] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    as_float = lambda v: np.array([np.nan if e is None else e for e in v], dtype=float)
    left.bar(x - 0.2, as_float(baseline), width=0.4, label=f"first track of {len(report['baseline']['tracks'])} events")
    left.bar(x + 0.2, as_float(chosen), width=0.4, label=f"chosen {len(report['chosen'])} tracks")
    for name, goal in report.get("goals", {}).items():
        if name in names:
            k = names.index(name)
            left.hlines(100 * goal, k - 0.45, k + 0.45, colors="k", linestyles=":", lw=1)
    left.set_yscale("log")
    left.set_xticks(x, names, rotation=30, ha="right")
    left.set_ylabel("predicted σ [% of value] (dotted: goal)")
    left.legend(fontsize=8)
    if len(names) >= 2:
        a, b = names[0], names[1]
        cands = report["candidates"]
        xa = as_float([c["sigma_percent"][a] for c in cands])
        yb = as_float([c["sigma_percent"][b] for c in cands])
        mark = np.array([c["chosen"] for c in cands], dtype=bool)
        right.scatter(xa[~mark], yb[~mark], s=14, c="0.6", label="candidate")
        right.scatter(xa[mark], yb[mark], s=30, c="C1", edgecolors="k", label="chosen")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel(f"σ({a}) of the track alone [%]")
        right.set_ylabel(f"σ({b}) of the track alone [%]")
        right.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig
