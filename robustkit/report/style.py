"""One plotting style for every robustkit figure: readable in greyscale and by colour-blind readers.

Each optimiser keeps the same look in every figure: a colour from seaborn's ``colorblind``
palette (Okabe-Ito-like) *and* a marker *and* a line dash pattern *and* a bar hatch, so that a
figure printed in black and white still tells SGD, SAM, ASAM and FSAM apart. Figures are
free-standing :class:`matplotlib.figure.Figure` objects drawn inside :func:`style` (seaborn's
``whitegrid`` axes and ``paper`` context); nothing here touches pyplot or the global rc.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KIND_DASHES",
    "OPTIMIZER_ORDER",
    "SeriesStyle",
    "band",
    "new_figure",
    "optimizer_label",
    "optimizer_order",
    "optimizer_styles",
    "style",
]

#: Display order of the registered optimisers; unknown names follow, sorted.
OPTIMIZER_ORDER = ("sgd", "sam", "asam", "fsam")
_LABELS = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "fsam": "FSAM"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# matplotlib dash sequences (on, off, ...) in points; () is a solid line.
_DASHES: tuple[tuple[float, ...], ...] = (
    (),
    (5.0, 2.0),
    (1.5, 1.5),
    (6.0, 2.0, 1.5, 2.0),
    (3.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    (8.0, 3.0),
    (2.0, 3.0),
    (4.0, 1.0, 4.0, 3.0),
)
_HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo", "---", "+++")
#: Line dashes that tell the kind of a weight perturbation apart (optimisers keep colour/marker).
KIND_DASHES: dict[str, tuple[float, ...]] = {"adversarial": (), "random": (4.0, 2.0)}


@dataclass(frozen=True)
class SeriesStyle:
    """How one optimiser (or other series) is drawn.

    Attributes:
        label: Display name (``FSAM``).
        color: RGB tuple from the colour-blind palette.
        marker: matplotlib marker.
        dashes: Dash sequence in points (``()`` is solid).
        hatch: Bar hatch pattern.
    """

    label: str
    color: tuple[float, float, float]
    marker: str
    dashes: tuple[float, ...]
    hatch: str

    def line_kwargs(self, *, dashes: Sequence[float] | None = None) -> dict[str, Any]:
        """``ax.plot`` keyword arguments (``dashes`` overrides the series' own pattern)."""
        pattern = tuple(self.dashes if dashes is None else dashes)
        kwargs: dict[str, Any] = {
            "color": self.color,
            "marker": self.marker,
            "markersize": 5,
            "linewidth": 1.6,
            "label": self.label,
        }
        if pattern:
            kwargs["dashes"] = pattern
        else:
            kwargs["linestyle"] = "-"
        return kwargs


def optimizer_label(name: Any) -> str:
    """``fsam`` -> ``FSAM``; other plain names upper-cased; labels (``run-3``) as they are."""
    if name is None or (isinstance(name, float) and name != name):
        return "?"
    text = str(name)
    if text in _LABELS:
        return _LABELS[text]
    return text.upper() if text.isidentifier() else text


def optimizer_order(names: Iterable[Any]) -> list[str]:
    """The distinct ``names`` in display order (sgd, sam, asam, fsam, then the rest sorted)."""
    present = {str(n) for n in names if n is not None and n == n}
    return [o for o in OPTIMIZER_ORDER if o in present] + sorted(present - set(OPTIMIZER_ORDER))


def optimizer_styles(names: Iterable[Any]) -> dict[str, SeriesStyle]:
    """A :class:`SeriesStyle` per name; the four known optimisers always get the same one.

    Known optimisers take slots 0-3 of every sequence (so FSAM looks the same in every figure
    whichever optimisers a sweep ran); other names take the following slots in sorted order.
    """
    import seaborn as sns

    ordered = optimizer_order(names)
    extra = [n for n in ordered if n not in OPTIMIZER_ORDER]
    palette = sns.color_palette("colorblind", n_colors=10)
    styles = {}
    for name in ordered:
        slot = OPTIMIZER_ORDER.index(name) if name in OPTIMIZER_ORDER else 4 + extra.index(name)
        styles[name] = SeriesStyle(
            label=optimizer_label(name),
            color=tuple(palette[slot % len(palette)]),
            marker=_MARKERS[slot % len(_MARKERS)],
            dashes=_DASHES[slot % len(_DASHES)],
            hatch=_HATCHES[slot % len(_HATCHES)],
        )
    return styles


_RC = {
    "axes.titlesize": 10,
    "axes.labelsize": 9.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "axes.edgecolor": "0.35",
    "grid.color": "0.88",
    "hatch.linewidth": 0.8,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, no Type-3 fonts
    "svg.fonttype": "none",
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The shared style: seaborn ``whitegrid`` + ``paper`` context and a few rc values.

    Use it around drawing *and* saving (rc values are read at both times); it restores the
    previous settings on exit.
    """
    import matplotlib as mpl
    import seaborn as sns

    with (
        mpl.rc_context(),
        sns.axes_style("whitegrid"),
        sns.plotting_context("paper", font_scale=1.15),
        mpl.rc_context(_RC),
    ):
        yield


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    panel_size: tuple[float, float] = (4.2, 3.2),
    squeeze: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """A free-standing constrained-layout figure of ``nrows x ncols`` panels (inside :func:`style`).

    Returns:
        ``(figure, axes)``; ``axes`` is a 2-D array unless ``squeeze``.
    """
    from matplotlib.figure import Figure

    width, height = panel_size
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)
    return fig, axes


def band(
    ax: Any,
    x: Sequence[float],
    values: Sequence[Sequence[float]],
    series: SeriesStyle,
    *,
    dashes: Sequence[float] | None = None,
    label: str | None = None,
    **plot_kwargs: Any,
) -> None:
    """Draw the mean of ``values[i]`` at ``x[i]`` and, where n >= 2, a mean ± 1 sd band.

    The standard deviation is the sample one (``ddof=1``), as in the sweep's tables; points
    with no values are skipped (never drawn as zero). ``plot_kwargs`` go to ``ax.plot``.
    """
    import numpy as np

    xs, means, lows, highs = [], [], [], []
    for xi, vals in zip(x, values):
        arr = np.asarray([v for v in vals if v is not None and np.isfinite(v)], dtype=float)
        if arr.size == 0:
            continue
        mean = float(arr.mean())
        sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        xs.append(xi)
        means.append(mean)
        lows.append(mean - sd)
        highs.append(mean + sd)
    if not xs:
        return
    kwargs = series.line_kwargs(dashes=dashes)
    if label is not None:
        kwargs["label"] = label
    kwargs.update(plot_kwargs)
    ax.plot(xs, means, **kwargs)
    if any(h > lo for h, lo in zip(highs, lows)):
        ax.fill_between(xs, lows, highs, color=series.color, alpha=0.15, linewidth=0)
