"""The ``robustkit`` command line: a click group whose commands live in their own modules.

Commands are imported only when invoked (or when their help is shown), so ``robustkit --help``
does not import torch. Each command module is thin: it parses options, calls one library
function and renders the result. Errors that are the user's (bad input) are raised as
``click.ClickException`` / ``click.BadParameter`` and end in a one-line message and exit code 1
or 2, never a traceback.
"""

from __future__ import annotations

import importlib

import click

from robustkit import __version__

# command name -> (module, attribute). Keep sorted by name.
_COMMANDS: dict[str, tuple[str, str]] = {
    "datasets": ("robustkit.cli.listing", "datasets_command"),
    "info": ("robustkit.cli.info", "info_command"),
    "models": ("robustkit.cli.listing", "models_command"),
    "noise-sweep": ("robustkit.cli.sweep", "noise_sweep_command"),
    "perturb": ("robustkit.cli.perturb", "perturb_command"),
    "report": ("robustkit.cli.report", "report_command"),
    "sharpness": ("robustkit.cli.sharpness", "sharpness_command"),
    "toy": ("robustkit.cli.toy", "toy_command"),
    "train": ("robustkit.cli.train", "train_command"),
}

_SHORT_HELP: dict[str, str] = {
    "datasets": "List the registered data sets with sizes and shapes.",
    "info": "Show torch, CUDA, visible devices and the data/run paths robustkit sees.",
    "models": "List the registered models.",
    "noise-sweep": "Train a grid of optimisers x label-noise rates x seeds (resumable).",
    "perturb": "Adversarial and random weight perturbation of trained checkpoints.",
    "report": "One HTML (or Markdown) page of the records under a sweep or run directory.",
    "sharpness": "Hessian eigenvalues, Hessian/Fisher traces and eps-sharpness of checkpoints.",
    "toy": "The paper's 2-D Gaussian example: SGD, SAM and Fisher-SAM paths.",
    "train": "Train one model with SGD, SAM, ASAM or Fisher-SAM into a run directory.",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustkit")
def main() -> None:
    """robustkit: how robust and how flat are the minima your optimiser finds.

    Train with SGD, SAM, ASAM or Fisher-SAM, sweep label-noise rates, attack the
    trained weights and measure sharpness; every result is a record on disk.
    """
