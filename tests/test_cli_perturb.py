"""CliRunner tests of ``robustkit perturb``: help, an end-to-end run, and one-line user errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robustkit.cli import main
from robustkit.cli.perturb import NORMS, RADIUS_MODES, perturb_command


def _invoke(*args: str):
    return CliRunner().invoke(main, ["perturb", *args])


@pytest.fixture(scope="module")
def digits_checkpoints(tmp_path_factory) -> list[Path]:
    """Two tiny mlp checkpoints on digits (briefly trained), as the trainer would save them."""
    from robustkit.data.datasets import load_dataset
    from robustkit.models import build_model, model_spec
    from robustkit.train.checkpoint import save_checkpoint

    ds = load_dataset("digits")
    spec = model_spec("mlp", ds.in_channels, ds.num_classes, ds.image_size)
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for seed, optimizer in ((0, "sgd"), (1, "fsam")):
        torch.manual_seed(seed)
        model = build_model(**spec)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(30):
            opt.zero_grad()
            F.cross_entropy(model(ds.x_train), ds.y_train).backward()
            opt.step()
        run_id = f"{optimizer}-clean-seed{seed}"
        config = {"dataset": "digits", "optimizer": optimizer, "run_id": run_id}
        paths.append(
            save_checkpoint(root / run_id / "checkpoint.pt", model, model_spec=spec, config=config)
        )
        (root / run_id / "config.json").write_text(json.dumps(config))  # marks a run directory
    return paths


def test_help_lists_the_options():
    result = _invoke("--help")
    assert result.exit_code == 0, result.output
    for option in ("--magnitudes", "--norm", "--steps", "--step-size", "--random-start",
                   "--restarts", "--random-trials", "--attack-data", "--num-examples",
                   "--include-bn-bias", "--device", "--out"):  # fmt: skip
        assert option in result.output
    assert perturb_command.name == "perturb"


def test_cli_choices_mirror_the_library():
    from robustkit.evaluate.perturb import Norm, RadiusMode

    assert tuple(n.value for n in Norm) == NORMS
    assert tuple(r.value for r in RadiusMode) == RADIUS_MODES


def test_end_to_end_on_digits(digits_checkpoints, tmp_path):
    out = tmp_path / "perturb"
    result = _invoke(
        *map(str, digits_checkpoints),
        "--magnitudes", "0,0.05,0.2", "--steps", "3", "--random-trials", "2",
        "--num-examples", "200", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("perturb.json", "perturb.csv", "perturb.png", "perturb.pdf"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert not list(out.glob(".*.tmp"))
    payload = json.loads((out / "perturb.json").read_text())
    assert payload["format"] == "robustkit.perturb"
    records = payload["records"]
    assert len(records) == 6
    first = records[0]
    for key in ("checkpoint", "optimizer", "magnitude", "norm", "steps", "step_size", "restarts",
                "adversarial_accuracy", "adversarial_loss", "random_accuracy_mean",
                "random_accuracy_std", "random_loss_mean", "random_trials", "delta_norm",
                "delta_norm_relative", "seconds", "device", "bn_mode", "attack_split",
                "attack_num_examples", "eval_split", "eval_num_examples", "seed"):  # fmt: skip
        assert key in first, key
    assert first["checkpoint"] == str(digits_checkpoints[0])
    assert [r["optimizer"] for r in records] == ["sgd"] * 3 + ["fsam"] * 3
    assert first["bn_mode"] == "eval" and first["device"] == "cpu"
    assert (first["attack_split"], first["attack_num_examples"]) == ("train", 200)
    assert (first["eval_split"], first["eval_num_examples"]) == ("test", 360)
    assert (first["norm"], first["steps"], first["random_trials"]) == ("layer", 3, 2)
    for rec in records:
        if rec["magnitude"] == 0:  # magnitude 0 is the clean model
            assert rec["adversarial_accuracy"] == rec["clean_accuracy"]
        else:
            assert rec["adversarial_accuracy"] <= rec["random_accuracy_mean"]
            assert rec["delta_norm_relative"] == pytest.approx(rec["magnitude"], rel=1e-4)
    with open(out / "perturb.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and float(rows[1]["magnitude"]) == 0.05
    # the summary table on stdout
    assert "adv acc" in result.output and "sgd-clean-seed0" in result.output
    assert "fsam-clean-seed1" in result.output


def test_geometry_ball_and_default_out(digits_checkpoints):
    result = _invoke(
        str(digits_checkpoints[0]), "--norm", "fsam", "--magnitudes", "0.1", "--steps", "1",
        "--random-trials", "0", "--num-examples", "100", "--device", "cpu", "--no-plot",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = digits_checkpoints[0].parent / "eval"
    rec = json.loads((out / "perturb.json").read_text())["records"][0]
    assert rec["norm"] == "fsam" and rec["eta"] == 1.0
    assert rec["random_accuracy_mean"] is None
    assert not (out / "perturb.png").exists()


def _assert_one_line_error(result, text: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if "Error" in line]
    assert len(errors) == 1, result.output
    assert text in result.output, result.output


def test_missing_checkpoint(tmp_path):
    result = _invoke(str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o"))
    _assert_one_line_error(result, "no such checkpoint")


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x80\x02 not a checkpoint at all" * 10)
    _assert_one_line_error(_invoke(str(path), "--out", str(tmp_path / "o")), "corrupt")


def test_foreign_checkpoint(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    _assert_one_line_error(
        _invoke(str(path), "--out", str(tmp_path / "o")), "not a robustkit checkpoint"
    )


@pytest.mark.parametrize(
    "value, text",
    [("-0.1", ">= 0"), ("", "comma-separated"), ("0,abc", "expected numbers"), ("0,,1", "comma"),
     ("nan", ">= 0"), ("inf", ">= 0")],
)  # fmt: skip
def test_bad_magnitudes(digits_checkpoints, tmp_path, value, text):
    result = _invoke(str(digits_checkpoints[0]), "--magnitudes", value, "--out", str(tmp_path))
    assert result.exit_code == 2
    _assert_one_line_error(result, text)
    assert not (tmp_path / "perturb.json").exists()


def test_bad_eta_and_dataset_mismatch(digits_checkpoints, tmp_path):
    result = _invoke(str(digits_checkpoints[0]), "--eta", "0.1", "--out", str(tmp_path),
                     "--device", "cpu")  # fmt: skip
    _assert_one_line_error(result, "eta applies only")
    result = _invoke(str(digits_checkpoints[0]), "--dataset", "nosuchdata", "--out",
                     str(tmp_path), "--device", "cpu")  # fmt: skip
    _assert_one_line_error(result, "unknown data set")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_asked_for_without_cuda(digits_checkpoints, tmp_path):
    result = _invoke(str(digits_checkpoints[0]), "--device", "cuda", "--out", str(tmp_path))
    _assert_one_line_error(result, "CUDA is not available")
