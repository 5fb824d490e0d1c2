"""Curvature plumbing: the training loss as a function of a flat parameter vector.

Everything the sharpness metrics need reduces to two primitives over a fixed data subset:

* the Hessian-vector product (HVP) of the subset's mean loss,

  .. math:: H v = \\nabla^2_\\theta L(\\theta)\\, v, \\qquad
            L(\\theta) = \\frac{1}{N} \\sum_{n=1}^{N} \\ell(f_\\theta(x_n), y_n),

  computed batch by batch by double back-propagation (Pearlmutter, "Fast exact
  multiplication by the Hessian", Neural Computation 1994): each batch's mean loss is weighted
  by ``|B| / N`` and its graph is freed before the next batch, so memory does not grow with
  the subset;

* per-example gradients of the log-likelihood, :math:`\\nabla_\\theta \\log p(y \\mid x_n)`,
  as squared norms: in closed form per layer (:mod:`robustkit.evaluate.per_example`) or
  vectorised over the batch with ``torch.func.vmap(torch.func.grad(...))``.

Both evaluate the network through ``torch.func.functional_call`` on *copies* of its
parameters (optionally in another dtype), with every module in eval mode, so BatchNorm uses
its running statistics, the model's own weights, buffers, ``requires_grad`` flags and
``.grad`` fields are never touched, and its train/eval flags are restored afterwards.

Brute-force references (:func:`dense_hessian`, :func:`per_example_log_prob_sq_norms_loop`)
sit beside the fast paths; the tests use them as oracles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Union

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets) -> scalar``: the **mean** loss over the batch
(e.g. ``torch.nn.functional.cross_entropy`` with its default ``reduction="mean"``)."""

DataLike = Union["Batches", tuple[Tensor, Tensor], Iterable[tuple[Tensor, Tensor]]]
"""Either an ``(x, y)`` pair of tensors (split into ``batch_size`` batches) or an iterable of
``(x, y)`` batches (a list, a ``DataLoader``, a generator); see :func:`as_batches`."""


class Batches:
    """A fixed, re-iterable list of ``(x, y)`` batches and the number of examples they hold.

    The metrics iterate over the subset many times (one pass per HVP), so the batches are
    materialised once: a shuffling or augmenting ``DataLoader`` would otherwise change the
    function being measured between passes.

    Args:
        batches: ``(x, y)`` pairs of tensors with equal, non-zero leading dimensions.

    Raises:
        ValueError: If there is no batch or a batch is malformed.
    """

    def __init__(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        items: list[tuple[Tensor, Tensor]] = []
        for i, batch in enumerate(batches):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(f"batch {i} is not an (x, y) pair")
            x, y = batch
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise ValueError(f"batch {i}: x and y must be tensors")
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(
                    f"batch {i}: x and y need the same non-zero batch size, "
                    f"got {tuple(x.shape)} and {tuple(y.shape)}"
                )
            items.append((x, y))
        if not items:
            raise ValueError("no data: the iterable yielded no batches")
        self._items = items
        self.num_examples = sum(int(x.shape[0]) for x, _ in items)

    @classmethod
    def from_tensors(cls, x: Tensor, y: Tensor, batch_size: int | None = None) -> Batches:
        """Split an ``(x, y)`` pair into consecutive batches of ``batch_size`` (all if None)."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        if batch_size is None:
            batch_size = max(int(x.shape[0]), 1)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return cls(zip(x.split(batch_size), y.split(batch_size), strict=True))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Batches(num_batches={len(self)}, num_examples={self.num_examples})"


def as_batches(data: DataLike, batch_size: int | None = None) -> Batches:
    """Normalise the ``data`` argument of every metric into :class:`Batches`.

    Args:
        data: An ``(x, y)`` tuple of two tensors, or an iterable of ``(x, y)`` batches, or
            :class:`Batches`. A *tuple* of exactly two tensors is always read as one
            ``(x, y)`` pair; wrap a single batch in a list to pass it as a batch list.
        batch_size: Batch size for an ``(x, y)`` pair (default: the whole pair as one batch).
            Must be None for an iterable of batches, which keeps its own batching.

    Returns:
        The batches, read once and kept (on whatever device they live on).
    """
    if isinstance(data, Batches):
        if batch_size is not None:
            raise ValueError("batch_size applies only to an (x, y) tensor pair")
        return data
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return Batches.from_tensors(data[0], data[1], batch_size)
    if batch_size is not None:
        raise ValueError("batch_size applies only to an (x, y) tensor pair, not to batches")
    return Batches(data)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode; restore each module's flag on exit.

    Restoring per module (not ``model.train(was_training)``) keeps mixed states, such as a
    network trained with frozen BatchNorm, exactly as they were.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, training in modes:
            module.training = training


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The parameters the curvature is taken over: those with ``requires_grad=True``."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class FlatModel:
    """The model as a pure function of a flat vector of its trainable parameters.

    The vector :math:`\\theta \\in \\mathbb{R}^D` concatenates the flattened trainable
    parameters in ``named_parameters()`` order. Frozen parameters and buffers (BatchNorm
    running statistics) are held fixed. All are detached copies on the model's device, cast
    to ``dtype`` (floating tensors only), so the model itself is never written to.

    Args:
        model: Any ``nn.Module`` with at least one trainable parameter.
        dtype: Computation dtype (default: the dtype of the first trainable parameter).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None) -> None:
        params = trainable_parameters(model)
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        first = next(iter(params.values()))
        self.model = model
        self.device = first.device
        self.dtype = dtype or first.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be floating point, got {self.dtype}")
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numels = [p.numel() for p in params.values()]
        self.theta = torch.cat(
            [p.detach().reshape(-1).to(self.device, self.dtype) for p in params.values()]
        )
        trainable = set(self.names)
        fixed: dict[str, Tensor] = {}
        for name, p in model.named_parameters():
            if name not in trainable:
                fixed[name] = p.detach().to(self.device, self.dtype)
        for name, b in model.named_buffers():
            b = b.detach().to(self.device)
            fixed[name] = b.to(self.dtype) if b.is_floating_point() else b
        self.fixed = fixed

    @property
    def dim(self) -> int:
        """Number of trainable scalars :math:`D`."""
        return int(self.theta.numel())

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of ``theta`` shaped like the parameters (differentiable w.r.t. ``theta``)."""
        chunks = theta.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def flatten(self, tensors: Sequence[Tensor] | dict[str, Tensor]) -> Tensor:
        """Concatenate per-parameter tensors (same order as :attr:`names`) into one vector."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def __call__(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs of the model at ``params`` (a dict from :meth:`unflatten`) on input ``x``."""
        return functional_call(self.model, {**self.fixed, **params}, (x,))

    def to_input(self, x: Tensor) -> Tensor:
        """Move an input batch to the model's device; cast floating inputs to the dtype."""
        x = x.to(self.device)
        return x.to(self.dtype) if x.is_floating_point() else x


class LossHessian:
    """Hessian-vector products of the mean loss over a fixed data subset.

    .. math::
        L(\\theta) = \\sum_{B} \\frac{|B|}{N}\\, \\bar\\ell_B(\\theta), \\qquad
        H v = \\sum_{B} \\frac{|B|}{N} \\nabla_\\theta \\big(\\nabla_\\theta
              \\bar\\ell_B(\\theta)^\\top v\\big),

    where :math:`\\bar\\ell_B` is ``loss_fn`` (a batch *mean*) on batch :math:`B` and
    :math:`N` the number of examples. One HVP is one pass over all batches (forward, backward
    with ``create_graph``, and one extra backward per vector); each batch's graph is freed
    before the next, so memory is that of a single batch.

    The model is evaluated in eval mode (BatchNorm uses running statistics) at a detached
    copy of its parameters, so the caller's model is not modified.

    Args:
        model: The network (any ``nn.Module``; BatchNorm is fine).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss of a batch.
        data: See :func:`as_batches`.
        batch_size: Batch size when ``data`` is an ``(x, y)`` pair.
        dtype: Computation dtype (default: the parameters' dtype).

    Attributes:
        num_hvps: Hessian-vector products computed so far (one per vector, each a full pass).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: DataLike,
        *,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.flat = FlatModel(model, dtype)
        self.loss_fn = loss_fn
        self.batches = as_batches(data, batch_size)
        self.num_hvps = 0

    @property
    def dim(self) -> int:
        """Number of trainable scalars :math:`D` (the Hessian is :math:`D \\times D`)."""
        return self.flat.dim

    @property
    def num_examples(self) -> int:
        """Size :math:`N` of the data subset."""
        return self.batches.num_examples

    @property
    def dtype(self) -> torch.dtype:
        return self.flat.dtype

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def _batch_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        out = self.flat(self.flat.unflatten(theta), self.flat.to_input(x))
        loss = self.loss_fn(out, y.to(self.device))
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return the mean loss over the batch (a scalar tensor)")
        return loss * (x.shape[0] / self.num_examples)

    def loss_and_gradient(self, theta: Tensor | None = None) -> tuple[float, Tensor]:
        """Mean loss :math:`L` and its gradient at ``theta`` (default: the model's weights)."""
        theta = (self.flat.theta if theta is None else theta).detach().to(self.device, self.dtype)
        total = 0.0
        gradient = torch.zeros_like(theta)
        with eval_mode(self.flat.model):
            for x, y in self.batches:
                leaf = theta.clone().requires_grad_(True)
                loss = self._batch_loss(leaf, x, y)
                (g,) = torch.autograd.grad(loss, leaf)
                gradient += g
                total += float(loss.detach())
        return total, gradient

    def matvec(self, v: Tensor) -> Tensor:
        """:math:`H v` for one vector ``v`` of shape ``(D,)``."""
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def matmat(self, vectors: Tensor) -> Tensor:
        """:math:`H V` for a block ``V`` of shape ``(D, p)``; costs ``p`` HVPs.

        The forward pass and first backward of each batch are shared by the ``p`` vectors.
        """
        if vectors.dim() != 2 or vectors.shape[0] != self.dim:
            raise ValueError(f"expected a ({self.dim}, p) block, got {tuple(vectors.shape)}")
        vectors = vectors.to(self.device, self.dtype)
        p = vectors.shape[1]
        out = torch.zeros_like(vectors)
        with eval_mode(self.flat.model):
            for x, y in self.batches:
                theta = self.flat.theta.detach().clone().requires_grad_(True)
                loss = self._batch_loss(theta, x, y)
                (g,) = torch.autograd.grad(loss, theta, create_graph=True)
                if not g.requires_grad:  # loss linear in theta: its Hessian is zero
                    continue
                for j in range(p):
                    (hv,) = torch.autograd.grad(
                        g, theta, grad_outputs=vectors[:, j], retain_graph=j < p - 1
                    )
                    out[:, j] += hv
        self.num_hvps += p
        return out


def _log_prob_of(flat: FlatModel) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    r"""``u . logits(x)`` of a single example as a function of the parameters, for ``vmap``.

    Its gradient is :math:`J^\top u`; with :math:`u = e_c - p` (``p`` held fixed) that is
    :math:`\nabla_\theta \log p(c \mid x)`.
    """

    def dot(params: dict[str, Tensor], x: Tensor, u: Tensor) -> Tensor:
        return (flat(params, x.unsqueeze(0))[0] * u).sum()

    return dot


#: Per-example gradient methods of :class:`PerExampleGradients`.
PER_EXAMPLE_METHODS = ("auto", "layerwise", "vmap")


class PerExampleGradients:
    r"""Per-example gradients of the categorical log-likelihood of a classifier.

    The model's outputs are read as the logits of :math:`p(y \mid x) =
    \mathrm{softmax}(f_\theta(x))_y`, so :math:`\nabla_\theta \log p(c \mid x_n) =
    J_n^\top (e_c - p_n)` with :math:`J_n` the Jacobian of the logits. Everything reduces to
    squared norms :math:`\|J_n^\top u_{n,k}\|^2` for vectors :math:`u_{n,k}` in logit
    space (:meth:`sq_norms_of`), computed by one of two methods:

    * ``"layerwise"``: one batched forward pass and one backward pass per ``k`` that asks only
      for each layer's output gradient, then closed forms per layer
      (:mod:`robustkit.evaluate.per_example`); memory does not grow with the number of
      parameters times the batch. Needs every trainable parameter in a Linear, Conv or
      normalisation layer, used once per forward.
    * ``"vmap"``: ``vmap(grad(...))`` over ``functional_call`` (any model; memory
      ``batch x D``).
    * ``"auto"`` (default): ``layerwise`` when the model qualifies, else ``vmap``;
      :attr:`method` says which ran and :attr:`fallback_reason` why ``vmap`` was chosen.

    The model is evaluated in eval mode at a detached copy of its parameters.

    Args:
        model: The classifier.
        dtype: Computation dtype (default: the parameters' dtype).
        method: ``"auto"``, ``"layerwise"`` or ``"vmap"``.

    Raises:
        ValueError: An unknown method, or ``"layerwise"`` for a model it cannot handle.
    """

    def __init__(
        self, model: nn.Module, dtype: torch.dtype | None = None, method: str = "auto"
    ) -> None:
        from robustkit.evaluate.per_example import LayerwiseSqNorms, UnsupportedModel

        if method not in PER_EXAMPLE_METHODS:
            known = ", ".join(PER_EXAMPLE_METHODS)
            raise ValueError(f"unknown per-example method {method!r} (known: {known})")
        self.flat = FlatModel(model, dtype)
        self._grad = vmap(grad(_log_prob_of(self.flat)), in_dims=(None, 0, 0))
        self.num_gradients = 0
        self.requested = method
        self.fallback_reason: str | None = None
        self._layerwise = None
        if method != "vmap":
            try:
                self._layerwise = LayerwiseSqNorms(self.flat)
            except UnsupportedModel as exc:
                if method == "layerwise":
                    raise ValueError(f"per-example method 'layerwise': {exc}") from None
                self.fallback_reason = str(exc)

    @property
    def dim(self) -> int:
        return self.flat.dim

    @property
    def method(self) -> str:
        r"""``"layerwise"`` or ``"vmap"``: what computes (and will compute) the norms."""
        return "layerwise" if self._layerwise is not None else "vmap"

    def log_probs(self, x: Tensor) -> Tensor:
        r"""``(B, C)`` log-probabilities :math:`\log p(y \mid x_n)` (no gradient)."""
        with torch.no_grad(), eval_mode(self.flat.model):
            params = self.flat.unflatten(self.flat.theta)
            return torch.log_softmax(self.flat(params, self.flat.to_input(x)), dim=-1)

    def sq_norms_of(self, x: Tensor, make_vectors: Callable[[Tensor], Tensor]) -> Tensor:
        r"""``(B, K)`` squared norms :math:`\|J_n^\top u_{n,k}\|^2` for the batch ``x``.

        Args:
            x: Inputs ``(B, ...)``.
            make_vectors: Maps the ``(B, C)`` log-probabilities (detached) to the
                ``(B, K, C)`` vectors :math:`u_{n,k}`; called once per batch.
        """
        from robustkit.evaluate.per_example import UnsupportedModel

        vectors = None
        if self._layerwise is not None:
            try:
                out = self._layerwise(x, make_vectors)
            except UnsupportedModel as exc:
                if self.requested == "layerwise":
                    raise ValueError(f"per-example method 'layerwise': {exc}") from None
                self._layerwise, self.fallback_reason = None, str(exc)
                vectors = exc.vectors  # this batch's vectors, if they were made already
            else:
                self.num_gradients += int(out.numel())
                return out
        if vectors is None:
            vectors = make_vectors(self.log_probs(x))
        x = self.flat.to_input(x)
        params = self.flat.unflatten(self.flat.theta.detach())
        columns = []
        with eval_mode(self.flat.model):
            for k in range(vectors.shape[1]):
                grads = self._grad(params, x, vectors[:, k].to(self.flat.device, self.flat.dtype))
                columns.append(sum(g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads.values()))
        self.num_gradients += int(vectors.shape[0] * vectors.shape[1])
        return torch.stack(columns, dim=1)

    def sq_norms(self, x: Tensor, classes: Tensor) -> Tensor:
        r"""``(B,)`` squared norms :math:`\|\nabla_\theta \log p(c_n \mid x_n)\|^2`."""
        classes = classes.to(self.flat.device)

        def vectors(log_p: Tensor) -> Tensor:
            one_hot = nn.functional.one_hot(classes, log_p.shape[-1]).to(log_p.dtype)
            return (one_hot - log_p.exp()).unsqueeze(1)

        return self.sq_norms_of(x, vectors)[:, 0]


# --------------------------------------------------------------------------------------------
# Brute-force references (test oracles and benchmark baselines).


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: DataLike,
    *,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The dense ``(D, D)`` Hessian of the subset's mean loss, by ``torch.func.hessian``.

    A reference for small models (a few thousand parameters at most): the loss is written as
    a function of the flat parameter vector through ``functional_call`` and differentiated
    twice by automatic differentiation, with no HVP code in between.
    """
    op = LossHessian(model, loss_fn, data, batch_size=batch_size, dtype=dtype)

    def loss(theta: Tensor) -> Tensor:
        return sum(op._batch_loss(theta, x, y) for x, y in op.batches)

    with eval_mode(model):
        return torch.func.hessian(loss)(op.flat.theta.detach().clone())


def per_example_log_prob_sq_norms_loop(
    model: nn.Module, x: Tensor, classes: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """:math:`\\|\\nabla_\\theta \\log p(c_n \\mid x_n)\\|^2` by a Python loop over examples.

    The plain-autograd reference for :meth:`PerExampleGradients.sq_norms`: one forward and
    one backward per example.
    """
    flat = FlatModel(model, dtype)
    out = torch.empty(x.shape[0], dtype=flat.dtype, device=flat.device)
    with eval_mode(model):
        for n in range(x.shape[0]):
            theta = flat.theta.detach().clone().requires_grad_(True)
            logits = flat(flat.unflatten(theta), flat.to_input(x[n : n + 1]))
            log_p = torch.log_softmax(logits, dim=-1)[0, int(classes[n])]
            (g,) = torch.autograd.grad(log_p, theta)
            out[n] = g.pow(2).sum()
    return out
