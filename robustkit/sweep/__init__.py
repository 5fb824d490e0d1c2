"""Sweeps: grids of independent training runs, their executors and their aggregated results.

>>> from robustkit.sweep import SweepConfig, run_sweep          # doctest: +SKIP
>>> sweep = SweepConfig(optimizers=["sgd", "fsam"], rates=[0.0, 0.4], seeds=[0, 1])
>>> result = run_sweep(sweep.validate(), "runs/my-sweep")       # doctest: +SKIP

* :mod:`robustkit.sweep.grid` - the grid, run ids, TOML/CLI precedence, ``sweep.toml``.
* :mod:`robustkit.sweep.executors` - the executor interface, the local executor, ``run_sweep``.
* :mod:`robustkit.sweep.results` - ``results.csv``, ``table.md``/``.tex`` (no torch).

Names are imported on first use, so importing :mod:`robustkit.sweep.results` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SweepConfig": "robustkit.sweep.grid",
    "Override": "robustkit.sweep.grid",
    "RunTask": "robustkit.sweep.grid",
    "resolve_sweep": "robustkit.sweep.grid",
    "load_sweep_toml": "robustkit.sweep.grid",
    "save_sweep_toml": "robustkit.sweep.grid",
    "dumps_toml": "robustkit.sweep.grid",
    "Executor": "robustkit.sweep.executors",
    "LocalExecutor": "robustkit.sweep.executors",
    "RunOutcome": "robustkit.sweep.executors",
    "SweepResult": "robustkit.sweep.executors",
    "run_sweep": "robustkit.sweep.executors",
    "collect_results": "robustkit.sweep.results",
    "write_results": "robustkit.sweep.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robustkit.sweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
