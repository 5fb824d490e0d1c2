"""Data: in-memory data sets, on-device batching and label noise.

* :mod:`robustkit.data.datasets` - the data-set registry and :func:`load_dataset`.
* :mod:`robustkit.data.batches` - :class:`DeviceBatches` and the vectorised augmentations.
* :mod:`robustkit.data.noise` - label-noise models (pure functions over label tensors).
"""

from __future__ import annotations

from robustkit.data.batches import Augment, DeviceBatches, crop_flip
from robustkit.data.datasets import (
    DATASETS,
    DEFAULT_DATASET,
    ArrayDataset,
    DatasetError,
    DatasetInfo,
    DatasetSpec,
    default_data_dir,
    list_datasets,
    load_dataset,
    parse_dataset_spec,
)
from robustkit.data.noise import (
    NoiseKind,
    NoiseSpec,
    NoisyLabels,
    apply_label_noise,
    parse_noise_spec,
    transition_matrix,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "ArrayDataset",
    "Augment",
    "DatasetError",
    "DatasetInfo",
    "DatasetSpec",
    "DeviceBatches",
    "NoiseKind",
    "NoiseSpec",
    "NoisyLabels",
    "apply_label_noise",
    "crop_flip",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "parse_dataset_spec",
    "parse_noise_spec",
    "transition_matrix",
]
