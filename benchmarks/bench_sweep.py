"""Benchmark ``robustkit noise-sweep`` wall time for several ``--workers`` values.

Each repetition runs the same sweep once per workers value, interleaved (1, 2, 1, 2, ...) so
that a slow spell of a shared machine hits every value alike, each time as a fresh command
(``python -m robustkit.cli noise-sweep ...``, start-up and figure included) into a fresh
directory. Prints every time, the median per value and its ratio to the first value.

Example:
    python benchmarks/bench_sweep.py                      # the default 16-run grid, workers 1 vs 2
    python benchmarks/bench_sweep.py --seeds 0,1 --repeats 2
    python benchmarks/bench_sweep.py --workers 1,2,4 -- --model mlp --epochs 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(workers: str, seeds: str, extra: list[str], out: Path) -> float:
    command = [sys.executable, "-m", "robustkit.cli", "noise-sweep", "--out", str(out)]
    command += ["--workers", workers, "--seeds", seeds, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise SystemExit(f"noise-sweep --workers {workers} failed: {tail}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated --workers values")
    parser.add_argument("--seeds", default="0", help="the sweep's --seeds (0,1 doubles the grid)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more noise-sweep options, after --")
    args = parser.parse_args()
    values = [w.strip() for w in args.workers.split(",") if w.strip()]
    times: dict[str, list[float]] = {w: [] for w in values}
    print(
        f"noise-sweep --seeds {args.seeds} {' '.join(args.extra)}; {os.cpu_count()} CPUs; "
        f"workers {', '.join(values)}; {args.repeats} repetitions, interleaved"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for workers in values:
                out = Path(tmp) / f"w{workers}-r{rep}"
                seconds = run_once(workers, args.seeds, args.extra, out)
                times[workers].append(seconds)
                print(f"repetition {rep + 1}  --workers {workers:<4} {seconds:7.1f} s", flush=True)
    base = statistics.median(times[values[0]])
    print(f"\n{'workers':<9}{'median s':>10}{'min s':>8}{'max s':>8}{'speed-up':>10}")
    for workers in values:
        median = statistics.median(times[workers])
        print(
            f"{workers:<9}{median:>10.1f}{min(times[workers]):>8.1f}{max(times[workers]):>8.1f}"
            f"{base / median:>9.2f}x"
        )


if __name__ == "__main__":
    main()
