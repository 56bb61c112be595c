#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in stages sized for a short lease (limits: tests 280 s, cli 120 s, attention
# 100 s, train 90 s; measured on one H200: tests 180 s, train 40 s):
#   tests      the test suite's tensors on the GPU (`make test-gpu` without the venv: the machine's own torch)
#   cli        the CLI on the GPU: bf16 training, resume, fp16 with --compile, evaluation and generation
#   attention  attention time and peak memory vs length, 16K and 64K
#   train      training throughput and MFU per system, bf16
# Usage: benchmarks/gpu_check.sh OUT_DIR [STAGE ...]   (default: every stage; PYTHON=python3 by default). Each
# stage has its own time limit, so a hang in one does not cost the others; every log and result lands in OUT_DIR.
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [tests] [cli] [attention] [train]}
shift
WANTED=" ${*:-tests cli attention train} "
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LR="$PY -m longrange.cli"
RUNS=$(mktemp -d)

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, print its tail and exit status
    local name=$1 limit=$2
    shift 2
    [[ $WANTED == *" $name "* ]] || return 0
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - t0)) s"
    tail -n "${TAIL:-16}" "$OUT/$name.log"
}

{
    nvidia-smi -L
    $PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$OUT/env.log"

TAIL=40 stage tests 280 env OMP_NUM_THREADS=1 $PY -m pytest -q -n 8 -p no:cacheprovider -o addopts="" -rfE \
    --device cuda tests/attention tests/model tests/memory tests/train tests/test_generate.py tests/test_generate_batch.py

stage cli 120 bash -c "
    set -ex
    $LR train --preset transformer-xl-tiny --device cuda --precision bf16 --steps 30 --checkpoint-every 10 \
        --eval-every 15 --out $RUNS/xl --no-progress
    $LR train --out $RUNS/xl --resume --steps 40 --no-progress
    $LR train --preset memorizing-tiny --device cuda --precision bf16 --steps 20 --out $RUNS/mem --no-progress
    $LR train --preset transformer-tiny --device cuda --precision fp16 --steps 20 --compile --out $RUNS/c --no-progress
    $LR eval $RUNS/xl --device cuda --precision bf16 --no-progress
    $LR generate $RUNS/mem --device cuda --prompt 'def ' --max-new-tokens 64 --seed 0
"

stage attention 100 $LR bench attention --device cuda --variants full,xl,lsh-4,luna-16,knn \
    --lengths 16384,65536 --full-max-length 16384 --repeats 5 --timeout 30 --out "$RUNS/attention"

stage train 90 $LR bench train --device cuda --precision bf16 --batch-size 8 --steps 10 \
    --presets transformer-base,transformer-xl-base,reformer-base,luna-base,compressive-base,memorizing-base \
    --out "$RUNS/train"

cp "$RUNS"/attention/results.json "$OUT/attention.json" 2>/dev/null
cp "$RUNS"/train/train.json "$OUT/train.json" 2>/dev/null  # bench train writes train.json
rm -rf "$RUNS"
