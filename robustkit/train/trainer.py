"""The fit loop: one run, one device, one run directory (DESIGN.md §2).

Run directory::

    config.json              resolved run config
    env.json                 versions, device, git commit
    labels.npz               noisy training labels, clean labels, flip mask
    metrics.jsonl            one line per epoch
    checkpoints/last.pt      resume point: model, optimiser, scheduler, RNG states, history
    checkpoint.pt            final model
    result.json              written last: its presence means "done"

Every file is written atomically. A run killed at any moment resumes (``resume=True``) from its
last completed epoch; on CPU the final weights are bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from robustkit.io import append_jsonl, atomic_write, atomic_write_json, atomic_write_text
from robustkit.train.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from robustkit.train.config import Schedule, TrainConfig, derive_seed
from robustkit.train.env import environment, resolve_device

RESULT = "result.json"
CONFIG = "config.json"
LAST = Path("checkpoints") / "last.pt"
FINAL = "checkpoint.pt"


class RunDirError(ValueError):
    """The output directory cannot hold this run (another run's files, or not a run dir)."""


@dataclass
class TrainResult:
    """What :func:`train` did: ``completed``, ``diverged`` or ``skipped`` (already finished)."""

    status: str
    run_dir: Path
    record: dict[str, Any] = field(default_factory=dict)


class Interrupt(Exception):
    """Raised by a test hook to simulate a kill between steps."""


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, milestones, gamma: float
) -> float:
    """The learning-rate multiplier at iteration ``step`` (linear warm-up, then the schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == Schedule.COSINE.value:
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == Schedule.STEP.value:
        return gamma ** sum(progress >= m for m in milestones)
    return 1.0


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    step_hook: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train one model as ``config`` says, into the run directory ``out``.

    Args:
        config: the run's configuration (validated here).
        out: the run directory.
        resume: continue an unfinished run in ``out`` from its last completed epoch.
        log: receives one human line per epoch (the CLI passes ``click.echo``).
        progress: show a tqdm bar per epoch.
        step_hook: called as ``step_hook(epoch, batch)`` before every step (tests use it to
            simulate a kill).

    Returns:
        A :class:`TrainResult`; a run whose ``result.json`` exists is ``skipped``.

    Raises:
        ValueError: a bad config, data set or model (:class:`RunDirError` for the directory).
        robustkit.data.datasets.DatasetError: data files missing or malformed.
    """
    from robustkit.data import DeviceBatches, apply_label_noise, load_dataset
    from robustkit.models import build_model, model_spec
    from robustkit.optim import build_optimizer

    config.validate()
    out = Path(out)
    emit = log or (lambda _msg: None)
    done = _check_run_dir(out, config, resume)
    if done is not None:
        return done
    device = resolve_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    data = load_dataset(config.dataset, data_dir=config.data_dir)
    noise_gen = torch.Generator().manual_seed(derive_seed(config.seed, "noise"))
    noisy = apply_label_noise(data.y_train, data.num_classes, config.noise, noise_gen)
    spec = model_spec(config.model, data.in_channels, data.num_classes, data.image_size)

    # Model init and dropout draw from torch's global generator: fork it so the caller's
    # random state is untouched, and seed the fork from the run's seed.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(config.seed, "model"))
        model = build_model(**spec).to(device)
        optimizer = build_optimizer(
            config.optimizer,
            model,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            base=config.base,
            rho=config.rho,
            eta=config.eta,
            asam_convention=config.asam_convention,
            bn_policy=config.bn_policy,
        )
        batch_gen = torch.Generator().manual_seed(derive_seed(config.seed, "batches"))
        batches = DeviceBatches(
            data.x_train,
            noisy.labels,
            config.batch_size,
            shuffle=True,
            augment=config.augment or data.augment,
            device=device,
            generator=batch_gen,
        )
        steps_per_epoch = len(batches)
        total_steps = steps_per_epoch * config.epochs
        warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(
                step, total_steps, warmup_steps, config.schedule, config.milestones, config.gamma
            ),
        )
        record_config = {**config.to_dict(), "run_id": config.run_id}
        history: list[dict[str, Any]] = []
        start_epoch = 0
        if resume and (out / LAST).is_file():
            start_epoch, history = _load_resume(out / LAST, model, optimizer, scheduler, batch_gen)
            _check_labels(out, noisy.labels)
            emit(f"resuming {out} after epoch {start_epoch}/{config.epochs}")
        else:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG, record_config)
            _write_labels(out, data.y_train, noisy)
        atomic_write_json(out / "env.json", environment(device))
        # metrics.jsonl always agrees with the resume point (a kill may have left a line more).
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

        clean_train = data.y_train.to(device)
        x_test, y_test = data.x_test.to(device), data.y_test.to(device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else None
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            stats = _train_epoch(
                model,
                optimizer,
                scheduler,
                batches,
                clean_train,
                config,
                amp,
                epoch,
                progress,
                step_hook,
            )
            if stats is None:
                return _diverged(out, record_config, epoch, history, emit)
            model.eval()
            test_loss, test_acc = _evaluate(model, x_test, y_test, amp)
            row = {
                "epoch": epoch + 1,
                **stats,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            save_checkpoint(
                out / LAST,
                model,
                model_spec=spec,
                config=record_config,
                meta={"epoch": epoch + 1},
                kind="resume",
                epoch=epoch + 1,
                history=history,
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                rng={
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "batches": batch_gen.get_state(),
                },
            )
            append_jsonl(out / "metrics.jsonl", row)
            emit(_epoch_line(row, config.epochs))

    final = history[-1]
    record = {
        "run_id": config.run_id,
        "status": "completed",
        "epochs": config.epochs,
        "final_test_acc": final["test_acc"],
        "best_test_acc": max(h["test_acc"] for h in history),
        "final_test_loss": final["test_loss"],
        "train_acc_noisy": final["train_acc"],
        "train_acc_clean": final["train_acc_clean"],
        "train_loss": final["train_loss"],
        "noise": config.noise,
        "realised_noise_rate": noisy.realised_rate,
        "seconds": sum(h["seconds"] for h in history),
        "device": str(device),
        "config": record_config,
    }
    meta = {k: v for k, v in record.items() if k != "config"}
    save_checkpoint(out / FINAL, model, model_spec=spec, config=record_config, meta=meta)
    atomic_write_json(out / RESULT, record)
    return TrainResult("completed", out, record)


def _train_epoch(
    model, optimizer, scheduler, batches, clean_train, config, amp, epoch, progress, step_hook
) -> dict[str, float] | None:
    """One epoch; returns its statistics, or ``None`` if the loss became non-finite."""
    from tqdm.auto import tqdm

    model.train()
    device = clean_train.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct_clean = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(
        batches,
        total=len(batches),
        disable=not progress,
        leave=False,
        desc=f"epoch {epoch + 1}/{config.epochs}",
    )
    for i, (xb, yb, idx) in enumerate(bar):
        if step_hook is not None:
            step_hook(epoch, i)
        first: dict[str, torch.Tensor] = {}

        def closure(xb=xb, yb=yb, first=first):
            optimizer.zero_grad()
            with amp if amp is not None else contextlib.nullcontext():
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
            loss.backward()
            if not first:
                first["logits"] = logits.detach()
            return loss

        loss = optimizer.step(closure)
        scheduler.step()
        if not torch.isfinite(loss):
            bar.close()
            return None
        pred = first["logits"].argmax(1)
        loss_sum += loss.detach().double() * yb.shape[0]
        correct += (pred == yb).sum()
        correct_clean += (pred == clean_train[idx]).sum()
        seen += yb.shape[0]
    bar.close()
    return {
        "train_loss": float(loss_sum) / seen,
        "train_acc": float(correct) / seen,
        "train_acc_clean": float(correct_clean) / seen,
    }


def _evaluate(model, x, y, amp) -> tuple[float, float]:
    from robustkit.evaluate.classify import evaluate_classifier

    with amp if amp is not None else contextlib.nullcontext():
        return evaluate_classifier(model, x, y)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {100 * row['train_acc']:.2f}% (clean {100 * row['train_acc_clean']:.2f}%)  "
        f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%  "
        f"lr {row['lr']:.4g}  {row['seconds']:.1f}s"
    )


def _diverged(out, record_config, epoch, history, emit) -> TrainResult:
    record = {
        "run_id": record_config["run_id"],
        "status": "diverged",
        "epochs": record_config["epochs"],
        "diverged_in_epoch": epoch + 1,
        "final_test_acc": None,
        "best_test_acc": max((h["test_acc"] for h in history), default=None),
        "seconds": sum(h["seconds"] for h in history),
        "config": record_config,
    }
    atomic_write_json(out / RESULT, record)
    emit(f"diverged: non-finite loss in epoch {epoch + 1}; recorded in {out / RESULT}")
    return TrainResult("diverged", out, record)


def _check_run_dir(out: Path, config: TrainConfig, resume: bool) -> TrainResult | None:
    """Refuse a directory that holds something else; report a finished identical run."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    config_path = out / CONFIG
    if not config_path.is_file():
        raise RunDirError(
            f"--out {out} is not empty and holds no robustkit run (no {CONFIG}); "
            "choose another directory"
        )
    try:
        existing = TrainConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise RunDirError(f"{config_path} is unreadable ({exc})") from None
    ours, theirs = config.semantic(), existing.semantic()
    if ours != theirs:
        diff = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise RunDirError(
            f"--out {out} holds a different run (differs in: {', '.join(diff)}); "
            "choose another directory"
        )
    result_path = out / RESULT
    if result_path.is_file():
        record = json.loads(result_path.read_text())
        return TrainResult("skipped", out, record)
    if not resume:
        raise RunDirError(
            f"--out {out} holds an unfinished run of this config; pass --resume to continue it"
        )
    return None


def _load_resume(path: Path, model, optimizer, scheduler, batch_gen):
    try:
        payload = read_checkpoint(path, map_location="cpu")
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        scheduler.load_state_dict(payload["scheduler_state"])
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])
        batch_gen.set_state(rng["batches"])
        return int(payload["epoch"]), list(payload["history"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a usable resume point ({exc})") from None


def _write_labels(out: Path, clean: torch.Tensor, noisy) -> None:
    def write(fh):
        np.savez(
            fh,
            labels=noisy.labels.cpu().numpy(),
            clean_labels=clean.cpu().numpy(),
            flipped=noisy.flipped.cpu().numpy(),
            spec=np.array(noisy.spec),
            realised_rate=np.array(noisy.realised_rate),
        )

    atomic_write(out / "labels.npz", write, mode="wb")


def _check_labels(out: Path, labels: torch.Tensor) -> None:
    path = out / "labels.npz"
    if not path.is_file():
        return
    with np.load(path) as saved:
        if not np.array_equal(saved["labels"], labels.cpu().numpy()):
            raise RunDirError(
                f"{path}: the noisy labels regenerated for this run differ from the saved ones"
            )


def load_labels(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Read ``labels.npz`` of a run: ``labels`` (noisy), ``clean_labels``, ``flipped``."""
    with np.load(Path(run_dir) / "labels.npz") as saved:
        return {k: saved[k] for k in saved.files}


__all__ = ["RunDirError", "TrainResult", "load_labels", "lr_factor", "train"]
