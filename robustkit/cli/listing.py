"""Listing commands: ``robustkit datasets`` (and ``robustkit models``, appended below).

Thin click commands: torch and the registries are imported inside the commands so that
``robustkit --help`` stays instant. :func:`render_table` is shared by every listing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

__all__ = ["datasets_command", "models_command", "render_table"]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with ``|`` separators, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


@click.command("datasets")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the data sets' files live [default: $ROBUSTKIT_DATA_DIR or ./data].",
)
def datasets_command(data_dir: Path | None) -> None:
    """List the registered data sets with sizes, image shapes and whether they are local.

    Named sets are looked up under DATA_DIR in torchvision's layout; 'npz:PATH' and
    'imagefolder:PATH' load your own files.
    """
    from robustkit.data.datasets import default_data_dir, list_datasets

    root = data_dir if data_dir is not None else default_data_dir()
    rows = [
        (i.name, i.description, i.num_train, i.num_test, i.shape, i.num_classes, i.available)
        for i in list_datasets(root)
    ]
    headers = ("name", "description", "train", "test", "shape", "classes", "local?")
    click.echo(render_table(headers, rows))
    click.echo(f"\ndata directory: {root}")


# --------------------------------------------------------------------------- models
# `models_command` (robustkit models) goes below this line; reuse `render_table` and import
# `robustkit.models` (torch) inside the command. Add it to `__all__`.


@click.command("models")
def models_command() -> None:
    """List the registered models: family, parameter count and description.

    Parameters are counted at the CIFAR-10 shape (3x32x32 inputs, 10 classes); the MLP's
    count grows with the image size, the others' only with the class count.
    """
    from robustkit.models import list_models

    rows = [(i.name, i.family.value, f"{i.num_parameters:,}", i.description) for i in list_models()]
    headers = ("name", "family", "params (CIFAR-10)", "description")
    click.echo(render_table(headers, rows))
