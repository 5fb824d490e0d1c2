#!/usr/bin/env bash
# The paper's accuracy table (PAPER.md, Table 1) for the models robustkit has of it:
# ResNet-20, ResNet-56, VGG-19-BN and WRN-28-2 on CIFAR-10 and CIFAR-100, clean labels,
# SGD / SAM / ASAM / Fisher-SAM, 3 seeds, 200 epochs: 8 sweeps of 12 runs (96 runs).
#
#   bash experiments/accuracy_table.sh                       # all of it
#   MODELS="resnet20" DATASETS="cifar10" bash experiments/accuracy_table.sh --workers 4
#
# Extra arguments go to every `robustkit noise-sweep` (e.g. --workers N, --device cuda).
# The settings are in experiments/cifar10_accuracy.toml and cifar100_accuracy.toml. Each sweep
# resumes where it stopped, so rerun the same command after a crash. The CIFAR files must be
# in $ROBUSTKIT_DATA_DIR or ./data (`robustkit datasets` says what it finds).
#
# Expected GPU time (estimate, not measured; one A100/H100-class GPU): 3-12 GPU-hours per
# model and data set, 40-80 in all. Writes runs/<dataset>-accuracy/<model>/ and, at the end,
# runs/accuracy_table.md (one row per model and data set, one column per optimiser).
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS="${MODELS:-resnet20 resnet56 vgg19_bn wrn28_2}"
DATASETS="${DATASETS:-cifar10 cifar100}"
OUT="${OUT:-runs}"

dirs=()
for dataset in $DATASETS; do
    for model in $MODELS; do
        out="$OUT/$dataset-accuracy/$model"
        robustkit noise-sweep --config "experiments/${dataset}_accuracy.toml" \
            --model "$model" --out "$out" "$@"
        dirs+=("$out")
    done
done
python experiments/summarize.py "${dirs[@]}" --out "$OUT/accuracy_table.md"
