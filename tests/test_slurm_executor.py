"""The Slurm executor through submitit: same results as local, failures, retries, resume.

No Slurm here: the array job runs through submitit's ``local`` executor (one subprocess per
run) or its ``debug`` executor (in this process), the same code path up to ``sbatch``. The
``sbatch`` script itself is checked against fake ``sbatch``/``srun`` commands. Tests that
need submitit skip when it is not installed.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner

from robustkit.cli import main
from robustkit.sweep.executors import LocalExecutor, make_executor, run_sweep
from robustkit.sweep.grid import ERROR_FILE, RunTask
from robustkit.sweep.slurm_executor import SlurmExecutor, parse_slurm_time
from tests.sweep_fixtures import (
    STEPS_PER_EPOCH,
    TINY_TOML,
    Kill,
    assert_same_results,
    break_run,
    tiny,
)


def _slurm(cluster: str = "debug") -> SlurmExecutor:
    return SlurmExecutor(cluster=cluster, gpus_per_run=0, cpus_per_run=1, poll_seconds=0.2)


@pytest.fixture(scope="module")
def submitit():
    return pytest.importorskip(
        "submitit", reason="submitit not installed (pip install 'robustkit[slurm]')"
    )


def test_cli_executor_slurm_through_submitits_local_executor(submitit, reference, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "sweep"
    args = ["noise-sweep", "--config", str(config), "--out", str(out), "--executor", "slurm"]
    options = ["--slurm-cluster", "local", "--slurm-gpus-per-run", "0", "--slurm-cpus-per-run", "1"]
    result = CliRunner().invoke(main, [*args, *options])
    assert result.exit_code == 0, result.output
    assert_same_results(out, reference)
    # One array job: submitit's pickles and each array task's logs under <out>/slurm/.
    logs = sorted(p.name for p in (out / "slurm").rglob("*_log.out"))
    assert len(logs) == 2, logs
    assert 'executor = "slurm"' in (out / "sweep.toml").read_text()


def test_failed_run_is_recorded_the_others_go_on_and_a_rerun_retries_it(
    submitit, reference, tmp_path
):
    out = tmp_path / "sweep"
    broken = break_run(out, "sgd-symmetric0.4-seed0")

    result = run_sweep(tiny(), out, figures=False, executor=_slurm())
    statuses = {o.run_id: o.status for o in result.outcomes}
    assert statuses == {"sgd-symmetric0.4-seed0": "failed", "sam-symmetric0.4-seed0": "completed"}
    error = (broken / ERROR_FILE).read_text()
    assert error.startswith("FileExistsError") and "Traceback" in error
    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert results.loc["sgd-symmetric0.4-seed0", "status"] == "failed"

    (broken / "checkpoints").unlink()
    result = run_sweep(tiny(), out, figures=False, executor=_slurm())
    statuses = {o.run_id: o.status for o in result.outcomes}
    assert statuses == {"sam-symmetric0.4-seed0": "skipped", "sgd-symmetric0.4-seed0": "completed"}
    assert not (broken / ERROR_FILE).exists()
    assert_same_results(out, reference)


def test_interrupted_sweep_resumes_as_an_array_job(submitit, reference, tmp_path):
    out = tmp_path / "sweep"
    calls = []

    def kill_in_second_epoch(epoch: int, batch: int) -> None:
        calls.append((epoch, batch))
        if len(calls) == STEPS_PER_EPOCH + 5:
            raise Kill

    with pytest.raises(Kill):
        local = LocalExecutor(1, step_hook=kill_in_second_epoch)
        run_sweep(tiny(), out, figures=False, executor=local)
    first = out / "sgd-symmetric0.4-seed0"
    assert (first / "checkpoints" / "last.pt").is_file() and not (first / "result.json").exists()

    result = run_sweep(tiny(), out, figures=False, executor=_slurm())
    assert sorted(o.status for o in result.outcomes) == ["completed", "completed"]
    metrics = (first / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]
    assert_same_results(out, reference)


def test_a_job_the_scheduler_killed_is_a_failed_run(submitit, tmp_path):
    from submitit.core.utils import UncompletedJobError

    class KilledJob:
        job_id = "1234_1"
        paths = SimpleNamespace(stderr=tmp_path / "slurm" / "1234_1_0_log.err")

        @staticmethod
        def result():
            raise UncompletedJobError("Job 1234_1 (task: 0) with path ... has state TIMEOUT")

    task = RunTask("sgd-clean-seed0", str(tmp_path / "sgd-clean-seed0"), {})
    outcome = _slurm()._collect(KilledJob, task, 0.0)
    assert outcome.status == "failed" and outcome.record is None
    assert outcome.error.startswith("slurm job 1234_1 failed (UncompletedJobError: Job 1234_1")
    assert "1234_1_0_log.err" in outcome.error and outcome.error.endswith("rerun to retry")
    assert (tmp_path / "sgd-clean-seed0" / ERROR_FILE).read_text().startswith(outcome.error)


def test_sbatch_script_has_the_options(submitit, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'Submitted batch job 42'\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    executor = SlurmExecutor(
        4, partition="gpu", time="1-00:00:00", mem="32g", gpus_per_run=1, cpus_per_run=3
    )
    submit = executor.make_submitit_executor(tmp_path / "out" / "slurm")
    assert submit._executor.parameters == {
        "job_name": "robustkit",
        "time": 1440,
        "gpus_per_node": 1,
        "cpus_per_task": 3,
        "ntasks_per_node": 1,
        "nodes": 1,
        "partition": "gpu",
        "mem": "32G",
        "array_parallelism": 4,
    }
    script = submit._executor._make_submission_file_text("CMD", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1440",
        "#SBATCH --mem=32G",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=3",
        f"#SBATCH --output={tmp_path / 'out' / 'slurm'}",
    ):
        assert line in script, (line, script)


def test_without_sbatch_slurm_is_a_one_line_error(submitit, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="Slurm login node"):
        SlurmExecutor().make_submitit_executor(tmp_path)


def test_missing_submitit_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ValueError, match=r"pip install 'robustkit\[slurm\]'"):
        make_executor("slurm", 1)


@pytest.mark.parametrize(
    "text,minutes",
    [
        ("90", 90),
        (90, 90),
        ("1:30", 2),  # MM:SS, rounded up to a whole minute
        ("4:00:00", 240),
        ("1-12", 2160),
        ("1-00:30", 1470),
        ("2-00:00:00", 2880),
    ],
)
def test_slurm_time_limits(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["", "four hours", "1:2:3:4", "0", "0:00:00"])
def test_bad_slurm_time_limits(text):
    with pytest.raises(ValueError):
        parse_slurm_time(text)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"workers": 0}, "workers must be"),
        ({"cluster": "pbs"}, "unknown cluster"),
        ({"gpus_per_run": -1}, "gpus per run"),
        ({"cpus_per_run": 0}, "cpus per run"),
        ({"mem": "lots"}, "memory size"),
        ({"time": "soon"}, "time limit"),
    ],
)
def test_bad_options_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SlurmExecutor(**kwargs)


def test_cli_refuses_slurm_options_without_the_slurm_executor(tmp_path):
    args = ["noise-sweep", "--out", str(tmp_path / "s"), "--slurm-partition", "gpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--slurm-partition is an option of --executor slurm" in result.output


def test_a_run_slurm_warns_of_its_time_limit_is_requeued_as_it_is(submitit):
    from robustkit.sweep.slurm_executor import _SlurmRun

    call = _SlurmRun(num_gpus=1, num_threads=2)
    task = RunTask("sgd-clean-seed0", "/sweep/sgd-clean-seed0", {})
    delayed = call.checkpoint(task)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is call and delayed.args == (task,)
