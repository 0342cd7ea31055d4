"""Command line: ``python -m validation compare|run-reference|to-packets``.

Exit codes: 0 within tolerance (or done), 1 beyond tolerance, 2 unreadable input (the message names the file
and the problem).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparsetpc.exceptions import GeometryError, InputFormatError


def _layout(path):
    from sparsetpc.layout import PixelLayout
    return PixelLayout.default() if path is None else PixelLayout.from_yaml(path)


def _cmd_compare(args) -> int:
    from .compare import Tolerances, compare_tables, format_summary, json_ready, restrict_to_written_channels
    from .readers import detect_format, read_hits
    layout = _layout(args.layout)
    kinds = {name: detect_format(path) for name, path in (("ref", args.ref), ("ours", args.ours))}
    if "packets" in kinds.values() and not layout.has_wiring:
        raise InputFormatError(f"{args.ref if kinds['ref'] == 'packets' else args.ours}: a packets file needs the "
                               "LArPix wiring: give --layout multi_tile_layout-2.2.16.yaml")
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
        from .run_reference import _write_json
        _write_json(Path(args.json), json_ready(summary))
    return 0 if summary["within_tolerance"] else 1


def _cmd_run_reference(args) -> int:
    from .compare import Tolerances
    from .run_reference import run_reference
    tol = Tolerances(adc=args.tolerance_adc, time=args.tolerance_time, unmatched=args.tolerance_unmatched)
    results = run_reference(args.shared, args.out, tol, memory_budget=args.memory_budget,
                            plots=not args.no_plots, cases=args.case, reference_time_axis=args.reference_time_axis)
    bad = [r["case"] for r in results if not r["within_tolerance"]]
    print(f"{len(results) - len(bad)} of {len(results)} cases within tolerance" + (f"; beyond: {bad}" if bad else ""))
    return 1 if bad else 0


def _cmd_to_packets(args) -> int:
    from sparsetpc.packets import write_packets
    from .readers import read_hits
    if args.layout is None:
        raise InputFormatError("to-packets needs the LArPix wiring: give --layout multi_tile_layout-2.2.16.yaml")
    layout = _layout(args.layout)
    table = read_hits(args.input, layout=layout)
    summary = write_packets(args.output, table.hits, layout, time_axis=args.time_axis)
    print(json.dumps(summary.__dict__))
    return 0


def _add_tolerances(p, adc=0.05, time=0.05):
    p.add_argument("--tolerance-adc", type=float, default=adc, help="max mean |dADC| over matched readouts [counts]")
    p.add_argument("--tolerance-time", type=float, default=time, help="max mean |dt| over matched readouts [us]")
    p.add_argument("--tolerance-unmatched", type=float, default=0.0,
                   help="max fraction of readouts without partner (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m validation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare two hit files (packets HDF5, reference npz or sparsetpc HDF5)")
    c.add_argument("ref")
    c.add_argument("ours")
    c.add_argument("--json", help="write the summary here")
    c.add_argument("--plots", help="directory for PNG plots")
    c.add_argument("--max-events", type=int, default=5, help="events to draw (default 5)")
    c.add_argument("--layout", help="larnd-sim pixel layout YAML (needed for packets files)")
    c.add_argument("--raw-time", action="store_true", help="keep each format's own time numbers (no conversion)")
    c.add_argument("--restrict", choices=("auto", "no"), default="auto",
                   help="auto: when one side is a packets file, drop the other side's readouts on channels "
                        "larnd-sim does not write")
    _add_tolerances(c)
    c.set_defaults(func=_cmd_compare)
    r = sub.add_parser("run-reference", help="simulate every reference case and compare")
    r.add_argument("--shared", help="shared data directory (default $SPARSETPC_SHARED_DATA or <repo>/../shared/data)")
    r.add_argument("--out", default="validation_out", help="output directory (default validation_out)")
    r.add_argument("--case", action="append", help="run only this case (repeatable), e.g. mixed_trk0_fwd")
    r.add_argument("--memory-budget", default="2GB")
    r.add_argument("--no-plots", action="store_true")
    r.add_argument("--reference-time-axis", action="store_true",
                   help="for *_fwd cases, evaluate the current on the differentiable reference's per-segment time axis")
    _add_tolerances(r)
    r.set_defaults(func=_cmd_run_reference)
    t = sub.add_parser("to-packets", help="write any hit file as a larnd-sim packets HDF5")
    t.add_argument("input")
    t.add_argument("output")
    t.add_argument("--layout", help="larnd-sim pixel layout YAML (required: the wiring)")
    t.add_argument("--time-axis", choices=("clock", "larnd-sim"), default="clock")
    t.set_defaults(func=_cmd_to_packets)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputFormatError, GeometryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if "simulator not available" not in str(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
