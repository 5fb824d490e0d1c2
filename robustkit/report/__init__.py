"""Reports of robustkit's records: tables, seaborn figures, one HTML page (or Markdown).

Reads records only (files on disk) and never imports torch, so a report can be rebuilt on any
machine from a copied sweep directory.

>>> from robustkit.report import build_report                  # doctest: +SKIP
>>> build_report("runs/noise-sweep").path                     # doctest: +SKIP
PosixPath('runs/noise-sweep/report/index.html')

* :mod:`robustkit.report.records` - finding and reading every record kind; joins evaluator
  records to their runs.
* :mod:`robustkit.report.style` - the one shared style (greyscale- and colour-blind-safe).
* :mod:`robustkit.report.figures` - the figures (noise curve, training curves, weight
  perturbation, sharpness bars, sharpness against accuracy).
* :mod:`robustkit.report.provenance` - reproducing commands and the environment table.
* :mod:`robustkit.report.render` - the sections, HTML and Markdown, :func:`build_report`.

Names are imported on first use, so ``import robustkit.report`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_report": "robustkit.report.render",
    "ReportResult": "robustkit.report.render",
    "load_records": "robustkit.report.records",
    "Records": "robustkit.report.records",
    "ReportError": "robustkit.report.records",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robustkit.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
