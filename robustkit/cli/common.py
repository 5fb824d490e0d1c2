"""Helpers shared by the CLI commands: turning user errors into one-line messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's user-facing errors into ``click.ClickException`` (one line, exit 1).

    ``ValueError`` covers the library's validation errors (``DatasetError``, ``CheckpointError``,
    ``RunDirError`` subclass it); ``FileNotFoundError``/``PermissionError`` cover paths. Anything
    else is a bug and keeps its traceback.
    """
    try:
        yield
    except click.ClickException:
        raise
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(message) from None


def parse_float_list(value: str | None, name: str) -> list[float] | None:
    """``"0,0.1, 0.2"`` -> ``[0.0, 0.1, 0.2]``; raises ``click.BadParameter`` naming ``name``."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not items or any(not v for v in items):
        raise click.BadParameter(
            f"expected a comma-separated list of numbers, got {value!r}", param_hint=name
        )
    try:
        return [float(v) for v in items]
    except ValueError:
        raise click.BadParameter(f"expected numbers, got {value!r}", param_hint=name) from None
