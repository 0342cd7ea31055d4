"""Simulate every reference case of the shared data with sparsetpc and compare with the stored outputs.

Cases: ``reference/*_fwd.npz`` (differentiable reference model → sparsetpc ``reference`` mode),
``reference/original/*_nd_njit.npz`` and ``reference/steep/*_nd_njit.npz`` (original larnd-sim kernels → ``hard``
mode; the ``*_stages.npz`` files hold the same readouts with every intermediate stage and are not cases).  Each case's ``input_segments`` rows (already x↔z swapped, columns named by
``input_fields``) are simulated as they are, with nominal module-0 parameters, float64, noise off.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from sparsetpc.exceptions import InputFormatError
from sparsetpc.io import write_json
from sparsetpc.segments import SEGMENT_DTYPE

from .compare import Tolerances, compare_tables, format_summary, json_ready
from .readers import PEDESTAL_INTEGER, PEDESTAL_RELAXED, HitTable, read_hits, write_sparsetpc_hits


#: folders of reference/ holding original larnd-sim kernel outputs (hard-mode cases); steep/ is the steep muon
#: with long pulses (10 readouts per pixel, resets and dead ticks), kept apart so that original/ lists as before
ORIGINAL_FOLDERS = ("original", "steep")


@dataclass
class Case:
    name: str
    path: Path
    mode: str          # sparsetpc mode reproducing it: "reference" (fwd) or "hard" (original)


def shared_data_dir(explicit=None) -> Optional[Path]:
    """The shared data directory: ``explicit`` (None if it is not a directory), else env
    ``SPARSETPC_SHARED_DATA``, else ``<repo>/../shared/data``; None when not found."""
    if explicit is not None:
        return Path(explicit) if Path(explicit).is_dir() else None
    for candidate in (os.environ.get("SPARSETPC_SHARED_DATA"),
                      Path(__file__).resolve().parents[1].parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def find_cases(shared) -> List[Case]:
    ref = Path(shared) / "reference"
    if not ref.is_dir():
        raise InputFormatError(f"{shared}: no reference/ directory (expected the shared data directory)")
    cases = [Case(p.name[:-len("_fwd.npz")] + "_fwd", p, "reference") for p in sorted(ref.glob("*_fwd.npz"))]
    for folder in ORIGINAL_FOLDERS:
        cases += [Case(p.name[:-len(".npz")], p, "hard") for p in sorted((ref / folder).glob("*_nd_njit.npz"))]
    if not cases:
        raise InputFormatError(f"{ref}: no *_fwd.npz or {{{','.join(ORIGINAL_FOLDERS)}}}/*_nd_njit.npz cases")
    return cases


def segment_rows(npz_path) -> np.ndarray:
    """``input_segments`` of a reference npz as a SEGMENT_DTYPE array (z = drift axis, as stored)."""
    with np.load(npz_path, allow_pickle=False) as data:
        if "input_segments" not in data.files:
            raise InputFormatError(f"{npz_path}: no input_segments array")
        stored = data["input_segments"]
        fields = [str(f) for f in data["input_fields"]] if "input_fields" in data.files else None
    rows = np.zeros(len(stored), dtype=SEGMENT_DTYPE)
    if stored.dtype.names:
        for name in SEGMENT_DTYPE.names:
            if name in stored.dtype.names:
                rows[name] = stored[name]
        return rows
    if fields is None or stored.ndim != 2 or stored.shape[1] != len(fields):
        raise InputFormatError(f"{npz_path}: input_segments {stored.shape} without matching input_fields")
    for k, name in enumerate(fields):
        if name in SEGMENT_DTYPE.names:
            rows[name] = stored[:, k]
    return rows


def simulator_available() -> bool:
    try:
        import sparsetpc as st
    except ImportError:
        return False
    return all(hasattr(st, name) for name in ("simulate", "Detector", "Params", "Segments"))


def run_case(case: Case, out_dir: Path, tolerances: Tolerances, memory_budget: str = "2GB",
             plots: bool = True, reference_time_axis: bool = False) -> dict:
    """Simulate one case and compare.  ``reference_time_axis``: for the differentiable reference's cases, evaluate
    the current on its per-segment time axis (a shift of up to half a tick per segment; see docs/deviations.md)."""
    import torch

    import sparsetpc as st
    ref = read_hits(case.path)
    rows = segment_rows(case.path)
    det = st.Detector.default()
    params = st.Params.nominal(dtype=torch.float64)
    segs = st.Segments.from_numpy(rows, dtype=torch.float64, swap=False)
    start = time.perf_counter()
    options = st.InductionOptions(reference_time_axis=reference_time_axis and case.mode == "reference")
    hits = st.simulate(segs, det, params, mode=case.mode, memory_budget=memory_budget, options=options)
    seconds = time.perf_counter() - start
    table = hits.to_numpy()
    pedestal = PEDESTAL_INTEGER if case.mode == "hard" else PEDESTAL_RELAXED
    hits_path = out_dir / f"{case.name}_hits.h5"
    write_sparsetpc_hits(hits_path, table, adc_pedestal=pedestal, mode=case.mode)
    ours = HitTable(hits=table, source=str(hits_path), kind="sparsetpc", adc_pedestal=pedestal,
                    info={"mode": case.mode})
    summary = compare_tables(ref, ours, tolerances)
    if plots:
        from .plots import plot_comparison
        summary["plots"] = plot_comparison(ref, ours, summary, out_dir / case.name)
    summary["case"] = case.name
    summary["mode"] = case.mode
    summary["n_segments"] = int(len(rows))
    summary["simulate_seconds"] = seconds
    return summary


def run_reference(shared=None, out="validation_out", tolerances: Optional[Tolerances] = None,
                  memory_budget: str = "2GB", plots: bool = True, cases: Optional[List[str]] = None,
                  echo=print, reference_time_axis: bool = False) -> List[dict]:
    """Run every case (or those named in ``cases``); write ``<out>/<case>.json`` and ``<out>/summary.json``."""
    shared_dir = shared_data_dir(shared)
    if shared_dir is None:
        raise InputFormatError(f"shared data not found (tried {shared!r}, $SPARSETPC_SHARED_DATA, <repo>/../shared/data)")
    selected = find_cases(shared_dir)
    if not simulator_available():
        raise RuntimeError("simulator not available: sparsetpc.simulate is missing")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tolerances = tolerances or Tolerances()
    if cases:
        unknown = sorted(set(cases) - {c.name for c in selected})
        if unknown:
            raise InputFormatError(f"unknown case(s) {unknown}; known: {[c.name for c in selected]}")
        selected = [c for c in selected if c.name in cases]
    results = []
    for case in selected:
        summary = run_case(case, out_dir, tolerances, memory_budget, plots, reference_time_axis)
        write_json(out_dir / f"{case.name}.json", json_ready(summary))
        echo(f"== {case.name} ({case.mode}, {summary['n_segments']} segments, {summary['simulate_seconds']:.2f} s)")
        echo(format_summary(summary))
        results.append(json_ready(summary))
    overview = [{k: r[k] for k in ("case", "mode", "matched", "ref_only", "ours_only", "mean_abs_dadc", "max_abs_dadc",
                                   "mean_abs_dt", "charge_ratio", "within_tolerance", "simulate_seconds")}
                for r in results]
    write_json(out_dir / "summary.json", overview)
    return results
