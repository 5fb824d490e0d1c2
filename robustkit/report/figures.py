"""Figures of robustkit's records (seaborn). Reads tables of results, never imports torch.

Figures are drawn on a free-standing :class:`matplotlib.figure.Figure` (no pyplot, no global
style or backend changes) and saved atomically as PNG and PDF.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from robustkit.io import atomic_path

__all__ = ["plot_noise_curve", "save_figure", "save_noise_curve"]

_ORDER = ("sgd", "sam", "asam", "fsam")
_LABELS = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "fsam": "FSAM"}


def plot_noise_curve(results: pd.DataFrame, metric: str = "final_test_acc", ax=None) -> Figure:
    """Test accuracy against label-noise rate: one line per optimiser, a band over seeds.

    Args:
        results: One row per run (``robustkit.sweep.results.collect_results``): columns
            ``optimizer``, ``noise``, ``rate``, ``seed``, ``status`` and ``metric``
            (a fraction). Only completed runs are drawn.
        metric: The accuracy to plot (shown in %).
        ax: Axes to draw into; default: a new figure.

    Returns:
        The figure. The band is mean ± one sample standard deviation over seeds (no band
        for a single seed); several noise kinds get different line styles.
    """
    import seaborn as sns

    data = results[(results["status"] == "completed") & results[metric].notna()].copy()
    data["noise rate (%)"] = 100.0 * data["rate"].astype(float)
    data["test accuracy (%)"] = 100.0 * data[metric].astype(float)
    present = set(data["optimizer"])
    order = [o for o in _ORDER if o in present] + sorted(present - set(_ORDER))
    data["optimiser"] = data["optimizer"].map(lambda o: _LABELS.get(o, str(o).upper()))
    hue_order = [_LABELS.get(o, o.upper()) for o in order]
    kinds = sorted(set(data["noise"]) - {"none"})
    with sns.axes_style("whitegrid"):
        if ax is None:
            fig = Figure(figsize=(5.5, 4.0), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        sns.lineplot(
            data=data,
            x="noise rate (%)",
            y="test accuracy (%)",
            hue="optimiser",
            hue_order=hue_order,
            style="noise" if len(kinds) > 1 else None,
            estimator="mean",
            errorbar="sd",
            marker="o",
            ax=ax,
        )
    seeds = sorted(pd.unique(data["seed"].dropna()))
    setting = " / ".join(
        ", ".join(str(v) for v in pd.unique(data[c].dropna()))
        for c in ("dataset", "model")
        if c in data
    )
    if "epochs" in data:
        setting += " / " + ", ".join(str(int(v)) for v in pd.unique(data["epochs"].dropna()))
        setting += " epochs"
    spread = f"n = {len(seeds)} seeds, mean ± 1 sd" if len(seeds) > 1 else "n = 1 seed"
    label = "final" if metric.startswith("final") else "best"
    ax.set_ylabel(f"{label} test accuracy (%)")
    ax.set_xlabel(f"{kinds[0] if len(kinds) == 1 else 'label'}-noise rate (%)")
    ax.set_title(f"{setting}; {spread}", fontsize=10)
    rates = sorted(pd.unique(data["noise rate (%)"]))
    if rates:
        ax.set_xticks(rates)
    return fig


def save_figure(
    fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Save ``fig`` as ``<stem>.<format>`` for every format, each written atomically."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        paths.append(path)
    return paths


def save_noise_curve(results: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Draw :func:`plot_noise_curve` into ``<out_dir>/noise_curve.png`` and ``.pdf``."""
    fig = plot_noise_curve(results)
    return save_figure(fig, Path(out_dir) / "noise_curve")
