"""Sweep grids: optimisers x label-noise rates x seeds, expanded into independent training runs.

A :class:`SweepConfig` is the whole grid: the optimisers, one noise kind with its rates (rate
0 is the clean baseline, noise ``none``), the seeds, the training settings every run shares,
and each optimiser's radius ``rho`` and ``eta`` with optional per-cell overrides (the SAM
paper's "rho 0.1, except 0.05 at 80 % noise"). :meth:`SweepConfig.expand` turns it into one
:class:`~robustkit.train.config.TrainConfig` per run, keyed by the run's readable id
(``fsam-symmetric0.4-seed1``, ``sgd-clean-seed0``).

Where a sweep's options come from, lowest precedence first (:func:`resolve_sweep`):

1. the embedded default grid (``SweepConfig()``: 4 optimisers x 20/40/60/80 % x seed 0 on
   the digits data, minutes on a CPU);
2. ``<out>/sweep.toml`` of an existing sweep, when no config file is given (so
   ``robustkit noise-sweep --out DIR`` finishes the grid that ``DIR`` was started with);
3. a TOML config file (``--config``);
4. the options given on the command line.

The resolved grid is saved as ``<out>/sweep.toml`` (:func:`prepare_sweep_dir`), in the same
format a config file has::

    [sweep]
    optimizers = ["sgd", "sam", "asam", "fsam"]
    noise_type = "symmetric"          # any rate-taking kind of robustkit.data.noise
    rates = [0.2, 0.4, 0.6, 0.8]      # 0 = the clean baseline
    seeds = [0, 1, 2]
    workers = "auto"                  # or N; auto: one per GPU, else one per CPU core
    executor = "local"
    # out = "runs/c10-noise"          # config files only: the default --out (from the cwd)

    [train]                           # every TrainConfig field except the grid's own
    dataset = "cifar10"               # (optimizer, noise, seed, rho, eta)
    epochs = 200

    [optimizers.sam]                  # per optimiser: rho and/or eta
    rho = 0.1

    [[overrides]]                     # per cell: optimizer (required), rate and/or seed
    optimizer = "sam"
    rate = 0.8
    rho = 0.05

An optimiser's ``rho``/``eta`` is the registry default (:data:`robustkit.optim.registry.
OPTIMIZERS`), replaced by its ``[optimizers.<name>]`` table, replaced by every matching
override in order (the last one wins).

A changed grid pointed at an existing sweep directory adds the new runs. It never mixes runs
that are not comparable: before anything starts, every run directory already there is checked
against the config this grid would give it, and a difference (a shared setting such as
``epochs``, or this optimiser's ``rho`` at this rate) is an error naming the run and the fields.

This module imports torch only inside functions (through the registries), so the CLI's help
stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.io import atomic_write_text
from robustkit.train.config import NON_SEMANTIC_FIELDS, TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_TRAIN",
    "ERROR_FILE",
    "GRID_FIELDS",
    "OPTIMIZER_ORDER",
    "SWEEP_FILE",
    "Override",
    "RunTask",
    "SweepConfig",
    "apply_options",
    "check_existing_runs",
    "dumps_toml",
    "load_sweep_toml",
    "noise_spec",
    "prepare_sweep_dir",
    "resolve_sweep",
    "save_sweep_toml",
]

#: The resolved grid, in the sweep directory.
SWEEP_FILE = "sweep.toml"
#: Written into a run directory when its run raised (removed when the run is retried).
ERROR_FILE = "error.txt"
#: ``--out`` when neither the command line nor the config file names one.
DEFAULT_OUT = Path("runs") / "noise-sweep"
#: The display and execution order of the registered optimisers.
OPTIMIZER_ORDER = ("sgd", "sam", "asam", "fsam")
#: Run-config fields the grid sets per run; every other field is shared by all runs.
GRID_FIELDS = frozenset({"optimizer", "noise", "seed", "rho", "eta"})
#: Executors a sweep can name.
EXECUTOR_NAMES = ("local", "ray", "slurm")
#: Noise kinds of robustkit.data.noise that take a rate (``none`` and ``matrix`` do not).
RATE_NOISE_KINDS = ("symmetric", "uniform", "pair", "asymmetric")

#: The embedded default grid's training settings where they differ from ``TrainConfig``'s:
#: 16 runs of the small CNN on the digits data for 8 epochs take about 1-2 minutes on two CPU
#: cores (measured; see the noise-sweep help).
DEFAULT_TRAIN: dict[str, Any] = {"dataset": "digits", "model": "cnn", "epochs": 8}

_PARAMS = ("rho", "eta")
_SWEEP_KEYS = ("optimizers", "noise_type", "rates", "seeds", "workers", "executor", "out")
_TOP_KEYS = ("sweep", "train", "optimizers", "overrides")
_RATE_ATOL = 1e-12


def _shared_defaults() -> dict[str, Any]:
    shared = {k: v for k, v in TrainConfig().to_dict().items() if k not in GRID_FIELDS}
    shared.update(copy.deepcopy(DEFAULT_TRAIN))
    return shared


def noise_spec(kind: str, rate: float) -> str:
    """The run's noise string: ``none`` at rate 0, else ``kind:rate`` (e.g. ``symmetric:0.4``).

    The form is :class:`robustkit.data.noise.NoiseSpec`'s canonical one, so it equals what
    ``TrainConfig.validate`` stores in the run's ``config.json``.
    """
    rate = float(rate)
    return "none" if rate == 0 else f"{kind}:{rate!r}"


def _split_noise(noise: str) -> tuple[str, float | None]:
    """``symmetric:0.4`` -> ``("symmetric", 0.4)``; ``none`` -> ``("none", 0.0)``."""
    kind, _, arg = str(noise).partition(":")
    if kind == "none":
        return kind, 0.0
    try:
        return kind, float(arg)
    except ValueError:
        return kind, None


@dataclass
class Override:
    """Per-cell ``rho``/``eta`` for one optimiser, optionally only at one rate and/or seed."""

    optimizer: str
    rate: float | None = None
    seed: int | None = None
    rho: float | None = None
    eta: float | None = None

    def matches(self, optimizer: str, rate: float | None, seed: int) -> bool:
        """Whether this override applies to the run ``(optimizer, rate, seed)``."""
        if optimizer != self.optimizer:
            return False
        if self.rate is not None and (
            rate is None or not math.isclose(rate, self.rate, rel_tol=0, abs_tol=_RATE_ATOL)
        ):
            return False
        return self.seed is None or self.seed == seed

    def same_cell(self, other: Override) -> bool:
        """Whether ``other`` selects the same runs (so a later value replaces this one)."""
        return (self.optimizer, self.rate, self.seed) == (other.optimizer, other.rate, other.seed)

    def to_dict(self) -> dict[str, Any]:
        """The TOML table (``None`` fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep, as an executor receives it (plain values, so it pickles anywhere).

    Attributes:
        run_id: The readable id, also the run directory's name.
        run_dir: ``<out>/<run_id>``.
        config: The run's ``TrainConfig.to_dict()``.
    """

    run_id: str
    run_dir: str
    config: dict[str, Any]


@dataclass
class SweepConfig:
    """A label-noise sweep: ``optimizers x rates x seeds`` runs sharing ``train`` settings.

    Attributes:
        optimizers: Registry names, run in this order within a (seed, rate) cell.
        noise_type: A noise kind that takes a rate (``symmetric``, ``uniform``, ``pair``,
            ``asymmetric``); see :mod:`robustkit.data.noise`.
        rates: Noise rates in ``[0, 1)``; 0 is the clean baseline (noise ``none``).
        seeds: Run seeds (each seeds the noisy labels, the initialisation and the batches).
        train: The shared ``TrainConfig`` fields (every field except :data:`GRID_FIELDS`).
        optimizer_params: Per optimiser ``{"rho": .., "eta": ..}`` replacing the registry's.
        overrides: Per-cell values; the last matching one wins.
        workers: Runs at once (local executor), or ``"auto"``: one per visible GPU, else one
            per CPU core, at most the grid's number of runs (see
            :func:`robustkit.sweep.executors.resolve_workers`).
        executor: How runs are executed (``local``).
        out: The default sweep directory named by a config file (never saved in sweep.toml).
    """

    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZER_ORDER))
    noise_type: str = "symmetric"
    rates: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict[str, Any] = field(default_factory=_shared_defaults)
    optimizer_params: dict[str, dict[str, float]] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)
    workers: int | str = "auto"
    executor: str = "local"
    out: str | None = None

    # -- the grid ------------------------------------------------------------------------------

    @property
    def num_runs(self) -> int:
        """``len(optimizers) * len(rates) * len(seeds)``."""
        return len(self.optimizers) * len(self.rates) * len(self.seeds)

    def params_for(self, optimizer: str, rate: float | None, seed: int) -> dict[str, Any]:
        """``{"rho": .., "eta": ..}`` of one run: registry default < optimiser table < overrides."""
        from robustkit.optim.registry import OPTIMIZERS

        info = OPTIMIZERS[optimizer]
        params: dict[str, Any] = {"rho": info.rho, "eta": info.eta}
        params.update(self.optimizer_params.get(optimizer, {}))
        for override in self.overrides:
            if override.matches(optimizer, rate, seed):
                params.update(
                    {k: getattr(override, k) for k in _PARAMS if getattr(override, k) is not None}
                )
        return params

    def config_for(self, optimizer: str, noise: str, seed: int) -> TrainConfig:
        """The run config this grid gives ``(optimizer, noise, seed)``, in the grid or not."""
        _, rate = _split_noise(noise)
        return TrainConfig(
            **self.train,
            optimizer=optimizer,
            noise=noise,
            seed=seed,
            **self.params_for(optimizer, rate, seed),
        )

    def expand(self) -> list[TrainConfig]:
        """One validated config per run, seeds outermost, then rates, then optimisers.

        That order finishes a whole seed's table before the next seed starts, so a partially
        finished sweep already aggregates into a complete (n = 1) table.
        """
        configs = []
        for seed in self.seeds:
            for rate in self.rates:
                for optimizer in self.optimizers:
                    noise = noise_spec(self.noise_type, rate)
                    configs.append(self.config_for(optimizer, noise, seed).validate())
        return configs

    def validate(self) -> SweepConfig:
        """Check every value (and expand the grid once); raise ``ValueError`` naming the first bad.

        Returns:
            ``self``, with rates as floats.
        """
        from robustkit.data.datasets import parse_dataset_spec
        from robustkit.models import MODELS
        from robustkit.optim.registry import OPTIMIZERS

        known = ", ".join(OPTIMIZERS)
        _check_list("optimizers", self.optimizers, lambda v: isinstance(v, str))
        for name in self.optimizers:
            if name not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {name!r} (known: {known})")
        if self.noise_type not in RATE_NOISE_KINDS:
            raise ValueError(
                f"noise_type must be one of {', '.join(RATE_NOISE_KINDS)} (a kind that takes a "
                f"rate; rate 0 is the clean baseline), got {self.noise_type!r}"
            )
        _check_list("rates", self.rates, _is_number)
        for rate in self.rates:
            if not math.isfinite(rate) or not 0 <= rate < 1:
                raise ValueError(f"noise rates must be in [0, 1), got {rate!r}")
        self.rates = [float(r) for r in self.rates]
        _check_list("seeds", self.seeds, lambda v: _is_int(v) and v >= 0, "ints >= 0")
        if self.workers != "auto" and (not _is_int(self.workers) or self.workers < 1):
            raise ValueError(f"workers must be an int >= 1 or 'auto', got {self.workers!r}")
        if self.executor not in EXECUTOR_NAMES:
            raise ValueError(
                f"unknown executor {self.executor!r} (known: {', '.join(EXECUTOR_NAMES)})"
            )
        _check_train_keys(self.train, "train")
        for name, params in self.optimizer_params.items():
            if name not in OPTIMIZERS:
                raise ValueError(f"[optimizers.{name}]: unknown optimizer (known: {known})")
            _check_params(name, params, OPTIMIZERS[name], f"[optimizers.{name}]")
        for i, override in enumerate(self.overrides):
            where = f"overrides[{i}]"
            if override.optimizer not in OPTIMIZERS:
                raise ValueError(
                    f"{where}: unknown optimizer {override.optimizer!r} (known: {known})"
                )
            if override.rate is not None and (
                not _is_number(override.rate) or not 0 <= override.rate < 1
            ):
                raise ValueError(f"{where}: rate must be in [0, 1), got {override.rate!r}")
            if override.seed is not None and (not _is_int(override.seed) or override.seed < 0):
                raise ValueError(f"{where}: seed must be an int >= 0, got {override.seed!r}")
            params = {k: getattr(override, k) for k in _PARAMS if getattr(override, k) is not None}
            if not params:
                raise ValueError(f"{where}: sets neither rho nor eta")
            _check_params(override.optimizer, params, OPTIMIZERS[override.optimizer], where)
        if self.train.get("model") not in MODELS:
            raise ValueError(
                f"unknown model {self.train.get('model')!r}; known models: {', '.join(MODELS)}"
            )
        parse_dataset_spec(self.train.get("dataset"))
        seen: dict[str, TrainConfig] = {}
        for config in self.expand():
            if config.run_id in seen:
                raise ValueError(
                    f"two runs of the grid get the id {config.run_id!r} "
                    f"(noise {seen[config.run_id].noise} and {config.noise}); "
                    "use rates that differ in their first 6 significant digits"
                )
            seen[config.run_id] = config
        return self

    def shared_description(self) -> str:
        """``digits / cnn / 8 epochs`` (for log lines)."""
        return f"{self.train['dataset']} / {self.train['model']} / {self.train['epochs']} epochs"

    def shape_description(self) -> str:
        """``16 runs = 4 optimisers x 4 rates x 1 seed`` (for log lines)."""
        parts = [
            _count(len(self.optimizers), "optimiser"),
            _count(len(self.rates), "rate"),
            _count(len(self.seeds), "seed"),
        ]
        return f"{_count(self.num_runs, 'run')} = {' x '.join(parts)}"

    # -- TOML ----------------------------------------------------------------------------------

    def resolved_params(self) -> dict[str, dict[str, float]]:
        """The ``[optimizers.*]`` tables with the registry defaults filled in for the grid's."""
        from robustkit.optim.registry import OPTIMIZERS

        tables: dict[str, dict[str, float]] = {}
        for name in _ordered({*self.optimizers, *self.optimizer_params}):
            info = OPTIMIZERS[name]
            table = {k: v for k, v in (("rho", info.rho), ("eta", info.eta)) if v is not None}
            table.update(self.optimizer_params.get(name, {}))
            if table:
                tables[name] = table
        return tables

    def to_toml_dict(self) -> dict[str, Any]:
        """The resolved grid as the nested dict :func:`dumps_toml` writes (``out`` left out)."""
        data: dict[str, Any] = {
            "sweep": {
                "optimizers": list(self.optimizers),
                "noise_type": self.noise_type,
                "rates": [float(r) for r in self.rates],
                "seeds": list(self.seeds),
                "workers": self.workers,
                "executor": self.executor,
            },
            "train": {k: v for k, v in self.train.items() if v is not None},
        }
        params = self.resolved_params()
        if params:
            data["optimizers"] = params
        if self.overrides:
            data["overrides"] = [o.to_dict() for o in self.overrides]
        return data

    @classmethod
    def from_toml_dict(cls, data: dict[str, Any], source: str = "config") -> SweepConfig:
        """Build from a parsed TOML document; missing keys keep the embedded defaults.

        Raises:
            ValueError: unknown tables or keys, or values of the wrong shape (naming ``source``).
        """
        sweep = cls()
        _check_keys(data, _TOP_KEYS, source, "top level")
        section = data.get("sweep", {})
        _check_table(section, source, "[sweep]")
        _check_keys(section, _SWEEP_KEYS, source, "[sweep]")
        for key, value in section.items():
            setattr(sweep, key, list(value) if isinstance(value, list) else value)
        train = data.get("train", {})
        _check_table(train, source, "[train]")
        try:
            _check_train_keys(train, "[train]")
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        sweep.train.update(train)
        optimizers = data.get("optimizers", {})
        _check_table(optimizers, source, "[optimizers]")
        for name, table in optimizers.items():
            _check_table(table, source, f"[optimizers.{name}]")
            _check_keys(table, _PARAMS, source, f"[optimizers.{name}]")
            sweep.optimizer_params[name] = dict(table)
        overrides = data.get("overrides", [])
        if not isinstance(overrides, list):
            raise ValueError(f"{source}: overrides must be an array of tables ([[overrides]])")
        for i, table in enumerate(overrides):
            _check_table(table, source, f"overrides[{i}]")
            keys = ("optimizer", "rate", "seed", *_PARAMS)
            _check_keys(table, keys, source, f"overrides[{i}]")
            if "optimizer" not in table:
                raise ValueError(f"{source}: overrides[{i}] needs an optimizer")
            sweep.overrides.append(Override(**table))
        return sweep

    def copy(self) -> SweepConfig:
        """A deep copy."""
        return copy.deepcopy(self)


# -- option precedence ---------------------------------------------------------------------------


def apply_options(
    sweep: SweepConfig,
    *,
    optimizers: list[str] | None = None,
    noise_type: str | None = None,
    rates: list[float] | None = None,
    seeds: list[int] | None = None,
    train: dict[str, Any] | None = None,
    rho: dict[str, float] | None = None,
    eta: dict[str, float] | None = None,
    rho_at: list[tuple[str, float, float]] | None = None,
    workers: int | str | None = None,
    executor: str | None = None,
) -> SweepConfig:
    """A copy of ``sweep`` with the given options (``None`` = not given) taking precedence.

    Lists (``optimizers``, ``rates``, ``seeds``) replace the sweep's. Mappings merge key by
    key: ``train`` fields, ``rho``/``eta`` per optimiser (key ``"*"``: every optimiser of the
    resulting grid that has the parameter) and ``rho_at`` entries ``(optimizer, rate, rho)``,
    which replace an override of the same cell or are appended (so they win).
    """
    from robustkit.optim.registry import OPTIMIZERS

    new = sweep.copy()
    for name, value in (
        ("optimizers", optimizers),
        ("noise_type", noise_type),
        ("rates", rates),
        ("seeds", seeds),
        ("workers", workers),
        ("executor", executor),
    ):
        if value is not None:
            setattr(new, name, list(value) if isinstance(value, list) else value)
    if train:
        _check_train_keys(train, "train options")
        new.train.update(train)
    for param, given in (("rho", rho), ("eta", eta)):
        for name, value in (given or {}).items():
            targets = (
                [o for o in new.optimizers if getattr(OPTIMIZERS.get(o), param, None) is not None]
                if name == "*"
                else [name]
            )
            for target in targets:
                new.optimizer_params.setdefault(target, {})[param] = value
    for optimizer, rate, value in rho_at or []:
        entry = Override(optimizer=optimizer, rate=float(rate), rho=value)
        for existing in new.overrides:
            if existing.same_cell(entry):
                existing.rho = value
                break
        else:
            new.overrides.append(entry)
    return new


def resolve_sweep(
    *,
    config_file: str | Path | None = None,
    out: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[SweepConfig, Path]:
    """The sweep and its directory from the embedded defaults, files and given options.

    Precedence, lowest first: the embedded default grid; ``<out>/sweep.toml`` when it exists
    and no ``config_file`` is given; ``config_file``; ``options`` (see :func:`apply_options`;
    only what the user actually gave). The directory is ``out``, else the config file's
    ``out``, else :data:`DEFAULT_OUT`.

    Raises:
        ValueError: unreadable or invalid TOML, or invalid values.
    """
    if config_file is not None:
        base = load_sweep_toml(config_file)
        directory = Path(out) if out is not None else Path(base.out or DEFAULT_OUT)
    else:
        directory = Path(out) if out is not None else DEFAULT_OUT
        existing = directory / SWEEP_FILE
        base = load_sweep_toml(existing) if existing.is_file() else SweepConfig()
    sweep = apply_options(base, **(options or {}))
    sweep.out = None
    return sweep.validate(), directory


# -- sweep directories ---------------------------------------------------------------------------


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


def _normalised(semantic: dict[str, Any]) -> dict[str, Any]:
    """Fill ``rho``/``eta`` left at ``None`` with the registry default (same numbers)."""
    from robustkit.optim.registry import OPTIMIZERS

    info = OPTIMIZERS.get(semantic.get("optimizer"))
    result = dict(semantic)
    for key in _PARAMS:
        if result.get(key) is None and info is not None:
            result[key] = getattr(info, key)
    return result


def check_existing_runs(sweep: SweepConfig, out: str | Path) -> dict[str, str]:
    """Check every run directory in ``out`` against the config this grid would give it.

    A run of the grid must have exactly the grid's config (up to non-semantic fields such as
    ``device``); a run from an earlier grid must still agree with this grid's shared settings
    and per-optimiser rule, so that the sweep's table never mixes incomparable runs.

    Returns:
        ``{run_id: state}`` for the grid's runs: ``done`` (``result.json`` present),
        ``partial`` (started, resumes) or ``new``.

    Raises:
        RunDirError: ``out`` is not a sweep directory, or a run there differs; the one-line
            message names the run and the differing fields.
    """
    from robustkit.train.trainer import CONFIG, RESULT, RunDirError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a directory")
    expected = {c.run_id: c for c in sweep.expand()}
    if out.is_dir() and any(out.iterdir()):
        has_runs = any((d / CONFIG).is_file() for d in _run_dirs(out))
        if not (out / SWEEP_FILE).is_file() and not has_runs:
            raise RunDirError(
                f"--out {out} is not empty and holds no robustkit sweep (no {SWEEP_FILE}); "
                "choose another directory"
            )
    states = {run_id: "new" for run_id in expected}
    shared = {k for k in sweep.train if k not in NON_SEMANTIC_FIELDS}
    for run_dir in _run_dirs(out):
        config_path = run_dir / CONFIG
        if not config_path.is_file():
            leftovers = [p.name for p in run_dir.iterdir() if p.name != ERROR_FILE]
            if run_dir.name in expected and leftovers:
                raise RunDirError(
                    f"{run_dir} holds no robustkit run (no {CONFIG}) but is not empty; move it away"
                )
            continue
        try:
            data = json.loads(config_path.read_text())
            theirs = TrainConfig.from_dict(data)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise RunDirError(f"{config_path} is unreadable ({exc})") from None
        run_id = data.get("run_id", run_dir.name)
        try:
            ours = expected.get(run_id) or sweep.config_for(
                theirs.optimizer, theirs.noise, theirs.seed
            )
        except KeyError:
            raise RunDirError(
                f"{run_dir} holds a run of an unknown optimizer {theirs.optimizer!r}"
            ) from None
        a, b = _normalised(ours.semantic()), _normalised(theirs.semantic())
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            shown = ", ".join(f"{k} {b.get(k)!r} there, {a.get(k)!r} here" for k in diff)
            kind = (
                "a run with different shared settings"
                if set(diff) & shared
                else "a run with a different rho/eta rule"
            )
            raise RunDirError(
                f"{run_dir} holds {kind} ({shown}); a sweep's runs must be comparable: "
                "use another --out or the old values"
            )
        if run_id in states:
            states[run_id] = "done" if (run_dir / RESULT).is_file() else "partial"
    return states


def prepare_sweep_dir(sweep: SweepConfig, out: str | Path, *, write: bool = True) -> list[RunTask]:
    """Check ``out`` (see :func:`check_existing_runs`), save ``sweep.toml``, list the runs.

    Nothing is written when a check fails, or when ``write`` is false (a dry run).

    Returns:
        One :class:`RunTask` per run of the grid, in :meth:`SweepConfig.expand` order.
    """
    out = Path(out)
    sweep.validate()
    check_existing_runs(sweep, out)
    if write:
        save_sweep_toml(sweep, out / SWEEP_FILE)
    return [
        RunTask(config.run_id, str(out / config.run_id), config.to_dict())
        for config in sweep.expand()
    ]


# -- TOML files ----------------------------------------------------------------------------------


def load_sweep_toml(path: str | Path) -> SweepConfig:
    """Read a sweep config (a ``--config`` file or a sweep's ``sweep.toml``).

    Raises:
        ValueError: the file is missing, not TOML, or has unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep config not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    return SweepConfig.from_toml_dict(data, str(path))


def save_sweep_toml(sweep: SweepConfig, path: str | Path) -> None:
    """Write the resolved grid to ``path`` atomically (readable by :func:`load_sweep_toml`)."""
    header = (
        "# robustkit noise-sweep: the resolved grid of this sweep directory.\n"
        f"# {sweep.shape_description()}. "
        "Rerun `robustkit noise-sweep --out <this directory>` to finish it.\n\n"
    )
    atomic_write_text(path, header + dumps_toml(sweep.to_toml_dict()))


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps_toml(data: dict[str, Any]) -> str:
    """Serialise nested dicts of strings, numbers, bools and lists as TOML (v1.0).

    Enough for robustkit's configs: scalar keys first, then sub-tables (``[a.b]``), then
    arrays of tables (``[[a]]``). ``None`` values are left out (TOML has no null), so a
    reader falls back to its default for them.

    Raises:
        TypeError: a value of another type (or a list mixing tables and values).
    """
    lines: list[str] = []
    _emit_table(lines, data, ())
    return "\n".join(lines).strip("\n") + "\n"


def _emit_table(lines: list[str], table: dict[str, Any], path: tuple[str, ...]) -> None:
    scalars, tables, arrays = [], [], []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            scalars.append((key, value))
    for key, value in scalars:
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        sub = (*path, key)
        has_scalars = any(
            not isinstance(v, (dict, list)) or _is_value_list(v) for v in value.values()
        )
        if has_scalars or not value:
            lines += ["", f"[{'.'.join(_toml_key(k) for k in sub)}]"]
        _emit_table(lines, value, sub)
    for key, items in arrays:
        sub = (*path, key)
        for item in items:
            lines += ["", f"[[{'.'.join(_toml_key(k) for k in sub)}]]"]
            _emit_table(lines, item, sub)


def _is_value_list(value: Any) -> bool:
    return isinstance(value, list) and not (value and all(isinstance(v, dict) for v in value))


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, dict) for v in value):
            raise TypeError("a TOML array cannot mix tables and values")
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


# -- validation helpers --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_list(name: str, values: Any, ok, what: str = "") -> None:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{name} must be a non-empty list, got {values!r}")
    for value in values:
        if not ok(value):
            raise ValueError(f"{name} must hold {what or 'valid values'}, got {value!r}")
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{name} lists {', '.join(duplicates)} more than once")


def _check_keys(table: dict[str, Any], allowed: Iterable[str], source: str, where: str) -> None:
    allowed = tuple(allowed)
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r} in {where} (allowed: {', '.join(allowed)})"
        )


def _check_table(value: Any, source: str, where: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {where} must be a table")


_GRID_FIELD_HOME = {
    "optimizer": "the sweep's optimizers list",
    "noise": "the sweep's noise_type and rates",
    "seed": "the sweep's seeds list",
    "rho": "[optimizers.<name>] tables or [[overrides]]",
    "eta": "[optimizers.<name>] tables or [[overrides]]",
}


def _check_train_keys(train: dict[str, Any], where: str) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in train:
        if key in GRID_FIELDS:
            raise ValueError(f"{where}: {key!r} is set per run; use {_GRID_FIELD_HOME[key]}")
        if key not in fields:
            raise ValueError(f"{where}: unknown training setting {key!r}")


def _check_params(name: str, params: dict[str, Any], info, where: str) -> None:
    for key, value in params.items():
        if key not in _PARAMS:
            raise ValueError(f"{where}: unknown key {key!r} (allowed: rho, eta)")
        if getattr(info, key) is None:
            raise ValueError(f"{where}: {name} has no {key}")
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {key} must be a number >= 0, got {value!r}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ordered(names: Iterable[str]) -> list[str]:
    """Registered optimisers in :data:`OPTIMIZER_ORDER`, any others after them by name."""
    names = set(names)
    head = [n for n in OPTIMIZER_ORDER if n in names]
    return head + sorted(names - set(head))
