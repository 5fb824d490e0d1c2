"""Summarise sweeps, weight-perturbation and sharpness records as Markdown tables.

* A sweep directory (its ``results.csv``, written by ``robustkit noise-sweep``): one row per
  (model, noise rate), one column per optimiser, the final test accuracy in %.
* A ``perturb.csv`` (``robustkit perturb``): one row per magnitude, per optimiser the accuracy
  under the adversarial weight perturbation and the mean accuracy over the random directions.
* A ``sharpness.json`` (``robustkit sharpness``): one row per metric, one column per optimiser.

Every cell is the mean ± sample standard deviation (ddof 1) over the runs' seeds, with ``n`` and
the min-max range. Runs that did not complete (diverged, failed) are left out and named in a
note. Data-set specs that are file paths (``npz:PATH``) are shown by their kind only, so the
tables can be committed without naming local files.

Example:
    python experiments/summarize.py runs/cifar10-accuracy/* --out runs/accuracy_table.md
    python experiments/summarize.py runs/cifar10-perturb/perturb/perturb.csv \
        runs/cifar10-perturb/sharpness.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

_ORDER = ("sgd", "sam", "asam", "fsam")
_LABELS = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "fsam": "FSAM"}


def load(directories: list[Path]) -> pd.DataFrame:
    """All rows of the ``results.csv`` files of ``directories``, data-set paths hidden."""
    frames = []
    for directory in directories:
        path = directory / "results.csv"
        if not path.is_file():
            raise SystemExit(f"summarize: no results.csv in {directory}")
        frames.append(pd.read_csv(path))
    table = pd.concat(frames, ignore_index=True)
    table["dataset"] = table["dataset"].astype(str).str.replace(r":.*$", "", regex=True)
    return table


def _cell(values: pd.Series, scale: float = 100.0, fmt: str = ".2f") -> str:
    acc = scale * values.astype(float)
    if len(acc) == 1:
        return f"{acc.iloc[0]:{fmt}} (n=1)"
    spread = f"n={len(acc)}, {acc.min():{fmt}}-{acc.max():{fmt}}"
    return f"{acc.mean():{fmt}} ± {acc.std(ddof=1):{fmt}} ({spread})"


def _optimizers(names: pd.Series) -> list[str]:
    present = set(names)
    return [o for o in _ORDER if o in present] + sorted(present - set(_ORDER))


def markdown(table: pd.DataFrame) -> str:
    """Rows (dataset, model, epochs, rate) x optimiser columns of final test accuracy."""
    done = table[table["status"] == "completed"]
    optimizers = _optimizers(done["optimizer"])
    keys = ["dataset", "model", "epochs", "rate"]
    header = ["data", "model", "epochs", "noise %"] + [_LABELS.get(o, o) for o in optimizers]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, group in done.groupby(keys, sort=True):
        cells = [str(key[0]), str(key[1]), str(key[2]), f"{100 * float(key[3]):g}"]
        for optimizer in optimizers:
            values = group.loc[group["optimizer"] == optimizer, "final_test_acc"]
            cells.append(_cell(values) if len(values) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    left_out = table[table["status"] != "completed"]
    if len(left_out):
        names = ", ".join(f"{r.run_id} ({r.status})" for r in left_out.itertuples())
        lines.append(f"\nLeft out (not completed): {names}.")
    return "\n".join(lines) + "\n"


def perturb_markdown(path: Path) -> str:
    """Accuracy (%) under weight perturbation of relative size m, per optimiser, over seeds."""
    table = pd.read_csv(path)
    optimizers = _optimizers(table["optimizer"])
    norm = ", ".join(sorted(set(table["norm"].astype(str))))
    header = ["m"] + [
        f"{_LABELS.get(o, o)} {kind}" for o in optimizers for kind in ("adversarial", "random")
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for magnitude, group in table.groupby("magnitude", sort=True):
        cells = [f"{magnitude:g}"]
        for optimizer in optimizers:
            rows = group[group["optimizer"] == optimizer]
            cells.append(_cell(rows["adversarial_accuracy"], fmt=".1f"))
            cells.append(_cell(rows["random_accuracy_mean"], fmt=".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    first = table.iloc[0]
    lines.append(
        f"\nBall: {norm} ({first['radius_rule']}); PGD {first['steps']} steps on "
        f"{first['attack_num_examples']} {first['attack_split']} images, accuracy on "
        f"{first['eval_num_examples']} {first['eval_split']} images; random: mean over "
        f"{first['random_trials']} directions per run. Cells: mean ± std over runs (seeds)."
    )
    return "\n".join(lines) + "\n"


def sharpness_markdown(path: Path) -> str:
    """Each sharpness metric per optimiser, mean ± std over the runs (seeds)."""
    records = pd.DataFrame(json.loads(path.read_text())["records"])
    optimizers = _optimizers(records["optimizer"])
    header = ["metric", "estimator"] + [_LABELS.get(o, o) for o in optimizers]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for metric, group in records.groupby("metric", sort=False):
        estimator = str(group["estimator"].iloc[0]) if "estimator" in group else ""
        cells = [str(metric), estimator]
        for optimizer in optimizers:
            values = group.loc[group["optimizer"] == optimizer, "value"]
            cells.append(_cell(values, scale=1.0, fmt=".4g") if len(values) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    num = sorted(set(records["num_examples"]))
    split = ", ".join(sorted(set(records["split"].astype(str)))) if "split" in records else "?"
    lines.append(
        f"\nOn {', '.join(str(n) for n in num)} {split} images, model in eval mode. "
        "Cells: mean ± std over runs (seeds)."
    )
    return "\n".join(lines) + "\n"


def summarize(path: Path) -> str:
    """The table for ``path``: a sweep directory, a perturb.csv or a sharpness.json."""
    if path.is_dir():
        return markdown(load([path]))
    if path.name.endswith(".csv"):
        return perturb_markdown(path)
    if path.name.endswith(".json"):
        return sharpness_markdown(path)
    raise SystemExit(f"summarize: {path} is not a sweep directory, perturb.csv or sharpness.json")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``summarize.py PATH... [--out FILE]``; sweep directories share one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", type=Path, help="sweep directories, perturb.csv, sharpness.json"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    sweeps = [p for p in args.paths if p.is_dir()]
    parts = [markdown(load(sweeps))] if sweeps else []
    parts += [summarize(p) for p in args.paths if not p.is_dir()]
    text = "\n".join(parts)
    sys.stdout.write(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
