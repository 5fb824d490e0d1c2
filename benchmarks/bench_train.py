"""Images per second for one training epoch: in-memory on-device batches vs a DataLoader.

Usage:
    python benchmarks/bench_train.py                      # synthetic CIFAR-shaped data
    python benchmarks/bench_train.py --dataset npz:PATH   # real images from an npz file

Both pipelines feed the same ResNet-20 with SGD (one forward-backward per batch), with random
crop (padding 4) and horizontal flip:

* ``robustkit``: the whole training set as one normalised tensor on the device, batches and
  augmentation produced by :class:`robustkit.data.DeviceBatches` (vectorised tensor ops);
* ``dataloader``: the standard torchvision recipe: a ``Dataset`` of uint8 HWC images with
  ``transforms.Compose([ToPILImage, RandomCrop(32, 4), RandomHorizontalFlip, ToTensor,
  Normalize])`` per image, served by ``torch.utils.data.DataLoader`` with ``--num-workers``.

The data-only rows time just producing the batches (no model), which isolates the pipeline.
The ratio is robustkit's images/s over the DataLoader's, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F


def _load(spec: str | None, num_train: int) -> tuple[np.ndarray, np.ndarray]:
    if spec is None:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(num_train, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=num_train)
        return x, y
    if not spec.startswith("npz:"):
        raise SystemExit("--dataset takes npz:PATH")
    with np.load(spec[4:]) as f:
        x, y = f["x_train"][:num_train], f["y_train"][:num_train]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise SystemExit("expected uint8 HWC RGB images in x_train")
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="npz:PATH (default: synthetic data)")
    parser.add_argument("--num-train", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from torchvision import transforms

    from robustkit.data import DeviceBatches
    from robustkit.models import build_model

    device = torch.device(args.device)
    x_np, y_np = _load(args.dataset, args.num_train)
    mean = x_np.reshape(-1, 3).mean(0) / 255
    std = x_np.reshape(-1, 3).std(0) / 255

    # robustkit: normalise once, keep on the device.
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / torch.tensor(
        std, dtype=torch.float32
    )[:, None, None]
    y = torch.from_numpy(y_np).long()
    device_batches = DeviceBatches(
        x,
        y,
        args.batch_size,
        shuffle=True,
        augment="crop-flip",
        device=device,
        generator=torch.Generator().manual_seed(0),
    )

    transform = transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist()),
        ]
    )

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(y_np)

        def __getitem__(self, i: int):
            return transform(x_np[i]), int(y_np[i])

    loader = torch.utils.data.DataLoader(
        Images(),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def epoch(batches, with_model: bool) -> float:
        torch.manual_seed(0)
        model = build_model("resnet20", in_channels=3, num_classes=10, image_size=32).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sync()
        t0 = time.perf_counter()
        n = 0
        for batch in batches:
            xb, yb = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            if with_model:
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            n += yb.shape[0]
        sync()
        return n / (time.perf_counter() - t0)

    source = args.dataset or "synthetic CIFAR-shaped uint8 data"
    print(
        f"{len(y_np)} training images ({source}), batch {args.batch_size}, {device}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"DataLoader workers {args.num_workers}"
    )
    epoch(loader, False)  # warm the DataLoader workers up
    rows = []
    for label, with_model in (("data only", False), ("ResNet-20 epoch", True)):
        ours = epoch(device_batches, with_model)
        theirs = epoch(loader, with_model)
        rows.append((label, ours, theirs))
    print(f"{'':<16} {'robustkit img/s':>16} {'DataLoader img/s':>17} {'ratio':>7}")
    for label, ours, theirs in rows:
        print(f"{label:<16} {ours:16.0f} {theirs:17.0f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
