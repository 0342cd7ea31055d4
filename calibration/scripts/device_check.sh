#!/usr/bin/env bash
# Device smoke test + six-parameter closure study on a GPU (run from the repository root; writes under $OUT).
set -u
OUT=${OUT:-/tmp/calib_device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python - <<'PY' 2>&1 | tee "$OUT/smoke.txt"
import time, torch, warnings, sparsetpc as st
warnings.simplefilter("ignore")
from sparsetpc.example import write_example
p = write_example("/tmp/ex_dev.h5", seed=3, step=1.0)
segs = st.load_segments(p, cuts=st.Cuts(), dtype=torch.float64, device="cuda")
params = st.Params.nominal(dtype=torch.float64, device="cuda", link_vdrift_efield=True)
ab = params.Ab.clone().requires_grad_(True)
for rep in range(3):
    t0 = time.time(); h = st.simulate(segs, st.Detector.default(), params.replace(Ab=ab)); torch.cuda.synchronize()
    t1 = time.time(); h.adc.sum().backward(); torch.cuda.synchronize()
    print(f"cuda simulate {len(segs)} segs -> {len(h)} hits: fwd {t1-t0:.3f}s bwd {time.time()-t1:.3f}s grad {float(ab.grad):.4g}")
PY
timeout 60 python -m calibration fit --forward toy --ntracks 4 --params Ab vdrift --closure-seed 1 --iterations 20 \
  --device cuda --out "$OUT/toy_full" --no-progress --no-plots --checkpoint-every 4 > "$OUT/toy.txt" 2>&1
timeout 60 python -m calibration fit --forward toy --ntracks 4 --params Ab vdrift --closure-seed 1 --iterations 20 \
  --device cuda --out "$OUT/toy_cut" --no-progress --no-plots --checkpoint-every 4 --stop-after 9 >> "$OUT/toy.txt" 2>&1
timeout 60 python -m calibration fit --forward toy --ntracks 4 --params Ab vdrift --closure-seed 1 --iterations 20 \
  --device cuda --out "$OUT/toy_cut" --no-progress --no-plots --checkpoint-every 4 --resume >> "$OUT/toy.txt" 2>&1
python - "$OUT" <<'PY' | tee -a "$OUT/toy.txt"
import json, sys
a = json.load(open(sys.argv[1] + "/toy_full/result.json")); b = json.load(open(sys.argv[1] + "/toy_cut/result.json"))
print("cuda toy resume identical:", all(a["params"][k]["fitted"] == b["params"][k]["fitted"] for k in a["params"]))
PY
# the six-parameter study of docs/calibration.md (mse and space_match side by side, ~100 s per fit on an H200)
for L in mse space_match; do
  timeout ${STUDY_TIMEOUT:-400} python -m calibration.scripts.closure_study --out "$OUT/s24_$L" --seeds 1 2 3 \
    --iterations ${STUDY_ITERS:-1000} --ntracks 24 --tracks-per-batch 8 --example-events 10 --example-tracks 3 \
    --loss $L --scheduler ExponentialLR --scheduler-kwargs '{"gamma": 0.995}' --extra --device cuda > "$OUT/s24_$L.log" 2>&1 &
done
wait
for L in mse space_match; do echo "== $L"; grep -E "^seed|iterations" "$OUT/s24_$L.log"; done
rm -rf "$OUT"/s24_*/seed*/targets "$OUT"/s24_*/seed*/checkpoint.pt "$OUT"/s24_*/example_tracks.h5
