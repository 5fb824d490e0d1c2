"""The 2-D Gaussian toy of Fisher-SAM (Kim, Li, Hu and Hospedales, "Fisher SAM: Information
Geometry and Sharpness Aware Minimisation", ICML 2022), with reconstructed constants.

The parameters are ``theta = (mu, sigma)`` of ``p(x; theta) = N(mu, sigma^2)`` and the loss is a
soft minimum over ``K`` (two by default) KL "energies"::

    E_i(theta) = KL(N(mu, sigma^2) || N(m_i, s_i^2))
               = log(s_i / sigma) + (sigma^2 + (mu - m_i)^2) / (2 s_i^2) - 1/2
    l(theta)   = -log( sum_i alpha_i exp(-E_i(theta) / beta_i^2) )

With the reconstructed constants ``alpha = (0.7, 0.3)``, ``m = (20, -20)``, ``s = (30, 10)``,
``beta = (1.8, 1.2)`` the landscape has two minima: a wide one near ``(19.8, 29.9)``
(``l ~ 0.3564``) and a narrow one near ``(-16.8, 12.8)`` (``l ~ 0.2752``). Note that the narrow
("sharp") minimum is the *deeper* one, and that it is pulled away from ``(m_2, s_2) = (-20, 10)``
by the wide component, which still has responsibility 0.64 there. The Euclidean Hessian's
eigenvalues are about 7x larger at the sharp minimum; measured in the Fisher metric (the
eigenvalues of ``F^-1 H``) the two minima differ by only about 1.5x.

The Fisher information of ``N(mu, sigma^2)`` in ``(mu, sigma)`` is exact and diagonal::

    F(theta) = diag(1 / sigma^2, 2 / sigma^2)

The optimisers follow the project's single formula (docs/architecture.md, Sec. 1)::

    eps   = rho * M^-1 g / sqrt(g^T M^-1 g),   g = grad l(theta)
    theta <- theta - lr * grad l(theta + eps)

with ``M^-1`` equal to ``0`` (``gd``: no ascent), ``1`` (``sam``), ``F(theta)^-1`` (``fsam``,
exact Fisher) or ``1 / (1 + eta g^2)`` (``fsam-diag``, the diagonal gradient approximation that
the real optimiser uses). If ``g^T M^-1 g = 0`` the ascent is skipped (``eps = 0``).

What the dynamics show with the default constants (searched over starts in the sharp basin,
``lr`` in 3..150, ``rho`` in 0.05..5; not a figure of the paper):

* The paper's picture (SAM settles in the sharp minimum, FSAM leaves it for the flat one) is
  *not* robust here. A quadratic model of ``max_{eps^T M eps <= rho^2} l(theta + eps)`` at the
  two minima predicts that the flat minimum wins for ``rho > 6.2`` (SAM, Euclidean ball) and
  ``rho > 1.08`` (FSAM, Fisher ball). At ``sigma ~ 13`` a Fisher ball of radius 1.08 has
  Euclidean semi-axes of about 14 and 10, i.e. FSAM needs a *larger* Euclidean ball than SAM;
  with the same number ``rho`` FSAM's ball is simply ~``sigma`` times bigger.
* Started at ``(-5, 10)`` with ``lr = 10``, FSAM with ``rho`` below ~0.7 stays sharp; for
  ~0.7-1.5 it leaves but stalls near the saddle ``(0.31, 22.50)`` (``l = 0.3977``) or at spurious
  fixed points where ``theta + eps`` lands on a stationary point (e.g. ``(-5.28, 19.44)`` for
  ``rho = 1.5``); for ``rho >= 2`` ``sigma`` runs away (to thousands) before it comes back.
* ``start=(-20, 3), lr=100, rho=1.2, steps=400`` does give gd/sam/fsam-diag -> sharp and
  fsam -> flat (end ``(19.76, 34.28)``, ``l = 0.363``), but through an artefact: the first FSAM
  ascent moves ``sigma`` from 3 to ~0.45, where ``grad l ~ -1 / (beta^2 sigma)`` is large, and
  the descent catapults ``sigma`` to ~88. Such settings exist only for ``lr >= 50``, small
  starting ``sigma`` (2-8) and ``rho ~ 1.05-1.35``, scattered like a checkerboard; in every one
  found the first ascents take ``sigma`` below 2.2 and the path overshoots to ``sigma > 40``.
* ``fsam-diag`` with ``eta = 1`` is close to SAM here (paths within 1e-4 at the defaults)
  because ``|g| <= 0.03`` makes ``1 / (1 + eta g^2) ~ 1``; only ``eta`` of order ``1 / g^2``
  (1e3 and more) changes the ball, and even ``eta = 1e5`` ends in the sharp minimum.
* The defaults (``start=(-10, 8), lr=30, rho=0.5, steps=1000``) therefore show the honest
  outcome: all four methods end in the sharp minimum.

Everything here is pure float64 numpy maths: no printing, no file IO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_LR",
    "DEFAULT_PROBLEM",
    "DEFAULT_RHO",
    "DEFAULT_START",
    "DEFAULT_STEPS",
    "SIGMA_FLOOR",
    "BasinMinimum",
    "Method",
    "ToyProblem",
    "Trajectory",
    "basin_of",
    "fisher",
    "grad",
    "kl_gaussian",
    "loss",
    "perturbation",
    "run",
]

#: ``sigma`` is clamped to at least this value after the ascent and after the descent, because
#: ``l`` is undefined for ``sigma <= 0``. A clamp is counted in ``Trajectory.num_clamped``; near
#: the floor ``grad l ~ -1 / (beta^2 sigma)`` is huge, so a clamped run is rarely meaningful.
SIGMA_FLOOR = 1e-3

#: Defaults of ``run`` / ``robustkit toy``: every method ends in the sharp minimum (module notes).
DEFAULT_START: tuple[float, float] = (-10.0, 8.0)
DEFAULT_LR = 30.0
DEFAULT_RHO = 0.5
DEFAULT_ETA = 1.0
DEFAULT_STEPS = 1000


class Method(str, Enum):
    """The update rules of ``run`` (values work with ``click.Choice`` and JSON)."""

    GD = "gd"
    SAM = "sam"
    FSAM = "fsam"
    FSAM_DIAG = "fsam-diag"


def kl_gaussian(
    mu: ArrayLike, sigma: ArrayLike, m: ArrayLike, s: ArrayLike
) -> NDArray[np.float64] | float:
    """``KL(N(mu, sigma^2) || N(m, s^2))`` in nats, closed form, broadcasting.

    ``log(s / sigma) + (sigma^2 + (mu - m)^2) / (2 s^2) - 1/2``

    Args:
        mu: Mean of the first Gaussian.
        sigma: Standard deviation of the first Gaussian (> 0).
        m: Mean of the second Gaussian.
        s: Standard deviation of the second Gaussian (> 0).

    Returns:
        The divergence, a float for scalar inputs, else a float64 array.
    """
    mu, sigma, m, s = (np.asarray(v, dtype=np.float64) for v in (mu, sigma, m, s))
    out = np.log(s / sigma) + (sigma**2 + (mu - m) ** 2) / (2.0 * s**2) - 0.5
    return float(out) if out.ndim == 0 else out


def _as_theta(theta: ArrayLike) -> NDArray[np.float64]:
    t = np.asarray(theta, dtype=np.float64)
    if t.shape != (2,):
        raise ValueError(f"theta must be (mu, sigma), got shape {t.shape}")
    if not t[1] > 0:
        raise ValueError(f"sigma must be > 0, got {t[1]}")
    return t


def fisher(theta: ArrayLike) -> NDArray[np.float64]:
    """Exact Fisher information of ``N(mu, sigma^2)`` in ``(mu, sigma)``.

    ``F = E_x[grad log p grad log p^T] = diag(1 / sigma^2, 2 / sigma^2)``

    Args:
        theta: ``(mu, sigma)`` with ``sigma > 0``.

    Returns:
        The 2x2 matrix.
    """
    sigma = _as_theta(theta)[1]
    return np.diag([1.0 / sigma**2, 2.0 / sigma**2])


def _parse_pair(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError(f"{name} must not be empty")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


@dataclass(frozen=True)
class ToyProblem:
    """The mixture-of-KL loss ``l(theta) = -log sum_i alpha_i exp(-E_i(theta) / beta_i^2)``.

    Attributes:
        alpha: Mixture weights ``alpha_i > 0`` (need not sum to one; ``l >= 0`` if they do).
        means: Target means ``m_i``.
        stds: Target standard deviations ``s_i > 0``.
        beta: Temperatures ``beta_i > 0`` (squared in the exponent, as in the paper).
    """

    alpha: tuple[float, ...] = (0.7, 0.3)
    means: tuple[float, ...] = (20.0, -20.0)
    stds: tuple[float, ...] = (30.0, 10.0)
    beta: tuple[float, ...] = (1.8, 1.2)

    def __post_init__(self) -> None:
        for name in ("alpha", "means", "stds", "beta"):
            object.__setattr__(self, name, _parse_pair(getattr(self, name), name))
        k = len(self.alpha)
        if not len(self.means) == len(self.stds) == len(self.beta) == k:
            raise ValueError(
                "alpha, means, stds and beta need one entry per component, got lengths "
                f"{len(self.alpha)}, {len(self.means)}, {len(self.stds)}, {len(self.beta)}"
            )
        for name in ("alpha", "stds", "beta"):
            if min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def num_components(self) -> int:
        """``K``, the number of mixture components."""
        return len(self.alpha)

    def _arrays(self) -> tuple[NDArray[np.float64], ...]:
        return tuple(np.asarray(v, dtype=np.float64) for v in (self.alpha, self.means, self.stds))

    def _scaled_energies(self, t: NDArray[np.float64]) -> NDArray[np.float64]:
        _, m, s = self._arrays()
        return kl_gaussian(t[0], t[1], m, s) / np.asarray(self.beta, dtype=np.float64) ** 2

    def energies(self, theta: ArrayLike) -> NDArray[np.float64]:
        """``E_i(theta)``, one KL divergence per component."""
        t = _as_theta(theta)
        _, m, s = self._arrays()
        return np.asarray(kl_gaussian(t[0], t[1], m, s))

    def responsibilities(self, theta: ArrayLike) -> NDArray[np.float64]:
        """``r_i = alpha_i e^{-a_i} / sum_j alpha_j e^{-a_j}`` with ``a_i = E_i / beta_i^2``."""
        t = _as_theta(theta)
        alpha, _, _ = self._arrays()
        z = np.log(alpha) - self._scaled_energies(t)
        z = z - z.max()
        w = np.exp(z)
        return w / w.sum()

    def loss(self, theta: ArrayLike) -> float:
        """``l(theta)``, evaluated with a log-sum-exp so that large energies do not underflow."""
        t = _as_theta(theta)
        alpha, _, _ = self._arrays()
        z = np.log(alpha) - self._scaled_energies(t)
        zmax = z.max()
        return float(-(zmax + np.log(np.exp(z - zmax).sum())))

    def loss_grid(self, mu: ArrayLike, sigma: ArrayLike) -> NDArray[np.float64]:
        """``l`` on broadcast arrays of ``mu`` and ``sigma > 0`` (for contour plots)."""
        mu, sigma = np.broadcast_arrays(
            np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        )
        alpha, m, s = (v.reshape((-1,) + (1,) * mu.ndim) for v in self._arrays())
        b2 = np.asarray(self.beta, dtype=np.float64).reshape(alpha.shape) ** 2
        z = np.log(alpha) - np.asarray(kl_gaussian(mu, sigma, m, s)) / b2
        zmax = z.max(axis=0)
        return -(zmax + np.log(np.exp(z - zmax).sum(axis=0)))

    def _energy_grads(self, t: NDArray[np.float64]) -> NDArray[np.float64]:
        # rows: grad a_i = grad E_i / beta_i^2 with
        # dE/dmu = (mu - m) / s^2 and dE/dsigma = -1/sigma + sigma / s^2
        _, m, s = self._arrays()
        b2 = np.asarray(self.beta, dtype=np.float64) ** 2
        dmu = (t[0] - m) / s**2
        dsigma = -1.0 / t[1] + t[1] / s**2
        return np.stack([dmu, dsigma], axis=1) / b2[:, None]

    def grad(self, theta: ArrayLike) -> NDArray[np.float64]:
        """Analytic gradient ``grad l = sum_i r_i grad E_i / beta_i^2``."""
        t = _as_theta(theta)
        return self.responsibilities(t) @ self._energy_grads(t)

    def hessian(self, theta: ArrayLike) -> NDArray[np.float64]:
        """Analytic Hessian of ``l``.

        ``H = sum_i r_i H_i - (sum_i r_i u_i u_i^T - u u^T)`` with ``u_i = grad E_i / beta_i^2``,
        ``u = grad l`` and ``H_i = diag(1 / s_i^2, 1 / sigma^2 + 1 / s_i^2) / beta_i^2``.
        """
        t = _as_theta(theta)
        _, _, s = self._arrays()
        b2 = np.asarray(self.beta, dtype=np.float64) ** 2
        r = self.responsibilities(t)
        u = self._energy_grads(t)
        ubar = r @ u
        h_diag = r @ (np.stack([1.0 / s**2, 1.0 / t[1] ** 2 + 1.0 / s**2], axis=1) / b2[:, None])
        cov = (u * r[:, None]).T @ u - np.outer(ubar, ubar)
        return np.diag(h_diag) - cov

    def minima(self) -> tuple[BasinMinimum, ...]:
        """The local minima of ``l``, found numerically (cached).

        A bounded quasi-Newton search (``scipy.optimize.minimize``, L-BFGS-B with the analytic
        gradient, ``sigma >= SIGMA_FLOOR``) starts from each component's own ``(m_i, s_i)``;
        duplicates are merged and the results checked to be minima (positive definite Hessian).
        They are sorted from flattest to sharpest by the largest Hessian eigenvalue and named
        ``flat`` / ``sharp`` when there are two, ``single`` when one, ``min1``... otherwise.
        """
        return _minima(self)


@dataclass(frozen=True)
class BasinMinimum:
    """A local minimum of the toy loss.

    Attributes:
        name: ``flat`` or ``sharp`` (two minima), see ``ToyProblem.minima``.
        theta: ``(mu, sigma)`` of the minimum.
        loss: ``l`` there.
        hessian_eigenvalues: Eigenvalues of the Euclidean Hessian, ascending.
        fisher_eigenvalues: Eigenvalues of ``F^-1 H`` (curvature in the Fisher metric), ascending.
    """

    name: str
    theta: tuple[float, float]
    loss: float
    hessian_eigenvalues: tuple[float, float]
    fisher_eigenvalues: tuple[float, float]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "theta": list(self.theta),
            "loss": self.loss,
            "hessian_eigenvalues": list(self.hessian_eigenvalues),
            "fisher_eigenvalues": list(self.fisher_eigenvalues),
        }


_MINIMA_CACHE: dict[ToyProblem, tuple[BasinMinimum, ...]] = {}


def _minima(problem: ToyProblem) -> tuple[BasinMinimum, ...]:
    if problem in _MINIMA_CACHE:
        return _MINIMA_CACHE[problem]
    from scipy.optimize import minimize

    found: list[NDArray[np.float64]] = []
    for m, s in zip(problem.means, problem.stds, strict=True):
        res = minimize(
            problem.loss,
            np.array([m, s]),
            jac=problem.grad,
            method="L-BFGS-B",
            bounds=[(None, None), (SIGMA_FLOOR, None)],
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
        )
        x = np.asarray(res.x, dtype=np.float64)
        if x[1] <= SIGMA_FLOOR or np.linalg.eigvalsh(problem.hessian(x))[0] <= 0:
            continue
        scale = 1e-4 * (1.0 + np.linalg.norm(x))
        if all(np.linalg.norm(x - y) > scale for y in found):
            found.append(x)
    found.sort(key=lambda x: np.linalg.eigvalsh(problem.hessian(x))[-1])
    names = _basin_names(len(found))
    out = []
    for name, x in zip(names, found, strict=True):
        h = problem.hessian(x)
        fh = np.linalg.solve(fisher(x), h)
        out.append(
            BasinMinimum(
                name=name,
                theta=(float(x[0]), float(x[1])),
                loss=problem.loss(x),
                hessian_eigenvalues=tuple(float(v) for v in np.linalg.eigvalsh(h)),
                fisher_eigenvalues=tuple(float(v) for v in np.sort(np.linalg.eigvals(fh).real)),
            )
        )
    _MINIMA_CACHE[problem] = tuple(out)
    return _MINIMA_CACHE[problem]


def _basin_names(n: int) -> list[str]:
    if n == 1:
        return ["single"]
    if n == 2:
        return ["flat", "sharp"]
    return [f"min{i + 1}" for i in range(n)]


DEFAULT_PROBLEM = ToyProblem()


def loss(theta: ArrayLike, problem: ToyProblem | None = None) -> float:
    """``l(theta)`` of ``problem`` (the paper's constants by default)."""
    return (problem or DEFAULT_PROBLEM).loss(theta)


def grad(theta: ArrayLike, problem: ToyProblem | None = None) -> NDArray[np.float64]:
    """Analytic ``grad l(theta)`` of ``problem`` (the paper's constants by default)."""
    return (problem or DEFAULT_PROBLEM).grad(theta)


def perturbation(
    method: Method | str,
    theta: ArrayLike,
    g: ArrayLike,
    rho: float,
    eta: float = DEFAULT_ETA,
) -> NDArray[np.float64]:
    """The ascent step ``eps = rho M^-1 g / sqrt(g^T M^-1 g)`` of a method.

    Args:
        method: ``gd`` (``eps = 0``), ``sam`` (``M^-1 = 1``), ``fsam`` (``M^-1 = F(theta)^-1 =
            diag(sigma^2, sigma^2 / 2)``) or ``fsam-diag`` (``M^-1 = 1 / (1 + eta g^2)``).
        theta: ``(mu, sigma)``.
        g: ``grad l(theta)``.
        rho: Radius of the ball ``eps^T M eps <= rho^2`` (Euclidean for SAM, Fisher for FSAM).
        eta: FSAM's Fisher scale (``fsam-diag`` only).

    Returns:
        ``eps``; zero when ``rho = 0`` or ``g^T M^-1 g = 0``.
    """
    method = Method(method)
    t = np.asarray(theta, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if method is Method.GD or rho == 0:
        return np.zeros(2)
    if method is Method.SAM:
        m_inv = np.ones(2)
    elif method is Method.FSAM:
        m_inv = np.array([t[1] ** 2, t[1] ** 2 / 2.0])
    else:
        m_inv = 1.0 / (1.0 + eta * g**2)
    q = float(g @ (m_inv * g))
    if q == 0.0:
        return np.zeros(2)
    return rho * m_inv * g / math.sqrt(q)


@dataclass
class Trajectory:
    """The path of one run.

    Attributes:
        method: The update rule.
        points: ``(steps + 1, 2)`` iterates ``(mu, sigma)``, the start first.
        losses: ``l`` at each iterate.
        basin: ``diverged`` if an iterate or its loss overflowed (the path then stops at the
            last finite iterate), else the name of the minimum (see ``ToyProblem.minima``)
            whose basin of attraction under
            gradient flow contains the end point: the flow ``d theta / dt = -grad l`` is
            integrated from the end point (stiff solver) and the nearest minimum to where it
            stops is taken. (Which mixture component dominates is *not* used: at the default
            sharp minimum the wide component still has responsibility 0.64.)
        num_clamped: How many times ``sigma`` was raised to ``SIGMA_FLOOR``.
        settings: ``start``, ``lr``, ``rho``, ``eta``, ``steps`` of the run.
    """

    method: Method
    points: NDArray[np.float64]
    losses: NDArray[np.float64]
    basin: str
    num_clamped: int
    settings: dict = field(default_factory=dict)

    @property
    def end(self) -> tuple[float, float]:
        """The last iterate ``(mu, sigma)``."""
        return (float(self.points[-1, 0]), float(self.points[-1, 1]))

    @property
    def final_loss(self) -> float:
        """``l`` at the last iterate."""
        return float(self.losses[-1])

    def to_dict(self) -> dict:
        """A JSON-ready dict (points as ``[[mu, sigma], ...]``)."""
        return {
            "method": self.method.value,
            "settings": dict(self.settings),
            "end": list(self.end),
            "final_loss": self.final_loss,
            "basin": self.basin,
            "num_clamped": self.num_clamped,
            "points": self.points.tolist(),
            "losses": self.losses.tolist(),
        }


def basin_of(theta: ArrayLike, problem: ToyProblem | None = None) -> str:
    """Name of the minimum whose gradient-flow basin of attraction contains ``theta``.

    Integrates ``d theta / dt = -grad l(theta)`` with LSODA up to ``t = 1e7`` and returns the name
    of the nearest minimum (``ToyProblem.minima``) to the end of the flow.
    """
    from scipy.integrate import solve_ivp

    problem = problem or DEFAULT_PROBLEM
    minima = problem.minima()
    if not minima:
        return "none"
    t0 = _as_theta(theta)

    def rhs(_: float, y: NDArray[np.float64]) -> NDArray[np.float64]:
        return -problem.grad(np.array([y[0], max(y[1], SIGMA_FLOOR)]))

    sol = solve_ivp(rhs, (0.0, 1e7), t0, method="LSODA", rtol=1e-8, atol=1e-10)
    y = sol.y[:, -1]
    dists = [np.linalg.norm(y - np.asarray(b.theta)) for b in minima]
    return minima[int(np.argmin(dists))].name


def run(
    method: Method | str,
    start: ArrayLike = DEFAULT_START,
    lr: float = DEFAULT_LR,
    rho: float = DEFAULT_RHO,
    steps: int = DEFAULT_STEPS,
    eta: float = DEFAULT_ETA,
    problem: ToyProblem | None = None,
) -> Trajectory:
    """Run one method on the toy loss.

    Each step, with ``g = grad l(theta)`` and ``eps = perturbation(method, theta, g, rho, eta)``::

        theta <- theta - lr * grad l(theta + eps)

    and ``sigma`` clamped to ``SIGMA_FLOOR`` after the ascent and after the descent.

    Args:
        method: ``gd``, ``sam``, ``fsam`` or ``fsam-diag``.
        start: ``(mu, sigma)``, ``sigma > 0``.
        lr: Learning rate (>= 0). The loss is flat in these units (Hessian eigenvalues ~1e-3),
            so useful rates are large (tens to hundreds).
        rho: Ball radius (>= 0), Euclidean for ``sam``/``fsam-diag``, Fisher for ``fsam``.
        steps: Number of updates (>= 0).
        eta: FSAM's Fisher scale for ``fsam-diag`` (>= 0); ``eta = 0`` is SAM.
        problem: The loss; the paper's constants by default.

    Returns:
        The trajectory, with its basin classified by ``basin_of``.

    Raises:
        ValueError: On a bad start or negative hyperparameters.
    """
    method = Method(method)
    problem = problem or DEFAULT_PROBLEM
    theta = _as_theta(start).copy()
    for name, value in (("lr", lr), ("rho", rho), ("eta", eta)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    steps = int(steps)

    points = np.empty((steps + 1, 2))
    losses = np.empty(steps + 1)
    points[0] = theta
    losses[0] = problem.loss(theta)
    num_clamped = 0
    num_points = steps + 1
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, steps + 1):
            g = problem.grad(theta)
            probe = theta + perturbation(method, theta, g, rho, eta)
            if probe[1] < SIGMA_FLOOR:
                probe[1] = SIGMA_FLOOR
                num_clamped += 1
            theta = theta - lr * problem.grad(probe)
            if theta[1] < SIGMA_FLOOR:
                theta[1] = SIGMA_FLOOR
                num_clamped += 1
            value = problem.loss(theta) if np.isfinite(theta).all() else math.inf
            if not math.isfinite(value):
                num_points = k  # diverged: keep the finite prefix
                break
            points[k] = theta
            losses[k] = value
    diverged = num_points < steps + 1
    points, losses = points[:num_points], losses[:num_points]
    return Trajectory(
        method=method,
        points=points,
        losses=losses,
        basin="diverged" if diverged else basin_of(points[-1], problem),
        num_clamped=num_clamped,
        settings={
            "start": [float(v) for v in points[0]],
            "lr": float(lr),
            "rho": float(rho),
            "eta": float(eta),
            "steps": steps,
        },
    )
