"""``sparsetpc`` command line."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

DTYPES = {"float32": "float32", "float64": "float64"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsetpc", description="Sparse differentiable LArTPC (LArPix) simulator")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate an edep-sim segments file into pixel hits")
    sim.add_argument("input", help="edep-sim HDF5 file with a `segments` dataset")
    sim.add_argument("-o", "--output", required=True, help="output HDF5 file")
    sim.add_argument("--detector", help="larnd-sim detector properties YAML (default: built-in module 0)")
    sim.add_argument("--layout", help="larnd-sim pixel layout YAML (default: built-in 2.2.16 geometry)")
    sim.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    sim.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    sim.add_argument("--memory-budget", default="2GB", help="largest chunk of work, e.g. 2GB, 512MiB")
    sim.add_argument("--events", type=int, nargs="+", help="simulate only these eventIDs")
    sim.add_argument("--no-cuts", action="store_true", help="keep every segment with dx > 0 (no track selection)")
    sim.add_argument("--mode", default="relaxed", choices=["relaxed", "hard"], help="front end: relaxed (float ADC) or hard (larnd-sim integer ADC)")
    sim.add_argument("--noise", action="store_true", help="electronics noise (seeded)")
    sim.add_argument("--seed", type=int, default=0, help="noise seed")
    sim.add_argument("--format", default="sparsetpc", choices=["sparsetpc", "packets"],
                     help="sparsetpc: hits + segments datasets; packets: larnd-sim LArPix packets HDF5 (needs --layout)")
    sim.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (default 1: on small machines OpenMP fork/join costs more than it saves)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")

    ex = sub.add_parser("example", help="write seeded example tracks in edep-sim format")
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--events", type=int, default=3)
    ex.add_argument("--tracks-per-event", type=int, default=3)
    ex.add_argument("--seed", type=int, default=0)
    return parser


def _simulate(args) -> int:
    import torch
    import sparsetpc as st
    from sparsetpc.io import write_hits

    dtype = getattr(torch, DTYPES[args.dtype])
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    detector = st.Detector.from_larnd_yaml(args.detector, args.layout) if (args.detector or args.layout) else st.Detector.default()
    cuts = st.Cuts.none() if args.no_cuts else st.Cuts()
    segments = st.load_segments(args.input, cuts=cuts, dtype=dtype, device=args.device, events=args.events)
    params = st.Params.nominal(dtype=dtype, device=args.device,
                               **{k: v for k, v in detector.nominal_parameters.items()})
    events = segments.events()
    start = time.perf_counter()
    all_hits = []
    from tqdm.auto import tqdm
    with torch.no_grad():
        for event in tqdm(events, desc="events", unit="event", disable=args.quiet):
            subset = segments.select((segments.event_id == int(event)).cpu().numpy())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                hits = st.simulate(subset, detector, params, mode=args.mode, memory_budget=args.memory_budget,
                                   noise=args.noise, seed=args.seed + int(event))
            for w in caught:
                print(f"warning (event {int(event)}): {w.message}", file=sys.stderr)
            all_hits.append(hits)
    merged = _concat(all_hits)
    elapsed = time.perf_counter() - start
    out = Path(args.output)
    if args.format == "packets":
        from sparsetpc.packets import write_packets
        if detector.layout is None or not detector.layout.has_wiring:
            print("error: --format packets needs the chip/channel wiring: pass --layout multi_tile_layout-*.yaml", file=sys.stderr)
            return 2
        summary = write_packets(out, merged, detector.layout)
        print(f"wrote {summary.n_data_packets} data packets ({summary.n_disabled} on disabled edge channels skipped) to {out}")
    else:
        pedestal = st.FrontEnd().pedestal(hard=(args.mode == "hard"))
        write_hits(out, merged, segments.rows, adc_pedestal=pedestal, mode=args.mode, metadata={"mode": args.mode, "dtype": args.dtype, "device": args.device,
                                                          "params": params.as_dict(), "input": str(args.input),
                                                          "cuts": "none" if args.no_cuts else vars(cuts)})
        print(f"wrote {len(merged)} hits from {len(segments)} segments in {len(events)} event(s) to {out} "
              f"({elapsed:.2f} s simulation)")
    return 0


def _concat(hits_list):
    import torch
    from sparsetpc.hits import Hits
    if len(hits_list) == 1:
        return hits_list[0]
    fields = ("event", "pixel", "readout", "plane", "ix", "iy", "x", "y", "t", "adc")
    offset = 0
    pixels = []
    for h in hits_list:
        pixels.append(h.pixel + offset)
        offset += h.pixel_table.shape[0]
    merged = {f: torch.cat([getattr(h, f) for h in hits_list]) for f in fields if f != "pixel"}
    return Hits(pixel=torch.cat(pixels), pixel_table=torch.cat([h.pixel_table for h in hits_list]),
                n_skipped_segments=sum(h.n_skipped_segments for h in hits_list), **merged)


def _example(args) -> int:
    from sparsetpc.example import write_example
    path = write_example(args.output, n_events=args.events, tracks_per_event=args.tracks_per_event, seed=args.seed)
    print(f"wrote {args.events} event(s) x {args.tracks_per_event} track(s) of edep-sim segments to {path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from sparsetpc.exceptions import SparseTPCError
    try:
        if args.command == "simulate":
            return _simulate(args)
        return _example(args)
    except SparseTPCError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
