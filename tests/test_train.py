"""The fit loop, run directories, resume and checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.train.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from robustkit.train.config import TrainConfig, derive_seed, run_id
from robustkit.train.trainer import Interrupt, RunDirError, lr_factor, train


def _separable_npz(path: Path, n: int = 200, seed: int = 0) -> str:
    """Two classes of 8x8 single-channel images separated by their mean brightness."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(0.0, 0.1, size=(n, 1, 8, 8)) + (2 * y - 1)[:, None, None, None]
    np.savez(
        path,
        x_train=x.astype(np.float32),
        y_train=y,
        x_test=x[:50].astype(np.float32),
        y_test=y[:50],
    )
    return f"npz:{path}"


def _small(**kw) -> TrainConfig:
    base = dict(model="mlp", epochs=3, batch_size=64, noise="symmetric:0.2", num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_linearly_separable_set_reaches_zero_training_error(tmp_path):
    spec = _separable_npz(tmp_path / "sep.npz")
    result = train(
        _small(dataset=spec, noise="none", optimizer="sam", epochs=5, lr=0.1), tmp_path / "run"
    )
    assert result.status == "completed"
    assert result.record["train_acc_clean"] == 1.0
    assert result.record["final_test_acc"] == 1.0


def test_run_directory_contract(tmp_path):
    out = tmp_path / "run"
    result = train(_small(), out)
    for name in (
        "config.json",
        "env.json",
        "labels.npz",
        "metrics.jsonl",
        "checkpoint.pt",
        "result.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.pt").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["run_id"] == "fsam-symmetric0.2-seed0"
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    with np.load(out / "labels.npz") as labels:
        flipped = labels["flipped"]
        assert np.array_equal(flipped, labels["labels"] != labels["clean_labels"])
        assert flipped.sum() == round(0.2 * len(flipped))
    assert result.record["realised_noise_rate"] == pytest.approx(flipped.mean())
    # No temporary files left behind.
    assert not [p for p in out.rglob("*.tmp")]


def test_checkpoint_reproduces_logged_test_loss_and_loads_weights_only(tmp_path):
    from robustkit.data import load_dataset
    from robustkit.evaluate.classify import evaluate_classifier

    out = tmp_path / "run"
    train(_small(), out)
    raw = torch.load(out / "checkpoint.pt", weights_only=True)
    assert raw["format"] == "robustkit.checkpoint" and raw["version"] == 1
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert not ckpt.model.training
    assert ckpt.run_dir == out
    data = load_dataset(ckpt.config["dataset"])
    loss, acc = evaluate_classifier(ckpt.model, data.x_test, data.y_test)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert loss == pytest.approx(last["test_loss"], rel=1e-6)
    assert acc == last["test_acc"]


def _final_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoint.pt", weights_only=True)["model_state"]


@pytest.mark.parametrize("kill_at", [(0, 5), (1, 0), (2, 7)])
def test_resume_after_interrupt_is_bit_identical(tmp_path, kill_at):
    config = _small(model="cnn", optimizer="fsam", augment="crop-flip")
    train(config, tmp_path / "full")

    def hook(epoch, batch):
        if (epoch, batch) == kill_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "cut", step_hook=hook)
    assert not (tmp_path / "cut" / "result.json").exists()
    with pytest.raises(RunDirError, match="pass --resume"):
        train(config, tmp_path / "cut")
    result = train(config, tmp_path / "cut", resume=True)
    assert result.status == "completed"
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(full) == strip(cut)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A real kill -9 in the middle of training, then --resume, gives the same weights."""
    args = ["--model", "cnn", "--epochs", "4", "--noise", "symmetric:0.4", "--optimizer", "sam"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "robustkit.cli"]
    subprocess.run(
        [*cli, "train", *args, "--out", str(tmp_path / "full")],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [*cli, "train", *args, "--out", str(tmp_path / "cut")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "result.json").exists(), "killed too late to test resume"
    done = subprocess.run(
        [*cli, "train", *args, "--out", str(tmp_path / "cut"), "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_finished_run_is_skipped_and_other_runs_refused(tmp_path):
    out = tmp_path / "run"
    train(_small(), out)
    mtime = (out / "checkpoint.pt").stat().st_mtime_ns
    again = train(_small(), out)
    assert again.status == "skipped"
    assert (out / "checkpoint.pt").stat().st_mtime_ns == mtime
    with pytest.raises(RunDirError, match="differs in: optimizer"):
        train(_small(optimizer="sam"), out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no robustkit run"):
        train(_small(), foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_divergence_is_recorded_not_raised(tmp_path):
    result = train(_small(lr=1e12, optimizer="sgd", noise="none", momentum=0.0), tmp_path / "run")
    assert result.status == "diverged"
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "diverged" and record["final_test_acc"] is None


def test_same_seed_same_noise_for_every_optimizer(tmp_path):
    train(_small(optimizer="sgd", epochs=1), tmp_path / "a")
    train(_small(optimizer="fsam", epochs=1), tmp_path / "b")
    with np.load(tmp_path / "a" / "labels.npz") as a, np.load(tmp_path / "b" / "labels.npz") as b:
        assert np.array_equal(a["labels"], b["labels"])


def test_training_leaves_global_rng_untouched(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(_small(epochs=1), tmp_path / "run")
    assert torch.equal(before, torch.get_rng_state())


def test_lr_factor_schedules():
    assert lr_factor(0, 100, 10, "cosine", [], 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine", [], 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 0, "cosine", [], 0.1) == pytest.approx(0.0)
    assert lr_factor(55, 110, 0, "cosine", [], 0.1) == pytest.approx(0.5)
    assert lr_factor(60, 100, 0, "step", [0.5, 0.75], 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 100, 0, "step", [0.5, 0.75], 0.1) == pytest.approx(0.01)
    assert lr_factor(80, 100, 0, "constant", [], 0.1) == 1.0


def test_run_ids_and_seeds():
    assert run_id("fsam", "symmetric:0.4", 1) == "fsam-symmetric0.4-seed1"
    assert run_id("sgd", "none", 0) == "sgd-clean-seed0"
    assert derive_seed(0, "noise") != derive_seed(0, "batches") != derive_seed(1, "noise")


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(optimizer="adam"), "unknown optimizer"),
        (dict(epochs=0), "epochs must be an int >= 1"),
        (dict(noise="symmetric:1.0"), r"noise rate must be in \[0, 1\)"),
        (dict(noise="gaussian:0.1"), "unknown noise kind"),
        (dict(lr=-1.0), "lr must be a number > 0"),
        (dict(schedule="linear"), "unknown schedule"),
        (dict(label_smoothing=1.5), "label_smoothing"),
    ],
)
def test_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw).validate()


# -- checkpoints: corrupt, truncated, foreign, unsafe ------------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_without_running_its_payload(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "robustkit.checkpoint", "version": 1, "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load.*posix\.system"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    # A plain pickle file (not torch's zip format) with a payload, too.
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_truncated_and_foreign_checkpoints(tmp_path):
    out = tmp_path / "run"
    train(_small(epochs=1), out)
    good = (out / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a robustkit checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a robustkit checkpoint"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    payload = read_checkpoint(out / "checkpoint.pt")
    torch.save({**payload, "version": 99}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(newer)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_corrupt_resume_point_is_a_clean_error(tmp_path):
    config = _small()

    def hook(epoch, batch):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "run", step_hook=hook)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(config, tmp_path / "run", resume=True)


def test_amp_bf16_run_completes(tmp_path):
    result = train(_small(epochs=1, amp=True), tmp_path / "run")
    assert result.status == "completed"
    assert 0.0 <= result.record["final_test_acc"] <= 1.0
