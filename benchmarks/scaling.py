"""Scaling benchmark: time and peak memory versus a segment's drift extent Δz and cot θ.

Each configuration runs in a fresh Python process (peak RSS = ru_maxrss of that process, which includes the
~0.3 GB of the torch import; the baseline after import is reported too).  Prints a table and writes JSON.

    python benchmarks/scaling.py                       # default sweep (~5 min on 2 cores)
    python benchmarks/scaling.py --quick               # a few points
    python benchmarks/scaling.py --device cuda         # on a GPU (peak CUDA memory reported as well)

Targets (issue): 10 cm Δz at cot θ = 20, forward+backward, below 1 GB; peak memory at cot θ = 50 at most twice
that at cot θ = 0.3 for the same Δz; mixed-sample track 4 forward in under 1 s.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _segment_rows(dz: float, cot: float, dedx: float = 2.1):
    """One segment (sparsetpc frame, z = drift) with drift extent dz and cot θ = dz / |Δxy|, in plane 0,
    starting 0.24 cm from the cathode, so that Δz = 29 cm still ends 1 cm before the anode."""
    import numpy as np
    from sparsetpc.segments import SEGMENT_DTYPE
    dxy = dz / cot
    z_start, z_end = -0.4, -0.4 - dz
    angle = math.radians(60.0)           # Δx = ½Δxy, Δy = 0.87Δxy: up to 97 cm of Δxy fits in the 62×124 cm plane
    start = np.array([-29.0, -80.0, z_start])
    end = start + np.array([dxy * math.cos(angle), dxy * math.sin(angle), z_end - z_start])
    rows = np.zeros(1, dtype=SEGMENT_DTYPE)
    length = float(np.linalg.norm(end - start))
    rows["eventID"], rows["trackID"], rows["pdgId"] = 0, 1, 13
    rows["dEdx"], rows["dx"], rows["dE"] = dedx, length, dedx * length
    for axis, name in enumerate("xyz"):
        rows[name + "_start"], rows[name + "_end"] = start[axis], end[axis]
        rows[name] = 0.5 * (start[axis] + end[axis])
    return rows


def _track_rows(case: str):
    if case.startswith("mixed_trk") or case == "test_segment":
        shared = Path(os.environ.get("SPARSETPC_SHARED_DATA", REPO.parent / "shared" / "data"))
        from validation.run_reference import segment_rows
        return segment_rows(shared / "reference" / f"{case}_fwd.npz")
    from sparsetpc.example import generate
    from sparsetpc.segments import swap_xz
    return swap_xz(generate(1, 3, seed=int(case.split("_")[-1])))


def run_one(config: dict) -> dict:
    """Run one configuration in this process and return its figures."""
    import resource
    import torch
    import sparsetpc as st
    torch.set_num_threads(int(config.get("threads", 1)))
    dtype = getattr(torch, config["dtype"])
    device = config.get("device", "cpu")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = _segment_rows(config["dz"], config["cot"]) if config["kind"] == "segment" else _track_rows(config["case"])
    segments = st.Segments.from_numpy(rows, dtype=dtype, device=device, swap=False)
    detector = st.Detector.default()
    names = ("Ab", "kb", "eField", "vdrift", "lifetime", "long_diff", "tran_diff", "MeVToElectrons")
    backward = config["mode"] == "fwd+bwd"

    def once():
        p = st.Params.nominal(dtype=dtype, device=device)
        if backward:
            p.requires_grad_(names)
        with torch.set_grad_enabled(backward):
            h = st.simulate(segments, detector, p, memory_budget=config.get("budget", "500MB"), return_waveforms=True)
            if backward:
                (h.adc.sum() + h.t.sum()).backward()
        return h, p

    # cold run (first-call initialisation of kernels and autograd), then the timed warm run
    cold_start = time.perf_counter()
    once()
    cold = time.perf_counter() - cold_start
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    hits, params = once()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out = dict(config)
    out.update(time_s=elapsed, cold_run_s=cold, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               rss_after_import_mb=rss_before, n_hits=len(hits), n_pixels=int(hits.pixel_table.shape[0]),
               waveform_ticks=int(hits.waveforms.width.sum()))
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if backward:
        out["grad_finite"] = all(bool(torch.isfinite(getattr(params, n).grad)) for n in names)
    return out


def run_fresh(config: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True,
                          env=env, timeout=1800)
    if proc.returncode != 0:
        return dict(config, error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sweep(args) -> list:
    configs = []
    dzs = [0.5, 2.0, 10.0, 29.0] if not args.quick else [0.5, 10.0]
    cots = [0.3, 1.0, 5.0, 20.0, 50.0] if not args.quick else [0.3, 20.0, 50.0]
    for dtype in args.dtypes:
        for mode in ("fwd", "fwd+bwd"):
            for dz in dzs:
                for cot in cots:
                    configs.append(dict(kind="segment", dz=dz, cot=cot, dtype=dtype, mode=mode, device=args.device,
                                        threads=args.threads))
    for case in args.tracks:
        for mode in ("fwd", "fwd+bwd"):
            configs.append(dict(kind="track", case=case, dtype="float64", mode=mode, device=args.device,
                                threads=args.threads))
    results = []
    for config in configs:
        result = run_fresh(config)
        results.append(result)
        label = (f"Δz {config['dz']:5.1f} cm cot {config['cot']:5.1f}" if config["kind"] == "segment"
                 else f"track {config['case']:<14}")
        if "error" in result:
            print(f"{label} {config['dtype']:8s} {config['mode']:8s} ERROR {result['error']}", flush=True)
        else:
            extra = f" cuda {result['peak_cuda_mb']:8.1f} MB" if "peak_cuda_mb" in result else ""
            print(f"{label} {config['dtype']:8s} {config['mode']:8s} {result['time_s']:8.3f} s  peak RSS "
                  f"{result['peak_rss_mb']:7.0f} MB (after import {result['rss_after_import_mb']:4.0f}){extra}  "
                  f"pixels {result['n_pixels']:4d} hits {result['n_hits']:4d}", flush=True)
    return results


def targets(results: list) -> dict:
    def find(**kw):
        for r in results:
            if all(r.get(k) == v for k, v in kw.items()) and "error" not in r:
                return r
        return None
    out = {}
    r = find(kind="segment", dz=10.0, cot=20.0, dtype="float64", mode="fwd+bwd")
    if r:
        out["dz10_cot20_fwdbwd_f64_peak_rss_mb"] = r["peak_rss_mb"]
        out["dz10_cot20_fwdbwd_below_1GB"] = r["peak_rss_mb"] < 1024
    ratios = {}
    for dz in (0.5, 2.0, 10.0, 29.0):
        lo = find(kind="segment", dz=dz, cot=0.3, dtype="float64", mode="fwd+bwd")
        hi = find(kind="segment", dz=dz, cot=50.0, dtype="float64", mode="fwd+bwd")
        if lo and hi:
            ratios[str(dz)] = hi["peak_rss_mb"] / lo["peak_rss_mb"]
    if ratios:
        out["peak_ratio_cot50_over_cot0.3"] = ratios
        out["peak_ratio_at_most_2"] = all(v <= 2.0 for v in ratios.values())
    r = find(kind="track", case="mixed_trk4", mode="fwd")
    if r:
        out["mixed_trk4_fwd_time_s"] = r["time_s"]
        out["mixed_trk4_fwd_under_1s"] = r["time_s"] < 1.0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on 2 cores)")
    parser.add_argument("--tracks", nargs="*", default=["mixed_trk0", "mixed_trk1", "mixed_trk4", "generated_1"])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaling.json"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    results = sweep(args)
    summary = {"results": results, "targets": targets(results), "python": sys.version.split()[0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out)
    print(json.dumps(summary["targets"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
