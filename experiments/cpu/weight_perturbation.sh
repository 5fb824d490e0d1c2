#!/usr/bin/env bash
# CPU-sized version of experiments/weight_perturbation.sh (the paper's weight-perturbation
# figure): the small CNN trained 3 epochs with SGD, SAM and Fisher-SAM on CIFAR-10 images from
# an npz file, 2 seeds (the runs of experiments/cpu/accuracy.toml; reused when already there),
# then
#   1. robustkit perturb: PGD on the weights (5 steps) and 3 random directions per magnitude,
#      relative per layer (||delta_l|| <= m ||w_l||), attack on 500 training images, accuracy
#      on 1,000 test images, BatchNorm in eval mode;
#   2. robustkit sharpness: top Hessian eigenvalue (Lanczos), Hessian trace (Hutchinson, 5 %
#      relative standard error or 100 probes) and the true Fisher trace on 256 training images.
#
#   bash experiments/cpu/weight_perturbation.sh npz:PATH
#
# Measured on a shared two-core machine with a 10,000 / 2,000 image slice of CIFAR-10: the
# evaluation of the 6 models took 13.5 minutes after the training (perturb 3, sharpness 10;
# most of it the Hessian traces), results in weight_perturbation.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATASET="${1:?usage: bash experiments/cpu/weight_perturbation.sh npz:PATH}"
OUT="${OUT:-runs/cpu-accuracy}"

robustkit noise-sweep --config experiments/cpu/accuracy.toml --optimizers sgd,sam,fsam \
    --dataset "$DATASET" --out "$OUT"
checkpoints=("$OUT"/sgd-clean-seed*/checkpoint.pt "$OUT"/sam-clean-seed*/checkpoint.pt \
    "$OUT"/fsam-clean-seed*/checkpoint.pt)
robustkit perturb "${checkpoints[@]}" \
    --magnitudes 0,0.005,0.01,0.02,0.05,0.1 --norm layer --steps 5 --random-trials 3 \
    --attack-data train --num-examples 500 --eval-data test --eval-examples 1000 \
    --device cpu --out "$OUT/perturb"
robustkit sharpness "${checkpoints[@]}" \
    --metrics hessian-eig,hessian-trace,fisher-trace --num-examples 256 \
    --rtol 0.05 --max-probes 100 --device cpu --out "$OUT/sharpness.json"
