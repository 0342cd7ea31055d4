"""PNG plots of a comparison: per-event displays (x–y and x–t side by side) and residual histograms."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from .readers import HitTable


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    """Write the figure atomically (temporary file in the same directory, then rename)."""
    from sparsetpc.io import atomic_write
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_comparison(ref: HitTable, ours: HitTable, summary: dict, out_dir, max_events: int = 5,
                    figures: Optional[Dict[str, object]] = None) -> List[str]:
    """Write ``event_<id>.png`` (up to ``max_events`` events) and ``residuals.png``; return the paths.
    ``figures``: when given, receives each matplotlib Figure under its path (for checks of what is drawn)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    match = summary["_match"]
    vmin = min(ref.adc_pedestal, ours.adc_pedestal)
    for ev in summary["events"][:max_events]:
        r = ref.hits[ref.hits["event_id"] == ev]
        o = ours.hits[ours.hits["event_id"] == ev]
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        for ax, (xa, ya, label) in zip(axes, (("x", "y", "y [cm]"), ("x", "t", "t [µs]"))):
            ax.scatter(r[xa], r[ya], s=60, facecolors="none", edgecolors="k", linewidths=1.0,
                       label=f"ref ({len(r)})")
            sc = ax.scatter(o[xa], o[ya], s=14, c=o["adc"], cmap="viridis", vmin=vmin,
                            label=f"ours ({len(o)})")
            ax.set_xlabel("x [cm]")
            ax.set_ylabel(label)
            ax.legend(loc="best", fontsize=8)
        fig.colorbar(sc, ax=axes, label="ours ADC")
        fig.suptitle(f"event {ev}: ref {Path(ref.source).name} vs ours {Path(ours.source).name}", fontsize=9)
        path = out / f"event_{ev}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(str(path))
        if figures is not None:
            figures[str(path)] = fig
    dadc = ours.hits["adc"][match.ours_index] - ref.hits["adc"][match.ref_index]
    dt = ours.hits["t"][match.ours_index] - ref.hits["t"][match.ref_index]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].hist(dadc, bins=40)
    axes[0].set_xlabel("ΔADC (ours − ref) [counts]")
    axes[1].hist(dt, bins=40)
    axes[1].set_xlabel("Δt (ours − ref) [µs]")
    for ax in axes:
        ax.set_ylabel("matched readouts")
    fig.suptitle(f"{summary['matched']} matched, {summary['ref_only']} ref only, {summary['ours_only']} ours only",
                 fontsize=9)
    path = out / "residuals.png"
    _save(fig, path)
    plt.close(fig)
    written.append(str(path))
    if figures is not None:
        figures[str(path)] = fig
    return written
