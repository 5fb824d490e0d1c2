"""``robustkit noise-sweep``: a resumable grid of optimisers x label-noise rates x seeds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from robustkit.cli.common import parse_float_list, user_errors
from robustkit.cli.train import OPTIMIZER_NAMES, config_kwargs, train_options
from robustkit.sweep.grid import DEFAULT_OUT, DEFAULT_TRAIN, SweepConfig

_DEFAULT = SweepConfig()
_TRAIN_OPTION_NAMES: list[str] = []
# Exit status when some runs failed (1 and 2 are click's usage and user errors).
EXIT_RUNS_FAILED = 3


def _sweep_train_options(func):
    """``train``'s options for the shared settings, minus its single-valued ``--eta``.

    The sweep's ``--eta`` is per optimiser (defined below). The displayed defaults are the
    embedded grid's (e.g. fewer epochs than ``train``'s).
    """
    before = {id(p) for p in getattr(func, "__click_params__", [])}
    func = train_options(func)
    params = [p for p in func.__click_params__ if p.name != "eta"]
    for param in params:
        if id(param) in before:
            continue
        _TRAIN_OPTION_NAMES.append(param.name)
        if param.name in DEFAULT_TRAIN:
            param.default = DEFAULT_TRAIN[param.name]
    func.__click_params__ = params
    return func


def _parse_names(value: str, name: str) -> list[str]:
    items = [v.strip().lower() for v in value.split(",")]
    bad = [v for v in items if v not in OPTIMIZER_NAMES]
    if not items or bad:
        raise click.BadParameter(
            f"unknown optimizer {bad[0]!r} (known: {', '.join(OPTIMIZER_NAMES)})"
            if bad and bad[0]
            else f"expected a comma-separated list of optimizers, got {value!r}",
            param_hint=name,
        )
    return items


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated ints, got {value!r}", param_hint="--seeds"
        ) from None
    if any(s < 0 for s in seeds):
        raise click.BadParameter(f"seeds must be >= 0, got {value!r}", param_hint="--seeds")
    return seeds


def _parse_per_optimizer(value: str, name: str) -> dict[str, float]:
    """``sam=0.1,fsam=0.05`` -> dict; a bare ``0.1`` -> ``{"*": 0.1}`` (every optimiser)."""
    result: dict[str, float] = {}
    for item in value.split(","):
        key, sep, number = item.strip().rpartition("=")
        key = key.strip().lower() if sep else "*"
        if sep and key not in OPTIMIZER_NAMES:
            raise click.BadParameter(
                f"unknown optimizer {key!r} in {item.strip()!r} "
                f"(expected OPT=VALUE, OPT one of {', '.join(OPTIMIZER_NAMES)})",
                param_hint=name,
            )
        try:
            result[key] = float(number)
        except ValueError:
            raise click.BadParameter(
                f"expected OPT=NUMBER or NUMBER, got {item.strip()!r}", param_hint=name
            ) from None
    return result


def _parse_rho_at(value: str) -> list[tuple[str, float, float]]:
    """``sam:0.8=0.05,fsam:0.8=0.05`` -> ``[("sam", 0.8, 0.05), ...]``."""
    entries = []
    for item in value.split(","):
        text = item.strip()
        cell, _, number = text.partition("=")
        optimizer, _, rate = cell.partition(":")
        optimizer = optimizer.strip().lower()
        try:
            entry = (optimizer, float(rate), float(number))
        except ValueError:
            entry = None
        if entry is None or optimizer not in OPTIMIZER_NAMES:
            raise click.BadParameter(
                f"expected OPT:RATE=RHO (e.g. sam:0.8=0.05), got {text!r}", param_hint="--rho-at"
            )
        entries.append(entry)
    return entries


def _parse_workers(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    text = str(value).strip().lower()
    if text == "auto":
        return text
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise click.BadParameter(f"expected an int >= 1 or 'auto', got {value!r}")
    return workers


def _given_options(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """The sweep options the user gave (command line, environment or default map), parsed."""

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)

    options: dict[str, Any] = {}
    if given("optimizers"):
        options["optimizers"] = _parse_names(opts["optimizers"], "--optimizers")
    if given("rates"):
        options["rates"] = parse_float_list(opts["rates"], "--rates")
    if given("seeds"):
        options["seeds"] = _parse_seeds(opts["seeds"])
    if given("noise_type"):
        options["noise_type"] = opts["noise_type"]
    if given("rho"):
        options["rho"] = _parse_per_optimizer(opts["rho"], "--rho")
    if given("eta"):
        options["eta"] = _parse_per_optimizer(opts["eta"], "--eta")
    if given("rho_at"):
        options["rho_at"] = _parse_rho_at(opts["rho_at"])
    if given("workers"):
        options["workers"] = opts["workers"]
    if given("executor"):
        options["executor"] = opts["executor"]
    train = config_kwargs(**{name: opts[name] for name in _TRAIN_OPTION_NAMES})
    options["train"] = {k: v for k, v in train.items() if given(k)}
    return options


def _join(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# --ray-* / --slurm-* option name -> (executor, keyword of its class).
_EXECUTOR_OPTIONS: dict[str, tuple[str, str]] = {
    "ray_address": ("ray", "address"),
    "ray_gpus_per_run": ("ray", "gpus_per_run"),
    "ray_cpus_per_run": ("ray", "cpus_per_run"),
    "ray_num_cpus": ("ray", "num_cpus"),
    "ray_ship_results": ("ray", "ship_results"),
    "slurm_partition": ("slurm", "partition"),
    "slurm_time": ("slurm", "time"),
    "slurm_mem": ("slurm", "mem"),
    "slurm_gpus_per_run": ("slurm", "gpus_per_run"),
    "slurm_cpus_per_run": ("slurm", "cpus_per_run"),
    "slurm_cluster": ("slurm", "cluster"),
}


def _executor_options(func):
    """The options of the Ray and Slurm executors (used only with their ``--executor``)."""
    options = [
        click.option(
            "--ray-address",
            default=None,
            metavar="ADDRESS",
            help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001) [default: start a "
            "local Ray instance]. The sweep directory must be on storage every node sees at "
            "the same path, unless --ray-ship-results.",
        ),
        click.option(
            "--ray-gpus-per-run",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="GPUs per run on a cluster with GPUs; a fraction (0.5) puts runs on one GPU "
            "together [default: 1].",
        ),
        click.option(
            "--ray-cpus-per-run",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="CPUs per run (and its torch threads).",
        ),
        click.option(
            "--ray-num-cpus",
            type=click.IntRange(min=1),
            default=None,
            help="CPUs of the local Ray instance [default: all].",
        ),
        click.option(
            "--ray-ship-results",
            is_flag=True,
            help="Nodes share no storage with this machine: each run trains in a temporary "
            "directory on its node and its files are sent back and written into OUT here.",
        ),
        click.option(
            "--slurm-partition", default=None, help="Slurm partition [default: the cluster's]."
        ),
        click.option(
            "--slurm-time",
            default="24:00:00",
            show_default=True,
            help="Time limit per run (Slurm syntax: minutes, HH:MM:SS, D-HH:MM:SS).",
        ),
        click.option(
            "--slurm-mem", default=None, help="Memory per run, e.g. 32G [default: the partition's]."
        ),
        click.option(
            "--slurm-gpus-per-run",
            type=click.IntRange(min=0),
            default=1,
            show_default=True,
            help="GPUs per run (0: train on CPUs).",
        ),
        click.option(
            "--slurm-cpus-per-run",
            type=click.IntRange(min=1),
            default=2,
            show_default=True,
            help="CPUs per run (and its torch threads).",
        ),
        click.option(
            "--slurm-cluster",
            type=click.Choice(["slurm", "local", "debug"]),
            default="slurm",
            show_default=True,
            help="local / debug: run the array job through submitit on this machine (tests).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _pop_executor_options(ctx: click.Context, opts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Take the ``--ray-*``/``--slurm-*`` options out of ``opts``: ``{executor: {kw: value}}``.

    Only the options given (not defaults) are returned, so each executor keeps its own defaults.
    """
    chosen: dict[str, dict[str, Any]] = {"ray": {}, "slurm": {}}
    for name, (executor, keyword) in _EXECUTOR_OPTIONS.items():
        value = opts.pop(name)
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            chosen[executor][keyword] = value
    return chosen


def _build_executor(sweep: SweepConfig, chosen: dict[str, dict[str, Any]]):
    """The executor object for ``sweep.executor`` (``None``: run_sweep's local default).

    Raises:
        click.BadParameter: A ``--ray-*`` / ``--slurm-*`` option given for another executor.
    """
    from robustkit.sweep.executors import make_executor

    for executor, options in chosen.items():
        if options and sweep.executor != executor:
            flag = "--" + f"{executor}_{next(iter(options))}".replace("_", "-")
            raise click.BadParameter(
                f"{flag} is an option of --executor {executor} (this sweep runs with "
                f"{sweep.executor!r})",
                param_hint="--executor",
            )
    if sweep.executor == "local":
        return None
    # A remote executor's "auto" is no cap: the cluster's resources limit the runs at once.
    workers = None if sweep.workers == "auto" else int(sweep.workers)
    return make_executor(sweep.executor, workers, **chosen[sweep.executor])


@click.command("noise-sweep")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML sweep config (see experiments/); options given here win over it.",
)
@click.option(
    "--optimizers",
    default=",".join(_DEFAULT.optimizers),
    show_default=True,
    help="Comma-separated optimisers.",
)
@click.option(
    "--noise-type",
    type=click.Choice(["symmetric", "uniform", "pair", "asymmetric"]),
    default=_DEFAULT.noise_type,
    show_default=True,
    help="Label-noise kind (see robustkit.data.noise).",
)
@click.option(
    "--rates",
    default=_join(_DEFAULT.rates),
    show_default=True,
    help="Comma-separated noise rates in [0, 1); 0 is the clean baseline.",
)
@click.option("--seeds", default=_join(_DEFAULT.seeds), show_default=True, help="Comma-separated.")
@click.option(
    "--rho",
    default=None,
    metavar="OPT=R,...",
    help="Radius per optimiser, e.g. sam=0.1,fsam=0.1 (a bare number: every optimiser with a "
    "radius) [default: sam 0.05, asam 0.5, fsam 0.1].",
)
@click.option(
    "--rho-at",
    default=None,
    metavar="OPT:RATE=R,...",
    help="Radius of one optimiser at one noise rate, e.g. sam:0.8=0.05 (wins over --rho).",
)
@click.option(
    "--eta",
    default=None,
    metavar="OPT=E,...",
    help="ASAM offset / FSAM Fisher scale per optimiser, e.g. asam=0.01,fsam=1.0 "
    "[default: asam 0.01, fsam 1.0].",
)
@_sweep_train_options
@click.option(
    "--workers",
    default=str(_DEFAULT.workers),
    show_default=True,
    callback=_parse_workers,
    help="Runs at once, each on its own GPU (round-robin over CUDA_VISIBLE_DEVICES) or with "
    "cores/N threads; 1 runs in this process; auto: one per GPU, else one per core.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray", "slurm"]),
    default=_DEFAULT.executor,
    show_default=True,
    help="Where runs execute: this machine; a Ray cluster (pip install 'robustkit[ray]'); "
    "a Slurm array job (pip install 'robustkit[slurm]', from a login node).",
)
@_executor_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Sweep directory; an existing one resumes (its sweep.toml is the base config).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the resolved sweep.toml and the runs; train nothing."
)
@click.pass_context
def noise_sweep_command(
    ctx: click.Context, config_file: Path | None, out: Path, dry_run: bool, **opts
) -> None:
    """Train a grid of optimisers x label-noise rates x seeds, resumable, into one directory.

    With no options: SGD, SAM, ASAM and FSAM on the embedded digits data at 20/40/60/80 %
    symmetric noise, one seed (16 runs, a few minutes on two CPU cores).

    Precedence, lowest first: the embedded grid; OUT/sweep.toml of an existing sweep (when no
    --config is given); the --config file; the options given here. Train options take the
    grid's values unless given. Every run goes to OUT/<run-id> (e.g. fsam-symmetric0.4-seed1)
    exactly as `robustkit train` writes it; finished runs are skipped and interrupted ones
    resume, so rerunning the same command after a crash finishes the grid. A changed grid on
    an existing OUT adds its new runs; runs that would not be comparable (other shared
    settings, another rho) are refused before anything starts.

    --executor ray runs each run as a Ray task (a local Ray instance, or --ray-address);
    --executor slurm submits one Slurm array job from a login node (logs in OUT/slurm/).
    Failed runs, retries and resume behave the same with every executor.

    Writes OUT/sweep.toml, OUT/results.csv, OUT/table.md, OUT/table.tex and
    OUT/figures/noise_curve.png|pdf. Exit status 3 when some runs failed (their errors are in
    OUT/<run-id>/error.txt; rerunning retries them); diverged runs are results, not failures.
    """
    from robustkit.sweep.executors import run_sweep
    from robustkit.sweep.grid import check_existing_runs, dumps_toml, resolve_sweep

    with user_errors():
        executor_options = _pop_executor_options(ctx, opts)
        options = _given_options(ctx, opts)
        out_given = ctx.get_parameter_source("out") is not ParameterSource.DEFAULT
        sweep, out = resolve_sweep(
            config_file=config_file, out=out if out_given else None, options=options
        )
        if dry_run:
            states = check_existing_runs(sweep, out)
            # Valid TOML: the resolved grid, then the runs as comments.
            click.echo(f"# {out / 'sweep.toml'} (dry run: nothing written)")
            click.echo(dumps_toml(sweep.to_toml_dict()))
            click.echo(f"# {sweep.num_runs} runs (new: not started, partial: resumes, done)")
            for config in sweep.expand():
                params = ("rho", "eta")
                extra = "".join(
                    f" {k}={getattr(config, k)}" for k in params if getattr(config, k) is not None
                )
                click.echo(f"# {config.run_id}  {states[config.run_id]}{extra}")
            return
        executor = _build_executor(sweep, executor_options)
        try:
            result = run_sweep(
                sweep, out, log=click.echo, progress=sys.stderr.isatty(), executor=executor
            )
        except KeyboardInterrupt:
            click.echo(
                f"\ninterrupted: rerun `robustkit noise-sweep --out {out}` to finish the grid",
                err=True,
            )
            sys.exit(130)
    table = result.files.get("table.md")
    if table is not None:
        click.echo("\n" + table.read_text())
    written = ", ".join(str(p) for p in result.files.values())
    click.echo(f"wrote {written}" if written else "no finished runs to aggregate")
    if result.failed:
        names = ", ".join(o.run_id for o in result.failed)
        click.echo(
            f"{len(result.failed)} of {len(result.outcomes)} runs failed: {names} "
            f"(see {out}/<run-id>/error.txt; rerun to retry them)",
            err=True,
        )
        sys.exit(EXIT_RUNS_FAILED)
