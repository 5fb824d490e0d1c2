"""``robustkit.report``: reading records, the sections each record kind enables, figures, a
self-contained HTML page, Markdown, reproduce commands that parse with the real CLI, no torch.

The fixture writes small records by hand in the formats the writers produce (run directories
from real ``TrainConfig``s of a real ``SweepConfig``, ``results.csv``/``table.md`` by the sweep
module itself); nothing is trained.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest

from robustkit.report.records import ReportError, load_records
from robustkit.report.render import NOT_MEASURED, Image, NotMeasured, Table, build_report
from robustkit.sweep.grid import Override, SweepConfig, save_sweep_toml
from robustkit.sweep.results import accuracy_table, collect_results, write_results

DPI = 30  # figures are checked for existence and format, not looks: keep them cheap
OPTIMIZERS = ["sgd", "fsam"]
RATES = [0.2, 0.6]
SEEDS = [0, 1]
MAGNITUDES = [0.0, 0.01, 0.05]
FIGURES = ("noise_curve", "training_curves", "perturbation", "sharpness", "sharpness_vs_accuracy")


def _sweep() -> SweepConfig:
    return SweepConfig(
        optimizers=list(OPTIMIZERS),
        rates=list(RATES),
        seeds=list(SEEDS),
        train={**SweepConfig().train, "epochs": 3},
        overrides=[Override("fsam", rate=0.6, rho=0.05)],
        workers=1,
    ).validate()


def _final_acc(optimizer: str, rate: float, seed: int) -> float:
    return 0.9 - 0.5 * rate + 0.013 * seed + (0.02 if optimizer == "fsam" else 0.0)


def build_fixture(
    root: Path,
    *,
    results_csv: bool = True,
    metrics: bool = True,
    perturb: bool = True,
    sharpness: bool = True,
    unfinished: tuple[str, ...] = (),
    checkpoints: bool = False,
) -> Path:
    """A sweep directory of 8 runs (sgd/fsam x 20/60 % x seeds 0/1) with evaluator records.

    Args:
        root: The sweep directory to create.
        results_csv: Aggregate with the sweep module (``results.csv``, ``table.md/.tex``).
        metrics: Write each run's ``metrics.jsonl``.
        perturb: Write ``perturb/perturb.json``.
        sharpness: Write ``sharpness.json``.
        unfinished: Run ids left without ``result.json``.
        checkpoints: Touch empty ``checkpoint.pt`` files (for the glob in commands).
    """
    sweep = _sweep()
    root.mkdir(parents=True)
    save_sweep_toml(sweep, root / "sweep.toml")
    perturb_records, sharpness_records = [], []
    for config in sweep.expand():
        run = root / config.run_id
        run.mkdir()
        rate = float(config.noise.partition(":")[2] or 0)
        acc = _final_acc(config.optimizer, rate, config.seed)
        record_config = {**config.to_dict(), "run_id": config.run_id, "num_threads": 1}
        (run / "config.json").write_text(json.dumps(record_config))
        env = {
            "robustkit": "0.1.0",
            "git_commit": "abc123",
            "python": "3.11.7",
            "torch": "2.14.1",
            "numpy": "2.4.6",
            "device": "cpu",
            "device_name": "x86_64",
            "date": f"2026-01-0{1 + config.seed}T10:00:00+00:00",
        }
        (run / "env.json").write_text(json.dumps(env))
        history = [
            {
                "epoch": e,
                "train_loss": 2.3 - 0.3 * e + rate,
                "train_acc": 0.3 + 0.1 * e,
                "train_acc_clean": 0.35 + 0.1 * e,
                "test_loss": 2.0 - 0.2 * e,
                "test_acc": acc - 0.1 * (3 - e),
                "lr": 0.05,
                "seconds": 1.0,
            }
            for e in (1, 2, 3)
        ]
        if metrics:
            (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        if checkpoints:
            (run / "checkpoint.pt").write_bytes(b"")
        if config.run_id not in unfinished:
            result = {
                "run_id": config.run_id,
                "status": "completed",
                "epochs": 3,
                "final_test_acc": acc,
                "best_test_acc": acc,
                "final_test_loss": 1.4,
                "train_acc_noisy": 0.6,
                "train_acc_clean": 0.65,
                "train_loss": 1.4,
                "noise": config.noise,
                "realised_noise_rate": rate,
                "seconds": 3.0,
                "device": "cpu",
                "config": record_config,
            }
            (run / "result.json").write_text(json.dumps(result))
        checkpoint = str(run / "checkpoint.pt")
        for m in MAGNITUDES:
            adv = acc * (1 - 8 * m)
            perturb_records.append(
                {
                    "checkpoint": checkpoint,
                    "label": config.run_id,
                    "optimizer": config.optimizer,
                    "run_id": config.run_id,
                    "dataset": "digits",
                    "magnitude": m,
                    "norm": "layer",
                    "radius_mode": "relative",
                    "eta": None,
                    "include_bn_bias": False,
                    "steps": 3,
                    "step_size": 2.5 / 3,
                    "random_start": False,
                    "restarts": 1,
                    "clean_accuracy": acc,
                    "clean_loss": 1.2,
                    "adversarial_accuracy": adv,
                    "adversarial_loss": 1.2 + m,
                    "random_accuracy_mean": acc - m,
                    "random_accuracy_std": 0.001,
                    "random_trials": 5,
                    "attack_num_examples": 1000,
                    "eval_num_examples": 360,
                    "device": "cpu",
                    "attack_split": "train",
                    "attack_subset": "1000 of 1437, uniform without replacement, seed 0",
                    "eval_split": "test",
                    "eval_subset": "all 360",
                    "seed": 0,
                }
            )
        common = {
            "checkpoint": checkpoint,
            "label": config.run_id,
            "run_id": config.run_id,
            "optimizer": config.optimizer,
            "noise": config.noise,
            "split": "train",
            "subset": "first 200 of torch.randperm(1437) of the train split, seed 0",
            "num_examples": 200,
            "seed": 0,
        }
        sharpness_records.append(
            {**common, "metric": "hessian-eig", "value": 30 * (1 - acc), "stderr": None}
        )
        sharpness_records.append(
            {**common, "metric": "fisher-trace", "value": 100 * (1 - acc), "stderr": 0.5}
        )
    if results_csv:
        write_results(root, figures=False)
    if perturb:
        payload = {"format": "robustkit.perturb", "version": 1, "env": env}
        payload["records"] = perturb_records
        (root / "perturb").mkdir()
        (root / "perturb" / "perturb.json").write_text(json.dumps(payload))
    if sharpness:
        options = {
            "metrics": ["hessian-eig", "fisher-trace"],
            "num_examples": 200,
            "split": "train",
            "labels": "clean",
            "top_k": 1,
            "which": "largest",
            "method": "lanczos",
            "tol": None,
            "max_iters": 100,
            "trace_method": "hutchinson",
            "rtol": 0.01,
            "max_probes": 200,
            "fisher_samples": 0,
            "per_example": "vmap",
            "rho": 0.05,
            "ball": "sam",
            "eps_steps": 10,
            "seed": 0,
            "batch_size": 256,
            "device": "cpu",
            "dtype": "float32",
        }
        payload = {"format": "robustkit.sharpness", "version": 1, "options": options}
        payload["records"] = sharpness_records
        (root / "sharpness.json").write_text(json.dumps(payload))
    return root


# -- a self-contained, well-formed page -----------------------------------------------------------


class _PageChecker(HTMLParser):
    """Collects asset references and checks that every non-void tag is closed in order."""

    VOID: ClassVar[set[str]] = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.assets: list[tuple[str, str, str]] = []
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.assets.append((tag, name, value))
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = build_fixture(tmp_path_factory.mktemp("full") / "sweep", checkpoints=True)
    result = build_report(root, fmt=("html", "md"), dpi=DPI)  # figures drawn once for both
    return root, result


def _section(result, anchor):
    return next(s for s in result.sections if s.anchor == anchor)


def test_full_report_has_every_section_measured(full):
    root, result = full
    assert result.path == root / "report" / "index.html"
    anchors = [s.anchor for s in result.sections]
    assert anchors == [
        "accuracy",
        "training",
        "perturbation",
        "sharpness",
        "sharpness-accuracy",
        "provenance",
    ]
    assert all(s.measured for s in result.sections)
    page = result.path.read_text()
    for title in ("Label-noise accuracy", "Training curves", "Weight perturbation", "Provenance"):
        assert f"<h2>{title}</h2>" in page
    assert "not measured:" not in page  # every section has its records


def test_figures_are_saved_as_png_and_pdf(full):
    root, result = full
    figures = root / "report" / "figures"
    for name in FIGURES:
        png, pdf = figures / f"{name}.png", figures / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
        assert png in result.figures and pdf in result.figures


def test_html_is_self_contained_and_well_formed(full):
    root, result = full
    checker = _PageChecker()
    checker.feed(result.path.read_text())
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.tags[:2] == ["html", "head"]
    assert "script" not in checker.tags and "link" not in checker.tags
    for tag, attr, value in checker.assets:
        assert not value.startswith(("http:", "https:", "//")), (tag, attr, value)
        if attr == "src":
            assert value.startswith("data:image/png;base64,"), (tag, value[:40])
        else:
            assert value.startswith("#"), value  # only in-page links
    assert len(checker.images) == len(FIGURES)
    embedded = {base64.b64decode(src.partition(",")[2]) for src in checker.images}
    saved = {(root / "report" / "figures" / f"{n}.png").read_bytes() for n in FIGURES}
    assert embedded == saved


def test_accuracy_table_cells_are_the_sweep_modules(full):
    root, result = full
    expected = accuracy_table(collect_results(root))
    table = next(b for b in _section(result, "accuracy").blocks if isinstance(b, Table))
    assert table.header == ["noise", "SGD", "FSAM"]
    assert table.notes == expected.notes()
    page = result.path.read_text()
    for row, cells in zip(expected.rows, table.rows, strict=True):
        assert cells[0].text == expected.row_label(row)
        for column, cell in zip(expected.columns, cells[1:], strict=True):
            assert cell.text == expected.cell_text(row, column)
            assert cell.bold == (column in expected.best[row])
            if cell.bold:
                assert f"<strong>{cell.text}</strong>" in page
    # and they are what the sweep wrote into table.md
    table_md = (root / "table.md").read_text()
    for cells in table.rows:
        for cell in cells[1:]:
            assert cell.text in table_md


def test_perturbation_drop_table_is_clean_minus_adversarial(full):
    _, result = full
    table = next(b for b in _section(result, "perturbation").blocks if isinstance(b, Table))
    assert table.header == ["noise", "magnitude m", "SGD", "FSAM"]
    assert [(r[0].text, r[1].text) for r in table.rows] == [
        ("20% noise", "0.01"),
        ("20% noise", "0.05"),
        ("60% noise", "0.01"),
        ("60% noise", "0.05"),
    ]
    # SGD at 20 %, m = 0.05: drops 100 * acc * 8 * 0.05 over the two seeds
    drops = [100 * _final_acc("sgd", 0.2, s) * 0.4 for s in SEEDS]
    mean = sum(drops) / 2
    std = abs(drops[0] - drops[1]) / 2**0.5
    assert table.rows[1][2].text == f"{mean:.2f} ± {std:.2f}"
    assert table.rows[1][2].bold  # SGD's accuracy is lower, so it loses less


def test_markdown_report_links_figures(full):
    root, result = full
    path = result.paths["md"]
    assert path == root / "report" / "README.md"
    text = path.read_text()
    for name in FIGURES:
        assert f"](figures/{name}.png)" in text and f"](figures/{name}.pdf)" in text
    assert "data:image" not in text
    table = next(b for b in _section(result, "accuracy").blocks if isinstance(b, Table))
    for cells in table.rows:
        line = "| " + " | ".join(f"**{c.text}**" if c.bold else c.text for c in cells) + " |"
        assert line in text
    assert "- [Label-noise accuracy](#label-noise-accuracy)" in text
    assert "```sh\nrobustkit noise-sweep" in text
    assert "*not measured*" not in text


def test_markdown_alone(tmp_path):
    root = build_fixture(tmp_path / "sweep", metrics=False, perturb=False, sharpness=False)
    result = build_report(root, out=tmp_path / "md", fmt="md", dpi=DPI)
    assert result.path == tmp_path / "md" / "README.md"
    assert not (tmp_path / "md" / "index.html").exists()
    text = result.path.read_text()
    assert "- [Training curves](#training-curves) (not measured)" in text
    assert "> *not measured*: no metrics.jsonl in the run directories" in text


def test_figures_label_units_and_survive_greyscale():
    """Every optimiser differs by marker and dash (not only colour); axes carry units."""
    import pandas as pd

    from robustkit.report.figures import plot_noise_curve, plot_training_curves
    from robustkit.report.style import optimizer_styles

    styles = optimizer_styles(["fsam", "sgd", "asam", "sam", "adamw"])
    assert list(styles) == ["sgd", "sam", "asam", "fsam", "adamw"]
    assert len({s.marker for s in styles.values()}) == 5
    assert len({s.dashes for s in styles.values()}) == 5
    assert len({s.hatch for s in styles.values()}) == 5
    assert optimizer_styles(["fsam"])["fsam"] == styles["fsam"]  # same look in every figure

    rows = []
    for opt in ("sgd", "sam", "asam", "fsam"):
        for rate in (0.0, 0.4):
            for seed in (0, 1):
                rows.append(
                    {
                        "optimizer": opt,
                        "noise": "none" if rate == 0 else "symmetric",
                        "rate": rate,
                        "seed": seed,
                        "status": "completed",
                        "final_test_acc": 0.9 - rate / 2 + seed / 100,
                        "dataset": "digits",
                        "model": "cnn",
                        "epochs": 2,
                    }
                )
    results = pd.DataFrame(rows)
    results.loc[0, "final_test_acc"] = None  # a missing value is left out, not drawn as 0
    fig = plot_noise_curve(results)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "symmetric-noise rate (%)"
    assert ax.get_ylabel() == "final test accuracy (%)"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["SGD", "SAM", "ASAM", "FSAM"]
    assert [line.get_marker() for line in lines] == [styles[o].marker for o in styles][:4]
    assert [line.get_linestyle() for line in lines] == ["-", "--", "--", "--"]  # dash patterns
    assert min(min(line.get_ydata()) for line in lines) > 50

    metrics = pd.DataFrame(
        [
            {**r, "epoch": e, "test_acc": r["final_test_acc"], "train_loss": 1.0 / e}
            for r in rows[1:]
            for e in (1, 2)
        ]
    )
    fig = plot_training_curves(metrics)
    labels = {ax.get_ylabel() for ax in fig.axes} - {""}
    assert labels == {"test accuracy (%)", "train loss on noisy labels (nats)"}
    assert {ax.get_title() for ax in fig.axes} >= {
        "clean (0% noise) (n = 2 seeds)",
        "40% noise (n = 2 seeds)",
    }


# -- sections follow the records -------------------------------------------------------------------


def _not_measured(section) -> list[str]:
    return [b.why for b in section.blocks if isinstance(b, NotMeasured)]


def test_without_evaluator_records_those_sections_say_not_measured(tmp_path):
    root = build_fixture(tmp_path / "sweep", perturb=False, sharpness=False)
    result = build_report(root, dpi=DPI)
    measured = {s.anchor: s.measured for s in result.sections}
    assert measured == {
        "accuracy": True,
        "training": True,
        "perturbation": False,
        "sharpness": False,
        "sharpness-accuracy": False,
        "provenance": True,
    }
    for anchor in ("perturbation", "sharpness", "sharpness-accuracy"):
        assert _not_measured(_section(result, anchor))
    page = result.path.read_text()
    assert page.count(f'<p class="nm">{NOT_MEASURED}:') == 3
    names = {p.name for p in (root / "report" / "figures").iterdir()}
    assert names == {f"{n}.{f}" for n in ("noise_curve", "training_curves") for f in ("png", "pdf")}


def test_sharpness_records_alone(tmp_path):
    """No runs at all: accuracy and training are not measured, nothing is drawn as zero."""
    full_root = build_fixture(tmp_path / "full")
    root = tmp_path / "only"
    root.mkdir()
    (root / "sharpness.json").write_text((full_root / "sharpness.json").read_text())
    result = build_report(root, dpi=DPI)
    measured = {s.anchor: s.measured for s in result.sections}
    assert measured["sharpness"] and not measured["accuracy"] and not measured["training"]
    assert not measured["perturbation"] and not measured["sharpness-accuracy"]
    # the records still name their optimiser and noise: the table is complete
    table = next(b for b in _section(result, "sharpness").blocks if isinstance(b, Table))
    assert [r[1].text for r in table.rows] == ["20% noise", "60% noise"] * 2
    assert all(NOT_MEASURED not in c.text for r in table.rows for c in r)


def test_missing_runs_are_not_measured_not_zero(tmp_path):
    """Without results.csv the rows come from result.json; unfinished runs leave gaps."""
    unfinished = ("fsam-symmetric0.6-seed0", "fsam-symmetric0.6-seed1")
    root = build_fixture(
        tmp_path / "sweep", results_csv=False, perturb=False, unfinished=unfinished
    )
    records = load_records(root)
    assert len(records.results()) == 6
    result = build_report(root, dpi=DPI)
    table = next(b for b in _section(result, "accuracy").blocks if isinstance(b, Table))
    sgd = [100 * _final_acc("sgd", 0.6, s) for s in SEEDS]
    sgd_text = f"{sum(sgd) / 2:.2f} ± {abs(sgd[0] - sgd[1]) / 2**0.5:.2f}"
    assert [c.text for c in table.rows[1]] == ["60%", sgd_text, NOT_MEASURED]
    assert table.rows[1][2].muted and not table.rows[1][1].bold
    # the scatter shows only finished runs and says how many it left out
    scatter = _section(result, "sharpness-accuracy")
    image = next(b for b in scatter.blocks if isinstance(b, Image))
    assert "4 record(s) without a finished run are not shown" in image.caption


def test_a_single_run_directory(tmp_path):
    root = build_fixture(tmp_path / "sweep", perturb=False, sharpness=False, results_csv=False)
    run = root / "fsam-symmetric0.2-seed1"
    result = build_report(run, dpi=DPI)
    assert result.path == run / "report" / "index.html"
    table = next(b for b in _section(result, "accuracy").blocks if isinstance(b, Table))
    assert table.header == ["noise", "FSAM"]
    assert table.rows == [[table.rows[0][0], table.rows[0][1]]]
    assert table.rows[0][1].text == f"{100 * _final_acc('fsam', 0.2, 1):.2f}"  # one seed: no ±
    page = result.path.read_text()
    assert "robustkit train --optimizer fsam" in page


def test_the_report_directory_is_not_read_back(tmp_path):
    full_root = build_fixture(tmp_path / "full", results_csv=False, metrics=False, perturb=False)
    root = tmp_path / "only"
    (root / "report").mkdir(parents=True)
    (root / "sharpness.json").write_text((full_root / "sharpness.json").read_text())
    (root / "report" / "perturb.json").write_text("{broken")  # would be an error if read
    build_report(root, dpi=DPI)
    (root / "report" / "perturb.json").unlink()
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "perturb.json").write_text("{broken")
    build_report(root, out=root / "elsewhere", dpi=DPI)


# -- reading records ------------------------------------------------------------------------------


def test_load_records_joins_evaluator_records_to_runs(tmp_path):
    root = build_fixture(tmp_path / "sweep")
    records = load_records(root)
    assert records.summary() == (
        "1 sweep, 8 runs, 1 perturb file (24 records), 1 sharpness file (16 records)"
    )
    frame = records.sharpness_frame()
    row = frame[(frame["run_id"] == "sgd-symmetric0.6-seed1") & (frame["metric"] == "hessian-eig")]
    assert row["noise_rate"].item() == 0.6 and row["train_seed"].item() == 1
    assert row["final_test_acc"].item() == pytest.approx(_final_acc("sgd", 0.6, 1))
    # a run id that two sweeps share resolves by the checkpoint path, not the id
    other = build_fixture(tmp_path / "sweep2", perturb=False, sharpness=False)
    both = load_records(tmp_path)
    assert both.groups() == ["sweep", "sweep2"]
    frame = both.perturb_frame()
    assert set(frame["group"]) == {"sweep"} and other.is_dir()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("results.csv", "run_id,optimizer\na,b\n1,2,3,4\n", "corrupt CSV"),
        ("results.csv", "a,b\n1,2\n", "missing columns: run_id"),
        ("sgd-symmetric0.2-seed0/result.json", "{not json", "corrupt JSON"),
        ("sgd-symmetric0.2-seed0/metrics.jsonl", '{"epoch": 1}\n{"ep', "line 2 is not JSON"),
        ("sweep.toml", "[sweep\n", "corrupt TOML"),
        ("perturb/perturb.json", '{"format": "robustkit.other", "version": 1}', "unknown record"),
        ("perturb/perturb.json", "[1, 2]", "not a robustkit record"),
        (
            "sharpness.json",
            '{"format": "robustkit.sharpness", "version": 2, "records": []}',
            "version 2 is newer",
        ),
        (
            "sharpness.json",
            '{"format": "robustkit.sharpness", "version": 1, "records": [{"value": 1}]}',
            "record 0 lacks metric",
        ),
        ("sgd-symmetric0.2-seed0/env.json", b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_bad_records_are_one_line_errors_naming_the_file(tmp_path, name, content, message):
    root = build_fixture(tmp_path / "sweep")
    path = root / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ReportError) as info:
        load_records(root)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_other_json_files_are_not_records(tmp_path):
    root = build_fixture(tmp_path / "sweep", perturb=False)
    (root / "notes.json").write_text("{not json")
    (root / "toy.json").write_text('{"format": "robustkit.toy", "version": 1}')
    records = load_records(root)
    assert records.perturb == [] and len(records.sharpness) == 1


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(ReportError, match="no such directory"):
        load_records(tmp_path / "nope")
    with pytest.raises(ReportError, match="no robustkit records found"):
        load_records(tmp_path)
    with pytest.raises(ValueError, match="unknown report format"):
        build_report(tmp_path, fmt="pdf")


# -- provenance: the commands parse with the real CLI ---------------------------------------------


def _parse(argv):
    import click

    from robustkit.cli import main

    with click.Context(main) as ctx:
        command = main.get_command(ctx, argv[0])
        assert command is not None, argv[0]
        return command.make_context(argv[0], list(argv[1:]))


def _text_argv(command) -> list[str]:
    return shlex.split(command.text.replace("\\\n", " "))


def test_every_train_config_field_has_an_option_or_is_named_skipped():
    import dataclasses

    from robustkit.report.provenance import TRAIN_CONFIG_OPTIONS, TRAIN_CONFIG_SKIPPED
    from robustkit.train.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - set(TRAIN_CONFIG_OPTIONS) <= TRAIN_CONFIG_SKIPPED
    assert set(TRAIN_CONFIG_OPTIONS) <= fields


def test_train_command_rebuilds_the_run_config(tmp_path):
    from robustkit.cli.train import config_kwargs
    from robustkit.report.provenance import train_command
    from robustkit.train.config import TrainConfig

    root = build_fixture(tmp_path / "sweep", perturb=False, sharpness=False)
    records = load_records(root)
    for run in records.runs:
        command = train_command(run, run.path)
        assert _text_argv(command) == ["robustkit", *command.argv]
        ctx = _parse(command.argv)
        params = {k: v for k, v in ctx.params.items() if k not in ("out", "resume")}
        rebuilt = TrainConfig(**config_kwargs(**params)).validate().to_dict()
        expected = {k: v for k, v in run.config.items() if k not in ("run_id", "num_threads")}
        assert {k: v for k, v in rebuilt.items() if k != "num_threads"} == expected
        assert ctx.params["out"] == run.path


def test_sweep_command_resolves_to_the_recorded_grid(tmp_path):
    from click.testing import CliRunner

    from robustkit.cli import main
    from robustkit.report.provenance import sweep_command

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    root = build_fixture(tmp_path / "sweep", perturb=False, sharpness=False)
    records = load_records(root)
    command = sweep_command(records.sweeps[0], root)
    assert _text_argv(command) == ["robustkit", *command.argv]
    assert "--rho-at" in command.argv and "--config" not in command.argv
    argv = list(command.argv)
    argv[argv.index("--out") + 1] = str(tmp_path / "elsewhere")
    result = CliRunner().invoke(main, [*argv, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.output) == tomllib.loads((root / "sweep.toml").read_text())


def test_evaluator_and_report_commands_parse(tmp_path):
    from robustkit.report.provenance import perturb_command, report_command, sharpness_command

    root = build_fixture(tmp_path / "sweep", checkpoints=True)
    records = load_records(root)
    perturb = perturb_command(records.perturb[0])
    assert perturb.argv[1] == f"{root}/*/checkpoint.pt"  # all 8 checkpoints: one glob
    assert _text_argv(perturb) == ["robustkit", *perturb.argv]
    ctx = _parse(perturb.argv)
    first = records.perturb[0].records[0]
    assert ctx.params["magnitudes"] == MAGNITUDES
    assert ctx.params["step_size"] == first["step_size"] and ctx.params["steps"] == 3
    assert (ctx.params["norm"], ctx.params["radius"]) == ("layer", "relative")
    assert ctx.params["num_examples"] == 1000 and ctx.params["eval_examples"] is None
    assert ctx.params["out"] == root / "perturb"

    sharp = sharpness_command(records.sharpness[0])
    ctx = _parse(sharp.argv)
    options = records.sharpness[0].options
    assert ctx.params["metrics"] == ",".join(options["metrics"])
    for key in ("num_examples", "top_k", "max_iters", "rtol", "rho", "seed", "dtype", "tol"):
        assert ctx.params[key] == options[key], key
    assert ctx.params["per_example"] == "vmap"
    assert ctx.params["out"] == root / "sharpness.json"

    # without the files on disk the checkpoints are listed one by one
    for path in root.glob("*/checkpoint.pt"):
        path.unlink()
    listed = perturb_command(records.perturb[0])
    assert len([a for a in listed.argv if a.endswith("checkpoint.pt")]) == 8
    _parse(listed.argv)

    ctx = _parse(report_command(root, ["html", "md"]).argv)
    assert ctx.params["formats"] == ("html", "md")


def test_the_page_shows_the_commands_and_environment(full):
    root, result = full
    page = result.path.read_text()
    assert "robustkit noise-sweep --optimizers sgd,fsam" in page
    assert "robustkit perturb " in page and "robustkit sharpness " in page
    assert f"robustkit report {root} --format html --format md" in page
    assert "2026-01-01T10:00:00+00:00 … 2026-01-02T10:00:00+00:00" in page
    assert "training seeds 0, 1" in page
    provenance = _section(result, "provenance")
    assert any(
        isinstance(b, Table) and b.header[1] == "training (8 runs)" for b in provenance.blocks
    )


# -- no torch --------------------------------------------------------------------------------------


def test_report_package_never_imports_torch(tmp_path):
    root = tmp_path / "only"
    root.mkdir()
    full_root = build_fixture(tmp_path / "full", results_csv=False, metrics=False, perturb=False)
    (root / "sharpness.json").write_text((full_root / "sharpness.json").read_text())
    code = (
        "import sys\n"
        "import robustkit.io, robustkit.report, robustkit.report.records, robustkit.report.style\n"
        "import robustkit.report.figures, robustkit.report.provenance, robustkit.report.render\n"
        "import robustkit.cli.report\n"
        "from robustkit.report.render import build_report\n"
        f"build_report({str(root)!r}, dpi=20)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
