"""Command line: ``python -m validation compare|run-reference|to-packets``.

Exit codes: 0 within tolerance (or done); 1 only when ``compare``/``run-reference`` find differences beyond
tolerance; 2 every error (unreadable, empty or non-finite input, bad argument, unwritable output: one line on
stderr naming the file or option; ``--debug`` shows the traceback); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from sparsetpc.cli.errors import (EXIT_BEYOND_TOLERANCE, EXIT_ERROR, EXIT_OK, OneLineParser, UsageError,
                                  check_memory_budget, check_output_dir, check_output_path, run_guarded)

PROG = "python -m validation"


def _layout(path):
    from sparsetpc.layout import PixelLayout
    return PixelLayout.default() if path is None else PixelLayout.from_yaml(path)


def _require_wiring(layout, what: str) -> None:
    """Packets name chips and channels: the layout must carry the wiring (checked before reading or writing)."""
    if not layout.has_wiring:
        raise UsageError(f"{what} needs the LArPix chip/channel wiring, which {layout.source} lacks: "
                         "give --layout multi_tile_layout-2.2.16.yaml")


def check_tolerances(args) -> None:
    """Tolerances are finite and non-negative (``nan`` would make every comparison pass)."""
    for option, value in (("--tolerance-adc", args.tolerance_adc), ("--tolerance-time", args.tolerance_time),
                          ("--tolerance-unmatched", args.tolerance_unmatched)):
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{option} must be a finite non-negative number, got {value}")
    if args.tolerance_unmatched > 1:
        raise UsageError(f"--tolerance-unmatched is a fraction (0..1), got {args.tolerance_unmatched}")


def _cmd_compare(args) -> int:
    from .compare import Tolerances, compare_tables, format_summary, json_ready, restrict_to_written_channels
    from .readers import detect_format, read_hits
    check_tolerances(args)
    if args.max_events < 0:
        raise UsageError(f"--max-events must be non-negative, got {args.max_events}")
    if args.json:
        check_output_path(args.json, inputs=[args.ref, args.ours, args.layout], option="--json")
    if args.plots:
        check_output_dir(args.plots, option="--plots")
    layout = _layout(args.layout)
    kinds = {name: detect_format(path) for name, path in (("ref", args.ref), ("ours", args.ours))}
    for name, path in (("ref", args.ref), ("ours", args.ours)):
        if kinds[name] == "packets":
            _require_wiring(layout, f"{path}: a packets file")
    ref = read_hits(args.ref, layout=layout, raw_time=args.raw_time)
    ours = read_hits(args.ours, layout=layout, raw_time=args.raw_time)
    notes = []
    if args.restrict != "no" and layout.has_wiring and (kinds["ref"] == "packets") != (kinds["ours"] == "packets"):
        # larnd-sim's packet files lack readouts of unconnected chips and disabled edge channels
        if kinds["ref"] == "packets":
            ours, dropped = restrict_to_written_channels(ours, layout)
            notes.append(f"ours restricted to channels larnd-sim writes ({dropped} readouts dropped)")
        else:
            ref, dropped = restrict_to_written_channels(ref, layout)
            notes.append(f"ref restricted to channels larnd-sim writes ({dropped} readouts dropped)")
    tol = Tolerances(adc=args.tolerance_adc, time=args.tolerance_time, unmatched=args.tolerance_unmatched)
    summary = compare_tables(ref, ours, tol)
    summary["notes"] = notes
    if args.plots:
        from .plots import plot_comparison
        summary["plots"] = plot_comparison(ref, ours, summary, args.plots, max_events=args.max_events)
    for note in notes:
        print(note)
    print(format_summary(summary))
    if args.json:
        from sparsetpc.io import write_json
        write_json(Path(args.json), json_ready(summary))
    return EXIT_OK if summary["within_tolerance"] else EXIT_BEYOND_TOLERANCE


def _cmd_run_reference(args) -> int:
    from .compare import Tolerances
    from .run_reference import run_reference
    check_tolerances(args)
    check_memory_budget(args.memory_budget)
    check_output_dir(args.out, option="--out")
    tol = Tolerances(adc=args.tolerance_adc, time=args.tolerance_time, unmatched=args.tolerance_unmatched)
    results = run_reference(args.shared, args.out, tol, memory_budget=args.memory_budget,
                            plots=not args.no_plots, cases=args.case, reference_time_axis=args.reference_time_axis)
    bad = [r["case"] for r in results if not r["within_tolerance"]]
    print(f"{len(results) - len(bad)} of {len(results)} cases within tolerance" + (f"; beyond: {bad}" if bad else ""))
    return EXIT_BEYOND_TOLERANCE if bad else EXIT_OK


def _cmd_to_packets(args) -> int:
    from sparsetpc.packets import write_packets
    from .readers import read_hits
    check_output_path(args.output, inputs=[args.input, args.layout], option="output")
    layout = _layout(args.layout)
    _require_wiring(layout, "to-packets")
    table = read_hits(args.input, layout=layout)
    summary = write_packets(args.output, table.hits, layout, time_axis=args.time_axis)
    print(json.dumps(summary.__dict__))
    return EXIT_OK


def _add_tolerances(p, adc=0.05, time=0.05):
    p.add_argument("--tolerance-adc", type=float, default=adc, help="max mean |dADC| over matched readouts [counts]")
    p.add_argument("--tolerance-time", type=float, default=time, help="max mean |dt| over matched readouts [us]")
    p.add_argument("--tolerance-unmatched", type=float, default=0.0,
                   help="max fraction of readouts without partner (default 0)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    c = sub.add_parser("compare", parents=[common], help="compare two hit files (packets HDF5, reference npz or sparsetpc HDF5)")
    c.add_argument("ref")
    c.add_argument("ours")
    c.add_argument("--json", help="write the summary here")
    c.add_argument("--plots", help="directory for PNG plots")
    c.add_argument("--max-events", type=int, default=5, help="events to draw (default 5)")
    c.add_argument("--layout", help="larnd-sim pixel layout YAML (default: built-in 2.2.16; packets files need "
                                    "one with the chip/channel wiring)")
    c.add_argument("--raw-time", action="store_true", help="keep each format's own time numbers (no conversion)")
    c.add_argument("--restrict", choices=("auto", "no"), default="auto",
                   help="auto: when one side is a packets file, drop the other side's readouts on channels "
                        "larnd-sim does not write")
    _add_tolerances(c)
    c.set_defaults(func=_cmd_compare)
    r = sub.add_parser("run-reference", parents=[common], help="simulate every reference case and compare")
    r.add_argument("--shared", help="shared data directory (default $SPARSETPC_SHARED_DATA or <repo>/../shared/data)")
    r.add_argument("--out", default="validation_out", help="output directory (default validation_out)")
    r.add_argument("--case", action="append", help="run only this case (repeatable), e.g. mixed_trk0_fwd")
    r.add_argument("--memory-budget", default="2GB")
    r.add_argument("--no-plots", action="store_true")
    r.add_argument("--reference-time-axis", action="store_true",
                   help="for *_fwd cases, evaluate the current on the differentiable reference's per-segment time axis")
    _add_tolerances(r)
    r.set_defaults(func=_cmd_run_reference)
    t = sub.add_parser("to-packets", parents=[common], help="write any hit file as a larnd-sim packets HDF5")
    t.add_argument("input")
    t.add_argument("output")
    t.add_argument("--layout", help="larnd-sim pixel layout YAML (default: built-in 2.2.16; must carry the wiring)")
    t.add_argument("--time-axis", choices=("clock", "larnd-sim"), default="clock")
    t.set_defaults(func=_cmd_to_packets)
    return parser


def _run(args) -> int:
    try:
        return args.func(args)
    except RuntimeError as error:                # run_reference without a simulator: an expected failure
        if "simulator not available" not in str(error):
            raise
        raise UsageError(str(error)) from error


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:                   # argparse: --help (0) or a bad argument (2, one line printed)
        return stop.code if isinstance(stop.code, int) else EXIT_ERROR
    return run_guarded(PROG, lambda: _run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
