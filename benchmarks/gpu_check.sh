#!/usr/bin/env bash
# GPU check for latency_lut: build and validate small CUDA LUTs (torch eager, fp16, batch 1 and 64, 256 px)
# on the ops of 20 held-out + 8 calibration networks of the default space, then print and save the figures.
# Budget: under 5 minutes on one H100. Writes $OUT/lut_gpu.json (+ LUTs and scatter PNGs) if OUT is set,
# else benchmarks/results/. Runs from a plain checkout: no install needed (fastvit_nas is put on PYTHONPATH).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${OUT:-$ROOT/benchmarks/results}"
PY="${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
ln -s "$ROOT" "$SHIM/fastvit_nas"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$DEST"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv || true
timeout 290 "$PY" "$ROOT/benchmarks/lut_fidelity.py" --device cuda --dtype fp16 --backends torch --batches 1 64 \
    --img-sizes 256 --n 20 --calib 8 --out "$DEST/lut_gpu.json"
