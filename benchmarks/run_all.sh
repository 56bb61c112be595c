#!/usr/bin/env bash
# Every benchmark quoted in benchmarks/README.md, one after another (never two at once: the numbers would be noise).
# Usage: benchmarks/run_all.sh [longrange-binary]   Results land in benchmarks/results/.
set -euo pipefail
LR=${1:-.venv/bin/longrange}
R=benchmarks/results
$LR bench attention --variants full,xl,lsh-1,lsh-4,lsh-8,local,luna-16,luna-128 \
    --lengths 1024,4096,16384 --repeats 2 --timeout 400 --out $R/attention-causal
# LSH-4 vs full attention at 4K (the target: LSH-4 faster from 4K on), with more repeats: the two are close there
$LR bench attention --variants full,lsh-4 --lengths 4096 --repeats 9 --out $R/attention-4k-lsh
$LR bench attention --variants lsh-4,luna-16,luna-128,local --lengths 65536 --repeats 1 --timeout 600 \
    --out $R/attention-64k
# LSH-4 at 64K (the target: under 10 s and 4 GiB), 3 repeats
$LR bench attention --variants lsh-4 --lengths 65536 --repeats 3 --timeout 600 --out $R/attention-64k-lsh
# Luna: causal 1K-64K in one run for the log-log slopes (full, added automatically, stops at 16K;
# targets: slope <= 1.2, luna-16 <= 0.15x full at 16K), bidirectional 1K/4K (target luna-16 <= 0.25x full at 4K)
$LR bench attention --variants luna-16,luna-128 --lengths 1024,4096,16384,65536 --repeats 3 --timeout 600 \
    --out $R/attention-luna-causal
$LR bench attention --variants luna-16,luna-128 --lengths 1024,4096 --bidirectional --repeats 3 \
    --out $R/attention-bidirectional
$LR bench reversible --length 4096 --out $R/reversible
$LR bench knn --sizes 16384,65536,262144 --hnsw-random-max 65536 --out $R/knn
$LR bench knn --sizes 1048576 --backends exact,faiss-flat,faiss-ivf --distributions clustered,random --steps 0 \
    --out $R/knn-1m
$LR bench knn --sizes 16384 --backends exact --distributions clustered --step-sizes 8192,65536 \
    --step-preset memorizing-base --steps 3 --out $R/knn-step-base
$LR bench train --presets transformer-xl-small,compressive-small --steps 10 --threads 2 --out $R/train-compressive-2t
$LR bench train --presets transformer-xl-small,compressive-small --steps 10 --threads 1 --out $R/train-compressive-1t
$LR bench train --presets transformer-tiny,transformer-xl-tiny --steps 20 --threads 2 --out $R/train-tiny-2t
$LR bench train --presets transformer-tiny,transformer-xl-tiny --steps 20 --threads 1 --out $R/train-tiny-1t
$LR bench train --presets transformer-xl-small,transformer-small,compressive-small,memorizing-small,luna-small \
    --steps 5 --threads 2 --out $R/train-small
