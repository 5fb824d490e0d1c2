"""Data sets (tiny files written to tmp_path, never downloads) and on-device batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robustkit.data import (
    DATASETS,
    Augment,
    DatasetError,
    DeviceBatches,
    crop_flip,
    list_datasets,
    load_dataset,
    parse_dataset_spec,
)
from robustkit.data.datasets import _stratified_split
from tests.tolerances import ATOL_F32, RTOL_F32

# Normalised float32 statistics over a few thousand pixels.
ATOL_STATS = 1e-5


def _denormalise(ds, x: torch.Tensor) -> np.ndarray:
    """Back to [0, 1] pixel units, in float64."""
    mean = np.asarray(ds.mean)[None, :, None, None]
    std = np.asarray(ds.std)[None, :, None, None]
    return x.double().numpy() * std + mean


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


# --------------------------------------------------------------------------- specs


def test_parse_dataset_spec(tmp_path):
    assert parse_dataset_spec("digits").name == "digits"
    assert parse_dataset_spec("CIFAR10").name == "cifar10"
    assert parse_dataset_spec("fashion_mnist").name == "fashion-mnist"
    spec = parse_dataset_spec(f"npz:{tmp_path}/a.npz")
    assert spec.name == "npz" and spec.path == tmp_path / "a.npz"
    for bad, message in [
        ("imagenet", "known: digits, cifar10"),
        ("npz", "needs a path"),
        ("npz:", "needs a path"),
        ("digits:foo", "takes no path"),
        ("", "non-empty"),
    ]:
        with pytest.raises(DatasetError, match=message) as exc:
            parse_dataset_spec(bad)
        _one_line(exc)


def test_registry_contract():
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.description
        if entry.takes_path:
            continue
        assert entry.num_train and entry.num_test and entry.num_classes
        assert entry.shape is not None and entry.shape[1] == entry.shape[2]
        assert entry.augment is not None
        if name != "digits":
            assert entry.files and entry.download is not None
    assert DATASETS["cifar10"].augment is Augment.CROP_FLIP
    assert DATASETS["svhn"].augment is Augment.CROP
    assert DATASETS["mnist"].augment is Augment.NONE


# --------------------------------------------------------------------------- digits


def test_digits_sizes_normalisation_and_split():
    ds = load_dataset("digits")
    assert (ds.num_train, ds.num_test) == (1437, 360)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (1, 8, 10)
    assert ds.classes == [str(k) for k in range(10)] and ds.augment is Augment.NONE
    # Normalised with the training statistics: train mean 0, std 1 per channel.
    assert abs(ds.x_train.double().mean().item()) < ATOL_STATS
    assert abs(ds.x_train.double().std(unbiased=False).item() - 1) < ATOL_STATS
    # Undoing the normalisation gives the original integer pixel values 0..16.
    pixels = _denormalise(ds, ds.x_train) * 16
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-4)
    assert pixels.min() > -1e-4 and pixels.max() < 16 + 1e-4
    # Stratified: every class has within one of its 20 % share in the test set.
    train_counts = torch.bincount(ds.y_train, minlength=10)
    test_counts = torch.bincount(ds.y_test, minlength=10)
    share = 360 * (train_counts + test_counts).double() / 1797
    assert ((test_counts - share).abs() < 1).all()
    # Deterministic: a second load is identical.
    again = load_dataset("digits")
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)


def test_digits_fast_path_equals_sklearn_load_digits():
    from sklearn.datasets import load_digits

    from robustkit.data.datasets import _digits_arrays

    images, labels = _digits_arrays()
    bunch = load_digits()
    assert images.dtype == np.float64 and labels.dtype == np.int64
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)


def test_digits_falls_back_to_load_digits_without_the_csv(monkeypatch):
    import importlib.util

    from robustkit.data.datasets import _digits_arrays

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, labels = _digits_arrays()
    assert images.shape == (1797, 8, 8) and labels[:10].tolist() == list(range(10))


def test_stratified_split_is_pinned():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train_idx, test_idx = _stratified_split(labels, 360, seed=0)
    assert len(test_idx) == 360 and len(train_idx) == 1437
    assert not set(train_idx) & set(test_idx)
    assert sorted([*train_idx, *test_idx]) == list(range(1797))
    # numpy's PCG64 permutation is stable; a change would silently change every digits result.
    assert test_idx[:8].tolist() == [5, 9, 12, 14, 16, 17, 19, 23]
    assert int(test_idx.sum()) == 326571


# --------------------------------------------------------------------------- npz


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_uint8_hwc(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    path = _write_npz(
        tmp_path / "d.npz",
        x_train=x_train,
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=x_test,
        y_test=np.array([2, 0]),
        classes=np.array(["a", "b", "c"]),
    )
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.shape == (6, 3, 4, 4) and ds.classes == ["a", "b", "c"]
    assert ds.augment is Augment.NONE  # 4 px: too small to crop
    ref = x_train.transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(ds.mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ds.std, ref.std(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(_denormalise(ds, ds.x_train), ref, atol=1e-6)
    np.testing.assert_allclose(
        _denormalise(ds, ds.x_test), x_test.transpose(0, 3, 1, 2) / 255.0, atol=1e-6
    )
    assert ds.y_test.tolist() == [2, 0]


def test_npz_grayscale_and_float_nchw(tmp_path):
    rng = np.random.default_rng(1)
    gray = _write_npz(
        tmp_path / "g.npz",
        x_train=rng.integers(0, 256, (5, 6, 6), dtype=np.uint8),
        y_train=np.array([0, 1, 0, 1, 3]),
        x_test=rng.integers(0, 256, (3, 6, 6), dtype=np.uint8),
        y_test=np.array([1, 1, 0]),
    )
    ds = load_dataset(f"npz:{gray}")
    assert ds.x_train.shape == (5, 1, 6, 6)
    assert ds.num_classes == 4 and ds.classes == ["0", "1", "2", "3"]  # max label + 1

    x_train = rng.normal(2.0, 3.0, (8, 3, 32, 32)).astype(np.float32)
    x_test = rng.normal(2.0, 3.0, (2, 3, 32, 32)).astype(np.float32)
    floats = _write_npz(
        tmp_path / "f.npz",
        x_train=x_train,
        y_train=np.arange(8) % 2,
        x_test=x_test,
        y_test=np.array([0, 1]),
    )
    ds = load_dataset(f"npz:{floats}")
    assert ds.x_train.shape == (8, 3, 32, 32) and ds.augment is Augment.CROP_FLIP
    torch.testing.assert_close(
        ds.x_train.double().mean(dim=(0, 2, 3)),
        torch.zeros(3, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    np.testing.assert_allclose(_denormalise(ds, ds.x_test), x_test, rtol=RTOL_F32, atol=1e-5)


def test_npz_relative_path_under_data_dir(tmp_path):
    _write_npz(
        tmp_path / "rel.npz",
        x_train=np.zeros((2, 3, 3), dtype=np.uint8),
        y_train=np.array([0, 1]),
        x_test=np.zeros((1, 3, 3), dtype=np.uint8),
        y_test=np.array([1]),
    )
    ds = load_dataset("npz:rel.npz", data_dir=tmp_path)
    assert ds.num_train == 2
    assert ds.std == (1.0,)  # a constant channel is centred, not divided by zero


def _valid_arrays():
    return dict(
        x_train=np.zeros((4, 3, 3), dtype=np.uint8),
        y_train=np.array([0, 1, 0, 1]),
        x_test=np.zeros((2, 3, 3), dtype=np.uint8),
        y_test=np.array([0, 1]),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_test": None}, "missing arrays x_test"),
        ({"y_train": np.array([0, 1, 0])}, r"y_train must have shape \(4,\)"),
        ({"y_test": np.array([0, 2]), "classes": np.array(["a", "b"])}, "label 2 out of range"),
        ({"y_train": np.array([0, -1, 0, 1])}, "negative label"),
        ({"y_train": np.array([0.0, 1.0, 0.0, 1.0])}, "integer class indices"),
        ({"x_train": np.zeros((4, 3), dtype=np.uint8)}, "uint8 images must be"),
        ({"x_train": np.zeros((4, 3, 3), dtype=np.int32)}, "x_train is int32"),
        ({"x_test": np.zeros((2, 4, 4), dtype=np.uint8)}, "differ in shape"),
        (
            {
                "x_train": np.zeros((4, 3, 5), dtype=np.uint8),
                "x_test": np.zeros((2, 3, 5), dtype=np.uint8),
            },
            "square",
        ),
    ],
)
def test_npz_errors(change, message, tmp_path):
    arrays = _valid_arrays()
    arrays.update(change)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message) as exc:
        load_dataset(f"npz:{path}")
    _one_line(exc)


def test_missing_npz_file(tmp_path):
    with pytest.raises(DatasetError, match="not found") as exc:
        load_dataset(f"npz:{tmp_path}/nope.npz")
    _one_line(exc)


# --------------------------------------------------------------------------- imagefolder


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    images = {}
    for split, count in (("train", 2), ("test", 1)):
        for cls in ("dog", "cat"):
            for i in range(count):
                a = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
                images[(split, cls, i)] = a
                _write_png(tmp_path / split / cls / f"{i}.png", a)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ["cat", "dog"]  # sorted folder names
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]
    assert ds.x_train.shape == (4, 3, 5, 5)
    expected = np.stack([images[("train", c, i)] for c in ("cat", "dog") for i in range(2)])
    np.testing.assert_allclose(
        _denormalise(ds, ds.x_train), expected.transpose(0, 3, 1, 2) / 255.0, atol=1e-6
    )


def test_imagefolder_grayscale(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _write_png(tmp_path / split / cls / "0.png", np.full((4, 4), 10, dtype=np.uint8))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.x_train.shape == (2, 1, 4, 4) and ds.augment is Augment.NONE


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train/a/0.png": 4}, "needs train/ and test/"),
        ({"train/a/0.png": 4, "test/z/0.png": 4}, "classes not in train/: z"),
        ({"train/a/0.png": 4, "train/a/1.png": 5, "test/a/0.png": 4}, "image is 5x5"),
    ],
)
def test_imagefolder_errors(layout, message, tmp_path):
    for rel, size in layout.items():
        _write_png(tmp_path / rel, np.zeros((size, size, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=message) as exc:
        load_dataset(f"imagefolder:{tmp_path}")
    _one_line(exc)


# --------------------------------------------------------------------------- named sets


def test_missing_cifar10_names_the_path_and_download(tmp_path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = _one_line(exc)
    assert str((tmp_path / "cifar-10-batches-py").resolve()) in msg
    assert "--download" in msg and "data_batch_1" in msg


def test_download_is_called_only_when_asked_and_errors_are_one_line(tmp_path, monkeypatch):
    import dataclasses

    from robustkit.data import datasets as datasets_module

    calls = []

    def fake_download(root):  # stands in for torchvision: writes the standard files
        calls.append(root)
        _write_fake_cifar10(root)

    entry = dataclasses.replace(DATASETS["cifar10"], download=fake_download)
    monkeypatch.setitem(datasets_module.DATASETS, "cifar10", entry)
    with pytest.raises(DatasetError):
        load_dataset("cifar10", data_dir=tmp_path)
    assert calls == []
    assert load_dataset("cifar10", data_dir=tmp_path, download=True).num_train == 10
    assert calls == [tmp_path]

    def failing_download(root):
        raise OSError("no route to host\nsecond line")

    entry = dataclasses.replace(DATASETS["cifar10"], download=failing_download)
    monkeypatch.setitem(datasets_module.DATASETS, "cifar10", entry)
    with pytest.raises(DatasetError, match=r"download into .* failed: no route to host") as exc:
        load_dataset("cifar10", data_dir=tmp_path / "empty", download=True)
    _one_line(exc)


def test_unknown_dataset_lists_known():
    with pytest.raises(DatasetError, match="known: digits, cifar10, cifar100") as exc:
        load_dataset("imagenet")
    _one_line(exc)


def _cifar_rows(rng, n):
    """n CIFAR rows: 3072 bytes = R plane, G plane, B plane of 32x32 each."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


_CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _write_fake_cifar10(root):
    """A tiny CIFAR-10 python-version directory: 5 train batches of 2, a test batch of 3."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows, labels = _cifar_rows(rng, 2), [i % 10, (i + 5) % 10]
        _pickle(base / f"data_batch_{i}", {"data": rows, "labels": labels})
        train_rows.append(rows)
        train_labels += labels
    _pickle(base / "test_batch", {"data": _cifar_rows(rng, 3), "labels": [9, 0, 4]})
    _pickle(base / "batches.meta", {"label_names": _CIFAR10_NAMES})
    return np.concatenate(train_rows), train_labels


def test_fake_cifar10_directory(tmp_path):
    assert {i.name: i.available for i in list_datasets(tmp_path)}["cifar10"] is False
    train_rows, train_labels = _write_fake_cifar10(tmp_path)
    assert {i.name: i.available for i in list_datasets(tmp_path)}["cifar10"] is True
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == train_labels and ds.y_test.tolist() == [9, 0, 4]
    assert ds.classes == _CIFAR10_NAMES and ds.augment is Augment.CROP_FLIP
    # Row layout: the first 1024 bytes are the red plane, row-major.
    red = train_rows[:, :1024].reshape(-1, 32, 32) / 255.0
    np.testing.assert_allclose(_denormalise(ds, ds.x_train)[:, 0], red, atol=1e-6)


def test_fake_cifar100_directory(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-100-python"
    _pickle(base / "train", {"data": _cifar_rows(rng, 4), "fine_labels": [0, 99, 5, 5]})
    _pickle(base / "test", {"data": _cifar_rows(rng, 2), "fine_labels": [99, 0]})
    _pickle(base / "meta", {"fine_label_names": [f"c{k}" for k in range(100)]})
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.y_train.tolist() == [0, 99, 5, 5]


def _write_idx(path, array):
    """IDX format: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fake_mnist_directory(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    x_train = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", x_train)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1]))
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([5, 9]))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (4, 1, 28, 28) and ds.y_train.tolist() == [3, 1, 4, 1]
    assert ds.num_classes == 10 and ds.augment is Augment.NONE
    np.testing.assert_allclose(_denormalise(ds, ds.x_train)[:, 0], x_train / 255.0, atol=1e-6)
    with pytest.raises(DatasetError, match="FashionMNIST"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fake_svhn_directory(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 3), dtype=np.uint8)  # SVHN stores (H, W, C, N)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [9]])})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[2], [10]])})
    ds = load_dataset("svhn", data_dir=tmp_path)
    assert ds.y_train.tolist() == [0, 1, 9] and ds.y_test.tolist() == [2, 0]  # 10 means digit 0
    assert ds.augment is Augment.CROP
    np.testing.assert_allclose(
        _denormalise(ds, ds.x_train), x.transpose(3, 2, 0, 1) / 255.0, atol=1e-6
    )


# --------------------------------------------------------------------------- batches


def _images(n=10, c=2, h=6, w=6, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _crop_flip_reference(x, offsets, flip, padding):
    """One image at a time with slicing and torch.flip: the oracle for crop_flip."""
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[2:]
    out = []
    for b in range(x.shape[0]):
        oy, ox = offsets[b].tolist()
        img = padded[b, :, oy : oy + h, ox : ox + w]
        out.append(img.flip(-1) if flip[b] else img)
    return torch.stack(out)


def test_crop_flip_matches_reference(generator):
    x = _images(n=16, h=5, w=7)
    offsets = torch.randint(0, 9, (16, 2), generator=generator)
    flip = torch.randint(0, 2, (16,), generator=generator).bool()
    expected = _crop_flip_reference(x, offsets, flip, 4)
    assert torch.equal(crop_flip(x, offsets, flip, padding=4), expected)


def test_crop_flip_zero_shift_is_identity_or_exact_flip():
    x = _images()
    centre = torch.full((10, 2), 4)
    assert torch.equal(crop_flip(x, centre, None), x)
    flipped = crop_flip(x, centre, torch.ones(10, dtype=torch.bool))
    assert torch.equal(flipped, x.flip(-1))
    # Offset (0, 0): the image moves down-right by 4 px, the border is zero padding.
    shifted = crop_flip(x, torch.zeros(10, 2, dtype=torch.long), None)
    assert torch.equal(shifted[:, :, 4:, 4:], x[:, :, :-4, :-4])
    assert (shifted[:, :, :4] == 0).all() and (shifted[:, :, :, :4] == 0).all()


@pytest.mark.parametrize(("drop_last", "num_batches"), [(False, 4), (True, 3)])
def test_batches_cover_every_index_once(drop_last, num_batches, generator):
    x, y = _images(n=10), torch.arange(10) % 3
    batches = DeviceBatches(x, y, 3, shuffle=True, drop_last=drop_last, generator=generator)
    assert len(batches) == num_batches
    seen = []
    for xb, yb, idx in batches:
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])
        seen += idx.tolist()
    assert len(seen) == len(set(seen)) == (9 if drop_last else 10)
    assert seen != sorted(seen)  # shuffled


def test_unshuffled_batches_are_in_order_and_need_no_generator():
    x, y = _images(n=5), torch.arange(5)
    batches = DeviceBatches(x, y, 2)
    assert [idx.tolist() for _, _, idx in batches] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="Generator is required"):
        DeviceBatches(x, y, 2, shuffle=True)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(x, y, 0)


def _epoch(batches):
    return [tuple(t.clone() for t in batch) for batch in batches]


def _same(a, b):
    return len(a) == len(b) and all(
        all(torch.equal(u, v) for u, v in zip(p, q, strict=True)) for p, q in zip(a, b, strict=True)
    )


def test_same_seed_same_batches_and_exact_resume():
    x, y = _images(n=11, h=8, w=8), torch.arange(11)

    def make(seed):
        g = torch.Generator().manual_seed(seed)
        return DeviceBatches(x, y, 4, shuffle=True, augment="crop-flip", generator=g)

    a, b = make(3), make(3)
    first_a, first_b = _epoch(a), _epoch(b)
    assert _same(first_a, first_b)
    assert not _same(first_a, _epoch(make(4)))

    state = a.generator.get_state()  # what the trainer checkpoints between epochs
    second = _epoch(a)
    assert not _same(first_a, second)
    resumed = make(999)
    resumed.generator.set_state(state)
    assert _same(_epoch(resumed), second)

    # Mid-epoch resume: same epoch-start state, skip the batches already done.
    resumed.generator.set_state(state)
    assert _same(_epoch(resumed.epoch(start_batch=2)), second[2:])


@pytest.mark.parametrize("augment", ["crop", "crop-flip"])
def test_augmented_batches_are_crops_of_their_originals(augment, generator):
    x, y = _images(n=12, c=1, h=5, w=5), torch.arange(12)
    batches = DeviceBatches(x, y, 5, shuffle=True, augment=augment, generator=generator)
    grid = torch.cartesian_prod(torch.arange(9), torch.arange(9))  # all 81 offsets
    seen_flip = False
    for xb, _, idx in batches:
        assert xb.shape == (len(idx), 1, 5, 5)
        for img, i in zip(xb, idx.tolist(), strict=True):
            originals = x[i : i + 1].expand(81, -1, -1, -1)
            plain = crop_flip(originals, grid, None)
            mirrored = crop_flip(originals, grid, torch.ones(81, dtype=torch.bool))
            is_plain = (plain == img).flatten(1).all(1).any().item()
            is_mirror = (mirrored == img).flatten(1).all(1).any().item()
            assert is_plain or is_mirror
            if augment == "crop":
                assert is_plain
            seen_flip |= is_mirror and not is_plain
    assert seen_flip == (augment == "crop-flip")


@pytest.mark.gpu
def test_batches_on_cuda_match_cpu():
    x, y = _images(n=20, c=3, h=8, w=8), torch.arange(20)
    cpu = DeviceBatches(
        x, y, 6, shuffle=True, augment="crop-flip", generator=torch.Generator().manual_seed(0)
    )
    gpu = DeviceBatches(
        x,
        y,
        6,
        shuffle=True,
        augment="crop-flip",
        device="cuda",
        generator=torch.Generator().manual_seed(0),
    )
    for (xc, yc, ic), (xg, yg, ig) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda and ig.is_cuda
        torch.testing.assert_close(xg.cpu(), xc, rtol=RTOL_F32, atol=ATOL_F32)
        assert torch.equal(yg.cpu(), yc) and torch.equal(ig.cpu(), ic)


# --------------------------------------------------------------------------- CLI


def test_datasets_command(tmp_path):
    from robustkit.cli import main

    result = CliRunner().invoke(main, ["datasets", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split(" | ")[0].strip() == "name" and "local?" in lines[0]
    digits = next(line for line in lines if line.startswith("digits "))
    assert "1437" in digits and "360" in digits and "1x8x8" in digits and digits.endswith("yes")
    cifar = next(line for line in lines if line.startswith("cifar10 "))
    assert cifar.endswith("no")
    help_result = CliRunner().invoke(main, ["datasets", "--help"])
    assert help_result.exit_code == 0 and "--data-dir" in help_result.output


def test_seeded_subset_is_deterministic_sorted_and_complete_when_asked_for_all():
    from robustkit.data.subsets import seeded_subset

    x = torch.arange(20.0)[:, None]
    y = torch.arange(20)
    xs, ys, text = seeded_subset(x, y, 5, seed=3)
    xs2, ys2, _ = seeded_subset(x, y, 5, seed=3)
    assert torch.equal(ys, ys2) and torch.equal(xs, xs2)
    assert torch.equal(ys, ys.sort().values) and len(set(ys.tolist())) == 5
    assert torch.equal(xs[:, 0].long(), ys)
    expected = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:5].sort().values
    assert torch.equal(ys, expected)
    assert text == "5 of 20, uniform without replacement, seed 3"
    _, y_all, text_all = seeded_subset(x, y, None, seed=0)
    assert torch.equal(y_all, y) and text_all == "all 20"
    assert seeded_subset(x, y, 50, seed=0)[2] == "all 20"
