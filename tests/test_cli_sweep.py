"""``robustkit noise-sweep``: help, CLI-over-TOML precedence, user errors, a pooled sweep."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from robustkit.cli import main
from robustkit.sweep.grid import SWEEP_FILE, SweepConfig, save_sweep_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _invoke(*args: str):
    return CliRunner().invoke(main, ["noise-sweep", *args])


def _dry_run(*args: str) -> dict:
    """The resolved grid a command line gives (the dry run prints valid TOML)."""
    result = _invoke(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.output)


def test_help_lists_sweep_and_train_options():
    result = _invoke("--help")
    assert result.exit_code == 0
    for option in ("--optimizers", "--rates", "--noise-type", "--seeds", "--rho", "--rho-at"):
        assert option in result.output
    for option in ("--eta", "--workers", "--executor", "--config", "--out", "--dry-run"):
        assert option in result.output
    for option in ("--dataset", "--model", "--epochs", "--lr", "--batch-size", "--device"):
        assert option in result.output  # train's options, reused
    assert "[default: 8]" in result.output  # the embedded grid's epochs, not train's 15
    assert "runs/noise-sweep" in result.output


def test_default_command_resolves_to_the_embedded_grid(tmp_path):
    grid = _dry_run("--out", str(tmp_path / "sweep"))
    assert grid["sweep"]["optimizers"] == ["sgd", "sam", "asam", "fsam"]
    assert grid["sweep"]["rates"] == [0.2, 0.4, 0.6, 0.8]
    assert grid["sweep"]["seeds"] == [0] and grid["sweep"]["workers"] == "auto"
    assert (grid["train"]["dataset"], grid["train"]["model"]) == ("digits", "cnn")
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing


def test_command_line_wins_over_the_config_file(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(
        "[sweep]\n"
        'optimizers = ["sgd", "sam"]\nrates = [0.2]\nseeds = [0, 1]\n'
        '[train]\nepochs = 3\nlr = 0.2\nmodel = "mlp"\n'
        "[optimizers.sam]\nrho = 0.1\n"
        '[[overrides]]\noptimizer = "sam"\nrate = 0.2\nrho = 0.05\n'
    )
    out = str(tmp_path / "sweep")
    grid = _dry_run("--config", str(config), "--out", out)
    assert grid["train"]["epochs"] == 3 and grid["train"]["lr"] == 0.2
    assert grid["sweep"]["seeds"] == [0, 1] and grid["sweep"]["rates"] == [0.2]

    # Given options win, even when equal to the option's default (--lr 0.05 is train's).
    grid = _dry_run("--config", str(config), "--out", out, "--epochs", "2", "--lr", "0.05")
    assert (grid["train"]["epochs"], grid["train"]["lr"]) == (2, 0.05)
    assert grid["train"]["model"] == "mlp" and grid["sweep"]["seeds"] == [0, 1]

    grid = _dry_run(
        "--config", str(config), "--out", out, "--rates", "0,0.2", "--rho-at", "sam:0.2=0.07"
    )
    assert grid["sweep"]["rates"] == [0.0, 0.2]
    assert grid["overrides"] == [{"optimizer": "sam", "rate": 0.2, "rho": 0.07}]
    assert grid["optimizers"]["sam"] == {"rho": 0.1}

    grid = _dry_run("--out", out, "--rho", "sam=0.2,fsam=0.3", "--eta", "fsam=2")
    assert grid["optimizers"]["sam"] == {"rho": 0.2}
    assert grid["optimizers"]["fsam"] == {"rho": 0.3, "eta": 2.0}
    assert grid["optimizers"]["asam"] == {"rho": 0.5, "eta": 0.01}  # registry defaults


def test_an_existing_sweep_is_the_base_of_a_rerun(tmp_path):
    out = tmp_path / "sweep"
    previous = SweepConfig(optimizers=["fsam"], rates=[0.0, 0.6], seeds=[4])
    previous.train.update(epochs=5, model="mlp")
    save_sweep_toml(previous.validate(), out / SWEEP_FILE)
    result = _invoke("--out", str(out), "--dry-run")
    assert "# fsam-clean-seed4  new rho=0.1 eta=1.0" in result.output
    grid = tomllib.loads(result.output)
    assert grid["sweep"]["rates"] == [0.0, 0.6] and grid["train"]["epochs"] == 5
    grid = _dry_run("--out", str(out), "--seeds", "4,5")
    assert grid["sweep"]["seeds"] == [4, 5] and grid["train"]["model"] == "mlp"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--rates", "0.2,1.5"], 1, "noise rates must be in [0, 1)"),
        (["--rates", "0.2,x"], 2, "--rates"),
        (["--optimizers", "sgd,adam"], 2, "unknown optimizer 'adam'"),
        (["--seeds", "0,a"], 2, "--seeds"),
        (["--rho", "sam=big"], 2, "--rho"),
        (["--rho", "sgdd=0.1"], 2, "unknown optimizer 'sgdd'"),
        (["--rho-at", "sam=0.05"], 2, "OPT:RATE=RHO"),
        (["--eta", "sam=1"], 1, "sam has no eta"),
        (["--epochs", "0"], 1, "epochs must be an int >= 1"),
        (["--model", "nope"], 1, "unknown model 'nope'"),
        (["--workers", "0"], 2, "--workers"),
        (["--workers", "some"], 2, "--workers"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, args, code, message):
    result = _invoke(*args, "--out", str(tmp_path / "sweep"), "--dry-run")
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_incomparable_runs_in_out_are_refused_before_anything_runs(tmp_path):
    out = tmp_path / "sweep"
    sweep = SweepConfig(optimizers=["sgd"], rates=[0.4]).validate()
    (config,) = sweep.expand()
    (out / config.run_id).mkdir(parents=True)
    (out / config.run_id / "config.json").write_text(
        json.dumps({**config.to_dict(), "run_id": config.run_id})
    )
    result = _invoke("--out", str(out), "--optimizers", "sgd", "--rates", "0.4", "--epochs", "9")
    assert result.exit_code == 1
    assert "sgd-symmetric0.4-seed0 holds a run with different shared settings" in result.output
    assert "epochs 8 there, 9 here" in result.output
    assert not (out / SWEEP_FILE).exists()


def test_pooled_sweep_records_a_failed_run_and_goes_on(tmp_path):
    """Two workers (spawned processes); one run's resume point is corrupt, so it raises."""
    out = tmp_path / "sweep"
    args = ["--optimizers", "sgd", "--rates", "0,0.4", "--model", "mlp", "--epochs", "1"]
    sweep = SweepConfig(optimizers=["sgd"], rates=[0.0, 0.4])
    sweep.train.update(model="mlp", epochs=1)
    broken = sweep.validate().expand()[1]
    run_dir = out / broken.run_id
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**broken.to_dict(), "run_id": broken.run_id}))
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")

    result = _invoke(*args, "--out", str(out), "--workers", "2")
    assert result.exit_code == 3, result.output
    assert "2 workers x 1 thread" in result.output
    assert re.search(r"\[\d/2\] sgd-clean-seed0 +completed +test \d+\.\d\d%", result.output)
    assert re.search(r"\[\d/2\] sgd-symmetric0.4-seed0 +failed +CheckpointError", result.output)
    assert "1 of 2 runs failed: sgd-symmetric0.4-seed0" in result.stderr
    assert "| noise | SGD |" in result.output  # the table of what finished
    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert results.loc["sgd-clean-seed0", "status"] == "completed"
    assert results.loc["sgd-symmetric0.4-seed0", "status"] == "failed"
    assert (run_dir / "error.txt").read_text().strip()
    assert (out / "figures" / "noise_curve.png").is_file()
    assert json.loads((out / "sgd-clean-seed0" / "config.json").read_text())["num_threads"] == 1

    # Repaired, a rerun (in-process this time) finishes the grid, skipping the finished run.
    (run_dir / "checkpoints" / "last.pt").unlink()
    result = _invoke(*args, "--out", str(out), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "1 finished, 1 to run" in result.output
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"completed"}


def test_dry_run_reports_which_runs_are_done(tmp_path):
    out = tmp_path / "sweep"
    sweep = SweepConfig(optimizers=["sgd"], rates=[0.4, 0.8]).validate()
    done = sweep.expand()[0]
    (out / done.run_id).mkdir(parents=True)
    record = {**done.to_dict(), "run_id": done.run_id}
    (out / done.run_id / "config.json").write_text(json.dumps(record))
    (out / done.run_id / "result.json").write_text(json.dumps({"status": "completed"}))
    result = _invoke("--out", str(out), "--optimizers", "sgd", "--rates", "0.4,0.8", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "# sgd-symmetric0.4-seed0  done" in result.output
    assert "# sgd-symmetric0.8-seed0  new" in result.output
    assert Path(out / SWEEP_FILE).exists() is False
