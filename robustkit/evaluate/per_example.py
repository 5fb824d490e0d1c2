"""Per-example squared gradient norms in closed form, layer by layer.

For a classifier with logits :math:`f_\\theta(x_n)` and, per example, vectors
:math:`u_{n,k}` in logit space, this computes

.. math:: s_{n,k} = \\big\\|J_n^\\top u_{n,k}\\big\\|^2, \\qquad
          J_n = \\partial f_\\theta(x_n) / \\partial \\theta,

which is everything the Fisher traces need: :math:`\\nabla_\\theta \\log p(c \\mid x_n) =
J_n^\\top (e_c - p_n)`, so the empirical Fisher uses :math:`u = e_{y_n} - p_n`, Monte Carlo
uses sampled classes, and the true Fisher sums :math:`u_k = \\sqrt{p_k}\\,(e_k - p_n)` over
the classes.

Instead of materialising a ``D``-dimensional gradient per example (``vmap(grad)``), the
batch goes forward once and back once per ``k``, asking autograd only for the gradients with
respect to each layer's *output* :math:`g_n`; with the layer's input :math:`a_n` the
example's weight gradient has a closed form (the idea of BackPACK's ``BatchL2Grad``,
Dangel, Kunstner & Hennig, ICLR 2020):

* ``Linear``: :math:`\\nabla W_n = g_n a_n^\\top`, so :math:`\\|\\nabla W_n\\|^2 =
  \\|g_n\\|^2 \\|a_n\\|^2`; with extra (sequence) dimensions :math:`\\nabla W_n =
  \\sum_t g_{n,t} a_{n,t}^\\top`.
* ``Conv1d``/``2d``/``3d``: the same sum over output positions with :math:`a_{n,t}` the
  input patch; on small maps one batched matrix product per kernel offset, on large maps
  ``vmap`` over ATen's weight-only convolution backward (one grouped convolution for the
  batch); see :func:`_conv_weight_sq_norms`.
* ``BatchNorm`` in eval mode, ``LayerNorm``, ``GroupNorm``: :math:`\\nabla\\gamma_n =
  \\sum g_n \\odot \\hat a_n` and :math:`\\nabla\\beta_n = \\sum g_n` over the positions
  sharing a parameter, with :math:`\\hat a_n` the normalised input.

Backward passes compute no weight gradients at all (autograd skips them when only the
outputs' gradients are asked for), so the cost is one batched forward and ``K`` batched
backward passes plus the per-example weight-gradient products. The layer-wise sum is exact
when each example's outputs depend on that example alone and every parameter is used once
per forward; :class:`LayerwiseSqNorms` refuses models with other parameterised layers or
shared weights (see :func:`unsupported_reason`), and on its first batch compares the first
example's norms with plain autograd on that example alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustkit.evaluate.curvature import FlatModel, eval_mode

__all__ = ["LayerwiseSqNorms", "UnsupportedModel", "unsupported_reason"]

#: Elements of the per-example weight gradients (or input patches) held at once per layer;
#: larger layers are processed in chunks of examples.
CHUNK_ELEMENTS = 1 << 24
#: Convolutions with at most this many output positions use one matrix product per kernel
#: offset rather than ``vmap`` over the convolution backward (see _conv_weight_sq_norms).
OFFSETS_MAX_POSITIONS = 128

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SUPPORTED = (nn.Linear, *_CONVS, *_NORMS)


class UnsupportedModel(ValueError):
    """The model has a layer or structure the closed forms do not cover.

    Attributes:
        vectors: When raised by the first-batch check, the ``(B, K, C)`` vectors that batch
            was given (else None).
    """

    vectors: Tensor | None = None


def _layer_problem(module: nn.Module) -> str | None:
    """Why ``module`` (which owns parameters) cannot be handled, or None."""
    name = type(module).__name__
    if not isinstance(module, _SUPPORTED) or isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return f"no closed form for {name} layers"
    if isinstance(module, _CONVS):
        if module.padding_mode != "zeros":
            return f"{name} with padding_mode={module.padding_mode!r}"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"{name} with padding={module.padding!r}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
        return f"{name} without running statistics mixes the examples of a batch"
    return None


def unsupported_reason(model: nn.Module) -> str | None:
    """Why :class:`LayerwiseSqNorms` cannot handle ``model``, or None when it can.

    Every trainable parameter (``requires_grad``) must belong directly to a supported layer,
    and none may be shared between layers (a shared weight's per-example gradient is a sum
    over its uses, whose norm is not the sum of the norms).
    """
    owners: dict[int, str] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for pname, param in module.named_parameters(recurse=False):
            full = f"{prefix}.{pname}" if prefix else pname
            if not param.requires_grad:
                continue
            if id(param) in owners and owners[id(param)] != full:
                return f"parameter {full} is shared with {owners[id(param)]}"
            owners[id(param)] = full
            problem = _layer_problem(module)
            if problem is not None:
                return f"{problem} ({prefix or 'the model itself'})"
    return None


class LayerwiseSqNorms:
    """:math:`\\|J_n^\\top u_{n,k}\\|^2` for a batch, by closed forms per layer.

    Args:
        flat: The model as a function of its trainable parameters (its dtype is used).

    Raises:
        UnsupportedModel: If :func:`unsupported_reason` names a problem.
    """

    def __init__(self, flat: FlatModel) -> None:
        self.flat = flat
        trainable = set(flat.names)
        reason = unsupported_reason(flat.model)
        if reason is not None:
            raise UnsupportedModel(reason)
        self.layers: list[tuple[nn.Module, bool, bool]] = []
        for prefix, module in flat.model.named_modules():
            if not isinstance(module, _SUPPORTED):
                continue
            dot = f"{prefix}." if prefix else ""
            weight = f"{dot}weight" in trainable
            bias = f"{dot}bias" in trainable
            if weight or bias:
                self.layers.append((module, weight, bias))
        self.checked = False

    def __call__(self, x: Tensor, make_vectors: Callable[[Tensor], Tensor]) -> Tensor:
        """``(B, K)`` squared norms for the batch ``x``.

        Args:
            x: Inputs ``(B, ...)``.
            make_vectors: Maps the detached ``(B, C)`` log-probabilities to the ``(B, K, C)``
                vectors :math:`u_{n,k}` (so the one forward pass serves both).
        """
        out, vectors = self._compute(x, make_vectors)
        if not self.checked:
            try:
                self._check_first_example(x[:1], vectors[:1], out[0])
            except UnsupportedModel as exc:
                # A fallback reuses these rather than calling make_vectors again (Monte
                # Carlo vectors come from a generator: a second call would draw new ones).
                exc.vectors = vectors
                raise
            self.checked = True
        return out

    def _check_first_example(self, x: Tensor, vectors: Tensor, fast: Tensor) -> None:
        """Plain autograd on the first example alone must give the closed-form norms.

        One batch-of-one pass with full parameter gradients: it catches what the structural
        checks cannot see, such as a layer that mixes the examples of a batch or a weight
        used outside its module's ``forward``.
        """
        flat = self.flat
        theta = flat.theta.detach().clone().requires_grad_(True)
        with eval_mode(flat.model), torch.enable_grad():
            logits = flat(flat.unflatten(theta), flat.to_input(x))
            exact = torch.zeros(vectors.shape[1], dtype=flat.dtype, device=flat.device)
            for j in range(vectors.shape[1] if logits.requires_grad else 0):
                (g,) = torch.autograd.grad(
                    logits,
                    theta,
                    vectors[:, j].to(logits.dtype),
                    retain_graph=True,
                    allow_unused=True,
                )
                if g is not None:
                    exact[j] = g.pow(2).sum()
        # Every vector's norm is compared at the scale of the largest: a class with a tiny
        # probability has a tiny norm whose relative rounding error means nothing.
        low = flat.dtype in (torch.float16, torch.bfloat16, torch.float32)
        scale = max(float(exact.abs().max()), float(fast.abs().max()))
        worst = int((exact - fast).abs().argmax())
        if float((exact - fast).abs().max()) > (1e-3 if low else 1e-8) * scale:
            raise UnsupportedModel(
                f"the closed forms give {float(fast[worst]):.6g} for the first example where "
                f"autograd gives {float(exact[worst]):.6g} (a layer mixes the examples of a "
                "batch, or a weight is used outside its layer)"
            )

    def _compute(
        self, x: Tensor, make_vectors: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        flat = self.flat
        x = flat.to_input(x)
        records: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m, _, _ in self.layers}

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> Tensor:
            records[module].append((inputs[0].detach(), output))
            # Hand the rest of the network a copy: an in-place op downstream (ReLU(inplace))
            # must not rewrite the tensor whose gradient is asked for below.
            return output.clone()

        handles = [m.register_forward_hook(hook) for m, _, _ in self.layers]
        try:
            with eval_mode(flat.model), torch.enable_grad():
                params = {
                    n: t.detach().requires_grad_(True)
                    for n, t in flat.unflatten(flat.theta).items()
                }
                logits = flat(params, x)
        finally:
            for handle in handles:
                handle.remove()
        if logits.dim() != 2:
            raise ValueError(f"expected (batch, classes) logits, got shape {tuple(logits.shape)}")
        for module, calls in records.items():
            if len(calls) > 1:
                raise UnsupportedModel(f"{type(module).__name__} is called more than once")
        used = [
            (m, w, b, calls[0])
            for (m, w, b), calls in zip(self.layers, records.values(), strict=True)
            if calls
        ]
        vectors = make_vectors(torch.log_softmax(logits.detach(), dim=-1))
        batch, k = vectors.shape[0], vectors.shape[1]
        result = torch.zeros(batch, k, dtype=flat.dtype, device=flat.device)
        outputs = [rec[1] for _, _, _, rec in used]
        if not outputs or not logits.requires_grad:  # no trainable layer took part: all zero
            return result, vectors
        for j in range(k):
            grads = torch.autograd.grad(
                logits,
                outputs,
                grad_outputs=vectors[:, j].to(logits.dtype),
                retain_graph=j < k - 1,
                allow_unused=True,
            )
            for (module, weight, bias, (a, _)), g in zip(used, grads, strict=True):
                if g is not None:
                    result[:, j] += _layer_sq_norms(module, a, g.detach(), weight, bias)
        return result, vectors


def _layer_sq_norms(module: nn.Module, a: Tensor, g: Tensor, weight: bool, bias: bool) -> Tensor:
    """``(B,)`` squared norms of one layer's per-example weight and bias gradients."""
    batch = g.shape[0]
    total = torch.zeros(batch, dtype=g.dtype, device=g.device)
    if isinstance(module, _NORMS):
        a_hat = _normalised_input(module, a)
        reduce = _norm_reduce(module, g)
        if weight:
            total += reduce(g * a_hat).pow(2).sum(1)
        if bias:
            total += reduce(g).pow(2).sum(1)
        return total
    if bias:
        # Linear: sum over all but the last dim; conv: over the positions of each channel.
        summed = (
            g.reshape(batch, -1, g.shape[-1]).sum(1)
            if isinstance(module, nn.Linear)
            else (g.reshape(batch, g.shape[1], -1).sum(2))
        )
        total += summed.pow(2).sum(1)
    if weight:
        if isinstance(module, nn.Linear):
            total += _linear_weight_sq_norms(a, g)
        else:
            total += _conv_weight_sq_norms(module, a, g)
    return total


def _linear_weight_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    batch = g.shape[0]
    if a.dim() == 2:
        return g.pow(2).sum(1) * a.pow(2).sum(1)
    a = a.reshape(batch, -1, a.shape[-1])  # (B, T, in)
    g = g.reshape(batch, -1, g.shape[-1])  # (B, T, out)
    return _sum_of_outer_sq_norms(g.transpose(1, 2), a.transpose(1, 2))


def _sum_of_outer_sq_norms(g: Tensor, a: Tensor) -> Tensor:
    """``||sum_t g[:, :, t] a[:, :, t]^T||_F^2`` per example, for ``g (B, O, T)``, ``a (B, I, T)``.

    Either forms the ``(O, I)`` gradients (cost ``T O I``) or works through the ``(T, T)``
    Gram matrices (cost ``T^2 (O + I)``), whichever is cheaper, in chunks of examples.
    """
    batch, o, t = g.shape
    i = a.shape[1]
    gram = t * t * (o + i) < t * o * i
    per_example = t * t if gram else o * i
    chunk = max(1, CHUNK_ELEMENTS // max(per_example + i * t, 1))
    out = []
    for start in range(0, batch, chunk):
        gc, ac = g[start : start + chunk], a[start : start + chunk]
        if gram:
            out.append((gc.transpose(1, 2) @ gc * (ac.transpose(1, 2) @ ac)).sum((1, 2)))
        else:
            out.append((gc @ ac.transpose(1, 2)).pow(2).sum((1, 2)))
    return torch.cat(out)


def _conv_weight_sq_norms(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """Per-example squared norms of a convolution's weight gradient.

    Small output maps (at most :data:`OFFSETS_MAX_POSITIONS` positions, 1-D and 2-D) go
    through :func:`_conv_offsets_sq_norms`, larger ones through
    :func:`_conv_vmap_sq_norms`: on CPU the first is about 3x faster on 8x8 maps and the
    second about 2x faster on 16x16 and 32x32 maps (ResNet-20, 250 examples). Both are exact.
    """
    positions = math.prod(g.shape[2:])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and positions <= OFFSETS_MAX_POSITIONS:
        return _conv_offsets_sq_norms(module, a, g)
    return _conv_vmap_sq_norms(module, a, g)


def _conv_offsets_sq_norms(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """One batched matrix product per kernel offset.

    For kernel offset ``(i, j)`` the example's gradient ``W[:, :, i, j]`` is ``G_n S_n^T``
    with ``G_n`` its output gradient ``(C_out, P)`` and ``S_n`` the input seen through that
    offset ``(C_in, P)`` (a strided slice of the padded input), per group; the squared norm
    of the whole gradient is the sum over offsets.
    """
    if isinstance(module, nn.Conv1d):
        a, g = a.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, dilation = (
            (1, *module.kernel_size),
            (1, *module.stride),
            (1, *module.dilation),
        )
        padding = (0, 0 if isinstance(module.padding, str) else module.padding[0])
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        padding = (0, 0) if isinstance(module.padding, str) else module.padding
    batch, c_in = a.shape[:2]
    c_out, h_out, w_out = g.shape[1:]
    groups = module.groups
    positions = h_out * w_out
    per_example = c_out * (c_in // groups) + c_in * positions
    chunk = max(1, CHUNK_ELEMENTS // per_example)
    out = []
    for start in range(0, batch, chunk):
        padded = F.pad(a[start : start + chunk], (padding[1], padding[1], padding[0], padding[0]))
        n = padded.shape[0]
        grads = g[start : start + chunk].reshape(n, groups, c_out // groups, positions)
        total = torch.zeros(n, dtype=g.dtype, device=g.device)
        for i in range(kernel[0]):
            top = i * dilation[0]
            for j in range(kernel[1]):
                left = j * dilation[1]
                seen = padded[
                    :,
                    :,
                    top : top + stride[0] * (h_out - 1) + 1 : stride[0],
                    left : left + stride[1] * (w_out - 1) + 1 : stride[1],
                ].reshape(n, groups, c_in // groups, positions)
                total += (grads @ seen.transpose(-1, -2)).pow(2).sum((1, 2, 3))
        out.append(total)
    return torch.cat(out)


def _conv_vmap_sq_norms(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """``vmap`` over ATen's weight-only convolution backward (any conv dimension).

    Its batching rule computes all examples' weight gradients in one grouped convolution;
    examples are processed in chunks of at most :data:`CHUNK_ELEMENTS` gradient entries.
    """
    weight = torch.empty(module.weight.shape, dtype=a.dtype, device=a.device)
    dims = weight.dim() - 2
    padding = [0] * dims if isinstance(module.padding, str) else list(module.padding)
    args = (
        None,  # bias sizes: the bias is handled in closed form
        list(module.stride),
        padding,
        list(module.dilation),
        False,  # transposed
        [0] * dims,  # output padding
        module.groups,
        [False, True, False],  # weight gradient only
    )

    def one(a_n: Tensor, g_n: Tensor) -> Tensor:
        grad = torch.ops.aten.convolution_backward(g_n[None], a_n[None], weight, *args)[1]
        return grad.pow(2).sum()

    per_example = weight.numel()
    chunk = max(1, CHUNK_ELEMENTS // per_example)
    batched = torch.vmap(one)
    return torch.cat(
        [batched(a[i : i + chunk], g[i : i + chunk]) for i in range(0, g.shape[0], chunk)]
    )


def _normalised_input(module: nn.Module, a: Tensor) -> Tensor:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        mean = module.running_mean.to(a.dtype).reshape(shape)
        var = module.running_var.to(a.dtype).reshape(shape)
        return (a - mean) / torch.sqrt(var + module.eps)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(a, module.normalized_shape, None, None, module.eps)
    return F.group_norm(a, module.num_groups, None, None, module.eps)


def _norm_reduce(module: nn.Module, g: Tensor) -> Callable[[Tensor], Tensor]:
    """Sums a ``g``-shaped tensor over the positions sharing one norm parameter -> ``(B, P)``."""
    batch = g.shape[0]
    if isinstance(module, nn.LayerNorm):
        dims = len(module.normalized_shape)
        return lambda t: t.reshape(batch, -1, *t.shape[t.dim() - dims :]).sum(1).reshape(batch, -1)
    return lambda t: t.reshape(batch, t.shape[1], -1).sum(2)
