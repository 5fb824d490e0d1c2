"""``robustkit sharpness``: curvature metrics of trained checkpoints, as records on disk.

For each checkpoint: rebuild the model (eval mode), take a fixed subset of its run's data
(the first ``--num-examples`` of a permutation of the split drawn with ``--seed``;
un-augmented; clean labels unless ``--labels noisy``), compute the requested metrics with
:mod:`robustkit.evaluate.sharpness` (and :func:`robustkit.evaluate.perturb.eps_sharpness`),
and write one record per checkpoint and metric to a JSON file, a table to stdout and a bar
chart beside the JSON. torch is imported inside the command so ``robustkit --help`` stays fast.
"""

from __future__ import annotations

import glob
import math
import os
import time
from pathlib import Path
from typing import Any

import click

from robustkit.cli.common import user_errors

METRICS = (
    "hessian-eig",
    "hessian-trace",
    "fisher-trace",
    "fisher-trace-empirical",
    "eps-sharpness",
)
DEFAULT_METRICS = "hessian-eig,hessian-trace,fisher-trace"
RECORD_FORMAT = "robustkit.sharpness"
RECORD_VERSION = 1


def _parse_metrics(value: str) -> list[str]:
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter("give at least one metric", param_hint="--metrics")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise click.BadParameter(
            f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}",
            param_hint="--metrics",
        )
    return list(dict.fromkeys(names))


def _expand_checkpoints(patterns: tuple[str, ...]) -> list[Path]:
    """Paths as given; a pattern the shell did not expand (quoted, Windows) is globbed here."""
    paths: list[Path] = []
    for pattern in patterns:
        if not os.path.exists(pattern) and glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise click.ClickException(f"no checkpoint matches {pattern}")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(pattern))
    return list(dict.fromkeys(paths))


def _default_out(checkpoints: list[Any]) -> Path:
    """Where the records go when ``--out`` is not given (see the command's help)."""
    if len(checkpoints) == 1:
        ckpt = checkpoints[0]
        if ckpt.run_dir is not None:
            return ckpt.run_dir / "eval" / "sharpness.json"
        return ckpt.path.parent / "sharpness.json"
    dirs = [str((c.run_dir or c.path.parent).resolve()) for c in checkpoints]
    common = Path(os.path.commonpath(dirs))
    if all(d == str(common) for d in dirs):  # all in one run directory
        return common / "eval" / "sharpness.json"
    return common / "sharpness.json"


def _figure_path(out: Path) -> Path:
    return out.parent / "figures" / f"{out.stem}.png"


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return name


def _subset(
    ckpt: Any, datasets: dict, *, split: str, labels: str, num_examples: int, seed: int
) -> tuple[Any, Any, dict[str, Any]]:
    """The evaluation subset of one checkpoint's data and how it was chosen."""
    import torch

    from robustkit.data.datasets import load_dataset
    from robustkit.data.subsets import seeded_subset
    from robustkit.train.trainer import load_labels

    spec = ckpt.config.get("dataset")
    if not spec:
        raise click.ClickException(f"{ckpt.path}: its config names no dataset")
    key = (spec, ckpt.config.get("data_dir"))
    if key not in datasets:
        datasets[key] = load_dataset(spec, data_dir=ckpt.config.get("data_dir"))
    data = datasets[key]
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if labels == "noisy":
        run_dir = ckpt.run_dir
        path = run_dir / "labels.npz" if run_dir is not None else None
        if path is None or not path.is_file():
            raise click.ClickException(
                f"{ckpt.path}: --labels noisy needs the run's labels.npz, which was not found"
            )
        noisy = torch.as_tensor(load_labels(run_dir)["labels"], dtype=torch.int64)
        if noisy.shape != y.shape:
            raise click.ClickException(
                f"{path}: {noisy.shape[0]} noisy labels for {y.shape[0]} training examples"
            )
        y = noisy
    x, y, subset = seeded_subset(x, y, num_examples, seed)
    info = {
        "dataset": spec,
        "split": split,
        "labels": labels,
        "num_examples": int(y.shape[0]),
        "subset": f"{subset} of the {split} split; un-augmented",
    }
    return x, y, info


def _run_metric(
    metric: str, model: Any, x: Any, y: Any, *, seed: int, options: dict[str, Any]
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from robustkit.evaluate.sharpness import fisher_trace, hessian_top_eigenvalues, hessian_trace

    generator = torch.Generator().manual_seed(seed)  # one stream per metric: each reproducible
    data = (x, y)
    batch_size = options["batch_size"]
    if metric == "hessian-eig":
        result = hessian_top_eigenvalues(
            model,
            F.cross_entropy,
            data,
            k=options["top_k"],
            which=options["which"],
            method=options["method"],
            tol=options["tol"],
            max_iters=options["max_iters"],
            generator=generator,
            batch_size=batch_size,
        )
        return result.to_record()
    if metric == "hessian-trace":
        result = hessian_trace(
            model,
            F.cross_entropy,
            data,
            method=options["trace_method"],
            rtol=options["rtol"],
            max_probes=options["max_probes"],
            generator=generator,
            batch_size=batch_size,
        )
        return result.to_record()
    if metric == "fisher-trace":
        k = options["fisher_samples"]
        result = fisher_trace(
            model,
            data,
            kind="mc" if k > 0 else "true",
            num_samples=max(k, 1),
            generator=generator,
            batch_size=batch_size,
            method=options["per_example"],
        )
        return result.to_record()
    if metric == "fisher-trace-empirical":
        return fisher_trace(
            model, data, kind="empirical", batch_size=batch_size, method=options["per_example"]
        ).to_record()
    eps_sharpness = _eps_sharpness_function()
    record = eps_sharpness(
        model,
        F.cross_entropy,
        list(zip(x.split(batch_size), y.split(batch_size), strict=True)),
        rho=options["rho"],
        ball=options["ball"],
        steps=options["eps_steps"],
        generator=generator,
    )
    return {"metric": "eps-sharpness", **dict(record)}


def _eps_sharpness_function() -> Any:
    try:
        from robustkit.evaluate.perturb import eps_sharpness
    except ImportError:
        raise click.ClickException(
            "metric eps-sharpness needs robustkit.evaluate.perturb.eps_sharpness, "
            "which this installation lacks"
        ) from None
    return eps_sharpness


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _cost(record: dict[str, Any]) -> str:
    for key, unit in (("num_hvps", "HVPs"), ("num_gradients", "grads"), ("steps", "steps")):
        if record.get(key) is not None:
            return f"{record[key]} {unit}"
    return "-"


def _table(records: list[dict[str, Any]]) -> str:
    header = ("checkpoint", "metric", "value", "± stderr", "residual", "estimator", "cost", "s")
    rows = [header]
    for r in records:
        rows.append(
            (
                str(r.get("label", "")),
                str(r.get("metric", "")),
                _format_value(r.get("value")),
                _format_value(r.get("stderr")),
                _format_value(r.get("residual")),
                str(r.get("estimator", "")),
                _cost(r),
                f"{r.get('seconds', 0.0):.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    """Bars per metric (one panel each), one bar per checkpoint, stderr error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from robustkit.io import atomic_path

    metrics = list(dict.fromkeys(r["metric"] for r in records))
    labels = list(dict.fromkeys(r["label"] for r in records))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(max(3.2, 0.6 * len(labels) + 1.5) * len(metrics), 3.6)
    )
    axes = [axes] if len(metrics) == 1 else list(axes)
    palette = sns.color_palette("colorblind", len(labels))
    for ax, metric in zip(axes, metrics, strict=True):
        rows = [r for r in records if r["metric"] == metric and r.get("value") is not None]
        names = [r["label"] for r in rows]
        values = [float(r["value"]) for r in rows]
        sns.barplot(
            x=names,
            y=values,
            hue=names,
            palette=[palette[labels.index(n)] for n in names],
            legend=False,
            errorbar=None,
            ax=ax,
        )
        errors = [r.get("stderr") for r in rows]
        if any(e is not None for e in errors):
            ax.errorbar(
                range(len(rows)),
                values,
                yerr=[0.0 if e is None else float(e) for e in errors],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
        title = metric
        if metric == "hessian-eig" and rows:
            title = f"hessian-eig (λ1, {rows[0].get('which', 'largest')})"
        ax.set_title(title)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def _write(out: Path, records: list[dict[str, Any]], options: dict[str, Any]) -> None:
    from robustkit.io import atomic_write_json

    atomic_write_json(
        out,
        {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "options": options,
            "records": records,
        },
    )


@click.command("sharpness")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option(
    "--metrics",
    default=DEFAULT_METRICS,
    show_default=True,
    help=f"Comma-separated metrics: {', '.join(METRICS)}.",
)
@click.option(
    "--num-examples",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Subset size: the first N of a seeded permutation of the split (all if fewer).",
)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option(
    "--labels",
    type=click.Choice(["clean", "noisy"]),
    default="clean",
    show_default=True,
    help="Clean labels, or the run's noisy training labels (<run_dir>/labels.npz).",
)
@click.option(
    "--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Eigenvalues."
)
@click.option(
    "--which",
    type=click.Choice(["largest", "magnitude", "smallest"]),
    default="largest",
    show_default=True,
    help="Spectrum end: algebraically largest, largest |λ|, or smallest.",
)
@click.option(
    "--method",
    type=click.Choice(["lanczos", "power"]),
    default="lanczos",
    show_default=True,
    help="Eigen-solver; power iteration follows PyHessian (tol 1e-3, 100 iterations).",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Eigen-solver tolerance [default: lanczos 1e-4 (float32) / 1e-8 (float64); power 1e-3].",
)
@click.option(
    "--max-iters",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Lanczos: Krylov dimension; power: iterations per eigenvalue.",
)
@click.option(
    "--trace-method",
    type=click.Choice(["hutchinson", "hutch++"]),
    default="hutchinson",
    show_default=True,
    help="Hessian-trace estimator (Rademacher probes).",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-2,
    show_default=True,
    help="Hessian trace: stop at this relative standard error.",
)
@click.option(
    "--max-probes",
    type=click.IntRange(min=12),
    default=200,
    show_default=True,
    help="Hessian trace: HVP budget.",
)
@click.option(
    "--fisher-samples",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="fisher-trace: 0 = exact sum over classes; K >= 1 = Monte Carlo with K labels.",
)
@click.option(
    "--per-example",
    type=click.Choice(["auto", "layerwise", "vmap"]),
    default="auto",
    show_default=True,
    help="Fisher traces: per-example gradient norms in closed form per layer (layerwise), by "
    "vmap(grad), or layerwise where the model allows (auto). The record names the one used.",
)
@click.option(
    "--rho", type=float, default=0.05, show_default=True, help="eps-sharpness: ball radius."
)
@click.option(
    "--ball",
    default="sam",
    show_default=True,
    help="eps-sharpness ball: sam (Euclidean), asam or fsam (Fisher).",
)
@click.option(
    "--eps-steps",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="eps-sharpness: projected ascent steps.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Subset and probe seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Records JSON [default: one checkpoint: <run_dir>/eval/sharpness.json (or beside "
    "it); several: sharpness.json in their runs' common parent directory].",
)
def sharpness_command(
    checkpoints: tuple[str, ...],
    metrics: str,
    num_examples: int,
    split: str,
    labels: str,
    top_k: int,
    which: str,
    method: str,
    tol: float | None,
    max_iters: int,
    trace_method: str,
    rtol: float,
    max_probes: int,
    fisher_samples: int,
    per_example: str,
    rho: float,
    ball: str,
    eps_steps: int,
    seed: int,
    batch_size: int,
    device: str,
    dtype: str,
    out: Path | None,
) -> None:
    """Hessian eigenvalues, Hessian/Fisher traces and eps-sharpness of CHECKPOINTS.

    Each checkpoint is evaluated in eval mode (BatchNorm on running statistics) on the first
    --num-examples of a seeded permutation of its run's data split, un-augmented. Metrics:

    \b
    hessian-eig             top-k eigenvalues of the loss Hessian (Lanczos or power),
                            with residuals ||Hv - λv|| and HVP counts
    hessian-trace           Hutchinson / Hutch++ with standard error
    fisher-trace            true Fisher: exact over classes, or Monte Carlo (--fisher-samples)
    fisher-trace-empirical  Fisher with the observed (--labels) labels
    eps-sharpness           max_{||eps|| <= rho} L(w + eps) - L(w) by projected ascent

    Writes the records (JSON), prints a table, and draws figures/<out-stem>.png beside the JSON.

    \b
    Example:
      robustkit sharpness runs/c10/*/checkpoint.pt \\
          --metrics hessian-eig,hessian-trace,fisher-trace --top-k 5 \\
          --num-examples 2000 --out runs/c10/sharpness.json
    """
    metric_names = _parse_metrics(metrics)
    if labels == "noisy" and split != "train":
        raise click.BadParameter(
            "noisy labels exist only for the train split (the test set is never noised)",
            param_hint="--labels",
        )
    if "eps-sharpness" in metric_names:
        _eps_sharpness_function()  # fail before any work if it is missing
    paths = _expand_checkpoints(checkpoints)

    import torch

    from robustkit.train.checkpoint import load_checkpoint

    device_name = _resolve_device(device)
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    options = {
        "metrics": metric_names,
        "num_examples": num_examples,
        "split": split,
        "labels": labels,
        "top_k": top_k,
        "which": which,
        "method": method,
        "tol": tol,
        "max_iters": max_iters,
        "trace_method": trace_method,
        "rtol": rtol,
        "max_probes": max_probes,
        "fisher_samples": fisher_samples,
        "per_example": per_example,
        "rho": rho,
        "ball": ball,
        "eps_steps": eps_steps,
        "seed": seed,
        "batch_size": batch_size,
        "device": device_name,
        "dtype": dtype,
    }
    with user_errors():
        # Load (and so validate) every checkpoint before hours of compute.
        loaded = [load_checkpoint(path, map_location="cpu") for path in paths]
        out_path = out if out is not None else _default_out(loaded)
        display = [c.label for c in loaded]
        if len(set(display)) < len(display):
            display = [str(c.path) for c in loaded]
        records: list[dict[str, Any]] = []
        datasets: dict = {}
        for i, (ckpt, label) in enumerate(zip(loaded, display, strict=True)):
            x, y, info = _subset(
                ckpt, datasets, split=split, labels=labels, num_examples=num_examples, seed=seed
            )
            model = ckpt.model.to(device=device_name, dtype=torch_dtype).eval()
            x = x.to(device_name, torch_dtype)
            y = y.to(device_name)
            for metric in metric_names:
                click.echo(f"[{i + 1}/{len(loaded)}] {label}: {metric} ...", err=True)
                start = time.perf_counter()
                record = _run_metric(metric, model, x, y, seed=seed, options=options)
                if device_name == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                records.append(
                    {
                        "checkpoint": str(ckpt.path),
                        "label": label,
                        "run_id": ckpt.config.get("run_id"),
                        "optimizer": ckpt.config.get("optimizer"),
                        "noise": ckpt.config.get("noise"),
                        "model": ckpt.model_spec.get("name"),
                        **info,
                        "seed": seed,
                        "bn_mode": "eval",
                        "device": device_name,
                        "dtype": dtype,
                        **record,
                        "num_examples": info["num_examples"],
                        "seconds": seconds,
                    }
                )
            del model
            _write(out_path, records, options)  # after every checkpoint: a killed run keeps them
        figure = _figure_path(out_path)
        _plot(records, figure)
    click.echo(_table(records))
    click.echo(f"wrote {out_path} and {figure}", err=True)


__all__ = ["sharpness_command"]
