r"""Geometries of the sharpness-aware neighbourhood: the diagonal metric of the ball.

SAM, ASAM and Fisher-SAM solve the same inner problem and differ only in the metric ``M`` of
the ball (DESIGN.md §1)::

    eps* = argmax_{eps^T M eps <= rho^2} g^T eps = rho * M^-1 g / sqrt(g^T M^-1 g)

Every metric used here is diagonal with ``M^-1 = diag(T^2)`` for a per-element *scale* ``T``,
so with ``u = T * g`` the solution reads ``eps* = rho * T * u / ||u||``. A geometry only
returns ``T`` per parameter tensor; :func:`perturbation` turns it into ``eps``.

=========  ======================================  ==========================================
method     ``T`` (per element)                     reference
=========  ======================================  ==========================================
SAM        ``1``                                   Foret et al., ICLR 2021
ASAM       ``|w| + eta`` (biases: ``1``)           Kwon et al., ICML 2021 (their code's rule)
FSAM       ``1 / sqrt(1 + eta * g^2)``             Kim et al., ICML 2022 (``F ~ 1 + eta g^2``)
=========  ======================================  ==========================================

The same geometries define the balls of the weight-perturbation and eps-sharpness evaluators,
so training and evaluation speak of the same neighbourhoods.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class GeometryName(str, enum.Enum):
    """Names of the built-in geometries (usable with ``click.Choice`` and JSON)."""

    EUCLIDEAN = "sam"
    ADAPTIVE = "asam"
    FISHER = "fsam"


class Geometry:
    """Base class: a diagonal metric ``M = diag(T^-2)`` given per parameter tensor by ``T``.

    Subclasses implement :meth:`scale_single` (the readable reference) and may override
    :meth:`scale` (the list version, used by the fast ``foreach`` path).
    """

    name: str = "geometry"

    def scale_single(self, param: Tensor, grad: Tensor, is_bias: bool) -> Tensor | None:
        """``T`` for one tensor, or ``None`` for ``T = 1`` (identity)."""
        raise NotImplementedError

    def scale(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], is_bias: Sequence[bool]
    ) -> list[Tensor] | None:
        """``T`` for a list of tensors, or ``None`` when ``T = 1`` everywhere."""
        scales = [self.scale_single(p, g, b) for p, g, b in zip(params, grads, is_bias)]
        if all(s is None for s in scales):
            return None
        return [torch.ones_like(g) if s is None else s for s, g in zip(scales, grads)]

    def hparams(self) -> dict[str, float | bool]:
        """The geometry's own hyperparameters, for records."""
        return {}


@dataclass(frozen=True)
class EuclideanGeometry(Geometry):
    """SAM's Euclidean ball: ``M = I`` (Foret et al. 2021)."""

    name = "sam"

    def scale_single(self, param: Tensor, grad: Tensor, is_bias: bool) -> Tensor | None:
        return None

    def scale(self, params, grads, is_bias):
        return None


@dataclass(frozen=True)
class AdaptiveGeometry(Geometry):
    """ASAM's weight-scaled ball: ``T = |w| + eta`` (Kwon et al. 2021).

    Args:
        eta: the offset that keeps ``T > 0`` for zero weights (ASAM's code: 0.01).
        scale_biases: ``False`` follows Kwon et al.'s code (biases keep ``T = 1``; BatchNorm
            scales are weights and are scaled). ``True`` scales every parameter, which with
            ``eta = 0`` is the "adaptive" mode of the popular PyTorch SAM port.
    """

    eta: float = 0.01
    scale_biases: bool = False
    name = "asam"

    def __post_init__(self) -> None:
        if not math.isfinite(self.eta) or self.eta < 0:
            raise ValueError(f"ASAM eta must be a finite number >= 0, got {self.eta}")

    def scale_single(self, param: Tensor, grad: Tensor, is_bias: bool) -> Tensor | None:
        if is_bias and not self.scale_biases:
            return None
        return param.detach().abs().add_(self.eta)

    def scale(self, params, grads, is_bias):
        scaled = [
            i for i, b in enumerate(is_bias) if self.scale_biases or not b
        ]  # the rest keep T = 1
        if not scaled:
            return None
        out = [torch.ones_like(g) for g in grads]
        picked = torch._foreach_abs([params[i].detach() for i in scaled])
        torch._foreach_add_(picked, self.eta)
        for i, t in zip(scaled, picked):
            out[i] = t
        return out

    def hparams(self) -> dict[str, float | bool]:
        return {"eta": self.eta, "scale_biases": self.scale_biases}


@dataclass(frozen=True)
class FisherGeometry(Geometry):
    """Fisher-SAM's ellipsoid: ``M = diag(1 + eta g^2)``, the diagonal Fisher approximated by
    squared mini-batch mean gradients (Kim et al. 2022), so ``T = (1 + eta g^2)^(-1/2)``.

    The metric depends on the scale of ``g``: it must be the mini-batch *mean* loss gradient
    (unscaled under AMP, averaged under gradient accumulation).

    Args:
        eta: the Fisher scale (paper: 1.0). ``eta = 0`` is SAM.
    """

    eta: float = 1.0
    name = "fsam"

    def __post_init__(self) -> None:
        if not math.isfinite(self.eta) or self.eta < 0:
            raise ValueError(f"FSAM eta must be a finite number >= 0, got {self.eta}")

    def scale_single(self, param: Tensor, grad: Tensor, is_bias: bool) -> Tensor | None:
        return grad.square().mul_(self.eta).add_(1.0).rsqrt_()

    def scale(self, params, grads, is_bias):
        out = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(out, self.eta)
        torch._foreach_add_(out, 1.0)
        torch._foreach_rsqrt_(out)
        return out

    def hparams(self) -> dict[str, float | bool]:
        return {"eta": self.eta}


def perturbation_reference(
    geometry: Geometry,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    is_bias: Sequence[bool],
    rho: float,
) -> list[Tensor]:
    """``eps = rho * T^2 g / ||T g||`` with a plain per-tensor loop (the readable reference).

    A zero gradient gives ``eps = 0``.
    """
    scaled = []
    for p, g, b in zip(params, grads, is_bias):
        t = geometry.scale_single(p, g, b)
        scaled.append((g, t, g if t is None else t * g))
    sq_norm = sum(
        (u.double().square().sum() for _, _, u in scaled), torch.zeros((), dtype=torch.float64)
    )
    norm = sq_norm.sqrt()
    if norm == 0:
        return [torch.zeros_like(g) for g in grads]
    out = []
    for g, t, u in scaled:
        coef = (rho / norm).to(g.dtype)
        out.append(coef * (u if t is None else t * u))
    return out


def perturbation(
    geometry: Geometry,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    is_bias: Sequence[bool],
    rho: float,
) -> list[Tensor]:
    """``eps = rho * T^2 g / ||T g||`` over whole tensor lists with ``torch._foreach_*`` ops.

    Returns new tensors (the inputs are not modified). The global norm is accumulated from
    per-tensor norms, so the result agrees with :func:`perturbation_reference` up to floating
    point rounding.
    """
    if not grads:
        return []
    t = geometry.scale(params, grads, is_bias)
    u = list(grads) if t is None else torch._foreach_mul(grads, t)
    norms = torch._foreach_norm(u)
    norm = torch.linalg.vector_norm(torch.stack([n.double() for n in norms]))
    if norm == 0:
        return [torch.zeros_like(g) for g in grads]
    coef = (rho / norm).to(grads[0].dtype)
    eps = torch._foreach_mul(u, coef) if t is None else torch._foreach_mul(t, u)
    if t is not None:
        torch._foreach_mul_(eps, coef)
    return eps


def build_geometry(
    name: str | GeometryName, *, eta: float | None = None, scale_biases: bool = False
) -> Geometry:
    """Build a geometry by name (``sam``, ``asam``, ``fsam``) with its paper defaults.

    Raises:
        ValueError: unknown name, or ``eta`` given for SAM / out of range.
    """
    try:
        key = GeometryName(name)
    except ValueError:
        known = ", ".join(g.value for g in GeometryName)
        raise ValueError(f"unknown geometry {name!r} (known: {known})") from None
    if key is GeometryName.EUCLIDEAN:
        if eta is not None:
            raise ValueError("the SAM (Euclidean) geometry takes no eta")
        return EuclideanGeometry()
    if key is GeometryName.ADAPTIVE:
        return AdaptiveGeometry(eta=0.01 if eta is None else eta, scale_biases=scale_biases)
    return FisherGeometry(eta=1.0 if eta is None else eta)
