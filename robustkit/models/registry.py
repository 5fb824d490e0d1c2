"""Model registry: a name for every architecture, one builder signature for all of them.

Every builder takes ``in_channels``, ``num_classes`` and ``image_size`` as keywords and returns
a freshly initialised ``nn.Module`` that maps ``(batch, in_channels, image_size, image_size)``
to ``(batch, num_classes)`` logits. Checkpoints store :func:`model_spec`, a plain JSON-able
dict, and rebuild the network with ``build_model(**spec)``.

Conventions every entry keeps (the contract test checks them): parameters live only in
``nn.Conv2d``, ``nn.Linear`` and ``nn.BatchNorm2d`` modules, and every parameter name ends in
``weight`` or ``bias``, so optimisers can exempt biases and BatchNorm from weight decay.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from robustkit.models import resnet, resnet_cifar, small, vgg, wrn

ModelBuilder = Callable[..., nn.Module]
"""``builder(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module``."""

# The shape :func:`list_models` counts parameters for: CIFAR-10.
REFERENCE_SHAPE: dict[str, int] = {"in_channels": 3, "num_classes": 10, "image_size": 32}
# Smallest image side the convolutional entries are tested with (the 8x8 digits).
MIN_CONV_IMAGE_SIZE = 8


class ModelFamily(str, Enum):
    """Architecture families of the registered models."""

    MLP = "mlp"
    SMALL_CNN = "small-cnn"
    RESNET_CIFAR = "resnet-cifar"
    RESNET = "resnet"
    WIDE_RESNET = "wide-resnet"
    VGG = "vgg"
    OTHER = "other"


@dataclass(frozen=True)
class ModelInfo:
    """What ``robustkit models`` shows for one registry entry.

    Attributes:
        name: Registry name, the ``name`` argument of :func:`build_model`.
        family: Architecture family.
        description: One line: what the model is and where it comes from.
        num_parameters: Trainable parameters at the CIFAR-10 shape (3x32x32, 10 classes).
    """

    name: str
    family: ModelFamily
    description: str
    num_parameters: int


@dataclass(frozen=True)
class _Entry:
    builder: ModelBuilder
    family: ModelFamily
    description: str
    min_image_size: int = MIN_CONV_IMAGE_SIZE


_ENTRIES: dict[str, _Entry] = {
    "mlp": _Entry(
        small.mlp,
        ModelFamily.MLP,
        "MLP: flatten, two hidden layers of 256 ReLU units",
        min_image_size=1,
    ),
    "cnn": _Entry(
        small.cnn,
        ModelFamily.SMALL_CNN,
        "Small CNN: conv 32-64-64 with BatchNorm, two max-pools; trains 8x8 digits on CPU",
    ),
    **{
        f"resnet{depth}": _Entry(
            getattr(resnet_cifar, f"resnet{depth}"),
            ModelFamily.RESNET_CIFAR,
            f"ResNet-{depth} for CIFAR, option-A shortcuts (He et al. 2016)",
        )
        for depth in (20, 32, 44, 56, 110)
    },
    "resnet18": _Entry(
        resnet.resnet18,
        ModelFamily.RESNET,
        "ResNet-18, BasicBlock, CIFAR stem: 3x3 conv, no max-pool (He et al. 2016)",
    ),
    "resnet34": _Entry(
        resnet.resnet34,
        ModelFamily.RESNET,
        "ResNet-34, BasicBlock, CIFAR stem: 3x3 conv, no max-pool (He et al. 2016)",
    ),
    "wrn28_2": _Entry(
        wrn.wrn28_2,
        ModelFamily.WIDE_RESNET,
        "Wide ResNet WRN-28-2, pre-activation, no dropout (Zagoruyko & Komodakis 2016)",
    ),
    "wrn28_10": _Entry(
        wrn.wrn28_10,
        ModelFamily.WIDE_RESNET,
        "Wide ResNet WRN-28-10, pre-activation, no dropout (Zagoruyko & Komodakis 2016)",
    ),
    "vgg16_bn": _Entry(
        vgg.vgg16_bn,
        ModelFamily.VGG,
        "VGG-16 with BatchNorm, CIFAR variant: one linear classifier (Simonyan & Zisserman 2015)",
    ),
    "vgg19_bn": _Entry(
        vgg.vgg19_bn,
        ModelFamily.VGG,
        "VGG-19 with BatchNorm, CIFAR variant: one linear classifier (Simonyan & Zisserman 2015)",
    ),
}

MODELS: dict[str, ModelBuilder] = {name: entry.builder for name, entry in _ENTRIES.items()}
"""Registry name -> builder. Entries added here by users are listed with family ``other``."""


def _check_name(name: str) -> None:
    if name not in MODELS:
        known = ", ".join(MODELS)
        raise ValueError(f"unknown model {name!r}; known models: {known}")


def _check_positive_int(label: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{label} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{label} must be >= {minimum}, got {value}")


def model_spec(name: str, in_channels: int, num_classes: int, image_size: int) -> dict:
    """The plain dict that rebuilds a model: ``build_model(**model_spec(...))``.

    Checkpoints store this dict (JSON), never the pickled module.

    Args:
        name: Registry name.
        in_channels: Image channels.
        num_classes: Number of output logits.
        image_size: Side of the square input in pixels.

    Returns:
        ``{"name": ..., "in_channels": ..., "num_classes": ..., "image_size": ...}``.

    Raises:
        ValueError: If the name is unknown or a size is not a positive int (or the image is
            smaller than the model supports).
    """
    _validate(name, in_channels, num_classes, image_size)
    return {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
    }


def _validate(name: str, in_channels: int, num_classes: int, image_size: int) -> None:
    _check_name(name)
    entry = _ENTRIES.get(name)
    min_image_size = entry.min_image_size if entry is not None else 1
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    _check_positive_int(f"image_size for model {name!r}", image_size, min_image_size)


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build a freshly initialised model from the registry.

    Initialisation draws from torch's global generator; seed it (``torch.manual_seed``) in
    the calling script for a reproducible model. Library code never seeds it.

    Args:
        name: Registry name (see :func:`list_models`).
        in_channels: Image channels (3 for CIFAR, 1 for digits/MNIST).
        num_classes: Number of output logits.
        image_size: Side of the square input in pixels. Shapes the MLP's first layer and
            which of VGG's max-pools are kept; the convolutional nets accept other sizes too.

    Returns:
        The network, in training mode, on the default device and dtype.

    Raises:
        ValueError: If the name is unknown (the message lists the known names) or a size is
            not a positive int (convolutional nets need ``image_size >= 8``).
    """
    _validate(name, in_channels, num_classes, image_size)
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model`` (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@functools.cache
def _reference_num_parameters(builder: ModelBuilder) -> int:
    # Build on the meta device: shapes only, no memory and no random numbers drawn, so
    # listing WRN-28-10 is instant and leaves the global generator untouched.
    with torch.device("meta"):
        model = builder(**REFERENCE_SHAPE)
    return num_parameters(model)


def list_models() -> list[ModelInfo]:
    """Every registered model with its family, description and CIFAR-10 parameter count.

    Returns:
        One :class:`ModelInfo` per entry of :data:`MODELS`, in registry order.
    """
    infos = []
    for name, builder in MODELS.items():
        entry = _ENTRIES.get(name)
        if entry is not None and entry.builder is builder:
            family, description = entry.family, entry.description
        else:
            family = ModelFamily.OTHER
            description = (builder.__doc__ or "").strip().split("\n")[0]
        infos.append(ModelInfo(name, family, description, _reference_num_parameters(builder)))
    return infos
