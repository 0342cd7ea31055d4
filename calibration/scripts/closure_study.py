"""Multi-parameter closure study: several closure seeds, one fit each, summarised in one JSON.

    python -m calibration.scripts.closure_study --out study6 [--input FILE.h5] [--seeds 1 2 3] \\
        [--ntracks 6] [--iterations 300] [--loss space_match] [--threads 1]

Default: the six-parameter set of the reference (Ab, kb, eField with vdrift linked, lifetime, tran_diff,
long_diff; every lr 1e-2 as its param_list.yaml), Adam, gradient clipping 1, no noise, waveform MSE loss.  Without ``--input``,
tracks come from ``sparsetpc.example.write_example`` (written into the output directory).  Each fit goes to
``OUT/seed<k>/`` (result.json, history, plots); the summary ``OUT/closure_study.json`` holds per seed and
parameter: initial, target, fitted, relative residual, sigma, pull, and the wall time (plus the polish summary,
the largest |relative residual|, warnings and the Hessian condition number).  ``--param-file`` takes a YAML
parameter file instead of ``--params``/``--lr`` (e.g. ``calibration/configs/closure6_inverse_lifetime.yaml``,
lifetime fitted as 1/τ); ``--extra`` passes further ``calibration fit`` options (``--polish-lbfgs 10``,
``--min-abs-segment-z none``, ``--max-wall 90``, ``--device cuda``...).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

SIX = {"Ab": 1e-2, "kb": 1e-2, "eField": 1e-2, "lifetime": 1e-2, "tran_diff": 1e-2, "long_diff": 1e-2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--input", default=None)
    p.add_argument("--example-seed", type=int, default=3)
    p.add_argument("--example-events", type=int, default=4)
    p.add_argument("--example-tracks", type=int, default=3, help="tracks per generated event")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--params", nargs="+", default=list(SIX))
    p.add_argument("--param-file", default=None,
                   help="YAML parameter file (name: lr or name: {lr, norm, bounds}) instead of --params/--lr")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--ntracks", type=int, default=6)
    p.add_argument("--track-seed", type=int, default=None)
    p.add_argument("--tracks-per-batch", type=int, default=None)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--loss", default="mse")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--scheduler-kwargs", default="{}")
    p.add_argument("--no-link", action="store_true", help="do not link vdrift to eField")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further `calibration fit` arguments")
    args = p.parse_args(argv)

    from calibration._io import write_json
    from calibration.cli import main as fit_main
    os.makedirs(args.out, exist_ok=True)
    path = args.input
    if path is None:
        from sparsetpc.example import write_example
        path = str(write_example(os.path.join(args.out, "example_tracks.h5"), n_events=args.example_events, tracks_per_event=args.example_tracks,
                                 seed=args.example_seed, step=1.0))
    param_file = os.path.join(args.out, "param_list.yaml")
    if args.param_file:
        import shutil
        import yaml
        with open(args.param_file) as handle:
            args.params = list(yaml.safe_load(handle))
        if os.path.abspath(args.param_file) != os.path.abspath(param_file):
            shutil.copyfile(args.param_file, param_file)
    else:
        with open(param_file, "w") as handle:
            for name in args.params:
                handle.write(f"{name}: {args.lr}\n")
    summary = {"input": os.path.abspath(path), "params": args.params, "iterations": args.iterations,
               "loss": args.loss, "ntracks": args.ntracks, "link_vdrift_efield": not args.no_link, "fits": []}
    t_all = time.perf_counter()
    for seed in args.seeds:
        out = os.path.join(args.out, f"seed{seed}")
        argv_fit = ["fit", "--input", path, "--param-file", param_file, "--closure-seed", str(seed),
                    "--ntracks", str(args.ntracks), "--iterations", str(args.iterations), "--loss", args.loss,
                    "--out", out, "--no-noise", "--no-progress", "--threads", str(args.threads), "--resume",
                    "--checkpoint-every", "25", "--scheduler-kwargs", args.scheduler_kwargs]
        if not args.no_link:
            argv_fit.append("--link-vdrift-efield")
        if args.track_seed is not None:
            argv_fit += ["--track-seed", str(args.track_seed)]
        if args.tracks_per_batch:
            argv_fit += ["--tracks-per-batch", str(args.tracks_per_batch)]
        if args.scheduler:
            argv_fit += ["--scheduler", args.scheduler]
        argv_fit += args.extra
        rc = fit_main(argv_fit)
        if rc != 0:
            summary["fits"].append({"seed": seed, "error": f"exit code {rc}"})
            continue
        with open(os.path.join(out, "result.json")) as handle:
            res = json.load(handle)
        rows = {}
        for name, e in res["params"].items():
            sigma = e.get("sigma")
            rows[name] = {"initial": e["initial"], "target": e["target"], "fitted": e["fitted"],
                          "rel_residual": (e["fitted"] - e["target"]) / e["target"],
                          "initial_rel_offset": (e["initial"] - e["target"]) / e["target"], "sigma": sigma,
                          "pull": None if not sigma else (e["fitted"] - e["target"]) / sigma}
        summary["fits"].append({"seed": seed, "params": rows, "final_loss": res["final_loss"],
                                "iterations": res["iterations"], "wall_time_s": res["wall_time_s"],
                                "polish": None if not res.get("polish") else
                                {k: res["polish"][k] for k in ("steps", "evaluations", "wall_time_s")},
                                "max_abs_rel_residual": max(abs(r["rel_residual"]) for r in rows.values()),
                                "correlation": res["correlation"], "warnings": res.get("warnings", []),
                                "hessian_condition": res.get("hessian_condition")})
        write_json(os.path.join(args.out, "closure_study.json"), summary)
    summary["total_wall_time_s"] = time.perf_counter() - t_all
    write_json(os.path.join(args.out, "closure_study.json"), summary)
    for fit in summary["fits"]:
        if "params" in fit:
            print(f"seed {fit['seed']}: " + "  ".join(f"{k} {v['rel_residual']:+.3%} (start {v['initial_rel_offset']:+.1%})"
                                                       for k, v in fit["params"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
