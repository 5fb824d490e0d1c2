"""robustkit: how robust and how flat are the minima your optimiser finds.

Heavy modules (torch) are imported lazily so that ``robustkit --help`` stays instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_checkpoint"]


def __getattr__(name: str):
    if name == "load_checkpoint":
        from robustkit.train.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'robustkit' has no attribute {name!r}")
