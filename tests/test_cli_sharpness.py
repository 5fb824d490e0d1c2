"""``robustkit sharpness``: help, a tiny end-to-end run, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robustkit.cli import main
from robustkit.models import build_model, model_spec
from robustkit.train.checkpoint import save_checkpoint

pytest.importorskip("robustkit.data.datasets")

FAST = ["--num-examples", "48", "--batch-size", "16", "--max-probes", "20", "--rtol", "0.05"]


def _run_dir(root: Path, optimizer: str = "sgd", noisy: bool = True) -> Path:
    """A run directory: config.json, checkpoint.pt of a digits MLP, and labels.npz."""
    from robustkit.data.datasets import load_dataset

    run_dir = root / f"{optimizer}-run"
    run_dir.mkdir(parents=True)
    spec = model_spec("mlp", in_channels=1, num_classes=10, image_size=8)
    config = {"dataset": "digits", "optimizer": optimizer, "seed": 0, "run_id": f"{optimizer}-s0"}
    (run_dir / "config.json").write_text(json.dumps(config))
    save_checkpoint(run_dir / "checkpoint.pt", build_model(**spec), model_spec=spec, config=config)
    if noisy:
        clean = load_dataset("digits").y_train.numpy()
        labels = (clean + 1) % 10  # every label flipped
        np.savez(run_dir / "labels.npz", labels=labels, clean_labels=clean, flipped=labels != clean)
    return run_dir


def _invoke(args: list[str]):
    return CliRunner().invoke(main, ["sharpness", *args])


def test_help_lists_metrics_and_options() -> None:
    result = _invoke(["--help"])
    assert result.exit_code == 0, result.output
    for text in ("hessian-eig", "fisher-trace-empirical", "--num-examples", "--which", "--out"):
        assert text in result.output
    assert "sharpness" in CliRunner().invoke(main, ["--help"]).output


def test_command_module_does_not_import_torch() -> None:
    code = "import sys, robustkit.cli.sharpness; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_end_to_end_records_table_and_figure(tmp_path: Path) -> None:
    runs = [_run_dir(tmp_path, "sgd"), _run_dir(tmp_path, "fsam")]
    out = tmp_path / "sharpness.json"
    metrics = "hessian-eig,hessian-trace,fisher-trace,fisher-trace-empirical"
    result = _invoke(
        [*(str(r / "checkpoint.pt") for r in runs), "--metrics", metrics, "--top-k", "2",
         "--out", str(out), *FAST]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["format"] == "robustkit.sharpness"
    records = payload["records"]
    assert [(r["optimizer"], r["metric"]) for r in records] == [
        (opt, m) for opt in ("sgd", "fsam") for m in metrics.split(",")
    ]
    for r in records:
        assert r["num_examples"] == 48 and r["split"] == "train" and r["labels"] == "clean"
        assert r["bn_mode"] == "eval" and r["device"] in ("cpu", "cuda") and r["seconds"] >= 0
        assert r["checkpoint"].endswith("checkpoint.pt") and "seed 0" in r["subset"]
    eig = records[0]
    assert len(eig["eigenvalues"]) == 2 and eig["num_hvps"] > 0 and eig["residuals"][0] >= 0
    assert records[1]["stderr"] > 0 and records[1]["num_probes"] > 0
    assert records[2]["fisher"] == "true" and records[3]["fisher"] == "empirical"
    assert (tmp_path / "figures" / "sharpness.png").stat().st_size > 0
    assert "hessian-eig" in result.stdout and "sgd-s0" in result.stdout


def test_noisy_labels_and_default_output_path(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    args = [str(run / "checkpoint.pt"), "--metrics", "fisher-trace-empirical", *FAST]
    assert _invoke([*args, "--labels", "noisy"]).exit_code == 0
    noisy = json.loads((run / "eval" / "sharpness.json").read_text())["records"][0]
    assert _invoke(args).exit_code == 0
    clean = json.loads((run / "eval" / "sharpness.json").read_text())["records"][0]
    assert noisy["labels"] == "noisy" and clean["labels"] == "clean"
    # Every label flipped: the noisy empirical Fisher measures different gradients.
    assert noisy["value"] != pytest.approx(clean["value"], rel=1e-3)
    assert (run / "eval" / "figures" / "sharpness.png").is_file()


def test_monte_carlo_fisher_and_power_method(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, noisy=False)
    out = tmp_path / "o.json"
    result = _invoke(
        [str(run / "checkpoint.pt"), "--metrics", "fisher-trace,hessian-eig", "--fisher-samples",
         "2", "--method", "power", "--max-iters", "5", "--dtype", "float64", "--out", str(out),
         *FAST]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    fisher, eig = json.loads(out.read_text())["records"]
    assert fisher["fisher"] == "mc" and fisher["num_samples"] == 2 and fisher["stderr"] > 0
    assert eig["method"] == "power" and eig["dtype"] == "float64"


def test_per_example_method_is_chosen_and_recorded(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, noisy=False)
    values = {}
    for method in ("auto", "vmap"):
        out = tmp_path / f"{method}.json"
        result = _invoke(
            [str(run / "checkpoint.pt"), "--metrics", "fisher-trace", "--per-example", method,
             "--dtype", "float64", "--out", str(out), *FAST]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        payload = json.loads(out.read_text())
        (record,) = payload["records"]
        assert payload["options"]["per_example"] == method
        values[record["per_example_method"]] = record["value"]
    assert values["layerwise"] == pytest.approx(values["vmap"], rel=1e-10)


def test_eps_sharpness_is_delegated(tmp_path: Path) -> None:
    pytest.importorskip("robustkit.evaluate.perturb")
    run = _run_dir(tmp_path, noisy=False)
    out = tmp_path / "eps.json"
    result = _invoke(
        [str(run / "checkpoint.pt"), "--metrics", "eps-sharpness", "--eps-steps", "2", "--out",
         str(out), *FAST]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out.read_text())["records"]
    assert record["metric"] == "eps-sharpness" and record["value"] >= 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.pt", "no such checkpoint"),
        (lambda p: (p / "bad.pt").write_bytes(b"not a checkpoint") and p / "bad.pt", "bad.pt: "),
    ],
)
def test_bad_checkpoint_is_a_one_line_error(tmp_path: Path, make, match: str) -> None:
    result = _invoke([str(make(tmp_path)), "--metrics", "hessian-trace"])
    assert result.exit_code != 0
    assert match in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--metrics", "hessian-eig,curvature"], "unknown metric 'curvature'"),
        (["--labels", "noisy", "--split", "test"], "only for the train split"),
        (["--ball", "nonsense", "--metrics", "eps-sharpness"], "nonsense"),
    ],
)
def test_user_errors_exit_nonzero_with_a_message(tmp_path: Path, args, match) -> None:
    run = _run_dir(tmp_path, noisy=False)
    result = _invoke([str(run / "checkpoint.pt"), *args, *FAST])
    assert result.exit_code != 0
    assert match in result.output and "Traceback" not in result.output


def test_missing_noisy_labels_is_an_error(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, noisy=False)
    result = _invoke([str(run / "checkpoint.pt"), "--labels", "noisy", *FAST])
    assert result.exit_code == 1 and "labels.npz" in result.output


def test_unmatched_glob_is_an_error(tmp_path: Path) -> None:
    result = _invoke([str(tmp_path / "*" / "checkpoint.pt")])
    assert result.exit_code == 1 and "no checkpoint matches" in result.output


@pytest.mark.gpu
def test_runs_on_cuda(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, noisy=False)
    out = tmp_path / "gpu.json"
    result = _invoke([str(run / "checkpoint.pt"), "--device", "cuda", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert all(r["device"] == "cuda" for r in json.loads(out.read_text())["records"])
    assert torch.cuda.is_available()
