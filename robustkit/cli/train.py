"""``robustkit train``: one run into a run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from robustkit.cli.common import parse_float_list, user_errors

OPTIMIZER_NAMES = ("sgd", "sam", "asam", "fsam")


def train_options(func):
    """The options shared by ``train`` and ``noise-sweep`` (one definition, two commands)."""
    options = [
        click.option(
            "--dataset",
            default="digits",
            show_default=True,
            help="Data set name or npz:PATH / imagefolder:PATH (see `robustkit datasets`).",
        ),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Where named data sets live [default: $ROBUSTKIT_DATA_DIR or ./data].",
        ),
        click.option(
            "--model", default="cnn", show_default=True, help="Model name (see `robustkit models`)."
        ),
        click.option(
            "--base",
            type=click.Choice(["sgd", "adamw"]),
            default="sgd",
            show_default=True,
            help="Base (descent) optimiser.",
        ),
        click.option(
            "--lr", type=float, default=0.05, show_default=True, help="Peak learning rate."
        ),
        click.option("--momentum", type=float, default=0.9, show_default=True),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True),
        click.option("--nesterov/--no-nesterov", default=False, show_default=True),
        click.option(
            "--eta",
            type=float,
            default=None,
            help="ASAM offset (default 0.01) or FSAM Fisher scale (default 1.0).",
        ),
        click.option(
            "--asam-convention",
            type=click.Choice(["kwon", "port"]),
            default="kwon",
            show_default=True,
            help="ASAM: leave biases unscaled (kwon) or scale all parameters (port).",
        ),
        click.option(
            "--bn-policy",
            type=click.Choice(["clean", "both"]),
            default="clean",
            show_default=True,
            help="Which passes of a SAM step update BatchNorm running statistics.",
        ),
        click.option("--epochs", type=int, default=15, show_default=True),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option(
            "--schedule",
            type=click.Choice(["cosine", "step", "constant"]),
            default="cosine",
            show_default=True,
            help="Learning-rate schedule.",
        ),
        click.option(
            "--warmup-epochs",
            type=float,
            default=0.0,
            show_default=True,
            help="Linear learning-rate warm-up, in epochs.",
        ),
        click.option(
            "--milestones",
            default="0.5,0.75",
            show_default=True,
            help="Step schedule: fractions of training at which lr is multiplied by --gamma.",
        ),
        click.option(
            "--gamma",
            type=float,
            default=0.1,
            show_default=True,
            help="Step schedule's decay factor.",
        ),
        click.option("--label-smoothing", type=float, default=0.0, show_default=True),
        click.option(
            "--augment",
            type=click.Choice(["auto", "none", "crop", "crop-flip"]),
            default="auto",
            show_default=True,
            help="Training augmentation (auto: what suits the data set).",
        ),
        click.option(
            "--amp/--no-amp",
            default=False,
            show_default=True,
            help="bf16 autocast for the forward passes.",
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_kwargs(**opts) -> dict:
    """Map parsed CLI options onto :class:`robustkit.train.config.TrainConfig` fields."""
    milestones = parse_float_list(opts.pop("milestones"), "--milestones")
    augment = opts.pop("augment")
    return {**opts, "milestones": milestones, "augment": None if augment == "auto" else augment}


@click.command("train")
@click.option("--optimizer", type=click.Choice(OPTIMIZER_NAMES), default="fsam", show_default=True)
@click.option(
    "--rho",
    type=float,
    default=None,
    help="Radius (FSAM's gamma). Defaults: SAM 0.05, ASAM 0.5, FSAM 0.1.",
)
@click.option(
    "--noise",
    default="none",
    show_default=True,
    help="Label noise: none, symmetric:r, uniform:r, pair:r, asymmetric:r or matrix:PATH.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@train_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory [default: runs/<run-id>].",
)
@click.option("--resume", is_flag=True, help="Continue an unfinished run in --out.")
def train_command(out: Path | None, resume: bool, **opts) -> None:
    """Train one model with SGD, SAM, ASAM or Fisher-SAM into a run directory.

    With no options: Fisher-SAM on the embedded digits data set (CPU, seconds). The run
    directory gets config.json, env.json, labels.npz, metrics.jsonl, checkpoints/last.pt,
    checkpoint.pt and, last, result.json.
    """
    from robustkit.train.config import TrainConfig
    from robustkit.train.trainer import train

    with user_errors():
        config = TrainConfig(**config_kwargs(**opts)).validate()
        out = out if out is not None else Path("runs") / config.run_id
        result = train(config, out, resume=resume, log=click.echo, progress=sys.stderr.isatty())
    record = result.record
    if result.status == "skipped":
        click.echo(f"{out}: already finished ({record.get('status')}); nothing to do")
    elif result.status == "diverged":
        click.echo(f"{out}: diverged in epoch {record['diverged_in_epoch']}", err=True)
        sys.exit(3)
    else:
        click.echo(
            f"{config.run_id}: test acc {100 * record['final_test_acc']:.2f}% "
            f"(best {100 * record['best_test_acc']:.2f}%), train acc noisy "
            f"{100 * record['train_acc_noisy']:.2f}% / "
            f"clean {100 * record['train_acc_clean']:.2f}%, "
            f"realised noise {100 * record['realised_noise_rate']:.1f}%, "
            f"{record['seconds']:.1f}s -> {out}"
        )
