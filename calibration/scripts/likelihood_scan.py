"""One-dimensional scans of the readout likelihood around the truth, one parameter at a time.

    python -m calibration.scripts.likelihood_scan --input tracks.h5 --events 5 51 --out scans/ \\
        [--params Ab kb eField vdrift lifetime tran_diff long_diff] [--points 11] [--span 0.1] [--seed 1]

The target is data-like: the hard front end with noise (seed ``--seed``) at the nominal parameters; the model is
the relaxed front end (``--clock-phases``, default 1).  Each parameter is scanned over nominal·(1 ± span)
(clipped to its documented range) with the others at nominal; eField with the vdrift link.  Writes
``likelihood_scan.json`` (values, −log L, the scan's minimum, whether the scan is unimodal: decreasing then
increasing, allowing noise below ``--tolerance`` in −log L) and ``likelihood_scan.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch


def unimodal(values: np.ndarray, tolerance: float) -> bool:
    """Decreasing up to the minimum and increasing after it, ignoring wiggles smaller than ``tolerance``."""
    i = int(np.argmin(values))
    left, right = np.diff(values[: i + 1]), np.diff(values[i:])
    return bool(np.all(left <= tolerance) and np.all(right >= -tolerance))


def main(argv=None) -> int:
    import sparsetpc as st
    from sparsetpc.electronics import FrontEnd
    from sparsetpc.params import RANGES
    from sparsetpc.io import write_json
    from calibration.losses import HitsLoss
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--events", type=int, nargs="+", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--params", nargs="+", default=["Ab", "kb", "eField", "vdrift", "lifetime", "tran_diff", "long_diff"])
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--span", type=float, default=0.1, help="relative half-width of each scan")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clock-phases", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.05, help="−log L wiggle ignored by the unimodality test")
    p.add_argument("--no-cuts", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    segments = st.load_segments(args.input, cuts=st.Cuts.none() if args.no_cuts else None, events=args.events)
    front_end = FrontEnd(clock_phases=args.clock_phases)
    loss = HitsLoss("likelihood")
    os.makedirs(args.out, exist_ok=True)
    report = {"input": os.path.abspath(args.input), "events": args.events, "seed": args.seed,
              "clock_phases": args.clock_phases, "scans": {}}
    t0 = time.perf_counter()
    with torch.no_grad():
        target = st.simulate(segments, params=st.Params.nominal(), mode="hard", noise=True, seed=args.seed)
        for name in args.params:
            base = st.Params.nominal(link_vdrift_efield=(name == "eField"))
            nominal, lo, hi = RANGES[name][:3]
            values = np.linspace(max(lo, nominal * (1 - args.span)), min(hi, nominal * (1 + args.span)), args.points)
            nll = np.array([float(loss(st.simulate(segments, params=base.replace(**{name: float(v)}),
                                                   front_end=front_end), target)) for v in values])
            report["scans"][name] = {"values": values.tolist(), "nll": nll.tolist(), "truth": nominal,
                                     "minimum_at": float(values[int(np.argmin(nll))]),
                                     "unimodal": unimodal(nll, args.tolerance)}
            print(f"{name:10s} truth {nominal:.4g} scan minimum at {values[int(np.argmin(nll))]:.4g} "
                  f"unimodal {report['scans'][name]['unimodal']}", flush=True)
    report["wall_time_s"] = time.perf_counter() - t0
    write_json(os.path.join(args.out, "likelihood_scan.json"), report)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(args.params)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6), squeeze=False)
    for ax, name in zip(axes[0], args.params):
        scan = report["scans"][name]
        nll = np.array(scan["nll"])
        ax.plot(scan["values"], nll - nll.min(), "o-", ms=3)
        ax.axvline(scan["truth"], color="k", ls=":", lw=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("−log L − min")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "likelihood_scan.png"), dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
