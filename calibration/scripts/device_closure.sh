#!/usr/bin/env bash
# Six-parameter closure on mixed-sample tracks, 5 seeds in parallel on one GPU, plus the seven-parameter
# (MeVToElectrons) run; all processes share the device.  Run from the repository root; writes under $OUT.
#   INPUT (default .devcarry/mixed_sample.h5), DEVICE (cuda), NTRACKS (12), ITERS (400), MAXWALL (100 s of Adam),
#   POLISH (10 L-BFGS steps), POLISH_WALL (40 s), SEEDS ("1 2 3 4 5"), SEEDS7 ("1"; empty: no 7-parameter run),
#   KILL (250 s per process).  Output: closure_all.json (every result.json merged), runs.tgz, logs.
set -u
OUT=${OUT:-/tmp/calib_closure}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
INPUT=${INPUT:-.devcarry/mixed_sample.h5}
DEVICE=${DEVICE:-cuda}
NTRACKS=${NTRACKS:-12}
ITERS=${ITERS:-400}
MAXWALL=${MAXWALL:-100}
POLISH=${POLISH:-10}
POLISH_WALL=${POLISH_WALL:-40}
KILL=${KILL:-250}
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo cpu) > "$OUT/device.txt"
run() {   # name param_file seed
  timeout "$KILL" python -m calibration.scripts.closure_study --out "$OUT/$1" --input "$INPUT" --param-file "$2" \
    --seeds "$3" --ntracks "$NTRACKS" --track-seed 0 --iterations "$ITERS" --scheduler ExponentialLR \
    --scheduler-kwargs '{"gamma": 0.99}' --extra --device "$DEVICE" --min-abs-segment-z none \
    --polish-lbfgs "$POLISH" --polish-max-wall "$POLISH_WALL" --max-wall "$MAXWALL" --no-plots \
    --checkpoint-every 100000 > "$OUT/$1.log" 2>&1
}
for s in ${SEEDS-1 2 3 4 5}; do run "c6_seed$s" calibration/configs/closure6_inverse_lifetime.yaml "$s" & done
for s in ${SEEDS7-1}; do run "c7_seed$s" calibration/configs/closure7_mev.yaml "$s" & done
wait
for f in "$OUT"/c*_seed*.log; do echo "== $f"; tail -n 3 "$f"; done
# the run tool brings back only a few files: merge every result (with polish details) into one JSON, then tar the rest
python - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
merged = {}
for path in sorted(glob.glob(os.path.join(out, "c*_seed*", "seed*", "result.json"))):
    with open(path) as handle:
        res = json.load(handle)
    res.pop("hessian_internal", None)
    merged[os.path.relpath(path, out)] = res
with open(os.path.join(out, "closure_all.json"), "w") as handle:
    json.dump(merged, handle, indent=1)
PY
tar czf "$OUT/runs.tgz" -C "$OUT" --exclude='targets' --exclude='checkpoint.pt' $(cd "$OUT" && ls -d c*_seed*) 2>/dev/null
rm -rf "$OUT"/c*_seed*/
