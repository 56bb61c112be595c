#!/usr/bin/env bash
# Attention forward+backward time and peak memory vs length: full vs Transformer-XL at d_model 512,
# 8 heads, batch 1. Run alone on the machine; each point is a fresh process.
# Usage: benchmarks/run_attention.sh [longrange-binary] [extra bench args, e.g. --kinds full,xl,lsh-4]
set -euo pipefail
LR=${1:-.venv/bin/longrange}
shift || true
$LR bench attention --kinds full,xl --lengths 1024,2048,4096 --d-model 512 --heads 8 --batch 1 \
    --repeats 3 --threads 2 --timeout 300 --out benchmarks/results/attention-full-xl "$@"
