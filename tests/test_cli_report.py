"""``robustkit report``: help, one end-to-end report, one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from robustkit.cli import main
from tests.test_report import build_fixture


def _invoke(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_and_listing():
    result = _invoke("--help")
    assert result.exit_code == 0
    for option in ("RUNS_DIR", "--format", "--out", "--dpi", "not measured"):
        assert option in result.output
    listing = CliRunner().invoke(main, ["--help"])
    assert "report" in listing.output and "One HTML (or Markdown) page" in listing.output


def test_report_end_to_end(tmp_path):
    root = build_fixture(tmp_path / "sweep", perturb=False, sharpness=False)
    out = tmp_path / "out"
    result = _invoke(str(root), "--format", "html", "--format", "md", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"read 1 sweep, 8 runs under {root}"
    assert lines[1] == (
        "not measured: Weight perturbation, Sharpness, Sharpness against test accuracy"
    )
    assert lines[2] == (
        f"wrote {out / 'index.html'} and {out / 'README.md'} "
        f"(2 figures as PNG and PDF in {out / 'figures'})"
    )
    assert "<!DOCTYPE html>" in (out / "index.html").read_text()
    text = (out / "README.md").read_text()
    assert "![training curves](figures/training_curves.png)" in text
    command = f"robustkit report {root} --format html --format md --out {out}"
    assert command in text.replace(" \\\n    ", " ")
    assert not (root / "report").exists()


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        ("missing", ("no such directory",)),
        ("empty", ("no robustkit records found",)),
        ("file", ("not a directory",)),
        ("corrupt-json", ("result.json", "corrupt JSON")),
        ("corrupt-csv", ("results.csv", "corrupt CSV")),
        ("unknown-format", ("perturb.json", "unknown record format 'robustkit.weights'")),
        ("newer-version", ("sharpness.json", "version 9 is newer")),
    ],
)
def test_bad_input_is_one_line(tmp_path, setup, fragments):
    target = tmp_path / "runs"
    if setup == "empty":
        target.mkdir()
    elif setup == "file":
        target.write_text("x")
    elif setup != "missing":
        build_fixture(target, perturb=False)
        if setup == "corrupt-json":
            (target / "fsam-symmetric0.6-seed1" / "result.json").write_text('{"status": ')
        elif setup == "corrupt-csv":
            (target / "results.csv").write_text('run_id,optimizer\n"unterminated,1\n')
        elif setup == "unknown-format":
            (target / "perturb.json").write_text(
                json.dumps({"format": "robustkit.weights", "version": 1, "records": []})
            )
        elif setup == "newer-version":
            data = json.loads((target / "sharpness.json").read_text())
            (target / "sharpness.json").write_text(json.dumps({**data, "version": 9}))
    _one_line_error(_invoke(str(target)), *fragments)
    assert not (target / "report").exists()


def test_bad_options_are_usage_errors(tmp_path):
    build_fixture(tmp_path / "sweep", perturb=False, sharpness=False)
    result = _invoke(str(tmp_path / "sweep"), "--format", "pdf")
    assert result.exit_code == 2 and "'pdf' is not one of 'html', 'md'" in result.output
    result = _invoke(str(tmp_path / "sweep"), "--dpi", "1")
    assert result.exit_code == 2 and "--dpi" in result.output


@pytest.mark.slow
def test_real_pipeline(tmp_path):
    """train -> perturb -> sharpness -> report on the embedded digits data (opt-in: trains)."""
    runner = CliRunner()
    run = tmp_path / "runs" / "run"
    steps = [
        ["train", "--optimizer", "sam", "--epochs", "1", "--device", "cpu", "--out", str(run)],
        ["perturb", str(run / "checkpoint.pt"), "--magnitudes", "0,0.01", "--steps", "1",
         "--random-trials", "1", "--num-examples", "100", "--eval-examples", "100",
         "--device", "cpu", "--no-plot"],
        ["sharpness", str(run / "checkpoint.pt"), "--metrics", "hessian-eig",
         "--num-examples", "50", "--max-iters", "5", "--device", "cpu"],
        ["report", str(tmp_path / "runs"), "--dpi", "20"],
    ]  # fmt: skip
    for args in steps:
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args[0], result.output)
    page = (tmp_path / "runs" / "report" / "index.html").read_text()
    assert "not measured:" not in page
