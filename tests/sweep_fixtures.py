"""The tiny sweep that the executor tests compare with the in-process local executor."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from robustkit.sweep.executors import run_sweep
from robustkit.sweep.grid import SweepConfig, prepare_sweep_dir
from robustkit.sweep.results import numeric_columns

RUN_IDS = ["sgd-symmetric0.4-seed0", "sam-symmetric0.4-seed0"]
STEPS_PER_EPOCH = 23  # digits: 1437 training images in batches of 64
TINY_TOML = """
[sweep]
optimizers = ["sgd", "sam"]
rates = [0.4]
seeds = [0]
workers = 1

[train]
model = "mlp"
epochs = 2
batch_size = 64
num_threads = 1
device = "cpu"
"""


def sam_kills_its_worker(task):
    """A pool worker's target: SIGKILL this worker process on SAM runs, else run normally.

    Stands for the kernel's out-of-memory killer; module level, so a spawned worker imports it.
    """
    from robustkit.sweep.executors import _run_in_worker

    if task.run_id.startswith("sam-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _run_in_worker(task)


class Kill(BaseException):
    """Stands for SIGKILL: not an Exception, so the sweep does not record it as a failure."""


def tiny() -> SweepConfig:
    """The sweep of :data:`TINY_TOML`, built in Python."""
    sweep = SweepConfig(optimizers=["sgd", "sam"], rates=[0.4], seeds=[0], workers=1)
    sweep.train.update(model="mlp", epochs=2, batch_size=64, num_threads=1, device="cpu")
    return sweep.validate()


def assert_same_results(out: Path, ref: Path) -> None:
    """Every numeric column of ``results.csv`` (not ``seconds``) equal, all runs completed."""
    ours = pd.read_csv(out / "results.csv").set_index("run_id").sort_index()
    theirs = pd.read_csv(ref / "results.csv").set_index("run_id").sort_index()
    columns = numeric_columns(theirs)
    assert {"final_test_acc", "best_test_acc", "train_acc_noisy"} <= set(columns)
    assert "seconds" not in columns
    pd.testing.assert_frame_equal(ours[columns], theirs[columns], check_exact=True)
    assert list(ours["status"]) == ["completed"] * len(ours)


def break_run(out: Path, run_id: str) -> Path:
    """Make ``run_id`` fail when it trains: a file where its checkpoint folder goes."""
    tasks = {t.run_id: t for t in prepare_sweep_dir(tiny(), out)}
    run_dir = Path(tasks[run_id].run_dir)
    run_dir.mkdir(parents=True)
    config = {**tasks[run_id].config, "run_id": run_id}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "checkpoints").write_text("a file where the checkpoint folder goes")
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny sweep run by the local executor, one run after another in this process."""
    out = tmp_path_factory.mktemp("local") / "sweep"
    result = run_sweep(tiny(), out, figures=False)
    assert sorted(o.run_id for o in result.outcomes) == sorted(RUN_IDS)
    return out
