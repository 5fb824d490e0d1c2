"""The resolved configuration of one training run (everything needed to rebuild it)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any


class Schedule(str, enum.Enum):
    """Learning-rate schedules (per iteration, after an optional linear warm-up)."""

    COSINE = "cosine"
    STEP = "step"
    CONSTANT = "constant"


@dataclass
class TrainConfig:
    """One training run.

    Every field is a plain value, so the config round-trips through ``config.json``. Fields
    that do not change the numbers a run produces (``device``, ``num_threads``) are listed in
    :data:`NON_SEMANTIC_FIELDS` and may differ on resume.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "cnn"
    optimizer: str = "fsam"
    base: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    rho: float | None = None
    eta: float | None = None
    asam_convention: str = "kwon"
    bn_policy: str = "clean"
    epochs: int = 15
    batch_size: int = 128
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    label_smoothing: float = 0.0
    noise: str = "none"
    seed: int = 0
    augment: str | None = None
    amp: bool = False
    device: str = "auto"
    num_threads: int | None = None

    def validate(self) -> TrainConfig:
        """Check every value; raise ``ValueError`` naming the first bad one."""
        from robustkit.data.noise import NoiseSpec
        from robustkit.optim.registry import OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            known = ", ".join(OPTIMIZERS)
            raise ValueError(f"unknown optimizer {self.optimizer!r} (known: {known})")
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("lr", "gamma"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not _finite(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        try:
            Schedule(self.schedule)
        except ValueError:
            known = ", ".join(s.value for s in Schedule)
            raise ValueError(f"unknown schedule {self.schedule!r} (known: {known})") from None
        if any(not _finite(m) or not 0 < m < 1 for m in self.milestones):
            raise ValueError(
                f"milestones must be fractions of training in (0, 1): {self.milestones}"
            )
        if self.num_threads is not None:
            _positive_int("num_threads", self.num_threads)
        self.noise = str(NoiseSpec.parse(self.noise))
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON and checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know (e.g. ``run_id``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def semantic(self) -> dict[str, Any]:
        """The fields that determine the run's numbers (used to compare runs)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC_FIELDS}

    @property
    def run_id(self) -> str:
        """A readable id, e.g. ``fsam-symmetric0.4-seed1`` (``fsam-clean-seed0`` without noise)."""
        return run_id(self.optimizer, self.noise, self.seed)


NON_SEMANTIC_FIELDS = frozenset({"device", "num_threads", "data_dir"})


def run_id(optimizer: str, noise: str, seed: int) -> str:
    """``<optimizer>-<noise kind><rate>-seed<seed>``; ``clean`` when there is no noise."""
    kind, _, arg = noise.partition(":")
    if kind == "none":
        tag = "clean"
    elif kind == "matrix":
        tag = "matrix" + hashlib.sha1(arg.encode()).hexdigest()[:6]
    else:
        tag = f"{kind}{float(arg):g}"
    return f"{optimizer}-{tag}-seed{seed}"


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for a named random stream of a run (``noise``, ``batches``...).

    Label noise depends only on ``(seed, "noise")``, so every optimiser sees the same noisy
    labels for a given seed.
    """
    digest = hashlib.sha256(f"robustkit:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
