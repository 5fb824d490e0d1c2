"""Step time of SGD, SAM, ASAM and FSAM on a CIFAR ResNet-20 batch, as ratios to an SGD step.

Usage: python benchmarks/bench_optim.py [--batch-size 128] [--repeats 15] [--device cpu|cuda]

Each optimiser's full step (forward, backward, and for SAM-type methods the ascent, second
pass and descent) is timed in round-robin order so that machine load affects all alike; the
table reports the median seconds and the ratio to SGD's median. Two forward-backward passes
are the floor for SAM-type methods (ratio ~2). The foreach fast path is also compared with the
per-tensor reference loop on the optimiser-only part (ascent + descent, no passes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from robustkit.models import build_model
from robustkit.optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--inner", type=int, default=20, help="optimiser-only repeats per sample")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)

    setups = {}
    for name in ("sgd", "sam", "asam", "fsam"):
        for foreach in (True, False) if name != "sgd" else (True,):
            torch.manual_seed(0)
            model = build_model("resnet20", in_channels=3, num_classes=10, image_size=32)
            model.to(device).train()
            opt = build_optimizer(name, model, foreach=foreach)
            setups[(name, foreach)] = (model, opt)

    def full_step(model, opt):
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)

    def optimiser_only(model, opt):
        opt.ascent_step()
        opt.descent_step()

    times: dict[tuple[str, bool], list[float]] = {k: [] for k in setups}
    opt_times: dict[tuple[str, bool], list[float]] = {k: [] for k in setups if k[0] != "sgd"}
    for rep in range(args.warmup + args.repeats):
        for key, (model, opt) in setups.items():
            _sync(device)
            t0 = time.perf_counter()
            full_step(model, opt)
            _sync(device)
            if rep >= args.warmup:
                times[key].append(time.perf_counter() - t0)
            if key in opt_times:  # gradients are present after the full step
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.inner):
                    optimiser_only(model, opt)
                _sync(device)
                if rep >= args.warmup:
                    opt_times[key].append((time.perf_counter() - t0) / args.inner)

    sgd = statistics.median(times[("sgd", True)])
    print(
        f"ResNet-20, batch {args.batch_size}, {device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'optimiser':<10} {'path':<10} {'step ms':>9} {'x SGD':>7} {'opt-only ms':>12}")
    for (name, foreach), ts in times.items():
        med = statistics.median(ts)
        path = "foreach" if foreach else "reference"
        only = (
            f"{statistics.median(opt_times[(name, foreach)]) * 1e3:12.2f}"
            if (name, foreach) in opt_times
            else f"{'-':>12}"
        )
        print(f"{name:<10} {path:<10} {med * 1e3:9.1f} {med / sgd:7.2f} {only}")
    for name in ("sam", "asam", "fsam"):
        fast = statistics.median(opt_times[(name, True)])
        ref = statistics.median(opt_times[(name, False)])
        print(f"{name}: foreach / reference optimiser-only time = {fast / ref:.2f}")


if __name__ == "__main__":
    main()
