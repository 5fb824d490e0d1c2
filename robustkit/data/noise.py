"""Label noise: flip training labels according to a stated noise model.

Pure functions over label tensors. All randomness comes from an explicit CPU
``torch.Generator`` (Mersenne Twister), so a seed gives the same noisy labels on every
machine. Only the training labels are ever passed in: the test set is never touched.

Noise models (``n`` labels, ``K`` classes, rate ``r`` in ``[0, 1)``; ``round`` is
round-half-up, ``floor(x + 0.5)``):

* ``none`` - labels unchanged.
* ``symmetric:r`` - exactly ``round(r * n)`` labels, chosen uniformly without
  replacement, each moved to a uniformly chosen *other* class. Realised rate is exactly
  ``round(r * n) / n``. This is robustkit's default meaning of "symmetric noise".
* ``uniform:r`` - each label independently, with probability ``r``, is resampled
  uniformly over all ``K`` classes (possibly its own). Effective flip rate
  ``r (K - 1) / K``.
* ``pair:r`` - exactly ``round(r * n)`` labels, chosen uniformly without replacement,
  go ``k -> (k + 1) mod K``.
* ``asymmetric:r`` - the CIFAR-10 class map (Patrini et al. 2017): truck(9) -> automobile(1),
  bird(2) -> airplane(0), deer(4) -> horse(7), cat(3) <-> dog(5). For every mapped class
  ``k`` with ``n_k`` labels, exactly ``round(r * n_k)`` of them, chosen uniformly without
  replacement, go to ``map[k]``. Defined for ``K = 10`` only.
* ``matrix:PATH`` - each label ``y`` is resampled from row ``y`` of a transition matrix
  ``T`` (rows = true class, rows sum to 1) read from ``.npy``, ``.csv`` or ``.txt``.

``flipped`` is always ``noisy != clean`` (a ``uniform`` or ``matrix`` draw that lands on
the true class is not a flip) and ``realised_rate`` is its mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "NoiseKind",
    "NoiseSpec",
    "NoisyLabels",
    "apply_label_noise",
    "parse_noise_spec",
    "read_transition_matrix",
    "transition_matrix",
]

#: The CIFAR-10 class map of asymmetric noise (Patrini et al. 2017): source -> target.
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

_KNOWN_SPECS = "none, symmetric:r, uniform:r, pair:r, asymmetric:r, matrix:PATH"

# Rows of a transition matrix must sum to 1 within this tolerance.
_ROW_SUM_ATOL = 1e-6


class NoiseKind(str, Enum):
    """The label-noise models (see the module docstring for their definitions)."""

    NONE = "none"
    SYMMETRIC = "symmetric"
    UNIFORM = "uniform"
    PAIR = "pair"
    ASYMMETRIC = "asymmetric"
    MATRIX = "matrix"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed noise specification.

    Attributes:
        kind: The noise model.
        rate: The rate ``r`` in ``[0, 1)`` (0 for ``none`` and ``matrix``).
        path: The transition-matrix file of ``matrix`` noise, as given.
        matrix: The ``K x K`` transition matrix of ``matrix`` noise (rows = true class), as
            nested tuples so the spec stays hashable.
    """

    kind: NoiseKind
    rate: float = 0.0
    path: str | None = None
    matrix: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        kind = NoiseKind(self.kind)
        object.__setattr__(self, "kind", kind)
        rate = float(self.rate)
        if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
            raise ValueError(f"noise rate must be in [0, 1), got {self.rate!r}")
        if kind in (NoiseKind.NONE, NoiseKind.MATRIX) and rate != 0.0:
            raise ValueError(f"noise kind {kind.value!r} takes no rate")
        object.__setattr__(self, "rate", rate)
        if kind is NoiseKind.MATRIX:
            if self.matrix is None:
                raise ValueError("matrix noise needs a transition matrix (use 'matrix:PATH')")
            _validate_matrix(np.asarray(self.matrix, dtype=np.float64))

    @classmethod
    def parse(cls, spec: str | NoiseSpec) -> NoiseSpec:
        """Parse a spec string: ``none``, ``KIND:r`` or ``matrix:PATH``.

        ``matrix:PATH`` reads the matrix file here (the one place this module touches a file):
        the spec is parsed once, at the edge, and carries the matrix from then on.

        Raises:
            ValueError: Unknown kind, missing or malformed rate, rate outside ``[0, 1)``, or an
                unreadable / invalid matrix file.
        """
        if isinstance(spec, NoiseSpec):
            return spec
        if not isinstance(spec, str):
            raise ValueError(f"noise spec must be a string, got {type(spec).__name__}")
        text = spec.strip()
        kind_text, sep, arg = text.partition(":")
        kind_text = kind_text.strip().lower()
        try:
            kind = NoiseKind(kind_text)
        except ValueError:
            raise ValueError(
                f"unknown noise kind {kind_text!r} in {spec!r}; known: {_KNOWN_SPECS}"
            ) from None
        if kind is NoiseKind.NONE:
            if sep and arg.strip() not in ("", "0", "0.0"):
                raise ValueError(f"noise kind 'none' takes no argument, got {spec!r}")
            return cls(NoiseKind.NONE)
        if kind is NoiseKind.MATRIX:
            path = arg.strip()
            if not path:
                raise ValueError("matrix noise needs a file: 'matrix:PATH'")
            matrix = read_transition_matrix(path)
            return cls(NoiseKind.MATRIX, path=path, matrix=_as_tuples(matrix))
        if not sep or not arg.strip():
            raise ValueError(f"noise kind {kind.value!r} needs a rate, e.g. '{kind.value}:0.4'")
        try:
            rate = float(arg)
        except ValueError:
            msg = f"noise rate must be a number in [0, 1), got {arg.strip()!r}"
            raise ValueError(msg) from None
        return cls(kind, rate)

    @classmethod
    def from_matrix(cls, matrix: Tensor | np.ndarray, path: str | None = None) -> NoiseSpec:
        """A ``matrix`` spec from an in-memory ``K x K`` transition matrix (rows = true class)."""
        array = np.asarray(
            matrix.detach().cpu().numpy() if isinstance(matrix, Tensor) else matrix,
            dtype=np.float64,
        )
        _validate_matrix(array)
        return cls(NoiseKind.MATRIX, path=path, matrix=_as_tuples(array))

    def __str__(self) -> str:
        if self.kind is NoiseKind.NONE:
            return "none"
        if self.kind is NoiseKind.MATRIX:
            return f"matrix:{self.path if self.path is not None else '<in-memory>'}"
        return f"{self.kind.value}:{self.rate!r}"


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """The result of :func:`apply_label_noise`.

    Attributes:
        labels: The noisy labels (a new int64 tensor; the input is never mutated).
        flipped: Boolean mask, ``labels != clean_labels``.
        realised_rate: ``flipped.mean()``, the fraction of labels actually changed.
        spec: The noise spec as a canonical string (e.g. ``"symmetric:0.4"``).
    """

    labels: Tensor
    flipped: Tensor
    realised_rate: float
    spec: str


def parse_noise_spec(spec: str | NoiseSpec) -> NoiseSpec:
    """Parse a noise spec string; see :meth:`NoiseSpec.parse`."""
    return NoiseSpec.parse(spec)


def read_transition_matrix(path: str | Path) -> np.ndarray:
    """Read a ``K x K`` transition matrix from ``.npy`` or whitespace/comma separated text.

    Raises:
        ValueError: The file is missing, unreadable, not square, negative, or a row does not
            sum to 1.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"transition-matrix file not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            matrix = np.load(path, allow_pickle=False)
        else:
            text = path.read_text()
            delimiter = "," if "," in text else None
            matrix = np.loadtxt(path, delimiter=delimiter, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read transition matrix {path}: {exc}") from None
    matrix = np.asarray(matrix, dtype=np.float64)
    _validate_matrix(matrix, source=str(path))
    return matrix


def transition_matrix(spec: NoiseSpec | str, num_classes: int) -> Tensor:
    """The expected ``K x K`` label transition matrix ``T[i, j] = P(noisy = j | clean = i)``.

    For the exact-count kinds (``symmetric``, ``pair``, ``asymmetric``) this is the
    expectation over the random choice of which labels flip, with ``round(r n) / n``
    approximated by ``r``:

    * none: ``I``;
    * symmetric: ``(1 - r) I + r / (K - 1) (11^T - I)``;
    * uniform: ``(1 - r) I + (r / K) 11^T``;
    * pair: ``(1 - r) I + r P`` with ``P[k, (k + 1) mod K] = 1``;
    * asymmetric: ``I`` except ``T[k, k] = 1 - r``, ``T[k, map[k]] = r`` for mapped ``k``;
    * matrix: the given matrix.

    Returns:
        A float64 tensor of shape ``(K, K)`` whose rows sum to 1.
    """
    spec = NoiseSpec.parse(spec)
    k = _check_num_classes(spec, num_classes)
    r = spec.rate
    eye = torch.eye(k, dtype=torch.float64)
    if spec.kind is NoiseKind.NONE:
        return eye
    if spec.kind is NoiseKind.SYMMETRIC:
        return (1 - r) * eye + r / (k - 1) * (1 - eye)
    if spec.kind is NoiseKind.UNIFORM:
        return (1 - r) * eye + r / k * torch.ones(k, k, dtype=torch.float64)
    if spec.kind is NoiseKind.PAIR:
        return (1 - r) * eye + r * torch.roll(eye, shifts=1, dims=1)
    if spec.kind is NoiseKind.ASYMMETRIC:
        t = eye.clone()
        for source, target in CIFAR10_ASYMMETRIC_MAP.items():
            t[source, source] = 1 - r
            t[source, target] = r
        return t
    return torch.tensor(spec.matrix, dtype=torch.float64)


def apply_label_noise(
    labels: Tensor,
    num_classes: int,
    spec: NoiseSpec | str,
    generator: torch.Generator,
) -> NoisyLabels:
    """Return noisy copies of ``labels`` under ``spec`` (definitions in the module docstring).

    Args:
        labels: Clean training labels, a 1-D integer tensor with values in ``[0, num_classes)``.
            Never mutated.
        num_classes: ``K``.
        spec: A :class:`NoiseSpec` or its string form.
        generator: A CPU ``torch.Generator``; the only source of randomness.

    Returns:
        :class:`NoisyLabels` with the new labels (int64, on ``labels``' device), the flip mask
        and the realised flip rate.

    Raises:
        ValueError: Bad spec, bad labels, or a kind that does not fit ``num_classes``.
    """
    spec = NoiseSpec.parse(spec)
    k = _check_num_classes(spec, num_classes)
    if not isinstance(labels, Tensor) or labels.ndim != 1:
        raise ValueError("labels must be a 1-D tensor")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("generator must be a CPU torch.Generator")
    device = labels.device
    clean = labels.detach().to("cpu", torch.int64)
    n = clean.numel()
    if n and (int(clean.min()) < 0 or int(clean.max()) >= k):
        raise ValueError(
            f"labels must lie in [0, {k}), got range [{int(clean.min())}, {int(clean.max())}]"
        )

    noisy = clean.clone()
    r = spec.rate
    if spec.kind in (NoiseKind.SYMMETRIC, NoiseKind.PAIR):
        chosen = torch.randperm(n, generator=generator)[: _round_half_up(r * n)]
        if spec.kind is NoiseKind.SYMMETRIC:
            # An offset in 1..K-1 is a uniformly chosen class other than the current one.
            offset = torch.randint(1, k, (chosen.numel(),), generator=generator)
        else:
            offset = torch.ones(chosen.numel(), dtype=torch.int64)
        noisy[chosen] = (clean[chosen] + offset) % k
    elif spec.kind is NoiseKind.UNIFORM:
        resample = torch.rand(n, generator=generator, dtype=torch.float64) < r
        drawn = torch.randint(0, k, (n,), generator=generator)
        noisy = torch.where(resample, drawn, clean)
    elif spec.kind is NoiseKind.ASYMMETRIC:
        for source in sorted(CIFAR10_ASYMMETRIC_MAP):
            members = torch.nonzero(clean == source).flatten()
            order = torch.randperm(members.numel(), generator=generator)
            chosen = members[order[: _round_half_up(r * members.numel())]]
            noisy[chosen] = CIFAR10_ASYMMETRIC_MAP[source]
    elif spec.kind is NoiseKind.MATRIX:
        cdf = torch.tensor(spec.matrix, dtype=torch.float64).cumsum(dim=1)
        cdf[:, -1] = 1.0  # rows sum to 1 up to rounding; never sample past the last class
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        noisy = torch.searchsorted(cdf[clean], u, right=True).flatten().clamp_(max=k - 1)

    flipped = noisy != clean
    rate = float(flipped.double().mean()) if n else 0.0
    return NoisyLabels(
        labels=noisy.to(device), flipped=flipped.to(device), realised_rate=rate, spec=str(spec)
    )


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _check_num_classes(spec: NoiseSpec, num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    k = int(num_classes)
    if k < 1 or (spec.kind is not NoiseKind.NONE and k < 2):
        raise ValueError(f"label noise {spec} needs at least 2 classes, got {k}")
    if spec.kind is NoiseKind.ASYMMETRIC and k != 10:
        raise ValueError(f"asymmetric noise uses the CIFAR-10 class map: needs 10 classes, got {k}")
    if spec.kind is NoiseKind.MATRIX and len(spec.matrix) != k:
        size = len(spec.matrix)
        raise ValueError(f"transition matrix is {size}x{size}, expected {k}x{k}")
    return k


def _validate_matrix(matrix: np.ndarray, source: str = "transition matrix") -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"{source}: expected a square K x K matrix (K >= 2), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError(f"{source}: entries must be finite and non-negative")
    sums = matrix.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _ROW_SUM_ATOL)
    if bad.size:
        raise ValueError(f"{source}: row {int(bad[0])} sums to {sums[bad[0]]:.6g}, not 1")


def _as_tuples(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in matrix)
