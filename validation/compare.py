"""Match two hit tables readout by readout and summarise the differences.

Matching: readouts are grouped by pixel (event, plane, ix, iy).  Where a pixel has as many readouts on both
sides they pair in readout order; otherwise they pair greedily by nearest time (closest pair first), and
the leftovers count as ``ref_only`` / ``ours_only``.  Residuals are ours − reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from sparsetpc.io import strict_json

from .readers import HitTable


@dataclass
class Tolerances:
    adc: float = 0.05          # mean |ΔADC| [counts] over matched readouts
    time: float = 0.05         # mean |Δt| [µs] over matched readouts
    unmatched: float = 0.0     # (ref_only + ours_only) / (readouts of both sides together)

    def __post_init__(self):
        for name in ("adc", "time", "unmatched"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"tolerance {name} must be a finite non-negative number, got {value}")


@dataclass
class Match:
    ref_index: np.ndarray      # rows of ref.hits
    ours_index: np.ndarray     # rows of ours.hits (same length)
    ref_only: np.ndarray       # rows of ref.hits without partner
    ours_only: np.ndarray


def pixel_keys(hits: np.ndarray) -> np.ndarray:
    """One int64 per (event, plane, ix, iy)."""
    ev = hits["event_id"].astype(np.int64)
    return ((ev * 16 + hits["pixel_plane"].astype(np.int64)) * 4096 + hits["pixel_ix"].astype(np.int64)) * 4096 \
        + hits["pixel_iy"].astype(np.int64)


def match_hits(ref: np.ndarray, ours: np.ndarray) -> Match:
    """Pair readouts of two HIT_DTYPE arrays (see module docstring)."""
    kr, ko = pixel_keys(ref), pixel_keys(ours)
    order_r = np.lexsort((ref["t"], ref["readout"], kr))
    order_o = np.lexsort((ours["t"], ours["readout"], ko))
    kr_s, ko_s = kr[order_r], ko[order_o]
    ukr, start_r, count_r = np.unique(kr_s, return_index=True, return_counts=True)
    uko, start_o, count_o = np.unique(ko_s, return_index=True, return_counts=True)
    common, ir, io = np.intersect1d(ukr, uko, assume_unique=True, return_indices=True)
    pairs_r, pairs_o = [], []
    equal = count_r[ir] == count_o[io]
    # equal counts: pair in readout order (vectorised)
    if equal.any():
        cnt = count_r[ir][equal]
        offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        pairs_r.append(order_r[np.repeat(start_r[ir][equal], cnt) + offs])
        pairs_o.append(order_o[np.repeat(start_o[io][equal], cnt) + offs])
    # unequal counts: greedy nearest time
    for c in np.flatnonzero(~equal):
        rows_r = order_r[start_r[ir[c]]:start_r[ir[c]] + count_r[ir[c]]]
        rows_o = order_o[start_o[io[c]]:start_o[io[c]] + count_o[io[c]]]
        dt = np.abs(ref["t"][rows_r][:, None] - ours["t"][rows_o][None, :])
        used_r, used_o = set(), set()
        for flat in np.argsort(dt, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(rows_o))
            if i in used_r or j in used_o:
                continue
            used_r.add(i)
            used_o.add(j)
            pairs_r.append(rows_r[i:i + 1])
            pairs_o.append(rows_o[j:j + 1])
            if len(used_r) == min(len(rows_r), len(rows_o)):
                break
    ref_index = np.concatenate(pairs_r) if pairs_r else np.zeros(0, np.int64)
    ours_index = np.concatenate(pairs_o) if pairs_o else np.zeros(0, np.int64)
    ref_only = np.setdiff1d(np.arange(len(ref)), ref_index)
    ours_only = np.setdiff1d(np.arange(len(ours)), ours_index)
    return Match(ref_index.astype(np.int64), ours_index.astype(np.int64), ref_only, ours_only)


def _stats(values: np.ndarray) -> Dict[str, Optional[float]]:
    if len(values) == 0:
        return {"mean": None, "rms": None, "mean_abs": None, "max_abs": None}
    return {"mean": float(values.mean()), "rms": float(np.sqrt((values ** 2).mean())),
            "mean_abs": float(np.abs(values).mean()), "max_abs": float(np.abs(values).max())}


def restrict_to_written_channels(table: HitTable, layout) -> Tuple[HitTable, int]:
    """Drop readouts larnd-sim's packet writer would not write (unconnected chips, disabled edge channels).

    Returns the reduced table and the number of readouts dropped.
    """
    from sparsetpc.packets import larndsim_disabled
    h = table.hits
    g, _, chip, channel = layout.pixel_to_channel(h["pixel_plane"], h["pixel_ix"], h["pixel_iy"])
    keep = (g >= 0) & ~larndsim_disabled(chip, channel)
    dropped = int((~keep).sum())
    reduced = HitTable(hits=h[keep], source=table.source, kind=table.kind, adc_pedestal=table.adc_pedestal,
                       time_axis=table.time_axis, info={**table.info, "dropped_unwritten_channels": dropped})
    return reduced, dropped


def compare_tables(ref: HitTable, ours: HitTable, tolerances: Optional[Tolerances] = None) -> dict:
    """Summary of the differences between two hit tables (JSON-ready) plus the match (key ``_match``)."""
    tol = tolerances or Tolerances()
    if ref.time_axis != ours.time_axis:
        raise ValueError(f"time axes differ ({ref.time_axis} vs {ours.time_axis}); read both with the same option")
    m = match_hits(ref.hits, ours.hits)
    dadc = ours.hits["adc"][m.ours_index] - ref.hits["adc"][m.ref_index]
    dt = ours.hits["t"][m.ours_index] - ref.hits["t"][m.ref_index]
    kr, ko = pixel_keys(ref.hits), pixel_keys(ours.hits)
    ur, uo = np.unique(kr), np.unique(ko)
    events = np.union1d(ref.events(), ours.events())
    charge_ratio = {}
    charge = {}
    for ev in events:
        q_ref = float((ref.hits["adc"][ref.hits["event_id"] == ev] - ref.adc_pedestal).sum())
        q_ours = float((ours.hits["adc"][ours.hits["event_id"] == ev] - ours.adc_pedestal).sum())
        charge[str(int(ev))] = {"ref": q_ref, "ours": q_ours}
        charge_ratio[str(int(ev))] = q_ours / q_ref if q_ref != 0 else None
    a, t = _stats(dadc), _stats(dt)
    n_total = len(ref.hits) + len(ours.hits)
    unmatched_fraction = (len(m.ref_only) + len(m.ours_only)) / n_total if n_total else 0.0
    ratios = [r for r in charge_ratio.values() if r is not None]
    summary = {
        "ref": {"source": ref.source, "kind": ref.kind, "readouts": len(ref.hits), "adc_pedestal": ref.adc_pedestal,
                "info": ref.info},
        "ours": {"source": ours.source, "kind": ours.kind, "readouts": len(ours.hits),
                 "adc_pedestal": ours.adc_pedestal, "info": ours.info},
        "time_axis": ref.time_axis,
        "events": [int(e) for e in events],
        "pixels_both": int(len(np.intersect1d(ur, uo))),
        "pixels_ref_only": int(len(np.setdiff1d(ur, uo))),
        "pixels_ours_only": int(len(np.setdiff1d(uo, ur))),
        "matched": int(len(m.ref_index)),
        "ref_only": int(len(m.ref_only)),
        "ours_only": int(len(m.ours_only)),
        "unmatched_fraction": unmatched_fraction,
        "mean_dadc": a["mean"], "rms_dadc": a["rms"], "mean_abs_dadc": a["mean_abs"], "max_abs_dadc": a["max_abs"],
        "mean_dt": t["mean"], "rms_dt": t["rms"], "mean_abs_dt": t["mean_abs"], "max_abs_dt": t["max_abs"],
        "charge_ratio": charge_ratio,
        "charge_ratio_min": min(ratios) if ratios else None,
        "charge_ratio_max": max(ratios) if ratios else None,
        "charge": charge,
        "tolerances": {"adc": tol.adc, "time": tol.time, "unmatched": tol.unmatched},
    }
    failures = []
    if a["mean_abs"] is not None and a["mean_abs"] > tol.adc:
        failures.append(f"mean |dADC| {a['mean_abs']:.4g} > {tol.adc}")
    if t["mean_abs"] is not None and t["mean_abs"] > tol.time:
        failures.append(f"mean |dt| {t['mean_abs']:.4g} us > {tol.time}")
    if unmatched_fraction > tol.unmatched:
        failures.append(f"unmatched fraction {unmatched_fraction:.4g} > {tol.unmatched} "
                        f"({len(m.ref_only)} ref-only, {len(m.ours_only)} ours-only readouts)")
    if len(m.ref_index) == 0:
        failures.append("no readout matched")
    summary["within_tolerance"] = not failures
    summary["failures"] = failures
    summary["_match"] = m
    return summary


def format_summary(summary: dict) -> str:
    """Human-readable lines of a :func:`compare_tables` summary."""
    def f(v, spec=".4g"):
        return "n/a" if v is None else format(v, spec)
    lines = [
        f"ref : {summary['ref']['source']} ({summary['ref']['kind']}, {summary['ref']['readouts']} readouts)",
        f"ours: {summary['ours']['source']} ({summary['ours']['kind']}, {summary['ours']['readouts']} readouts)",
        f"pixels: {summary['pixels_both']} in both, {summary['pixels_ref_only']} ref only, "
        f"{summary['pixels_ours_only']} ours only",
        f"readouts: {summary['matched']} matched, {summary['ref_only']} ref only, {summary['ours_only']} ours only",
        f"dADC (ours-ref): mean {f(summary['mean_dadc'])}, rms {f(summary['rms_dadc'])}, "
        f"max |.| {f(summary['max_abs_dadc'])}",
        f"dt [us]: mean {f(summary['mean_dt'])}, rms {f(summary['rms_dt'])}, max |.| {f(summary['max_abs_dt'])}",
        "charge ratio ours/ref per event: " + ", ".join(f"{k}: {f(v)}" for k, v in summary["charge_ratio"].items()),
        ("WITHIN TOLERANCE" if summary["within_tolerance"] else "BEYOND TOLERANCE: " + "; ".join(summary["failures"])),
    ]
    return "\n".join(lines)


def json_ready(summary: dict) -> dict:
    """The summary without its private entries (``_match``), with every non-finite number as ``None``."""
    return strict_json({k: v for k, v in summary.items() if not k.startswith("_")})
