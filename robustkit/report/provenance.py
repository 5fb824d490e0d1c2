"""Where a report's numbers came from: the commands that reproduce them and the environment.

Commands are rebuilt from the records alone (``sweep.toml``, ``config.json``, a perturb
record's settings, a sharpness file's ``options``), option by option, so they name every
setting explicitly rather than relying on today's defaults. Each is kept as an ``argv`` list
(what the tests parse with the real click commands) and as shell text.
"""

from __future__ import annotations

import glob
import math
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.report.records import EvalRecords, Records, RunRecord, SweepRecord

__all__ = [
    "TRAIN_CONFIG_OPTIONS",
    "TRAIN_CONFIG_SKIPPED",
    "Command",
    "environment_table",
    "perturb_command",
    "report_command",
    "sharpness_command",
    "sweep_command",
    "train_command",
]

#: ``TrainConfig`` fields and the ``robustkit train`` option that sets each (``noise-sweep``
#: takes the same ones except the grid's own: optimizer, noise, seed, rho, eta).
TRAIN_CONFIG_OPTIONS: dict[str, str] = {
    "optimizer": "--optimizer",
    "rho": "--rho",
    "noise": "--noise",
    "seed": "--seed",
    "dataset": "--dataset",
    "data_dir": "--data-dir",
    "model": "--model",
    "base": "--base",
    "lr": "--lr",
    "momentum": "--momentum",
    "weight_decay": "--weight-decay",
    "nesterov": "--nesterov",
    "eta": "--eta",
    "asam_convention": "--asam-convention",
    "bn_policy": "--bn-policy",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "schedule": "--schedule",
    "warmup_epochs": "--warmup-epochs",
    "milestones": "--milestones",
    "gamma": "--gamma",
    "label_smoothing": "--label-smoothing",
    "augment": "--augment",
    "amp": "--amp",
    "device": "--device",
}
#: ``TrainConfig`` fields no option sets: they do not change a run's numbers.
TRAIN_CONFIG_SKIPPED = frozenset({"num_threads", "run_id"})
_GRID_FIELDS = ("optimizer", "noise", "seed", "rho", "eta")
_SHARPNESS_OPTIONS = (
    ("num_examples", "--num-examples"),
    ("split", "--split"),
    ("labels", "--labels"),
    ("top_k", "--top-k"),
    ("which", "--which"),
    ("method", "--method"),
    ("tol", "--tol"),
    ("max_iters", "--max-iters"),
    ("trace_method", "--trace-method"),
    ("rtol", "--rtol"),
    ("max_probes", "--max-probes"),
    ("fisher_samples", "--fisher-samples"),
    ("per_example", "--per-example"),
    ("rho", "--rho"),
    ("ball", "--ball"),
    ("eps_steps", "--eps-steps"),
    ("seed", "--seed"),
    ("batch_size", "--batch-size"),
    ("device", "--device"),
    ("dtype", "--dtype"),
)


@dataclass(frozen=True)
class Command:
    """A reproducing command line.

    Attributes:
        argv: The arguments after ``robustkit`` (``argv[0]`` is the command name).
        text: Shell text (``robustkit ...``), wrapped with ``\\`` continuations.
        note: What it reproduces or a caveat, one line.
    """

    argv: tuple[str, ...]
    text: str
    note: str = ""


def _value(value: Any) -> str:
    """A number or string as a command-line value (floats exact: ``repr``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    return str(value)


def _command(
    argv: Sequence[str], note: str = "", *, raw: Iterable[int] = (), positional: int = 1
) -> Command:
    """Build a :class:`Command`; argument indices in ``raw`` are shell globs left unquoted."""
    raw = set(raw)
    words = [_quote_glob(a) if i in raw else shlex.quote(a) for i, a in enumerate(argv)]
    # "robustkit cmd positional..." then one "--option value" chunk per line when long
    chunks = [" ".join(["robustkit", *words[: 1 + positional]])]
    i = 1 + positional
    while i < len(words):
        if i + 1 < len(words) and not argv[i + 1].startswith("--"):
            chunks.append(f"{words[i]} {words[i + 1]}")
            i += 2
        else:
            chunks.append(words[i])
            i += 1
    lines, line = [], chunks[0]
    for chunk in chunks[1:]:
        if len(line) + 1 + len(chunk) > 88:
            lines.append(line)
            line = "    " + chunk
        else:
            line = f"{line} {chunk}"
    lines.append(line)
    return Command(tuple(argv), " \\\n".join(lines), note)


def _quote_glob(pattern: str) -> str:
    """``DIR/*/NAME`` for a shell: quote DIR and NAME, leave the ``*`` to the shell."""
    head, _, tail = pattern.rpartition("/*/")
    return f"{shlex.quote(head)}/*/{shlex.quote(tail)}"


def _train_args(config: dict[str, Any], fields: Iterable[str]) -> list[str]:
    args: list[str] = []
    for name in fields:
        option = TRAIN_CONFIG_OPTIONS.get(name)
        value = config.get(name)
        if option is None or value is None:
            continue
        if name in ("nesterov", "amp"):
            args.append(option if value else f"--no-{option[2:]}")
        elif name == "milestones":
            args += [option, _value(list(value))]
        else:
            args += [option, _value(value)]
    return args


def train_command(run: RunRecord, out: str | os.PathLike) -> Command | None:
    """``robustkit train`` with every setting of the run's ``config.json`` (``None`` without)."""
    config = run.resolved_config
    if not config:
        return None
    return _command(
        ["train", *_train_args(config, TRAIN_CONFIG_OPTIONS), "--out", str(out)],
        note=f"trains {run.run_id} (an existing finished run directory is left as it is)",
        positional=0,
    )


def sweep_command(sweep: SweepRecord, out: str | os.PathLike) -> Command | None:
    """``robustkit noise-sweep`` with every setting of ``sweep.toml`` (``None`` without it).

    Overrides that options cannot express (per seed, or of ``eta``) fall back to
    ``--config <sweep.toml>``.
    """
    data = sweep.config
    if data is None:
        return None
    grid = data.get("sweep", {})
    train = data.get("train", {})
    overrides = data.get("overrides", [])
    expressible = all(
        set(o) <= {"optimizer", "rate", "rho"} and "rate" in o and "rho" in o for o in overrides
    )
    unknown = [k for k in train if k not in TRAIN_CONFIG_OPTIONS or k in _GRID_FIELDS]
    note = "trains the grid; into an existing directory it only finishes missing runs"
    if not expressible or unknown:
        return _command(
            ["noise-sweep", "--config", str(sweep.path / "sweep.toml"), "--out", str(out)],
            note=note + " (settings from the sweep's own sweep.toml)",
            positional=0,
        )
    args = ["noise-sweep"]
    for key, option in (
        ("optimizers", "--optimizers"),
        ("noise_type", "--noise-type"),
        ("rates", "--rates"),
        ("seeds", "--seeds"),
    ):
        if key in grid:
            args += [option, _value(grid[key])]
    params = data.get("optimizers", {})
    for key, option in (("rho", "--rho"), ("eta", "--eta")):
        items = [f"{name}={_value(p[key])}" for name, p in params.items() if key in p]
        if items:
            args += [option, ",".join(items)]
    if overrides:
        args += [
            "--rho-at",
            ",".join(f"{o['optimizer']}:{_value(o['rate'])}={_value(o['rho'])}" for o in overrides),
        ]
    args += _train_args(train, [k for k in TRAIN_CONFIG_OPTIONS if k in train])
    for key, option in (("workers", "--workers"), ("executor", "--executor")):
        if key in grid:
            args += [option, _value(grid[key])]
    args += ["--out", str(out)]
    return _command(args, note=note, positional=0)


def _checkpoint_args(paths: list[str]) -> tuple[list[str], set[int]]:
    """Checkpoint arguments; ``DIR/*/NAME`` when that glob matches exactly these files."""
    if len(paths) > 3:
        parents = {str(Path(p).parent.parent) for p in paths}
        names = {Path(p).name for p in paths}
        if len(parents) == 1 and len(names) == 1:
            parent, name = parents.pop(), names.pop()
            pattern = os.path.join(glob.escape(parent), "*", glob.escape(name))
            if sorted(glob.glob(pattern)) == sorted(paths):
                return [f"{parent}/*/{name}"], {0}
    return list(paths), set()


def perturb_command(records: EvalRecords) -> Command | None:
    """``robustkit perturb`` with the settings its records carry."""
    if not records.records:
        return None
    recs = records.records
    first = recs[0]
    checkpoints = list(dict.fromkeys(str(r["checkpoint"]) for r in recs if r.get("checkpoint")))
    if not checkpoints:
        return None
    cps, raw = _checkpoint_args(checkpoints)
    magnitudes = list(dict.fromkeys(float(r["magnitude"]) for r in recs))
    args = ["perturb", *cps, "--magnitudes", _value(magnitudes)]

    def add(key: str, option: str) -> None:
        if first.get(key) is not None:
            args.extend([option, _value(first[key])])

    add("norm", "--norm")
    add("radius_mode", "--radius")
    add("eta", "--eta")
    if first.get("include_bn_bias") is not None:
        args.append("--include-bn-bias" if first["include_bn_bias"] else "--weights-only")
    add("steps", "--steps")
    if first.get("step_size") and first.get("steps"):
        args += ["--step-size", _value(first["step_size"])]
    if first.get("random_start") is not None:
        args.append("--random-start" if first["random_start"] else "--no-random-start")
    add("restarts", "--restarts")
    add("random_trials", "--random-trials")
    add("attack_split", "--attack-data")
    add("attack_num_examples", "--num-examples")
    add("eval_split", "--eval-data")
    subset = str(first.get("eval_subset", "all"))
    if not subset.startswith("all") and first.get("eval_num_examples") is not None:
        args += ["--eval-examples", _value(first["eval_num_examples"])]
    datasets = {r.get("dataset") for r in recs}
    if len(datasets) == 1 and None not in datasets:
        args += ["--dataset", str(datasets.pop())]
    add("seed", "--seed")
    add("device", "--device")
    args += ["--out", str(records.path.parent)]
    note = "checkpoint paths as recorded (relative ones: from where the records were made)"
    return _command(args, note=note, raw={1 + i for i in raw}, positional=len(cps))


def sharpness_command(records: EvalRecords) -> Command | None:
    """``robustkit sharpness`` with the options its file records."""
    recs = records.records
    checkpoints = list(dict.fromkeys(str(r["checkpoint"]) for r in recs if r.get("checkpoint")))
    if not checkpoints:
        return None
    options = records.options or {}
    metrics = options.get("metrics") or list(dict.fromkeys(str(r["metric"]) for r in recs))
    cps, raw = _checkpoint_args(checkpoints)
    args = ["sharpness", *cps, "--metrics", _value(list(metrics))]
    for key, option in _SHARPNESS_OPTIONS:
        value = options.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            args += [option, _value(value)]
    args += ["--out", str(records.path)]
    note = "checkpoint paths as recorded (relative ones: from where the records were made)"
    return _command(args, note=note, raw={1 + i for i in raw}, positional=len(cps))


def report_command(
    runs_dir: str | os.PathLike, formats: str | Sequence[str], out: str | None = None
) -> Command:
    """``robustkit report RUNS_DIR`` as this report was made."""
    args = ["report", str(runs_dir)]
    for fmt in [formats] if isinstance(formats, str) else formats:
        args += ["--format", fmt]
    if out is not None:
        args += ["--out", str(out)]
    return _command(args, note="rebuilds this report from the records")


def environment_table(records: Records) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The environments of the training runs and of each evaluator file, side by side.

    Returns:
        ``(sources, rows)``: one column per source (``training (8 runs)``,
        ``perturb (perturb/perturb.json)``, ...), one row ``(what, values)`` per recorded key.
        Values that differ between runs are listed with their counts (``cpu (6), cuda:0
        (2)``); a key a source did not record is ``–``.
    """
    keys = (
        ("robustkit", "robustkit"),
        ("git_commit", "git commit"),
        ("python", "python"),
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("numpy", "numpy"),
        ("cuda_version", "CUDA (torch build)"),
        ("device", "device"),
        ("device_name", "device name"),
        ("dtype", "dtype"),
        ("num_threads", "threads"),
        ("hostname", "host"),
        ("platform", "platform"),
        ("date", "date (UTC)"),
    )
    sources: list[tuple[str, list[dict[str, Any]]]] = []
    envs = [r.env for r in records.runs if r.env]
    if envs:
        sources.append((f"training ({len(envs)} run{'s' if len(envs) != 1 else ''})", envs))
    for files in (records.perturb, records.sharpness):
        for f in files:
            env = dict(f.env or {})
            for key in ("device", "dtype"):
                if key in (f.options or {}):
                    env.setdefault(key, f.options[key])
            if env:
                sources.append((f"{f.kind} ({records.relative(f.path)})", [env]))
    rows = []
    for key, label in keys:
        values = []
        for _, items in sources:
            found = [str(e[key]) for e in items if e.get(key) is not None]
            if key == "date" and found:
                found = sorted(found)
                values.append(found[0] if found[0] == found[-1] else f"{found[0]} … {found[-1]}")
            else:
                values.append(_counted(found) if found else "–")
        if any(v != "–" for v in values):
            rows.append((label, values))
    return [name for name, _ in sources], rows


def _counted(values: list[str]) -> str:
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return distinct[0]
    return ", ".join(f"{v} ({values.count(v)})" for v in distinct)
