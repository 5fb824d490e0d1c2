r"""Adversarial and random weight perturbation, and eps-sharpness: one projected-gradient core.

The weights are the variable, the data are fixed. For a trained network with weights ``w`` and
a ball ``B_m`` of size ``m`` around zero, the *adversarial* perturbation is

.. math::

    \delta^\star = \arg\max_{\delta \in B_m} L(w + \delta), \qquad
    L(w) = \frac{1}{N} \sum_{n=1}^N \ell(f(x_n; w), y_n),

found by projected gradient ascent (PGD) on the cross-entropy of the attack data, and the
network ``w + delta*`` is then evaluated on held-out data. A *random* perturbation draws
``delta`` uniformly on the boundary of the same ball, so the gap between the worst and the
average case is visible (Sun et al., "Exploring the Vulnerability of Deep Neural Networks: A
Study of Parameter Corruption", AAAI 2021; Wu et al., "Adversarial Weight Perturbation Helps
Robust Generalization", NeurIPS 2020). The same core with an absolute radius gives SAM's
eps-sharpness ``max_{||eps|| <= rho} L(w + eps) - L(w)`` (Foret et al., "Sharpness-Aware
Minimization for Efficiently Improving Generalization", ICLR 2021).

Balls
-----
Every ball is a product of Euclidean balls in scaled coordinates ``u = delta / T`` (``T`` per
element, ``T = 1`` for the norm balls)::

    B = { delta = T * u : ||u_g|| <= r_g for every group g }

=========  =========================  ===============================  =========================
``norm``   groups ``g``               ``T``                            relative radius ``r_g``
=========  =========================  ===============================  =========================
layer      each perturbed tensor      1                                ``m ||w_l||``
filter     each row ``w_l[k]`` of a   1                                ``m ||w_l[k]||``
           tensor's first dimension
global     all perturbed tensors      1                                ``m ||w||``
sam        all perturbed tensors      1 (:class:`EuclideanGeometry`)   ``m ||w||`` (= ``global``)
asam       all perturbed tensors      ``|w| + eta``, biases 1          ``m ||w / T||``
fsam       all perturbed tensors      ``(1 + eta g^2)^(-1/2)``         ``m ||w / T||``
=========  =========================  ===============================  =========================

The geometry balls are ``{delta : sum (delta / T)^2 <= r^2}``, ``T`` taken from
:mod:`robustkit.optim.geometry` (the classes the optimisers use), at the clean weights ``w``.
FSAM's ``g`` is the clean *mean* loss gradient over the whole attack data at ``w``, computed
once per model. With relative radii (the default, DESIGN.md §4) the radius of a geometry ball is
``m`` times the norm of ``w`` *in that geometry*, ``r = m ||w / T||``: so every ball of size
``m``, norm or geometry, has ``delta = +-m w`` on its boundary, ``m`` is invariant to a constant
rescaling of ``T``, and ``sam`` coincides with ``global``. With ``radius="absolute"`` every
group's radius is ``m`` itself (``r = m`` for the single-group balls), which is what
:func:`eps_sharpness` uses.

Which tensors are perturbed: by default the weights of convolutions and linear layers, i.e.
every parameter whose name does not end in ``bias`` and that does not belong to a
normalisation layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm); ``include_bn_bias=True``
perturbs every parameter. ASAM's ``T`` is 1 on parameters named ``*bias`` (Kwon et al.'s code,
as in :func:`robustkit.optim.build_optimizer`). A relative ball cannot move a tensor (or row)
whose weights are all zero.

PGD
---
In ``u`` coordinates the ascent direction of a group is its normalised gradient ``T g_g``; one
step is (Madry et al. 2018; AWP's per-layer normalised steps)::

    u_g <- P_g( u_g + a r_g (T g)_g / ||(T g)_g|| ),   P_g(v) = v min(1, r_g / ||v||)

with ``a`` the step size as a fraction of the radius (default ``2.5 / steps``). The iterate
with the highest attack loss is kept (the clean point ``delta = 0`` included), so more steps
from the same start never find a smaller loss, and one step from zero with ``a >= 1`` is the
closed-form maximiser of the linearised loss, ``delta = r T^2 g / ||T g||`` per group (SAM's
``eps``; returned whenever it raises the loss above the clean one). ``random_start`` begins at
``u_g = r_g U z_g / ||z_g||`` with ``z`` standard normal and ``U`` uniform on ``[0, 1]`` per
group; restarts after the first always start randomly, and the best restart is kept.

Everything runs with the model in eval mode (BatchNorm running statistics fixed, dropout off).
The caller's model is restored bit-exactly from one saved copy of the perturbed tensors
(``torch._foreach_copy_``) in a ``finally`` block, together with every module's train/eval flag
and every parameter's ``requires_grad``; ``.grad`` is never touched (gradients are taken with
``torch.autograd.grad``).

Data
----
``data`` arguments are either an ``(x, y)`` pair of tensors (split into batches of
``batch_size``) or an iterable of batches ``(x, y, ...)`` (extra entries ignored, e.g. the
indices :class:`robustkit.data.batches.DeviceBatches` yields). They are moved once to the
model's device (and floating ``x`` cast to the model's dtype) by :func:`prepare_data`; data
already there are not copied. Losses are dataset means: batch means weighted by batch size.
Randomness comes from an explicit CPU ``torch.Generator`` (default: a fresh one seeded 0), so
the random draws do not depend on the device.
"""

from __future__ import annotations

import enum
import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustkit.optim.geometry import build_geometry

__all__ = [
    "AttackResult",
    "Ball",
    "Batches",
    "LossFn",
    "Norm",
    "RadiusMode",
    "RandomResult",
    "attack_weights",
    "build_ball",
    "eps_sharpness",
    "evaluate",
    "perturb_sweep",
    "perturbed_parameters",
    "prepare_data",
    "random_perturbation",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets) -> scalar`` mean loss over the batch."""

Batches = list[tuple[Tensor, Tensor]]
"""Prepared data: ``(x, y)`` batches on the model's device (see :func:`prepare_data`)."""

DEFAULT_BATCH_SIZE = 500
BN_MODE = "eval"
ESTIMATOR = "projected gradient ascent"

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class Norm(str, enum.Enum):
    """The ball of a weight perturbation (see the module docstring for the maths)."""

    LAYER = "layer"
    FILTER = "filter"
    GLOBAL = "global"
    SAM = "sam"
    ASAM = "asam"
    FSAM = "fsam"

    def __str__(self) -> str:
        return self.value


class RadiusMode(str, enum.Enum):
    """``relative``: ``r_g = m ||w_g / T||``; ``absolute``: ``r_g = m``."""

    RELATIVE = "relative"
    ABSOLUTE = "absolute"

    def __str__(self) -> str:
        return self.value


_GEOMETRY_NORMS = {Norm.SAM, Norm.ASAM, Norm.FSAM}
_RADIUS_RULES = {
    (Norm.LAYER, RadiusMode.RELATIVE): "||delta_l|| <= m ||w_l|| for every perturbed tensor l",
    (Norm.FILTER, RadiusMode.RELATIVE): "||delta_l[k]|| <= m ||w_l[k]|| for every row k",
    (Norm.GLOBAL, RadiusMode.RELATIVE): "||delta|| <= m ||w||",
    (Norm.SAM, RadiusMode.RELATIVE): "||delta|| <= m ||w|| (T = 1)",
    (Norm.ASAM, RadiusMode.RELATIVE): "||delta / T|| <= m ||w / T||, T = |w| + eta",
    (Norm.FSAM, RadiusMode.RELATIVE): "||delta / T|| <= m ||w / T||, T = (1 + eta g^2)^-1/2",
    (Norm.LAYER, RadiusMode.ABSOLUTE): "||delta_l|| <= m for every perturbed tensor l",
    (Norm.FILTER, RadiusMode.ABSOLUTE): "||delta_l[k]|| <= m for every row k",
    (Norm.GLOBAL, RadiusMode.ABSOLUTE): "||delta|| <= m",
    (Norm.SAM, RadiusMode.ABSOLUTE): "||delta|| <= m (T = 1)",
    (Norm.ASAM, RadiusMode.ABSOLUTE): "||delta / T|| <= m, T = |w| + eta",
    (Norm.FSAM, RadiusMode.ABSOLUTE): "||delta / T|| <= m, T = (1 + eta g^2)^-1/2",
}


# -- validation -----------------------------------------------------------------------------


def _norm(norm: Norm | str) -> Norm:
    try:
        return Norm(norm)
    except ValueError:
        known = ", ".join(n.value for n in Norm)
        raise ValueError(f"unknown norm {norm!r} (known: {known})") from None


def _radius_mode(mode: RadiusMode | str) -> RadiusMode:
    try:
        return RadiusMode(mode)
    except ValueError:
        raise ValueError(f"radius must be 'relative' or 'absolute', got {mode!r}") from None


def _check_magnitude(magnitude: float, name: str = "magnitude") -> float:
    if isinstance(magnitude, bool) or not isinstance(magnitude, numbers.Real):
        raise ValueError(f"{name} must be a number, got {magnitude!r}")
    if not math.isfinite(magnitude) or magnitude < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {magnitude!r}")
    return float(magnitude)


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _step_fraction(step_size: float | None, steps: int) -> float:
    if step_size is None:
        return 2.5 / steps if steps > 0 else 0.0
    if isinstance(step_size, bool) or not isinstance(step_size, numbers.Real):
        raise ValueError(f"step_size must be a number, got {step_size!r}")
    if not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    return float(step_size)


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return torch.Generator().manual_seed(0) if generator is None else generator


# -- data -----------------------------------------------------------------------------------


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for p in model.parameters():
        return p.device, (p.dtype if p.is_floating_point() else None)
    return torch.device("cpu"), None


def prepare_data(
    data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Batches:
    """Materialise ``data`` as a list of ``(x, y)`` batches on ``device`` (once).

    Args:
        data: an ``(x, y)`` pair of tensors (split into batches of ``batch_size``), or an
            iterable of batches whose first two entries are ``x`` and ``y``.
        device: target device; ``None`` keeps each tensor where it is.
        dtype: floating ``x`` is cast to it (the model's dtype); ``None`` keeps it.
        batch_size: examples per batch when ``data`` is a pair.

    Returns:
        The batches. Tensors already on ``device`` with ``dtype`` are the same objects (no copy),
        so preparing prepared data is free.

    Raises:
        ValueError: empty data, a batch that is not ``(x, y, ...)``, or mismatched sizes.
    """
    _check_count(batch_size, "batch_size", 1)

    def move(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError("every batch must be a pair of tensors (x, y)")
        if x.shape[:1] != y.shape[:1]:
            raise ValueError(f"x and y sizes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        x_dtype = dtype if dtype is not None and x.is_floating_point() else None
        return x.to(device=device, dtype=x_dtype), y.to(device=device)

    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        batches = [
            move(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)
        ]
    else:
        batches = []
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("every batch must be a sequence (x, y, ...)")
            batches.append(move(batch[0], batch[1]))
    if not batches or sum(int(y.shape[0]) for _, y in batches) == 0:
        raise ValueError("the data hold no examples")
    return batches


def _num_examples(batches: Batches) -> int:
    return sum(int(y.shape[0]) for _, y in batches)


def _prepare_for(
    model: nn.Module, data: Any, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[Batches, int]:
    device, dtype = _model_device_dtype(model)
    batches = prepare_data(data, device=device, dtype=dtype, batch_size=batch_size)
    return batches, _num_examples(batches)


# -- which tensors, and the model's state -----------------------------------------------------


def perturbed_parameters(
    model: nn.Module, *, include_bn_bias: bool = False
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a perturbation moves, in ``named_parameters`` order.

    By default the weights of convolutions and linear layers: not named ``*bias`` and not owned
    by a normalisation layer. ``include_bn_bias=True`` returns every parameter.
    """
    if include_bn_bias:
        return list(model.named_parameters())
    norm_params = {
        id(p)
        for module in model.modules()
        if isinstance(module, _NORM_LAYERS)
        for p in module.parameters(recurse=False)
    }
    return [
        (name, p)
        for name, p in model.named_parameters()
        if not name.endswith("bias") and id(p) not in norm_params
    ]


class _WeightSession:
    """Holds the model in eval mode with one saved copy of the perturbed tensors.

    ``apply(delta)`` sets ``w = w0 + delta`` in place, ``restore()`` copies ``w0`` back; leaving
    the ``with`` block restores the weights, every module's ``training`` flag and every
    parameter's ``requires_grad``, whatever happened inside (exceptions, ``KeyboardInterrupt``).
    """

    def __init__(self, model: nn.Module, params: Sequence[Tensor]) -> None:
        self.model = model
        self.params = list(params)
        self.saved: list[Tensor] = []
        self._training: list[tuple[nn.Module, bool]] = []
        self._requires_grad: list[tuple[Tensor, bool]] = []
        self.dirty = False

    def __enter__(self) -> _WeightSession:
        self._training = [(m, m.training) for m in self.model.modules()]
        self._requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            with torch.no_grad():
                self.saved = [p.detach().clone() for p in self.params]
            self.model.eval()
            ids = {id(p) for p in self.params}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in ids)
        except BaseException:
            self._restore_flags()
            raise
        return self

    def apply(self, delta: Sequence[Tensor]) -> None:
        with torch.no_grad():
            self.dirty = True
            torch._foreach_copy_(self.params, self.saved)
            torch._foreach_add_(self.params, list(delta))

    def restore(self) -> None:
        if self.dirty:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.saved)
            self.dirty = False

    def _restore_flags(self) -> None:
        for module, training in self._training:
            module.training = training
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.saved:
                self.dirty = True
                self.restore()
        finally:
            self._restore_flags()


# -- losses ---------------------------------------------------------------------------------


def _loss(model: nn.Module, batches: Batches, loss_fn: LossFn, num_examples: int) -> float:
    total = None
    with torch.no_grad():
        for x, y in batches:
            term = loss_fn(model(x), y).detach().double() * (y.shape[0] / num_examples)
            total = term if total is None else total + term
    return float(total)


def _loss_and_grad(
    model: nn.Module,
    params: Sequence[Tensor],
    batches: Batches,
    loss_fn: LossFn,
    num_examples: int,
) -> tuple[float, list[Tensor]]:
    """Dataset-mean loss and its gradient with respect to ``params`` (``.grad`` untouched)."""
    total = None
    grads: list[Tensor] | None = None
    with torch.enable_grad():
        for x, y in batches:
            loss = loss_fn(model(x), y) * (y.shape[0] / num_examples)
            parts = torch.autograd.grad(loss, params, allow_unused=True)
            parts = [torch.zeros_like(p) if g is None else g for p, g in zip(params, parts)]
            if grads is None:
                grads = list(parts)
            else:
                torch._foreach_add_(grads, parts)
            term = loss.detach().double()
            total = term if total is None else total + term
    assert grads is not None  # prepare_data guarantees a batch
    return float(total), grads


def evaluate(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    *,
    loss_fn: LossFn | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[float, float]:
    """Accuracy and mean loss of ``model`` on ``data``, in eval mode (restored afterwards).

    Args:
        model: a classifier returning logits ``(batch, classes)``.
        data: ``(x, y)`` tensors or an iterable of ``(x, y, ...)`` batches (module docstring).
        loss_fn: mean loss of a batch; default cross-entropy.
        batch_size: batch size when ``data`` is a pair.

    Returns:
        ``(accuracy, loss)``: the fraction of argmax predictions equal to ``y`` in ``[0, 1]``,
        and the dataset-mean loss.
    """
    batches, n = _prepare_for(model, data, batch_size)
    with _WeightSession(model, []):
        return _evaluate(model, batches, loss_fn or F.cross_entropy, n)


def _evaluate(
    model: nn.Module, batches: Batches, loss_fn: LossFn, num_examples: int
) -> tuple[float, float]:
    correct = None
    total = None
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            hits = (out.argmax(dim=1) == y).sum()
            term = loss_fn(out, y).detach().double() * (y.shape[0] / num_examples)
            correct = hits if correct is None else correct + hits
            total = term if total is None else total + term
    return int(correct) / num_examples, float(total)


# -- balls ----------------------------------------------------------------------------------


def _group_norms(tensors: Sequence[Tensor], grouping: str) -> list[Tensor]:
    """Per-tensor norms of each element's group, broadcastable against the tensor.

    ``grouping`` is ``"global"`` (one group over all tensors: the same scalar for all),
    ``"tensor"`` (a scalar per tensor) or ``"row"`` (a norm per row of the first dimension,
    shaped ``(rows, 1, ..., 1)``). Norms are accumulated in the tensors' dtype.
    """
    if grouping == "row":
        out = []
        for t in tensors:
            if t.ndim == 0:
                out.append(t.abs())
            else:
                rows = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)
                out.append(rows.reshape(-1, *([1] * (t.ndim - 1))))
        return out
    norms = list(torch._foreach_norm(list(tensors)))
    if grouping == "tensor":
        return norms
    total = torch.linalg.vector_norm(torch.stack(norms))
    return [total] * len(tensors)


@dataclass
class Ball:
    """A ball ``{T * u : ||u_g|| <= r_g}`` around one model's weights (module docstring).

    Built once per model by :func:`build_ball`; radii for a magnitude come from
    :meth:`radii`. Methods work on lists of tensors aligned with :attr:`names`.

    Attributes:
        norm: the ball's name.
        names: names of the perturbed parameters.
        scales: ``T`` per tensor, or ``None`` for ``T = 1``.
        sizes: the group norms of ``w / T`` (what a relative radius multiplies).
        weight_norm: ``||w||`` over the perturbed tensors (Euclidean).
        specs: ``(shape, dtype, device)`` of each perturbed tensor.
        hparams: the geometry's hyperparameters (``eta``), for records.
        include_bn_bias: whether biases and normalisation parameters are perturbed.
    """

    norm: Norm
    names: list[str]
    scales: list[Tensor] | None
    sizes: list[Tensor]
    weight_norm: float
    specs: list[tuple[torch.Size, torch.dtype, torch.device]]
    hparams: dict[str, Any] = field(default_factory=dict)
    include_bn_bias: bool = False

    @property
    def grouping(self) -> str:
        """``"tensor"`` (layer), ``"row"`` (filter) or ``"global"`` (the others)."""
        return {Norm.LAYER: "tensor", Norm.FILTER: "row"}.get(self.norm, "global")

    def radii(self, magnitude: float, mode: RadiusMode | str = RadiusMode.RELATIVE) -> list[Tensor]:
        """The group radii ``r_g`` (broadcastable per tensor) for a ball of size ``magnitude``."""
        magnitude = _check_magnitude(magnitude)
        if _radius_mode(mode) is RadiusMode.RELATIVE:
            return [s * magnitude for s in self.sizes]
        return [torch.full_like(s, magnitude) for s in self.sizes]

    def group_norms(self, u: Sequence[Tensor]) -> list[Tensor]:
        """``||u_g||`` for each element's group."""
        return _group_norms(u, self.grouping)

    def to_delta(self, u: Sequence[Tensor]) -> list[Tensor]:
        """``delta = T * u``."""
        return list(u) if self.scales is None else list(torch._foreach_mul(list(u), self.scales))

    def to_u(self, delta: Sequence[Tensor]) -> list[Tensor]:
        """``u = delta / T`` (0 where ``T = 0``, i.e. where the ball allows no movement)."""
        if self.scales is None:
            return list(delta)
        return [
            torch.where(t > 0, d / t.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(d))
            for d, t in zip(delta, self.scales)
        ]

    def project_(self, u: list[Tensor], radii: Sequence[Tensor]) -> None:
        """``u_g <- u_g min(1, r_g / ||u_g||)`` in place."""
        norms = self.group_norms(u)
        coefs = [
            torch.where(n > r, r / n.clamp_min(torch.finfo(n.dtype).tiny), torch.ones_like(n))
            for n, r in zip(norms, radii)
        ]
        torch._foreach_mul_(u, coefs)

    def step_(
        self, u: list[Tensor], grad_u: Sequence[Tensor], radii: Sequence[Tensor], a: float
    ) -> None:
        """``u_g <- u_g + a r_g grad_g / ||grad_g||`` in place (zero where ``grad_g = 0``)."""
        norms = self.group_norms(grad_u)
        coefs = [
            torch.where(n > 0, a * r / n.clamp_min(torch.finfo(n.dtype).tiny), torch.zeros_like(n))
            for n, r in zip(norms, radii)
        ]
        torch._foreach_add_(u, torch._foreach_mul(list(grad_u), coefs))

    def on_sphere(
        self,
        radii: Sequence[Tensor],
        generator: torch.Generator,
        *,
        uniform_radius: bool = False,
    ) -> list[Tensor]:
        """A random ``u``: ``r_g z_g / ||z_g||`` with ``z`` standard normal (drawn on the CPU).

        With ``uniform_radius`` each group's length is further multiplied by ``U ~ U[0, 1]``
        (the PGD random start).
        """
        z = [
            torch.randn(shape, generator=generator, dtype=dtype).to(device)
            for shape, dtype, device in self.specs
        ]
        norms = self.group_norms(z)
        coefs = [
            torch.where(n > 0, r / n.clamp_min(torch.finfo(n.dtype).tiny), torch.zeros_like(n))
            for n, r in zip(norms, radii)
        ]
        torch._foreach_mul_(z, coefs)
        if uniform_radius:
            lengths = self._group_uniform(generator)
            torch._foreach_mul_(z, lengths)
        return z

    def _group_uniform(self, generator: torch.Generator) -> list[Tensor]:
        if self.grouping == "global":
            value = torch.rand((), generator=generator, dtype=torch.float64).item()
            return [torch.full_like(s, value) for s in self.sizes]
        return [
            torch.rand(s.shape, generator=generator, dtype=s.dtype).to(s.device) for s in self.sizes
        ]

    def fraction(self, u: Sequence[Tensor], radii: Sequence[Tensor]) -> float:
        """``max_g ||u_g|| / r_g`` over groups with ``r_g > 0``: 1 on the boundary, 0 at zero."""
        worst = 0.0
        for n, r in zip(self.group_norms(u), radii):
            mask = r > 0
            if bool(mask.any()):
                worst = max(worst, float((n.expand_as(r)[mask] / r[mask]).max()))
        return worst


def build_ball(
    model: nn.Module,
    norm: Norm | str = Norm.LAYER,
    *,
    data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]] | None = None,
    eta: float | None = None,
    include_bn_bias: bool = False,
    loss_fn: LossFn | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Ball:
    """Build the ball of ``norm`` around ``model``'s current weights.

    Args:
        model: the network (not modified).
        norm: ``layer``, ``filter``, ``global``, ``sam``, ``asam`` or ``fsam``.
        data: the attack data; required for ``fsam``, whose ``T`` uses the clean mean loss
            gradient over them at ``w`` (eval mode).
        eta: ASAM's offset (default 0.01) or FSAM's Fisher scale (default 1.0); only for
            those balls.
        include_bn_bias: also perturb biases and normalisation-layer parameters.
        loss_fn: mean batch loss for FSAM's gradient; default cross-entropy.
        batch_size: batch size when ``data`` is a pair.

    Raises:
        ValueError: unknown norm, ``eta`` for a ball without one, ``fsam`` without data, or a
            model without parameters to perturb.
    """
    norm = _norm(norm)
    named = perturbed_parameters(model, include_bn_bias=include_bn_bias)
    if not named:
        raise ValueError("the model has no parameters to perturb")
    names = [n for n, _ in named]
    params = [p for _, p in named]
    if eta is not None and norm not in (Norm.ASAM, Norm.FSAM):
        raise ValueError(f"eta applies only to the asam and fsam balls, not {norm.value!r}")
    scales: list[Tensor] | None = None
    hparams: dict[str, Any] = {}
    with torch.no_grad():
        w = [p.detach() for p in params]
        if norm in _GEOMETRY_NORMS:
            geometry = build_geometry(norm.value, eta=eta)
            hparams = dict(geometry.hparams())
            is_bias = [n.endswith("bias") for n in names]
            if norm is Norm.FSAM:
                if data is None:
                    raise ValueError("the fsam ball needs data: its T uses the mean loss gradient")
                batches, n = _prepare_for(model, data, batch_size)
                with _WeightSession(model, params):
                    _, grads = _loss_and_grad(model, params, batches, loss_fn or F.cross_entropy, n)
            else:
                grads = [torch.zeros_like(t) for t in w]
            t = geometry.scale(w, grads, is_bias)
            scales = None if t is None else [s.detach().clone() for s in t]
        base = w
        if scales is not None:
            base = [
                torch.where(s > 0, x / s.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(x))
                for x, s in zip(w, scales)
            ]
        grouping = {Norm.LAYER: "tensor", Norm.FILTER: "row"}.get(norm, "global")
        sizes = [s.clone() for s in _group_norms(base, grouping)]
        weight_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(w))))
    specs = [(t.shape, t.dtype, t.device) for t in w]
    return Ball(norm, names, scales, sizes, weight_norm, specs, hparams, bool(include_bn_bias))


# -- the PGD core (one implementation; attack_weights, perturb_sweep and eps_sharpness) ------


@dataclass
class _Ascent:
    delta: list[Tensor] | None  # None: the clean point was the best
    loss: float
    fraction: float


def _ascend(
    session: _WeightSession,
    ball: Ball,
    batches: Batches,
    num_examples: int,
    loss_fn: LossFn,
    radii: Sequence[Tensor],
    *,
    clean_loss: float,
    steps: int,
    step_fraction: float,
    random_start: bool,
    restarts: int,
    generator: torch.Generator,
) -> _Ascent:
    """Projected gradient ascent of the dataset-mean loss over ``ball``; keeps the best iterate.

    The clean point (``delta = 0``, loss ``clean_loss``) is the initial best. Every iterate
    ``u_0, ..., u_steps`` of every restart is scored; the model is restored on return.
    """
    model, params = session.model, session.params
    best = _Ascent(None, clean_loss, 0.0)
    best_u: list[Tensor] | None = None
    try:
        for restart in range(restarts):
            if restart == 0 and not random_start:
                u = [torch.zeros_like(p) for p in params]
            else:
                u = ball.on_sphere(radii, generator, uniform_radius=True)
            for k in range(steps + 1):
                session.apply(ball.to_delta(u))
                if k < steps:
                    loss, grads = _loss_and_grad(model, params, batches, loss_fn, num_examples)
                else:
                    loss = _loss(model, batches, loss_fn, num_examples)
                if loss > best.loss:
                    best.loss = loss
                    if best_u is None:
                        best_u = [v.clone() for v in u]
                    else:
                        torch._foreach_copy_(best_u, u)
                if k == steps:
                    break
                grad_u = grads if ball.scales is None else torch._foreach_mul(grads, ball.scales)
                ball.step_(u, grad_u, radii, step_fraction)
                ball.project_(u, radii)
    finally:
        session.restore()
    if best_u is not None:
        best.delta = ball.to_delta(best_u)
        best.fraction = ball.fraction(best_u, radii)
    return best


def _delta_norm(delta: Sequence[Tensor] | None) -> float:
    if not delta:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(delta)))))


# -- public entry points --------------------------------------------------------------------


@dataclass
class AttackResult:
    """The adversarial perturbation found by :func:`attack_weights`.

    Attributes:
        delta: the perturbation per parameter name (on the model's device).
        magnitude: the ball's size ``m``.
        norm: the ball.
        radius_mode: ``relative`` or ``absolute``.
        attack_loss: mean loss at ``w + delta`` on the attack data (the maximised objective).
        attack_loss_clean: mean loss at ``w`` on the attack data.
        delta_norm: ``||delta||`` (Euclidean, all perturbed tensors).
        delta_norm_relative: ``||delta|| / ||w||`` over the perturbed tensors.
        ball_fraction: ``max_g ||u_g|| / r_g``: 1 on the ball's boundary.
        accuracy: accuracy of ``w + delta`` on ``eval_data`` (``None`` without it).
        loss: mean loss of ``w + delta`` on ``eval_data`` (``None`` without it).
        num_attack_examples: examples in the attack data.
        num_eval_examples: examples in the evaluation data (0 without it).
        hparams: the remaining settings (steps, step size, restarts, eta, ...), for records.
    """

    delta: dict[str, Tensor]
    magnitude: float
    norm: str
    radius_mode: str
    attack_loss: float
    attack_loss_clean: float
    delta_norm: float
    delta_norm_relative: float
    ball_fraction: float
    accuracy: float | None
    loss: float | None
    num_attack_examples: int
    num_eval_examples: int
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class RandomResult:
    """Accuracy and loss under random perturbations on the ball's boundary.

    ``*_std`` is the sample standard deviation (``ddof = 1``; 0 for a single trial).
    """

    accuracy_mean: float
    accuracy_std: float
    loss_mean: float
    loss_std: float
    trials: int
    accuracies: list[float]
    losses: list[float]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def _random_trials(
    session: _WeightSession,
    ball: Ball,
    radii: Sequence[Tensor],
    batches: Batches,
    num_examples: int,
    loss_fn: LossFn,
    trials: int,
    generator: torch.Generator,
) -> RandomResult:
    accs, losses = [], []
    try:
        for _ in range(trials):
            session.apply(ball.to_delta(ball.on_sphere(radii, generator)))
            acc, loss = _evaluate(session.model, batches, loss_fn, num_examples)
            accs.append(acc)
            losses.append(loss)
    finally:
        session.restore()
    acc_mean, acc_std = _mean_std(accs)
    loss_mean, loss_std = _mean_std(losses)
    return RandomResult(acc_mean, acc_std, loss_mean, loss_std, trials, accs, losses)


def _evaluate_delta(
    session: _WeightSession,
    delta: Sequence[Tensor] | None,
    batches: Batches,
    num_examples: int,
    loss_fn: LossFn,
) -> tuple[float, float]:
    if delta is None:
        return _evaluate(session.model, batches, loss_fn, num_examples)
    try:
        session.apply(delta)
        return _evaluate(session.model, batches, loss_fn, num_examples)
    finally:
        session.restore()


def _check_attack_settings(
    steps: int, step_size: float | None, restarts: int
) -> tuple[int, float, int]:
    steps = _check_count(steps, "steps", 0)
    restarts = _check_count(restarts, "restarts", 1)
    return steps, _step_fraction(step_size, steps), restarts


def attack_weights(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    magnitude: float,
    *,
    norm: Norm | str = Norm.LAYER,
    radius: RadiusMode | str = RadiusMode.RELATIVE,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    eta: float | None = None,
    include_bn_bias: bool = False,
    loss_fn: LossFn | None = None,
    eval_data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ball: Ball | None = None,
) -> AttackResult:
    r"""Find ``delta* = argmax_{delta in B_m} L(w + delta)`` by projected gradient ascent.

    The ball, the steps and the restoring of the model are described in the module docstring;
    the model is left exactly as it was.

    Args:
        model: the network; its weights are the variable.
        data: the attack data (``(x, y)`` or batches); ``L`` is their mean loss.
        magnitude: the ball's size ``m >= 0`` (relative: a fraction of ``||w||``; module
            docstring). ``m = 0`` returns ``delta = 0`` without touching the model.
        norm: ``layer`` (default), ``filter``, ``global``, ``sam``, ``asam`` or ``fsam``.
        radius: ``relative`` (default) or ``absolute``.
        steps: PGD steps (0: the start point only).
        step_size: step length as a fraction of the group radius; default ``2.5 / steps``.
        random_start: start the first restart at a random point of the ball.
        restarts: independent runs; the best is kept (runs after the first start randomly).
        generator: CPU generator for random starts; default a fresh one seeded 0.
        eta: ASAM's / FSAM's ``eta`` (defaults 0.01 / 1.0).
        include_bn_bias: also perturb biases and normalisation parameters.
        loss_fn: mean batch loss; default cross-entropy.
        eval_data: data to evaluate ``w + delta`` on (accuracy and loss); optional.
        batch_size: batch size when data are pairs.
        ball: a prebuilt :func:`build_ball` for this model (its ``norm`` wins).

    Returns:
        An :class:`AttackResult`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> res = attack_weights(net, (x, y), 0.1, norm="global", steps=1)
        >>> round(res.delta_norm_relative, 6)
        0.1
    """
    magnitude = _check_magnitude(magnitude)
    steps, step_fraction, restarts = _check_attack_settings(steps, step_size, restarts)
    mode = _radius_mode(radius)
    loss_fn = loss_fn or F.cross_entropy
    batches, n = _prepare_for(model, data, batch_size)
    if ball is None:
        ball = build_ball(
            model, norm, data=batches, eta=eta, include_bn_bias=include_bn_bias, loss_fn=loss_fn
        )
    eval_batches, n_eval = (
        (None, 0) if eval_data is None else _prepare_for(model, eval_data, batch_size)
    )
    params = _params_of(model, ball)
    generator = _default_generator(generator)
    with _WeightSession(model, params) as session:
        clean = _loss(model, batches, loss_fn, n)
        radii = ball.radii(magnitude, mode)
        if magnitude == 0:
            found = _Ascent(None, clean, 0.0)
        else:
            found = _ascend(
                session, ball, batches, n, loss_fn, radii,
                clean_loss=clean, steps=steps, step_fraction=step_fraction,
                random_start=random_start, restarts=restarts, generator=generator,
            )  # fmt: skip
        acc = loss = None
        if eval_batches is not None:
            acc, loss = _evaluate_delta(session, found.delta, eval_batches, n_eval, loss_fn)
    delta = found.delta if found.delta is not None else [torch.zeros_like(p) for p in params]
    norm_delta = _delta_norm(found.delta)
    return AttackResult(
        delta=dict(zip(ball.names, (d.detach() for d in delta))),
        magnitude=magnitude,
        norm=ball.norm.value,
        radius_mode=mode.value,
        attack_loss=found.loss,
        attack_loss_clean=clean,
        delta_norm=norm_delta,
        delta_norm_relative=norm_delta / ball.weight_norm if ball.weight_norm > 0 else 0.0,
        ball_fraction=found.fraction,
        accuracy=acc,
        loss=loss,
        num_attack_examples=n,
        num_eval_examples=n_eval,
        hparams={
            "steps": steps,
            "step_size": step_fraction,
            "random_start": bool(random_start),
            "restarts": restarts,
            "include_bn_bias": ball.include_bn_bias,
            **ball.hparams,
        },
    )


def _params_of(model: nn.Module, ball: Ball) -> list[nn.Parameter]:
    named = dict(model.named_parameters())
    try:
        return [named[name] for name in ball.names]
    except KeyError as exc:
        raise ValueError(f"the ball was built for another model (no parameter {exc})") from None


def random_perturbation(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    magnitude: float,
    *,
    norm: Norm | str = Norm.LAYER,
    radius: RadiusMode | str = RadiusMode.RELATIVE,
    trials: int = 5,
    generator: torch.Generator | None = None,
    eta: float | None = None,
    include_bn_bias: bool = False,
    loss_fn: LossFn | None = None,
    ball_data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ball: Ball | None = None,
) -> RandomResult:
    """Accuracy and loss on ``data`` of ``w + delta`` for random ``delta`` on the ball's boundary.

    Each trial draws ``u_g = r_g z_g / ||z_g||`` (``z`` standard normal), ``delta = T u``: uniform
    on the boundary of the ball of :func:`attack_weights` with the same arguments, so
    ``||delta||`` matches the (full-radius) adversarial one.

    Args:
        model: the network (restored afterwards).
        data: the evaluation data.
        magnitude: the ball's size ``m``.
        norm, radius, eta, include_bn_bias: the ball, as for :func:`attack_weights`.
        trials: number of random directions.
        generator: CPU generator; default a fresh one seeded 0.
        loss_fn: mean batch loss; default cross-entropy.
        ball_data: data for FSAM's gradient (default ``data``); ignored with ``ball``.
        batch_size: batch size when data are pairs.
        ball: a prebuilt :func:`build_ball`.
    """
    magnitude = _check_magnitude(magnitude)
    trials = _check_count(trials, "trials", 1)
    mode = _radius_mode(radius)
    loss_fn = loss_fn or F.cross_entropy
    batches, n = _prepare_for(model, data, batch_size)
    if ball is None:
        ball = build_ball(
            model,
            norm,
            data=batches if ball_data is None else ball_data,
            eta=eta,
            include_bn_bias=include_bn_bias,
            loss_fn=loss_fn,
            batch_size=batch_size,
        )
    generator = _default_generator(generator)
    with _WeightSession(model, _params_of(model, ball)) as session:
        if magnitude == 0:
            acc, loss = _evaluate(model, batches, loss_fn, n)
            return RandomResult(acc, 0.0, loss, 0.0, trials, [acc] * trials, [loss] * trials)
        radii = ball.radii(magnitude, mode)
        return _random_trials(session, ball, radii, batches, n, loss_fn, trials, generator)


def perturb_sweep(
    model: nn.Module,
    attack_data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    eval_data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    magnitudes: Sequence[float],
    *,
    norm: Norm | str = Norm.LAYER,
    radius: RadiusMode | str = RadiusMode.RELATIVE,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    restarts: int = 1,
    random_trials: int = 5,
    generator: torch.Generator | None = None,
    eta: float | None = None,
    include_bn_bias: bool = False,
    loss_fn: LossFn | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Adversarial and random perturbation of one model over several magnitudes.

    One model, one saved copy of its perturbed tensors, one ball (FSAM's gradient taken once),
    data moved to the model's device once; the weights are perturbed in place and restored
    between magnitudes (and at the end, whatever happens). Per magnitude: PGD on
    ``attack_data`` (as :func:`attack_weights`), then accuracy and loss of ``w + delta*`` on
    ``eval_data``, and ``random_trials`` random directions on the same ball's boundary evaluated
    on ``eval_data``. Magnitude 0 is the clean model itself (exactly its accuracy).

    Args:
        model: the network (on the device to run on).
        attack_data: data whose mean loss the attack maximises.
        eval_data: data the perturbed networks are evaluated on.
        magnitudes: ball sizes ``m >= 0``.
        norm, radius, steps, step_size, random_start, restarts, eta, include_bn_bias, loss_fn:
            as for :func:`attack_weights`.
        random_trials: random directions per magnitude (0: none).
        generator: CPU generator (random starts, then random directions, per magnitude in
            order); default a fresh one seeded 0.
        batch_size: batch size when data are pairs.
        progress: called with each record as soon as it is done (e.g. to print progress).

    Returns:
        One record (a JSON-able dict) per magnitude: ``magnitude``, ``norm``, ``radius_mode``,
        ``radius_rule``, ``radius`` (absolute, single-group balls only), ``eta``, the attack
        settings, ``clean_accuracy``/``clean_loss``, ``adversarial_accuracy``/``_loss``,
        ``attack_loss``/``attack_loss_clean`` (attack data), ``random_accuracy_mean``/``_std``,
        ``random_loss_mean``/``_std`` (``None`` without trials), ``random_trials``, ``delta_norm``,
        ``delta_norm_relative``, ``ball_fraction``, ``weight_norm``, ``num_perturbed_tensors``,
        ``num_perturbed_parameters``, ``attack_num_examples``, ``eval_num_examples``,
        ``bn_mode`` (``"eval"``), ``estimator`` and ``seconds``.
    """
    ms = [_check_magnitude(m) for m in magnitudes]
    if not ms:
        raise ValueError("magnitudes must not be empty")
    steps, step_fraction, restarts = _check_attack_settings(steps, step_size, restarts)
    random_trials = _check_count(random_trials, "random_trials", 0)
    mode = _radius_mode(radius)
    loss_fn = loss_fn or F.cross_entropy
    generator = _default_generator(generator)
    batches, n_attack = _prepare_for(model, attack_data, batch_size)
    eval_batches, n_eval = _prepare_for(model, eval_data, batch_size)
    ball = build_ball(
        model, norm, data=batches, eta=eta, include_bn_bias=include_bn_bias, loss_fn=loss_fn
    )
    params = _params_of(model, ball)
    records: list[dict[str, Any]] = []
    with _WeightSession(model, params) as session:
        start = time.perf_counter()
        clean_acc, clean_loss = _evaluate(model, eval_batches, loss_fn, n_eval)
        clean_attack = _loss(model, batches, loss_fn, n_attack)
        clean_seconds = time.perf_counter() - start
        for m in ms:
            start = time.perf_counter()
            radii = ball.radii(m, mode)
            if m == 0:
                found = _Ascent(None, clean_attack, 0.0)
                adv = (clean_acc, clean_loss)
                rand = None
                if random_trials:  # every direction of a zero-size ball is the clean model
                    rand = RandomResult(
                        clean_acc, 0.0, clean_loss, 0.0, random_trials,
                        [clean_acc] * random_trials, [clean_loss] * random_trials,
                    )  # fmt: skip
            else:
                found = _ascend(
                    session, ball, batches, n_attack, loss_fn, radii,
                    clean_loss=clean_attack, steps=steps, step_fraction=step_fraction,
                    random_start=random_start, restarts=restarts, generator=generator,
                )  # fmt: skip
                adv = _evaluate_delta(session, found.delta, eval_batches, n_eval, loss_fn)
                rand = None
                if random_trials:
                    rand = _random_trials(
                        session, ball, radii, eval_batches, n_eval, loss_fn, random_trials,
                        generator,
                    )  # fmt: skip
            delta_norm = _delta_norm(found.delta)
            record = {
                "magnitude": m,
                "norm": ball.norm.value,
                "radius_mode": mode.value,
                "radius_rule": _RADIUS_RULES[(ball.norm, mode)],
                "radius": float(radii[0]) if ball.grouping == "global" else None,
                "eta": ball.hparams.get("eta"),
                "include_bn_bias": ball.include_bn_bias,
                "steps": steps,
                "step_size": step_fraction,
                "step_size_unit": "fraction of the group radius",
                "random_start": bool(random_start),
                "restarts": restarts,
                "clean_accuracy": clean_acc,
                "clean_loss": clean_loss,
                "adversarial_accuracy": adv[0],
                "adversarial_loss": adv[1],
                "attack_loss": found.loss,
                "attack_loss_clean": clean_attack,
                "random_accuracy_mean": rand.accuracy_mean if rand else None,
                "random_accuracy_std": rand.accuracy_std if rand else None,
                "random_loss_mean": rand.loss_mean if rand else None,
                "random_loss_std": rand.loss_std if rand else None,
                "random_trials": random_trials,
                "delta_norm": delta_norm,
                "delta_norm_relative": delta_norm / ball.weight_norm if ball.weight_norm else 0.0,
                "ball_fraction": found.fraction,
                "weight_norm": ball.weight_norm,
                "num_perturbed_tensors": len(params),
                "num_perturbed_parameters": sum(p.numel() for p in params),
                "attack_num_examples": n_attack,
                "eval_num_examples": n_eval,
                "bn_mode": BN_MODE,
                "estimator": ESTIMATOR,
                "seconds": time.perf_counter() - start + (clean_seconds if m == 0 else 0.0),
            }
            records.append(record)
            if progress is not None:
                progress(record)
    return records


def eps_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[Tensor, Tensor] | Iterable[Sequence[Tensor]],
    *,
    rho: float,
    ball: Norm | str = Norm.SAM,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    eta: float | None = None,
    include_bn_bias: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    r"""SAM's eps-sharpness ``max_{eps in B_rho} L(w + eps) - L(w)`` with an absolute radius.

    ``B_rho`` is the named ball with every group radius equal to ``rho`` (module docstring):
    ``sam``/``global`` the Euclidean ball ``||eps|| <= rho`` of Foret et al. (2021), ``asam``
    ``||eps / (|w| + eta)|| <= rho`` (Kwon et al. 2021), ``fsam`` ``||eps sqrt(1 + eta g^2)||
    <= rho`` (Kim et al. 2022, ``g`` the mean gradient on ``data`` at ``w``), ``layer``/``filter``
    a radius ``rho`` per tensor/row. The maximum is estimated by the same projected gradient
    ascent as :func:`attack_weights` (a lower bound; the clean point is a candidate, so the value
    is ``>= 0``). By default every parameter is perturbed, as in SAM.

    At an exact critical point (``g = 0``) ascent from ``eps = 0`` cannot move: use
    ``random_start=True``. For ``L = 1/2 w^T A w`` at ``w = 0`` the Euclidean value is
    ``rho^2 lambda_max(A) / 2``.

    Args:
        model: the network (restored afterwards; eval mode during the ascent).
        loss_fn: ``loss_fn(model(x), y)`` is the mean loss of a batch.
        data: an ``(x, y)`` pair of tensors or an iterable of ``(x, y, ...)`` batches; ``L`` is
            the mean over all examples (batch means weighted by batch size).
        rho: the absolute radius.
        ball: ``sam`` (default), ``asam``, ``fsam``, ``global``, ``layer`` or ``filter``.
        steps: ascent steps.
        step_size: fraction of ``rho`` per step; default ``2.5 / steps``.
        random_start: start at a random point of the ball.
        restarts: independent runs (after the first they start randomly); the best is kept.
        generator: CPU generator; default a fresh one seeded 0.
        eta: ASAM's / FSAM's ``eta``.
        include_bn_bias: perturb every parameter (default) or only conv/linear weights.
        batch_size: batch size when ``data`` is a pair.

    Returns:
        A record: ``metric`` ("eps-sharpness"), ``value``, ``loss_clean``, ``loss_perturbed``,
        ``rho``, ``ball``, ``radius_mode`` ("absolute"), ``eta``, ``steps``, ``step_size``,
        ``random_start``, ``restarts``, ``num_examples``, ``estimator``, ``bn_mode``,
        ``include_bn_bias``, ``eps_norm``, ``ball_fraction`` and ``seconds``.
    """
    rho = _check_magnitude(rho, "rho")
    norm = _norm(ball)
    start = time.perf_counter()
    result = attack_weights(
        model,
        data,
        rho,
        norm=norm,
        radius=RadiusMode.ABSOLUTE,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        restarts=restarts,
        generator=generator,
        eta=eta,
        include_bn_bias=include_bn_bias,
        loss_fn=loss_fn,
        batch_size=batch_size,
    )
    return {
        "metric": "eps-sharpness",
        "value": result.attack_loss - result.attack_loss_clean,
        "loss_clean": result.attack_loss_clean,
        "loss_perturbed": result.attack_loss,
        "rho": rho,
        "ball": norm.value,
        "radius_mode": RadiusMode.ABSOLUTE.value,
        "eta": result.hparams.get("eta"),
        "steps": result.hparams["steps"],
        "step_size": result.hparams["step_size"],
        "random_start": bool(random_start),
        "restarts": result.hparams["restarts"],
        "num_examples": result.num_attack_examples,
        "estimator": ESTIMATOR,
        "bn_mode": BN_MODE,
        "include_bn_bias": result.hparams["include_bn_bias"],
        "eps_norm": result.delta_norm,
        "ball_fraction": result.ball_fraction,
        "seconds": time.perf_counter() - start,
    }
