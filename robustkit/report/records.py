"""Reading every record robustkit writes under a sweep or run directory (pandas only, no torch).

:func:`load_records` walks a directory tree and reads, wherever they are:

* sweep directories: ``results.csv`` (:data:`robustkit.sweep.results.COLUMNS`), ``sweep.toml``,
  ``table.md``/``table.tex``;
* run directories: ``config.json``, ``env.json``, ``metrics.jsonl``, ``result.json`` (and the
  first line of ``error.txt`` of a run that raised);
* evaluator records: any ``*.json`` whose ``format`` is ``robustkit.perturb`` or
  ``robustkit.sharpness`` (``perturb.json``, ``sharpness.json`` or a name given with ``--out``).

Anything unreadable is a :class:`ReportError` with one line that names the file. Evaluator
records are joined to the run they measured (by checkpoint path, else by run id), so figures
can place them by optimiser and noise rate and set sharpness against test accuracy.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustkit.sweep.results import (
    COLUMNS,
    RESULTS_CSV,
    TABLE_MD,
    TABLE_TEX,
    parse_noise,
    parse_run_id,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

__all__ = [
    "RECORD_FORMATS",
    "EvalRecords",
    "Records",
    "ReportError",
    "RunRecord",
    "SweepRecord",
    "load_records",
    "parse_noise",
]

#: Evaluator record formats this version reads, with the newest version it understands.
RECORD_FORMATS = {"robustkit.perturb": 1, "robustkit.sharpness": 1}
_KIND = {"robustkit.perturb": "perturb", "robustkit.sharpness": "sharpness"}
_REQUIRED = {
    "perturb": ("magnitude", "clean_accuracy", "adversarial_accuracy"),
    "sharpness": ("metric", "value"),
}
_RESULTS_REQUIRED = ("run_id", "optimizer", "noise", "rate", "seed", "status", "final_test_acc")
_RUN_FILES = ("config.json", "result.json", "metrics.jsonl")
_SWEEP_FILES = (RESULTS_CSV, "sweep.toml")
# Written by the run/sweep themselves (never evaluator records) and skipped by the scan.
_NOT_RECORDS = {"config.json", "env.json", "result.json"}
_SKIP_DIRS = {"checkpoints", "__pycache__"}


class ReportError(ValueError):
    """A user-facing problem with the records (missing, unreadable, unknown format): one line."""


@dataclass
class RunRecord:
    """One run directory.

    Attributes:
        path: The run directory.
        run_id: ``config.json``'s ``run_id``, else the directory name.
        config: ``config.json`` (the resolved ``TrainConfig`` + ``run_id``), if present.
        env: ``env.json`` (versions, device, date), if present.
        metrics: ``metrics.jsonl`` as a frame, one row per epoch, if present and non-empty.
        result: ``result.json`` (its presence means the run finished), if present.
        error: First line of ``error.txt`` of a run that raised, if present.
    """

    path: Path
    run_id: str
    config: dict[str, Any] | None = None
    env: dict[str, Any] | None = None
    metrics: pd.DataFrame | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def resolved_config(self) -> dict[str, Any]:
        """``config.json``, else the copy inside ``result.json``, else ``{}``."""
        return self.config or (self.result or {}).get("config") or {}

    @property
    def status(self) -> str:
        """``completed``/``diverged`` (from ``result.json``), ``failed`` or ``unfinished``."""
        if self.result is not None:
            return str(self.result.get("status", "completed"))
        return "failed" if self.error is not None else "unfinished"


@dataclass
class SweepRecord:
    """One sweep directory.

    Attributes:
        path: The sweep directory.
        results: ``results.csv`` (one row per run, :data:`~robustkit.sweep.results.COLUMNS`).
        config: ``sweep.toml`` parsed, if present.
        config_text: ``sweep.toml`` as written.
        tables: ``table.md``/``table.tex`` paths that exist.
    """

    path: Path
    results: pd.DataFrame | None = None
    config: dict[str, Any] | None = None
    config_text: str | None = None
    tables: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvalRecords:
    """One evaluator records file (``robustkit.perturb`` or ``robustkit.sharpness``).

    Attributes:
        path: The JSON file.
        kind: ``perturb`` or ``sharpness``.
        version: The format version.
        env: The environment it was measured in (perturb records carry one).
        options: The command's options (sharpness records carry them).
        records: One dict per (checkpoint, magnitude) or (checkpoint, metric).
    """

    path: Path
    kind: str
    version: int
    env: dict[str, Any] | None
    options: dict[str, Any] | None
    records: list[dict[str, Any]]


@dataclass
class Records:
    """Everything :func:`load_records` found under ``root``."""

    root: Path
    sweeps: list[SweepRecord] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    perturb: list[EvalRecords] = field(default_factory=list)
    sharpness: list[EvalRecords] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No sweep, run or evaluator record at all."""
        return not (self.sweeps or self.runs or self.perturb or self.sharpness)

    def summary(self) -> str:
        """``1 sweep, 8 runs, 1 perturb.json (24 records), 1 sharpness.json (16 records)``."""
        parts = [_count(len(self.sweeps), "sweep"), _count(len(self.runs), "run")]
        for name, files in (("perturb", self.perturb), ("sharpness", self.sharpness)):
            if files:
                n = sum(len(f.records) for f in files)
                parts.append(f"{_count(len(files), name + ' file')} ({_count(n, 'record')})")
        return ", ".join(parts)

    def relative(self, path: Path) -> str:
        """``path`` relative to ``root`` (``.`` for the root itself)."""
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return str(path)
        return str(rel) if str(rel) != "." else "."

    def group_of(self, run: RunRecord) -> str:
        """The group (directory holding the run, relative to ``root``) a run belongs to."""
        parent = run.path.parent if run.path != self.root else run.path
        return self.relative(parent) if _inside(parent, self.root) else "."

    # -- one row per run -----------------------------------------------------------------------

    def results(self) -> pd.DataFrame:
        """One row per finished or failed run: :data:`COLUMNS` plus ``group`` (its directory).

        A sweep's ``results.csv`` rows come first; a finished run that no ``results.csv`` lists
        (a single run directory, a sweep killed before it aggregated) gets a row built from its
        ``result.json`` and ``config.json`` the same way the sweep builds one. Unfinished runs
        have no row (their curves are still drawn).
        """
        frames = []
        listed: set[tuple[str, str]] = set()
        for sweep in self.sweeps:
            if sweep.results is None:
                continue
            group = self.relative(sweep.path)
            frame = sweep.results.copy()
            frame["group"] = group
            frames.append(frame)
            listed |= {(group, str(r)) for r in frame["run_id"]}
        rows = []
        for run in self.runs:
            group = self.group_of(run)
            if (group, run.run_id) in listed or run.status == "unfinished":
                continue
            rows.append({**_run_row(run), "group": group})
        if rows:
            frames.append(pd.DataFrame(rows, columns=[*COLUMNS, "group"]))
        if not frames:
            return pd.DataFrame(columns=[*COLUMNS, "group"])
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        for column in ("rate", "seed", "rho", "eta", "final_test_acc", "best_test_acc", "epochs"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame.reset_index(drop=True)

    def groups(self) -> list[str]:
        """The directories (relative to ``root``) whose runs form one table, in order."""
        found = [self.relative(s.path) for s in self.sweeps if s.results is not None]
        found += [self.group_of(r) for r in self.runs]
        return list(dict.fromkeys(found))

    def sweep_at(self, group: str) -> SweepRecord | None:
        """The sweep whose directory is ``group``, if any."""
        for sweep in self.sweeps:
            if self.relative(sweep.path) == group:
                return sweep
        return None

    def metrics_frame(self, group: str | None = None) -> pd.DataFrame:
        """Every run's ``metrics.jsonl`` (of ``group``, or all) stacked, one row per epoch.

        Columns: the epoch record's (``epoch``, ``train_loss``, ``test_acc``, ...) plus
        ``run_id``, ``group``, ``optimizer``, ``noise`` (kind), ``rate``, ``seed`` and
        ``status`` of the run. Unfinished runs are included (their curves end early).
        """
        frames = []
        for run in self.runs:
            if run.metrics is None or (group is not None and self.group_of(run) != group):
                continue
            config = run.resolved_config
            parsed = parse_run_id(run.run_id, strict=True)
            noise = config.get("noise")
            kind, rate = parse_noise(noise) if noise else (parsed.get("noise"), parsed.get("rate"))
            frame = run.metrics.copy()
            frame["run_id"] = run.run_id
            frame["group"] = self.group_of(run)
            frame["optimizer"] = config.get("optimizer") or parsed.get("optimizer") or run.run_id
            frame["noise"] = kind
            frame["rate"] = rate
            frame["seed"] = config.get("seed", parsed.get("seed"))
            frame["status"] = run.status
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- evaluator records joined to their runs -----------------------------------------------

    def match_run(self, record: dict[str, Any], source: Path) -> RunRecord | None:
        """The run a perturb/sharpness record measured: by checkpoint path, else by run id.

        A relative checkpoint path is tried against the working directory, ``root`` and the
        record file's directory. A run id shared by several runs (two sweeps) resolves to the
        run nearest to the record file.
        """
        by_dir = {_resolve(r.path): r for r in self.runs}
        checkpoint = record.get("checkpoint")
        if checkpoint:
            path = Path(str(checkpoint))
            bases = [Path()] if path.is_absolute() else [Path.cwd(), self.root, source.parent]
            for base in bases:
                run = by_dir.get(_resolve((base / path).parent))
                if run is not None:
                    return run
        run_id = record.get("run_id")
        candidates = [r for r in self.runs if run_id is not None and r.run_id == str(run_id)]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        here = _resolve(source.parent)
        return max(candidates, key=lambda r: len(os.path.commonpath([here, _resolve(r.path)])))

    def eval_frame(self, kind: str) -> pd.DataFrame:
        """All ``kind`` (``perturb``/``sharpness``) records as one frame, joined to their runs.

        Added columns: ``source`` (the records file, relative to ``root``), ``series`` (the
        optimiser, else the record's label), ``group``, ``noise_kind``, ``noise_rate``,
        ``train_seed`` (the run's seed; a record's own ``seed`` is the evaluator's), and
        ``final_test_acc``/``status`` of the run where it finished.
        """
        files = self.perturb if kind == "perturb" else self.sharpness
        results = self.results()
        by_key = {
            (g, str(r)): i for i, (g, r) in enumerate(zip(results["group"], results["run_id"]))
        }
        rows = []
        for records in files:
            for record in records.records:
                run = self.match_run(record, records.path)
                config = run.resolved_config if run is not None else {}
                run_id = record.get("run_id") or (run.run_id if run is not None else None)
                parsed = parse_run_id(str(run_id), strict=True) if run_id else {}
                noise = config.get("noise") or record.get("noise")
                kind_, rate = (
                    parse_noise(noise) if noise else (parsed.get("noise"), parsed.get("rate"))
                )
                optimizer = (
                    record.get("optimizer") or config.get("optimizer") or parsed.get("optimizer")
                )
                group = (
                    self.group_of(run) if run is not None else self.relative(records.path.parent)
                )
                row = {
                    **record,
                    "source": self.relative(records.path),
                    "run_id": run_id,
                    "optimizer": optimizer,
                    "series": optimizer or record.get("label") or record.get("checkpoint"),
                    "group": group,
                    "noise_kind": kind_,
                    "noise_rate": rate,
                    "train_seed": config.get("seed", parsed.get("seed")),
                    "final_test_acc": math.nan,
                    "status": run.status if run is not None else None,
                }
                index = by_key.get((group, str(run_id)))
                if index is not None:
                    row["final_test_acc"] = results["final_test_acc"].iloc[index]
                    row["status"] = results["status"].iloc[index]
                elif run is not None and run.result is not None:
                    row["final_test_acc"] = run.result.get("final_test_acc", math.nan)
                rows.append(row)
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["final_test_acc"] = pd.to_numeric(frame["final_test_acc"], errors="coerce")
            frame["noise_rate"] = pd.to_numeric(frame["noise_rate"], errors="coerce")
        return frame

    def perturb_frame(self) -> pd.DataFrame:
        """:meth:`eval_frame` of the weight-perturbation records."""
        return self.eval_frame("perturb")

    def sharpness_frame(self) -> pd.DataFrame:
        """:meth:`eval_frame` of the sharpness records."""
        return self.eval_frame("sharpness")


# -- loading ------------------------------------------------------------------------------------


def load_records(root: str | os.PathLike, *, exclude: list[Path] | None = None) -> Records:
    """Read every robustkit record under ``root`` (a sweep directory, a run directory or above).

    Args:
        root: The directory to search recursively.
        exclude: Directories not to search (the report's own output directory).

    Raises:
        ReportError: ``root`` is missing or not a directory, holds no record at all, or a
            record is unreadable, corrupt or of an unknown format/version (naming the file).
    """
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory")
    excluded = {_resolve(p) for p in exclude or []}
    found = Records(root=root)
    for directory, files in _walk(root, excluded):
        names = set(files)
        if names & set(_SWEEP_FILES):
            found.sweeps.append(_read_sweep(directory, names))
        if names & set(_RUN_FILES):
            found.runs.append(_read_run(directory, names))
        for name in sorted(n for n in names if n.endswith(".json") and n not in _NOT_RECORDS):
            records = _read_eval(directory / name)
            if records is not None:
                getattr(found, records.kind).append(records)
    if found.empty:
        raise ReportError(
            f"{root}: no robustkit records found (results.csv, sweep.toml, run directories with "
            "config.json/metrics.jsonl/result.json, perturb or sharpness JSON)"
        )
    return found


def _walk(root: Path, excluded: set[str]) -> Iterator[tuple[Path, list[str]]]:
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and d not in _SKIP_DIRS and _resolve(here / d) not in excluded
        )
        yield here, sorted(f for f in files if not f.startswith("."))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text (corrupt?)") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_run(directory: Path, names: set[str]) -> RunRecord:
    run = RunRecord(path=directory, run_id=directory.name)
    if "config.json" in names:
        run.config = _read_json_object(directory / "config.json")
    if "env.json" in names:
        run.env = _read_json_object(directory / "env.json")
    if "result.json" in names:
        run.result = _read_json_object(directory / "result.json")
    if "metrics.jsonl" in names:
        run.metrics = _read_metrics(directory / "metrics.jsonl")
    if "error.txt" in names:
        text = _read_text(directory / "error.txt").strip()
        run.error = text.splitlines()[0] if text else "failed"
    run.run_id = str(run.resolved_config.get("run_id") or directory.name)
    return run


def _read_metrics(path: Path) -> pd.DataFrame | None:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ReportError(f"{path}: line {number} is not JSON (corrupt?)") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ReportError(f"{path}: line {number} is not an epoch record")
        rows.append(row)
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _read_sweep(directory: Path, names: set[str]) -> SweepRecord:
    sweep = SweepRecord(path=directory)
    if RESULTS_CSV in names:
        sweep.results = _read_results_csv(directory / RESULTS_CSV)
    if "sweep.toml" in names:
        path = directory / "sweep.toml"
        sweep.config_text = _read_text(path)
        try:
            sweep.config = tomllib.loads(sweep.config_text)
        except tomllib.TOMLDecodeError as exc:
            raise ReportError(f"{path}: corrupt TOML ({exc})") from None
    sweep.tables = {n: directory / n for n in (TABLE_MD, TABLE_TEX) if n in names}
    return sweep


def _read_results_csv(path: Path) -> pd.DataFrame:
    _read_text(path)  # one-line errors for unreadable or non-UTF-8 files
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path}: empty file (corrupt?)") from None
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"{path}: corrupt CSV ({first})") from None
    missing = [c for c in _RESULTS_REQUIRED if c not in frame.columns]
    if missing:
        raise ReportError(
            f"{path}: not a robustkit results.csv (missing columns: {', '.join(missing)})"
        )
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = math.nan
    for column in ("rate", "final_test_acc"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if (values.isna() & frame[column].notna()).any():
            raise ReportError(f"{path}: column {column} holds non-numbers (corrupt?)")
    return frame


def _read_eval(path: Path) -> EvalRecords | None:
    """A perturb/sharpness records file; ``None`` for other JSON (not a record)."""
    known_name = path.name in ("perturb.json", "sharpness.json")
    try:
        data = _read_json(path)
    except ReportError:
        if known_name:
            raise
        return None  # some other JSON file that is not ours
    fmt = data.get("format") if isinstance(data, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("robustkit."):
        if known_name:
            raise ReportError(f"{path}: not a robustkit record (no robustkit format field)")
        return None
    if fmt not in RECORD_FORMATS:
        if not known_name:
            return None  # another robustkit file (e.g. robustkit.toy), not an evaluator record
        known = ", ".join(f"{k} v{v}" for k, v in RECORD_FORMATS.items())
        raise ReportError(f"{path}: unknown record format {fmt!r} (this robustkit reads {known})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ReportError(f"{path}: {fmt} record without a valid version ({version!r})")
    if version > RECORD_FORMATS[fmt]:
        raise ReportError(
            f"{path}: {fmt} version {version} is newer than this robustkit reads "
            f"(version {RECORD_FORMATS[fmt]}); upgrade robustkit"
        )
    kind = _KIND[fmt]
    records = data.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ReportError(f"{path}: 'records' must be a list of objects")
    for i, record in enumerate(records):
        missing = [k for k in _REQUIRED[kind] if k not in record]
        if missing:
            raise ReportError(f"{path}: record {i} lacks {', '.join(missing)}")
    env = data.get("env") if isinstance(data.get("env"), dict) else None
    options = data.get("options") if isinstance(data.get("options"), dict) else None
    return EvalRecords(path, kind, version, env, options, records)


# -- helpers ------------------------------------------------------------------------------------


def _run_row(run: RunRecord) -> dict[str, Any]:
    """A ``results.csv`` row of one run, as :func:`robustkit.sweep.results.collect_results`."""
    config = run.resolved_config
    kind, rate = parse_noise(config.get("noise", "none"))
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "optimizer": config.get("optimizer"),
        "noise": kind,
        "rate": rate,
        "seed": config.get("seed"),
        "rho": config.get("rho"),
        "eta": config.get("eta"),
        "dataset": config.get("dataset"),
        "model": config.get("model"),
        "epochs": config.get("epochs"),
        "status": run.status,
    }
    if run.result is not None:
        for key in (
            "final_test_acc",
            "best_test_acc",
            "train_acc_noisy",
            "train_acc_clean",
            "realised_noise_rate",
            "seconds",
        ):
            row[key] = run.result.get(key)
    else:
        row["error"] = run.error
    return row


def _resolve(path: Path) -> str:
    return os.path.realpath(path)


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(_resolve(path)).relative_to(_resolve(root))
    except ValueError:
        return False
    return True


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
