#!/usr/bin/env bash
# The GPU check of issue 12, ready for the day a session is lent a GPU (under 8 minutes on one GPU):
# times PudNet prediction for ResNet-18 at 112 and 224 px for K = 10, 100, 1000 (S = 10), one bf16
# meta-training step at 112 px, and one Adam step on the same target; writes JSON and Markdown.
# Needs torch, torchvision, numpy and safetensors only (no Ray).
#
#   bash bench/gpu_check.sh                      # writes bench/gpu_check.{json,md}
#   bash bench/gpu_check.sh /tmp/out --tiny      # tiny sizes on the CPU: what the test suite runs
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench}"
shift || true
mkdir -p "$out"
python -c "import torch; print('torch', torch.__version__, 'accelerator:', torch.accelerator.current_accelerator())"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python bench/cost.py --grid gpu --json "$out/gpu_check.json" \
    --out "$out/gpu_check.md" "$@"
