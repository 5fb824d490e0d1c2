"""Sweeps: grid expansion and ids, TOML and precedence, compatibility, resume, aggregation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustkit.sweep.executors import (
    LocalExecutor,
    RunOutcome,
    longest_first,
    resolve_workers,
    run_cost,
    run_sweep,
    worker_settings,
)
from robustkit.sweep.grid import (
    ERROR_FILE,
    SWEEP_FILE,
    Override,
    RunTask,
    SweepConfig,
    apply_options,
    check_existing_runs,
    dumps_toml,
    load_sweep_toml,
    prepare_sweep_dir,
    resolve_sweep,
    save_sweep_toml,
)
from robustkit.sweep.results import (
    accuracy_table,
    collect_results,
    format_latex,
    format_markdown,
    numeric_columns,
    write_results,
)
from robustkit.train.trainer import RunDirError, TrainResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# digits: 1437 training images in batches of 64.
STEPS_PER_EPOCH = 23


class Kill(BaseException):
    """Stands for SIGKILL: not an Exception, so the sweep does not record it as a failure."""


def _tiny(**changes) -> SweepConfig:
    """2 optimisers x 2 rates x 1 seed of a 2-epoch MLP on digits, one thread (seconds)."""
    sweep = SweepConfig(optimizers=["sgd", "sam"], rates=[0.0, 0.4], seeds=[0], workers=1)
    sweep.train.update(model="mlp", epochs=2, batch_size=64, num_threads=1)
    for key, value in changes.items():
        setattr(sweep, key, value)
    return sweep.validate()


def _write_run(out: Path, config, result: dict | None = None) -> Path:
    """A run directory holding ``config.json`` (and ``result.json``) without training."""
    run_dir = out / config.run_id
    run_dir.mkdir(parents=True)
    record_config = {**config.to_dict(), "run_id": config.run_id}
    (run_dir / "config.json").write_text(json.dumps(record_config))
    if result is not None:
        (run_dir / "result.json").write_text(json.dumps({**result, "config": record_config}))
    return run_dir


# -- TOML ----------------------------------------------------------------------------------------


def test_toml_writer_round_trips_through_tomllib():
    data = {
        "title": 'quotes " and \\ back\nslash, ünïcode',
        "count": 3,
        "negative": -7,
        "ratio": 0.1,
        "tiny": 1e-05,
        "big": 1.5e300,
        "infinite": math.inf,
        "flag": True,
        "off": False,
        "empty": [],
        "numbers": [0.2, 0.4, 1],
        "names": ["sgd", "fsam"],
        "nothing": None,
        "table": {"a": 1, "nested": {"b": "c"}, "only_tables": {"x": {"y": 2}}},
        "odd key": {"dotted.name": 1},
        "rows": [{"optimizer": "sam", "rate": 0.8, "rho": 0.05}, {"optimizer": "fsam"}],
    }
    parsed = tomllib.loads(dumps_toml(data))
    expected = {k: v for k, v in data.items() if v is not None}
    assert parsed == expected


def test_toml_writer_rejects_values_toml_cannot_hold():
    with pytest.raises(TypeError, match="cannot write"):
        dumps_toml({"x": object()})
    with pytest.raises(TypeError, match="mix tables"):
        dumps_toml({"x": [1, {"a": 1}]})


# -- grid expansion ------------------------------------------------------------------------------


def test_grid_expands_seeds_then_rates_then_optimizers_with_readable_ids():
    sweep = SweepConfig(optimizers=["sgd", "fsam"], rates=[0, 0.4], seeds=[0, 1]).validate()
    assert [c.run_id for c in sweep.expand()] == [
        "sgd-clean-seed0",
        "fsam-clean-seed0",
        "sgd-symmetric0.4-seed0",
        "fsam-symmetric0.4-seed0",
        "sgd-clean-seed1",
        "fsam-clean-seed1",
        "sgd-symmetric0.4-seed1",
        "fsam-symmetric0.4-seed1",
    ]
    noises = [c.noise for c in sweep.expand()]
    assert noises[:4] == ["none", "none", "symmetric:0.4", "symmetric:0.4"]


def test_default_grid_is_16_runs_with_registry_radii():
    sweep = SweepConfig().validate()
    configs = sweep.expand()
    assert len(configs) == sweep.num_runs == 16
    assert configs[5].run_id == "sam-symmetric0.4-seed0"
    params = {c.optimizer: (c.rho, c.eta) for c in configs}
    assert params == {
        "sgd": (None, None),
        "sam": (0.05, None),
        "asam": (0.5, 0.01),
        "fsam": (0.1, 1.0),
    }
    assert {(c.dataset, c.model, c.epochs) for c in configs} == {("digits", "cnn", 8)}


def test_other_noise_kinds_name_their_runs():
    sweep = SweepConfig(optimizers=["fsam"], rates=[0.2], seeds=[3], noise_type="pair")
    assert [c.run_id for c in sweep.validate().expand()] == ["fsam-pair0.2-seed3"]


def test_paper_rule_sam_rho_point_one_except_point_zero_five_at_80_percent():
    sweep = SweepConfig(
        optimizers=["sam", "fsam"],
        rates=[0.2, 0.8],
        optimizer_params={"sam": {"rho": 0.1}, "fsam": {"eta": 2.0}},
        overrides=[Override("sam", rate=0.8, rho=0.05), Override("fsam", seed=0, rho=0.3)],
    ).validate()
    rho = {c.run_id: (c.rho, c.eta) for c in sweep.expand()}
    assert rho == {
        "sam-symmetric0.2-seed0": (0.1, None),
        "fsam-symmetric0.2-seed0": (0.3, 2.0),
        "sam-symmetric0.8-seed0": (0.05, None),
        "fsam-symmetric0.8-seed0": (0.3, 2.0),
    }


def test_cifar10_experiment_file_is_the_papers_study():
    sweep = load_sweep_toml(EXPERIMENTS / "cifar10_label_noise.toml").validate()
    configs = sweep.expand()
    assert len(configs) == 48
    assert sweep.out == "runs/c10-noise"
    by_id = {c.run_id: c for c in configs}
    assert by_id["sam-symmetric0.6-seed2"].rho == 0.1
    assert by_id["sam-symmetric0.8-seed2"].rho == 0.05
    assert (by_id["fsam-symmetric0.8-seed0"].rho, by_id["fsam-symmetric0.8-seed0"].eta) == (
        0.1,
        1.0,
    )
    assert (by_id["asam-symmetric0.2-seed1"].rho, by_id["asam-symmetric0.2-seed1"].eta) == (
        0.5,
        0.01,
    )
    c = by_id["sgd-symmetric0.2-seed0"]
    assert (c.dataset, c.model, c.epochs, c.lr, c.momentum, c.weight_decay) == (
        "cifar10",
        "resnet32",
        200,
        0.1,
        0.9,
        5e-4,
    )
    assert (c.batch_size, c.schedule) == (128, "cosine")
    digits = load_sweep_toml(EXPERIMENTS / "digits_label_noise.toml").validate()
    assert digits.num_runs == 60 and digits.train["dataset"] == "digits"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"rates": [0.2, 1.0]}, r"\[0, 1\)"),
        ({"rates": [0.2, 0.2]}, "more than once"),
        ({"seeds": [0, -1]}, "ints >= 0"),
        ({"optimizers": ["sgd", "adam"]}, "unknown optimizer 'adam'"),
        ({"noise_type": "none"}, "noise_type must be one of"),
        ({"optimizer_params": {"sam": {"eta": 1.0}}}, "sam has no eta"),
        ({"optimizer_params": {"sgd": {"rho": 0.1}}}, "sgd has no rho"),
        ({"overrides": [Override("sam", rate=0.8)]}, "neither rho nor eta"),
        ({"workers": 0}, "workers"),
        ({"workers": "many"}, "workers"),
        ({"executor": "dask"}, "unknown executor"),
        ({"train": {"seed": 1}}, "set per run"),
        ({"train": {"epochz": 1}}, "unknown training setting"),
    ],
)
def test_invalid_grids_are_refused_with_a_clear_message(changes, match):
    sweep = SweepConfig()
    for key, value in changes.items():
        setattr(sweep, key, value)
    with pytest.raises(ValueError, match=match):
        sweep.validate()


def test_bad_train_values_are_refused_before_anything_runs():
    sweep = SweepConfig()
    sweep.train["epochs"] = 0
    with pytest.raises(ValueError, match="epochs"):
        sweep.validate()
    sweep = SweepConfig()
    sweep.train["model"] = "resnet9000"
    with pytest.raises(ValueError, match="unknown model"):
        sweep.validate()


def test_unknown_toml_keys_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sweep]\nrate = [0.2]\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown key 'rate' in \[sweep\]"):
        load_sweep_toml(path)
    path.write_text("[train]\nrho = 0.1\n")
    with pytest.raises(ValueError, match=r"\[optimizers.<name>\]"):
        load_sweep_toml(path)
    path.write_text("[sweep\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_sweep_toml(path)


def test_sweep_toml_round_trips(tmp_path):
    sweep = SweepConfig(
        optimizers=["sgd", "sam", "fsam"],
        rates=[0.0, 0.5],
        seeds=[0, 2],
        optimizer_params={"sam": {"rho": 0.1}},
        overrides=[Override("sam", rate=0.5, rho=0.05)],
        workers=2,
    )
    sweep.train.update(model="mlp", data_dir="some/where", milestones=[0.3, 0.6])
    sweep.validate()
    save_sweep_toml(sweep, tmp_path / SWEEP_FILE)
    loaded = load_sweep_toml(tmp_path / SWEEP_FILE).validate()
    assert loaded.to_toml_dict() == sweep.to_toml_dict()
    assert [c.to_dict() for c in loaded.expand()] == [c.to_dict() for c in sweep.expand()]
    # Resolved: the registry's fsam defaults are written out.
    assert loaded.optimizer_params["fsam"] == {"rho": 0.1, "eta": 1.0}


# -- precedence ----------------------------------------------------------------------------------


def test_apply_options_replaces_lists_and_merges_maps():
    base = SweepConfig(
        optimizers=["sgd", "sam", "fsam"],
        rates=[0.2, 0.8],
        optimizer_params={"sam": {"rho": 0.1}, "fsam": {"rho": 0.2}},
        overrides=[Override("sam", rate=0.8, rho=0.05)],
    )
    new = apply_options(
        base,
        rates=[0.4, 0.8],
        train={"epochs": 3},
        rho={"fsam": 0.3},
        eta={"*": 2.0},
        rho_at=[("sam", 0.8, 0.07), ("fsam", 0.4, 0.01)],
    ).validate()
    assert base.rates == [0.2, 0.8] and base.train["epochs"] == 8  # the base is untouched
    assert new.rates == [0.4, 0.8] and new.optimizers == ["sgd", "sam", "fsam"]
    assert new.train["epochs"] == 3
    assert new.optimizer_params == {"sam": {"rho": 0.1}, "fsam": {"rho": 0.3, "eta": 2.0}}
    assert [o.to_dict() for o in new.overrides] == [
        {"optimizer": "sam", "rate": 0.8, "rho": 0.07},
        {"optimizer": "fsam", "rate": 0.4, "rho": 0.01},
    ]
    rho = {c.run_id: c.rho for c in new.expand()}
    assert rho["sam-symmetric0.8-seed0"] == 0.07 and rho["sam-symmetric0.4-seed0"] == 0.1
    assert rho["fsam-symmetric0.4-seed0"] == 0.01 and rho["fsam-symmetric0.8-seed0"] == 0.3
    every = apply_options(SweepConfig(), rho={"*": 0.2}).validate()
    assert {c.optimizer: c.rho for c in every.expand()} == {
        "sgd": None,
        "sam": 0.2,
        "asam": 0.2,
        "fsam": 0.2,
    }


def test_resolve_sweep_precedence(tmp_path):
    out = tmp_path / "sweep"
    previous = SweepConfig(optimizers=["sgd"], rates=[0.2], seeds=[7])
    previous.train["epochs"] = 3
    save_sweep_toml(previous.validate(), out / SWEEP_FILE)
    config_file = tmp_path / "exp.toml"
    config_file.write_text(
        '[sweep]\nseeds = [5]\nout = "elsewhere"\n[train]\nepochs = 4\nlr = 0.2\n'
    )

    sweep, directory = resolve_sweep()  # nothing given: the embedded grid
    assert directory == Path("runs/noise-sweep") and sweep.num_runs == 16
    sweep, directory = resolve_sweep(out=out)  # an existing sweep is the base
    assert (sweep.seeds, sweep.rates, sweep.train["epochs"]) == ([7], [0.2], 3)
    sweep, directory = resolve_sweep(out=out, options={"seeds": [8]})
    assert (sweep.seeds, sweep.train["epochs"]) == ([8], 3)
    sweep, directory = resolve_sweep(config_file=config_file, out=out)  # file over sweep.toml
    assert (sweep.seeds, sweep.train["epochs"], sweep.optimizers) == (
        [5],
        4,
        SweepConfig().optimizers,
    )
    assert directory == out
    sweep, directory = resolve_sweep(
        config_file=config_file, options={"train": {"epochs": 2}, "rates": [0.0]}
    )
    assert directory == Path("elsewhere")  # the file's out when --out is not given
    assert (sweep.train["epochs"], sweep.train["lr"], sweep.rates) == (2, 0.2, [0.0])
    assert sweep.out is None


# -- sweep directories ---------------------------------------------------------------------------


def test_changed_grid_adds_runs_and_refuses_incomparable_ones(tmp_path):
    out = tmp_path / "sweep"
    first = _tiny()
    prepare_sweep_dir(first, out)
    configs = first.expand()
    _write_run(out, configs[0], {"status": "completed", "final_test_acc": 0.9})
    _write_run(out, configs[1])  # started, not finished

    more = apply_options(first, seeds=[0, 1], optimizers=["sgd", "sam", "fsam"]).validate()
    states = check_existing_runs(more, out)
    assert states[configs[0].run_id] == "done" and states[configs[1].run_id] == "partial"
    assert states["fsam-symmetric0.4-seed1"] == "new" and len(states) == 12

    before = (out / SWEEP_FILE).read_text()
    longer = apply_options(first, train={"epochs": 3}).validate()
    with pytest.raises(
        RunDirError, match=r"sweep/sam-clean-seed0 holds a run with different shared"
    ):
        prepare_sweep_dir(longer, out)
    with pytest.raises(RunDirError, match=r"epochs 2 there, 3 here"):
        check_existing_runs(longer, out)
    # Other seeds only: no id in common, but the old runs would still be mixed in the table.
    other_seeds = apply_options(first, seeds=[1], train={"epochs": 3}).validate()
    with pytest.raises(RunDirError, match="different shared settings"):
        prepare_sweep_dir(other_seeds, out)
    other_rho = apply_options(first, rho={"sam": 0.2}).validate()
    with pytest.raises(RunDirError, match=r"sam-clean-seed0 holds a run with a different rho"):
        prepare_sweep_dir(other_rho, out)
    assert (out / SWEEP_FILE).read_text() == before  # refused before anything was written

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no robustkit sweep"):
        prepare_sweep_dir(first, stranger)


# -- running -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[RunOutcome]]:
    """One uninterrupted tiny sweep, shared by the tests below."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    lines: list[str] = []
    result = run_sweep(_tiny(), out, log=lines.append)
    return out, result.outcomes, lines


def test_tiny_sweep_end_to_end(reference):
    out, outcomes, lines = reference
    assert [o.status for o in outcomes] == ["completed"] * 4
    assert lines[0].startswith("noise-sweep: 4 runs = 2 optimisers x 2 rates x 1 seed (")
    assert lines[1].startswith("[1/4] sgd-clean-seed0 ") and "completed  test " in lines[1]
    for name in ("sweep.toml", "results.csv", "table.md", "table.tex"):
        assert (out / name).is_file(), name
    for name in ("noise_curve.png", "noise_curve.pdf"):
        assert (out / "figures" / name).stat().st_size > 1000, name
    results = pd.read_csv(out / "results.csv")
    assert list(results["run_id"]) == [
        "sgd-clean-seed0",
        "sgd-symmetric0.4-seed0",
        "sam-clean-seed0",
        "sam-symmetric0.4-seed0",
    ]
    assert list(results["rate"]) == [0.0, 0.4, 0.0, 0.4]
    assert list(results["noise"]) == ["none", "symmetric", "none", "symmetric"]
    for row in results.itertuples():
        record = json.loads((out / row.run_id / "result.json").read_text())
        assert row.final_test_acc == record["final_test_acc"]
        assert row.train_acc_clean == record["train_acc_clean"]
        assert row.status == "completed" and 0 < row.final_test_acc <= 1
    noisy = results[results["rate"] == 0.4]
    assert (noisy["train_acc_noisy"] < noisy["train_acc_clean"]).all()
    assert (noisy["realised_noise_rate"] == round(0.4 * 1437) / 1437).all()
    table = (out / "table.md").read_text()
    assert table.startswith("| noise | SGD | SAM |\n| --- | --- | --- |\n| 0% (clean) | ")
    assert "n = 1 seed (0): means only" in table


def test_finished_sweep_reruns_nothing(reference, tmp_path):
    out, _, _ = reference
    calls = []
    result = run_sweep(_tiny(), out, step_hook=lambda e, b: calls.append(e), figures=False)
    assert calls == [] and [o.status for o in result.outcomes] == ["skipped"] * 4


def test_killed_sweep_resumes_to_the_same_results(reference, tmp_path):
    out_ref, _, _ = reference
    out = tmp_path / "sweep"
    calls = []

    def kill_in_third_run(epoch: int, batch: int) -> None:
        calls.append((epoch, batch))
        # Runs 1 and 2 done (2 epochs each); run 3 killed in its second epoch.
        if len(calls) == 2 * 2 * STEPS_PER_EPOCH + STEPS_PER_EPOCH + 5:
            raise Kill

    with pytest.raises(Kill):
        run_sweep(_tiny(), out, step_hook=kill_in_third_run, figures=False)
    assert len(pd.read_csv(out / "results.csv")) == 2  # aggregated what was done
    third = out / "sgd-symmetric0.4-seed0"
    assert (third / "checkpoints" / "last.pt").is_file() and not (third / "result.json").exists()

    calls.clear()
    result = run_sweep(_tiny(), out, step_hook=lambda e, b: calls.append((e, b)))
    assert [o.status for o in result.outcomes] == ["skipped", "skipped", "completed", "completed"]
    # Run 3 resumed at its second epoch: one epoch of it, then two of run 4.
    assert len(calls) == 3 * STEPS_PER_EPOCH and calls[0] == (1, 0)

    ours, theirs = pd.read_csv(out / "results.csv"), pd.read_csv(out_ref / "results.csv")
    columns = numeric_columns(theirs)
    assert {"final_test_acc", "best_test_acc", "train_acc_noisy", "train_acc_clean"} <= set(columns)
    pd.testing.assert_frame_equal(ours[columns], theirs[columns], check_exact=True)
    assert list(ours["run_id"]) == list(theirs["run_id"])
    assert (out / "table.md").read_text() == (out_ref / "table.md").read_text()


def test_failed_and_diverged_runs_do_not_stop_the_sweep(tmp_path, monkeypatch):
    import robustkit.train.trainer as trainer

    real_train = trainer.train

    def flaky_train(config, out, **kwargs):
        if config.run_id == "sgd-symmetric0.4-seed0":
            raise RuntimeError("boom\nsecond line")
        if config.run_id == "sam-clean-seed0":
            Path(out).mkdir(parents=True)
            record = {"status": "diverged", "diverged_in_epoch": 1, "final_test_acc": None}
            record["config"] = {**config.to_dict(), "run_id": config.run_id}
            (Path(out) / "config.json").write_text(json.dumps(record["config"]))
            (Path(out) / "result.json").write_text(json.dumps(record))
            return TrainResult("diverged", Path(out), record)
        return real_train(config, out, **kwargs)

    monkeypatch.setattr(trainer, "train", flaky_train)
    out = tmp_path / "sweep"
    lines: list[str] = []
    result = run_sweep(_tiny(), out, log=lines.append, figures=False)
    statuses = {o.run_id: o.status for o in result.outcomes}
    assert statuses == {
        "sgd-clean-seed0": "completed",
        "sam-clean-seed0": "diverged",
        "sgd-symmetric0.4-seed0": "failed",
        "sam-symmetric0.4-seed0": "completed",
    }
    assert [o.run_id for o in result.failed] == ["sgd-symmetric0.4-seed0"]
    assert "failed     RuntimeError: boom  " in lines[3]
    error = (out / "sgd-symmetric0.4-seed0" / ERROR_FILE).read_text()
    assert error.startswith("RuntimeError: boom\n") and "Traceback" in error
    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert results.loc["sgd-symmetric0.4-seed0", "status"] == "failed"
    assert results.loc["sgd-symmetric0.4-seed0", "error"] == "RuntimeError: boom"
    assert results.loc["sam-clean-seed0", "status"] == "diverged"
    table = (out / "table.md").read_text()
    assert "| 40% | – | " in table
    assert "Excluded from the means: sgd-symmetric0.4-seed0 (failed), sam-clean-seed0" in table

    # The next invocation retries the failed run (and keeps the diverged result).
    monkeypatch.setattr(trainer, "train", real_train)
    result = run_sweep(_tiny(), out, figures=False)
    statuses = {o.run_id: o.status for o in result.outcomes}
    assert statuses["sgd-symmetric0.4-seed0"] == "completed"
    assert statuses["sam-clean-seed0"] == "skipped" and not result.failed
    assert not (out / "sgd-symmetric0.4-seed0" / ERROR_FILE).exists()


def test_a_killed_worker_fails_only_its_own_run(tmp_path):
    """SIGKILL of one pool worker breaks the pool: the run in the other worker is retried
    alone and finishes with the numbers of an in-process sweep; the culprit, killed again
    alone, is recorded as failed."""
    from tests.sweep_fixtures import sam_kills_its_worker, tiny

    ref = run_sweep(tiny(), tmp_path / "ref", figures=False)
    executor = LocalExecutor(2, cpus=2, gpus=[])
    executor._target = sam_kills_its_worker
    result = run_sweep(tiny(), tmp_path / "pool", executor=executor, figures=False)
    status = {o.run_id: o.status for o in result.outcomes}
    assert status == {"sam-symmetric0.4-seed0": "failed", "sgd-symmetric0.4-seed0": "completed"}
    (failed,) = result.failed
    assert "worker process died" in failed.error
    assert "worker process died" in (tmp_path / "pool" / failed.run_id / ERROR_FILE).read_text()
    ours = pd.read_csv(tmp_path / "pool" / "results.csv").set_index("run_id")
    theirs = pd.read_csv(tmp_path / "ref" / "results.csv").set_index("run_id")
    columns = ["final_test_acc", "best_test_acc", "train_acc_noisy", "train_acc_clean"]
    sgd = "sgd-symmetric0.4-seed0"
    assert ours.loc[sgd, columns].tolist() == theirs.loc[sgd, columns].tolist()
    assert ours.loc[failed.run_id, "status"] == "failed"
    assert {o.status for o in ref.outcomes} == {"completed"}


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch):
    import robustkit.train.trainer as trainer

    threads = {}

    def record_threads(config, out, **kwargs):
        threads[config.run_id] = config.num_threads
        raise RuntimeError("stop here")

    monkeypatch.setattr(trainer, "train", record_threads)
    sweep = SweepConfig(optimizers=["sgd"], rates=[0.2, 0.4], workers=1).validate()
    started = sweep.expand()[0]
    started.num_threads = 3
    _write_run(tmp_path, started)
    run_sweep(sweep, tmp_path, executor=LocalExecutor(1, cpus=2), figures=False)
    assert threads == {"sgd-symmetric0.2-seed0": 3, "sgd-symmetric0.4-seed0": 2}


def test_worker_settings_round_robin_gpus_and_share_threads():
    gpus = ["0", "1", "GPU-abc"]
    assert [worker_settings(s, 4, 16, gpus)["gpu"] for s in range(4)] == ["0", "1", "GPU-abc", "0"]
    assert worker_settings(0, 4, 16, gpus)["num_threads"] == 4
    assert worker_settings(1, 3, 2, [])["num_threads"] == 1
    assert worker_settings(1, 3, 2, []) == {"gpu": None, "num_threads": 1}
    with pytest.raises(ValueError, match="step_hook"):
        LocalExecutor(2, step_hook=lambda e, b: None)
    assert LocalExecutor(2, cpus=2, gpus=[]).describe() == "2 workers x 1 thread"
    # auto: one per GPU, else one per core; at most the grid's runs.
    assert resolve_workers("auto", 16, cpus=2, gpus=[]) == 2
    assert resolve_workers("auto", 16, cpus=64, gpus=["0", "1"]) == 2
    assert resolve_workers("auto", 1, cpus=8, gpus=[]) == 1
    assert resolve_workers(3, 1, cpus=8, gpus=[]) == 3


def test_longest_first_starts_the_two_pass_runs_first_in_grid_order():
    sweep = SweepConfig(optimizers=["sgd", "sam", "fsam"], rates=[0.2, 0.4]).validate()
    tasks = [RunTask(c.run_id, f"out/{c.run_id}", c.to_dict()) for c in sweep.expand()]
    assert [run_cost(t) for t in tasks[:3]] == [8.0, 16.0, 16.0]  # 8 epochs x 1 or 2 passes
    ordered = [t.run_id for t in longest_first(tasks)]
    assert ordered == [
        "sam-symmetric0.2-seed0",
        "fsam-symmetric0.2-seed0",
        "sam-symmetric0.4-seed0",
        "fsam-symmetric0.4-seed0",
        "sgd-symmetric0.2-seed0",
        "sgd-symmetric0.4-seed0",
    ]
    assert sorted(ordered) == sorted(t.run_id for t in tasks)


# -- aggregation ---------------------------------------------------------------------------------


def test_table_mean_and_std_against_a_hand_computation(tmp_path):
    out = tmp_path / "sweep"
    sweep = SweepConfig(optimizers=["sgd", "fsam"], rates=[0.2, 0.8], seeds=[0, 1, 2])
    accuracy = {
        # 20 %: sgd 80, 82, 87 -> mean 83, var (9 + 1 + 16) / 2 = 13, std 3.6056
        #       fsam 85, 86, 90 -> mean 87, var (4 + 1 + 9) / 2 = 7, std 2.6458 (best)
        ("sgd", 0.2): [0.80, 0.82, 0.87],
        ("fsam", 0.2): [0.85, 0.86, 0.90],
        # 80 %: sgd 40, 50 (seed 2 diverged) -> mean 45, std 7.0711; fsam one seed left
        ("sgd", 0.8): [0.40, 0.50, None],
        ("fsam", 0.8): [0.60, None, None],
    }
    for config in sweep.validate().expand():
        rate = 0.2 if "0.2" in config.noise else 0.8
        acc = accuracy[(config.optimizer, rate)][config.seed]
        if acc is None and config.optimizer == "fsam" and config.seed == 2:
            (out / config.run_id).mkdir(parents=True)
            (out / config.run_id / ERROR_FILE).write_text("RuntimeError: out of memory\n")
            continue
        status = "completed" if acc is not None else "diverged"
        _write_run(out, config, {"status": status, "final_test_acc": acc, "seconds": 1.0})
    results = collect_results(out)
    assert len(results) == 12
    table = accuracy_table(results)
    md = format_markdown(table)
    lines = md.splitlines()
    assert lines[0] == "| noise | SGD | FSAM |"
    assert lines[2] == "| 20% | 83.00 ± 3.61 | **87.00 ± 2.65** |"
    assert lines[3] == "| 80% | 45.00 ± 7.07 | **60.00** |"
    assert "mean ± sample std (ddof=1) over n = 3 seeds (0, 1, 2); digits / cnn / 8 epochs" in md
    assert "Fewer seeds in: SGD at 80%: n = 2; FSAM at 80%: n = 1." in md
    assert "sgd-symmetric0.8-seed2 (diverged)" in md
    assert "fsam-symmetric0.8-seed2 (failed)" in md
    cell = table.cells[(("symmetric", 0.2), "sgd")]
    assert cell.mean == pytest.approx(83.0, abs=1e-12)
    assert cell.std == pytest.approx(math.sqrt(13.0), abs=1e-12)
    tex = format_latex(table)
    assert r"20\% & 83.00 $\pm$ 3.61 & \textbf{87.00 $\pm$ 2.65} \\" in tex
    assert r"\begin{tabular}{lcc}" in tex and r"\bottomrule" in tex
    failed = results.set_index("run_id").loc["fsam-symmetric0.8-seed2"]
    assert (failed["status"], failed["optimizer"], failed["seed"]) == ("failed", "fsam", 2)
    assert failed["error"] == "RuntimeError: out of memory"


def test_single_seed_table_shows_means_and_says_n_1(tmp_path):
    out = tmp_path / "sweep"
    sweep = SweepConfig(optimizers=["sam", "sgd"], rates=[0.0, 0.4]).validate()
    for config, acc in zip(sweep.expand(), [0.9, 0.91, 0.8, 0.8]):
        _write_run(out, config, {"status": "completed", "final_test_acc": acc})
    files = write_results(out, figures=False)
    assert set(files) == {"results.csv", "table.md", "table.tex"}
    md = (out / "table.md").read_text()
    assert "| noise | SGD | SAM |" in md  # the paper's column order, whatever the grid's
    assert "| 0% (clean) | **91.00** | 90.00 |" in md
    assert "| 40% | **80.00** | **80.00** |" in md  # ties are all bold
    assert "n = 1 seed (0): means only, no spread" in md


def test_results_and_figures_import_no_torch():
    code = (
        "import sys; import robustkit.sweep.results, robustkit.report.figures, "
        "robustkit.cli.sweep; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
