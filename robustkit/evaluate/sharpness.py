"""Sharpness metrics: top Hessian eigenvalues, Hessian trace and Fisher trace.

All metrics are taken of the training loss (or the model's predictive distribution) on a
stated data subset, with the model in eval mode (BatchNorm on its running statistics), and
leave the caller's model exactly as it was. Randomness comes only through an explicit
``torch.Generator``. Each function returns a small dataclass with ``to_record()``.

Definitions (see ``docs/architecture.md`` §4):

* Hessian eigenvalues: of :math:`L(\\theta) = \\frac1N \\sum_n \\ell(f_\\theta(x_n), y_n)`;
  algebraically largest unless asked otherwise.
* Hessian trace: :math:`\\operatorname{tr} \\nabla^2 L(\\theta)`, estimated stochastically.
* Fisher trace, true Fisher: :math:`\\operatorname{tr} F = \\frac1N \\sum_n
  \\sum_y p(y \\mid x_n) \\|\\nabla_\\theta \\log p(y \\mid x_n)\\|^2`, exactly (sum over
  classes) or by Monte Carlo with sampled labels; empirical Fisher: the same with the
  observed labels in place of the expectation.

The matrix-free solvers (:func:`lanczos`, :func:`power_iteration`, :func:`hutchinson`,
:func:`hutch_plus_plus`) take a plain ``matmat`` callable and so also work on explicit
matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from robustkit.evaluate.curvature import (
    DataLike,
    LossFn,
    LossHessian,
    PerExampleGradients,
    as_batches,
    eval_mode,
)

MatMat = Callable[[Tensor], Tensor]
"""``matmat(V) -> A V`` for a symmetric ``A`` and a ``(D, p)`` block ``V``."""

__all__ = [
    "EigMethod",
    "EigenResult",
    "FisherKind",
    "FisherTraceResult",
    "TraceMethod",
    "TraceResult",
    "Which",
    "fisher_trace",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "hutch_plus_plus",
    "hutchinson",
    "lanczos",
    "power_iteration",
]


class Which(str, Enum):
    """Which end of the spectrum :func:`hessian_top_eigenvalues` returns."""

    LARGEST = "largest"  # algebraically largest (the default; not largest magnitude)
    MAGNITUDE = "magnitude"  # largest absolute value
    SMALLEST = "smallest"  # algebraically smallest (most negative)


class EigMethod(str, Enum):
    """Eigen-solver of :func:`hessian_top_eigenvalues`."""

    LANCZOS = "lanczos"
    POWER = "power"


class TraceMethod(str, Enum):
    """Stochastic trace estimator of :func:`hessian_trace`."""

    HUTCHINSON = "hutchinson"
    HUTCH_PLUS_PLUS = "hutch++"


class FisherKind(str, Enum):
    """Which Fisher :func:`fisher_trace` measures."""

    TRUE = "true"  # true Fisher, exact sum over classes
    MC = "mc"  # true Fisher, Monte Carlo over sampled labels
    EMPIRICAL = "empirical"  # empirical Fisher, observed labels


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class EigenResult:
    """Eigenvalues of the loss Hessian and how they were obtained.

    Attributes:
        eigenvalues: The ``k`` eigenvalues, ordered from the requested end of the spectrum
            (descending for ``largest``, descending ``|λ|`` for ``magnitude``, ascending for
            ``smallest``); each is the Rayleigh quotient :math:`v^\\top H v` of its vector.
        residuals: :math:`\\|H v_i - \\lambda_i v_i\\|` for unit :math:`v_i`, computed with
            explicit HVPs; :math:`|\\lambda_i - \\lambda_{\\text{true}}| \\le` residual.
        which: Spectrum end (:class:`Which` value).
        method: :class:`EigMethod` value.
        tol: Convergence tolerance used.
        max_iters: Iteration limit used.
        num_hvps: Hessian-vector products used in all (each one pass over the subset).
        num_iterations: Lanczos steps (Krylov dimension) or power iterations summed over
            eigenvalues.
        converged: Whether every pair met the tolerance within ``max_iters``.
        num_examples: Size of the data subset.
        num_parameters: Dimension of the Hessian.
        eigenvectors: ``(D, k)`` unit eigenvectors (not in the record).
    """

    eigenvalues: list[float]
    residuals: list[float]
    which: str
    method: str
    tol: float
    max_iters: int
    num_hvps: int
    num_iterations: int
    converged: bool
    num_examples: int = 0
    num_parameters: int = 0
    eigenvectors: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def value(self) -> float:
        """The first eigenvalue (e.g. :math:`\\lambda_{\\max}` for ``largest``)."""
        return self.eigenvalues[0]

    @property
    def estimator(self) -> str:
        if self.method == EigMethod.LANCZOS.value:
            return "lanczos (full reorthogonalisation)"
        return "power iteration (PyHessian stopping rule, deflation)"

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict: ``metric``, ``value`` (the first eigenvalue), all values, costs."""
        return {
            "metric": "hessian-eig",
            "value": self.value,
            "stderr": None,
            "residual": self.residuals[0],
            "eigenvalues": list(self.eigenvalues),
            "residuals": list(self.residuals),
            "estimator": self.estimator,
            "method": self.method,
            "which": self.which,
            "k": len(self.eigenvalues),
            "tol": self.tol,
            "max_iters": self.max_iters,
            "num_hvps": self.num_hvps,
            "num_iterations": self.num_iterations,
            "converged": self.converged,
            "num_examples": self.num_examples,
            "num_parameters": self.num_parameters,
        }


@dataclass(frozen=True)
class TraceResult:
    """A stochastic estimate of the Hessian trace.

    Attributes:
        value: The estimate of :math:`\\operatorname{tr} H`.
        stderr: Its standard error (sample standard deviation of the probe values over
            :math:`\\sqrt{m}`; for Hutch++ that of the deflated residual part).
        method: :class:`TraceMethod` value.
        num_probes: Rademacher probes averaged (for Hutch++: in the residual part).
        num_hvps: Hessian-vector products in all (Hutch++: ``2 * sketch_size + num_probes``).
        sketch_size: Hutch++'s low-rank sketch size (0 for Hutchinson).
        rtol: Target relative standard error.
        max_probes: HVP budget.
        converged: Whether ``stderr <= rtol * |value|`` was reached within the budget.
        num_examples: Size of the data subset.
        num_parameters: Dimension of the Hessian.
    """

    value: float
    stderr: float
    method: str
    num_probes: int
    num_hvps: int
    sketch_size: int
    rtol: float
    max_probes: int
    converged: bool
    num_examples: int = 0
    num_parameters: int = 0

    @property
    def estimator(self) -> str:
        if self.method == TraceMethod.HUTCHINSON.value:
            return "hutchinson (rademacher)"
        return f"hutch++ (rademacher, sketch {self.sketch_size})"

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict with ``metric="hessian-trace"``."""
        return {
            "metric": "hessian-trace",
            "value": self.value,
            "stderr": self.stderr,
            "estimator": self.estimator,
            "method": self.method,
            "num_probes": self.num_probes,
            "num_hvps": self.num_hvps,
            "sketch_size": self.sketch_size,
            "rtol": self.rtol,
            "max_probes": self.max_probes,
            "converged": self.converged,
            "num_examples": self.num_examples,
            "num_parameters": self.num_parameters,
        }


@dataclass(frozen=True)
class FisherTraceResult:
    """The trace of the (true or empirical) Fisher information on a data subset.

    Attributes:
        value: :math:`\\operatorname{tr} F`.
        stderr: Monte-Carlo standard error (``kind="mc"``), else None (exact on the subset).
        kind: :class:`FisherKind` value.
        num_samples: Sampled labels per example (``mc``), else 0.
        num_examples: Size of the data subset.
        num_classes: Number of classes (output logits).
        num_gradients: Per-example gradients computed.
        num_parameters: Number of trainable parameters.
        stderr_kind: What ``stderr`` measures (see :func:`fisher_trace`), or None.
        method: How the per-example gradient norms were computed (``layerwise``/``vmap``).
        fallback_reason: Why ``vmap`` ran where ``layerwise`` was asked for (``auto``).
    """

    value: float
    stderr: float | None
    kind: str
    num_samples: int
    num_examples: int
    num_classes: int
    num_gradients: int
    num_parameters: int = 0
    stderr_kind: str | None = None
    method: str = ""
    fallback_reason: str | None = None

    @property
    def metric(self) -> str:
        empirical = self.kind == FisherKind.EMPIRICAL.value
        return "fisher-trace-empirical" if empirical else "fisher-trace"

    @property
    def estimator(self) -> str:
        if self.kind == FisherKind.TRUE.value:
            return "true fisher, exact sum over classes"
        if self.kind == FisherKind.MC.value:
            return f"true fisher, monte carlo ({self.num_samples} sampled labels per example)"
        return "empirical fisher (observed labels)"

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict; ``metric`` is ``fisher-trace`` or ``fisher-trace-empirical``."""
        return {
            "metric": self.metric,
            "value": self.value,
            "stderr": self.stderr,
            "stderr_kind": self.stderr_kind,
            "estimator": self.estimator,
            "fisher": self.kind,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "num_gradients": self.num_gradients,
            "num_examples": self.num_examples,
            "num_parameters": self.num_parameters,
            "per_example_method": self.method,
            "per_example_fallback": self.fallback_reason,
        }


# --------------------------------------------------------------------------------------------
# Matrix-free solvers


def _validate_positive(name: str, value: Any, *, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not integer and (not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")


def _random_normal(dim: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    v = torch.randn(dim, generator=generator, device=device, dtype=torch.float64)
    return v.to(like.device, like.dtype)


def _rademacher(dim: int, count: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randint(0, 2, (dim, count), generator=generator, device=device)
    return (2 * z - 1).to(like.device, like.dtype)


def _select(theta: Tensor, k: int, which: Which) -> Tensor:
    """Indices of the ``k`` wanted Ritz values, ordered from the wanted end."""
    if which is Which.LARGEST:
        return torch.argsort(theta, descending=True)[:k]
    if which is Which.SMALLEST:
        return torch.argsort(theta)[:k]
    return torch.argsort(theta.abs(), descending=True)[:k]


def _rayleigh_and_residuals(matmat: MatMat, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Rayleigh quotients :math:`v^\\top A v` and residuals :math:`\\|Av - (v^\\top A v)v\\|`."""
    av = matmat(vectors)
    values = (vectors * av).sum(dim=0)
    residuals = torch.linalg.vector_norm(av - vectors * values, dim=0)
    return values, residuals


def lanczos(
    matmat: MatMat,
    dim: int,
    k: int = 1,
    *,
    which: Which | str = Which.LARGEST,
    tol: float = 1e-4,
    max_iters: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor, int, bool]:
    """Extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Builds an orthonormal basis :math:`Q_m` of the Krylov space
    :math:`\\mathcal K_m(A, q_1) = \\operatorname{span}\\{q_1, A q_1, \\dots, A^{m-1} q_1\\}`
    and the tridiagonal :math:`T_m = Q_m^\\top A Q_m` by the three-term recurrence
    :math:`\\beta_j q_{j+1} = A q_j - \\alpha_j q_j - \\beta_{j-1} q_{j-1}` (Lanczos, "An
    iteration method for the solution of the eigenvalue problem of linear differential and
    integral operators", J. Res. NBS 1950), re-orthogonalising every new vector against the
    whole basis twice (classical Gram-Schmidt, "twice is enough"), which prevents the ghost
    eigenvalues of the plain recurrence (Paige 1971; Golub & Van Loan, *Matrix
    Computations*, §10.3). After every step the Ritz pairs :math:`(\\theta_i, Q_m s_i)` of
    :math:`T_m = S \\Theta S^\\top` are checked: the residual of a Ritz pair is
    :math:`\\|A Q_m s_i - \\theta_i Q_m s_i\\| = \\beta_m |e_m^\\top s_i|`, and the
    iteration stops once the ``k`` wanted pairs satisfy
    :math:`\\beta_m |e_m^\\top s_i| \\le \\text{tol} \\cdot \\max(|\\theta_i|,
    \\epsilon^{2/3} \\|T_m\\|)` (ARPACK's criterion, with a floor for eigenvalues near 0).

    There is no restart: the basis holds at most ``max_iters + 1`` vectors of length ``dim``
    (memory ``(max_iters + 1) * dim`` numbers). A breakdown (:math:`\\beta_m \\approx 0`, an
    invariant subspace) stops the iteration if enough Ritz values exist, and otherwise
    continues from a fresh random vector orthogonal to the basis.

    Args:
        matmat: ``V -> A V`` on ``(dim, p)`` blocks; one call per step with ``p = 1``.
        dim: Dimension of ``A``.
        k: Number of eigenpairs.
        which: Spectrum end (:class:`Which`).
        tol: Relative residual tolerance.
        max_iters: Maximum Krylov dimension (number of ``A``-products).
        generator: Source of the random start vector.
        dtype: dtype of the basis (that of ``A``'s products).
        device: Device of the basis.
        callback: Called after every step ``m >= k`` as ``callback(m, ritz_values,
            residual_estimates)`` for the ``k`` wanted pairs (convergence studies).

    Returns:
        ``(ritz_values, ritz_vectors, residual_estimates, num_iterations, converged)`` with
        ``ritz_vectors`` of shape ``(dim, k)`` (unit columns), ordered as :class:`EigenResult`.

    Example:
        >>> a = torch.diag(torch.arange(-5.0, 5.0, dtype=torch.float64))  # -5, ..., 4
        >>> gen = torch.Generator().manual_seed(0)
        >>> values, *_ = lanczos(lambda v: a @ v, 10, 2, tol=1e-12, generator=gen)
        >>> [round(float(v), 8) for v in values]
        [4.0, 3.0]
        >>> values, *_ = lanczos(lambda v: a @ v, 10, 1, which="magnitude", generator=gen)
        >>> round(float(values[0]), 8)
        -5.0
    """
    which = Which(which)
    _validate_positive("k", k, integer=True)
    _validate_positive("max_iters", max_iters, integer=True)
    _validate_positive("tol", tol)
    if k > dim:
        raise ValueError(f"k={k} exceeds the operator's dimension {dim}")
    m_max = min(max_iters, dim)
    if m_max < k:
        raise ValueError(f"max_iters={max_iters} must be at least k={k}")
    like = torch.empty(0, dtype=dtype, device=device)
    basis = torch.zeros(m_max + 1, dim, dtype=dtype, device=device)
    q = _random_normal(dim, generator, like)
    basis[0] = q / torch.linalg.vector_norm(q)
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(dtype).eps
    converged = False
    theta = s = idx = None
    beta = 0.0
    m = 0
    for j in range(m_max):
        q = basis[j]
        w = matmat(q.reshape(-1, 1)).reshape(-1).to(dtype)
        alpha = float(q @ w)
        w = w - alpha * q
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
        active = basis[: j + 1]
        for _ in range(2):
            w = w - active.T @ (active @ w)
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        m = j + 1
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        anorm = float(theta.abs().max())
        breakdown = beta <= 10 * eps * max(anorm, 1e-300) * math.sqrt(m)
        if m >= k:
            idx = _select(theta, k, which)
            estimates = abs(beta) * s[-1, idx].abs()
            floor = eps ** (2.0 / 3.0) * anorm
            bounds = tol * torch.clamp(theta[idx].abs(), min=floor)
            if callback is not None:
                callback(m, theta[idx], estimates)
            if breakdown or bool((estimates <= bounds).all()):
                converged = True
                break
        if m == m_max:
            break
        if breakdown:
            # Invariant subspace found before k Ritz values exist: restart orthogonally.
            w = _random_normal(dim, generator, like)
            for _ in range(2):
                w = w - active.T @ (active @ w)
            betas.append(0.0)
            basis[j + 1] = w / torch.linalg.vector_norm(w)
        else:
            betas.append(beta)
            basis[j + 1] = w / beta
    assert theta is not None and s is not None and idx is not None  # m >= k by construction
    coeffs = s[:, idx].to(dtype=dtype, device=device)
    vectors = basis[:m].T @ coeffs
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=0)
    estimates = abs(beta) * s[-1, idx].abs()
    return theta[idx], vectors, estimates, m, converged


def power_iteration(
    matmat: MatMat,
    dim: int,
    k: int = 1,
    *,
    which: Which | str = Which.MAGNITUDE,
    tol: float = 1e-3,
    max_iters: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    callback: Callable[[int, float, float], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor, int, bool]:
    """Eigenpairs by power iteration with deflation, as PyHessian computes them.

    For each of the ``k`` pairs: start from a random unit vector, orthogonalise it against the
    pairs already found (deflation), and iterate :math:`v \\leftarrow Av / \\|Av\\|` with
    :math:`\\lambda = v^\\top A v`, stopping when
    :math:`|\\lambda_t - \\lambda_{t-1}| / (|\\lambda_{t-1}| + 10^{-6}) < \\text{tol}` or
    after ``max_iters`` products (Yao et al., "PyHessian: Neural networks through the lens of
    the Hessian", IEEE BigData 2020; defaults ``tol=1e-3``, ``max_iters=100``). Note the rule
    bounds the *change* of the estimate, not its error, which can be much larger when the
    top two eigenvalues are close.

    Power iteration converges to the largest-*magnitude* eigenvalue. For ``largest`` and
    ``smallest`` a first run finds the dominant :math:`\\lambda_d`; if it is not already the
    answer (``k == 1`` and the right sign), the iteration is repeated on
    :math:`A - \\sigma I` with :math:`\\sigma = -|\\lambda_d|` (``largest``: the shifted
    spectrum is non-negative, so magnitude order is algebraic order) or
    :math:`\\sigma = +|\\lambda_d|` (``smallest``). The shift slows convergence.

    Args:
        matmat: ``V -> A V`` on ``(dim, p)`` blocks (called with ``p = 1``).
        dim: Dimension of ``A``.
        k: Number of eigenpairs.
        which: Spectrum end (:class:`Which`).
        tol: Relative change of the eigenvalue estimate that stops an iteration.
        max_iters: Maximum products per eigenpair.
        generator: Source of the random start vectors.
        dtype: Vector dtype.
        device: Vector device.
        callback: Called after every product as ``callback(num_products, estimate,
            residual)``, the estimate in unshifted units (convergence studies).

    Returns:
        ``(values, vectors, residuals, num_iterations, converged)``, ``vectors`` ``(dim, k)``;
        ``residuals`` are :math:`\\|Av - \\lambda v\\|` at the last iterate (free: the last
        product is at hand), ``num_iterations`` counts every product.
    """
    which = Which(which)
    _validate_positive("k", k, integer=True)
    _validate_positive("max_iters", max_iters, integer=True)
    _validate_positive("tol", tol)
    if k > dim:
        raise ValueError(f"k={k} exceeds the operator's dimension {dim}")
    like = torch.empty(0, dtype=dtype, device=device)

    def run(
        shift: float, count: int, offset: int = 0
    ) -> tuple[list[float], list[Tensor], list[float], int, bool]:
        values: list[float] = []
        vectors: list[Tensor] = []
        residuals: list[float] = []
        total = 0
        all_converged = True
        for _ in range(count):
            v = _random_normal(dim, generator, like)
            v = v / torch.linalg.vector_norm(v)
            value: float | None = None
            residual = math.inf
            converged = False
            for _ in range(max_iters):
                for u in vectors:  # deflation (PyHessian's orthnormal)
                    v = v - (u @ v) * u
                v = v / torch.linalg.vector_norm(v)
                av = matmat(v.reshape(-1, 1)).reshape(-1).to(dtype) - shift * v
                total += 1
                estimate = float(v @ av)
                residual = float(torch.linalg.vector_norm(av - estimate * v))
                if callback is not None:
                    callback(offset + total, estimate + shift, residual)
                previous, value = value, estimate
                current = v
                norm = torch.linalg.vector_norm(av)
                if norm == 0:  # v is in the null space of the (shifted) operator
                    converged = True
                    break
                v = av / norm
                if previous is not None and abs(previous - estimate) / (abs(previous) + 1e-6) < tol:
                    converged = True
                    break
            assert value is not None
            values.append(value + shift)
            vectors.append(current)
            residuals.append(residual)
            all_converged &= converged
        return values, vectors, residuals, total, all_converged

    values, vectors, residuals, total, converged = run(0.0, k if which is Which.MAGNITUDE else 1)
    if which is not Which.MAGNITUDE:
        dominant = values[0]
        right_sign = dominant >= 0 if which is Which.LARGEST else dominant <= 0
        if k > 1 or not right_sign:
            shift = -abs(dominant) if which is Which.LARGEST else abs(dominant)
            values, vectors, residuals, more, converged = run(shift, k, offset=total)
            total += more
    order = torch.tensor(values, dtype=torch.float64)
    if which is Which.LARGEST:
        perm = torch.argsort(order, descending=True)
    elif which is Which.SMALLEST:
        perm = torch.argsort(order)
    else:
        perm = torch.argsort(order.abs(), descending=True)
    return (
        order[perm],
        torch.stack(vectors, dim=1)[:, perm.to(device)],
        torch.tensor(residuals, dtype=torch.float64)[perm],
        total,
        converged,
    )


@dataclass
class _TraceEstimate:
    value: float
    stderr: float
    num_probes: int
    num_products: int
    sketch_size: int
    converged: bool


def _validate_trace_args(rtol: float, max_probes: int, min_probes: int, block_size: int) -> None:
    _validate_positive("rtol", rtol)
    _validate_positive("max_probes", max_probes, integer=True)
    _validate_positive("block_size", block_size, integer=True)
    _validate_positive("min_probes", min_probes, integer=True)
    if min_probes < 2:
        raise ValueError("min_probes must be at least 2 (a standard error needs two probes)")


def _mean_and_stderr(samples: Tensor) -> tuple[float, float]:
    mean = float(samples.mean())
    std = float(samples.std(unbiased=True)) if samples.numel() > 1 else math.inf
    return mean, std / math.sqrt(samples.numel())


def _adaptive_probes(
    quadratic_form: Callable[[int], Tensor],
    offset: float,
    *,
    rtol: float,
    budget: int,
    min_probes: int,
    block_size: int,
) -> tuple[float, float, int, bool]:
    """Average probe values in blocks until ``stderr <= rtol * |offset + mean|`` or budget."""
    samples = torch.empty(0, dtype=torch.float64)
    while samples.numel() < budget:
        count = min(block_size, budget - samples.numel())
        samples = torch.cat([samples, quadratic_form(count).to("cpu", torch.float64)])
        if samples.numel() >= min_probes:
            mean, stderr = _mean_and_stderr(samples)
            if stderr <= rtol * abs(offset + mean):
                return mean, stderr, samples.numel(), True
    mean, stderr = _mean_and_stderr(samples)
    return mean, stderr, samples.numel(), False


def hutchinson(
    matmat: MatMat,
    dim: int,
    *,
    rtol: float = 1e-2,
    max_probes: int = 200,
    min_probes: int = 10,
    block_size: int = 10,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> _TraceEstimate:
    """Hutchinson's trace estimator with Rademacher probes, stopped at a relative stderr.

    .. math:: \\operatorname{tr} A \\approx \\frac1m \\sum_{i=1}^m z_i^\\top A z_i, \\qquad
              z_i \\in \\{-1, +1\\}^D \\text{ i.i.d. uniform},

    unbiased with variance :math:`2 (\\|A\\|_F^2 - \\sum_i A_{ii}^2) / m` (Hutchinson, "A
    stochastic estimator of the trace of the influence matrix for Laplacian smoothing
    splines", Comm. Statist. Simul. Comput. 1989). The standard error is the sample standard
    deviation of the :math:`z_i^\\top A z_i` over :math:`\\sqrt m`. Probes are drawn in
    blocks of ``block_size`` (one ``matmat`` call each); after at least ``min_probes`` the
    estimator stops once ``stderr <= rtol * |estimate|``, else at ``max_probes``.
    """
    _validate_trace_args(rtol, max_probes, min_probes, block_size)
    like = torch.empty(0, dtype=dtype, device=device)

    def quadratic_form(count: int) -> Tensor:
        z = _rademacher(dim, count, generator, like)
        return (z * matmat(z).to(dtype)).sum(dim=0)

    mean, stderr, m, converged = _adaptive_probes(
        quadratic_form,
        0.0,
        rtol=rtol,
        budget=max_probes,
        min_probes=min_probes,
        block_size=block_size,
    )
    return _TraceEstimate(mean, stderr, m, m, 0, converged)


def hutch_plus_plus(
    matmat: MatMat,
    dim: int,
    *,
    rtol: float = 1e-2,
    max_probes: int = 200,
    sketch_size: int | None = None,
    min_probes: int = 10,
    block_size: int = 10,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> _TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    With a Rademacher sketch :math:`S \\in \\mathbb R^{D \\times s}` and :math:`Q` an
    orthonormal basis of :math:`AS`,

    .. math:: \\operatorname{tr} A = \\operatorname{tr}(Q^\\top A Q)
              + \\operatorname{tr}\\big((I - QQ^\\top) A (I - QQ^\\top)\\big),

    the first term computed exactly (``s`` products) and the second by Hutchinson with
    deflated probes :math:`(I - QQ^\\top) z` (Meyer, Musco, Musco & Woodruff, "Hutch++:
    Optimal stochastic trace estimation", SOSA 2021). Removing the top of the spectrum cuts
    the variance; for ``m`` products the error falls as :math:`O(1/m)` rather than
    Hutchinson's :math:`O(1/\\sqrt m)` for PSD matrices. The paper's split is a third of the
    products each for :math:`S`, :math:`AQ` and the probes, so ``sketch_size`` defaults to
    ``max_probes // 3`` (less if that leaves fewer than ``min_probes`` probes); the residual
    probes then run adaptively (``min_probes``, ``rtol``) until the total reaches
    ``max_probes``. The standard error is that of the residual
    Hutchinson mean (the sketched part is exact given :math:`Q`).
    """
    _validate_trace_args(rtol, max_probes, min_probes, block_size)
    if sketch_size is None:
        sketch_size = max(1, min(max_probes // 3, (max_probes - min_probes) // 2))
    _validate_positive("sketch_size", sketch_size, integer=True)
    sketch_size = min(sketch_size, dim)
    if 2 * sketch_size + min_probes > max_probes:
        raise ValueError(
            f"max_probes={max_probes} is too small for hutch++ with sketch_size={sketch_size} "
            f"and min_probes={min_probes} (needs 2 * sketch_size + min_probes)"
        )
    like = torch.empty(0, dtype=dtype, device=device)
    sketch = _rademacher(dim, sketch_size, generator, like)
    basis, _ = torch.linalg.qr(matmat(sketch).to(dtype))
    low_rank = float((basis * matmat(basis).to(dtype)).sum())

    def quadratic_form(count: int) -> Tensor:
        z = _rademacher(dim, count, generator, like)
        z = z - basis @ (basis.T @ z)
        return (z * matmat(z).to(dtype)).sum(dim=0)

    mean, stderr, m, converged = _adaptive_probes(
        quadratic_form,
        low_rank,
        rtol=rtol,
        budget=max_probes - 2 * sketch_size,
        min_probes=min_probes,
        block_size=block_size,
    )
    return _TraceEstimate(low_rank + mean, stderr, m, 2 * sketch_size + m, sketch_size, converged)


# --------------------------------------------------------------------------------------------
# The metrics


def hessian_top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: DataLike,
    k: int = 1,
    *,
    which: Which | str = Which.LARGEST,
    method: EigMethod | str = EigMethod.LANCZOS,
    tol: float | None = None,
    max_iters: int = 100,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of the Hessian of the mean loss over ``data``.

    :math:`H = \\nabla^2_\\theta \\frac1N \\sum_n \\ell(f_\\theta(x_n), y_n)` over the
    trainable parameters, model in eval mode, accessed only through batched Hessian-vector
    products (:class:`~robustkit.evaluate.curvature.LossHessian`). ``method="lanczos"``
    (:func:`lanczos`) is the default; ``method="power"`` (:func:`power_iteration`) reproduces
    PyHessian for comparison with the literature. Each returned pair is checked with one
    explicit HVP: the eigenvalue is its Rayleigh quotient and the residual
    :math:`\\|Hv - \\lambda v\\|` bounds its error.

    Args:
        model: The network; left exactly as it was (mode, weights, ``requires_grad``).
        loss_fn: ``loss_fn(outputs, targets)``, the batch *mean* loss.
        data: ``(x, y)`` tensors (with ``batch_size``) or an iterable of ``(x, y)`` batches.
        k: Number of eigenvalues.
        which: ``"largest"`` (algebraic, default), ``"magnitude"`` or ``"smallest"``.
        method: ``"lanczos"`` or ``"power"``.
        tol: Lanczos: relative residual tolerance (default ``1e-4`` in float32, ``1e-8`` in
            float64). Power: relative change between iterations (default ``1e-3``, PyHessian).
        max_iters: Lanczos: maximum Krylov dimension; power: maximum iterations per
            eigenvalue (PyHessian: 100).
        generator: Source of the random start vector(s).
        batch_size: Batch size for an ``(x, y)`` pair.
        dtype: Computation dtype (default: the parameters' dtype).
        return_eigenvectors: Keep the ``(D, k)`` eigenvectors in the result.

    Returns:
        An :class:`EigenResult`.
    """
    which, method = Which(which), EigMethod(method)
    op = LossHessian(model, loss_fn, data, batch_size=batch_size, dtype=dtype)
    if tol is None and method is EigMethod.POWER:
        tol = 1e-3
    elif tol is None:
        tol = 1e-8 if op.dtype == torch.float64 else 1e-4
    solver = lanczos if method is EigMethod.LANCZOS else power_iteration
    with eval_mode(model):
        _, vectors, _, iterations, converged = solver(
            op.matmat,
            op.dim,
            k,
            which=which,
            tol=tol,
            max_iters=max_iters,
            generator=generator,
            dtype=op.dtype,
            device=op.device,
        )
        values, residuals = _rayleigh_and_residuals(op.matmat, vectors)
    return EigenResult(
        eigenvalues=[float(v) for v in values],
        residuals=[float(r) for r in residuals],
        which=which.value,
        method=method.value,
        tol=float(tol),
        max_iters=max_iters,
        num_hvps=op.num_hvps,
        num_iterations=iterations,
        converged=converged,
        num_examples=op.num_examples,
        num_parameters=op.dim,
        eigenvectors=vectors.detach() if return_eigenvectors else None,
    )


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: DataLike,
    *,
    method: TraceMethod | str = TraceMethod.HUTCHINSON,
    rtol: float = 1e-2,
    max_probes: int = 200,
    min_probes: int = 10,
    sketch_size: int | None = None,
    block_size: int = 10,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> TraceResult:
    """Stochastic estimate of :math:`\\operatorname{tr} \\nabla^2_\\theta L` over ``data``.

    ``method="hutchinson"`` (:func:`hutchinson`, Hutchinson 1989) or ``"hutch++"``
    (:func:`hutch_plus_plus`, Meyer et al. 2021), both with Rademacher probes, stopping once
    the standard error is at most ``rtol * |estimate|`` (after ``min_probes``) or after
    ``max_probes`` Hessian-vector products in all. Probes are processed ``block_size`` at a
    time, sharing each batch's forward and first backward pass.

    Args:
        model: The network; left exactly as it was.
        loss_fn: ``loss_fn(outputs, targets)``, the batch *mean* loss.
        data: ``(x, y)`` tensors (with ``batch_size``) or an iterable of ``(x, y)`` batches.
        method: ``"hutchinson"`` or ``"hutch++"``.
        rtol: Target relative standard error.
        max_probes: Budget of HVPs (for Hutch++ including the ``2 * sketch_size`` of the
            sketch).
        min_probes: Probes before the stopping rule is consulted (at least 2).
        sketch_size: Hutch++ sketch size (default ``max_probes // 3``).
        block_size: Probes per block.
        generator: Source of the probes.
        batch_size: Batch size for an ``(x, y)`` pair.
        dtype: Computation dtype (default: the parameters' dtype).

    Returns:
        A :class:`TraceResult`.
    """
    method = TraceMethod(method)
    op = LossHessian(model, loss_fn, data, batch_size=batch_size, dtype=dtype)
    common = {
        "rtol": rtol,
        "max_probes": max_probes,
        "min_probes": min_probes,
        "block_size": block_size,
        "generator": generator,
        "dtype": op.dtype,
        "device": op.device,
    }
    with eval_mode(model):
        if method is TraceMethod.HUTCHINSON:
            est = hutchinson(op.matmat, op.dim, **common)
        else:
            est = hutch_plus_plus(op.matmat, op.dim, sketch_size=sketch_size, **common)
    return TraceResult(
        value=est.value,
        stderr=est.stderr,
        method=method.value,
        num_probes=est.num_probes,
        num_hvps=op.num_hvps,
        sketch_size=est.sketch_size,
        rtol=rtol,
        max_probes=max_probes,
        converged=est.converged,
        num_examples=op.num_examples,
        num_parameters=op.dim,
    )


def _fisher_vectors(
    kind: FisherKind,
    p: Tensor,
    y: Tensor,
    num_samples: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The ``(B, K, C)`` logit-space vectors ``u`` with ``grad log p = J^T u`` for ``kind``.

    Empirical: ``e_y - p``; Monte Carlo: ``e_c - p`` for ``num_samples`` classes drawn from
    ``p``; true: ``sqrt(p_c) (e_c - p)`` for every class ``c``, so that the sum of the squared
    norms is ``sum_c p_c ||J^T (e_c - p)||^2``.
    """
    if kind is FisherKind.TRUE:
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        return p.sqrt().unsqueeze(-1) * (eye - p.unsqueeze(1))
    if kind is FisherKind.EMPIRICAL:
        labels = y.to(p.device).reshape(-1, 1)
    else:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        labels = torch.multinomial(
            p.to(gen_device, torch.float64), num_samples, replacement=True, generator=generator
        ).to(p.device)
    return nn.functional.one_hot(labels, p.shape[-1]).to(p.dtype) - p.unsqueeze(1)


def fisher_trace(
    model: nn.Module,
    data: DataLike,
    *,
    kind: FisherKind | str = FisherKind.TRUE,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    method: str = "auto",
) -> FisherTraceResult:
    """Trace of the Fisher information of a classifier on ``data``.

    The model's outputs are logits of :math:`p(y \\mid x) = \\mathrm{softmax}(f_\\theta(x))_y`.
    With :math:`g_{n,y} = \\nabla_\\theta \\log p(y \\mid x_n)` over the trainable
    parameters (per-example gradient norms from :class:`~robustkit.evaluate.curvature.
    PerExampleGradients`, one forward pass per batch, model in eval mode):

    * ``kind="true"``: :math:`\\operatorname{tr} F = \\frac1N \\sum_n \\sum_y
      p(y \\mid x_n) \\|g_{n,y}\\|^2`, exact by summing over the ``C`` classes (``C``
      per-example gradients per example).
    * ``kind="mc"``: the same expectation by Monte Carlo, :math:`\\frac1N \\sum_n \\frac1k
      \\sum_{j=1}^k \\|g_{n,\\tilde y_{nj}}\\|^2` with :math:`\\tilde y_{nj} \\sim
      p(\\cdot \\mid x_n)` drawn with ``generator`` (``k = num_samples``). The standard
      error is that of the label sampling given the subset,
      :math:`\\sqrt{\\sum_n s_n^2 / k} / N` with :math:`s_n^2` the sample variance over the
      ``k`` draws (``k >= 2``); for ``k = 1`` it is the conservative
      :math:`\\mathrm{sd}_n(\\cdot) / \\sqrt N`, which also contains the spread between
      examples (``stderr_kind`` says which).
    * ``kind="empirical"``: the empirical Fisher, :math:`\\frac1N \\sum_n \\|g_{n,y_n}\\|^2`
      with the observed (possibly noisy) labels :math:`y_n`; this is the mean squared norm
      of the per-example cross-entropy gradients.

    For a model with loss :math:`-\\log p(y \\mid x)` the true Fisher is the expected
    Gauss-Newton matrix; the empirical Fisher is not (Kunstner, Hennig & Balles, "Limitations
    of the empirical Fisher approximation for natural gradient descent", NeurIPS 2019).

    Args:
        model: The classifier (logits out); left exactly as it was.
        data: ``(x, y)`` tensors (with ``batch_size``) or an iterable of ``(x, y)`` batches;
            ``y`` is used only by ``kind="empirical"``.
        kind: ``"true"``, ``"mc"`` or ``"empirical"``.
        num_samples: Labels sampled per example for ``"mc"``.
        generator: Source of the sampled labels (``"mc"``).
        batch_size: Batch size for an ``(x, y)`` pair; bounds the ``batch x D`` memory of the
            per-example gradients.
        dtype: Computation dtype (default: the parameters' dtype).
        method: Per-example gradient method, ``"auto"``, ``"layerwise"`` or ``"vmap"`` (see
            :class:`~robustkit.evaluate.curvature.PerExampleGradients`); the record names
            the one that ran.

    Returns:
        A :class:`FisherTraceResult`.
    """
    kind = FisherKind(kind)
    if kind is FisherKind.MC:
        _validate_positive("num_samples", num_samples, integer=True)
    batches = as_batches(data, batch_size)
    grads = PerExampleGradients(model, dtype, method)
    n = batches.num_examples
    total = 0.0
    variance_sum = 0.0  # mc: sum over examples of the variance of their k-sample mean
    per_example: list[Tensor] = []
    num_classes = 0
    with eval_mode(model):
        for x, y in batches:

            def vectors(log_p: Tensor, y: Tensor = y) -> Tensor:
                nonlocal num_classes
                num_classes = int(log_p.shape[-1])
                return _fisher_vectors(kind, log_p.exp(), y, num_samples, generator)

            draws = grads.sq_norms_of(x, vectors)
            if kind is FisherKind.TRUE:
                contrib = draws.sum(dim=1)
            else:
                contrib = draws.mean(dim=1)
                if kind is FisherKind.MC and num_samples > 1:
                    variance_sum += float(draws.var(dim=1, unbiased=True).sum()) / num_samples
            total += float(contrib.sum())
            per_example.append(contrib.detach().to("cpu", torch.float64))
    stderr: float | None = None
    stderr_kind: str | None = None
    if kind is FisherKind.MC:
        if num_samples > 1:
            stderr = math.sqrt(variance_sum) / n
            stderr_kind = "label sampling given the subset"
        else:
            values = torch.cat(per_example)
            stderr = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
            stderr_kind = "between examples (conservative; k = 1)"
    return FisherTraceResult(
        value=total / n,
        stderr=stderr,
        kind=kind.value,
        num_samples=num_samples if kind is FisherKind.MC else 0,
        num_examples=n,
        num_classes=num_classes,
        num_gradients=grads.num_gradients,
        num_parameters=grads.dim,
        stderr_kind=stderr_kind,
        method=grads.method,
        fallback_reason=grads.fallback_reason,
    )
