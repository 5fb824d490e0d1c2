"""Aggregating a sweep directory: ``results.csv``, ``table.md``, ``table.tex`` (and the figure).

Reads only files (every run's ``result.json`` and ``config.json``, or ``error.txt`` of a run
that raised), so a partially finished sweep aggregates what is done, and the report can be
rebuilt on any machine. Pure pandas/numpy: this module never imports torch.

The table follows the paper's layout (Table 2): rows = noise rate in %, columns = optimiser
(sgd, sam, asam, fsam, whichever were run), cells = final test accuracy in %, ``mean ± std``
over seeds with the sample standard deviation (``ddof=1``; a cell of one seed shows only its
mean), the best mean of each row in bold. Diverged and failed runs are left out of the means and
named in a note.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustkit.io import atomic_write, atomic_write_text

__all__ = [
    "COLUMNS",
    "RESULTS_CSV",
    "TABLE_MD",
    "TABLE_TEX",
    "AccuracyTable",
    "Cell",
    "accuracy_table",
    "collect_results",
    "format_latex",
    "format_markdown",
    "numeric_columns",
    "parse_noise",
    "parse_run_id",
    "write_results",
]

RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"
TABLE_TEX = "table.tex"
# Kept in step with robustkit.sweep.grid / robustkit.train.trainer (not imported: no torch here).
_CONFIG, _RESULT, _ERROR = "config.json", "result.json", "error.txt"
_ORDER = ("sgd", "sam", "asam", "fsam")

#: ``results.csv`` columns. Accuracies are fractions in [0, 1] as in ``result.json``;
#: ``seconds`` is the run's training time (sum over its epochs, across resumes).
COLUMNS = [
    "run_id",
    "optimizer",
    "noise",
    "rate",
    "seed",
    "rho",
    "eta",
    "status",
    "final_test_acc",
    "best_test_acc",
    "train_acc_noisy",
    "train_acc_clean",
    "realised_noise_rate",
    "dataset",
    "model",
    "epochs",
    "seconds",
    "error",
]


def parse_noise(noise: str) -> tuple[str, float]:
    """``symmetric:0.4`` -> ``("symmetric", 0.4)``; ``none`` -> ``("none", 0.0)``."""
    kind, _, arg = str(noise).partition(":")
    if kind == "none":
        return "none", 0.0
    try:
        return kind, float(arg)
    except ValueError:
        return kind, math.nan


def parse_run_id(run_id: str, *, strict: bool = False) -> dict[str, Any]:
    """``fsam-symmetric0.4-seed1`` -> optimizer, noise kind, rate, seed (best effort).

    An id whose noise tag is not ``clean`` or ``<kind><rate>`` gives ``rate = nan`` (or ``{}``
    when ``strict``).
    """
    optimizer, _, rest = run_id.partition("-")
    tag, _, seed = rest.rpartition("-seed")
    match = re.fullmatch(r"([a-z]+)([0-9.e+-]+)", tag)
    if tag == "clean":
        kind, rate = "none", 0.0
    elif match is not None:
        kind, rate = match.group(1), float(match.group(2))
    elif strict:
        return {}
    else:
        kind, rate = tag, math.nan
    return {
        "optimizer": optimizer,
        "noise": kind,
        "rate": rate,
        "seed": int(seed) if seed.isdigit() else None,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_results(out: str | Path) -> pd.DataFrame:
    """One row per run directory in ``out`` that finished (``result.json``) or failed.

    Runs still in progress (neither file) are not rows. Rows are sorted by optimiser (sgd,
    sam, asam, fsam, then others), noise kind, rate and seed, so the file does not depend on
    the order in which runs finished.

    Returns:
        A DataFrame with :data:`COLUMNS`.
    """
    out = Path(out)
    rows = []
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        record = _read_json(run_dir / _RESULT)
        error_path = run_dir / _ERROR
        if record is None and not error_path.is_file():
            continue
        config = (record or {}).get("config") or _read_json(run_dir / _CONFIG)
        if config is not None:
            kind, rate = parse_noise(config.get("noise", "none"))
            row = {
                "run_id": config.get("run_id", run_dir.name),
                "optimizer": config.get("optimizer"),
                "noise": kind,
                "rate": rate,
                "seed": config.get("seed"),
                "rho": config.get("rho"),
                "eta": config.get("eta"),
                "dataset": config.get("dataset"),
                "model": config.get("model"),
                "epochs": config.get("epochs"),
            }
        else:
            row = {"run_id": run_dir.name, **parse_run_id(run_dir.name)}
        if record is not None:
            row["status"] = record.get("status")
            for key in (
                "final_test_acc",
                "best_test_acc",
                "train_acc_noisy",
                "train_acc_clean",
                "realised_noise_rate",
                "seconds",
            ):
                row[key] = record.get(key)
        else:
            row["status"] = "failed"
            text = error_path.read_text().strip()
            row["error"] = text.splitlines()[0] if text else "failed"
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        return frame
    numeric = [c for c in COLUMNS if c not in ("run_id", "optimizer", "noise", "status", "error")]
    numeric = [c for c in numeric if c not in ("dataset", "model")]
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["_order"] = frame["optimizer"].map(_optimizer_rank)
    frame = frame.sort_values(["_order", "optimizer", "noise", "rate", "seed"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def _optimizer_rank(name: Any) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _optimizer_label(name: str) -> str:
    return str(name).upper()


@dataclass
class Cell:
    """One table cell: the accuracies (in %) of the seeds that count."""

    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean accuracy in %."""
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) in %; NaN for fewer than two seeds."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan


@dataclass
class AccuracyTable:
    """The paper-layout table of a sweep.

    Attributes:
        rows: ``(noise kind, rate)`` per row, ascending rate.
        columns: Optimisers in table order.
        cells: ``cells[(row, column)]``.
        best: Per row, the columns whose mean (to two decimals) is the row's best.
        excluded: ``(run_id, status)`` of runs left out of the means.
        seeds: The seeds that count, over all cells.
        setting: ``digits / cnn / 8 epochs``.
    """

    rows: list[tuple[str, float]]
    columns: list[str]
    cells: dict[tuple[tuple[str, float], str], Cell]
    best: dict[tuple[str, float], set[str]]
    excluded: list[tuple[str, str]]
    seeds: list[int]
    setting: str

    def row_label(self, row: tuple[str, float]) -> str:
        """``40%`` (``symmetric 40%`` when several noise kinds; ``0% (clean)``)."""
        kind, rate = row
        text = f"{100 * rate:g}%"
        if kind == "none":
            return f"{text} (clean)"
        kinds = {k for k, _ in self.rows if k != "none"}
        return f"{kind} {text}" if len(kinds) > 1 else text

    def cell_text(self, row: tuple[str, float], column: str, pm: str = "±") -> str | None:
        """``93.12 ± 0.24`` (one seed: ``93.12``); ``None`` for an empty cell."""
        cell = self.cells.get((row, column))
        if cell is None or cell.n == 0:
            return None
        if cell.n == 1:
            return f"{cell.mean:.2f}"
        return f"{cell.mean:.2f} {pm} {cell.std:.2f}"

    def notes(self) -> list[str]:
        """Footer lines: what the numbers are, seeds, setting, exclusions."""
        counts = sorted({c.n for c in self.cells.values() if c.n})
        seeds = ", ".join(str(s) for s in self.seeds)
        if counts == [1]:
            spread = f"n = 1 seed ({seeds}): means only, no spread"
        else:
            n = max(counts) if counts else 0
            spread = f"mean ± sample std (ddof=1) over n = {n} seeds ({seeds})"
        lines = [f"Final test accuracy (%), {spread}; {self.setting}. Best mean per row in bold."]
        uneven = [
            f"{_optimizer_label(col)} at {self.row_label(row)}: n = {self.cells[(row, col)].n}"
            for row in self.rows
            for col in self.columns
            if (row, col) in self.cells and self.cells[(row, col)].n != max(counts)
        ]
        if len(counts) > 1:
            lines.append("Fewer seeds in: " + "; ".join(uneven) + ".")
        if self.excluded:
            lines.append(
                "Excluded from the means: "
                + ", ".join(f"{run} ({status})" for run, status in self.excluded)
                + "."
            )
        return lines


def accuracy_table(results: pd.DataFrame, metric: str = "final_test_acc") -> AccuracyTable:
    """Build the table from :func:`collect_results` rows (completed runs count).

    Args:
        results: One row per run.
        metric: The accuracy column (fractions; shown in %).
    """
    frame = results.copy()
    counted = frame[(frame["status"] == "completed") & frame[metric].notna()]
    excluded = [
        (str(r.run_id), str(r.status))
        for r in frame.itertuples()
        if r.status != "completed" or pd.isna(getattr(r, metric))
    ]
    columns = sorted(set(frame["optimizer"].dropna()), key=lambda n: (_optimizer_rank(n), n))
    rows = sorted(
        {(str(k), float(r)) for k, r in zip(frame["noise"], frame["rate"])},
        key=lambda kr: (kr[1], kr[0] != "none", kr[0]),
    )
    cells: dict[tuple[tuple[str, float], str], Cell] = {}
    for (kind, rate, optimizer), group in counted.groupby(["noise", "rate", "optimizer"]):
        values = [100.0 * float(v) for v in group.sort_values("seed")[metric]]
        cells[((str(kind), float(rate)), str(optimizer))] = Cell(values)
    best: dict[tuple[str, float], set[str]] = {}
    for row in rows:
        means = {c: round(cells[(row, c)].mean, 2) for c in columns if (row, c) in cells}
        if len(means) > 1:
            top = max(means.values())
            best[row] = {c for c, m in means.items() if m == top}
    seeds = sorted({int(s) for s in counted["seed"].dropna()})
    setting = " / ".join(
        ", ".join(str(v) for v in pd.unique(frame[col].dropna())) or "?"
        for col in ("dataset", "model")
    )
    epochs = ", ".join(str(int(v)) for v in pd.unique(frame["epochs"].dropna()))
    setting = f"{setting} / {epochs or '?'} epochs"
    return AccuracyTable(rows, columns, cells, best, excluded, seeds, setting)


def format_markdown(table: AccuracyTable) -> str:
    """The table as GitHub markdown, followed by its notes."""
    header = ["noise", *(_optimizer_label(c) for c in table.columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * len(header)) + " |",
    ]
    for row in table.rows:
        cells = [table.row_label(row)]
        for column in table.columns:
            text = table.cell_text(row, column)
            if text is None:
                text = "–"
            elif column in table.best.get(row, ()):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(table.notes()) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$")


def format_latex(table: AccuracyTable) -> str:
    """The table as a LaTeX ``tabular`` (booktabs), notes in a final spanning row."""
    ncols = len(table.columns) + 1
    header = " & ".join(["Noise", *(_optimizer_label(c) for c in table.columns)])
    lines = [
        "% robustkit noise-sweep table; needs \\usepackage{booktabs}",
        "\\begin{tabular}{l" + "c" * len(table.columns) + "}",
        "\\toprule",
        header + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = [_latex_escape(table.row_label(row))]
        for column in table.columns:
            text = table.cell_text(row, column, pm="$\\pm$")
            if text is None:
                text = "--"
            elif column in table.best.get(row, ()):
                text = f"\\textbf{{{text}}}"
            cells.append(text)
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    for note in table.notes():
        lines.append(f"\\multicolumn{{{ncols}}}{{l}}{{\\footnotesize {_latex_escape(note)}}} \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def write_results(out: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Aggregate ``out``: write ``results.csv``, ``table.md``, ``table.tex`` and the figure.

    Args:
        out: The sweep directory.
        figures: Also draw ``figures/noise_curve.png`` and ``.pdf`` (seaborn; needs at least
            one completed run).

    Returns:
        ``{name: path}`` of the files written (nothing when no run has finished).
    """
    out = Path(out)
    results = collect_results(out)
    files: dict[str, Path] = {}
    if results.empty:
        return files
    csv_path = out / RESULTS_CSV
    atomic_write(csv_path, lambda fh: results.to_csv(fh, index=False))
    files["results.csv"] = csv_path
    table = accuracy_table(results)
    for name, text in ((TABLE_MD, format_markdown(table)), (TABLE_TEX, format_latex(table))):
        atomic_write_text(out / name, text)
        files[name] = out / name
    if figures and (results["status"] == "completed").any():
        from robustkit.report.figures import save_noise_curve

        for path in save_noise_curve(results, out / "figures"):
            files[path.name] = path
    return files


def numeric_columns(results: pd.DataFrame, exclude: Sequence[str] = ("seconds",)) -> list[str]:
    """The numeric columns of ``results`` except ``exclude`` (to compare two sweeps' results)."""
    return [
        c for c in results.columns if c not in exclude and pd.api.types.is_numeric_dtype(results[c])
    ]
