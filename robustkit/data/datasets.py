"""Image-classification data sets as in-memory tensors.

:func:`load_dataset` turns a spec string into an :class:`ArrayDataset`: float32 ``NCHW``
images normalised per channel with the *training* set's mean and standard deviation, int64
labels, the class names and the augmentation that suits the images.

Specs (see :data:`DATASETS`):

* ``digits`` (default) - scikit-learn's bundled 8x8 digits, 1797 images with values 0..16,
  split 1437 / 360 train / test, stratified by class with ``numpy.random.default_rng(0)``.
  Always available, no download.
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn`` - the standard files under
  ``data_dir`` in torchvision's layout; ``download=True`` fetches them with torchvision.
* ``npz:PATH`` - arrays ``x_train, y_train, x_test, y_test`` (and optionally ``classes``);
  images uint8 ``(N, H, W, C)`` / ``(N, H, W)`` scaled by 1/255, or float ``(N, C, H, W)`` /
  ``(N, H, W)`` taken as they are.
* ``imagefolder:PATH`` - ``PATH/train/<class>/*.png`` and ``PATH/test/<class>/*.png``; class
  indices follow the sorted class-folder names of ``train``.

Images are scaled to ``[0, 1]`` (uint8 / 255, digits / 16), then ``x <- (x - mean_c) / std_c``
with ``mean_c``, ``std_c`` the population mean and standard deviation of channel ``c`` over all
training pixels (a constant channel gets ``std_c = 1``). The test set is normalised with the
same training statistics.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robustkit.data.batches import Augment

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "ArrayDataset",
    "DatasetEntry",
    "DatasetError",
    "DatasetInfo",
    "DatasetSpec",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "parse_dataset_spec",
]

DEFAULT_DATASET = "digits"

#: Environment variable naming the default data directory.
DATA_DIR_ENV = "ROBUSTKIT_DATA_DIR"

# digits: test examples in the fixed stratified split (1797 = 1437 + 360).
_DIGITS_NUM_TEST = 360
# Examples per chunk when converting and normalising (bounds the float64 temporaries).
_CHUNK = 4096


class DatasetError(ValueError):
    """A data set cannot be loaded: unknown name, missing files or malformed arrays."""


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed data-set spec: a registry ``name`` and, for path kinds, the ``path``."""

    name: str
    path: Path | None = None

    def __str__(self) -> str:
        return self.name if self.path is None else f"{self.name}:{self.path}"


@dataclass(eq=False)
class ArrayDataset:
    """A whole data set in memory, normalised, ready for :class:`~robustkit.data.DeviceBatches`.

    Attributes:
        name: The spec it was loaded from.
        x_train: float32 ``(N_train, C, H, W)``, normalised with the training statistics.
        y_train: int64 ``(N_train,)`` clean labels in ``[0, num_classes)``.
        x_test: float32 ``(N_test, C, H, W)``, normalised with the training statistics.
        y_test: int64 ``(N_test,)``.
        num_classes: Number of classes ``K``.
        classes: Class names, ``len(classes) == num_classes``.
        augment: The training augmentation that suits these images.
        mean: Per-channel training mean, in ``[0, 1]`` pixel units, before normalisation.
        std: Per-channel training standard deviation, same units.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    classes: list[str]
    augment: Augment
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        """Channels ``C``."""
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        """Side length ``H = W`` in pixels (images are square; the loaders check it)."""
        return self.x_train.shape[2]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Training examples."""
        return self.x_train.shape[0]

    @property
    def num_test(self) -> int:
        """Test examples."""
        return self.x_test.shape[0]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"shape={self.image_shape}, num_classes={self.num_classes}, "
            f"augment={self.augment.value!r})"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the data-set listing. Sizes are ``None`` for the path kinds."""

    name: str
    description: str
    num_train: int | None
    num_test: int | None
    shape: tuple[int, int, int] | None
    num_classes: int | None
    available: bool | None


@dataclass(frozen=True)
class _Raw:
    """What a loader returns: images NCHW (uint8 or float) and labels as numpy arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] | None
    scale: float  # multiply the pixels by this to reach [0, 1]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set.

    Attributes:
        name: Registry name (the spec prefix for path kinds).
        description: One line for the listing.
        load: ``load(location, download) -> _Raw``; ``location`` is the data directory, or the
            spec's path for path kinds.
        takes_path: ``True`` for ``npz:PATH`` and ``imagefolder:PATH``.
        files: Files that must exist under the data directory (named sets only).
        num_train, num_test, shape, num_classes: Published sizes (named sets only).
        augment: The augmentation; ``None`` means decide from the image shape.
        download: ``download(data_dir)`` fetching the files with torchvision, if possible.
    """

    name: str
    description: str
    load: Callable[[Path, bool], _Raw]
    takes_path: bool = False
    files: tuple[str, ...] = ()
    num_train: int | None = None
    num_test: int | None = None
    shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    augment: Augment | None = None
    download: Callable[[Path], None] | None = None


def default_data_dir() -> Path:
    """``$ROBUSTKIT_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``name`` or ``kind:PATH``; names are case-insensitive, ``_`` may stand for ``-``.

    Raises:
        DatasetError: Unknown name, or a path kind without a path.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"data-set spec must be a non-empty string, got {spec!r}")
    head, sep, tail = spec.strip().partition(":")
    name = head.strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    entry = DATASETS.get(name)
    if entry is None:
        raise DatasetError(f"unknown data set {head.strip()!r}; known: {_known_names()}")
    if entry.takes_path:
        if not sep or not tail.strip():
            raise DatasetError(f"data set {name!r} needs a path: '{name}:PATH'")
        return DatasetSpec(name, Path(tail.strip()).expanduser())
    if sep:
        raise DatasetError(f"data set {name!r} takes no path, got {spec!r}")
    return DatasetSpec(name)


def load_dataset(
    spec: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
    download: bool = False,
) -> ArrayDataset:
    """Load a data set into memory, normalised with its training statistics.

    Args:
        spec: A registry name (``digits``, ``cifar10``, ...) or ``npz:PATH`` /
            ``imagefolder:PATH``. A relative PATH that does not exist is also looked up under
            ``data_dir``.
        data_dir: Where the named data sets' files live; default :func:`default_data_dir`.
        download: Fetch missing files of the named data sets with torchvision.

    Returns:
        The :class:`ArrayDataset`.

    Raises:
        DatasetError: Unknown spec, missing files (with where to put them), malformed arrays.
    """
    parsed = parse_dataset_spec(spec)
    entry = DATASETS[parsed.name]
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if entry.takes_path:
        location = parsed.path
        if not location.exists() and not location.is_absolute() and (root / location).exists():
            location = root / location
        raw = entry.load(location, download)
    else:
        if entry.files:
            _ensure_files(entry, root, download)
        try:
            raw = entry.load(root, download)
        except (KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise DatasetError(f"{entry.name}: malformed files in {root}: {exc!r}") from None
    return _finish(str(parsed), raw, entry)


def list_datasets(data_dir: str | Path | None = None) -> list[DatasetInfo]:
    """One :class:`DatasetInfo` per registry entry, with whether its files are present."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    rows = []
    for entry in DATASETS.values():
        available = None if entry.takes_path else all((root / f).is_file() for f in entry.files)
        rows.append(
            DatasetInfo(
                name=f"{entry.name}:PATH" if entry.takes_path else entry.name,
                description=entry.description,
                num_train=entry.num_train,
                num_test=entry.num_test,
                shape=entry.shape,
                num_classes=entry.num_classes,
                available=available,
            )
        )
    return rows


# --------------------------------------------------------------------------- finishing


def _finish(name: str, raw: _Raw, entry: DatasetEntry) -> ArrayDataset:
    """Validate, convert to float32 NCHW, normalise with the training statistics."""
    x_train, x_test = raw.x_train, raw.x_test
    y_train = _check_labels("y_train", raw.y_train, len(x_train))
    y_test = _check_labels("y_test", raw.y_test, len(x_test))
    if len(x_train) == 0:
        raise DatasetError(f"{name}: the training set is empty")
    if x_train.ndim != 4 or x_test.ndim != 4 or x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{name}: train and test images differ in shape: "
            f"{tuple(x_train.shape[1:])} vs {tuple(x_test.shape[1:])}"
        )
    _, c, h, w = x_train.shape
    if h != w:
        raise DatasetError(f"{name}: images must be square, got {h}x{w}")
    top = max(int(y_train.max()), int(y_test.max()) if len(y_test) else -1)
    if raw.classes is not None:
        classes = [str(s) for s in raw.classes]
        if top >= len(classes):
            raise DatasetError(
                f"{name}: label {top} out of range for {len(classes)} classes [0, {len(classes)})"
            )
    else:
        classes = [str(k) for k in range(top + 1)]
    mean, std = _channel_stats(x_train, raw.scale)
    if entry.augment is not None:
        augment = entry.augment
    else:
        augment = Augment.CROP_FLIP if c == 3 and h >= 32 else Augment.NONE
    return ArrayDataset(
        name=name,
        x_train=_normalise(x_train, raw.scale, mean, std),
        y_train=torch.from_numpy(y_train),
        x_test=_normalise(x_test, raw.scale, mean, std),
        y_test=torch.from_numpy(y_test),
        num_classes=len(classes),
        classes=classes,
        augment=augment,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


def _check_labels(what: str, y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DatasetError(f"{what} must have shape ({n},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{what} must be integer class indices, got dtype {y.dtype}")
    if n and int(y.min()) < 0:
        raise DatasetError(f"{what} has a negative label {int(y.min())}")
    return y.astype(np.int64)


def _channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel population mean and std over all training pixels, in float64.

    uint8 images use exact per-channel histograms; float images two chunked passes.
    """
    c = x.shape[1]
    mean, var = np.zeros(c), np.zeros(c)
    if x.dtype == np.uint8:
        values = np.arange(256, dtype=np.float64)
        for ch in range(c):
            hist = np.bincount(x[:, ch].reshape(-1), minlength=256).astype(np.float64)
            p = hist / hist.sum()
            mean[ch] = p @ values
            var[ch] = p @ (values - mean[ch]) ** 2
    else:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        for lo in range(0, len(x), _CHUNK):
            mean += x[lo : lo + _CHUNK].astype(np.float64).sum(axis=(0, 2, 3))
        mean /= count
        for lo in range(0, len(x), _CHUNK):
            d = x[lo : lo + _CHUNK].astype(np.float64) - mean[None, :, None, None]
            var += (d * d).sum(axis=(0, 2, 3))
        var /= count
    mean, std = mean * scale, np.sqrt(var) * scale
    std[std == 0] = 1.0  # a constant channel is left centred, not divided by zero
    return mean, std


def _normalise(x: np.ndarray, scale: float, mean: np.ndarray, std: np.ndarray) -> Tensor:
    """``(x * scale - mean) / std`` per channel, as float32, written chunk by chunk."""
    out = torch.empty(x.shape, dtype=torch.float32)
    a = torch.tensor(scale / std, dtype=torch.float32)[None, :, None, None]
    b = torch.tensor(mean / std, dtype=torch.float32)[None, :, None, None]
    for lo in range(0, len(x), _CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(x[lo : lo + _CHUNK]))
        torch.sub(chunk.to(torch.float32) * a, b, out=out[lo : lo + _CHUNK])
    return out


def _ensure_files(entry: DatasetEntry, root: Path, download: bool) -> None:
    missing = [f for f in entry.files if not (root / f).is_file()]
    if missing and download and entry.download is not None:
        try:
            entry.download(root)
        except Exception as exc:  # network / torchvision errors become one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetError(f"{entry.name}: download into {root} failed: {first}") from exc
        missing = [f for f in entry.files if not (root / f).is_file()]
    if missing:
        where = (root / missing[0]).parent
        raise DatasetError(
            f"{entry.name}: files not found in {where.resolve()} "
            f"(missing {', '.join(Path(f).name for f in missing)}); "
            f"put the {entry.description.split(' (')[0]} files there, or pass --download "
            f"(download=True)"
        )


def _known_names() -> str:
    return ", ".join(f"{n}:PATH" if e.takes_path else n for n, e in DATASETS.items())


# --------------------------------------------------------------------------- loaders


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits as ``(images (n, 8, 8) float64 0..16, labels int64)``.

    scikit-learn ships them as ``sklearn/datasets/data/digits.csv.gz``; that file is read
    directly when it is there, because importing ``sklearn.datasets`` costs about a second,
    paid by every worker process of a sweep. ``load_digits`` is the fallback (same values).
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", ndmin=2)
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def _load_digits(root: Path, download: bool) -> _Raw:
    images, labels = _digits_arrays()
    images = images[:, None]  # (1797, 1, 8, 8), 0..16
    train_idx, test_idx = _stratified_split(labels, _DIGITS_NUM_TEST, seed=0)
    return _Raw(
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_test=images[test_idx],
        y_test=labels[test_idx],
        classes=[str(k) for k in range(10)],
        scale=1.0 / 16.0,
    )


def _stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, ...]:
    """A fixed stratified split: per-class test quotas by largest remainder, members by rng.

    Class ``k`` with ``n_k`` members gives ``floor(num_test * n_k / n)`` test examples plus one
    for the classes with the largest remainders (ties to the smaller class index). Which
    members go to the test set is ``default_rng(seed).permutation`` of the class's indices,
    classes in increasing order with one generator. Both halves are returned sorted.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = num_test * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    short = num_test - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[:short]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    test = []
    for k, q in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == k)
        test.append(rng.permutation(members)[:q])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _unpickle(path: Path) -> dict:
    # The CIFAR python batches are pickles by definition (the documented format); they are read
    # from the user's own data directory, as torchvision does.
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _load_cifar10(root: Path, download: bool) -> _Raw:
    base = root / "cifar-10-batches-py"
    train = [_unpickle(base / f"data_batch_{i}") for i in range(1, 6)]
    test = _unpickle(base / "test_batch")
    meta = _unpickle(base / "batches.meta")
    return _Raw(
        x_train=np.concatenate([_cifar_images(b["data"]) for b in train]),
        y_train=np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in train]),
        x_test=_cifar_images(test["data"]),
        y_test=np.asarray(test["labels"], dtype=np.int64),
        classes=list(meta["label_names"]),
        scale=1.0 / 255.0,
    )


def _load_cifar100(root: Path, download: bool) -> _Raw:
    base = root / "cifar-100-python"
    train, test, meta = (_unpickle(base / f) for f in ("train", "test", "meta"))
    return _Raw(
        x_train=_cifar_images(train["data"]),
        y_train=np.asarray(train["fine_labels"], dtype=np.int64),
        x_test=_cifar_images(test["data"]),
        y_test=np.asarray(test["fine_labels"], dtype=np.int64),
        classes=list(meta["fine_label_names"]),
        scale=1.0 / 255.0,
    )


def _cifar_images(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data, dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32: already NCHW


def _mnist_loader(folder: str, classes: list[str]) -> Callable[[Path, bool], _Raw]:
    def load(root: Path, download: bool) -> _Raw:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        raw = root / folder / "raw"
        try:
            x_train = read_image_file(str(raw / "train-images-idx3-ubyte")).numpy()
            y_train = read_label_file(str(raw / "train-labels-idx1-ubyte")).numpy()
            x_test = read_image_file(str(raw / "t10k-images-idx3-ubyte")).numpy()
            y_test = read_label_file(str(raw / "t10k-labels-idx1-ubyte")).numpy()
        except (AssertionError, ValueError, RuntimeError) as exc:
            raise DatasetError(f"{folder}: malformed IDX file in {raw}: {exc}") from None
        return _Raw(
            x_train=x_train[:, None],
            y_train=y_train.astype(np.int64),
            x_test=x_test[:, None],
            y_test=y_test.astype(np.int64),
            classes=classes,
            scale=1.0 / 255.0,
        )

    return load


def _load_svhn(root: Path, download: bool) -> _Raw:
    from scipy.io import loadmat

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(root / name)
        x = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1))  # HWCN -> NCHW
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
        return x, np.where(y == 10, 0, y)  # SVHN stores the digit 0 as label 10

    x_train, y_train = split("train_32x32.mat")
    x_test, y_test = split("test_32x32.mat")
    return _Raw(x_train, y_train, x_test, y_test, [str(k) for k in range(10)], 1.0 / 255.0)


def _load_npz(path: Path, download: bool) -> _Raw:
    if not path.is_file():
        raise DatasetError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot read npz file {path}: {first}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing arrays {', '.join(missing)} (have {sorted(arrays)})")
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.dtype != x_test.dtype:
        raise DatasetError(f"{path}: x_train is {x_train.dtype} but x_test is {x_test.dtype}")
    if x_train.dtype == np.uint8:
        x_train, x_test = _hwc_to_chw(path, x_train), _hwc_to_chw(path, x_test)
        scale = 1.0 / 255.0
    elif np.issubdtype(x_train.dtype, np.floating):
        x_train, x_test = _float_to_nchw(path, x_train), _float_to_nchw(path, x_test)
        scale = 1.0
    else:
        raise DatasetError(
            f"{path}: images must be uint8 (N,H,W[,C]) or float (N,C,H,W), got {x_train.dtype}"
        )
    classes = None
    if "classes" in arrays:
        classes = [str(s) for s in np.asarray(arrays["classes"]).reshape(-1)]
    return _Raw(x_train, arrays["y_train"], x_test, arrays["y_test"], classes, scale)


def _hwc_to_chw(path: Path, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return np.transpose(x, (0, 3, 1, 2))
    raise DatasetError(f"{path}: uint8 images must be (N,H,W) or (N,H,W,C), got {x.shape}")


def _float_to_nchw(path: Path, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise DatasetError(f"{path}: float images must be (N,C,H,W) or (N,H,W), got {x.shape}")


def _load_imagefolder(path: Path, download: bool) -> _Raw:
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    train_dir, test_dir = path / "train", path / "test"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DatasetError(f"image folder {path} needs train/ and test/ subfolders: no {d}")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise DatasetError(f"{train_dir} has no class folders")
    test_classes = sorted(e.name for e in os.scandir(test_dir) if e.is_dir())
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise DatasetError(f"{test_dir} has classes not in train/: {', '.join(unknown)}")

    def files(split: Path) -> list[tuple[Path, int]]:
        out = []
        for k, name in enumerate(classes):
            folder = split / name
            if folder.is_dir():
                out += [
                    (p, k)
                    for p in sorted(folder.iterdir())
                    if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                ]
        return out

    train_files, test_files = files(train_dir), files(test_dir)
    if not train_files:
        raise DatasetError(f"{train_dir} has no images ({', '.join(IMG_EXTENSIONS)})")
    images: dict[Path, Image.Image] = {}
    for p, _ in train_files + test_files:
        try:
            with Image.open(p) as img:
                img.load()
                images[p] = img.copy()
        except OSError as exc:
            raise DatasetError(f"cannot read image {p}: {exc}") from None
    gray = all(img.mode in ("L", "1") for img in images.values())
    mode = "L" if gray else "RGB"
    size = images[train_files[0][0]].size

    def stack(items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        arrays = []
        for p, _ in items:
            img = images[p]
            if img.size != size:
                raise DatasetError(f"{p}: image is {img.size[0]}x{img.size[1]}, others {size}")
            arrays.append(np.asarray(img.convert(mode), dtype=np.uint8))
        h, w = size[1], size[0]
        shape = (0, h, w) if gray else (0, h, w, 3)
        x = np.stack(arrays) if arrays else np.zeros(shape, dtype=np.uint8)
        return _hwc_to_chw(path, x), np.asarray([k for _, k in items], dtype=np.int64)

    x_train, y_train = stack(train_files)
    x_test, y_test = stack(test_files)
    return _Raw(x_train, y_train, x_test, y_test, classes, 1.0 / 255.0)


def _torchvision_download(cls_name: str, **kwargs) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        if cls_name == "SVHN":
            for split in ("train", "test"):
                cls(root=str(root), split=split, download=True, **kwargs)
        else:
            for train in (True, False):
                cls(root=str(root), train=train, download=True, **kwargs)

    return download


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

#: The registry: name -> :class:`DatasetEntry`. One contract test covers every entry.
DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(
        name="digits",
        description="scikit-learn 8x8 handwritten digits (bundled, fixed stratified split)",
        load=_load_digits,
        num_train=1797 - _DIGITS_NUM_TEST,
        num_test=_DIGITS_NUM_TEST,
        shape=(1, 8, 8),
        num_classes=10,
        augment=Augment.NONE,
    ),
    "cifar10": DatasetEntry(
        name="cifar10",
        description="CIFAR-10 (python version)",
        load=_load_cifar10,
        files=tuple(
            f"cifar-10-batches-py/{f}"
            for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
        ),
        num_train=50000,
        num_test=10000,
        shape=(3, 32, 32),
        num_classes=10,
        augment=Augment.CROP_FLIP,
        download=_torchvision_download("CIFAR10"),
    ),
    "cifar100": DatasetEntry(
        name="cifar100",
        description="CIFAR-100 (python version, fine labels)",
        load=_load_cifar100,
        files=tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
        num_train=50000,
        num_test=10000,
        shape=(3, 32, 32),
        num_classes=100,
        augment=Augment.CROP_FLIP,
        download=_torchvision_download("CIFAR100"),
    ),
    "mnist": DatasetEntry(
        name="mnist",
        description="MNIST (IDX files, torchvision layout)",
        load=_mnist_loader("MNIST", [str(k) for k in range(10)]),
        files=tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
        num_train=60000,
        num_test=10000,
        shape=(1, 28, 28),
        num_classes=10,
        augment=Augment.NONE,
        download=_torchvision_download("MNIST"),
    ),
    "fashion-mnist": DatasetEntry(
        name="fashion-mnist",
        description="Fashion-MNIST (IDX files, torchvision layout)",
        load=_mnist_loader("FashionMNIST", _FASHION_CLASSES),
        files=tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
        num_train=60000,
        num_test=10000,
        shape=(1, 28, 28),
        num_classes=10,
        augment=Augment.NONE,
        download=_torchvision_download("FashionMNIST"),
    ),
    "svhn": DatasetEntry(
        name="svhn",
        description="SVHN cropped digits (.mat files; extra split not used)",
        load=_load_svhn,
        files=("train_32x32.mat", "test_32x32.mat"),
        num_train=73257,
        num_test=26032,
        shape=(3, 32, 32),
        num_classes=10,
        augment=Augment.CROP,
        download=_torchvision_download("SVHN"),
    ),
    "npz": DatasetEntry(
        name="npz",
        description="arrays x_train, y_train, x_test, y_test [, classes] in an .npz file",
        load=_load_npz,
        takes_path=True,
    ),
    "imagefolder": DatasetEntry(
        name="imagefolder",
        description="PATH/train/<class>/*.png and PATH/test/<class>/*.png",
        load=_load_imagefolder,
        takes_path=True,
    ),
}

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}
