"""Loss along the straight line between two parameter points (in the fit's internal coordinates).

    python -m calibration.scripts.line_scan --out line.json --from Ab=0.85 lifetime=2419 ... \\
        [--to NAME=VALUE ...] [--s-range 0 1] [--points 21] -- <calibration fit data/target arguments>

Everything after ``--`` is parsed as ``calibration fit`` arguments (input, cuts, tracks, parameter file,
closure seed, loss...); ``--to`` defaults to the closure targets.  Point s is θ(s) = (1 − s)·θ_from + s·θ_to in
internal units (so an ``inverse``-normalised lifetime moves linearly in 1/τ).  For the waveform MSE every point
also records the sum of squared differences and the key counts (union, target), which is how the stall of the
six-parameter closure was traced to a union-size denominator (docs/calibration.md).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, fit_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--from", dest="start", nargs="+", required=True, metavar="NAME=VALUE")
    p.add_argument("--to", dest="end", nargs="+", default=None, metavar="NAME=VALUE")
    p.add_argument("--s-range", nargs=2, type=float, default=(0.0, 1.0))
    p.add_argument("--points", type=int, default=21)
    args = p.parse_args(own)

    from calibration._io import write_json
    from calibration.cli import DTYPES, _data, _key_values, _loss, _paramset, _resolve_loss, _targets_and_init, build_parser
    from calibration.forward import call_forward
    from calibration.losses.waveform_mse import union_difference, waveform_keys
    from calibration.targets import simulate_targets
    fit = build_parser().parse_args(["fit", "--out", args.out + ".d", *fit_args])
    _resolve_loss(fit)
    dtype, device = DTYPES[fit.dtype], fit.device
    ps = _paramset(fit)
    forward, batches, info = _data(fit, dtype, device)
    target_values, _ = _targets_and_init(fit, ps)
    noise_target = not (fit.no_noise or fit.no_noise_target)
    targets = simulate_targets(forward, ps, batches, target_values, dtype=dtype, device=device, noise=noise_target,
                               seed=fit.seed)
    loss_fn = _loss(fit)
    start = {**ps.nominal_values(), **_key_values(args.start, "--from")}
    end = {**ps.nominal_values(), **(_key_values(args.end, "--to") if args.end else target_values)}
    theta0 = torch.stack([leaf.detach() for leaf in ps.make_leaves(start, dtype=dtype, device=device)])
    theta1 = torch.stack([leaf.detach() for leaf in ps.make_leaves(end, dtype=dtype, device=device)])
    base = ps.base_params(dtype=dtype, device=device)
    rows = []
    for s in np.linspace(args.s_range[0], args.s_range[1], args.points):
        theta = (1.0 - s) * theta0 + s * theta1
        params = ps.build_params(list(theta), base)
        t0 = time.perf_counter()
        total, n_units, sumsq, n_union, n_target = 0.0, 0, 0.0, 0, 0
        with torch.no_grad():
            for batch, target in zip(batches, targets):
                guess = call_forward(forward, params, batch.data, noise=False, seed=0)
                total += float(loss_fn(guess, target, n_units=batch.n_units)) * batch.n_units
                n_units += batch.n_units
                if getattr(guess, "waveforms", None) is not None:
                    kg, vg = waveform_keys(guess.waveforms)
                    kt, vt = waveform_keys(target.waveforms)
                    diff = union_difference(kg, vg, kt, vt)
                    sumsq += float(diff.pow(2).sum())
                    n_union += int(diff.shape[0])
                    n_target += int(kt.shape[0])
        row = {"s": float(s), "loss": total / max(n_units, 1), "values": ps.physical_values(list(theta)),
               "seconds": time.perf_counter() - t0}
        if n_target:
            row.update(sum_sq_diff=sumsq, union_keys=n_union, target_keys=n_target)
        rows.append(row)
        print(f"s={s:.5f} loss={row['loss']:.10e}" + (f" sumsq={sumsq:.10e} union={n_union}" if n_target else ""),
              flush=True)
    write_json(args.out, {"input": info, "loss": loss_fn.describe(), "from": start, "to": end, "points": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
