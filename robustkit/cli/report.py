"""``robustkit report``: one page (HTML or Markdown) of every record under a directory.

Thin: parses the options, calls :func:`robustkit.report.render.build_report` once and prints
where the report went. The report package reads records only (no torch), so this command
starts without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from robustkit.cli.common import user_errors


@click.command("report")
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "formats",
    type=click.Choice(["html", "md"]),
    multiple=True,
    default=["html"],
    show_default=True,
    help="html: RUNS_DIR/report/index.html, self-contained (figures embedded); md: "
    "RUNS_DIR/report/README.md with image links (for GitHub). Repeat for both.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report directory [default: RUNS_DIR/report]; figures go to OUT/figures.",
)
@click.option(
    "--dpi",
    type=click.IntRange(min=10),
    default=150,
    show_default=True,
    help="Resolution of the PNG figures (the PDFs are vector graphics).",
)
def report_command(runs_dir: Path, formats: tuple[str, ...], out: Path | None, dpi: int) -> None:
    """Write a report of every record under RUNS_DIR (a sweep or run directory, or above).

    Reads whatever is there - results.csv and sweep.toml of sweeps; config.json, env.json,
    metrics.jsonl and result.json of runs; perturb and sharpness records - and writes one page
    with the label-noise table (mean ± std over seeds, best per row in bold) and the
    accuracy-vs-noise curve, training curves, weight-perturbation curves and accuracy drops,
    sharpness per optimiser and against test accuracy, and a provenance section (environment,
    seeds, configs, and the command that reproduces each figure). Figures are also saved as PNG
    and PDF under OUT/figures. Anything not recorded is shown as "not measured".

    \b
    Example:
      robustkit noise-sweep --out runs/sweep --rates 0.2,0.6 --seeds 0,1
      robustkit perturb runs/sweep/*/checkpoint.pt --out runs/sweep/perturb
      robustkit sharpness runs/sweep/*/checkpoint.pt --out runs/sweep/sharpness.json
      robustkit report runs/sweep            # -> runs/sweep/report/index.html
    """
    from robustkit.report.render import build_report

    with user_errors():
        result = build_report(runs_dir, out=out, fmt=formats, dpi=dpi)
    missing = [s.title for s in result.sections if not s.measured]
    click.echo(f"read {result.records.summary()} under {runs_dir}")
    if missing:
        click.echo(f"not measured: {', '.join(missing)}")
    figures = len({p.with_suffix("") for p in result.figures})
    where = result.path.parent / "figures"
    written = " and ".join(str(p) for p in result.paths.values())
    click.echo(f"wrote {written} ({figures} figures as PNG and PDF in {where})")


__all__ = ["report_command"]
