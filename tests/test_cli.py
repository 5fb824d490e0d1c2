"""The command line: help of every command, the train command, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from robustkit.cli import _COMMANDS, main


def test_group_help_lists_commands_and_does_not_import_torch():
    code = (
        "import sys; from click.testing import CliRunner; from robustkit.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); print(r.output); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "NO-TORCH" in out.stdout
    for name in _COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_command_has_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and name in result.output


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_train_default_style_run_and_rerun(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--noise",
        "symmetric:0.4",
        "--out",
        str(out),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "fsam-symmetric0.4-seed0: test acc" in result.output
    record = json.loads((out / "result.json").read_text())
    assert record["status"] == "completed"
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "already finished" in again.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["--model", "transformer"], "unknown model 'transformer'"),
        (["--noise", "symmetric:1.2"], "noise rate must be in [0, 1)"),
        (["--noise", "symmetric:-0.1"], "noise rate must be in [0, 1)"),
        (["--noise", "symmetric:abc"], "noise rate must be a number"),
        (["--noise", "laplace:0.1"], "unknown noise kind"),
        (["--dataset", "npz:/nonexistent/data.npz"], "/nonexistent/data.npz"),
        (["--epochs", "0"], "epochs must be an int >= 1"),
        (["--lr", "-0.1"], "lr must be a number > 0"),
        (["--optimizer", "sgd", "--rho", "0.1"], "rho is not a parameter of sgd"),
        (["--device", "cuda:7"], "cuda"),
        (["--milestones", "0.5,,0.7"], "--milestones"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path, args, needle):
    result = CliRunner().invoke(
        main, ["train", "--epochs", "1", *args, "--out", str(tmp_path / "r")]
    )
    line = _one_line_error(result)
    assert needle in line, line


def test_train_bad_optimizer_choice():
    result = CliRunner().invoke(main, ["train", "--optimizer", "adam"])
    assert result.exit_code == 2 and "adam" in result.output and "Traceback" not in result.output


def test_train_missing_cifar_files_names_the_place(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    line = _one_line_error(result)
    assert str(tmp_path) in line


def test_train_refuses_a_directory_holding_another_run(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    base = ["train", "--model", "mlp", "--epochs", "1", "--out", str(out)]
    assert runner.invoke(main, base).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    line = _one_line_error(runner.invoke(main, [*base, "--optimizer", "sam"]))
    assert "holds a different run" in line and "optimizer" in line
    assert (out / "checkpoint.pt").read_bytes() == before


def test_train_resume_with_corrupt_checkpoint_is_one_line(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    # Make a real unfinished run first: config.json present, corrupt last.pt.
    assert (
        runner.invoke(
            main, ["train", "--model", "mlp", "--epochs", "1", "--out", str(out)]
        ).exit_code
        == 0
    )
    (out / "result.json").unlink()
    (out / "checkpoints" / "last.pt").write_bytes(b"\x00garbage")
    line = _one_line_error(
        runner.invoke(
            main, ["train", "--model", "mlp", "--epochs", "1", "--out", str(out), "--resume"]
        )
    )
    assert "last.pt" in line


def test_listing_commands():
    runner = CliRunner()
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0 and "resnet32" in result.output
    result = runner.invoke(main, ["datasets"])
    assert result.exit_code == 0 and "digits" in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "robustkit" in result.output
