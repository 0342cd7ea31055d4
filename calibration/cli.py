"""Command line: ``python -m calibration fit ...`` / ``scan ...`` (console script ``sparsetpc-calibrate``).

Examples::

    python -m calibration fit --input mixed_sample.h5 --params Ab kb --closure-seed 1 --ntracks 5 \\
        --iterations 200 --out fit_ab_kb
    python -m calibration fit --input mixed_sample.h5 --param-file param_list.yaml --link-vdrift-efield \\
        --closure-seed 2 --scheduler ExponentialLR --scheduler-kwargs '{"gamma": 0.95}' --out fit6
    python -m calibration fit ... --out fit6 --resume          # continue a killed fit exactly
    python -m calibration fit --input sample.h5 --target-file packets.h5 --params Ab --out fit_data
    torchrun --nproc_per_node 2 -m calibration fit ...         # data parallel (gloo on CPU)

Errors: every argument, input file and the output directory are checked before any simulation; an expected
failure prints one line ``sparsetpc-calibrate: error: ...`` and exits 2 (traceback with --debug).  A resume
refuses a checkpoint written by a fit with another definition (input, targets, selection, parameters, loss,
noise, dtype...) unless --resume-force; exit 3 = stopped by --stop-after (test hook).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from sparsetpc.cli.errors import OneLineParser, UsageError, check_device, check_memory_budget, check_output_dir, run_guarded

PROG = "sparsetpc-calibrate"
DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64, "float": torch.float32}
MODES = ("relaxed", "hard", "reference")


def _key_values(items: Optional[List[str]], what: str) -> Dict[str, float]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{what}: expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            value = float(v)
        except ValueError:
            raise UsageError(f"{what}: {item!r}: {v!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"{what}: {item!r}: value must be finite")
        if k.strip() in out:
            raise UsageError(f"{what}: {k.strip()} given twice")
        out[k.strip()] = value
    return out


def _options(items: Optional[List[str]], what: str = "--loss-opt") -> Dict[str, object]:
    out = {}
    for item in items or []:
        if "=" not in item or not item.partition("=")[0]:
            raise UsageError(f"{what}: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _json_object(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{option}: not valid JSON ({error.msg} at character {error.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option}: expected a JSON object such as '{{\"gamma\": 0.9}}', got {text!r}")
    return value


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
    g.add_argument("--target-file", default=None,
                   help="target readouts: sparsetpc hits HDF5 (`hits`) or larnd-sim packets HDF5 (`packets`, "
                        "detected from the file); implies --group event; the events simulated are those in the file")
    g.add_argument("--layout", default=None,
                   help="larnd-sim pixel layout YAML for a packets --target-file (default: built-in 2.2.16)")
    g.add_argument("--init-values", nargs="+", default=None, metavar="NAME=VALUE", help="initial values (default nominal)")
    g.add_argument("--init-seed", type=int, default=None, help="initial values uniform in ranges with this seed")
    g.add_argument("--no-noise", action="store_true", help="no electronics noise in target and guess")
    g.add_argument("--no-noise-target", action="store_true")
    g.add_argument("--no-noise-guess", action="store_true")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="auto",
                   help="likelihood | mse | chi2 | space_match | chamfer | sinkhorn | sdtw; auto (default): the readout "
                        "likelihood for --target-file (data: packets or hits; sigmas reported), mse on waveforms for "
                        "simulated closure targets (see docs/calibration.md)")
    g.add_argument("--loss-scales", nargs="+", default=None, metavar="AXIS=SCALE", help="x, y [cm], t [us], adc")
    g.add_argument("--loss-opt", nargs="+", default=None, metavar="KEY=VALUE",
                   help="loss options, e.g. temperature=0.1, eps=0.05, gamma=1")
    g = p.add_argument_group("simulation")
    g.add_argument("--memory-budget", default=None, help="e.g. 2GB (passed to sparsetpc.simulate)")
    g.add_argument("--mode", choices=MODES, default="relaxed", help="simulation mode")
    g.add_argument("--clock-phases", type=int, default=None, metavar="K",
                   help="relaxed mode: average the front end over K clock phases (default 3: smooth at every step "
                        "size; 1 is 3x faster, smooth from relative steps of 1e-4 down)")
    from sparsetpc.cli.main import add_response_options
    add_response_options(g)
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 is fastest for small batches on a busy CPU)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sparsetpc-calibrate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    fit = sub.add_parser("fit", help="fit parameters by gradient descent")
    _common(fit)
    g = fit.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=None,
                   help="main-loop iterations (default 200; 0 for the likelihood, which runs the L-BFGS polish "
                        "until convergence or --max-wall)")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "lbfgs"), default="adam")
    g.add_argument("--optimizer-kwargs", default="{}", help="JSON, e.g. '{\"momentum\": 0.9}'")
    g.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    g.add_argument("--scheduler", default=None, help="torch.optim.lr_scheduler class name, e.g. ExponentialLR")
    g.add_argument("--scheduler-kwargs", default="{}", help="JSON kwargs of the scheduler")
    g.add_argument("--scheduler-step", choices=("epoch", "iteration"), default="epoch")
    g.add_argument("--no-shuffle", action="store_true", help="fixed batch order")
    g.add_argument("--checkpoint-every", type=int, default=10)
    g.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt if present; refused if it was written by another fit "
                        "definition (input, targets, selection, parameters, loss, noise, dtype)")
    g.add_argument("--resume-force", action="store_true",
                   help="--resume even if the checkpoint's fit definition differs (the differences are printed)")
    g.add_argument("--history-format", choices=("json", "hdf5"), default="json")
    g.add_argument("--no-hessian", action="store_true", help="skip the uncertainty estimate")
    g.add_argument("--hessian-step", type=float, default=1e-3)
    g.add_argument("--errordef", type=float, default=None,
                   help="loss rise at 1 sigma (default: 0.5 for the likelihood, 1 for chi2)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--polish-lbfgs", type=int, default=None, metavar="N",
                   help="after the loop, at most N L-BFGS steps (strong Wolfe, ≤20 inner iterations each) on the full "
                        "objective (all batches); for deterministic (noise-free guess) fits (default 0; 500 for the "
                        "likelihood: it stops when converged)")
    g.add_argument("--polish-kwargs", default="{}", help="JSON kwargs of torch.optim.LBFGS for the polish")
    g.add_argument("--precondition", choices=("auto", "fisher", "none"), default="auto",
                   help="coordinates of the L-BFGS polish: 'fisher' whitens them by the expected Fisher information "
                        "of the readout likelihood, computed after --precondition-after plain steps (1 + 2P forward "
                        "passes; the path changes, not the minimum nor the sigma); 'none' the internal units; "
                        "'auto' (default): fisher where it applies (likelihood loss, relaxed mode, float64, "
                        "simulator forward)")
    g.add_argument("--polish-edm", type=float, default=1e-6, metavar="E",
                   help="with --precondition fisher, the polish has converged where the Fisher information's "
                        "estimate of the distance to the minimum, 1/2 g^T F^-1 g, is <= E (loss units; default "
                        "1e-6; 0: only --polish-ftol)")
    g.add_argument("--precondition-after", type=int, default=1, metavar="N",
                   help="L-BFGS steps in the internal units before the polish moves to the whitened coordinates "
                        "(default 1: far from the minimum the likelihood is not the quadratic the Fisher "
                        "information describes)")
    g.add_argument("--polish-ftol", type=float, default=None,
                   help="the polish has converged when a step lowers the loss by <= FTOL*max(|loss|, 1)")
    g.add_argument("--polish-max-wall", type=float, default=None, metavar="S",
                   help="no new evaluation of the polish after S seconds of polishing (a step in progress ends "
                        "at its best point); default for the likelihood: --max-wall")
    g.add_argument("--max-wall", type=float, default=None, metavar="S",
                   help="leave the main loop after S seconds of wall time (then polish, Hessian, result)")
    g.add_argument("--sigma-replicas", type=int, default=0, metavar="N",
                   help="chi2 loss: per-readout sigma_ADC from N >= 5 noisy replicas of the guess at the initial "
                        "values (captures the integration-window jitter the noise model leaves out); 0 = noise model")
    g.add_argument("--score-replicas", type=int, default=0, metavar="N",
                   help="likelihood or chi2: also sigma from the sandwich H^-1 V H^-1, V the covariance of the score "
                        "over N >= 10 targets drawn by the hard front end with noise at the fitted point (σ that "
                        "hold where the model's noise is not exactly the data's; costs N gradient evaluations; "
                        "default 0: not computed)")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)   # test hook (simulated kill)
    scan = sub.add_parser("scan", help="1-D loss scans per parameter for several losses")
    _common(scan)
    scan.add_argument("--losses", nargs="+", default=["space_match", "chamfer", "sinkhorn", "sdtw"],
                      help="loss names, optionally NAME:key=value,... (e.g. space_match:temperature=0.5)")
    scan.add_argument("--points", type=int, default=21)
    _select_parser(sub)
    return parser


def _select_parser(sub) -> None:
    p = sub.add_parser("select", help="choose the N tracks of a file whose readouts constrain the parameters best "
                                      "(Fisher information of the readout likelihood at the nominal values)")
    p.add_argument("--input", required=True, help="edep-sim HDF5 file (dataset `segments`)")
    p.add_argument("--n", type=int, default=12, help="tracks to choose (default 12)")
    p.add_argument("--out", required=True, help="edep-sim HDF5 file written with the chosen tracks' segments")
    p.add_argument("--report", default=None, help="JSON report (default: OUT with .json; a figure beside it, .png): "
                                                  "every candidate's σ, the choice, the first-track-per-event baseline")
    p.add_argument("--reuse", default=None, metavar="REPORT",
                   help="take the candidates' Fisher matrices from an earlier report of the same input and options")
    p.add_argument("--params", nargs="+", default=list(SELECT_PARAMS), help="parameters to constrain")
    p.add_argument("--goal", nargs="+", default=None, metavar="NAME=FRACTION",
                   help="relative σ aimed at per parameter (default 0.1 each; only the ratios steer the choice)")
    p.add_argument("--pdg", nargs="+", type=int, default=[13, 211], help="particles, |PDG code| (default 13 211)")
    p.add_argument("--min-length", type=float, default=10.0, help="cm of track (Σdx), default 10")
    p.add_argument("--min-drift-extent", type=float, default=15.0, help="cm of drift spanned, default 15")
    p.add_argument("--max-abs-cos-theta", type=float, default=0.966, help="to the drift axis, default 0.966")
    p.add_argument("--any-per-event", action="store_true", help="allow several tracks of one event (default one)")
    p.add_argument("--clock-phases", type=int, default=1, metavar="K", help="relaxed front end's clock phases")
    p.add_argument("--memory-budget", default="1GB")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


#: what the calibration-from-hits closure fits
SELECT_PARAMS = ("Ab", "kb", "lifetime", "vdrift", "tran_diff", "long_diff")


# ---------------------------------------------------------------------------------------------- checks
def _resolve_loss(args) -> None:
    if args.loss == "auto":
        args.loss = "likelihood" if args.target_file else "mse"
    if args.loss == "mse" and args.target_file:
        raise UsageError("--loss mse needs simulated waveforms on both sides; a --target-file has readouts only")
    if args.loss == "likelihood" and getattr(args, "mode", "relaxed") != "relaxed":
        raise UsageError(f"--loss likelihood needs --mode relaxed (the readout probabilities and variances of the "
                         f"expected front end), got --mode {args.mode}")
    if args.command == "fit":
        # the likelihood's default schedule: L-BFGS on the full, deterministic objective until it converges
        likelihood = args.loss == "likelihood"
        if args.iterations is None:
            args.iterations = 0 if likelihood else 200
        if args.polish_lbfgs is None:
            args.polish_lbfgs = 500 if likelihood else 0
        if args.polish_ftol is None:
            args.polish_ftol = 1e-10 if likelihood else 1e-12
        if args.polish_max_wall is None and likelihood and args.max_wall is not None:
            args.polish_max_wall = args.max_wall
    if args.loss == "likelihood" and args.tracks_per_batch is None:
        # the likelihood is summed over every batch anyway: one unit per batch bounds the memory to one event
        args.tracks_per_batch = 1


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_number(args, attr: str, option: str, *, minimum=None, positive: bool = False, integer: bool = False) -> None:
    value = getattr(args, attr, None)
    if value is None:
        return
    if not integer:
        _require(math.isfinite(value), f"{option} must be a finite number, got {value}")
    if positive:
        _require(value > 0, f"{option} must be > 0, got {value}")
    if minimum is not None:
        _require(value >= minimum, f"{option} must be >= {minimum}, got {value}")


def _check_readable_file(path: str, option: str) -> None:
    _require(os.path.exists(path), f"{option} {path}: no such file")
    _require(os.path.isfile(path), f"{option} {path}: not a regular file")
    _require(os.access(path, os.R_OK), f"{option} {path}: not readable (permission denied)")


def _paramset(args):
    from .paramsets import ParamSet, ParamSetError
    kw = dict(lr=args.lr, norm=args.norm, link_vdrift_efield=args.link_vdrift_efield,
              default_bounds=not args.no_bounds)
    if args.param_file:
        import yaml
        _check_readable_file(args.param_file, "--param-file")
        with open(args.param_file) as handle:
            try:
                mapping = yaml.safe_load(handle)
            except yaml.YAMLError as error:
                reason = " ".join(str(error).split())
                raise UsageError(f"--param-file {args.param_file}: not valid YAML ({reason})") from None
        if not isinstance(mapping, dict) or not mapping:
            raise ParamSetError(f"--param-file {args.param_file}: expected a non-empty mapping name -> lr "
                                f"(or name -> {{lr, norm, bounds}}), got {type(mapping).__name__}")
        if args.params:
            mapping = {k: v for k, v in mapping.items() if k in args.params}
            mapping.update({k: None for k in args.params if k not in mapping})
        try:
            return ParamSet.from_mapping(mapping, **kw)
        except ParamSetError as error:
            raise ParamSetError(f"--param-file {args.param_file}: {error}") from None
        except (TypeError, ValueError, IndexError, AttributeError) as error:   # e.g. `Ab: abc`, `bounds: [1]`
            raise UsageError(f"--param-file {args.param_file}: bad entry ({type(error).__name__}: {error}); "
                             "expected name: lr or name: {lr, norm, bounds: [low, high]}") from None
    if not args.params:
        raise UsageError("give --params and/or --param-file")
    return ParamSet.from_names(args.params, **kw)


def _check_names(values: Dict[str, float], allowed, option: str, hint: str = "") -> None:
    from sparsetpc.params import Params
    for name in values:
        if name not in Params.names():
            raise UsageError(f"{option}: unknown parameter {name!r}; known: {', '.join(Params.names())}")
        if name not in allowed:
            raise UsageError(f"{option}: {name} is not fitted{hint}")


def check_arguments(args) -> None:
    """Every check that needs no simulation, before any work; fills args.paramset, args.loss_fn, parsed options."""
    _resolve_loss(args)
    fit = args.command == "fit"
    for attr, option in (("ntracks", "--ntracks"), ("tracks_per_batch", "--tracks-per-batch"),
                         ("threads", "--threads")):
        _check_number(args, attr, option, minimum=1, integer=True)
    for attr, option in (("track_seed", "--track-seed"), ("closure_seed", "--closure-seed"),
                         ("init_seed", "--init-seed"), ("seed", "--seed")):
        _check_number(args, attr, option, minimum=0, integer=True)
    _check_number(args, "lr", "--lr", positive=True)
    _check_number(args, "clock_phases", "--clock-phases", minimum=1, integer=True)
    _require(args.clock_phases is None or args.mode == "relaxed", "--clock-phases needs --mode relaxed")
    if args.min_abs_segment_z is not None and str(args.min_abs_segment_z).lower() != "none":
        try:
            z = float(args.min_abs_segment_z)
        except ValueError:
            raise UsageError(f"--min-abs-segment-z: expected a length in cm or `none`, got {args.min_abs_segment_z!r}") from None
        _require(math.isfinite(z) and z >= 0, f"--min-abs-segment-z must be a finite length >= 0 cm, got {z}")
    if args.memory_budget is not None:
        check_memory_budget(args.memory_budget)
    check_device(args.device)
    if fit:
        _check_number(args, "iterations", "--iterations", minimum=0, integer=True)
        _check_number(args, "checkpoint_every", "--checkpoint-every", minimum=1, integer=True)
        _check_number(args, "polish_lbfgs", "--polish-lbfgs", minimum=0, integer=True)
        _check_number(args, "stop_after", "--stop-after", minimum=0, integer=True)
        _check_number(args, "clip", "--clip", minimum=0)
        _check_number(args, "polish_ftol", "--polish-ftol", minimum=0)
        _check_number(args, "precondition_after", "--precondition-after", minimum=0, integer=True)
        _check_number(args, "polish_edm", "--polish-edm", minimum=0)
        for attr, option in (("max_wall", "--max-wall"), ("polish_max_wall", "--polish-max-wall"),
                             ("hessian_step", "--hessian-step"), ("errordef", "--errordef")):
            _check_number(args, attr, option, positive=True)
        from .readout_sigma import MIN_REPLICAS
        _require(args.sigma_replicas == 0 or args.sigma_replicas >= MIN_REPLICAS,
                 f"--sigma-replicas must be 0 (noise model) or >= {MIN_REPLICAS} (a readout seen in fewer replicas "
                 f"keeps the model sigma), got {args.sigma_replicas}")
        _require(not args.sigma_replicas or args.loss == "chi2", "--sigma-replicas needs --loss chi2")
        from .fitter import MIN_SCORE_REPLICAS
        _require(args.score_replicas == 0 or args.score_replicas >= MIN_SCORE_REPLICAS,
                 f"--score-replicas must be 0 or >= {MIN_SCORE_REPLICAS} (a covariance of the score), "
                 f"got {args.score_replicas}")
        _require(not args.score_replicas or args.loss in ("likelihood", "chi2"),
                 f"--score-replicas needs --loss likelihood or chi2 (loss {args.loss!r} reports no sigma)")
        _require(not (args.score_replicas and args.no_hessian), "--score-replicas needs the Hessian (drop --no-hessian)")
        args.optimizer_kwargs_parsed = _json_object(args.optimizer_kwargs, "--optimizer-kwargs")
        args.scheduler_kwargs_parsed = _json_object(args.scheduler_kwargs, "--scheduler-kwargs")
        args.polish_kwargs_parsed = _json_object(args.polish_kwargs, "--polish-kwargs")
        if args.scheduler:
            scheduler = getattr(torch.optim.lr_scheduler, args.scheduler, None)
            _require(isinstance(scheduler, type), f"--scheduler {args.scheduler!r} is not a class of "
                                                  "torch.optim.lr_scheduler (e.g. ExponentialLR, StepLR)")
        if args.resume_force:
            args.resume = True
    else:
        _check_number(args, "points", "--points", minimum=2, integer=True)
    # files
    if args.forward == "sim":
        _require(bool(args.input), "--input FILE.h5 is required with the simulator forward model")
        _check_readable_file(args.input, "--input")
    elif args.input or args.target_file:
        raise UsageError("--forward toy makes its own tracks: --input and --target-file need --forward sim")
    if args.target_file:
        _check_readable_file(args.target_file, "--target-file")
        _require(fit, "scan needs closure targets (--closure-seed or --target-values), not --target-file")
    if args.layout:
        _check_readable_file(args.layout, "--layout")
    check_output_dir(args.out, option="--out")
    # parameters, targets, initial values
    args.paramset = ps = _paramset(args)
    fitted = set(ps.names)
    args.fixed_values = _key_values(args.fixed, "--fixed")
    _check_names(args.fixed_values, set(args.fixed_values) - fitted, "--fixed")
    both = sorted(set(args.fixed_values) & fitted)
    _require(not both, f"--fixed {', '.join(both)}: also fitted; a parameter is either fitted or fixed")
    sources = [o for o, given in (("--closure-seed", args.closure_seed is not None),
                                  ("--target-values", bool(args.target_values)),
                                  ("--target-file", bool(args.target_file))) if given]
    _require(len(sources) <= 1, f"choose one target source, got {' and '.join(sources)}")
    _require(len(sources) == 1, "choose targets: --closure-seed, --target-values or --target-file")
    args.target_values_parsed = _key_values(args.target_values, "--target-values")
    _check_names(args.target_values_parsed, fitted, "--target-values", " (use --fixed for a non-fitted value)")
    _require(not (args.init_values and args.init_seed is not None), "give --init-values or --init-seed, not both")
    args.init_values_parsed = _key_values(args.init_values, "--init-values")
    _check_names(args.init_values_parsed, fitted, "--init-values")
    # losses
    args.loss_fn = _loss(args)
    if fit and args.precondition == "fisher":
        reason = _fisher_reason(args, args.paramset, DTYPES[args.dtype], args.mode)
        _require(reason is None, f"--precondition fisher: {reason}")
    if not fit:
        args.scan_losses = {}
        for entry in args.losses:
            name, _, opts = entry.partition(":")
            loss = _loss(args, name)
            loss.options.update(_options([o for o in opts.split(",") if o], f"--losses {entry}"))
            args.scan_losses[entry] = loss
    # last: create the output directory (the surest test that it can be written); one made here is removed
    # again, so that a run refused later (e.g. its target file) leaves nothing behind; the command makes it
    existed = os.path.isdir(args.out)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot create the output directory ({error.strerror or error})") from None
    writable = os.access(args.out, os.W_OK | os.X_OK)
    if not existed:
        os.rmdir(args.out)
    _require(writable, f"--out {args.out}: directory is not writable")


# ---------------------------------------------------------------------------------------------- setup
def _layout(args):
    from sparsetpc.layout import PixelLayout
    return PixelLayout.default() if args.layout is None else PixelLayout.from_yaml(args.layout)


def _cuts(args):
    from sparsetpc.segments import Cuts
    cuts = Cuts.none() if args.no_cuts else Cuts()
    if args.min_abs_segment_z is not None:
        value = args.min_abs_segment_z
        cuts = dataclasses.replace(cuts, min_abs_segment_z=None if str(value).lower() == "none" else float(value))
    return cuts


def _data(args, dtype, device, events=None, target_format=None):
    """(forward, batches, input description).  ``events``: simulate only these events (a target file's)."""
    from .batching import row_batches, segment_batches, unit_keys
    import numpy as np
    if args.forward == "toy":
        from .toy import ToyForward, make_toy_tracks
        rows = make_toy_tracks(args.ntracks or 4, seed=args.track_seed or 0, dtype=dtype, device=device)
        return (ToyForward(waveforms=args.loss == "mse"), row_batches(rows, args.tracks_per_batch),
                {"toy_tracks": args.ntracks or 4, "track_seed": args.track_seed or 0})
    from sparsetpc.segments import load_segments
    from .forward import SimForward
    cuts = _cuts(args)
    segs = load_segments(args.input, cuts=cuts, dtype=dtype, device=device, events=events)
    group = "event" if args.target_file else args.group
    unit = "event" if group == "event" else "track"
    if events is not None:
        present = set(int(e) for e in np.unique(segs.event_id.cpu().numpy()))
        lacking = [e for e in events if e not in present]
        if lacking:
            shown = ", ".join(str(e) for e in lacking[:10]) + (" ..." if len(lacking) > 10 else "")
            raise UsageError(f"--target-file {args.target_file} has {len(lacking)} event(s) that --input "
                             f"{args.input} lacks after the selection ({shown}); their readouts could not be "
                             "simulated (--no-cuts / --min-abs-segment-z none keep more segments)")
    available = len(np.unique(unit_keys(segs, group), axis=0))
    if args.ntracks is not None and args.ntracks > available:
        raise UsageError(f"--ntracks {args.ntracks}: only {available} {unit}(s) pass the selection in {args.input}")
    batches = segment_batches(segs, args.ntracks, args.tracks_per_batch, args.track_seed, group)
    from sparsetpc.cli.main import response_from_arguments
    response = response_from_arguments(args)
    forward = SimForward(memory_budget=args.memory_budget, mode=args.mode, return_waveforms=args.loss == "mse",
                         clock_phases=args.clock_phases, response=response)
    if target_format == "packets":
        from .targets import WrittenChannelsForward
        forward = WrittenChannelsForward(forward, _layout(args))
    from .checkpoint import file_digest
    # the SHA-256 of the input is part of the closure-target cache key (targets.simulate_targets hashes this
    # dict): a file rewritten in place with the same size must not reuse the old targets
    info = {"input": os.path.abspath(args.input), "input_size": os.path.getsize(args.input),
            "input_sha256": file_digest(args.input)["sha256"],
            "ntracks": args.ntracks, "track_seed": args.track_seed, "group": group, "no_cuts": args.no_cuts,
            "cuts": dataclasses.asdict(cuts), "units_available": available,
            **({} if args.response == "analytic" else {"response": file_digest(args.response)["sha256"]}),
            "events": None if events is None else list(events),
            "units": [[list(key) for key in batch.keys] for batch in batches],     # (eventID, trackID|-1) per batch
            "segments": int(sum(len(batch.data) for batch in batches))}            # simulated, after the selection
    return forward, batches, info


def _targets_and_init(args, ps):
    target_values = None
    if args.target_values:
        target_values = {s.name: s.nominal for s in ps}
        target_values.update(args.target_values_parsed)
    elif args.closure_seed is not None:
        target_values = ps.sample_uniform(args.closure_seed)
    if args.init_values:
        init = ps.nominal_values()
        init.update(args.init_values_parsed)
    elif args.init_seed is not None:
        init = ps.sample_uniform(args.init_seed)
    else:
        init = ps.nominal_values()
    return target_values, init


def _loss(args, name=None):
    from .losses import HitsLoss
    scales = _key_values(args.loss_scales, "--loss-scales")
    return HitsLoss(name or args.loss, scales=scales, **_options(args.loss_opt))


def fit_definition(args, ps, target_values, init, target_table=None) -> dict:
    """What defines a fit: a resumed fit must have the same (checkpoint.check_definition)."""
    from .checkpoint import file_digest
    noise_target = not (args.no_noise or args.no_noise_target)
    # the relaxed guess is already the expectation over the noise; only the reference front end draws it
    noise_guess = not (args.no_noise or args.no_noise_guess) and args.mode == "reference"
    if args.forward == "toy":
        data = {"forward": "toy", "toy_tracks": args.ntracks or 4, "track_seed": args.track_seed or 0}
    else:
        data = {"forward": "sim", "input": file_digest(args.input), "mode": args.mode,
                "clock_phases": args.clock_phases,
                "selection": {"ntracks": args.ntracks, "track_seed": args.track_seed,
                              "tracks_per_batch": args.tracks_per_batch,
                              "group": "event" if args.target_file else args.group,
                              "cuts": dataclasses.asdict(_cuts(args)),
                              "events": None if target_table is None else
                              [int(e) for e in sorted(set(target_table["event_id"].tolist()))]}}
    if args.target_file:
        targets = {"file": file_digest(args.target_file), "layout": None if args.layout is None else
                   file_digest(args.layout)}
    else:
        targets = {"closure_seed": args.closure_seed, "values": dict(target_values)}
    return {"data": data, "targets": targets, "paramset": ps.to_dict(), "fixed": dict(args.fixed_values),
            "initial": dict(init), "loss": args.loss_fn.describe(), "noise": {"target": noise_target,
                                                                            "guess": noise_guess},
            "dtype": str(DTYPES[args.dtype]), "seed": args.seed,
            "optimizer": {"name": args.optimizer, "kwargs": args.optimizer_kwargs_parsed, "clip": args.clip,
                          "scheduler": args.scheduler, "scheduler_kwargs": args.scheduler_kwargs_parsed,
                          "scheduler_step": args.scheduler_step, "shuffle": not args.no_shuffle},
            "sigma_replicas": args.sigma_replicas}


# ---------------------------------------------------------------------------------------------- commands
def cmd_fit(args) -> int:
    from . import checkpoint as ckpt
    from .distributed import init_from_env
    from .fitter import FitConfig, Fitter
    from .targets import read_target_table, target_events, target_file_format, targets_from_file
    dtype, device = DTYPES[args.dtype], args.device
    ps = args.paramset
    target_values, init = _targets_and_init(args, ps)
    target_table = target_format = None
    if args.target_file:                      # read (and checked: finite, not empty) before any simulation
        target_format = target_file_format(args.target_file)
        target_table = read_target_table(args.target_file, _layout(args) if target_format == "packets" else None)
    definition = fit_definition(args, ps, target_values, init, target_table)
    ck_path = ckpt.checkpoint_path(args.out)
    if args.resume and os.path.exists(ck_path):
        diffs = ckpt.check_definition(ck_path, ckpt.load_checkpoint(ck_path), definition, force=args.resume_force)
        if diffs:
            print(f"{PROG}: warning: --resume-force: resuming {ck_path} although " + "; ".join(diffs),
                  file=sys.stderr)
    elif args.resume:
        print(f"{PROG}: note: no checkpoint in {args.out}; starting the fit from the beginning", file=sys.stderr)
    dist = init_from_env(device)
    try:
        events = None if target_table is None else target_events(target_table)
        forward, batches, info = _data(args, dtype, device, events=events, target_format=target_format)
        noise_target = not (args.no_noise or args.no_noise_target)
        # the relaxed guess is already the expectation over the noise; only the reference front end draws it
        noise_guess = not (args.no_noise or args.no_noise_guess) and args.mode == "reference"
        config = FitConfig(
            iterations=args.iterations, optimizer=args.optimizer, optimizer_kwargs=args.optimizer_kwargs_parsed,
            clip_norm=args.clip or None, scheduler=args.scheduler, scheduler_kwargs=args.scheduler_kwargs_parsed,
            scheduler_step=args.scheduler_step, checkpoint_every=args.checkpoint_every, seed=args.seed,
            shuffle=not args.no_shuffle, noise_guess=noise_guess, progress=not args.no_progress,
            history_format=args.history_format, stop_after=args.stop_after, hessian=not args.no_hessian,
            hessian_step=args.hessian_step, errordef_up=args.errordef, plots=not args.no_plots,
            polish_lbfgs=args.polish_lbfgs, polish_kwargs=args.polish_kwargs_parsed, max_wall_s=args.max_wall,
            polish_max_wall_s=args.polish_max_wall, polish_ftol=args.polish_ftol,
            polish_precondition_after=args.precondition_after, polish_edm=args.polish_edm,
            sigma_replicas=args.sigma_replicas, score_replicas=args.score_replicas)
        targets = None
        if args.target_file:
            targets = targets_from_file(args.target_file, [dist.shard(b) for b in batches], dtype, device,
                                        table=target_table)
            info["target_file"] = {"path": os.path.abspath(args.target_file), "format": target_format,
                                   "readouts": int(len(target_table))}
        meta = {"input": info, "loss": args.loss_fn.describe(), "noise_target": noise_target,
                "closure_seed": args.closure_seed, "argv": sys.argv, "definition": definition}
        curvature = _curvature(args, forward, ps, dtype) if config.polish_lbfgs else None
        os.makedirs(args.out, exist_ok=True)
        fitter = Fitter(ps, forward, args.loss_fn, batches, config, targets=targets, target_values=target_values,
                        target_noise=noise_target, initial_values=init, fixed=args.fixed_values,
                        out_dir=args.out, dist=dist, dtype=dtype, device=device, meta=meta, curvature=curvature)
        result = fitter.run(resume=args.resume, resume_force=args.resume_force)
        if dist.is_main:
            if result.get("interrupted"):
                print(f"stopped after iteration {result['iteration']} (--stop-after)", file=sys.stderr)
                return 3
            _summary(result)
        return 0
    finally:
        dist.close()


def _fisher_reason(args, ps, dtype, mode):
    """Why the Fisher preconditioner does not apply to this fit (None where it does)."""
    from .curvature import fisher_unavailable
    if args.forward == "toy":
        return "the forward model is the toy, not the simulator"
    return fisher_unavailable(args.loss_fn, mode, ps, dtype)


def _curvature(args, forward, ps, dtype):
    """The polish's preconditioner (``--precondition``): a curvature.FisherCurvature or None."""
    from .curvature import FisherCurvature
    if args.precondition == "none" or _fisher_reason(args, ps, dtype, getattr(forward, "mode", None)) is not None:
        return None          # "fisher" where it does not apply is refused by check_arguments
    from sparsetpc.electronics import FrontEnd
    front_end = FrontEnd(tick=forward.detector.tick,
                         **({} if args.clock_phases is None else {"clock_phases": int(args.clock_phases)}))
    return FisherCurvature(forward, ps.names, front_end=front_end)


def _summary(result) -> None:
    replicas = result.get("replica_sandwich") is not None
    print(f"{'param':>12} {'initial':>12} {'target':>12} {'fitted':>12} {'sigma':>10} {'sandwich':>10}"
          + (f" {'replica sandwich':>16}" if replicas else ""))
    for name, e in result["params"].items():
        fmt = lambda v: "-" if v is None else f"{v:.5g}"
        print(f"{name:>12} {fmt(e['initial']):>12} {fmt(e['target']):>12} {fmt(e['fitted']):>12} {fmt(e['sigma']):>10} "
              f"{fmt(e.get('sigma_sandwich')):>10}" + (f" {fmt(e.get('sigma_replica_sandwich')):>16}" if replicas else ""))
    if replicas and result["replica_sandwich"].get("reason"):
        print(f"replica sandwich not computed: {result['replica_sandwich']['reason']}")
    print(f"iterations {result['iterations']}  final loss {result['final_loss']:.5g}  wall {result['wall_time_s']:.1f} s")
    if result.get("sigma_reason"):
        print(f"no sigma: {result['sigma_reason']}")
    if result.get("converged") is False:
        print("NOT CONVERGED (see warnings in result.json)")
    for warning in result.get("warnings") or []:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def cmd_scan(args) -> int:
    import numpy as np
    from ._io import write_json
    from .plots import plot_scan
    from .scan import loss_scan
    from .targets import simulate_targets
    dtype, device = DTYPES[args.dtype], args.device
    ps = args.paramset
    target_values, _ = _targets_and_init(args, ps)
    forward, batches, info = _data(args, dtype, device)
    if any(e.partition(":")[0] == "mse" for e in args.losses):
        for attr in ("return_waveforms", "waveforms"):
            if hasattr(forward, attr):
                setattr(forward, attr, True)
    noise_target = not (args.no_noise or args.no_noise_target)
    targets = simulate_targets(forward, ps, batches, target_values, dtype=dtype, device=device, noise=noise_target,
                               seed=args.seed, fixed=args.fixed_values)
    losses = args.scan_losses
    scans = []
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    for spec in ps:
        values = np.linspace(spec.low, spec.high, args.points)
        scan = loss_scan(forward, ps, batches, targets, losses, spec.name, values, target_values, dtype=dtype,
                         device=device, fixed=args.fixed_values)
        scans.append(scan)
        plot_scan(scan, os.path.join(args.out, f"scan_{spec.name}.png"))
        print(f"{spec.name}: " + ", ".join(f"{k}: minima={v['n_local_minima']} rough={v['roughness']:.3g} "
                                          f"towards={v['monotone_fraction']:.2f}" for k, v in scan["smoothness"].items()))
    write_json(os.path.join(args.out, "scan.json"), {"input": info, "targets": target_values, "scans": scans,
                                                      "wall_time_s": time.perf_counter() - t0})
    return 0


def _expected_errors() -> tuple:
    """The calibration package's own exceptions (expected failures: one line, exit 2)."""
    from .checkpoint import CheckpointError
    from .paramsets import ParamSetError
    return (ParamSetError, CheckpointError)


def cmd_select(args) -> int:
    """``select``: Fisher information per candidate track, a greedy + exchange choice; writes the report (with
    every matrix) first, then the chosen tracks, then the figure."""
    import h5py
    import numpy as np
    import sparsetpc as st
    from sparsetpc.cli.errors import check_output_path, describe
    from sparsetpc.electronics import FrontEnd
    from sparsetpc.io import atomic_write
    from sparsetpc.params import Params
    from sparsetpc.segments import read_segment_rows_and_frame, swap_xz
    from . import selection
    from .checkpoint import file_digest
    from ._io import write_json
    from .plots import plot_selection
    _require(args.n >= 1, f"--n must be at least 1, got {args.n}")
    _require(args.clock_phases >= 1, f"--clock-phases must be at least 1, got {args.clock_phases}")
    _require(args.threads is None or args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    for value, option in ((args.min_length, "--min-length"), (args.min_drift_extent, "--min-drift-extent"),
                          (args.max_abs_cos_theta, "--max-abs-cos-theta")):
        _require(math.isfinite(value) and value >= 0, f"{option} must be a finite number >= 0, got {value}")
    unknown = [n for n in args.params if n not in Params.names()]
    _require(not unknown, f"--params: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(Params.names())}")
    _require(len(set(args.params)) == len(args.params), "--params: a parameter is given twice")
    goals = _key_values(args.goal, "--goal")
    stray = [k for k in goals if k not in args.params]
    _require(not stray, f"--goal names parameter(s) not in --params: {', '.join(stray)}")
    _require(all(v > 0 for v in goals.values()), "--goal: fractions must be > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = check_memory_budget(args.memory_budget)
    report_path = args.report or os.path.splitext(args.out)[0] + ".json"
    figure = os.path.splitext(report_path)[0] + ".png"
    outputs = {"--out": args.out, "--report": report_path, "the figure": figure}
    _require(len({os.path.abspath(v) for v in outputs.values()}) == 3,
             f"--out {args.out}, the report {report_path} and the figure {figure} must be three different files")
    for option, path in outputs.items():
        check_output_path(path, inputs=[args.input], option=option)
    _require(os.path.exists(args.input), f"--input {args.input}: no such file")
    _require(os.path.isfile(args.input), f"--input {args.input}: not a file")

    stored, swap = read_segment_rows_and_frame(args.input)
    rows = swap_xz(stored) if swap else stored
    candidates = selection.track_candidates(rows, pdg=args.pdg, min_length=args.min_length,
                                            min_drift_extent=args.min_drift_extent,
                                            max_abs_cos_theta=args.max_abs_cos_theta)
    if not candidates:
        raise UsageError(f"--input {args.input}: no track passes the selection (|PDG| in {args.pdg}, length >= "
                         f"{args.min_length} cm, drift extent >= {args.min_drift_extent} cm, |cos θ| < "
                         f"{args.max_abs_cos_theta})")
    events = [c.event for c in candidates]
    available = len(candidates) if args.any_per_event else len(set(events))
    if args.n > available:
        raise UsageError(f"--n {args.n}: only {available} {'track' if args.any_per_event else 'event'}(s) with a "
                         f"candidate track in {args.input}")
    params = Params.nominal(dtype=torch.float64)
    values = {n: float(getattr(params, n)) for n in args.params}
    definition = {"input_sha256": file_digest(args.input)["sha256"], "params": list(args.params),
                  "values": values, "clock_phases": args.clock_phases, "detector": "module-0 (built in)",
                  "candidates": [[c.event, c.track] for c in candidates]}
    t0 = time.perf_counter()
    if args.reuse:
        try:
            with open(args.reuse) as handle:
                earlier = json.load(handle)
            same = earlier["definition"] == definition
            matrices = np.asarray([c["fisher"] for c in earlier["candidates"]], dtype=np.float64)
            walls = [float(c["fisher_wall_s"]) for c in earlier["candidates"]]
            warned = [int(c["simulation_warnings"]) for c in earlier["candidates"]]
            shape_ok = matrices.shape == (len(candidates), len(args.params), len(args.params))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"--reuse {args.reuse}: not a selection report ({describe(error)})") from None
        _require(same and shape_ok, f"--reuse {args.reuse}: made from another input, parameter list, clock phases "
                                    "or candidate selection")
    else:
        detector = st.Detector.default()
        front_end = FrontEnd(tick=detector.tick, clock_phases=args.clock_phases)
        print(f"{len(candidates)} candidate tracks in {len(set(events))} events; Fisher information of each "
              f"({', '.join(args.params)}) at the nominal values", file=sys.stderr)
        matrices, walls, warned = selection.candidate_fisher(rows, candidates, args.params, params=params,
                                                             detector=detector, front_end=front_end,
                                                             memory_budget=budget, progress=not args.no_progress)
    usable = [i for i in range(len(candidates)) if np.all(np.isfinite(matrices[i]))]
    if len(usable) < len(candidates):
        print(f"{len(candidates) - len(usable)} candidate(s) with a non-finite Fisher matrix left out (listed in "
              f"{report_path})", file=sys.stderr)
    usable_events = len(usable) if args.any_per_event else len({events[i] for i in usable})
    _require(args.n <= usable_events, f"--n {args.n}: only {usable_events} usable candidate(s)/event(s) left")
    choice = selection.choose_tracks(matrices[usable], values, args.n, goals=goals, events=[events[i] for i in usable],
                                     one_per_event=not args.any_per_event)
    chosen = [usable[i] for i in choice.indices]
    baseline = selection.first_per_event(candidates, args.n)
    baseline_sigma = selection.combined_relative_sigma(matrices, values, baseline)
    percent = lambda d: {k: 100.0 * v for k, v in d.items()}        # inf/NaN are written as null
    report = {
        "what": "tracks chosen by the Fisher information of the readout likelihood at the nominal values "
                "(σ in % of the value, every listed parameter free; no fit, no noise draw); fit them with "
                "--no-cuts: the information is of every segment of each track",
        "command": "python -m calibration " + " ".join(args.argv), "definition": definition,
        "goals": {n: goals.get(n, 0.1) for n in args.params}, "one_per_event": not args.any_per_event,
        "chosen": [[candidates[i].event, candidates[i].track] for i in chosen],
        "predicted_sigma_percent": percent(choice.relative_sigma),
        "exchanges": choice.exchanges, "exchanges_converged": choice.converged,
        "baseline": {"what": f"the first candidate of each event, {len(baseline)} events in order",
                     "tracks": [[candidates[i].event, candidates[i].track] for i in baseline],
                     "predicted_sigma_percent": percent(baseline_sigma)},
        "wall_time_s": time.perf_counter() - t0,
        "candidates": [dict(c.as_dict(), chosen=i in chosen, usable=i in usable, fisher=matrices[i].tolist(),
                            sigma_percent=percent(selection.combined_relative_sigma(matrices, values, [i])),
                            fisher_wall_s=walls[i], simulation_warnings=warned[i])
                       for i, c in enumerate(candidates)],
    }
    write_json(report_path, report)

    chosen_keys = {(candidates[i].event, candidates[i].track) for i in chosen}
    key = zip(np.asarray(stored["eventID"]).astype(np.int64).tolist(), np.asarray(stored["trackID"]).astype(np.int64).tolist())
    keep = np.array([k in chosen_keys for k in key])
    with h5py.File(args.input, "r") as handle:
        attrs = dict(handle["segments"].attrs)
    with atomic_write(args.out) as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("segments", data=stored[keep])
            for k, v in attrs.items():
                dset.attrs[k] = v
            f.attrs["generator"] = report["command"]
    plot_selection(report, figure)
    print(f"{'σ [%]':>10} " + " ".join(f"{n:>10}" for n in args.params))
    print(f"{'chosen':>10} " + " ".join(f"{100 * choice.relative_sigma[n]:>10.3g}" for n in args.params))
    print(f"{'first':>10} " + " ".join(f"{100 * baseline_sigma[n]:>10.3g}" for n in args.params))
    print(f"wrote {args.out} ({len(chosen)} tracks, {int(keep.sum())} segments: fit them with --no-cuts), "
          f"{report_path} and {figure}")
    return 0


def _run(args) -> int:
    if args.command == "select":
        return cmd_select(args)
    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "fit":
        return cmd_fit(args)
    return cmd_scan(args)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)      # for the record (select's report and output)
    return run_guarded(PROG, lambda: _run(args), debug=args.debug, extra_expected=_expected_errors())


if __name__ == "__main__":
    raise SystemExit(main())
