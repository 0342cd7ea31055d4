"""Which integrates the diffused cloud correctly: the analytic mode or a table written from the analytic model?

Issue #12 asks a table made from the analytic model to reproduce the analytic mode.  At nominal diffusion the two
differ by up to ~0.07 ADC per readout; this script shows where the difference comes from by comparing both with
an independent integral of the same physics: ``benchmarks/reference_convergence.py``'s continuum ``cloud/point``
(the pad response of each Gauss-Legendre landing point on the pad, per-point drift, exact longitudinal smearing),
on the shared reference tracks, in reference mode on the reference's per-segment time axis (the continuum's).

    PYTHONPATH=. python benchmarks/field_response_parity.py [--cases ...]

Prints mean / max |ΔADC|, mean |Δt| and the per-pixel charge residual of each pair; writes
benchmarks/results/field_response_parity.json.  Needs ../shared/data.  About 2 min on one core.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sparsetpc.io import write_json  # noqa: E402  (atomic, strict JSON)
sys.path.insert(0, str(REPO / "benchmarks"))

CASES = ("test_segment", "mixed_trk0", "mixed_trk1", "mixed_trk4")


def main(argv=None):
    import reference_convergence as rc
    from sparsetpc.field_response import LARNDSIM_BIN_SIZE, analytic_response_table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--bin-size", type=float, default=LARNDSIM_BIN_SIZE / 4, help="table bin [cm]")
    parser.add_argument("--sampling", type=float, default=0.025, help="table sampling [µs]")
    parser.add_argument("--n-gl", type=int, default=8, help="continuum: Gauss-Legendre nodes per pad half per axis")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "field_response_parity.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = rc.shared_data_dir()
    if not (data / "reference").is_dir():
        sys.exit(f"reference data not found under {data} (set SPARSETPC_SHARED_DATA)")
    table = analytic_response_table(bin_size=args.bin_size, sampling=args.sampling)
    report = {"table": {"model": "analytic", "shape": list(table.shape), "bin_size_cm": args.bin_size,
                        "sampling_us": args.sampling},
              "continuum": {"shape": "cloud", "drift": "point", "n_gl": args.n_gl},
              "mode": "reference (reference time axis, one clock phase), nominal parameters, float64", "cases": {}}
    print(f"{'case':13s} {'pair':26s} {'mean|dADC|':>10s} {'max':>7s} {'mean|dt| us':>11s} {'charge ADC-eq':>13s}")
    for name in args.cases:
        start = time.perf_counter()
        case = rc.load_case(name, data)
        seg = rc.quench_drift(case["rows"], case["fields"])
        wave = rc.continuum_waveforms(case, "cloud", "point", seg=seg, n_gl=args.n_gl)
        adc, t, valid = rc.readout(wave, case["pedestal"])
        runs = {"continuum": dict(adc=adc, t=t, valid=valid, charge=wave.sum(1).numpy()),
                "analytic": rc.sparsetpc_run(case), "table": rc.sparsetpc_run(case, table)}
        entry = {}
        for a, b in (("analytic", "table"), ("analytic", "continuum"), ("table", "continuum")):
            r = rc._cmp(runs[a], runs[b])
            entry[f"{a} vs {b}"] = r
            print(f"{name:13s} {a + ' vs ' + b:26s} {r['mean_abs_dadc']:10.4f} {r['max_abs_dadc']:7.3f} "
                  f"{r['mean_abs_dt_us']:11.4f} {r['charge']['mean_abs_dq_adc']:13.4f}"
                  + (f"  ({r['n_only_a']} / {r['n_only_b']} readouts in one only)" if r["n_only_a"] + r["n_only_b"]
                     else ""), flush=True)
        entry["seconds"] = time.perf_counter() - start
        report["cases"][name] = entry
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
