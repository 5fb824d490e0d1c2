"""One optimiser for SGD, SAM, ASAM and Fisher-SAM.

:class:`SharpnessAware` wraps a base optimiser (SGD or AdamW) and shares its ``param_groups``,
so a learning-rate scheduler attached to it drives the base optimiser. A step is

1. the clean pass (the caller's closure: zero grads, forward, backward) giving ``g``;
2. :meth:`SharpnessAware.ascent_step`: save ``w``, move to ``w + eps`` with
   ``eps = rho * M^-1 g / sqrt(g^T M^-1 g)`` (the geometry supplies ``M``);
3. the second pass at ``w + eps``;
4. :meth:`SharpnessAware.descent_step`: restore ``w`` bit-exactly from the saved copy (not by
   subtraction) and let the base optimiser step with the second-pass gradient.

With ``geometry=None`` (SGD) a step is just the base step: one pass.

BatchNorm: with ``bn_policy="clean"`` (default, the official SAM code's convention) the running
statistics after a step are those of the clean pass: they are saved after the clean pass and
restored after the second. ``bn_policy="both"`` keeps whatever both passes did.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustkit.optim.geometry import Geometry, perturbation, perturbation_reference


class BNPolicy(str, enum.Enum):
    """Which passes of a sharpness-aware step may update BatchNorm running statistics."""

    CLEAN = "clean"
    BOTH = "both"


class SharpnessAware(torch.optim.Optimizer):
    """A sharpness-aware optimiser: ascent in the geometry's ball, descent by a base optimiser.

    Args:
        params: parameters or parameter groups, as for any optimiser.
        base_optimizer: the base optimiser class (e.g. ``torch.optim.SGD``); it is built on this
            optimiser's ``param_groups`` with ``**base_kwargs``.
        geometry: the ball's metric (:mod:`robustkit.optim.geometry`), or ``None`` for the plain
            base optimiser (one pass per step).
        rho: the radius of the ball (FSAM's ``gamma``); ``rho = 0`` reproduces the base optimiser.
        bias_params: parameters that are biases (ASAM leaves them unscaled).
        bn_modules: BatchNorm modules whose running statistics ``bn_policy`` governs.
        bn_policy: ``"clean"`` or ``"both"`` (see module docstring).
        foreach: use the ``torch._foreach_*`` fast path (default) or the per-tensor reference.
        **base_kwargs: hyperparameters of the base optimiser (lr, momentum, weight_decay, ...).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
        *,
        geometry: Geometry | None,
        rho: float = 0.05,
        bias_params: Iterable[Tensor] = (),
        bn_modules: Iterable[nn.Module] = (),
        bn_policy: BNPolicy | str = BNPolicy.CLEAN,
        foreach: bool = True,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
        try:
            self.bn_policy = BNPolicy(bn_policy)
        except ValueError:
            raise ValueError(
                f"bn_policy must be one of {[p.value for p in BNPolicy]}, got {bn_policy!r}"
            ) from None
        super().__init__(params, dict(rho=float(rho)))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # Share the groups, so schedulers and GradScaler see one set of hyperparameters.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.geometry = geometry
        self.foreach = foreach
        self._bias_ids = {id(p) for p in bias_params}
        self._bn_modules = [m for m in bn_modules if isinstance(m, _BatchNorm)]
        self._backup: list[tuple[Tensor, Tensor]] | None = None
        self._bn_backup: list[tuple[Tensor, Tensor]] | None = None

    # -- the two halves -------------------------------------------------------------------

    @torch.no_grad()
    def ascent_step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Move every parameter with a gradient from ``w`` to ``w + eps``.

        Call after the clean pass's backward. ``w`` is saved for :meth:`descent_step`.

        Args:
            scaler: the ``GradScaler`` whose scale multiplies the gradients, if any. The ascent
                uses the unscaled gradient (FSAM's ball depends on the scale of ``g``); if the
                clean gradients overflowed, the ascent is skipped (``eps = 0``).
        """
        if self.geometry is None:
            return
        if self._backup is not None:
            raise RuntimeError("ascent_step called twice without descent_step")
        params: list[Tensor] = []
        grads: list[Tensor] = []
        is_bias: list[bool] = []
        rhos: list[float] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                params.append(p)
                grads.append(p.grad)
                is_bias.append(id(p) in self._bias_ids)
                rhos.append(group["rho"])
        self._backup = [(p, p.detach().clone()) for p in params]
        self._save_bn()
        if not params:
            return
        if scaler is not None and scaler.is_enabled():
            inv_scale = 1.0 / float(scaler.get_scale())
            grads = [g * inv_scale for g in grads]
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                return  # overflow: scaler.step will skip this step anyway
        # One ball over all parameters: the norm is global; a group's rho scales its share.
        uniform = len(set(rhos)) == 1
        radius = rhos[0] if uniform else 1.0
        if self.foreach:
            eps = perturbation(self.geometry, params, grads, is_bias, radius)
        else:
            eps = perturbation_reference(self.geometry, params, grads, is_bias, radius)
        if not uniform:
            eps = [e * r for e, r in zip(eps, rhos)]
        if self.foreach:
            torch._foreach_add_(params, eps)
        else:
            for p, e in zip(params, eps):
                p.add_(e)

    @torch.no_grad()
    def descent_step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore ``w`` exactly and let the base optimiser step with the current gradient.

        Args:
            scaler: if given, the base step goes through ``scaler.step`` (which unscales and
                skips non-finite steps); the caller still calls ``scaler.update()``.
        """
        self._restore()
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()

    def _restore(self) -> None:
        if self._backup is not None:
            with torch.no_grad():
                params = [p for p, _ in self._backup]
                saved = [w for _, w in self._backup]
                if self.foreach and params:
                    torch._foreach_copy_(params, saved)
                else:
                    for p, w in zip(params, saved):
                        p.copy_(w)
            self._backup = None
        self._restore_bn()

    def _save_bn(self) -> None:
        if self.bn_policy is not BNPolicy.CLEAN:
            return
        self._bn_backup = [
            (buf, buf.detach().clone())
            for m in self._bn_modules
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buf is not None
        ]

    def _restore_bn(self) -> None:
        if self._bn_backup is not None:
            with torch.no_grad():
                for buf, saved in self._bn_backup:
                    buf.copy_(saved)
            self._bn_backup = None

    # -- the optimiser protocol -----------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One full step; returns the clean-pass loss.

        The closure must zero the gradients, compute the mini-batch *mean* loss and call
        ``backward`` (for gradient accumulation: sum ``loss_i / k`` over k equal micro-batches
        so that the gradient is the mean). SAM/ASAM/FSAM call it twice, SGD once.
        """
        if self.geometry is None:
            if closure is None:
                return self.base_optimizer.step()
            with torch.enable_grad():
                loss = closure()
            self.base_optimizer.step()
            return loss
        if closure is None:
            raise ValueError(
                "sharpness-aware step needs a closure (or call ascent_step/descent_step)"
            )
        with torch.enable_grad():
            loss = closure()
        self.ascent_step()
        try:
            with torch.enable_grad():
                closure()
        except BaseException:
            self._restore()  # never leave the caller's model perturbed
            raise
        self.descent_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state (momentum buffers) and the shared groups (lr, rho)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups

    def hparams(self) -> dict[str, Any]:
        """Hyperparameters for records: the geometry's and the base optimiser's."""
        out: dict[str, Any] = {
            "geometry": None if self.geometry is None else self.geometry.name,
            "base": type(self.base_optimizer).__name__,
            "bn_policy": self.bn_policy.value,
        }
        if self.geometry is not None:
            out["rho"] = self.param_groups[0]["rho"]
            out.update(self.geometry.hparams())
        return out
