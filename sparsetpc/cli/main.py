"""``sparsetpc`` command line.

Every argument and the output path are checked before any work starts.  Errors follow the policy of
:mod:`sparsetpc.cli.errors`: one line ``sparsetpc: error: ...`` on stderr and exit 2 (a traceback only with
``--debug``); 130 when interrupted.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

from .errors import (EXIT_ERROR, EXIT_OK, OneLineParser, UsageError, check_device, check_memory_budget,
                     check_output_path, run_guarded)

PROG = "sparsetpc"
DTYPES = {"float32": "float32", "float64": "float64"}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = OneLineParser(prog=PROG, description="Sparse differentiable LArTPC (LArPix) simulator",
                     epilog="exit codes: 0 done, 2 error (one line on stderr; --debug for a traceback), 130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    sim = sub.add_parser("simulate", parents=[common], help="simulate an edep-sim segments file into pixel hits")
    sim.add_argument("input", help="edep-sim HDF5 file with a `segments` dataset (or a sparsetpc output file)")
    sim.add_argument("-o", "--output", required=True, help="output HDF5 file (must not be the input)")
    sim.add_argument("--detector", help="larnd-sim detector properties YAML (default: built-in module 0)")
    sim.add_argument("--layout", help="larnd-sim pixel layout YAML (default: built-in 2.2.16 geometry)")
    sim.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    sim.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    sim.add_argument("--memory-budget", default="2GB", help="largest chunk of work, e.g. 2GB, 512MiB")
    sim.add_argument("--events", type=int, nargs="+", help="simulate only these eventIDs (each must be in the file)")
    sim.add_argument("--no-cuts", action="store_true", help="keep every segment with dx > 0 (no track selection)")
    sim.add_argument("--mode", default="relaxed", choices=["relaxed", "hard", "reference"],
                     help="front end: relaxed (the expectation of hard mode over the noise: float ADC, every readout "
                          "with its probability), hard (larnd-sim's integer ADC; with --noise: data), or reference "
                          "(the differentiable reference model's front end)")
    sim.add_argument("--noise", action="store_true", help="electronics noise (seeded)")
    sim.add_argument("--seed", type=int, default=0, help="noise seed (non-negative)")
    sim.add_argument("--format", default="sparsetpc", choices=["sparsetpc", "packets"],
                     help="sparsetpc: hits + segments datasets; packets: larnd-sim LArPix packets HDF5 "
                          "(needs a layout with the chip/channel wiring)")
    sim.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads, >= 1 (default 1: on small machines OpenMP fork/join costs more than it saves)")
    sim.add_argument("--strict", action="store_true",
                     help="stop at the first event that fails (default: name it on stderr, skip it, write the others)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    add_response_options(sim)

    ex = sub.add_parser("example", parents=[common], help="write seeded example tracks in edep-sim format")
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--events", type=int, default=3, help="number of events (>= 1)")
    ex.add_argument("--tracks-per-event", type=int, default=None,
                    help="tracks per event (>= 1; default 3 for --kind mixed, 1 for --kind steep)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (non-negative)")
    ex.add_argument("--kind", default="mixed", choices=["mixed", "steep"],
                    help="mixed: muons, pions and protons at random angles (sin θ ≥ 0.3); steep: straight muons "
                         "with cot θ (drift over transverse extent) and drift extent in chosen ranges, each inside "
                         "one drift volume")
    ex.add_argument("--cot-theta", type=float, nargs=2, metavar=("MIN", "MAX"),
                    help="--kind steep: range of cot θ, drawn log-uniformly (default 5 50)")
    ex.add_argument("--drift-extent", type=float, nargs=2, metavar=("MIN", "MAX"),
                    help="--kind steep: range of the drift extent |Δx| in cm, at most 29 (default 15 27)")
    ex.add_argument("--step", type=float, default=None,
                    help="segment (step) length in cm (default 0.5 for --kind mixed, jittered; 0.4 for --kind steep)")
    table = sub.add_parser("response-table", parents=[common],
                           help="write a field-response table in larnd-sim's format (.npy, or .npz with its settings)")
    table.add_argument("-o", "--output", required=True, help="output .npy (larnd-sim) or .npz (with bin size, "
                       "sampling and time window)")
    table.add_argument("--model", default="analytic", choices=["analytic", "weighting-field"],
                       help="analytic: the pad response of physics.md §2.5 (collection only); weighting-field: "
                            "Shockley–Ramo current of a square pad in a parallel-plate gap (bipolar neighbours)")
    table.add_argument("--bin-size", type=float, default=0.04434, help="transverse bin [cm] (default 0.04434)")
    table.add_argument("--sampling", type=float, default=0.1, help="time bin [µs]; must divide 0.1 (default 0.1)")
    table.add_argument("--neighbours", type=int, default=None,
                       help="pitches covered beyond the pad (default 0 for analytic, 2 for weighting-field)")
    table.add_argument("--velocity", type=float, default=0.1587, help="drift velocity the table is made for [cm/µs]")
    table.add_argument("--gap", type=float, default=2.0, help="weighting-field: height of the grounded plane [cm]")
    return parser


def add_response_options(parser) -> None:
    """The ``--response`` options (shared by ``sparsetpc simulate`` and ``python -m calibration fit``)."""
    parser.add_argument("--response", default="analytic",
                        help="pad response: 'analytic' (default) or a larnd-sim field-response table (.npy/.npz)")
    parser.add_argument("--response-bin-size", type=float, default=None,
                        help="table transverse bin [cm] (default: the detector YAML's response_bin_size, else 0.04434)")
    parser.add_argument("--response-sampling", type=float, default=None,
                        help="table time bin [µs] (default: the detector YAML's response_sampling, else 0.1)")
    parser.add_argument("--response-time-window", type=float, default=None,
                        help="table window before the arrival [µs] (default: the detector YAML's time_window, "
                             "else the table's length)")
    parser.add_argument("--response-interpolation", default="linear", choices=["linear", "nearest"],
                        help="linear (smooth, differentiable) or nearest (larnd-sim's lookup, for comparisons)")


def response_from_arguments(args, detector_yaml=None, detector=None):
    """The ``response`` argument of ``st.simulate`` from the ``--response`` options: 'analytic' or a
    ResponseTable (settings: explicit options, then the detector YAML's keys, then the file's, then defaults),
    checked against ``detector``'s tick (default: module 0's)."""
    from sparsetpc.field_response import load_response_table, response_settings_from_yaml
    if args.response == "analytic":
        given = [name for name in ("response_bin_size", "response_sampling", "response_time_window")
                 if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --response TABLE.npy")
        return "analytic"
    for name in ("response_bin_size", "response_sampling", "response_time_window"):
        value = getattr(args, name)
        if value is not None and not (np.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    settings = response_settings_from_yaml(detector_yaml) if detector_yaml else {}
    for key, name in (("bin_size", "response_bin_size"), ("sampling", "response_sampling"),
                      ("time_window", "response_time_window")):
        if getattr(args, name) is not None:
            settings[key] = getattr(args, name)
    table = load_response_table(args.response, interpolation=args.response_interpolation, **settings)
    from sparsetpc.detector import Detector
    from sparsetpc.induction_table import bins_per_tick
    bins_per_tick(table, detector if detector is not None else Detector.default())
    return table


# ---------------------------------------------------------------------------- argument checks
def _check_simulate_arguments(args) -> None:
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.noise and args.mode == "relaxed":
        raise UsageError("--noise with --mode relaxed: the relaxed front end is the expectation over the noise; "
                         "simulate noisy data with --mode hard --noise")
    if args.seed < 0:
        raise UsageError(f"--seed must be non-negative, got {args.seed}")
    if args.events is not None:
        negative = [e for e in args.events if e < 0]
        if negative:
            raise UsageError(f"--events: eventIDs are non-negative, got {', '.join(map(str, negative))}")
    check_memory_budget(args.memory_budget)
    check_device(args.device)
    check_output_path(args.output, inputs=[args.input, args.detector, args.layout], option="--output")


def _check_packets_wiring(detector) -> None:
    """``--format packets`` needs the chip/channel wiring of the layout; checked before simulating."""
    layout = detector.layout
    if layout is None or not getattr(layout, "has_wiring", False):
        source = getattr(layout, "source", "the layout")
        raise UsageError(f"--format packets needs the chip/channel wiring, which {source} lacks: "
                         "pass --layout multi_tile_layout-*.yaml")


# ---------------------------------------------------------------------------- simulate
def _simulate(args) -> int:
    _check_simulate_arguments(args)
    import torch
    import sparsetpc as st
    from sparsetpc.exceptions import InputFormatError, SparseTPCError
    from sparsetpc.io import write_hits

    dtype = getattr(torch, DTYPES[args.dtype])
    torch.set_num_threads(args.threads)
    detector = st.Detector.from_larnd_yaml(args.detector, args.layout) if (args.detector or args.layout) else st.Detector.default()
    if args.format == "packets":
        _check_packets_wiring(detector)
    response = response_from_arguments(args, args.detector, detector)     # a bad table stops before any work
    cuts = st.Cuts.none() if args.no_cuts else st.Cuts()
    segments = st.load_segments(args.input, cuts=cuts, dtype=dtype, device=args.device, events=args.events)
    params = st.Params.nominal(dtype=dtype, device=args.device,
                               **{k: v for k, v in detector.nominal_parameters.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params.validate()
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    events = segments.events()
    start = time.perf_counter()
    all_hits, done, failed = [], [], []
    from tqdm.auto import tqdm
    with torch.no_grad():
        for event in tqdm(events, desc="events", unit="event", disable=args.quiet):
            event = int(event)
            subset = segments.select((segments.event_id == event).cpu().numpy())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    hits = st.simulate(subset, detector, params, mode=args.mode, memory_budget=args.memory_budget,
                                       noise=args.noise, seed=event_seed(args.seed, event), response=response)
                except SparseTPCError as error:
                    if args.strict:
                        raise type(error)(f"event {event}: {error} (--strict: stopped, nothing written)") from error
                    print(f"{PROG}: warning: event {event} skipped: {' '.join(str(error).split())}", file=sys.stderr)
                    failed.append(event)
                    continue
            for w in caught:
                if "outside larnd-sim's ranges" in str(w.message):
                    continue                    # said once above
                print(f"{PROG}: warning (event {event}): {w.message}", file=sys.stderr)
            all_hits.append(hits)
            done.append(event)
    if not done:
        raise InputFormatError(f"{args.input}: every event failed ({len(failed)} of {len(events)}); nothing written")
    merged = st.Hits.concat(all_hits)
    elapsed = time.perf_counter() - start
    out = Path(args.output)
    skipped_note = f"; {len(failed)} event(s) skipped: {', '.join(map(str, failed))}" if failed else ""
    if args.format == "packets":
        from sparsetpc.packets import write_packets
        summary = write_packets(out, merged, detector.layout)
        print(f"wrote {summary.n_data_packets} data packets ({summary.n_disabled} on disabled edge channels skipped) "
              f"to {out}{skipped_note}")
    else:
        rows = segments.rows
        if failed and rows is not None:
            rows = rows[np.isin(rows["eventID"], done)]
        pedestal = st.FrontEnd().pedestal(mode=args.mode)
        write_hits(out, merged, rows, adc_pedestal=pedestal, mode=args.mode,
                   metadata={"mode": args.mode, "dtype": args.dtype, "device": args.device,
                             "params": params.as_dict(), "input": str(args.input),
                             "cuts": "none" if args.no_cuts else vars(cuts), "events_failed": failed})
        n_segments = len(segments) if rows is None else len(rows)
        print(f"wrote {len(merged)} hits from {n_segments} segments in {len(done)} event(s) to {out} "
              f"({elapsed:.2f} s simulation){skipped_note}")
    return EXIT_OK


# ---------------------------------------------------------------------------- example
def _check_range(option: str, values, positive: bool, at_most: Optional[float] = None, unit: str = "") -> None:
    low, high = values
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UsageError(f"{option} must be finite, got {low:g} {high:g}")
    if positive and low <= 0:
        raise UsageError(f"{option} must be positive, got min {low:g}{unit}")
    if low > high:
        raise UsageError(f"{option}: min {low:g} is larger than max {high:g}")
    if at_most is not None and high > at_most:
        raise UsageError(f"{option} max {high:g}{unit} does not fit in one drift volume (at most {at_most:g}{unit})")


def _example(args) -> int:
    from sparsetpc import example
    steep = args.kind == "steep"
    if args.events < 1:
        raise UsageError(f"--events must be at least 1, got {args.events}")
    tracks = args.tracks_per_event if args.tracks_per_event is not None else (1 if steep else 3)
    if tracks < 1:
        raise UsageError(f"--tracks-per-event must be at least 1, got {tracks}")
    if args.seed < 0:
        raise UsageError(f"--seed must be non-negative, got {args.seed}")
    step = args.step if args.step is not None else example.default_step(args.kind)
    if not np.isfinite(step) or step <= 0:
        raise UsageError(f"--step must be a positive length in cm, got {step:g}")
    if not steep:
        given = [option for option, value in (("--cot-theta", args.cot_theta), ("--drift-extent", args.drift_extent))
                 if value is not None]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise UsageError(f"{' and '.join(given)} {verb} --kind steep (the mixed kind draws its own angles)")
    cot_theta = tuple(args.cot_theta) if args.cot_theta is not None else example.STEEP_COT_THETA
    drift_extent = tuple(args.drift_extent) if args.drift_extent is not None else example.STEEP_DRIFT_EXTENT
    if steep:
        _check_range("--cot-theta", cot_theta, positive=True)
        _check_range("--drift-extent", drift_extent, positive=True, at_most=example.MAX_DRIFT_EXTENT, unit=" cm")
        transverse, widest = drift_extent[0] / cot_theta[1], example.widest_transverse_extent()
        if transverse > widest:
            raise UsageError(f"--drift-extent min / --cot-theta max = {transverse:g} cm of transverse extent does not "
                             f"fit in the module ({widest:.1f} cm across): raise --cot-theta or lower --drift-extent")
    check_output_path(args.output, option="--output")
    if steep:
        path = example.write_example(args.output, n_events=args.events, tracks_per_event=tracks, seed=args.seed,
                                     step=step, kind="steep", cot_theta=cot_theta, drift_extent=drift_extent)
        print(f"wrote {args.events} event(s) x {tracks} steep muon(s) (cot θ {cot_theta[0]:g}–{cot_theta[1]:g}, "
              f"drift extent {drift_extent[0]:g}–{drift_extent[1]:g} cm, {step:g} cm steps) of edep-sim segments "
              f"to {path}")
        return EXIT_OK
    path = example.write_example(args.output, n_events=args.events, tracks_per_event=tracks, seed=args.seed, step=step)
    print(f"wrote {args.events} event(s) x {tracks} track(s) of edep-sim segments to {path}")
    return EXIT_OK


# ---------------------------------------------------------------------------- response-table
def _response_table(args) -> int:
    from sparsetpc.field_response import (analytic_response_table, save_response_table,
                                          weighting_field_response_table)
    for option, value in (("--bin-size", args.bin_size), ("--sampling", args.sampling),
                          ("--velocity", args.velocity), ("--gap", args.gap)):
        if not (np.isfinite(value) and value > 0):
            raise UsageError(f"{option} must be positive, got {value:g}")
    neighbours = args.neighbours if args.neighbours is not None else (0 if args.model == "analytic" else 2)
    if neighbours < 0:
        raise UsageError(f"--neighbours must be non-negative, got {neighbours}")
    if Path(args.output).suffix.lower() not in (".npy", ".npz"):
        raise UsageError(f"--output {args.output}: write a .npy (larnd-sim) or .npz file")
    check_output_path(args.output, option="--output")
    if args.model == "analytic":
        table = analytic_response_table(velocity=args.velocity, bin_size=args.bin_size, sampling=args.sampling,
                                        neighbours=neighbours)
    else:
        table = weighting_field_response_table(velocity=args.velocity, bin_size=args.bin_size,
                                               sampling=args.sampling, neighbours=neighbours, gap=args.gap)
    save_response_table(table, args.output)
    article = "an" if args.model[0] in "aeiou" else "a"
    print(f"wrote {article} {args.model} response table {table.shape} to {args.output}; use it with "
          f"--response {args.output} --response-bin-size {table.bin_size:g} --response-sampling {table.sampling:g} "
          f"--response-time-window {table.time_window:g} (detector YAML: response_bin_size: {table.bin_size:g}, "
          f"response_sampling: {table.sampling:g}, time_window: {table.time_window:g})")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:                   # argparse: --help (0) or a bad argument (2, one line printed)
        return stop.code if isinstance(stop.code, int) else EXIT_ERROR
    body = {"simulate": _simulate, "example": _example, "response-table": _response_table}[args.command]
    return run_guarded(PROG, lambda: body(args), debug=args.debug)


def event_seed(seed: int, event: int) -> int:
    """The noise seed of one event: a hash of (seed, event), so that no two (seed, event) pairs share a noise
    stream (seed + event did: --seed 0's event 1 drew what --seed 1's event 0 drew)."""
    import numpy as np
    return int(np.random.SeedSequence([int(seed), int(event) & 0xFFFFFFFF, int(event) >> 32 & 0x7FFFFFFF])
               .generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)
