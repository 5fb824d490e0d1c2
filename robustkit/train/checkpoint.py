"""Versioned, atomic checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain dict of tensors and plain Python values (no pickled classes):

    {"format": "robustkit.checkpoint", "version": 1, "kind": "model" | "resume",
     "model_spec": {...},      # build_model(**model_spec) rebuilds the network
     "model_state": {...},     # the state_dict
     "config": {...},          # the resolved run config (JSON-able)
     "meta": {...},            # epoch, metrics, package versions (JSON-able)
     ... resume checkpoints add "optimizer_state", "scheduler_state", "rng", "epoch"}

``load_checkpoint`` refuses anything else with a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.io import atomic_path

FORMAT = "robustkit.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign or unsafe."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and its records."""

    model: nn.Module
    model_spec: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any]
    path: Path
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def run_dir(self) -> Path | None:
        """The run directory this checkpoint belongs to (it holds ``config.json``), if any."""
        for candidate in (self.path.parent, self.path.parent.parent):
            if (candidate / "config.json").is_file():
                return candidate
        return None

    @property
    def label(self) -> str:
        """A short human name: the run id if known, else the file stem."""
        return str(self.config.get("run_id") or self.path.stem)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_spec: dict[str, Any],
    config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    kind: str = "model",
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename).

    Args:
        path: destination file.
        model: the network; its ``state_dict`` is stored (moved to CPU).
        model_spec: keyword arguments of :func:`robustkit.models.build_model`.
        config: the resolved run config (plain values only).
        meta: measurements and provenance (plain values only).
        kind: ``"model"`` for a final model, ``"resume"`` for a training resume point.
        **extra: further plain entries (optimiser/scheduler state, RNG states, epoch).
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_spec": dict(model_spec),
        "model_state": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "config": dict(config or {}),
        "meta": dict(meta or {}),
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file without building the model.

    Raises:
        CheckpointError: missing, unreadable, truncated, not a robustkit checkpoint, a newer
            format version, or containing pickled objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    if not path.is_file():
        raise CheckpointError(f"not a file: {path}")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols on foreign files; our error says it better.
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"GLOBAL (\S+)", str(exc))
        if blocked:
            raise CheckpointError(
                f"{path}: refused to load: it holds a pickled object ({blocked.group(1)}) that "
                "is not a tensor or plain value, possibly code; robustkit checkpoints never do"
            ) from None
        raise CheckpointError(
            f"{path}: not a robustkit checkpoint (unreadable or unsupported pickle data)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a robustkit checkpoint (expected format {FORMAT!r}); "
            "load foreign state_dicts with torch.load and build_model yourself"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this robustkit "
            f"understands ({VERSION}); upgrade robustkit"
        )
    for key in ("model_spec", "model_state"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint and rebuild its model in one call (eval mode, on ``map_location``).

    Example:
        >>> ckpt = load_checkpoint("runs/demo/fsam/checkpoint.pt")  # doctest: +SKIP
        >>> ckpt.model(x), ckpt.config["optimizer"]  # doctest: +SKIP
    """
    from robustkit.models import build_model

    payload = read_checkpoint(path, map_location=map_location)
    try:
        model = build_model(**payload["model_spec"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model: {exc}") from None
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model spec ({first})") from None
    model.to(map_location).eval()
    return Checkpoint(
        model=model,
        model_spec=payload["model_spec"],
        config=payload.get("config", {}),
        meta=payload.get("meta", {}),
        path=Path(path),
        raw=payload,
    )
