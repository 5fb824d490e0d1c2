"""``robustkit toy``: SGD, SAM and Fisher-SAM paths on the paper's 2-D Gaussian loss."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

# Keep in sync with robustkit.toy (not imported here so that `--help` stays instant).
_METHODS = ("gd", "sam", "fsam", "fsam-diag")
_DEFAULT_START = "-10,8"
_DEFAULT_LR = 30.0
_DEFAULT_RHO = 0.5
_DEFAULT_ETA = 1.0
_DEFAULT_STEPS = 1000


def _floats(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise click.BadParameter(f"numbers must be finite, got {value!r}")
    return out


def _float_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    return _floats(value)


def _starts(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[float, float]]:
    starts = []
    for value in values:
        pair = _floats(value)
        if len(pair) != 2:
            raise click.BadParameter(f"expected MU,SIGMA, got {value!r}")
        if pair[1] <= 0:
            raise click.BadParameter(f"SIGMA must be > 0, got {value!r}")
        starts.append((pair[0], pair[1]))
    return starts


def _methods(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    methods = [v.strip() for v in value.split(",") if v.strip()]
    if not methods or any(m not in _METHODS for m in methods):
        raise click.BadParameter(
            f"expected a comma-separated subset of {','.join(_METHODS)}, got {value!r}"
        )
    return list(dict.fromkeys(methods))


def _non_negative(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"must be finite and >= 0, got {value}")
    return value


def _num(value: float, width: int, digits: int) -> str:
    """Fixed point for ordinary values, scientific for divergent ones, so columns stay put."""
    if abs(value) < 10 ** (width - digits - 3):
        return f"{value:{width}.{digits}f}"
    return f"{value:{width}.2e}"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary name in ``path``'s folder, then rename into place."""
    # A fresh unique name (not mkstemp) so the file gets the usual umask permissions.
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@click.command("toy")
@click.option(
    "--start",
    "starts",
    multiple=True,
    default=(_DEFAULT_START,),
    show_default=True,
    metavar="MU,SIGMA",
    callback=_starts,
    help="Start point; repeat for several (SIGMA > 0).",
)
@click.option(
    "--lr",
    type=float,
    default=_DEFAULT_LR,
    show_default=True,
    callback=_non_negative,
    help="Learning rate (the loss is flat in (mu, sigma): Hessian eigenvalues ~1e-3).",
)
@click.option(
    "--rho",
    type=float,
    default=_DEFAULT_RHO,
    show_default=True,
    callback=_non_negative,
    help="Ball radius: Euclidean for sam/fsam-diag, in the Fisher metric for fsam.",
)
@click.option(
    "--eta",
    type=float,
    default=_DEFAULT_ETA,
    show_default=True,
    callback=_non_negative,
    help="Fisher scale of fsam-diag, M^-1 = 1/(1 + eta g^2).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=_DEFAULT_STEPS,
    show_default=True,
    help="Number of updates per run.",
)
@click.option(
    "--methods",
    default=",".join(_METHODS),
    show_default=True,
    callback=_methods,
    help="Comma-separated methods to run.",
)
@click.option(
    "--alpha", default="0.7,0.3", show_default=True, callback=_float_list, help="Weights alpha_i."
)
@click.option(
    "--means", default="20,-20", show_default=True, callback=_float_list, help="Target means m_i."
)
@click.option(
    "--stds", default="30,10", show_default=True, callback=_float_list, help="Target stds s_i."
)
@click.option(
    "--beta", default="1.8,1.2", show_default=True, callback=_float_list, help="Temperatures."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/toy"),
    show_default=True,
    help="Folder for toy.json, toy.png and toy.pdf.",
)
def toy_command(
    starts: list[tuple[float, float]],
    lr: float,
    rho: float,
    eta: float,
    steps: int,
    methods: list[str],
    alpha: tuple[float, ...],
    means: tuple[float, ...],
    stds: tuple[float, ...],
    beta: tuple[float, ...],
    out_dir: Path,
) -> None:
    """The paper's 2-D Gaussian example: SGD, SAM and Fisher-SAM paths.

    theta = (mu, sigma) of N(mu, sigma^2); loss
    l = -log sum_i alpha_i exp(-KL(N(mu, sigma^2) || N(m_i, s_i^2)) / beta_i^2).
    Prints each run's end point, basin and final loss; writes toy.json (constants, options,
    minima, trajectories), toy.png and toy.pdf into --out.
    """
    start_points, method_list = starts, methods
    constants = {"alpha": alpha, "means": means, "stds": stds, "beta": beta}

    from robustkit import __version__, toy

    try:
        problem = toy.ToyProblem(**constants)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--alpha/--means/--stds/--beta'") from None

    minima = problem.minima()
    trajectories = [
        toy.run(method, start, lr=lr, rho=rho, steps=steps, eta=eta, problem=problem)
        for start in start_points
        for method in method_list
    ]

    click.echo("minima of l:")
    for b in minima:
        click.echo(
            f"  {b.name:<6} mu={b.theta[0]:9.4f} sigma={b.theta[1]:9.4f} loss={b.loss:.4f}"
            f"  eig(H)={b.hessian_eigenvalues[0]:.3g},{b.hessian_eigenvalues[1]:.3g}"
            f"  eig(F^-1 H)={b.fisher_eigenvalues[0]:.3g},{b.fisher_eigenvalues[1]:.3g}"
        )
    click.echo(f"lr={lr:g} rho={rho:g} eta={eta:g} steps={steps}")
    header = (
        f"{'method':<10} {'start':>16} {'end mu':>10} {'end sigma':>10} {'basin':>6} {'loss':>9}"
    )
    click.echo(header)
    for tr in trajectories:
        s = tr.settings["start"]
        mu_end, sigma_end = tr.end
        note = f"  (sigma clamped {tr.num_clamped}x)" if tr.num_clamped else ""
        click.echo(
            f"{tr.method.value:<10} {f'({s[0]:g}, {s[1]:g})':>16} {_num(mu_end, 10, 3)} "
            f"{_num(sigma_end, 10, 3)} {tr.basin:>6} {_num(tr.final_loss, 9, 4)}{note}"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "format": "robustkit.toy",
        "version": 1,
        "robustkit_version": __version__,
        "constants": {k: list(v) for k, v in constants.items()},
        "options": {
            "starts": [list(p) for p in start_points],
            "lr": lr,
            "rho": rho,
            "eta": eta,
            "steps": steps,
            "methods": method_list,
            "sigma_floor": toy.SIGMA_FLOOR,
        },
        "minima": [b.to_dict() for b in minima],
        "trajectories": [tr.to_dict() for tr in trajectories],
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
            fh.write("\n")

    _atomic_write(out_dir / "toy.json", write_json)
    fig = _figure(problem, minima, trajectories, start_points)
    try:
        for ext in ("png", "pdf"):
            _atomic_write(
                out_dir / f"toy.{ext}",
                lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"),
            )
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    click.echo(f"wrote {out_dir / 'toy.json'}, toy.png, toy.pdf")


def _figure(problem: Any, minima: Any, trajectories: Any, starts: list[tuple[float, float]]) -> Any:
    """Left: loss contours in (mu, sigma) with the paths; right: loss vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    methods = list(dict.fromkeys(tr.method.value for tr in trajectories))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    dashes = ["-", "--", ":", "-."]

    # View box: minima, targets, starts and end points, padded, within a few target widths of
    # the targets; larger excursions (divergent or catapulted runs) leave the frame.
    anchor = [b.theta for b in minima] + list(starts) + [tr.end for tr in trajectories]
    anchor += list(zip(problem.means, problem.stds, strict=True))
    width = max(problem.stds)
    xs = np.clip(
        [p[0] for p in anchor], min(problem.means) - 2 * width, max(problem.means) + 2 * width
    )
    ys = np.clip([p[1] for p in anchor], 0.02 * min(problem.stds), 3 * width)
    pad_x = 0.15 * max(xs.max() - xs.min(), 1.0)
    pad_y = 0.15 * max(ys.max() - ys.min(), 1.0)
    x_lo, x_hi = xs.min() - pad_x, xs.max() + pad_x
    y_lo, y_hi = max(ys.min() - pad_y, 0.05 * ys.min()), ys.max() + pad_y

    gx = np.linspace(x_lo, x_hi, 200)
    gy = np.linspace(y_lo, y_hi, 200)
    z = problem.loss_grid(gx[None, :], gy[:, None])
    levels = np.unique(np.quantile(z, np.linspace(0.0, 0.95, 30)))
    if len(levels) < 3:
        levels = np.linspace(z.min(), z.max() + 1e-12, 10)

    with sns.axes_style("white"), sns.plotting_context("paper"):
        fig, (ax, ax_loss) = plt.subplots(
            1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.15, 1]}
        )
        cs = ax.contourf(gx, gy, z, levels=levels, cmap="mako_r", extend="max", alpha=0.85)
        ax.contour(gx, gy, z, levels=levels, colors="white", linewidths=0.3, alpha=0.6)
        fig.colorbar(cs, ax=ax, label="loss $l(\\mu, \\sigma)$", format="%.2f")
        for b in minima:
            ax.plot(*b.theta, marker="*", color="gold", markeredgecolor="black", markersize=14)
            ax.annotate(
                f"{b.name} ({b.loss:.3f})",
                b.theta,
                textcoords="offset points",
                xytext=(0, -16),
                ha="center",
                color="black",
                fontsize=8,
            )
        start_index = {s: i for i, s in enumerate(starts)}
        # Divergent runs would squash the loss panel: cap it well above the minima.
        all_losses = np.concatenate([tr.losses for tr in trajectories])
        top = 100.0 * max([1.0, *(abs(b.loss) for b in minima)])
        for tr in trajectories:
            color = palette[tr.method.value]
            # Paths often coincide (sam vs fsam-diag): draw later methods thinner on top.
            width = 2.6 - 1.6 * methods.index(tr.method.value) / max(len(methods) - 1, 1)
            ls = dashes[start_index[tuple(tr.settings["start"])] % len(dashes)]
            pts = tr.points
            label = tr.method.value
            if len(starts) > 1:
                label += f" from ({pts[0, 0]:g}, {pts[0, 1]:g})"
            ax.plot(pts[:, 0], pts[:, 1], ls, color=color, linewidth=width, label=label)
            ax.plot(*pts[-1], marker="o", color=color, markeredgecolor="black", markersize=7)
            ax_loss.plot(
                np.arange(len(tr.losses)),
                np.minimum(tr.losses, 10 * top),
                ls,
                color=color,
                linewidth=width,
                label=label,
            )
        for s in starts:
            ax.plot(*s, marker="s", color="white", markeredgecolor="black", markersize=7)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_xlabel("$\\mu$")
        ax.set_ylabel("$\\sigma$")
        ax.set_title("paths (square: start, circle: end, star: minimum)")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)

        if np.all(all_losses > 0):
            ax_loss.set_yscale("log")
        if all_losses.max() > top:
            ax_loss.set_ylim(top=top)
        for b in minima:
            ax_loss.axhline(b.loss, color="grey", linewidth=0.8, linestyle=":")
            ax_loss.annotate(
                b.name, (0, b.loss), textcoords="offset points", xytext=(2, 2), fontsize=8
            )
        ax_loss.set_xscale("symlog", linthresh=10)
        ax_loss.set_xlim(left=0)
        ax_loss.set_xlabel("step (linear to 10, then log)")
        ax_loss.set_ylabel("loss along the path")
        ax_loss.set_title("loss vs step")
        ax_loss.legend(fontsize=8)
        sns.despine(ax=ax_loss)
        fig.tight_layout()
    return fig
