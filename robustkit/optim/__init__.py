"""Sharpness-aware optimisers: one optimiser, one geometry per method (DESIGN.md §1)."""

from robustkit.optim.geometry import (
    AdaptiveGeometry,
    EuclideanGeometry,
    FisherGeometry,
    Geometry,
    GeometryName,
    build_geometry,
    perturbation,
    perturbation_reference,
)
from robustkit.optim.registry import (
    OPTIMIZERS,
    ASAMConvention,
    BaseOptimizer,
    OptimizerName,
    build_optimizer,
)
from robustkit.optim.sharpness_aware import BNPolicy, SharpnessAware

__all__ = [
    "OPTIMIZERS",
    "ASAMConvention",
    "AdaptiveGeometry",
    "BNPolicy",
    "BaseOptimizer",
    "EuclideanGeometry",
    "FisherGeometry",
    "Geometry",
    "GeometryName",
    "OptimizerName",
    "SharpnessAware",
    "build_geometry",
    "build_optimizer",
    "perturbation",
    "perturbation_reference",
]
