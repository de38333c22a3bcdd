#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (torch and accelerate already there):
#   bash benchmarks/gpu_checks.sh      -> writes benchmarks/results/gpu_checks.txt (or $OUT/)
# then the GPU benchmark (gpu_perf.py, under 5 minutes) -> gpu_perf.json / gpu_perf.md in the
# same folder; GPU_PERF=0 skips it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -m pip install -q --no-deps -e . 2>/dev/null || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
# The GPU hosts have no package index and no DeepSpeed: install a wheel carried with the tree
# (built beforehand with `pip wheel deepspeed --no-deps -w shared/wheels`), if there is one.
for wheel in shared/wheels/deepspeed-*.whl benchmarks/wheels/deepspeed-*.whl; do
  [ -f "$wheel" ] && python3 -m pip install -q --no-deps "$wheel" && break
done
{
  date -u
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"
  python3 -m pytest -m gpu -q -p no:cacheprovider tests
} 2>&1 | tee "$out/gpu_checks.txt"
if [ "${GPU_PERF:-1}" != 0 ]; then
  python3 benchmarks/gpu_perf.py --out "$out" 2>&1 | tee "$out/gpu_perf.log"
fi
