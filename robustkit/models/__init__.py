"""Model registry: MLP, small CNN, CIFAR ResNets, ResNet-18/34, Wide ResNets and VGG.

>>> from robustkit.models import build_model, model_spec
>>> spec = model_spec("resnet20", in_channels=3, num_classes=10, image_size=32)
>>> model = build_model(**spec)
>>> sum(p.numel() for p in model.parameters())
269722
"""

from __future__ import annotations

from robustkit.models.registry import (
    MODELS,
    REFERENCE_SHAPE,
    ModelBuilder,
    ModelFamily,
    ModelInfo,
    build_model,
    list_models,
    model_spec,
    num_parameters,
)

__all__ = [
    "MODELS",
    "REFERENCE_SHAPE",
    "ModelBuilder",
    "ModelFamily",
    "ModelInfo",
    "build_model",
    "list_models",
    "model_spec",
    "num_parameters",
]
