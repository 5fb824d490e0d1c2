"""The report: sections built from the records, rendered as a self-contained HTML page or Markdown.

:func:`build_report` reads the records (:func:`robustkit.report.records.load_records`), draws
and saves the figures (PNG and PDF under ``<out>/figures``), assembles the sections as a small
document model (headings, paragraphs, tables, figures, commands) and renders it once:

* ``html``: ``<out>/index.html`` - inline CSS, figures embedded as base64 PNG data URIs, no
  network needed to view it;
* ``md``: ``<out>/README.md`` - GitHub Markdown with image links into ``figures/``.

Sections: the label-noise table (the sweep's own table maths, mean ± std over seeds, best per
row in bold) and accuracy-vs-noise curve; training curves; weight perturbation (curves and the
accuracy drop per magnitude); sharpness (bars and a table); sharpness against test accuracy;
provenance (environment, seeds, configs, the commands that reproduce each figure). A section
whose records are missing says "not measured", never shows zeros.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustkit.io import atomic_write_text
from robustkit.report.records import Records, load_records
from robustkit.sweep.results import Cell, accuracy_table

__all__ = [
    "FORMATS",
    "NOT_MEASURED",
    "Code",
    "Details",
    "Image",
    "NotMeasured",
    "Para",
    "Pre",
    "ReportResult",
    "Section",
    "Table",
    "Text",
    "build_report",
    "render_html",
    "render_markdown",
]

FORMATS = ("html", "md")
#: What a report shows where a record is missing (never a zero).
NOT_MEASURED = "not measured"
_OUTPUT = {"html": "index.html", "md": "README.md"}


# -- the document model -------------------------------------------------------------------------


@dataclass
class Text:
    """One table cell (or inline text): ``bold`` marks the best of a row; ``muted`` a gap."""

    text: str
    bold: bool = False
    muted: bool = False


@dataclass
class Para:
    """A paragraph of plain text."""

    text: str


@dataclass
class NotMeasured:
    """A record that is missing: shown as "not measured: <why>"."""

    why: str


@dataclass
class Heading:
    """A sub-heading inside a section."""

    text: str


@dataclass
class Table:
    """A table with a caption above and notes below."""

    header: list[str]
    rows: list[list[Text]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    text: bool = False  # left-aligned text columns (numbers are right-aligned)


@dataclass
class Image:
    """A saved figure: ``stem.png`` and ``stem.pdf``."""

    stem: Path
    caption: str
    alt: str


@dataclass
class Code:
    """A command line that reproduces something, with a short title."""

    title: str
    text: str
    note: str = ""


@dataclass
class Pre:
    """Preformatted text (a config file)."""

    text: str


@dataclass
class Details:
    """Collapsible content (``<details>``)."""

    summary: str
    blocks: list[Any]


@dataclass
class Section:
    """A top-level section; ``measured`` is false when its records are all missing."""

    title: str
    anchor: str
    blocks: list[Any]
    measured: bool = True


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes:
        path: ``index.html`` or ``README.md`` (the first format asked for).
        figures: Every PNG and PDF written.
        sections: The document model.
        records: The records it was built from.
        paths: Format -> file, for every format written.
    """

    path: Path
    figures: list[Path]
    sections: list[Section]
    records: Records
    paths: dict[str, Path] = field(default_factory=dict)


# -- building -----------------------------------------------------------------------------------


class _Builder:
    def __init__(self, records: Records, runs_dir: Path, fig_dir: Path, dpi: int) -> None:
        self.records = records
        self.runs_dir = runs_dir
        self.fig_dir = fig_dir
        self.dpi = dpi
        self.figures: list[Path] = []
        self.results = records.results()
        self.groups = records.groups()
        self.commands: list[Code] = []

    # helpers

    def save(self, fig: Any, name: str) -> Path:
        from robustkit.report.figures import save_figure

        stem = self.fig_dir / name
        self.figures += save_figure(fig, stem, dpi=self.dpi)
        return stem

    def group_title(self, group: str) -> str | None:
        if len(self.groups) <= 1:
            return None
        return f"{group if group != '.' else self.runs_dir.name}"

    def group_slug(self, group: str) -> str:
        if len(self.groups) <= 1:
            return ""
        return "-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip("_") or "root")

    def group_path(self, group: str) -> Path:
        return self.runs_dir if group == "." else self.runs_dir / group

    def training_commands(self, group: str) -> list[Code]:
        from robustkit.report.provenance import sweep_command, train_command

        sweep = self.records.sweep_at(group)
        where = self.group_title(group)
        suffix = f" ({where})" if where else ""
        if sweep is not None and sweep.config is not None:
            command = sweep_command(sweep, self.group_path(group))
            if command is not None:
                title = f"Training (label-noise table, accuracy and training curves){suffix}"
                return [Code(title, command.text, command.note)]
        codes = []
        for run in self.records.runs:
            if self.records.group_of(run) != group:
                continue
            command = train_command(run, run.path)
            if command is not None:
                codes.append(Code(f"Training {run.run_id}", command.text, command.note))
        return codes

    # sections

    def accuracy_section(self) -> Section:
        from robustkit.report.figures import plot_noise_curve

        blocks: list[Any] = []
        measured = False
        if not self.groups:
            blocks.append(NotMeasured("no training runs under this directory"))
        for group in self.groups:
            title = self.group_title(group)
            if title:
                blocks.append(Heading(title))
            results = self.results[self.results["group"] == group]
            if results.empty:
                blocks.append(NotMeasured("no finished runs (no results.csv, no result.json)"))
                continue
            table = accuracy_table(results)
            blocks.append(_accuracy_table(table))
            sweep = self.records.sweep_at(group)
            if sweep is not None and sweep.tables:
                names = " / ".join(sweep.tables)
                blocks.append(Para(f"The same table as the sweep's {names}."))
            done = results[(results["status"] == "completed") & results["final_test_acc"].notna()]
            if done.empty:
                blocks.append(NotMeasured("no run completed, so no accuracy-vs-noise curve"))
            else:
                measured = True
                stem = self.save(plot_noise_curve(results), f"noise_curve{self.group_slug(group)}")
                blocks.append(
                    Image(
                        stem,
                        "Final test accuracy (%) against the label-noise rate (%): one line per "
                        "optimiser, mean ± 1 sample sd over seeds (band; none for one seed).",
                        "accuracy against label-noise rate",
                    )
                )
            codes = self.training_commands(group)
            blocks += codes[:1] if len(codes) == 1 else [Details("Reproduce: the runs", codes)]
        return Section("Label-noise accuracy", "accuracy", blocks, measured)

    def training_section(self) -> Section:
        from robustkit.report.figures import plot_training_curves

        blocks: list[Any] = []
        measured = False
        if not self.groups:
            blocks.append(NotMeasured("no training runs under this directory"))
        for group in self.groups:
            title = self.group_title(group)
            if title:
                blocks.append(Heading(title))
            metrics = self.records.metrics_frame(group)
            if metrics.empty:
                blocks.append(NotMeasured("no metrics.jsonl in the run directories"))
            else:
                measured = True
                stem = self.save(
                    plot_training_curves(metrics), f"training_curves{self.group_slug(group)}"
                )
                blocks.append(
                    Image(
                        stem,
                        "Test accuracy (%, top) and training loss on the noisy labels (mean "
                        "cross-entropy in nats, bottom) per epoch, one panel per noise rate, one "
                        "line per optimiser: mean over seeds, band ± 1 sample sd.",
                        "training curves",
                    )
                )
            blocks.append(Details("Per-run results", [self.runs_table(group)]))
        return Section("Training curves", "training", blocks, measured)

    def runs_table(self, group: str) -> Table:
        results = self.results[self.results["group"] == group].set_index("run_id")
        rows = []
        runs = {r.run_id: r for r in self.records.runs if self.records.group_of(r) == group}
        ids = list(dict.fromkeys([*results.index, *runs]))
        for run_id in ids:
            row = results.loc[run_id] if run_id in results.index else None
            if isinstance(row, pd.DataFrame):
                row = row.iloc[0]
            run = runs.get(run_id)
            status = row["status"] if row is not None else (run.status if run else "?")
            epochs_done = (
                str(len(run.metrics))
                if run is not None and run.metrics is not None
                else _cell_or_nm(row, "epochs", "{:.0f}")
            )
            cells = [
                Text(str(run_id)),
                Text(str(status)),
                Text(epochs_done),
                *(
                    _pct(row, key)
                    for key in (
                        "final_test_acc",
                        "best_test_acc",
                        "train_acc_noisy",
                        "train_acc_clean",
                        "realised_noise_rate",
                    )
                ),
                _num(row, "seconds", "{:.1f}"),
            ]
            rows.append(cells)
        header = [
            "run",
            "status",
            "epochs",
            "final test acc (%)",
            "best test acc (%)",
            "train acc, noisy labels (%)",
            "train acc, clean labels (%)",
            "realised noise (%)",
            "train time (s)",
        ]
        return Table(header, rows, caption="One row per run; accuracies in %.")

    def perturbation_section(self) -> Section:
        from robustkit.report.figures import plot_perturbation
        from robustkit.report.provenance import perturb_command

        frame = self.records.perturb_frame()
        if frame.empty:
            why = "no weight-perturbation records (perturb.json) under this directory"
            return Section("Weight perturbation", "perturbation", [NotMeasured(why)], False)
        keys = [k for k in ("norm", "radius_mode", "steps", "eval_split") if k in frame]
        if frame["group"].nunique() > 1:
            keys.append("group")
        blocks: list[Any] = []
        settings = list(frame.groupby(keys, dropna=False, sort=False)) if keys else [((), frame)]
        for index, (_, part) in enumerate(settings):
            part = part.reset_index(drop=True)
            first = part.iloc[0]
            describe = _perturb_setting(first)
            if len(settings) > 1:
                where = first["group"] if first["group"] != "." else self.runs_dir.name
                blocks.append(Heading(f"{where}: {describe}" if "group" in keys else describe))
            suffix = f"-{index + 1}" if len(settings) > 1 else ""
            stem = self.save(plot_perturbation(part), f"perturbation{suffix}")
            blocks.append(
                Image(
                    stem,
                    f"Accuracy (%) on the {first.get('eval_split', 'test')} split under weight "
                    f"perturbations of growing magnitude: {describe}. Solid: adversarial "
                    "(projected gradient ascent on the training loss); dashed: random directions "
                    "of the same size (mean over directions). One line per optimiser, mean over "
                    "runs (seeds), band ± 1 sample sd.",
                    "accuracy under weight perturbation",
                )
            )
            blocks.append(_drop_table(part, describe))
            for source in pd.unique(part["source"]):
                files = [f for f in self.records.perturb if self.records.relative(f.path) == source]
                command = perturb_command(files[0]) if files else None
                if command is not None:
                    title = f"Weight perturbation: curves and accuracy drops ({source})"
                    code = Code(title, command.text, command.note)
                    blocks.append(code)
        return Section("Weight perturbation", "perturbation", blocks, True)

    def sharpness_section(self) -> Section:
        from robustkit.report.figures import plot_sharpness_bars
        from robustkit.report.provenance import sharpness_command

        frame = self.records.sharpness_frame()
        if frame.empty:
            why = "no sharpness records (sharpness.json) under this directory"
            return Section("Sharpness", "sharpness", [NotMeasured(why)], False)
        blocks: list[Any] = []
        stem = self.save(plot_sharpness_bars(frame), "sharpness")
        subsets = "; ".join(str(s) for s in pd.unique(frame.get("subset", pd.Series()).dropna()))
        blocks.append(
            Image(
                stem,
                "Sharpness per optimiser, one panel per metric, bars grouped by noise rate: mean "
                "over runs (seeds) with ± 1 sample sd, or the estimator's standard error for a "
                "single run. Model in eval mode (BatchNorm running statistics)"
                + (f"; data: {subsets}." if subsets else "."),
                "sharpness per optimiser",
            )
        )
        blocks.append(_sharpness_table(frame))
        blocks.append(Details("All sharpness records", [_sharpness_records_table(frame)]))
        for source in pd.unique(frame["source"]):
            files = [f for f in self.records.sharpness if self.records.relative(f.path) == source]
            command = sharpness_command(files[0]) if files else None
            if command is not None:
                title = f"Sharpness: bars, table and sharpness vs accuracy ({source})"
                blocks.append(Code(title, command.text, command.note))
        return Section("Sharpness", "sharpness", blocks, True)

    def scatter_section(self) -> Section:
        from robustkit.report.figures import plot_sharpness_vs_accuracy

        title, anchor = "Sharpness against test accuracy", "sharpness-accuracy"
        frame = self.records.sharpness_frame()
        if frame.empty:
            why = "needs sharpness records and finished runs; there are no sharpness records"
            return Section(title, anchor, [NotMeasured(why)], False)
        joined = frame[frame["final_test_acc"].notna() & frame["value"].notna()]
        if joined.empty:
            why = "no sharpness record belongs to a finished run with a test accuracy"
            return Section(title, anchor, [NotMeasured(why)], False)
        stem = self.save(plot_sharpness_vs_accuracy(joined), "sharpness_vs_accuracy")
        missing = len(frame) - len(joined)
        caption = (
            "Final test accuracy (%) of each run against its sharpness, one point per run and "
            "metric; marker and colour per optimiser, labels give the run's noise rate."
        )
        if missing:
            caption += f" {missing} record(s) without a finished run are not shown."
        return Section(title, anchor, [Image(stem, caption, "sharpness against test accuracy")])

    def provenance_section(self, formats: Sequence[str], out: Path | None) -> Section:
        from robustkit import __version__
        from robustkit.report.provenance import environment_table, report_command

        records = self.records
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        blocks: list[Any] = [
            Para(
                f"Report generated {now} by robustkit {__version__} from {self.runs_dir} "
                f"({records.summary()})."
            )
        ]
        sources, rows = environment_table(records)
        if rows:
            blocks.append(
                Table(
                    ["", *sources],
                    [
                        [Text(what), *(Text(v, muted=v == "–") for v in values)]
                        for what, values in rows
                    ],
                    caption="Environment, from each run's env.json and the evaluator records "
                    "(values that differ between runs with their counts).",
                    text=True,
                )
            )
        else:
            blocks.append(NotMeasured("no env.json or evaluator environment recorded"))
        blocks.append(Heading("Seeds"))
        blocks.append(Para(self.seeds_text()))
        blocks.append(Heading("Configurations"))
        for group in self.groups:
            blocks += self.config_blocks(group)
        blocks.append(Heading("Reproduce"))
        blocks.append(
            Para(
                "Every figure and table above comes from these commands, run in order (options "
                "spelled out from the records, so later changes of defaults do not matter)."
            )
        )
        codes = []
        for group in self.groups:
            codes += self.training_commands(group)
        for block in self.all_blocks:
            if isinstance(block, Code) and not block.title.startswith("Training"):
                codes.append(block)
        command = report_command(self.runs_dir, formats, str(out) if out is not None else None)
        codes.append(Code("This report", command.text, command.note))
        seen: set[tuple[str, str]] = set()
        for code in codes:
            if (code.title, code.text) not in seen:
                seen.add((code.title, code.text))
                blocks.append(code)
        return Section("Provenance", "provenance", blocks, True)

    def seeds_text(self) -> str:
        parts = []
        seeds = sorted({int(s) for s in self.results["seed"].dropna()})
        if not seeds:
            seeds = sorted(
                {
                    int(r.resolved_config["seed"])
                    for r in self.records.runs
                    if "seed" in r.resolved_config
                }
            )
        if seeds:
            parts.append(
                f"training seeds {', '.join(map(str, seeds))} (label noise, init, batches)"
            )
        for kind, files in (
            ("perturb", self.records.perturb),
            ("sharpness", self.records.sharpness),
        ):
            values = sorted(
                {r.get("seed") for f in files for r in f.records if r.get("seed") is not None}
            )
            if values:
                parts.append(f"{kind} seed {', '.join(map(str, values))}")
        return "; ".join(parts) + "." if parts else NOT_MEASURED + "."

    def config_blocks(self, group: str) -> list[Any]:
        blocks: list[Any] = []
        title = self.group_title(group)
        configs = {
            r.run_id: r.resolved_config
            for r in self.records.runs
            if self.records.group_of(r) == group and r.resolved_config
        }
        sweep = self.records.sweep_at(group)
        label = f" ({title})" if title else ""
        if configs:
            keys = list(dict.fromkeys(k for c in configs.values() for k in c if k != "run_id"))
            shared = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) == 1]
            varying = [k for k in keys if k not in shared]
            first = next(iter(configs.values()))
            pairs = [(k, _config_value(first.get(k))) for k in shared]
            per_row = 3
            rows = []
            for i in range(0, len(pairs), per_row):
                chunk = pairs[i : i + per_row]
                chunk += [("", "")] * (per_row - len(chunk))
                rows.append([Text(t, bold=j % 2 == 0) for kv in chunk for j, t in enumerate(kv)])
            blocks.append(
                Table(
                    ["setting", "value"] * per_row,
                    rows,
                    caption=f"Settings shared by all {len(configs)} runs{label} (config.json).",
                    text=True,
                )
            )
            if varying:
                rows = [
                    [Text(run_id), *(Text(_config_value(c.get(k))) for k in varying)]
                    for run_id, c in configs.items()
                ]
                blocks.append(
                    Details(
                        f"Per-run settings{label}",
                        [Table(["run", *varying], rows, caption="Settings that differ by run.")],
                    )
                )
        if sweep is not None and sweep.config_text is not None:
            blocks.append(Details(f"sweep.toml{label}", [Pre(sweep.config_text)]))
        if not blocks:
            blocks.append(NotMeasured(f"no config.json or sweep.toml{label}"))
        return blocks

    def build(self, formats: Sequence[str], out: Path | None) -> list[Section]:
        sections = [
            self.accuracy_section(),
            self.training_section(),
            self.perturbation_section(),
            self.sharpness_section(),
            self.scatter_section(),
        ]
        self.all_blocks = [b for s in sections for b in _flatten(s.blocks)]
        sections.append(self.provenance_section(formats, out))
        return sections


def _flatten(blocks: Sequence[Any]) -> list[Any]:
    flat = []
    for block in blocks:
        flat.append(block)
        if isinstance(block, Details):
            flat += _flatten(block.blocks)
    return flat


def _accuracy_table(table: Any) -> Table:
    """The sweep's :class:`~robustkit.sweep.results.AccuracyTable` as a report table."""
    from robustkit.report.style import optimizer_label

    rows = []
    for row in table.rows:
        cells = [Text(table.row_label(row))]
        for column in table.columns:
            text = table.cell_text(row, column)
            if text is None:
                cells.append(Text(NOT_MEASURED, muted=True))
            else:
                cells.append(Text(text, bold=column in table.best.get(row, ())))
        rows.append(cells)
    header = ["noise", *(optimizer_label(c) for c in table.columns)]
    return Table(header, rows, caption="Final test accuracy (%).", notes=table.notes())


def _mean_std_text(cell: Cell, fmt: str = "{:.2f}") -> str:
    if cell.n == 1:
        return fmt.format(cell.mean)
    return f"{fmt.format(cell.mean)} ± {fmt.format(cell.std)}"


def _panel_label(kind: Any, rate: Any, kinds: int) -> str:
    from robustkit.report.figures import noise_label

    return noise_label(kind if isinstance(kind, str) else None, rate, kinds=kinds)


def _panels(frame: pd.DataFrame) -> list[tuple[Any, Any]]:
    from robustkit.report.figures import _noise_panels

    return _noise_panels(frame, "noise_kind", "noise_rate")


def _panel_mask(frame: pd.DataFrame, panel: tuple[Any, Any]) -> pd.Series:
    from robustkit.report.figures import _in_panel

    return _in_panel(frame, "noise_kind", "noise_rate", panel)


def _perturb_setting(first: pd.Series) -> str:
    steps = first.get("steps")
    ball = first.get("norm", "?")
    mode = first.get("radius_mode", "?")
    text = f"{ball} ball ({mode} radius), {steps}-step PGD"
    trials = first.get("random_trials")
    if trials is not None and not (isinstance(trials, float) and math.isnan(trials)):
        text += f", {int(trials)} random directions"
    n_eval = first.get("eval_num_examples")
    if n_eval is not None and not (isinstance(n_eval, float) and math.isnan(n_eval)):
        text += f", {int(n_eval)} {first.get('eval_split', 'test')} examples"
    return text


def _drop_table(frame: pd.DataFrame, describe: str) -> Table:
    """Rows (noise, magnitude), columns optimisers: clean − adversarial accuracy in points."""
    from robustkit.report.style import optimizer_label, optimizer_order

    order = optimizer_order(frame["series"])
    panels = _panels(frame)
    kinds = len({k for k, _ in panels if k not in (None, "none")})
    rows = []
    counts = set()
    for panel in panels:
        in_panel = frame[_panel_mask(frame, panel)]
        for m in sorted(pd.unique(in_panel["magnitude"].astype(float))):
            if m == 0:
                continue
            at_m = in_panel[in_panel["magnitude"].astype(float) == m]
            cells = {}
            for name in order:
                part = at_m[at_m["series"] == name]
                drops = 100.0 * (part["clean_accuracy"] - part["adversarial_accuracy"])
                drops = [float(v) for v in drops.dropna()]
                if drops:
                    cells[name] = Cell(drops)
                    counts.add(len(drops))
            best = min((round(c.mean, 2) for c in cells.values()), default=None)
            row = [Text(_panel_label(*panel, kinds)), Text(f"{m:g}")]
            for name in order:
                cell = cells.get(name)
                if cell is None:
                    row.append(Text(NOT_MEASURED, muted=True))
                else:
                    bold = len(cells) > 1 and round(cell.mean, 2) == best
                    row.append(Text(_mean_std_text(cell), bold=bold))
            rows.append(row)
    n = max(counts) if counts else 0
    spread = f"mean ± sample sd over n = {n} runs" if n > 1 else "n = 1 run"
    return Table(
        ["noise", "magnitude m", *(optimizer_label(o) for o in order)],
        rows,
        caption=(
            "Accuracy drop under adversarial weight perturbation: clean − adversarial accuracy "
            f"in percentage points ({describe}; {spread}). Smallest drop per row in bold."
        ),
    )


def _sharpness_table(frame: pd.DataFrame) -> Table:
    """Rows (metric, noise), columns optimisers: mean ± sd over runs (or ± the stderr)."""
    from robustkit.report.figures import SHARPNESS_METRICS, _metric_order
    from robustkit.report.style import optimizer_label, optimizer_order

    order = optimizer_order(frame["series"])
    panels = _panels(frame)
    kinds = len({k for k, _ in panels if k not in (None, "none")})
    rows = []
    for metric in _metric_order(frame):
        of_metric = frame[frame["metric"] == metric]
        for panel in panels:
            in_panel = of_metric[_panel_mask(of_metric, panel)]
            row = [
                Text(SHARPNESS_METRICS.get(metric, (metric,))[0]),
                Text(_panel_label(*panel, kinds)),
            ]
            for name in order:
                part = in_panel[in_panel["series"] == name]
                values = [float(v) for v in part["value"].dropna()]
                if not values:
                    row.append(Text(NOT_MEASURED, muted=True))
                elif len(values) > 1:
                    cell = Cell(values)
                    row.append(Text(f"{cell.mean:.4g} ± {cell.std:.2g} (n = {cell.n})"))
                else:
                    stderr = part["stderr"].dropna() if "stderr" in part else pd.Series()
                    text = f"{values[0]:.4g}"
                    if len(stderr):
                        text += f" ± {float(stderr.iloc[0]):.2g} (stderr)"
                    row.append(Text(text + " (n = 1)"))
            rows.append(row)
    return Table(
        ["metric", "noise", *(optimizer_label(o) for o in order)],
        rows,
        caption="Sharpness per optimiser: mean ± sample sd over runs (seeds); for one run, the "
        "value ± the estimator's standard error where it has one. Units as in the figure.",
    )


def _sharpness_records_table(frame: pd.DataFrame) -> Table:
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            [
                Text(str(r.get("label") or r.get("run_id") or r.get("checkpoint"))),
                Text(str(r["metric"])),
                _num(r, "value", "{:.6g}"),
                _num(r, "stderr", "{:.3g}", missing="–"),
                _num(r, "residual", "{:.3g}", missing="–"),
                Text(str(r.get("estimator", ""))),
                _num(r, "num_examples", "{:.0f}"),
                Text(str(r.get("split", ""))),
            ]
        )
    header = ["run", "metric", "value", "stderr", "residual", "estimator", "examples", "split"]
    return Table(header, rows, caption="One row per record, as measured.")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell_or_nm(row: Any, key: str, fmt: str) -> str:
    if row is None or key not in row or _is_missing(row[key]):
        return NOT_MEASURED
    return fmt.format(float(row[key]))


def _pct(row: Any, key: str) -> Text:
    if row is None or key not in row or _is_missing(row[key]):
        return Text(NOT_MEASURED, muted=True)
    return Text(f"{100 * float(row[key]):.2f}")


def _num(row: Any, key: str, fmt: str, missing: str = NOT_MEASURED) -> Text:
    value = row.get(key) if hasattr(row, "get") else None
    if _is_missing(value):
        return Text(missing, muted=True)
    try:
        return Text(fmt.format(float(value)))
    except (TypeError, ValueError):
        return Text(str(value))


def _config_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "–" if value is None else str(value)


# -- rendering ----------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1d1d1f; max-width: 1180px; margin: 2rem auto; padding: 0 1.2rem; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #d0d0d0; padding-bottom: .2rem;
  margin-top: 2.4rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
.sub { color: #555; margin-top: 0; }
nav ol { columns: 2; padding-left: 1.2rem; }
.badge { font-size: .75rem; padding: 0 .4rem; border-radius: .6rem; margin-left: .4rem; }
.ok { background: #e3f1e6; color: #1d5c2c; } .nm-badge { background: #eee; color: #666; }
table { border-collapse: collapse; margin: .6rem 0 .3rem; font-size: .88rem; }
th, td { border: 1px solid #c9c9c9; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.muted { color: #888; font-style: italic; }
table.text td, table.text th { text-align: left; }
p.caption { font-size: .85rem; color: #333; margin: 1rem 0 .2rem; max-width: 60rem; }
.notes { font-size: .8rem; color: #555; margin: 0 0 1rem; }
figure { margin: 1rem 0 1.4rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #333; max-width: 60rem; }
.nm { color: #666; font-style: italic; border-left: 3px solid #bbb; padding-left: .6rem; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: .6rem .8rem; overflow-x: auto;
  font-size: .8rem; }
.cmd-title { font-weight: 600; margin: .8rem 0 .2rem; font-size: .9rem; }
.cmd-note { font-size: .8rem; color: #555; margin: .1rem 0 .6rem; }
details { margin: .6rem 0; } summary { cursor: pointer; color: #0b5394; }
@media print { details { display: block; } }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_blocks(blocks: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h3>{_e(block.text)}</h3>")
        elif isinstance(block, Para):
            out.append(f"<p>{_e(block.text)}</p>")
        elif isinstance(block, NotMeasured):
            out.append(f'<p class="nm">{NOT_MEASURED}: {_e(block.why)}</p>')
        elif isinstance(block, Table):
            if block.caption:
                out.append(f'<p class="caption">{_e(block.caption)}</p>')
            out.append('<table class="text">' if block.text else "<table>")
            out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in block.header))
            out.append("</tr></thead><tbody>")
            for row in block.rows:
                cells = []
                for cell in row:
                    text = _e(cell.text)
                    text = f"<strong>{text}</strong>" if cell.bold else text
                    cls = ' class="muted"' if cell.muted else ""
                    cells.append(f"<td{cls}>{text}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
            if block.notes:
                out.append('<p class="notes">' + "<br>".join(_e(n) for n in block.notes) + "</p>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.stem.with_suffix(".png").read_bytes()).decode("ascii")
            name = block.stem.name
            out.append(
                f'<figure id="fig-{_e(name)}"><img src="data:image/png;base64,{data}" '
                f'alt="{_e(block.alt)}"><figcaption>{_e(block.caption)} '
                f"<em>(figures/{_e(name)}.png, .pdf)</em></figcaption></figure>"
            )
        elif isinstance(block, Code):
            out.append(f'<p class="cmd-title">{_e(block.title)}</p>')
            out.append(f"<pre><code>{_e(block.text)}</code></pre>")
            if block.note:
                out.append(f'<p class="cmd-note">{_e(block.note)}</p>')
        elif isinstance(block, Pre):
            out.append(f"<pre>{_e(block.text)}</pre>")
        elif isinstance(block, Details):
            out.append(f"<details><summary>{_e(block.summary)}</summary>")
            out += _html_blocks(block.blocks)
            out.append("</details>")
        else:  # pragma: no cover - a bug in a section builder
            raise TypeError(f"unknown block {type(block).__name__}")
    return out


def render_html(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page: inline CSS, figures as data URIs, no external assets."""
    nav = []
    for s in sections:
        badge = (
            '<span class="badge ok">measured</span>'
            if s.measured
            else (f'<span class="badge nm-badge">{NOT_MEASURED}</span>')
        )
        nav.append(f'<li><a href="#{s.anchor}">{_e(s.title)}</a>{badge}</li>')
    body = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(subtitle)}</p>',
        "<nav><ol>" + "".join(nav) + "</ol></nav>",
    ]
    for s in sections:
        body.append(f'<section id="{s.anchor}"><h2>{_e(s.title)}</h2>')
        body += _html_blocks(s.blocks)
        body.append("</section>")
    body += ["</body>", "</html>", ""]
    return "\n".join(body)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_blocks(blocks: Sequence[Any], fig_prefix: str) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"### {block.text}", ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, NotMeasured):
            out += [f"> *{NOT_MEASURED}*: {block.why}", ""]
        elif isinstance(block, Table):
            if block.caption:
                out += [block.caption, ""]
            out.append("| " + " | ".join(_md(h) for h in block.header) + " |")
            out.append("| " + " | ".join("---" for _ in block.header) + " |")
            for row in block.rows:
                cells = []
                for cell in row:
                    text = _md(cell.text)
                    text = f"**{text}**" if cell.bold else f"*{text}*" if cell.muted else text
                    cells.append(text)
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
            if block.notes:
                out += ["<br>".join(block.notes), ""]
        elif isinstance(block, Image):
            name = block.stem.name
            out += [
                f"![{block.alt}]({fig_prefix}{name}.png)",
                "",
                f"*{block.caption}* ([PNG]({fig_prefix}{name}.png), [PDF]({fig_prefix}{name}.pdf))",
                "",
            ]
        elif isinstance(block, Code):
            out += [f"**{block.title}**", "", "```sh", block.text, "```", ""]
            if block.note:
                out += [f"<sub>{block.note}</sub>", ""]
        elif isinstance(block, Pre):
            out += ["```toml", block.text.rstrip("\n"), "```", ""]
        elif isinstance(block, Details):
            out += [f"<details><summary>{html.escape(block.summary)}</summary>", ""]
            out += _md_blocks(block.blocks, fig_prefix)
            out += ["</details>", ""]
        else:  # pragma: no cover - a bug in a section builder
            raise TypeError(f"unknown block {type(block).__name__}")
    return out


def _github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render_markdown(
    title: str, subtitle: str, sections: Sequence[Section], fig_prefix: str = "figures/"
) -> str:
    """The same report as GitHub Markdown; figures are image links under ``fig_prefix``."""
    lines = [f"# {title}", "", subtitle, ""]
    for s in sections:
        status = "" if s.measured else f" ({NOT_MEASURED})"
        lines.append(f"- [{s.title}](#{_github_slug(s.title)}){status}")
    lines.append("")
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += _md_blocks(s.blocks, fig_prefix)
    return "\n".join(lines).rstrip("\n") + "\n"


def build_report(
    runs_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    fmt: str | Sequence[str] = "html",
    dpi: int = 150,
) -> ReportResult:
    """Read the records under ``runs_dir`` and write the report.

    Args:
        runs_dir: A sweep directory, a run directory, or a directory above several.
        out: The report directory (default ``<runs_dir>/report``); never searched for records.
        fmt: ``html`` (``index.html``, figures embedded), ``md`` (``README.md`` with image
            links), or several of them (the figures are drawn once).
        dpi: Resolution of the PNG figures.

    Returns:
        The :class:`ReportResult` (``path``: the first format's file; ``paths``: all).

    Raises:
        ReportError: missing directory, no records, unreadable or unknown records (one line).
        ValueError: an unknown ``fmt`` or a ``dpi`` < 10.
    """
    formats = [fmt] if isinstance(fmt, str) else list(dict.fromkeys(fmt))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown report format {(bad or [''])[0]!r} (use {' or '.join(FORMATS)})")
    if not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi must be an int >= 10, got {dpi!r}")
    runs_dir = Path(runs_dir)
    out_dir = Path(out) if out is not None else runs_dir / "report"
    records = load_records(runs_dir, exclude=[out_dir])
    builder = _Builder(records, runs_dir, out_dir / "figures", dpi)
    sections = builder.build(formats, Path(out) if out is not None else None)
    title = f"robustkit report: {runs_dir.resolve().name}"
    subtitle = (
        f"{records.summary()} under {runs_dir}. Accuracies in %, means ± sample sd (ddof = 1) "
        "over seeds; missing records are marked “not measured”."
    )
    paths = {}
    for name in formats:
        path = out_dir / _OUTPUT[name]
        text = (
            render_html(title, subtitle, sections)
            if name == "html"
            else render_markdown(title, subtitle, sections)
        )
        atomic_write_text(path, text)
        paths[name] = path
    return ReportResult(paths[formats[0]], builder.figures, sections, records, paths)
