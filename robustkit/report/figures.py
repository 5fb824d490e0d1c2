"""Figures of robustkit's records (seaborn). Reads tables of results, never imports torch.

Figures are drawn on a free-standing :class:`matplotlib.figure.Figure` (no pyplot, no global
style or backend changes) in the shared style of :mod:`robustkit.report.style` (every optimiser
has its own colour, marker, dash pattern and hatch, so figures survive greyscale printing) and
saved atomically as PNG and PDF. Every band or error bar is mean ± one sample standard
deviation (``ddof=1``) over runs (seeds), as in the sweep's tables; a point with no record is
left out, never drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robustkit.io import atomic_path
from robustkit.report.style import (
    KIND_DASHES,
    band,
    new_figure,
    optimizer_order,
    optimizer_styles,
    style,
)

__all__ = [
    "SHARPNESS_METRICS",
    "noise_label",
    "plot_noise_curve",
    "plot_perturbation",
    "plot_sharpness_bars",
    "plot_sharpness_vs_accuracy",
    "plot_training_curves",
    "save_figure",
    "save_noise_curve",
]

#: Per sharpness metric: (title, y-axis label with units). Losses are mean cross-entropies in
#: nats; curvatures are per squared unit of weight.
SHARPNESS_METRICS: dict[str, tuple[str, str]] = {
    "hessian-eig": ("Top Hessian eigenvalue", "λ₁ of the loss Hessian (nats / weight²)"),
    "hessian-trace": ("Hessian trace", "tr H (nats / weight²)"),
    "fisher-trace": ("Fisher trace (true Fisher)", "tr F (nats² / weight²)"),
    "fisher-trace-empirical": ("Fisher trace (empirical)", "tr F̂ (nats² / weight²)"),
    "eps-sharpness": ("ε-sharpness", "loss increase in the ball (nats)"),
}


def noise_label(kind: Any, rate: Any, *, kinds: int = 1) -> str:
    """``40% noise`` (``symmetric 40% noise`` when several kinds; ``clean``; ``noise unknown``)."""
    if kind is None or (isinstance(kind, float) and math.isnan(kind)):
        return "noise unknown"
    if kind == "none":
        return "clean (0% noise)"
    try:
        pct = f"{100 * float(rate):g}%"
    except (TypeError, ValueError):
        pct = "?%"
    return f"{kind} {pct} noise" if kinds > 1 else f"{pct} noise"


def _noise_panels(frame: pd.DataFrame, kind_col: str, rate_col: str) -> list[tuple[Any, Any]]:
    """Distinct ``(kind, rate)`` pairs, clean first, then by rate; unknown noise last."""
    pairs = {}
    for kind, rate in zip(frame[kind_col], frame[rate_col]):
        known = isinstance(kind, str)
        key = (kind if known else None, float(rate) if known and pd.notna(rate) else None)
        pairs[key] = None
    return sorted(pairs, key=lambda kr: (kr[0] is None, kr[1] or 0.0, kr[0] != "none", kr[0]))


def _in_panel(frame: pd.DataFrame, kind_col: str, rate_col: str, panel: tuple) -> pd.Series:
    kind, rate = panel
    if kind is None:
        return ~frame[kind_col].apply(lambda k: isinstance(k, str))
    mask = frame[kind_col] == kind
    if rate is not None:
        mask &= np.isclose(frame[rate_col].astype(float), rate, rtol=0, atol=1e-12)
    return mask


def _panel_grid(
    num: int, panel_size: tuple[float, float], max_width: float = 13.0, **kwargs: Any
) -> tuple[Figure, list[Any]]:
    """``num`` panels in rows of at most ``max_width`` inches; unused cells are hidden."""
    ncols = max(1, min(num, int(max_width // panel_size[0])))
    nrows = math.ceil(num / ncols)
    fig, axes = new_figure(nrows, ncols, panel_size=panel_size, **kwargs)
    flat = list(axes.flat)
    for ax in flat[num:]:
        ax.set_visible(False)
    return fig, flat[:num]


def _legend_below(fig: Figure, handles: list, title: str | None = None) -> None:
    if handles:
        width = fig.get_figwidth()  # inches; an entry takes about 1.9 in
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=max(1, min(len(handles), int(width / 1.9))),
            title=title,
            frameon=False,
        )


def _series_handles(styles: dict, *, dashes: Sequence[float] | None = None) -> list[Line2D]:
    return [Line2D([], [], **s.line_kwargs(dashes=dashes)) for s in styles.values()]


# -- label-noise sweep --------------------------------------------------------------------------


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
        for a single seed); several noise kinds get open markers after the first and their
        kind in the legend; the clean baseline (rate 0) joins every kind's line.
    """
    data = results[(results["status"] == "completed") & results[metric].notna()].copy()
    order = optimizer_order(data["optimizer"])
    styles = optimizer_styles(order)
    noisy_kinds = sorted(set(data["noise"]) - {"none"})
    kinds = noisy_kinds or ["none"]
    with style():
        if ax is None:
            fig, axes = new_figure(panel_size=(5.5, 4.0))
            ax = axes[0, 0]
        else:
            fig = ax.figure
        for k, kind in enumerate(kinds):
            subset = data[(data["noise"] == kind) | (data["noise"] == "none")]
            for name in order:
                part = subset[subset["optimizer"] == name]
                rates = sorted(pd.unique(part["rate"].astype(float)))
                values = [100.0 * part.loc[part["rate"] == r, metric].astype(float) for r in rates]
                extra: dict[str, Any] = {}
                label = styles[name].label
                if len(kinds) > 1:
                    label = f"{label} ({kind})"
                    if k > 0:
                        extra["markerfacecolor"] = "white"
                band(ax, [100.0 * r for r in rates], values, styles[name], label=label, **extra)
        seeds = sorted(pd.unique(data["seed"].dropna()))
        setting = " / ".join(
            ", ".join(str(v) for v in pd.unique(data[c].dropna()))
            for c in ("dataset", "model")
            if c in data
        )
        if "epochs" in data:
            epochs = ", ".join(str(int(v)) for v in pd.unique(data["epochs"].dropna()))
            setting += f" / {epochs} epochs"
        spread = f"n = {len(seeds)} seeds, mean ± 1 sd" if len(seeds) > 1 else "n = 1 seed"
        label = "final" if metric.startswith("final") else "best"
        ax.set_ylabel(f"{label} test accuracy (%)")
        kind = noisy_kinds[0] if len(noisy_kinds) == 1 else "label"
        ax.set_xlabel(f"{kind}-noise rate (%)")
        ax.set_title(f"{setting}; {spread}", fontsize=10)
        rates = sorted(pd.unique(100.0 * data["rate"].astype(float)))
        if rates:
            ax.set_xticks(rates)
        if order:
            ax.legend(title="optimiser")
    return fig


def plot_training_curves(metrics: pd.DataFrame) -> Figure:
    """Test accuracy and training loss (noisy labels) per epoch, one panel column per noise rate.

    Args:
        metrics: One row per (run, epoch), as :meth:`robustkit.report.records.Records.
            metrics_frame`: ``optimizer``, ``noise``, ``rate``, ``seed``, ``epoch``,
            ``test_acc`` (fraction) and ``train_loss`` (mean cross-entropy on the noisy
            training labels, nats).

    Returns:
        A 2 x (noise rates) figure: one line per optimiser, the mean over seeds with a ± 1 sd
        band where several seeds finished that epoch.
    """
    panels = _noise_panels(metrics, "noise", "rate")
    kinds = len({k for k, _ in panels if k not in (None, "none")})
    order = optimizer_order(metrics["optimizer"])
    styles = optimizer_styles(order)
    rows = (
        ("test_acc", 100.0, "test accuracy (%)"),
        ("train_loss", 1.0, "train loss on noisy labels (nats)"),
    )
    with style():
        fig, axes = new_figure(2, len(panels), panel_size=(3.4, 2.7), sharex="col")
        for col, panel in enumerate(panels):
            in_panel = metrics[_in_panel(metrics, "noise", "rate", panel)]
            for r, (column, scale, ylabel) in enumerate(rows):
                ax = axes[r, col]
                for name in order:
                    part = in_panel[in_panel["optimizer"] == name]
                    if column not in part:
                        continue
                    epochs = sorted(pd.unique(part["epoch"].dropna()))
                    values = [scale * part.loc[part["epoch"] == e, column] for e in epochs]
                    band(ax, epochs, values, styles[name])
                if col == 0:
                    ax.set_ylabel(ylabel)
                if r == len(rows) - 1:
                    ax.set_xlabel("epoch")
            seeds = sorted({int(s) for s in in_panel["seed"].dropna()})
            n = f"n = {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
            axes[0, col].set_title(f"{noise_label(*panel, kinds=kinds)} ({n})")
        for ax in axes[-1]:
            ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_below(fig, _series_handles(styles), title="optimiser (mean ± 1 sd over seeds)")
    return fig


# -- weight perturbation ------------------------------------------------------------------------


def plot_perturbation(frame: pd.DataFrame) -> Figure:
    """Accuracy under weight perturbation against its magnitude, one panel per noise rate.

    Args:
        frame: Perturb records joined to their runs
            (:meth:`robustkit.report.records.Records.perturb_frame`) of one setting (ball,
            radius mode, attack): ``series`` (optimiser), ``noise_kind``, ``noise_rate``,
            ``magnitude``, ``adversarial_accuracy``, ``random_accuracy_mean``, ``norm``,
            ``radius_mode``, ``steps``, ``eval_split``.

    Returns:
        The figure: adversarial (PGD) accuracy solid, random-direction accuracy dashed; colour
        and marker per optimiser; mean over checkpoints (seeds) with a ± 1 sd band.
    """
    panels = _noise_panels(frame, "noise_kind", "noise_rate")
    kinds = len({k for k, _ in panels if k not in (None, "none")})
    order = optimizer_order(frame["series"])
    styles = optimizer_styles(order)
    first = frame.iloc[0]
    with style():
        fig, axes = new_figure(1, len(panels), panel_size=(4.0, 3.3), sharey=True)
        for col, panel in enumerate(panels):
            ax = axes[0, col]
            in_panel = frame[_in_panel(frame, "noise_kind", "noise_rate", panel)]
            for name in order:
                part = in_panel[in_panel["series"] == name]
                ms = sorted(pd.unique(part["magnitude"].astype(float)))
                for kind, column in (
                    ("adversarial", "adversarial_accuracy"),
                    ("random", "random_accuracy_mean"),
                ):
                    values = [
                        100.0 * part.loc[part["magnitude"] == m, column].dropna().astype(float)
                        for m in ms
                    ]
                    band(ax, ms, values, styles[name], dashes=KIND_DASHES[kind])
            n = in_panel.groupby("series")["checkpoint"].nunique()
            count = f"n = {n.max()} run{'s' if n.max() != 1 else ''}" if len(n) else ""
            ax.set_title(f"{noise_label(*panel, kinds=kinds)} ({count} per optimiser)")
            _magnitude_axis(ax, frame["magnitude"], first)
            if col == 0:
                ax.set_ylabel(f"{first.get('eval_split', 'test')} accuracy (%)")
        handles = _series_handles(styles, dashes=())
        handles += [
            Line2D(
                [],
                [],
                color="0.3",
                linestyle="-",
                label=f"adversarial ({first.get('steps', '?')}-step PGD)",
            ),
            Line2D([], [], color="0.3", dashes=KIND_DASHES["random"], label="random direction"),
        ]
        _legend_below(fig, handles)
    return fig


def _magnitude_axis(ax: Any, magnitudes: pd.Series, first: pd.Series) -> None:
    ms = sorted(pd.unique(magnitudes.astype(float)))
    positive = [m for m in ms if m > 0]
    if len(positive) >= 3 and positive[-1] > 10 * positive[0]:  # geometric grids: symlog
        ax.set_xscale("symlog", linthresh=positive[0])
        ax.minorticks_off()
    ax.set_xticks(ms, [f"{m:g}" for m in ms], rotation=45 if len(ms) > 5 else 0)
    relative = first.get("radius_mode", "relative") == "relative"
    ball = first.get("norm", "layer")
    if relative and ball == "layer":
        unit = "relative magnitude m = ‖δₗ‖ / ‖wₗ‖"
    elif relative:
        unit = f"relative magnitude m ({ball} ball)"
    else:
        unit = f"radius m ({ball} ball, weight units)"
    ax.set_xlabel(unit)


# -- sharpness ----------------------------------------------------------------------------------


def _metric_order(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["metric"]))
    return [m for m in SHARPNESS_METRICS if m in present] + [
        m for m in present if m not in SHARPNESS_METRICS
    ]


def _metric_text(metric: str, frame: pd.DataFrame) -> tuple[str, str]:
    title, ylabel = SHARPNESS_METRICS.get(metric, (metric, f"{metric} (as recorded)"))
    if metric == "eps-sharpness" and "rho" in frame and frame["rho"].notna().any():
        rhos = ", ".join(f"{v:g}" for v in pd.unique(frame["rho"].dropna()))
        title = f"{title} (ρ = {rhos})"
    return title, ylabel


def plot_sharpness_bars(frame: pd.DataFrame) -> Figure:
    """Sharpness per optimiser: one panel per metric, bars grouped by noise rate.

    Args:
        frame: Sharpness records joined to their runs
            (:meth:`robustkit.report.records.Records.sharpness_frame`): ``metric``, ``value``,
            ``stderr``, ``series``, ``noise_kind``, ``noise_rate``.

    Returns:
        The figure. A bar is the mean over runs (seeds); its error bar is ± 1 sample sd over
        runs when there are several, else the estimator's standard error when it has one
        (Hutchinson traces, Monte-Carlo Fisher), else none. A combination with no record is
        marked "not measured".
    """
    metrics = _metric_order(frame)
    order = optimizer_order(frame["series"])
    styles = optimizer_styles(order)
    panels = _noise_panels(frame, "noise_kind", "noise_rate")
    kinds = len({k for k, _ in panels if k not in (None, "none")})
    width = 0.8 / max(len(order), 1)
    with style():
        panel_width = max(3.2, 0.9 + 0.45 * len(order) * len(panels))
        fig, flat = _panel_grid(len(metrics), (panel_width, 3.3))
        for ax, metric in zip(flat, metrics):
            of_metric = frame[frame["metric"] == metric]
            for g, panel in enumerate(panels):
                in_panel = of_metric[_in_panel(of_metric, "noise_kind", "noise_rate", panel)]
                for s, name in enumerate(order):
                    x = g - 0.4 + width * (s + 0.5)
                    values = in_panel.loc[in_panel["series"] == name, "value"].dropna()
                    values = values.astype(float)
                    if values.empty:
                        ax.text(
                            x,
                            0,
                            "not measured",
                            rotation=90,
                            ha="center",
                            va="bottom",
                            fontsize=6,
                            color="0.4",
                        )
                        continue
                    if len(values) > 1:
                        err = float(values.std(ddof=1))
                    else:
                        stderr = in_panel.loc[in_panel["series"] == name, "stderr"]
                        err = float(stderr.iloc[0]) if stderr.notna().any() else 0.0
                    st = styles[name]
                    ax.bar(
                        x,
                        float(values.mean()),
                        width=width * 0.92,
                        color=st.color,
                        hatch=st.hatch,
                        edgecolor="0.15",
                        linewidth=0.6,
                        yerr=err if err > 0 else None,
                        capsize=3,
                        error_kw={"elinewidth": 1.0, "ecolor": "black"},
                    )
            ax.set_xticks(range(len(panels)), [noise_label(*p, kinds=kinds) for p in panels])
            if len(panels) > 2:
                ax.tick_params(axis="x", labelrotation=20)
            ax.set_xlim(-0.6, len(panels) - 0.4)
            title, ylabel = _metric_text(metric, of_metric)
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.grid(axis="x", visible=False)
        handles = [_bar_handle(st) for st in styles.values()]
        counts = frame.groupby(
            ["metric", "series", "noise_kind", "noise_rate"], dropna=False
        ).size()
        spread = "mean ± 1 sd over runs" if counts.max() > 1 else "error bars: estimator stderr"
        _legend_below(fig, handles, title=f"optimiser ({spread})")
    return fig


def _bar_handle(st: Any) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=st.color, hatch=st.hatch, edgecolor="0.15", label=st.label)


def plot_sharpness_vs_accuracy(frame: pd.DataFrame) -> Figure:
    """Final test accuracy against sharpness, one point per run, one panel per metric.

    Args:
        frame: Sharpness records joined to finished runs (``final_test_acc`` not NaN).

    Returns:
        The figure: marker and colour per optimiser, each point labelled with its noise rate
        (when there are few points); a log x axis when the values span more than 20x.
    """
    metrics = _metric_order(frame)
    order = optimizer_order(frame["series"])
    styles = optimizer_styles(order)
    with style():
        fig, flat = _panel_grid(len(metrics), (3.8, 3.3), sharey=True)
        for ax, metric in zip(flat, metrics):
            of_metric = frame[(frame["metric"] == metric) & frame["value"].notna()]
            for name in order:
                part = of_metric[of_metric["series"] == name]
                st = styles[name]
                ax.scatter(
                    part["value"].astype(float),
                    100.0 * part["final_test_acc"],
                    color=st.color,
                    marker=st.marker,
                    s=36,
                    edgecolor="0.1",
                    linewidth=0.6,
                    label=st.label,
                    zorder=3,
                )
                if len(of_metric) <= 24:
                    for v, a, rate in zip(
                        part["value"], part["final_test_acc"], part["noise_rate"]
                    ):
                        if pd.notna(rate):
                            ax.annotate(
                                f"{100 * rate:g}%",
                                (float(v), 100.0 * a),
                                fontsize=6.5,
                                xytext=(4, 3),
                                textcoords="offset points",
                                color="0.3",
                            )
            ax.margins(x=0.12, y=0.08)
            values = of_metric["value"].astype(float)
            if len(values) and (values > 0).all() and values.max() > 20 * values.min():
                ax.set_xscale("log")
            title, xlabel = _metric_text(metric, of_metric)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel("final test accuracy (%)")
        handles = [
            Line2D(
                [],
                [],
                color=st.color,
                marker=st.marker,
                linestyle="none",
                markeredgecolor="0.1",
                label=st.label,
            )
            for st in styles.values()
        ]
        _legend_below(fig, handles, title="optimiser (labels: noise rate)")
    return fig


# -- saving -------------------------------------------------------------------------------------


def save_figure(
    fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Save ``fig`` as ``<stem>.<format>`` for every format, each written atomically.

    PDFs carry no creation date, so the same records give the same file.
    """
    paths = []
    with style():
        for fmt in formats:
            path = Path(f"{stem}.{fmt}")
            metadata = {"CreationDate": None} if fmt == "pdf" else None
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
            paths.append(path)
    return paths


def save_noise_curve(results: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Draw :func:`plot_noise_curve` into ``<out_dir>/noise_curve.png`` and ``.pdf``."""
    fig = plot_noise_curve(results)
    return save_figure(fig, Path(out_dir) / "noise_curve")
