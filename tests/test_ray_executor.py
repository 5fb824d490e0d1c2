"""The Ray executor: same results as the local executor, failures, retries and resume.

The sweep is 2 optimisers x 1 rate x 1 seed of a 2-epoch MLP on digits with one torch thread,
run by a local Ray instance on 2 CPUs (started once for the module). Tests that need Ray skip
when it is not installed; the file shipping and option checks run without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner

from robustkit.cli import main
from robustkit.sweep.executors import LocalExecutor, make_executor, run_sweep
from robustkit.sweep.grid import ERROR_FILE, RunTask
from robustkit.sweep.ray_executor import RayExecutor, read_run_files, write_run_files
from tests.sweep_fixtures import (
    RUN_IDS,
    STEPS_PER_EPOCH,
    TINY_TOML,
    Kill,
    assert_same_results,
    break_run,
    tiny,
)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance on 2 CPUs for the whole module (shut down at its end)."""
    ray = pytest.importorskip("ray", reason="ray not installed (pip install 'robustkit[ray]')")
    with pytest.MonkeyPatch.context() as patch:
        # Ray starts its workers at niceness 15; on a busy two-core machine that starves them.
        patch.setenv("RAY_worker_niceness", "0")
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=80 * 1024**2,
        )
        yield ray
        ray.shutdown()


# --- with Ray -------------------------------------------------------------------------------


@pytest.mark.parametrize("ship", [False, True], ids=["shared-storage", "ship-results"])
def test_ray_gives_the_local_results(ray_cluster, reference, tmp_path, ship):
    out = tmp_path / "sweep"
    result = run_sweep(tiny(), out, figures=False, executor=RayExecutor(ship_results=ship))
    assert sorted(o.status for o in result.outcomes) == ["completed", "completed"]
    assert_same_results(out, reference)
    for run_id in RUN_IDS:
        assert sorted(read_run_files(out / run_id)) == sorted(read_run_files(reference / run_id))
        config = json.loads((out / run_id / "config.json").read_text())
        assert config == json.loads((reference / run_id / "config.json").read_text())


@pytest.mark.parametrize("ship", [False, True], ids=["shared-storage", "ship-results"])
def test_failed_run_is_recorded_the_others_go_on_and_a_rerun_retries_it(
    ray_cluster, reference, tmp_path, ship
):
    out = tmp_path / "sweep"
    broken = break_run(out, "sgd-symmetric0.4-seed0")
    result = run_sweep(tiny(), out, figures=False, executor=RayExecutor(ship_results=ship))
    statuses = {o.run_id: o.status for o in result.outcomes}
    assert statuses == {"sgd-symmetric0.4-seed0": "failed", "sam-symmetric0.4-seed0": "completed"}
    error = (broken / ERROR_FILE).read_text()
    assert error.startswith("FileExistsError") and "Traceback" in error
    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert results.loc["sgd-symmetric0.4-seed0", "status"] == "failed"
    assert results.loc["sgd-symmetric0.4-seed0", "error"].startswith("FileExistsError")

    (broken / "checkpoints").unlink()
    result = run_sweep(tiny(), out, figures=False, executor=RayExecutor(ship_results=ship))
    statuses = {o.run_id: o.status for o in result.outcomes}
    assert statuses == {"sam-symmetric0.4-seed0": "skipped", "sgd-symmetric0.4-seed0": "completed"}
    assert not (broken / ERROR_FILE).exists()
    assert_same_results(out, reference)


@pytest.mark.parametrize("ship", [False, True], ids=["shared-storage", "ship-results"])
def test_interrupted_sweep_resumes_on_ray(ray_cluster, reference, tmp_path, ship):
    out = tmp_path / "sweep"
    calls = []

    def kill_in_second_epoch(epoch: int, batch: int) -> None:
        calls.append((epoch, batch))
        if len(calls) == STEPS_PER_EPOCH + 5:
            raise Kill

    with pytest.raises(Kill):
        run_sweep(
            tiny(), out, figures=False, executor=LocalExecutor(1, step_hook=kill_in_second_epoch)
        )
    first = out / "sgd-symmetric0.4-seed0"
    assert (first / "checkpoints" / "last.pt").is_file() and not (first / "result.json").exists()

    result = run_sweep(tiny(), out, figures=False, executor=RayExecutor(ship_results=ship))
    assert sorted(o.status for o in result.outcomes) == ["completed", "completed"]
    metrics = (first / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]
    assert_same_results(out, reference)


def test_cli_executor_ray(ray_cluster, reference, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "sweep"
    args = ["noise-sweep", "--config", str(config), "--out", str(out), "--executor", "ray"]
    result = CliRunner().invoke(main, [*args, "--ray-cpus-per-run", "1"])
    assert result.exit_code == 0, result.output
    assert "(ray)" in result.output.splitlines()[0]
    assert_same_results(out, reference)
    assert 'executor = "ray"' in (out / "sweep.toml").read_text()


def test_a_crashed_ray_worker_is_a_failed_run(ray_cluster, tmp_path):
    ray = ray_cluster

    class Crashed:
        exceptions = ray.exceptions

        @staticmethod
        def get(ref):
            raise ray.exceptions.WorkerCrashedError()

    task = RunTask("sgd-clean-seed0", str(tmp_path / "sgd-clean-seed0"), {})
    outcome = RayExecutor()._collect(Crashed, object(), task, 0.0)
    assert outcome.status == "failed" and outcome.record is None
    assert outcome.error.startswith("ray task failed (WorkerCrashedError")
    assert outcome.error.endswith("rerun to retry")
    assert (tmp_path / "sgd-clean-seed0" / ERROR_FILE).read_text() == outcome.error + "\n"


# --- without Ray ----------------------------------------------------------------------------


def test_shipped_files_round_trip_and_replace_stale_ones(tmp_path, monkeypatch):
    import robustkit.sweep.ray_executor as module

    source = tmp_path / "remote"
    (source / "checkpoints").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "checkpoints" / "last.pt").write_bytes(b"\x00\x01weights")
    (source / "result.json").write_text('{"status": "completed"}')
    files = read_run_files(source)
    assert files == {
        "checkpoints/last.pt": b"\x00\x01weights",
        "config.json": b"{}",
        "result.json": b'{"status": "completed"}',
    }

    target = tmp_path / "here"
    target.mkdir()
    (target / ERROR_FILE).write_text("an earlier failure")
    order = []
    real = module.atomic_write

    def recording(path, write, mode="w"):
        order.append(Path(path).name)
        assert (target / ERROR_FILE).exists() == (Path(path).name != "result.json")
        real(path, write, mode)

    monkeypatch.setattr(module, "atomic_write", recording)
    write_run_files(target, files)
    assert order[-1] == "result.json" and sorted(order) == ["config.json", "last.pt", "result.json"]
    assert read_run_files(target) == files


def test_shipped_files_stay_inside_the_run_directory(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        write_run_files(tmp_path / "run", {"../escape.txt": b"x"})
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"workers": 0}, "workers must be"),
        ({"gpus_per_run": 0}, "gpus per run"),
        ({"gpus_per_run": 1.5}, "gpus per run"),
        ({"cpus_per_run": 0}, "cpus per run"),
        ({"address": "auto", "num_cpus": 2}, "local Ray instance"),
    ],
)
def test_bad_options_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RayExecutor(**kwargs)


def _fake_ray(gpus: float) -> SimpleNamespace:
    return SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0, "GPU": gpus})


def _tasks(device: str) -> list[RunTask]:
    return [RunTask("sgd-clean-seed0", "/x", {"device": device})]


def test_resources_one_gpu_per_run_when_the_cluster_has_gpus():
    assert RayExecutor()._resources(_fake_ray(4), _tasks("auto")) == (
        True,
        {"num_cpus": 1, "num_gpus": 1.0},
    )
    half = RayExecutor(gpus_per_run=0.5, cpus_per_run=2)
    assert half._resources(_fake_ray(4), _tasks("cuda")) == (
        True,
        {"num_cpus": 2, "num_gpus": 0.5},
    )
    # No GPUs, or runs pinned to the CPU: CPUs only.
    assert RayExecutor()._resources(_fake_ray(0), _tasks("auto")) == (False, {"num_cpus": 1})
    assert RayExecutor()._resources(_fake_ray(4), _tasks("cpu")) == (False, {"num_cpus": 1})
    with pytest.raises(ValueError, match="no GPUs"):
        RayExecutor(gpus_per_run=1)._resources(_fake_ray(0), _tasks("auto"))
    with pytest.raises(ValueError, match="no GPUs"):
        RayExecutor()._resources(_fake_ray(0), _tasks("cuda"))


def test_missing_ray_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match=r"pip install 'robustkit\[ray\]'"):
        make_executor("ray", 1)


def test_cli_refuses_ray_options_without_the_ray_executor(tmp_path):
    args = ["noise-sweep", "--out", str(tmp_path / "s"), "--ray-address", "auto"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--ray-address is an option of --executor ray" in result.output
    assert not (tmp_path / "s").exists()


def test_an_unreachable_cluster_address_fails_in_seconds(tmp_path, monkeypatch):
    import socket
    import time

    from robustkit.sweep.ray_executor import check_reachable

    ray = pytest.importorskip("ray", reason="ray not installed (pip install 'robustkit[ray]')")

    def no_init(*args, **kwargs):
        raise AssertionError("ray.init must not be reached with an unreachable address")

    # As in a fresh process (another test module may have started Ray in this one).
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_init)
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    result = CliRunner().invoke(
        main,
        ["noise-sweep", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--out",
         str(tmp_path / "sweep"), "--optimizers", "sgd", "--rates", "0.4"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert f"nothing answers at 127.0.0.1:{port}" in result.output
    assert time.perf_counter() - start < 30
    with pytest.raises(ValueError, match="port must be a number"):
        check_reachable("ray://head:port")
    check_reachable("auto")  # left to Ray
    with socket.socket() as server:  # something listening: no error
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")
