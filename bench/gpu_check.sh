#!/usr/bin/env bash
# The prepared GPU check: run it whenever an NVIDIA GPU is at hand, and commit what it writes.
#
#   bench/gpu_check.sh              environment, GPU tests, toolkit bench of `seed` (FP32/FP16,
#                                   eager/CUDA graphs, batch 1/32/256), a bf16 training loop, and
#                                   TensorRT engines where TensorRT is; about 8 minutes at most
#   bench/gpu_check.sh --dry-run    what is here and what would run (runs nothing heavy)
#   bench/gpu_check.sh --budget-seconds 300 --results DIR
#
# Writes bench/results/gpu-check-<host>-<date>.json and .md. Runs from the checkout with what is
# installed: nothing is installed and no package index or model hub is contacted. Without an
# NVIDIA GPU it says so and exits 0. The stages are in bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$py" bench/gpu_check.py "$@"
