#!/usr/bin/env bash
# GPU figures for fedpcr, runnable unchanged the first time a CUDA machine is available:
#   bash benchmarks/gpu.sh [extra bench_gpu.py arguments, e.g. --shape 128 --n 32 --batch 4]
# 1. CUDA path check (driver, torch build, a 3D conv + gradient on the GPU against the CPU result);
# 2. `paper` preset step time: data already on the GPU vs through the DataLoader (4 workers, pinned memory,
#    MONAI augmentation), AMP vs fp32 (benchmarks/bench_gpu.py);
# 3. the data-loading share on the GPU path and the small-preset throughput (bench_train.py).
# The last line printed is bench_gpu.py's JSON line. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

echo "== machine"; uptime; nproc
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv
else
  echo "nvidia-smi not found: no NVIDIA driver on this machine"
fi
echo "== torch / CUDA"
"$PY" - <<'PYEOF'
import sys, torch
print("torch", torch.__version__, "built for CUDA", torch.version.cuda, "available", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("CUDA is not available to torch: install a CUDA build of torch (pip index of pytorch.org cu12x)")
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PYEOF
echo "== small preset throughput (bench_train.py; the GPU lines use AMP + 4 workers)"
"$PY" benchmarks/bench_train.py --paper-shape 128 --paper-n 32 || echo "bench_train.py failed (continuing)"
echo "== paper preset: loader vs on-GPU data, AMP vs fp32 (bench_gpu.py)"
"$PY" benchmarks/bench_gpu.py --device cuda "$@"
