"""``build_optimizer``: the registry of SGD, SAM, ASAM and Fisher-SAM with paper defaults."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustkit.optim.geometry import AdaptiveGeometry, EuclideanGeometry, FisherGeometry, Geometry
from robustkit.optim.sharpness_aware import BNPolicy, SharpnessAware


class OptimizerName(str, enum.Enum):
    """The registered optimisers."""

    SGD = "sgd"
    SAM = "sam"
    ASAM = "asam"
    FSAM = "fsam"


class BaseOptimizer(str, enum.Enum):
    """The base (descent) optimiser under the sharpness-aware ascent."""

    SGD = "sgd"
    ADAMW = "adamw"


class ASAMConvention(str, enum.Enum):
    """Which parameters ASAM scales: Kwon et al.'s code, or the PyTorch SAM port's adaptive mode."""

    KWON = "kwon"  # T = |w| + eta on all but biases
    PORT = "port"  # T = |w| + eta on every parameter (the port uses eta = 0, rho = 2.0)


@dataclass(frozen=True)
class OptimizerInfo:
    """A registry entry: the name, its paper, its default radius and eta, and its cost.

    ``passes`` is the forward-backward passes per step (2 for the sharpness-aware ones); the
    sweep executors use it to start the longest runs first.
    """

    name: str
    description: str
    rho: float | None = None
    eta: float | None = None
    passes: int = 2


OPTIMIZERS: dict[str, OptimizerInfo] = {
    "sgd": OptimizerInfo("sgd", "the base optimiser alone (one pass per step)", passes=1),
    "sam": OptimizerInfo("sam", "SAM, Euclidean ball (Foret et al. 2021)", rho=0.05),
    "asam": OptimizerInfo("asam", "ASAM, ball scaled by |w|+eta (Kwon et al. 2021)", 0.5, 0.01),
    "fsam": OptimizerInfo("fsam", "Fisher-SAM, ellipsoid 1+eta*g^2 (Kim et al. 2022)", 0.1, 1.0),
}


def _check_number(name: str, value: float | None, *, positive: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def build_optimizer(
    name: str | OptimizerName,
    model: nn.Module,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    base: str | BaseOptimizer = BaseOptimizer.SGD,
    betas: tuple[float, float] = (0.9, 0.999),
    rho: float | None = None,
    eta: float | None = None,
    asam_convention: str | ASAMConvention = ASAMConvention.KWON,
    bn_policy: str | BNPolicy = BNPolicy.CLEAN,
    foreach: bool = True,
) -> SharpnessAware:
    """Build one of ``sgd``, ``sam``, ``asam``, ``fsam`` over ``model``'s parameters.

    The model is needed to tell biases (parameter names ending in ``bias``) from weights for
    ASAM and to find the BatchNorm modules whose running statistics ``bn_policy`` governs.

    Args:
        name: the optimiser.
        model: the network to optimise.
        lr, momentum, weight_decay, nesterov: SGD's hyperparameters (AdamW: lr, weight_decay,
            betas). Weight decay is applied by the base step, never inside ``g``.
        base: ``"sgd"`` (default) or ``"adamw"``.
        rho: the radius (FSAM's gamma). Defaults: SAM 0.05, ASAM 0.5, FSAM 0.1.
        eta: ASAM's offset (default 0.01) or FSAM's Fisher scale (default 1.0).
        asam_convention: ``"kwon"`` (biases unscaled) or ``"port"`` (every parameter scaled).
        bn_policy: ``"clean"`` (BN statistics from the clean pass only) or ``"both"``.
        foreach: the fast ``torch._foreach_*`` path (default) or the reference loop.

    Raises:
        ValueError: unknown names, negative or non-finite values, a radius or eta given to an
            optimiser that has none.
    """
    key = str(name.value if isinstance(name, enum.Enum) else name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
    info = OPTIMIZERS[key]
    _check_number("lr", lr, positive=True)
    _check_number("momentum", momentum)
    _check_number("weight_decay", weight_decay)
    _check_number("rho", rho)
    _check_number("eta", eta)
    if key == "sgd" and rho is not None:
        raise ValueError("rho is not a parameter of sgd (it has no ascent step)")
    if key in ("sgd", "sam") and eta is not None:
        raise ValueError(f"eta is not a parameter of {key}")
    try:
        base_key = BaseOptimizer(base)
    except ValueError:
        raise ValueError(
            f"unknown base optimizer {base!r} (known: {', '.join(b.value for b in BaseOptimizer)})"
        ) from None
    try:
        convention = ASAMConvention(asam_convention)
    except ValueError:
        known = ", ".join(c.value for c in ASAMConvention)
        raise ValueError(f"unknown asam_convention {asam_convention!r} (known: {known})") from None

    rho = info.rho if rho is None else rho
    eta = info.eta if eta is None else eta
    geometry: Geometry | None
    if key == "sgd":
        geometry = None
    elif key == "sam":
        geometry = EuclideanGeometry()
    elif key == "asam":
        geometry = AdaptiveGeometry(eta=eta, scale_biases=convention is ASAMConvention.PORT)
    else:
        geometry = FisherGeometry(eta=eta)

    if base_key is BaseOptimizer.SGD:
        base_cls: type[torch.optim.Optimizer] = torch.optim.SGD
        base_kwargs: dict[str, Any] = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
    else:
        base_cls = torch.optim.AdamW
        base_kwargs = dict(lr=lr, weight_decay=weight_decay, betas=betas)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return SharpnessAware(
        [p for _, p in named],
        base_cls,
        geometry=geometry,
        rho=0.0 if rho is None else rho,
        bias_params=[p for n, p in named if n.endswith("bias")],
        bn_modules=list(model.modules()),
        bn_policy=bn_policy,
        foreach=foreach,
        **base_kwargs,
    )
