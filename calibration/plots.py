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
