"""Covariance vs pulls: the same closure fit with noise on, repeated over noise seeds.

    python -m calibration.scripts.pulls_study --out pulls --seeds 1 2 ... 12 [--ntracks 4] [--params Ab kb]

For every noise seed k: the target is simulated with electronics noise seeded by k (``--seed k``), the guess
without noise (its expectation), the loss is the readout χ² (``losses/chi2.py``, σ_ADC from the noise model),
Adam from the nominal values then an L-BFGS polish on the full objective, and cov = 2H⁻¹ (up = 1, H of the
total χ²).  The summary (``OUT/pulls_study.json``) holds per parameter: the fitted values, the reported sigmas,
the pulls (fitted − target)/sigma with their mean and RMS, the spread (standard deviation) of the fitted values
and the ratio mean(sigma)/spread; and per fit χ²/ndf with ndf = matched readouts − parameters.
If the sigmas are right, the pulls are N(0, 1): mean ≈ 0 ± 1/√n, RMS ≈ 1 ± 1/√(2n), ratio ≈ 1.
``--sigma-replicas N`` replaces the single noise-model σ by per-readout σ from N noisy replicas of the guess
(``calibration/readout_sigma.py``).  Only fits with a positive-definite Hessian (at a minimum) enter the pull
statistics (``n_fits_posdef``).  The ``scaled_*`` entries multiply the sigmas by √(mean χ²/ndf) (the PDG scale
factor), for a noise model that underestimates the readout fluctuations.  ``--summarize-only`` recomputes the summary from existing fits.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--input", default="/work/shared/data/inputs/mixed_sample.h5")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 13)))
    p.add_argument("--params", nargs="+", default=["Ab", "kb"])
    p.add_argument("--closure-seed", type=int, default=1, help="fixed target values (uniform in RANGES)")
    p.add_argument("--ntracks", type=int, default=4)
    p.add_argument("--track-seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--polish", type=int, default=5)
    p.add_argument("--loss-opt", nargs="+", default=[], help="chi2 options, e.g. unmatched=threshold max_dt=1.0")
    p.add_argument("--sigma-replicas", type=int, default=0,
                   help="per-readout sigma_ADC from N noisy replicas of the guess (fit option --sigma-replicas)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summarize-only", action="store_true",
                   help="recompute the summary from OUT/noise<k>/result.json without fitting")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further `calibration fit` arguments")
    args = p.parse_args(argv)

    from calibration._io import write_json
    from calibration.cli import main as fit_main
    os.makedirs(args.out, exist_ok=True)
    summary = {"input": os.path.abspath(args.input), "params": args.params, "closure_seed": args.closure_seed,
               "ntracks": args.ntracks, "track_seed": args.track_seed, "iterations": args.iterations,
               "polish": args.polish, "loss": "chi2", "loss_opt": args.loss_opt, "sigma_replicas": args.sigma_replicas,
               "extra": args.extra, "fits": []}
    t_all = time.perf_counter()
    for seed in args.seeds:
        out = os.path.join(args.out, f"noise{seed}")
        argv_fit = ["fit", "--input", args.input, "--params", *args.params, "--closure-seed", str(args.closure_seed),
                    "--ntracks", str(args.ntracks), "--track-seed", str(args.track_seed), "--seed", str(seed),
                    "--iterations", str(args.iterations), "--lr", str(args.lr), "--loss", "chi2",
                    "--no-noise-guess", "--polish-lbfgs", str(args.polish), "--out", out, "--no-progress",
                    "--no-plots", "--threads", str(args.threads), "--checkpoint-every", "100000"]
        if args.loss_opt:
            argv_fit += ["--loss-opt", *args.loss_opt]
        if args.sigma_replicas:
            argv_fit += ["--sigma-replicas", str(args.sigma_replicas)]
        argv_fit += args.extra
        rc = 0 if args.summarize_only else fit_main(argv_fit)
        if rc != 0:
            summary["fits"].append({"seed": seed, "error": f"exit code {rc}"})
            continue
        with open(os.path.join(out, "result.json")) as handle:
            res = json.load(handle)
        counts = res.get("loss_counts") or {}
        ndf = counts.get("matched", 0) - len(args.params)
        summary["fits"].append({
            "seed": seed, "final_chi2": res["final_loss"], "ndf": ndf,
            "chi2_per_ndf": res["final_loss"] / ndf if ndf > 0 else None, "loss_counts": counts,
            "wall_time_s": res["wall_time_s"], "warnings": res.get("warnings", []),
            "hessian_posdef": res.get("hessian_posdef"),
            "params": {k: {"target": e["target"], "fitted": e["fitted"], "sigma": e["sigma"]}
                       for k, e in res["params"].items()},
            "correlation": res["correlation"]})
        write_json(os.path.join(args.out, "pulls_study.json"), summary)
    # pulls only from fits that ended at a minimum (positive-definite Hessian); the others are counted
    fits = [f for f in summary["fits"] if "params" in f and f.get("hessian_posdef")]
    summary["n_fits"] = len([f for f in summary["fits"] if "params" in f])
    summary["n_fits_posdef"] = len(fits)
    chi_all = np.array([f["chi2_per_ndf"] for f in fits if f["chi2_per_ndf"] is not None])
    scale = float(np.sqrt(chi_all.mean())) if chi_all.size else math.nan
    summary["sigma_scale_sqrt_mean_chi2_ndf"] = scale
    stats = {}
    for name in args.params:
        target = fits[0]["params"][name]["target"] if fits else math.nan
        fitted = np.array([f["params"][name]["fitted"] for f in fits])
        sigma = np.array([np.nan if f["params"][name]["sigma"] is None else f["params"][name]["sigma"] for f in fits])
        pulls = (fitted - target) / sigma
        n = len(fits)
        stats[name] = {"n": n, "target": target, "mean_fitted": float(fitted.mean()) if n else None,
                       "spread": float(fitted.std(ddof=1)) if n > 1 else None,
                       "mean_sigma": float(np.nanmean(sigma)) if n else None,
                       "sigma_over_spread": float(np.nanmean(sigma) / fitted.std(ddof=1)) if n > 1 else None,
                       "scaled_sigma_over_spread": float(scale * np.nanmean(sigma) / fitted.std(ddof=1)) if n > 1 else None,
                       "scaled_pull_rms": float(np.sqrt(np.nanmean((pulls / scale) ** 2))) if n else None,
                       "bias_over_spread": float((fitted.mean() - target) / fitted.std(ddof=1)) if n > 1 else None,
                       "pull_mean": float(np.nanmean(pulls)) if n else None,
                       "pull_rms": float(np.sqrt(np.nanmean(pulls ** 2))) if n else None,
                       "pull_std": float(np.nanstd(pulls, ddof=1)) if n > 1 else None,
                       "pulls": [float(v) for v in pulls]}
    summary["stats"] = stats
    chi = [f["chi2_per_ndf"] for f in fits if f["chi2_per_ndf"] is not None]
    summary["mean_chi2_per_ndf"] = float(np.mean(chi)) if chi else None
    summary["total_wall_time_s"] = time.perf_counter() - t_all
    write_json(os.path.join(args.out, "pulls_study.json"), summary)
    for name, st in stats.items():
        print(f"{name}: pull mean {st['pull_mean']:+.3f} rms {st['pull_rms']:.3f}  sigma/spread "
              f"{st['sigma_over_spread']}  (n={st['n']})")
    print(f"mean chi2/ndf {summary['mean_chi2_per_ndf']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
