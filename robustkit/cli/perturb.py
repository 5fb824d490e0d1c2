"""``robustkit perturb``: adversarial and random weight perturbation of trained checkpoints.

Thin: parses options, loads checkpoints and data, calls
:func:`robustkit.evaluate.perturb.perturb_sweep` once per checkpoint, renders a table, writes
``perturb.json``, ``perturb.csv``, ``perturb.png`` and ``perturb.pdf`` (all atomically). torch
and the library are imported inside the command so ``robustkit --help`` stays instant.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import click

from robustkit.cli.common import parse_float_list, user_errors

# Mirrors robustkit.evaluate.perturb.Norm / RadiusMode (a test keeps them equal); spelled out
# here so that parsing the command line does not import torch.
NORMS = ("layer", "filter", "global", "sam", "asam", "fsam")
RADIUS_MODES = ("relative", "absolute")
SPLITS = ("train", "test")
DEFAULT_MAGNITUDES = "0,0.005,0.01,0.02,0.05,0.1"
FORMAT = "robustkit.perturb"
VERSION = 1


def _magnitudes(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    values = parse_float_list(value, "--magnitudes")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise click.BadParameter(
            f"magnitudes must be finite numbers >= 0, got {bad[0]!r}", param_hint="--magnitudes"
        )
    return values


@click.command("perturb")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--magnitudes",
    default=DEFAULT_MAGNITUDES,
    show_default=True,
    callback=_magnitudes,
    help="Comma-separated ball sizes m >= 0 (relative: fractions of the weights' norm).",
)
@click.option(
    "--norm",
    type=click.Choice(NORMS),
    default="layer",
    show_default=True,
    help="Ball: layer ||d_l|| <= m||w_l||; filter (per output row); global ||d|| <= m||w||; "
    "sam/asam/fsam: the optimisers' geometries, ||d/T|| <= m||w/T||.",
)
@click.option(
    "--radius",
    type=click.Choice(RADIUS_MODES),
    default="relative",
    show_default=True,
    help="relative: radii m times the weights' norm in the ball's geometry; absolute: radius m.",
)
@click.option("--eta", type=float, default=None, help="ASAM's offset / FSAM's Fisher scale.")
@click.option(
    "--include-bn-bias/--weights-only",
    default=False,
    show_default=True,
    help="Also perturb biases and BatchNorm parameters.",
)
@click.option("--steps", type=click.IntRange(min=0), default=10, show_default=True)
@click.option(
    "--step-size",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="PGD step as a fraction of the radius [default: 2.5/steps].",
)
@click.option("--random-start/--no-random-start", default=False, show_default=True)
@click.option(
    "--restarts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="PGD runs per magnitude (after the first they start randomly); the best is kept.",
)
@click.option(
    "--random-trials",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Random directions of the same size per magnitude.",
)
@click.option("--attack-data", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option(
    "--num-examples",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Attack examples: a seeded random subset of the attack split.",
)
@click.option("--eval-data", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option(
    "--eval-examples",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on a seeded random subset [default: the whole split].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--dataset", default=None, help="Data-set spec [default: the checkpoint's].")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory [default: the checkpoint's, else robustkit's default].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory [default: <run dir>/eval for a single checkpoint in a run dir].",
)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write perturb.png/.pdf.")
def perturb_command(
    checkpoints: tuple[Path, ...],
    magnitudes: list[float],
    norm: str,
    radius: str,
    eta: float | None,
    include_bn_bias: bool,
    steps: int,
    step_size: float | None,
    random_start: bool,
    restarts: int,
    random_trials: int,
    attack_data: str,
    num_examples: int,
    eval_data: str,
    eval_examples: int | None,
    batch_size: int,
    dataset: str | None,
    data_dir: Path | None,
    seed: int,
    device: str,
    out: Path | None,
    plot: bool,
) -> None:
    """Attack the weights of CHECKPOINTS with perturbations of growing magnitude.

    For each checkpoint and magnitude m, projected gradient ascent on the cross-entropy of the
    attack data finds the worst perturbation inside the ball of size m; the perturbed model's
    accuracy and loss on the evaluation split are reported, next to the mean and spread over
    random directions of the same size. BatchNorm stays in eval mode throughout; every
    checkpoint sees the same attack subset and the same random draws (--seed).

    \b
    Example:
      robustkit perturb runs/c10/sgd/checkpoint.pt runs/c10/fsam/checkpoint.pt \\
          --magnitudes 0,0.01,0.05,0.1 --steps 10 --out runs/c10/perturb
    """
    import torch

    from robustkit.data.datasets import load_dataset
    from robustkit.evaluate.perturb import perturb_sweep, prepare_data
    from robustkit.io import atomic_write_json, atomic_write_text
    from robustkit.train.checkpoint import load_checkpoint
    from robustkit.train.env import environment, resolve_device

    with user_errors():
        dev = resolve_device(device)
        loaded = [load_checkpoint(path, map_location="cpu") for path in checkpoints]
        for ckpt in loaded:
            ckpt.raw = {}  # the model holds the weights; drop the duplicate state dict
        if out is None:
            run_dir = loaded[0].run_dir if len(loaded) == 1 else None
            if run_dir is None:
                raise click.UsageError("give --out (the default needs one checkpoint in a run dir)")
            out = run_dir / "eval"
        labels = _labels(loaded)
        specs = []
        datasets: dict[tuple[str, str | None], Any] = {}
        for ckpt in loaded:
            spec = dataset or ckpt.config.get("dataset")
            if not spec:
                raise click.ClickException(
                    f"{ckpt.path}: no data set in its config; give --dataset"
                )
            root = data_dir if data_dir is not None else ckpt.config.get("data_dir")
            key = (str(spec), None if root is None else str(root))
            if key not in datasets:
                datasets[key] = load_dataset(str(spec), data_dir=root)
            _check_fits(ckpt, datasets[key])
            specs.append(key)
    env = environment(dev)
    records: list[dict[str, Any]] = []
    prepared: dict[tuple[str, str | None], tuple[Any, Any, dict[str, Any]]] = {}
    for index, (ckpt, label, key) in enumerate(zip(loaded, labels, specs)):
        if key not in prepared:  # each data set is subset and moved to the device once
            ds = datasets[key]
            attack, attack_info = _subset(ds, attack_data, num_examples, seed, "attack")
            evals, eval_info = _subset(ds, eval_data, eval_examples, seed + 1, "eval")
            prepared[key] = (
                prepare_data(attack, device=dev, batch_size=batch_size),
                prepare_data(evals, device=dev, batch_size=batch_size),
                {**attack_info, **eval_info},
            )
        attack_batches, eval_batches, data_info = prepared[key]
        model = ckpt.model.to(dev)
        click.echo(f"[{index + 1}/{len(loaded)}] {label}: {ckpt.path} on {dev}", err=True)
        start = time.perf_counter()
        with user_errors():
            rows = perturb_sweep(
                model,
                attack_batches,
                eval_batches,
                magnitudes,
                norm=norm,
                radius=radius,
                steps=steps,
                step_size=step_size,
                random_start=random_start,
                restarts=restarts,
                random_trials=random_trials,
                generator=torch.Generator().manual_seed(seed),
                eta=eta,
                include_bn_bias=include_bn_bias,
                batch_size=batch_size,
                progress=_progress,
            )
        ckpt.model = None  # one model in memory at a time
        del model
        for row in rows:
            records.append(
                {
                    "checkpoint": str(ckpt.path),
                    "label": label,
                    "optimizer": _optimizer_name(ckpt.config),
                    "run_id": ckpt.config.get("run_id"),
                    "dataset": key[0],
                    **row,
                    "device": str(dev),
                    **data_info,
                    "seed": seed,
                    "checkpoint_seconds": time.perf_counter() - start,
                }
            )
        # after every checkpoint, so an interrupted sweep keeps what it finished
        payload = {"format": FORMAT, "version": VERSION, "env": env, "records": records}
        atomic_write_json(out / "perturb.json", payload)
        atomic_write_text(out / "perturb.csv", _csv(records))
    if plot:
        _plot(records, out)
    click.echo(_table(records))
    written = ", ".join(["perturb.json", "perturb.csv"] + (["perturb.png/.pdf"] if plot else []))
    click.echo(f"wrote {written} to {out}")


# -- helpers --------------------------------------------------------------------------------


def _labels(loaded: list[Any]) -> list[str]:
    """Short unique names: the run id, else the file stem; parent folders break ties."""
    candidates = [
        [c.label for c in loaded],
        [c.path.parent.name or c.label for c in loaded],
        [f"{c.path.parent.name}/{c.path.name}" for c in loaded],
    ]
    for labels in candidates:
        if len(set(labels)) == len(labels):
            return labels
    return [f"{name}#{i + 1}" for i, name in enumerate(candidates[0])]


def _progress(record: dict[str, Any]) -> None:
    click.echo(
        f"  m={record['magnitude']:g}: adversarial acc "
        f"{100 * record['adversarial_accuracy']:.2f}% ({record['seconds']:.1f}s)",
        err=True,
    )


def _optimizer_name(config: dict[str, Any]) -> str | None:
    opt = config.get("optimizer")
    if isinstance(opt, dict):
        opt = opt.get("name")
    return None if opt is None else str(opt)


def _check_fits(ckpt: Any, ds: Any) -> None:
    spec = ckpt.model_spec
    for key, have in (("in_channels", ds.in_channels), ("num_classes", ds.num_classes)):
        want = spec.get(key)
        if want is not None and want != have:
            raise click.ClickException(
                f"{ckpt.path}: model expects {key}={want} but data set {ds.name!r} has {have}"
            )


def _subset(
    ds: Any, split: str, count: int | None, seed: int, role: str
) -> tuple[Any, dict[str, Any]]:
    """``(x, y)`` of ``split``: all of it, or ``count`` examples drawn without replacement."""
    from robustkit.data.subsets import seeded_subset

    x, y = (ds.x_train, ds.y_train) if split == "train" else (ds.x_test, ds.y_test)
    x, y, subset = seeded_subset(x, y, count, seed)
    return (x, y), {f"{role}_split": split, f"{role}_subset": subset}


def _csv(records: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for rec in records:
        columns += [k for k in rec if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: "" if rec.get(k) is None else rec.get(k) for k in columns})
    return buf.getvalue()


def _table(records: list[dict[str, Any]]) -> str:
    header = ("checkpoint", "optimizer", "m", "adv acc", "random acc", "adv loss", "|d|/|w|", "s")
    rows = []
    for r in records:
        rand = (
            "-"
            if r["random_accuracy_mean"] is None
            else f"{100 * r['random_accuracy_mean']:.2f} ± {100 * r['random_accuracy_std']:.2f}"
        )
        rows.append(
            (
                r["label"],
                r["optimizer"] or "-",
                f"{r['magnitude']:g}",
                f"{100 * r['adversarial_accuracy']:.2f}",
                rand,
                f"{r['adversarial_loss']:.4f}",
                f"{r['delta_norm_relative']:.4f}",
                f"{r['seconds']:.1f}",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, 1}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    first = records[0]
    title = (
        f"{first['norm']} ball ({first['radius_mode']}), {first['steps']} PGD steps, "
        f"accuracy in % on {first['eval_split']} ({first['eval_num_examples']} examples), "
        f"random: mean ± std over {first['random_trials']}"
    )
    return "\n".join(
        [title, line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
    )


def _plot(records: list[dict[str, Any]], out: Path) -> None:
    """Accuracy vs magnitude, one colour per checkpoint: solid adversarial, dashed random."""
    import pandas as pd
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from robustkit.io import atomic_path

    rows = []
    for r in records:
        rows.append({"checkpoint": r["label"], "m": r["magnitude"], "kind": "adversarial",
                     "accuracy": 100 * r["adversarial_accuracy"], "std": 0.0})  # fmt: skip
        if r["random_accuracy_mean"] is not None:
            rows.append({"checkpoint": r["label"], "m": r["magnitude"], "kind": "random",
                         "accuracy": 100 * r["random_accuracy_mean"],
                         "std": 100 * r["random_accuracy_std"]})  # fmt: skip
    frame = pd.DataFrame(rows).sort_values(["checkpoint", "kind", "m"])
    labels = list(dict.fromkeys(r["label"] for r in records))
    palette = dict(zip(labels, sns.color_palette(n_colors=len(labels))))
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sns.lineplot(
        data=frame, x="m", y="accuracy", hue="checkpoint", style="kind", hue_order=labels,
        style_order=["adversarial", "random"], dashes={"adversarial": "", "random": (4, 2)},
        palette=palette, markers=True, errorbar=None, ax=ax,
    )  # fmt: skip
    for label, part in frame[frame["kind"] == "random"].groupby("checkpoint"):
        ax.fill_between(part["m"], part["accuracy"] - part["std"], part["accuracy"] + part["std"],
                        color=palette[label], alpha=0.15, linewidth=0)  # fmt: skip
    first = records[0]
    unit = "relative magnitude m" if first["radius_mode"] == "relative" else "radius m"
    positive = sorted(m for m in frame["m"].unique() if m > 0)
    if len(positive) >= 3 and positive[-1] > 10 * positive[0]:  # geometric grids: symlog
        ax.set_xscale("symlog", linthresh=positive[0])
        ticks = sorted(frame["m"].unique())
        ax.set_xticks(ticks, [f"{m:g}" for m in ticks], rotation=45)
        ax.minorticks_off()
    ax.set_xlabel(f"{unit} ({first['norm']} ball)")
    ax.set_ylabel(f"{first['eval_split']} accuracy (%)")
    ax.set_title(f"Weight perturbation: {first['steps']}-step PGD vs random directions")
    for suffix in ("png", "pdf"):
        with atomic_path(out / f"perturb.{suffix}") as tmp:
            fig.savefig(tmp, format=suffix, dpi=150)
