#!/usr/bin/env bash
# Every figure a GPU run owes, in stages, each under its own time limit, everything written under OUT_DIR, and
# OUT_DIR/summary.json at the end (`python -m longrange.bench.gpu_summary`: the schema is in its docstring).
#
# Usage: benchmarks/gpu_run.sh OUT_DIR [STAGE ...]     (default: every stage, in this order)
#
#   stage      limit  expected on one H100/H200 (estimates from the H200 run of gpu_check.sh; not yet measured)
#   env          30 s      5 s   device, torch, CUDA, bf16 (env.json)
#   tests       300 s    200 s   the suite's tensors on CUDA (pytest --device cuda; tests.xml; the H200 took 180-200 s)
#   breaks       90 s     25 s   TORCH_LOGS=graph_breaks for memorizing under torch.compile (breaks.log)
#   sweep       240 s    160 s   bench train, six base systems, bf16, fused AdamW, batch 8 doubling to 128 or out of
#                                memory (20 s per system at most), MFU vs the bf16 matmul rate, peak memory,
#                                and a torch.profiler table per system at its best batch (sweep/, profile/)
#   compile     200 s    120 s   bench train --compile, transformer-base and memorizing-base at batch 32 (compile/)
#   attention   240 s    150 s   bench attention in bf16, full / xl / lsh-4 / luna-16 / knn at 16K, 64K, 256K,
#                                time and peak memory, 40 s per point, a fresh process per point (attention/)
#   knn         150 s     70 s   bench knn on the GPU in bf16: exact search over 1M keys, memorizing-base's kNN
#                                layer at M = 65K and 1M (knn/)
#   train      T+200 s  T+90 s   transformer-xl-base in bf16 for T = TRAIN_SECONDS (300) with evaluation every
#                                1,000 steps, stopped by SIGTERM (a checkpoint), eval, --resume 200 steps, eval,
#                                generate (train/)
#   dist        360 s     60 s   torchrun: the cpu:gloo,cuda:nccl group (world size 1); world size 1 through
#                                train / checkpoint / --resume; two ranks on the one GPU with gloo
#                                (LONGRANGE_DIST_BACKEND=gloo, each rank its own torchrun node) through the same
#   summary      30 s      2 s   OUT_DIR/summary.json (and INTO/summary.json when INTO is set)
#
# Every stage with T = 300 s: about 20 minutes, more than a 15-minute lease (which also pays the machine's start,
# 1-3 min), and one command may run 10 minutes at most. Within one lease, on the same warm machine and OUT_DIR:
#   call 1 (about 9 min):  benchmarks/gpu_run.sh OUT env tests sweep attention summary
#   call 2 (about 4.5 min): TRAIN_SECONDS=60 benchmarks/gpu_run.sh OUT knn dist train summary
# and `breaks compile` with TRAIN_SECONDS=300 `train` in a later lease (the second call's summary reads both calls'
# outputs: stages.jsonl is appended to, the output folders are per stage).
#
# Environment: PYTHON (python3), TRAIN_SECONDS (300), CARD (the summary's card name; default from the device
# name), INTO (a folder that also gets summary.json, e.g. benchmarks/results/gpu-h100), WORKERS (pytest-xdist
# workers, 8), DRY=1: every stage shrunk to tiny sizes on the CPU (seconds each), to check the script end to end
# without a GPU.
set -u
OUT=${1:?usage: benchmarks/gpu_run.sh OUT_DIR [env] [tests] [breaks] [sweep] [compile] [attention] [knn] [train] [dist] [summary]}
shift
WANTED=" ${*:-env tests breaks sweep compile attention knn train dist summary} "
PY=${PYTHON:-python3}
DRY=${DRY:-0}
TRAIN_SECONDS=${TRAIN_SECONDS:-300}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LR="$PY -m longrange.cli"
TORCHRUN="$PY -m torch.distributed.run"
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT

if [[ $DRY == 1 ]]; then  # tiny sizes on the CPU: proves the stages and the summary, measures nothing
    DEVICE=cpu SIZE=tiny TRAIN_SECONDS=${DRY_TRAIN_SECONDS:-15}
    SWEEP="--batch-size 1 --max-batch-size 2 --steps 1 --sweep-seconds 20 --profile-steps 1 --threads 1"
    COMPILE="--presets transformer-tiny --batch-size 1 --steps 1 --threads 1"
    ATTENTION="--lengths 256,1024 --d-model 64 --heads 2 --repeats 1 --timeout 60 --threads 1"
    KNN="--sizes 70000 --queries 64 --step-sizes 1024,4096 --step-preset memorizing-tiny --steps 1 --threads 1"
    TESTS="-p no:xdist tests/test_runtime.py"
    TRAIN_EXTRA="--eval-every 20 --checkpoint-every 20 --log-every 5 --threads 1"
else
    DEVICE=cuda SIZE=base
    SWEEP="--batch-size 8 --max-batch-size 128 --steps 5 --sweep-seconds 20 --profile-steps 2"
    COMPILE="--presets transformer-base,memorizing-base --batch-size 32 --steps 5"
    ATTENTION="--lengths 16384,65536,262144 --repeats 3 --timeout 40"
    KNN="--sizes 1048576 --queries 512 --k 32 --step-sizes 65536,1048576 --step-preset memorizing-base --steps 3"
    WORKERS=${WORKERS:-8}
    XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n $WORKERS" || echo "-p no:xdist")
    TESTS="$XDIST tests/attention tests/model tests/memory tests/train tests/test_generate.py tests/test_generate_batch.py"
    TRAIN_EXTRA="--eval-every 1000 --checkpoint-every 1000 --log-every 50"
fi
PRESETS=$(echo transformer transformer-xl reformer luna compressive memorizing | sed "s/\([a-z-]*\)/\1-$SIZE/g;s/ /,/g")

record() {  # record NAME EXIT SECONDS LIMIT [SKIPPED_REASON]: one line of OUT/stages.jsonl
    $PY -c 'import json, sys; n, e, s, l = sys.argv[1:5]; r = {"stage": n, "exit": int(e), "seconds": int(s), "limit": int(l)}
if len(sys.argv) > 5: r["skipped"] = sys.argv[5]
print(json.dumps(r))' "$@" >>"$OUT/stages.jsonl"
}

stage() {  # stage NAME SECONDS COMMAND...: run when wanted, under a limit, log to OUT/NAME.log, record the exit
    local name=$1 limit=$2
    shift 2
    [[ $WANTED == *" ${name%%-*} "* ]] || return 0
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    record "$name" "$rc" $((SECONDS - t0)) "$limit"
    echo "== $name: exit $rc in $((SECONDS - t0)) s (limit $limit s)"
    tail -n "${TAIL:-8}" "$OUT/$name.log"
    return 0
}

skip() {  # skip NAME REASON: a wanted stage that cannot run here
    [[ $WANTED == *" ${1%%-*} "* ]] || return 0
    record "$1" 0 0 0 "$2"
    echo "== $1: skipped ($2)"
}

stage env 30 $PY -c "
import json, platform, sys, torch
cuda = torch.cuda.is_available() and '$DEVICE' == 'cuda'
env = {'device': torch.cuda.get_device_name(0) if cuda else 'cpu (' + (platform.processor() or platform.machine()) + ')',
       'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0],
       'bf16': torch.cuda.is_bf16_supported() if cuda else None,
       'capability': '.'.join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
       'memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
       'gpus': torch.cuda.device_count(), 'dry_run': '$DRY' == '1'}
json.dump(env, open('$OUT/env.json', 'w'), indent=1)
print(json.dumps(env))
"

TAIL=30 stage tests 300 env OMP_NUM_THREADS=1 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfEs \
    --device "$DEVICE" --junitxml "$OUT/tests.xml" $TESTS

stage breaks 90 env TORCH_LOGS=graph_breaks,recompiles $PY -m pytest -q -p no:cacheprovider -o addopts="" -p no:xdist \
    -s --device "$DEVICE" "tests/model/test_graph_breaks.py::test_training_forward_traces_without_graph_breaks[memorizing-tiny]"

stage sweep 240 $LR bench train --device "$DEVICE" --precision bf16 --fused-adamw --presets "$PRESETS" $SWEEP \
    --profile "$OUT/profile" --out "$OUT/sweep"

stage compile 200 $LR bench train --device "$DEVICE" --precision bf16 --fused-adamw --compile $COMPILE --out "$OUT/compile"

stage attention 240 $LR bench attention --device "$DEVICE" --precision bf16 --variants full,xl,lsh-4,luna-16,knn \
    --full-max-length 262144 $ATTENTION --out "$OUT/attention"

stage knn 150 $LR bench knn --device "$DEVICE" --precision bf16 --backends exact --distributions random $KNN \
    --out "$OUT/knn"

# the timed run: SIGTERM after TRAIN_SECONDS makes the trainer finish its step and write a checkpoint (timeout's
# 124 is the expected exit), then evaluation, --resume for 200 more steps, evaluation, generation
stage train $((TRAIN_SECONDS + 200)) bash -c "
    set -ex
    mkdir -p '$OUT/train'
    timeout -s TERM $TRAIN_SECONDS $LR train --preset transformer-xl-$SIZE --device $DEVICE --precision bf16 \
        --steps 1000000 $TRAIN_EXTRA --out $RUNS/xl --no-progress || [ \$? -eq 124 ]
    first=\$($PY -c \"import json; print(json.load(open('$RUNS/xl/checkpoint/meta.json'))['step'])\")
    $LR eval $RUNS/xl --device $DEVICE --precision bf16 --no-progress --allow-worse-than-uniform \
        --output '$OUT/train/eval-first.json'
    $LR train --out $RUNS/xl --resume --steps \$((first + 200)) --no-progress
    $LR eval $RUNS/xl --device $DEVICE --precision bf16 --no-progress --allow-worse-than-uniform \
        --output '$OUT/train/eval-resumed.json'
    $LR generate $RUNS/xl --device $DEVICE --prompt 'def ' --max-new-tokens 256 --seed 0 >'$OUT/train/generate.txt'
    cp $RUNS/xl/metrics.jsonl '$OUT/train/metrics.jsonl'
    echo \"{\\\"preset\\\": \\\"transformer-xl-$SIZE\\\", \\\"seconds\\\": $TRAIN_SECONDS, \\\"first\\\": \$first, \\\"resumed\\\": \$((first + 200))}\" \
        >'$OUT/train/steps.json'
"

TINY="--preset transformer-xl-tiny --device $DEVICE --checkpoint-every 10 --no-progress"
if [[ $DEVICE == cuda ]]; then
    stage dist-nccl 60 $TORCHRUN --standalone --nproc_per_node 1 benchmarks/nccl_smoke.py
else
    skip dist-nccl "no CUDA device: nccl needs one"
fi
stage dist-world1 60 $TORCHRUN --standalone --nproc_per_node 1 -m longrange.cli train $TINY --steps 20 --out "$RUNS/w1"
stage dist-world1-resume 60 $TORCHRUN --standalone --nproc_per_node 1 -m longrange.cli train --out "$RUNS/w1" \
    --resume --steps 30 --no-progress
two_ranks() {  # two torchrun nodes on this machine, one rank each, both on the one GPU (LOCAL_RANK 0), gloo
    local port=$((29500 + RANDOM % 1000)) pids=() rc=0
    for rank in 0 1; do
        LONGRANGE_DIST_BACKEND=gloo $TORCHRUN --nnodes 2 --nproc_per_node 1 --node_rank $rank \
            --master_addr 127.0.0.1 --master_port $port -m longrange.cli train "$@" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    return $rc
}
export -f two_ranks
export TORCHRUN
stage dist-gloo2 90 bash -c "two_ranks $TINY --steps 20 --out $RUNS/g2"
stage dist-gloo2-resume 90 bash -c "two_ranks --out $RUNS/g2 --resume --steps 30 --no-progress"

stage summary 30 $PY -m longrange.bench.gpu_summary collect "$OUT" ${CARD:+--card "$CARD"} ${INTO:+--into "$INTO"}
