#!/usr/bin/env bash
# The GPU benchmark, to run on a machine with an NVIDIA GPU: streamd's network and Zhang et al.'s ECCV16
# through PyTorch CUDA (fp16 autocast), one batch per 8, 32 and 64 synthetic 1080p cameras, at the
# production input (320x192). Frames/s and latency per batch go to the terminal and to $OUT/gpu.json.
#
# Needs a CUDA build of torch (pip install -e '.[train]') and the training weights models/streamd-base.pt;
# without either, `streamd bench --device cuda` says which is missing and exits 2.
#
#   OUT=/some/folder benchmarks/gpu.sh        # OUT defaults to out/ (git ignores it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 300 python3 -m streamd bench --device cuda --json "$OUT/gpu.json"
