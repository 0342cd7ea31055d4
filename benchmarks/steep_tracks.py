"""Benchmark: one forward + backward of the readout likelihood per straight muon, versus cot θ and drift extent.

For cot θ ∈ {0.3, 1, 5, 20, 50} × drift extent Δz ∈ {5, 15, 28} cm, a straight muon (dE/dx 2.1 MeV/cm, cut into
equal segments of at most 0.4 cm) in pixel plane 0 of module 0, its drift coordinate from 0.9 cm below the
cathode towards the anode (28 cm ends 1.5 cm before the anode: one drift volume), its transverse extent Δz/cot θ
along a direction 60° from the x axis from (x, y) = (−30.5, −83.3) cm.  The longest, cot θ = 0.3 at 28 cm, is
93.3 cm across (97.4 cm long) and ends at (16.2, −2.5) cm, inside the 62 × 124 cm plane: nothing is clipped
(each run checks that no segment was skipped and records the end point).

Per configuration, in a fresh Python process (one torch thread unless ``--threads``):
1. the target: the same track simulated in hard mode with noise (seed 1), as data;
2. ONE relaxed forward (``FrontEnd(clock_phases=K)``, K = 3 the default and K = 1) with the seven physics
   parameters (Ab, kb, eField, vdrift, lifetime, tran_diff, long_diff) requiring gradients, the readout likelihood
   (``calibration.losses.readout_nll``) against the target, and its backward.
Reported: wall time of the target, forward (simulation + likelihood) and backward; the whole-process peak RSS
(``ru_maxrss``) and the RSS right after importing torch and sparsetpc (the baseline, ≈ 0.3 GB, that any run
pays; also after torch alone); readouts, pixels, the likelihood's value and whether every gradient is finite.  The run is the first
call in its process (cold: first-call initialisation included), as a fit's first evaluation is; a second,
warm forward + backward is timed after it (``warm_forward_backward_s``; the peak RSS is taken before it).

The dense reference model's memory, from the law measured in the issue on single segments (forward +
backward): peak ≈ 0.25 GB + 19.4 · 4 B · T · 900 · N_z with T ≈ 63·Δz[cm] + 133 ticks and
N_z ≈ max(30, 25·cot θ + 4).  The law is per segment (its tensors are [segments, pixels, T, 30 × 30 × N_z] for
the batch being evaluated), so for a track of n segments of drift extent δz = Δz/n each we give
* ``dense_per_segment_gb``: 0.25 GB + the law at δz — the least the dense model needs, evaluating the track's
  segments one at a time (sequentially; batching k segments multiplies the second term by k);
* ``dense_one_segment_gb``: 0.25 GB + the law at the whole Δz — the track as ONE segment, the case the issue's
  measurements describe (a 16 cm drift at cot θ = 8: 16 GB); edep-sim never steps that long, but it shows how
  the dense memory grows with drift extent × cot θ where sparsetpc's does not.

    python benchmarks/steep_tracks.py                        # the 15 × 2 sweep
    python benchmarks/steep_tracks.py --quick                # 3 configurations
    python benchmarks/steep_tracks.py --memory-budget 500MB  # sparsetpc's chunking budget (default 1GB)
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

from calibration._io import write_json

REPO = Path(__file__).resolve().parents[1]
COTS = (0.3, 1.0, 5.0, 20.0, 50.0)
EXTENTS = (5.0, 15.0, 28.0)
QUICK = ((0.3, 5.0), (5.0, 15.0), (50.0, 28.0))
NAMES = ("Ab", "kb", "eField", "vdrift", "lifetime", "tran_diff", "long_diff")
STEP = 0.4            # cm, longest segment
DEDX = 2.1            # MeV/cm, minimum-ionising muon
Z_START = -0.9        # cm: 0.74 cm below the cathode of plane 0 (z = −0.159), drifting towards the anode (−30.4)
XY_START = (-30.5, -83.3)
ANGLE = math.radians(60.0)


def dense_law_gb(drift_extent_cm: float, cot_theta: float) -> float:
    """The issue's dense-reference peak [GB] for ONE segment of drift extent ``drift_extent_cm`` at ``cot_theta``."""
    ticks = 63.0 * drift_extent_cm + 133.0
    n_z = max(30.0, 25.0 * cot_theta + 4.0)
    return 0.25 + 19.4 * 4.0 * ticks * 900.0 * n_z / 1e9


def track_rows(drift_extent: float, cot_theta: float):
    """Segments (sparsetpc frame, z = drift) of the straight muon of a configuration, and its end point."""
    import numpy as np
    from sparsetpc.segments import SEGMENT_DTYPE
    transverse = drift_extent / cot_theta
    start = np.array([XY_START[0], XY_START[1], Z_START])
    end = start + np.array([transverse * math.cos(ANGLE), transverse * math.sin(ANGLE), -drift_extent])
    length = float(np.linalg.norm(end - start))
    n = max(1, int(math.ceil(length / STEP - 1e-9)))
    points = start[None, :] + np.linspace(0.0, 1.0, n + 1)[:, None] * (end - start)[None, :]
    rows = np.zeros(n, dtype=SEGMENT_DTYPE)
    dx = np.linalg.norm(np.diff(points, axis=0), axis=1)
    rows["eventID"], rows["trackID"], rows["pdgId"] = 0, 1, 13
    rows["dEdx"], rows["dx"], rows["dE"] = DEDX, dx, DEDX * dx
    for axis, name in enumerate("xyz"):
        a, b = points[:-1, axis], points[1:, axis]
        rows[name + "_start"], rows[name + "_end"], rows[name] = a, b, 0.5 * (a + b)
    return rows, end, length


def run_one(config: dict) -> dict:
    """One configuration in this process."""
    import resource
    import warnings
    import torch
    rss_torch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # MB (Linux: kB)
    import sparsetpc as st
    from calibration.losses import readout_nll
    from calibration.fisher import hits_pixel_keys
    from sparsetpc.electronics import FrontEnd
    torch.set_num_threads(int(config.get("threads", 1)))
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # MB (Linux: kB)
    dtype, device = getattr(torch, config["dtype"]), config["device"]
    rows, end, length = track_rows(config["drift_extent_cm"], config["cot_theta"])
    segments = st.Segments.from_numpy(rows, dtype=dtype, device=device, swap=False)
    detector = st.Detector.default()
    budget = config["memory_budget"]
    caught = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        with torch.no_grad():
            target = st.simulate(segments, detector, st.Params.nominal(dtype=dtype, device=device), mode="hard",
                                 noise=True, seed=1, memory_budget=budget)
        target_s = time.perf_counter() - start
        params = st.Params.nominal(dtype=dtype, device=device).requires_grad_(NAMES)
        start = time.perf_counter()
        guess = st.simulate(segments, detector, params, mode="relaxed", memory_budget=budget,
                            front_end=FrontEnd(tick=detector.tick, clock_phases=config["clock_phases"]))
        nll, summary = readout_nll(hits_pixel_keys(guess), guess.readout.long(), guess.weight, guess.adc, guess.t,
                                   guess.adc_variance, guess.t_variance, hits_pixel_keys(target),
                                   target.readout.long(), target.adc, target.t, guess.adc_t_covariance,
                                   guess.adc_t_previous_covariance, guess.t_previous_covariance)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        nll.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        backward_s = time.perf_counter() - start
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # a second, warm forward + backward (timing only: first-call initialisation excluded)
        warm = st.Params.nominal(dtype=dtype, device=device).requires_grad_(NAMES)
        start = time.perf_counter()
        again = st.simulate(segments, detector, warm, mode="relaxed", memory_budget=budget,
                            front_end=FrontEnd(tick=detector.tick, clock_phases=config["clock_phases"]))
        value, _ = readout_nll(hits_pixel_keys(again), again.readout.long(), again.weight, again.adc, again.t,
                               again.adc_variance, again.t_variance, hits_pixel_keys(target), target.readout.long(),
                               target.adc, target.t, again.adc_t_covariance, again.adc_t_previous_covariance,
                               again.t_previous_covariance)
        value.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        warm_s = time.perf_counter() - start
    out = dict(config)
    out.update(
        length_cm=length, segments=len(rows), end_point_cm=[float(v) for v in end],
        skipped_segments=int(guess.n_skipped_segments), target_s=target_s, forward_s=forward_s,
        backward_s=backward_s, forward_backward_s=forward_s + backward_s, warm_forward_backward_s=warm_s,
        peak_rss_mb=peak_rss, peak_rss_with_warm_run_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_after_import_mb=rss_import, rss_after_torch_import_mb=rss_torch,
        guess_readouts=len(guess), expected_readouts=float(guess.weight.detach().sum()), target_readouts=len(target),
        pixels=int(guess.pixel_table.shape[0]), nll=float(nll.detach()),
        capped_pixels_expected=float(guess.n_capped_pixels), capped_pixels_target=float(target.n_capped_pixels),
        grad_finite=all(bool(torch.isfinite(getattr(params, n).grad)) for n in NAMES),
        warnings=sorted({str(w.message)[:200] for w in caught}),
        dense_per_segment_gb=dense_law_gb(config["drift_extent_cm"] / len(rows), config["cot_theta"]),
        dense_one_segment_gb=dense_law_gb(config["drift_extent_cm"], config["cot_theta"]))
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def run_fresh(config: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", str(config.get("threads", 1)))
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(config, error=f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return dict(config, error=lines[-1] if lines else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADER = (f"{'cot θ':>6} {'Δz cm':>6} {'K':>2} {'L cm':>5} {'segs':>4} {'pix':>4} {'reads':>5} {'fwd s':>6} "
          f"{'bwd s':>6} {'warm s':>6} {'peak RSS MB':>11} {'import MB':>9} {'dense/seg GB':>12} {'dense 1-seg GB':>14}")


def line(r: dict) -> str:
    head = f"{r['cot_theta']:6.3g} {r['drift_extent_cm']:6.1f} {r['clock_phases']:2d}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    return (f"{head} {r['length_cm']:5.1f} {r['segments']:4d} {r['pixels']:4d} {r['guess_readouts']:5d} "
            f"{r['forward_s']:6.2f} {r['backward_s']:6.2f} {r['warm_forward_backward_s']:6.2f} {r['peak_rss_mb']:11.0f} {r['rss_after_import_mb']:9.0f} "
            f"{r['dense_per_segment_gb']:12.2f} {r['dense_one_segment_gb']:14.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="3 configurations")
    parser.add_argument("--memory-budget", default="1GB", help="sparsetpc's memory budget per chunk (default 1GB)")
    parser.add_argument("--clock-phases", type=int, nargs="+", default=[3, 1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "steep_tracks.json"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    grid = QUICK if args.quick else [(c, e) for e in EXTENTS for c in COTS]
    started = time.perf_counter()
    results = []
    print(HEADER, flush=True)
    for cot, extent in grid:
        for phases in args.clock_phases:
            config = dict(cot_theta=cot, drift_extent_cm=extent, clock_phases=phases, memory_budget=args.memory_budget,
                          device=args.device, dtype=args.dtype, threads=args.threads)
            result = run_fresh(config, args.timeout)
            results.append(result)
            print(line(result), flush=True)
    out = {"results": results, "wall_s": time.perf_counter() - started, "python": sys.version.split()[0],
           "command": " ".join(sys.argv), "dense_law": "0.25 GB + 19.4*4 B*T*900*N_z, T = 63*dz+133, "
           "N_z = max(30, 25*cot+4); per segment (dz = drift extent / segments) and for the track as one segment"}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)                      # atomic
    print(f"wrote {path} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
