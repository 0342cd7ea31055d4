"""Field-response look-up tables vs the analytic pad response: time and peak memory (issue #12).

Cases: the mixed-sample track 4 (shared reference data) and one 10 cm-Δz segment at cot θ = 20; responses: the
analytic mode and two larnd-sim-format tables (0.04434 cm × 0.1 µs bins, as larnd-sim's): the weighting-field model
with 2 pitches of neighbours (25 × 25 × 127) and the analytic pad response, collection only (5 × 5 × 270); forward
and forward + backward (8 parameters).  Each configuration is a fresh Python process (peak RSS = its ru_maxrss, the
torch import included; time: the fastest of ``--repeats`` runs after a warm-up).  Prints a table, writes
benchmarks/results/field_response.json.

    python benchmarks/field_response.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def run_one(config: dict) -> dict:
    import resource
    import torch
    import sparsetpc as st
    from scaling import _segment_rows, _track_rows
    from sparsetpc.field_response import load_response_table
    torch.set_num_threads(1)
    rows = _segment_rows(10.0, 20.0) if config["case"] == "segment_dz10_cot20" else _track_rows(config["case"])
    segments = st.Segments.from_numpy(rows, dtype=torch.float64, swap=False)
    detector = st.Detector.default()
    response = "analytic" if config["response"] == "analytic" else load_response_table(
        config["table"], time_window=config["time_window"])
    backward = config["mode"] == "fwd+bwd"
    names = ("Ab", "kb", "eField", "vdrift", "lifetime", "long_diff", "tran_diff", "MeVToElectrons")

    def once():
        params = st.Params.nominal(dtype=torch.float64)
        if backward:
            params.requires_grad_(names)
        with torch.set_grad_enabled(backward):
            hits = st.simulate(segments, detector, params, memory_budget="500MB", response=response)
            if backward:
                (hits.adc.sum() + hits.t.sum()).backward()
        return hits

    once()                                           # warm-up (allocator, first-call costs)
    elapsed = []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        hits = once()
        elapsed.append(time.perf_counter() - start)
    return {**config, "seconds": min(elapsed), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "n_hits": len(hits)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "field_response.json"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (the fastest counts)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    from sparsetpc.field_response import (analytic_response_table, save_response_table,
                                          weighting_field_response_table)
    tables = {"weighting_field": ("weighting-field model, 2 pitches of neighbours",
                                  weighting_field_response_table(neighbours=2, gap=2.0)),
              "collection": ("analytic pad response, collection only", analytic_response_table())}
    results = []
    with tempfile.TemporaryDirectory(prefix="field_response_bench.") as directory:
        paths = {name: save_response_table(table, Path(directory) / f"{name}.npy")
                 for name, (_, table) in tables.items()}
        for case in ("mixed_trk4", "segment_dz10_cot20"):
            for mode in ("fwd", "fwd+bwd"):
                for response in ("analytic", *tables):
                    config = {"case": case, "mode": mode, "response": response, "repeats": args.repeats}
                    if response in tables:
                        config.update(table=str(paths[response]), time_window=tables[response][1].time_window)
                    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True,
                                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                    if done.returncode != 0:
                        raise SystemExit(f"{case} {mode} {response} failed:\n{done.stderr}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    result.pop("table", None)                # a temporary file
                    results.append(result)
                    print(f"{case:20s} {mode:8s} {response:16s} {result['seconds']:8.2f} s  "
                          f"{result['peak_rss_gb']:6.2f} GB  {result['n_hits']} hits", flush=True)
    print("\nLUT / analytic:")
    for name in tables:
        for case in ("mixed_trk4", "segment_dz10_cot20"):
            for mode in ("fwd", "fwd+bwd"):
                a, t = (next(r for r in results if r["case"] == case and r["mode"] == mode and r["response"] == kind)
                        for kind in ("analytic", name))
                print(f"{name:16s} {case:20s} {mode:8s} time {t['seconds'] / a['seconds']:5.2f}x  "
                      f"peak RSS {t['peak_rss_gb'] / a['peak_rss_gb']:5.2f}x")
    report = {"tables": {name: {"model": model, "shape": list(table.shape), "bin_size_cm": table.bin_size,
                                "sampling_us": table.sampling, "time_window_us": table.time_window}
                         for name, (model, table) in tables.items()},
              "machine": {"threads": 1, "dtype": "float64", "device": "cpu"},
              "timing": f"fastest of {args.repeats} runs after a warm-up, memory_budget 500MB", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
