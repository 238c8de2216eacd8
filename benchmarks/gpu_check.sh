#!/usr/bin/env bash
# The GPU check of issue 6, at most 8 minutes on one H100: random-weight DiT-XL/2 + SD-VAE
# sampling (plain / ot / igd+ot, IPC 10 and 50) and ResNet-18 training throughput.
# Writes benchmarks/results/gpu-check.json. Needs the package installed (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 480 python benchmarks/gpu_check.py --out benchmarks/results/gpu-check.json "$@"
