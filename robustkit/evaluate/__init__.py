"""Evaluators of trained weights: adversarial/random weight perturbation and sharpness.

Submodules are imported lazily (``from robustkit.evaluate import attack_weights`` imports only
:mod:`robustkit.evaluate.perturb`), so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    name: "robustkit.evaluate.perturb"
    for name in (
        "AttackResult",
        "Ball",
        "Norm",
        "RadiusMode",
        "RandomResult",
        "attack_weights",
        "build_ball",
        "eps_sharpness",
        "evaluate",
        "perturb_sweep",
        "perturbed_parameters",
        "prepare_data",
        "random_perturbation",
    )
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
