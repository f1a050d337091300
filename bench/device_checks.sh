#!/usr/bin/env bash
# The accelerator checks to run, in one go, on a host with a GPU or TPU attached (issue "The
# accelerator, measured from any machine", item 5): about 10 minutes on one H100/H200.
#   bash bench/device_checks.sh [OUT_DIR]        (OUT_DIR default: ./device_checks)
# 1. the paper model's train step (configs/default.py: 3 s segments) in float32 and bfloat16:
#    the largest per-device batch that fits (found by compiling for the attached device), then
#    measured examples/s at that batch beside the roofline estimate (resunet-aot --run);
# 2. the training loop's overhead on the device (bench/bench_loop.py --accelerator).
# Every figure goes to OUT_DIR (JSON + the printed reports); nothing else is written.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-device_checks}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/devices.txt"
for dtype in float32 bfloat16; do
  python -m resunet_jax.aot --config=configs/default.py --topology=attached --search \
      --config.model.dtype=$dtype --json="$OUT/paper_${dtype}_search.json" \
      > "$OUT/paper_${dtype}_search.txt" 2>&1
  best=$(python -c "import json,sys; print(json.load(open(sys.argv[1])).get('largest_fitting_per_chip_batch') or 0)" \
      "$OUT/paper_${dtype}_search.json" 2>/dev/null || echo 0)
  [ "$best" -gt 0 ] 2>/dev/null || best=1
  python -m resunet_jax.aot --config=configs/default.py --topology=attached --run \
      --per_chip_batch="$best" --config.model.dtype=$dtype --json="$OUT/paper_${dtype}_run.json" \
      2>&1 | tee "$OUT/paper_${dtype}_run.txt"
done
python bench/bench_loop.py --accelerator --configs small,mobilenet --data random,musdb18 \
    --steps 200 --warm 20 2>&1 | tee "$OUT/bench_loop.txt"
