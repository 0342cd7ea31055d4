"""Command line: ``python -m calibration fit ...`` / ``scan ...`` (console script ``sparsetpc-calibrate``).

Examples::

    python -m calibration fit --input mixed_sample.h5 --params Ab kb --closure-seed 1 --ntracks 5 \\
        --iterations 200 --out fit_ab_kb
    python -m calibration fit --input mixed_sample.h5 --param-file param_list.yaml --link-vdrift-efield \\
        --closure-seed 2 --scheduler ExponentialLR --scheduler-kwargs '{"gamma": 0.95}' --out fit6
    python -m calibration fit ... --out fit6 --resume          # continue a killed fit exactly
    torchrun --nproc_per_node 2 -m calibration fit ...         # data parallel (gloo on CPU)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64, "float": torch.float32}


def _key_values(items: Optional[List[str]], what: str) -> Dict[str, float]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"{what}: expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = float(v)
    return out


def _options(items: Optional[List[str]]) -> Dict[str, object]:
    out = {}
    for item in items or []:
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--input", help="edep-sim HDF5 file (dataset `segments`)")
    g.add_argument("--forward", choices=("sim", "toy"), default="sim",
                   help="forward model: sparsetpc.simulate (default) or the toy model (tests, demos)")
    g.add_argument("--ntracks", type=int, default=None, help="number of tracks (units) to use; default all")
    g.add_argument("--track-seed", type=int, default=None, help="draw --ntracks at random with this seed")
    g.add_argument("--tracks-per-batch", type=int, default=None, help="mini-batch size in tracks (default all)")
    g.add_argument("--group", choices=("track", "event"), default="track", help="unit of a batch")
    g.add_argument("--no-cuts", action="store_true", help="keep every segment with dx > 0 (no track selection)")
    g.add_argument("--min-abs-segment-z", default=None, metavar="CM|none",
                   help="override Cuts.min_abs_segment_z (default 15 cm keeps only drifts < ~15 cm; `none` keeps "
                        "the whole drift, needed to constrain the lifetime)")
    g = p.add_argument_group("parameters")
    g.add_argument("--params", nargs="+", default=None, help="parameters to fit")
    g.add_argument("--param-file", default=None, help="YAML `name: lr` (or name: {lr, norm, bounds})")
    g.add_argument("--lr", type=float, default=None, help="learning rate for every --params entry (default 1e-2)")
    g.add_argument("--norm", choices=("divide", "standard", "none", "inverse"), default="divide")
    g.add_argument("--no-bounds", action="store_true", help="do not clamp parameters into their RANGES")
    g.add_argument("--link-vdrift-efield", action="store_true", help="drift velocity computed from eField")
    g.add_argument("--fixed", nargs="+", default=None, metavar="NAME=VALUE", help="non-fitted parameter values")
    g = p.add_argument_group("targets")
    g.add_argument("--closure-seed", type=int, default=None, help="closure test: targets uniform in ranges")
    g.add_argument("--target-values", nargs="+", default=None, metavar="NAME=VALUE", help="explicit closure targets")
    g.add_argument("--target-file", default=None, help="target hits (HDF5 `hits`); implies --group event")
    g.add_argument("--init-values", nargs="+", default=None, metavar="NAME=VALUE", help="initial values (default nominal)")
    g.add_argument("--init-seed", type=int, default=None, help="initial values uniform in ranges with this seed")
    g.add_argument("--no-noise", action="store_true", help="no electronics noise in target and guess")
    g.add_argument("--no-noise-target", action="store_true")
    g.add_argument("--no-noise-guess", action="store_true")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="auto",
                   help="mse | chi2 | space_match | chamfer | sinkhorn | sdtw; auto (default): mse on waveforms for simulated "
                        "targets (smoothest, see docs/calibration.md), space_match for --target-file")
    g.add_argument("--loss-scales", nargs="+", default=None, metavar="AXIS=SCALE", help="x, y [cm], t [us], adc")
    g.add_argument("--loss-opt", nargs="+", default=None, metavar="KEY=VALUE",
                   help="loss options, e.g. temperature=0.1, eps=0.05, gamma=1")
    g = p.add_argument_group("simulation")
    g.add_argument("--memory-budget", default=None, help="e.g. 2GB (passed to sparsetpc.simulate)")
    g.add_argument("--mode", default="relaxed", help="simulation mode (relaxed | hard)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 is fastest for small batches on a busy CPU)")
    g.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsetpc-calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit parameters by gradient descent")
    _common(fit)
    g = fit.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=200)
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "lbfgs"), default="adam")
    g.add_argument("--optimizer-kwargs", default="{}", help="JSON, e.g. '{\"momentum\": 0.9}'")
    g.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    g.add_argument("--scheduler", default=None, help="torch.optim.lr_scheduler class name, e.g. ExponentialLR")
    g.add_argument("--scheduler-kwargs", default="{}", help="JSON kwargs of the scheduler")
    g.add_argument("--scheduler-step", choices=("epoch", "iteration"), default="epoch")
    g.add_argument("--no-shuffle", action="store_true", help="fixed batch order")
    g.add_argument("--checkpoint-every", type=int, default=10)
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt if present")
    g.add_argument("--history-format", choices=("json", "hdf5"), default="json")
    g.add_argument("--no-hessian", action="store_true", help="skip the uncertainty estimate")
    g.add_argument("--hessian-step", type=float, default=1e-3)
    g.add_argument("--errordef", type=float, default=1.0, help="loss rise at 1 sigma (1: chi2, 0.5: NLL)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--polish-lbfgs", type=int, default=0, metavar="N",
                   help="after the loop, N L-BFGS steps (strong Wolfe, ≤20 inner iterations each) on the full "
                        "objective (all batches); for deterministic (noise-free guess) fits")
    g.add_argument("--polish-kwargs", default="{}", help="JSON kwargs of torch.optim.LBFGS for the polish")
    g.add_argument("--polish-ftol", type=float, default=1e-12,
                   help="the polish has converged when a step lowers the loss by <= FTOL*max(|loss|, 1)")
    g.add_argument("--polish-max-wall", type=float, default=None, metavar="S",
                   help="no new polish step after S seconds of polishing")
    g.add_argument("--max-wall", type=float, default=None, metavar="S",
                   help="leave the main loop after S seconds of wall time (then polish, Hessian, result)")
    g.add_argument("--sigma-replicas", type=int, default=0, metavar="N",
                   help="chi2 loss: per-readout sigma_ADC from N noisy replicas of the guess at the initial values "
                        "(captures the integration-window jitter the noise model leaves out); 0 = noise model")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)   # test hook (simulated kill)
    scan = sub.add_parser("scan", help="1-D loss scans per parameter for several losses")
    _common(scan)
    scan.add_argument("--losses", nargs="+", default=["space_match", "chamfer", "sinkhorn", "sdtw"],
                      help="loss names, optionally NAME:key=value,... (e.g. space_match:temperature=0.5)")
    scan.add_argument("--points", type=int, default=21)
    return parser


# ---------------------------------------------------------------------------------------------- setup
def _resolve_loss(args) -> None:
    if args.loss == "auto":
        args.loss = "space_match" if args.target_file else "mse"
    if args.loss == "mse" and args.target_file:
        raise SystemExit("--loss mse needs simulated waveforms on both sides; a --target-file has hits only")


def _paramset(args):
    from .paramsets import ParamSet
    kw = dict(lr=args.lr, norm=args.norm, link_vdrift_efield=args.link_vdrift_efield,
              default_bounds=not args.no_bounds)
    if args.param_file:
        import yaml
        with open(args.param_file) as handle:
            mapping = yaml.safe_load(handle)
        if args.params:
            mapping = {k: v for k, v in mapping.items() if k in args.params}
            mapping.update({k: None for k in args.params if k not in mapping})
        return ParamSet.from_mapping(mapping, **kw)
    if not args.params:
        raise SystemExit("give --params and/or --param-file")
    return ParamSet.from_names(args.params, **kw)


def _data(args, dtype, device):
    """(forward, batches, input description)."""
    from .batching import row_batches, segment_batches
    if args.forward == "toy":
        from .toy import ToyForward, make_toy_tracks
        rows = make_toy_tracks(args.ntracks or 4, seed=args.track_seed or 0, dtype=dtype, device=device)
        return (ToyForward(waveforms=args.loss == "mse"), row_batches(rows, args.tracks_per_batch),
                {"toy_tracks": args.ntracks or 4, "track_seed": args.track_seed or 0})
    if not args.input:
        raise SystemExit("--input FILE.h5 is required with the simulator forward model")
    import sparsetpc as st
    from sparsetpc.segments import Cuts, load_segments
    from .forward import SimForward
    cuts = Cuts.none() if args.no_cuts else Cuts()
    if args.min_abs_segment_z is not None:
        value = args.min_abs_segment_z
        cuts = dataclasses.replace(cuts, min_abs_segment_z=None if str(value).lower() == "none" else float(value))
    segs = load_segments(args.input, cuts=cuts, dtype=dtype, device=device)
    group = "event" if args.target_file else args.group
    batches = segment_batches(segs, args.ntracks, args.tracks_per_batch, args.track_seed, group)
    forward = SimForward(memory_budget=args.memory_budget, mode=args.mode, return_waveforms=args.loss == "mse")
    info = {"input": os.path.abspath(args.input), "input_size": os.path.getsize(args.input),
            "ntracks": args.ntracks, "track_seed": args.track_seed, "group": group, "no_cuts": args.no_cuts,
            "cuts": dataclasses.asdict(cuts)}
    return forward, batches, info


def _targets_and_init(args, ps):
    target_values = None
    if args.target_values:
        target_values = {s.name: s.nominal for s in ps}
        target_values.update(_key_values(args.target_values, "--target-values"))
    elif args.closure_seed is not None:
        target_values = ps.sample_uniform(args.closure_seed)
    elif not args.target_file:
        raise SystemExit("choose targets: --closure-seed, --target-values or --target-file")
    if args.init_values:
        init = ps.nominal_values()
        init.update(_key_values(args.init_values, "--init-values"))
    elif args.init_seed is not None:
        init = ps.sample_uniform(args.init_seed)
    else:
        init = ps.nominal_values()
    return target_values, init


def _loss(args, name=None):
    from .losses import HitsLoss
    scales = _key_values(args.loss_scales, "--loss-scales")
    return HitsLoss(name or args.loss, scales=scales, **_options(args.loss_opt))


# ---------------------------------------------------------------------------------------------- commands
def cmd_fit(args) -> int:
    from .distributed import init_from_env
    from .fitter import FitConfig, Fitter
    from .targets import targets_from_file
    dtype, device = DTYPES[args.dtype], args.device
    dist = init_from_env(device)
    try:
        ps = _paramset(args)
        forward, batches, info = _data(args, dtype, device)
        target_values, init = _targets_and_init(args, ps)
        noise_target = not (args.no_noise or args.no_noise_target)
        noise_guess = not (args.no_noise or args.no_noise_guess)
        config = FitConfig(
            iterations=args.iterations, optimizer=args.optimizer, optimizer_kwargs=json.loads(args.optimizer_kwargs),
            clip_norm=args.clip or None, scheduler=args.scheduler, scheduler_kwargs=json.loads(args.scheduler_kwargs),
            scheduler_step=args.scheduler_step, checkpoint_every=args.checkpoint_every, seed=args.seed,
            shuffle=not args.no_shuffle, noise_guess=noise_guess, progress=not args.no_progress,
            history_format=args.history_format, stop_after=args.stop_after, hessian=not args.no_hessian,
            hessian_step=args.hessian_step, errordef_up=args.errordef, plots=not args.no_plots,
            polish_lbfgs=args.polish_lbfgs, polish_kwargs=json.loads(args.polish_kwargs), max_wall_s=args.max_wall,
            polish_max_wall_s=args.polish_max_wall, polish_ftol=args.polish_ftol,
            sigma_replicas=args.sigma_replicas)
        targets = None
        if args.target_file:
            targets = targets_from_file(args.target_file, [dist.shard(b) for b in batches], dtype, device)
        meta = {"input": info, "loss": _loss(args).describe(), "noise_target": noise_target,
                "closure_seed": args.closure_seed, "argv": sys.argv}
        os.makedirs(args.out, exist_ok=True)
        fitter = Fitter(ps, forward, _loss(args), batches, config, targets=targets, target_values=target_values,
                        target_noise=noise_target, initial_values=init, fixed=_key_values(args.fixed, "--fixed"),
                        out_dir=args.out, dist=dist, dtype=dtype, device=device, meta=meta)
        result = fitter.run(resume=args.resume)
        if dist.is_main:
            if result.get("interrupted"):
                print(f"stopped after iteration {result['iteration']} (--stop-after)", file=sys.stderr)
                return 3
            _summary(result)
        return 0
    finally:
        dist.close()


def _summary(result) -> None:
    print(f"{'param':>12} {'initial':>12} {'target':>12} {'fitted':>12} {'sigma':>10}")
    for name, e in result["params"].items():
        fmt = lambda v: "-" if v is None else f"{v:.5g}"
        print(f"{name:>12} {fmt(e['initial']):>12} {fmt(e['target']):>12} {fmt(e['fitted']):>12} {fmt(e['sigma']):>10}")
    print(f"iterations {result['iterations']}  final loss {result['final_loss']:.5g}  wall {result['wall_time_s']:.1f} s")


def cmd_scan(args) -> int:
    import numpy as np
    from ._io import write_json
    from .plots import plot_scan
    from .scan import loss_scan
    from .targets import simulate_targets
    dtype, device = DTYPES[args.dtype], args.device
    ps = _paramset(args)
    forward, batches, info = _data(args, dtype, device)
    if any(e.partition(":")[0] == "mse" for e in args.losses):
        for attr in ("return_waveforms", "waveforms"):
            if hasattr(forward, attr):
                setattr(forward, attr, True)
    target_values, _ = _targets_and_init(args, ps)
    if target_values is None:
        raise SystemExit("scan needs closure targets (--closure-seed or --target-values)")
    noise_target = not (args.no_noise or args.no_noise_target)
    targets = simulate_targets(forward, ps, batches, target_values, dtype=dtype, device=device, noise=noise_target,
                               seed=args.seed, fixed=_key_values(args.fixed, "--fixed"))
    losses = {}
    for entry in args.losses:                      # NAME or NAME:key=value,key=value (e.g. space_match:temperature=0.5)
        name, _, opts = entry.partition(":")
        loss = _loss(args, name)
        loss.options.update(_options([o for o in opts.split(",") if o]))
        losses[entry] = loss
    scans = []
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    for spec in ps:
        values = np.linspace(spec.low, spec.high, args.points)
        scan = loss_scan(forward, ps, batches, targets, losses, spec.name, values, target_values, dtype=dtype,
                         device=device, fixed=_key_values(args.fixed, "--fixed"))
        scans.append(scan)
        plot_scan(scan, os.path.join(args.out, f"scan_{spec.name}.png"))
        print(f"{spec.name}: " + ", ".join(f"{k}: minima={v['n_local_minima']} rough={v['roughness']:.3g} "
                                          f"towards={v['monotone_fraction']:.2f}" for k, v in scan["smoothness"].items()))
    write_json(os.path.join(args.out, "scan.json"), {"input": info, "targets": target_values, "scans": scans,
                                                      "wall_time_s": time.perf_counter() - t0})
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if hasattr(args, "loss"):
        _resolve_loss(args)
    if args.command == "fit":
        return cmd_fit(args)
    return cmd_scan(args)


if __name__ == "__main__":
    raise SystemExit(main())
