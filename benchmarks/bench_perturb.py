"""Seconds per magnitude of the weight-perturbation sweep, against a naive per-magnitude loop.

Usage:
    python benchmarks/bench_perturb.py [--num-images 500] [--steps 10] [--magnitudes 0.01,0.02]
        [--random-trials 2] [--model resnet20] [--dataset npz:PATH] [--device cpu|cuda]

The fast path is :func:`robustkit.evaluate.perturb.perturb_sweep`: one model, one saved copy of
its weights, one ball, the data moved to the device once, weights perturbed in place and
restored between magnitudes. The naive loop does per magnitude what a straightforward script
does: deep-copy the model (and move the copy to the device), move the data to the device
again, and call :func:`attack_weights` and :func:`random_perturbation` on the copy (each builds
its own ball and clean pass). Both compute the same numbers (checked). Each sweep covers all
magnitudes with ``--steps`` PGD steps on the images plus ``--random-trials`` random directions
evaluated on the same images; the two are run alternately ``--repeats`` times and the median
is reported, since other processes may share the CPU.

Default data: CIFAR-shaped standard-normal images (3x32x32, 10 classes) and an untrained
ResNet-20 (timing does not depend on the weights); ``--dataset npz:PATH`` uses the first
``--num-images`` test images of a real data set instead.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from robustkit.evaluate.perturb import attack_weights, perturb_sweep, random_perturbation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, in_channels: int, num_classes: int, image_size: int) -> torch.nn.Module:
    try:
        from robustkit.models import build_model

        return build_model(
            name, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    except (ImportError, ValueError) as exc:
        print(f"note: {name} unavailable ({exc}); using a small CNN instead")
        from torch import nn

        return nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--magnitudes", default="0.01,0.02")
    parser.add_argument("--random-trials", type=int, default=2)
    parser.add_argument("--norm", default="layer")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default=None, help="e.g. npz:PATH (default: random images)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    magnitudes = [float(m) for m in args.magnitudes.split(",")]

    if args.dataset:
        from robustkit.data.datasets import load_dataset

        ds = load_dataset(args.dataset)
        x, y = ds.x_test[: args.num_images], ds.y_test[: args.num_images]
        shape = (ds.in_channels, ds.num_classes, ds.image_size)
        source = f"{args.dataset} test[:{len(y)}]"
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.num_images, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (args.num_images,), generator=gen)
        shape = (3, 10, 32)
        source = f"{args.num_images} random CIFAR-shaped images"
    torch.manual_seed(0)
    master = _model(args.model, *shape).eval()  # stays on the CPU, as a loaded checkpoint
    settings = dict(norm=args.norm, steps=args.steps, batch_size=args.batch_size)
    print(
        f"{args.model} ({sum(p.numel() for p in master.parameters()):,} parameters), {source}, "
        f"{args.norm} ball, {args.steps} steps, {args.random_trials} random trials, "
        f"magnitudes {magnitudes}, device {device}, threads {torch.get_num_threads()}"
    )

    def fast() -> list[tuple[float, float]]:
        model = copy.deepcopy(master).to(device)  # once per checkpoint
        records = perturb_sweep(
            model, (x, y), (x, y), magnitudes, random_trials=args.random_trials,
            generator=torch.Generator().manual_seed(0), **settings,
        )  # fmt: skip
        return [(r["adversarial_accuracy"], r["random_accuracy_mean"]) for r in records]

    def naive() -> list[tuple[float, float]]:
        gen = torch.Generator().manual_seed(0)
        out = []
        for m in magnitudes:
            model = copy.deepcopy(master).to(device)
            data = (x.to(device, copy=True), y.to(device, copy=True))
            adv = attack_weights(model, data, m, eval_data=data, generator=gen, **settings)
            rnd = random_perturbation(
                model, data, m, norm=args.norm, trials=args.random_trials, generator=gen,
                batch_size=args.batch_size,
            )  # fmt: skip
            out.append((adv.accuracy, rnd.accuracy_mean))
        return out

    warm = copy.deepcopy(master).to(device)  # first-call allocations, kernel selection
    attack_weights(warm, (x[:8].to(device), y[:8].to(device)), 0.01, steps=1)
    del warm
    wall: dict[str, list[float]] = {"sweep": [], "naive": []}
    cpu: dict[str, list[float]] = {"sweep": [], "naive": []}
    results = {}
    order = [("sweep", fast), ("naive", naive)]
    for rep in range(args.repeats):
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    num = len(magnitudes)
    same = all(
        abs(a[0] - b[0]) <= 1.0 / len(y) and abs(a[1] - b[1]) <= 1.0 / len(y)
        for a, b in zip(results["sweep"], results["naive"])
    )
    # On a shared CPU, process time (this process's CPU seconds) is the steadier measure.
    print(f"{'path':<7} {'wall s / magnitude':>19} {'cpu s / magnitude':>18}")
    for name in ("sweep", "naive"):
        w, c = statistics.median(wall[name]) / num, statistics.median(cpu[name]) / num
        print(f"{name:<7} {w:>19.2f} {c:>18.2f}")
    ratio_wall = statistics.median(wall["naive"]) / statistics.median(wall["sweep"])
    ratio_cpu = statistics.median(cpu["naive"]) / statistics.median(cpu["sweep"])
    print(f"naive / sweep = {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x cpu; same accuracies: {same}")


if __name__ == "__main__":
    main()
