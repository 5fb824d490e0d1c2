#!/usr/bin/env bash
# The paper's weight-perturbation figure: train ResNet-34 on CIFAR-10 with SGD, SAM and
# Fisher-SAM (experiments/weight_perturbation.toml), then
#   1. `robustkit perturb`: adversarial (PGD on the weights, 10 steps) and random perturbations
#      of relative size m per layer (||delta_l|| <= m ||w_l||, AWP's convention), BatchNorm in
#      eval mode, attack on 1,000 training images, accuracy on the whole test set;
#   2. `robustkit sharpness`: top Hessian eigenvalues (Lanczos), Hessian trace (Hutchinson)
#      and the true Fisher trace on 1,000 training images.
# Flatter training should lose less accuracy as m grows.
#
#   bash experiments/weight_perturbation.sh --workers 3
#
# Extra arguments go to `robustkit noise-sweep` (e.g. --workers N, --dataset npz:PATH).
# Expected GPU time (estimate, not measured): 10-30 GPU-hours of training, under an hour of
# evaluation. Writes $OUT (default runs/cifar10-perturb)/<run-id>/, $OUT/perturb/ and
# $OUT/sharpness.json; rerunning skips finished training runs.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/cifar10-perturb}"
robustkit noise-sweep --config experiments/weight_perturbation.toml --out "$OUT" "$@"

checkpoints=("$OUT"/*/checkpoint.pt)
robustkit perturb "${checkpoints[@]}" \
    --magnitudes 0,0.005,0.01,0.02,0.05,0.1 --norm layer --steps 10 --random-trials 5 \
    --attack-data train --num-examples 1000 --eval-data test --out "$OUT/perturb"
robustkit sharpness "${checkpoints[@]}" \
    --metrics hessian-eig,hessian-trace,fisher-trace --top-k 1 --num-examples 1000 \
    --out "$OUT/sharpness.json"
