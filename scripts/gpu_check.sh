#!/usr/bin/env bash
# GPU check: the `gpu`-marked tests and the four benchmarks on CUDA, then one summary table.
#
#   bash scripts/gpu_check.sh            # on a machine with an NVIDIA GPU; < 8 minutes on one
#   bash scripts/gpu_check.sh --smoke    # CPU, tiny sizes: checks this script itself
#
# Every step has a time budget (seconds, below); together they stay under 8 minutes, and a
# step that runs past its budget is stopped and shows as "timeout". Each step's full output is
# printed as it runs and kept in $GPU_CHECK_LOGS (default: a fresh temporary folder); the
# table's last column is the step's closing line (pytest's summary, a benchmark's ratio).
# Exit status: 0 when every step passed, 1 when one failed or timed out, 2 without CUDA.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON="${PYTHON:-python}"
MODE=gpu
if [[ "${1:-}" == "--smoke" ]]; then
    MODE=smoke
elif [[ $# -gt 0 ]]; then
    echo "usage: bash scripts/gpu_check.sh [--smoke]" >&2
    exit 2
fi

if [[ "$MODE" == gpu ]]; then
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu_check: CUDA is not available here ($("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)' 2>/dev/null || echo 'torch not importable')); run it on a machine with an NVIDIA GPU" >&2
        exit 2
    fi
    DEVICE=cuda
    # name | budget s | command
    STEPS=(
        "robustkit info|30|$PYTHON -m robustkit.cli info"
        "pytest -m gpu|180|$PYTHON -m pytest -m gpu -q -p no:cacheprovider"
        "bench_optim|45|$PYTHON benchmarks/bench_optim.py --device cuda --batch-size 128 --repeats 30 --warmup 5"
        "bench_train|60|$PYTHON benchmarks/bench_train.py --device cuda --num-train 10000 --batch-size 128 --num-workers 4"
        "bench_perturb|75|$PYTHON benchmarks/bench_perturb.py --device cuda --model resnet20 --num-images 2000 --batch-size 1000 --steps 10 --magnitudes 0.01,0.02,0.05 --random-trials 2"
        "bench_sharpness|105|$PYTHON benchmarks/bench_sharpness.py --device cuda --model resnet20 --num-examples 1000 --fisher-examples 1000 --fisher-batch 250 --loop-examples 100 --threads 4"
    )
else
    DEVICE=cpu
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    STEPS=(
        "robustkit info|30|$PYTHON -m robustkit.cli info"
        "pytest -m gpu|120|$PYTHON -m pytest -m gpu -q -p no:cacheprovider tests/test_cli_info.py"
        "bench_optim|120|$PYTHON benchmarks/bench_optim.py --device cpu --batch-size 8 --repeats 2 --warmup 1"
        "bench_train|120|$PYTHON benchmarks/bench_train.py --device cpu --num-train 256 --batch-size 64 --num-workers 0"
        "bench_perturb|120|$PYTHON benchmarks/bench_perturb.py --device cpu --num-images 64 --batch-size 64 --steps 2 --magnitudes 0.01 --random-trials 1"
        "bench_sharpness|180|$PYTHON benchmarks/bench_sharpness.py --device cpu --num-examples 16 --batch-size 16 --fisher-examples 8 --fisher-batch 4 --loop-examples 2 --ref-max-iters 10 --threads 1"
    )
fi

LOGS="${GPU_CHECK_LOGS:-$(mktemp -d -t robustkit-gpu-check.XXXXXX)}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

names=()
statuses=()
seconds=()
closing=()
failed=0
for step in "${STEPS[@]}"; do
    name="${step%%|*}"
    rest="${step#*|}"
    budget="${rest%%|*}"
    command="${rest#*|}"
    log="$LOGS/${name// /_}.log"
    echo
    echo "=== $name (budget ${budget}s): $command"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086  # the command is a word list on purpose
    timeout --kill-after=10 "$budget" $command 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s.%N)
    case "$rc" in
        0) status=ok ;;
        5) status="no tests" ;;  # pytest: nothing collected (no gpu-marked test selected)
        124 | 137) status=timeout; failed=1 ;;
        *) status="failed ($rc)"; failed=1 ;;
    esac
    names+=("$name")
    statuses+=("$status")
    seconds+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')")
    closing+=("$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c 1-160)")
done

echo
echo "=== robustkit GPU check ($MODE, device $DEVICE): $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
printf '| %-15s | %-10s | %7s | %s\n' step status seconds "closing line"
printf '|-%s-|-%s-|-%s-|-%s\n' "---------------" "----------" "-------" "------------"
for i in "${!names[@]}"; do
    printf '| %-15s | %-10s | %7s | %s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}" "${closing[$i]}"
done
echo "logs: $LOGS"
exit "$failed"
