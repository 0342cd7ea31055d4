"""CPU vs CUDA agreement and CUDA timings (run on a GPU machine; prints a table and writes JSON).

    python benchmarks/cuda_check.py --out cuda_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from scaling import _segment_rows, _track_rows  # noqa: E402

import sparsetpc as st  # noqa: E402

NAMES = ("Ab", "kb", "eField", "vdrift", "lifetime", "long_diff", "tran_diff", "MeVToElectrons")


def run(rows, device, dtype=torch.float64, backward=True):
    params = st.Params.nominal(dtype=dtype, device=device)
    if backward:
        params.requires_grad_(NAMES)
    segments = st.Segments.from_numpy(rows, dtype=dtype, device=device, swap=False)
    hits = st.simulate(segments, st.Detector.default(), params, memory_budget="8GB")
    grads = None
    if backward:
        loss = hits.adc.sum() + hits.t.sum()
        grads = torch.stack(torch.autograd.grad(loss, [getattr(params, n) for n in NAMES])).cpu()
    return hits, grads


def timed(rows, device, backward):
    run(rows, device, backward=backward)   # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(rows, device, backward=backward)
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"time_s": time.perf_counter() - start}
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="cuda_check.json")
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "no CUDA device"
    cases = {"generated": _track_rows("generated_1"), "segment_dz10_cot20": _segment_rows(10.0, 20.0),
             "segment_dz29_cot50": _segment_rows(29.0, 50.0)}
    try:
        cases["mixed_trk4"] = _track_rows("mixed_trk4")
    except FileNotFoundError:
        pass
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": {}}
    for name, rows in cases.items():
        cpu_hits, cpu_grads = run(rows, "cpu")
        gpu_hits, gpu_grads = run(rows, "cuda")
        same = len(cpu_hits) == len(gpu_hits) and torch.equal(cpu_hits.pixel, gpu_hits.pixel.cpu())
        entry = {"n_hits": len(cpu_hits), "same_readouts": bool(same)}
        if same:
            entry["max_abs_dadc"] = float((cpu_hits.adc - gpu_hits.adc.cpu()).abs().max()) if len(cpu_hits) else 0.0
            entry["max_abs_dt"] = float((cpu_hits.t - gpu_hits.t.cpu()).abs().max()) if len(cpu_hits) else 0.0
            entry["max_rel_dgrad"] = float(((cpu_grads - gpu_grads).abs() / cpu_grads.abs().clamp(min=1e-30)).max())
        entry["cuda_fwd"] = timed(rows, "cuda", False)
        entry["cuda_fwd_bwd"] = timed(rows, "cuda", True)
        report["cases"][name] = entry
        print(name, json.dumps(entry), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
