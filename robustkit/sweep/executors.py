"""Running a sweep: the executor interface, the local executor and :func:`run_sweep`.

An executor has one method, :meth:`Executor.run`: run these independent runs, report each as
it finishes. Every run is ``train(config, <out>/<run-id>, resume=True)``, so a run whose
``result.json`` exists is skipped and an interrupted one resumes from its last epoch; killing a
sweep at any moment and starting it again gives the same numbers as one uninterrupted sweep.

Outcomes of a run:

* ``completed`` / ``diverged`` - the trainer's statuses; both write ``result.json`` and are
  results (a diverged run is a finding about the optimiser, not a failure of the sweep).
* ``skipped`` - already finished before this invocation.
* ``failed`` - the run raised: the one-line error is recorded in ``<run>/error.txt`` (with the
  traceback) and in ``results.csv``, and the other runs go on. A failed run has no
  ``result.json``, so the next invocation retries it. A pool worker killed from outside (out
  of memory) fails its own run only: the runs interrupted with it are retried one at a time.

The local executor runs ``workers`` runs at once in a ``spawn`` process pool (``workers=1``
runs them one after another in this process; ``auto``, the default, is one worker per visible
GPU, else one per CPU core, at most the grid's number of runs: small models gain little from
intra-op threads, and threads that wait on each other on a shared machine lose a lot). Each
worker is pinned to one GPU, round-robin over ``CUDA_VISIBLE_DEVICES``, when GPUs are visible
and the runs' device is ``auto``/``cuda``, and gets ``max(1, cpu_count // workers)`` torch
threads unless the config sets ``num_threads``.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.io import atomic_write_text
from robustkit.sweep.grid import ERROR_FILE, RunTask, SweepConfig, prepare_sweep_dir

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RunOutcome",
    "SweepResult",
    "cpu_count",
    "longest_first",
    "make_executor",
    "resolve_workers",
    "run_cost",
    "run_sweep",
    "run_task",
    "visible_gpus",
    "worker_settings",
]

OnDone = Callable[["RunOutcome"], None]


@dataclass
class RunOutcome:
    """What happened to one run in this invocation.

    Attributes:
        run_id: The run's id.
        status: ``completed``, ``diverged``, ``skipped`` or ``failed``.
        record: The run's ``result.json`` (``None`` when it failed).
        error: The one-line error of a failed run.
        seconds: Wall time of the run in this invocation (0 when skipped).
    """

    run_id: str
    status: str
    record: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


class Executor(abc.ABC):
    """Runs a sweep's independent runs; one method, so other backends (Ray) slot in."""

    @abc.abstractmethod
    def run(self, tasks: Sequence[RunTask], on_done: OnDone) -> list[RunOutcome]:
        """Run every task and call ``on_done`` (in the calling process) as each one finishes.

        A run that raises must be reported as a ``failed`` outcome (see :func:`run_task`),
        never stop the others. Interrupts (``KeyboardInterrupt``) propagate.

        Returns:
            The outcomes, in the order the runs finished.
        """


def run_task(
    task: RunTask,
    *,
    device: str | None = None,
    num_threads: int | None = None,
    step_hook: Callable[[int, int], None] | None = None,
) -> RunOutcome:
    """Train one run of a sweep into its directory, resuming it if it was interrupted.

    Args:
        task: The run.
        device: Used when the config's device is ``auto``.
        num_threads: Used when the config does not set ``num_threads``.
        step_hook: Passed to :func:`robustkit.train.trainer.train` (tests simulate kills).

    Returns:
        The outcome; an ``Exception`` raised by the run becomes a ``failed`` outcome with
        ``<run>/error.txt`` written. ``BaseException`` (interrupts) propagates.
    """
    from robustkit.train.config import TrainConfig
    from robustkit.train.trainer import train

    config = TrainConfig.from_dict(task.config)
    run_dir = Path(task.run_dir)
    if device is not None and config.device == "auto":
        config.device = device
    if config.num_threads is None:
        # On CPU the thread count changes the float reductions (measured: a digits CNN's final
        # accuracy moves by 0.5 points between 1 and 2 threads), so a run that resumes keeps
        # the count it started with, even if the sweep is restarted with other --workers.
        started = _read_json(run_dir / "config.json") or {}
        config.num_threads = started.get("num_threads") or num_threads
    start = time.perf_counter()
    try:
        # A retried run starts clean: the trainer refuses directories holding foreign files.
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        result = train(config, run_dir, resume=True, step_hook=step_hook)
    except Exception as exc:
        message = _one_line(exc)
        with contextlib.suppress(OSError):  # e.g. run_dir is a file: the message still counts
            atomic_write_text(run_dir / ERROR_FILE, message + "\n\n" + traceback.format_exc())
        return RunOutcome(task.run_id, "failed", None, message, time.perf_counter() - start)
    return RunOutcome(task.run_id, result.status, result.record, None, time.perf_counter() - start)


def run_cost(task: RunTask) -> float:
    """A run's relative cost: epochs x forward-backward passes per step (SAM-type: 2)."""
    from robustkit.optim.registry import OPTIMIZERS

    info = OPTIMIZERS.get(str(task.config.get("optimizer")))
    return float(task.config.get("epochs", 1)) * (info.passes if info else 1)


def longest_first(tasks: Sequence[RunTask]) -> list[RunTask]:
    """``tasks`` by decreasing :func:`run_cost`, grid order among equals.

    Parallel workers then finish together: a short SGD run, not a SAM run twice as long, is
    what one worker is still doing while the others have run out of work.
    """
    return sorted(tasks, key=lambda t: -run_cost(t))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) when set, else ``0 .. n-1``; empty without CUDA.
    """
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver means no GPUs, not a failed sweep
        count = 0
    if count == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in env.split(",") if d.strip()][:count]


def worker_settings(slot: int, workers: int, cpus: int, gpus: Sequence[str]) -> dict[str, Any]:
    """Worker ``slot``'s share of the machine: a GPU round-robin, else a share of the CPUs.

    Returns:
        ``{"gpu": CUDA_VISIBLE_DEVICES entry or None, "num_threads": max(1, cpus // workers)}``.
    """
    return {
        "gpu": gpus[slot % len(gpus)] if gpus else None,
        "num_threads": max(1, cpus // workers),
    }


def resolve_workers(
    workers: int | str,
    num_runs: int,
    *,
    cpus: int | None = None,
    gpus: Sequence[str] | None = None,
) -> int:
    """``workers`` as a number: ``"auto"`` is one per GPU, else one per core, at most ``num_runs``.

    ``num_runs`` is the whole grid's, not what is left to run, so a resumed sweep gives its
    runs the same number of threads as the first invocation did.
    """
    if workers != "auto":
        return int(workers)
    gpus = visible_gpus() if gpus is None else gpus
    available = len(gpus) if gpus else (cpu_count() if cpus is None else cpus)
    return max(1, min(available, num_runs))


_WORKER: dict[str, Any] = {}


def _init_worker(slots, workers: int, cpus: int, gpus: list[str]) -> None:
    """Pool initializer: take a slot, pin this process to its GPU before CUDA initialises."""
    settings = worker_settings(slots.get(), workers, cpus, gpus)
    if settings["gpu"] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["gpu"]
    os.environ["OMP_NUM_THREADS"] = str(settings["num_threads"])
    _WORKER.update(settings)
    # A spawned worker ends through full interpreter finalisation, which takes about a second
    # with torch loaded, while the sweep waits for it. Registered first, this handler runs
    # after every other one and then ends the process as a forked child would (os._exit).
    # Results were returned and every run's files were written atomically before this point.
    atexit.register(_exit_now)


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _run_in_worker(task: RunTask) -> RunOutcome:
    device = "cuda:0" if _WORKER.get("gpu") is not None else None
    return run_task(task, device=device, num_threads=_WORKER.get("num_threads"))


class LocalExecutor(Executor):
    """Runs on this machine: ``workers`` runs at once (``1``: in this process, one by one).

    Args:
        workers: Runs at once.
        step_hook: For in-process runs only (tests): passed to the trainer.
        cpus: CPU cores to share (default: :func:`cpu_count`).
        gpus: ``CUDA_VISIBLE_DEVICES`` entries to pin workers to (default: :func:`visible_gpus`).
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        step_hook: Callable[[int, int], None] | None = None,
        cpus: int | None = None,
        gpus: Sequence[str] | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if step_hook is not None and workers > 1:
            raise ValueError("step_hook works only with workers=1 (in-process runs)")
        self.workers = workers
        self.step_hook = step_hook
        self.cpus = cpu_count() if cpus is None else cpus
        self._gpus = gpus
        #: What a worker process runs for each task; a module-level function, so it pickles.
        self._target: Callable[[RunTask], RunOutcome] = _run_in_worker

    def describe(self, tasks: Sequence[RunTask] = ()) -> str:
        """``2 workers x 1 thread`` (``, GPUs 0,1`` when pinned)."""
        settings = worker_settings(0, self.workers, self.cpus, [])
        threads = settings["num_threads"]
        text = (
            f"{self.workers} worker{'s' if self.workers > 1 else ''} x "
            f"{threads} thread{'s' if threads > 1 else ''}"
        )
        gpus = self._pinned_gpus(tasks)
        return text + (f", GPUs {','.join(gpus)}" if gpus else "")

    def _pinned_gpus(self, tasks: Sequence[RunTask]) -> list[str]:
        if self.workers == 1:
            return []
        if any(str(t.config.get("device", "auto")) not in ("auto", "cuda") for t in tasks):
            return []  # an explicit device (cpu, cuda:N) is the user's choice
        return list(self._gpus) if self._gpus is not None else visible_gpus()

    def run(self, tasks: Sequence[RunTask], on_done: OnDone) -> list[RunOutcome]:
        """Run ``tasks``; see :meth:`Executor.run`."""
        if self.workers == 1:
            return self._run_here(tasks, on_done)
        return self._run_pool(tasks, on_done)

    def _run_here(self, tasks: Sequence[RunTask], on_done: OnDone) -> list[RunOutcome]:
        threads = worker_settings(0, 1, self.cpus, [])["num_threads"]
        outcomes = []
        for task in tasks:
            outcome = run_task(task, num_threads=threads, step_hook=self.step_hook)
            outcomes.append(outcome)
            on_done(outcome)
        return outcomes

    def _run_pool(self, tasks: Sequence[RunTask], on_done: OnDone) -> list[RunOutcome]:
        """Runs in worker processes, longest first, recovering from workers that die.

        A worker killed from outside (out of memory, a signal) breaks the whole pool, and
        every run in flight is interrupted with it. Those runs are then retried one at a time
        in a fresh single-worker pool (each resumes from its last epoch): a run whose worker
        dies again, alone, is recorded as failed; the others finish. The runs not yet started
        go on in a fresh pool of ``workers``.
        """
        outcomes: list[RunOutcome] = []
        queue = longest_first(tasks)
        while queue:
            interrupted, queue = self._pool_pass(queue, self.workers, on_done, outcomes)
            if len(interrupted) == 1:  # its worker died while it ran alone: that was the run
                self._fail_dead_worker(interrupted[0], on_done, outcomes)
                continue
            for task in interrupted:
                again, _ = self._pool_pass([task], 1, on_done, outcomes)
                if again:
                    self._fail_dead_worker(task, on_done, outcomes)
        return outcomes

    def _pool_pass(
        self,
        tasks: list[RunTask],
        width: int,
        on_done: OnDone,
        outcomes: list[RunOutcome],
    ) -> tuple[list[RunTask], list[RunTask]]:
        """Run ``tasks``, at most ``width`` at once, in a fresh pool until done or broken.

        Returns:
            ``(interrupted, not_started)``: the runs in flight when a worker died, and those
            never submitted; both empty when every run finished.
        """
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        width = min(width, len(tasks))
        slots = context.Queue()
        for slot in range(width):
            slots.put(slot)
        pool = ProcessPoolExecutor(
            max_workers=width,
            mp_context=context,
            initializer=_init_worker,
            # Threads are shared out over the configured workers, not only the busy ones, so
            # the numbers a run gets do not depend on how many runs were left.
            initargs=(slots, self.workers, self.cpus, self._pinned_gpus(tasks)),
        )
        queue = list(tasks)
        pending: dict[Future, RunTask] = {}
        interrupted: list[RunTask] = []
        try:
            while queue or pending:
                # Submitting no more than there are workers keeps "in flight" = "running".
                while queue and len(pending) < width and not interrupted:
                    task = queue.pop(0)
                    pending[pool.submit(self._target, task)] = task
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        interrupted.append(task)
                        continue
                    except Exception as exc:  # e.g. an unpicklable result: a bug, but go on
                        message = _one_line(exc)
                        _record_failure(task, message)
                        outcome = RunOutcome(task.run_id, "failed", None, message)
                    outcomes.append(outcome)
                    on_done(outcome)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return interrupted, queue

    def _fail_dead_worker(self, task: RunTask, on_done: OnDone, outcomes: list[RunOutcome]) -> None:
        message = (
            "worker process died while this run trained (killed from outside, e.g. out of "
            "memory); rerun to retry, with fewer --workers if memory is short"
        )
        _record_failure(task, message)
        outcome = RunOutcome(task.run_id, "failed", None, message)
        outcomes.append(outcome)
        on_done(outcome)


def _record_failure(task: RunTask, message: str) -> None:
    atomic_write_text(Path(task.run_dir) / ERROR_FILE, message + "\n")


def _ray_executor(workers: int | None, **options: Any) -> Executor:
    """:class:`robustkit.sweep.ray_executor.RayExecutor`; a one-line error without Ray."""
    from robustkit.sweep.ray_executor import RayExecutor, import_ray

    import_ray()
    return RayExecutor(workers, **options)


def _slurm_executor(workers: int | None, **options: Any) -> Executor:
    """:class:`robustkit.sweep.slurm_executor.SlurmExecutor`; a one-line error without submitit."""
    from robustkit.sweep.slurm_executor import SlurmExecutor, import_submitit

    import_submitit()
    return SlurmExecutor(workers, **options)


#: Executor name -> factory ``(workers, **options) -> Executor``. ``workers`` caps the runs at
#: once; the Ray and Slurm executors also take ``None`` (no cap) and live in their own modules,
#: imported (with their optional packages) only when chosen.
EXECUTORS: dict[str, Callable[..., Executor]] = {
    "local": LocalExecutor,
    "ray": _ray_executor,
    "slurm": _slurm_executor,
}


def make_executor(name: str, workers: int, **options: Any) -> Executor:
    """The executor registered as ``name`` with ``workers`` runs at once."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
    return EXECUTORS[name](workers, **options)


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        out: The sweep directory.
        outcomes: One per run of the grid (``skipped`` for those finished before).
        files: The aggregated outputs written (``results.csv``, ``table.md``, ...).
    """

    out: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunOutcome]:
        """The runs that raised."""
        return [o for o in self.outcomes if o.status == "failed"]


def run_sweep(
    sweep: SweepConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    figures: bool = True,
    executor: Executor | None = None,
    step_hook: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Run every missing run of ``sweep`` into ``out`` and aggregate all runs there.

    Checks ``out`` and writes ``sweep.toml`` first (:func:`robustkit.sweep.grid.
    prepare_sweep_dir`: an incompatible run there stops everything before it starts), skips
    finished runs, resumes interrupted ones, and after every finished run rewrites
    ``results.csv``, ``table.md`` and ``table.tex``; the noise-curve figure is drawn at the end.

    Args:
        sweep: The grid.
        out: The sweep directory.
        log: Receives the header line and one line per finished run.
        progress: Show a tqdm bar over runs (runs done / total, ETA).
        figures: Draw ``figures/noise_curve.png``/``.pdf`` at the end.
        executor: Default: ``make_executor(sweep.executor, resolve_workers(sweep.workers, ..))``.
        step_hook: For in-process runs (tests): passed to the trainer.

    Returns:
        A :class:`SweepResult`. Failed runs do not raise; check ``result.failed``.
    """
    from tqdm.auto import tqdm

    from robustkit.sweep.results import write_results
    from robustkit.train.trainer import RESULT

    out = Path(out)
    emit = log or (lambda _line: None)
    tasks = prepare_sweep_dir(sweep, out)

    finished = [t for t in tasks if (Path(t.run_dir) / RESULT).is_file()]
    todo = [t for t in tasks if t not in finished]
    if executor is None:
        options = {"step_hook": step_hook} if step_hook is not None else {}
        workers = resolve_workers(sweep.workers, sweep.num_runs)
        executor = make_executor(sweep.executor, workers, **options)
    how = executor.describe(todo) if isinstance(executor, LocalExecutor) else sweep.executor
    emit(
        f"noise-sweep: {sweep.shape_description()} ({sweep.shared_description()}) in {out}: "
        f"{len(finished)} finished, {len(todo)} to run ({how})"
    )
    outcomes = [
        RunOutcome(t.run_id, "skipped", _read_json(Path(t.run_dir) / RESULT)) for t in finished
    ]
    width = max((len(t.run_id) for t in tasks), default=0)
    total = len(tasks)
    bar = tqdm(
        total=total,
        initial=len(finished),
        disable=not progress,
        unit="run",
        desc="noise-sweep",
        dynamic_ncols=True,
    )

    def on_done(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        line = f"[{len(outcomes)}/{total}] {_run_line(outcome, width)}"
        if progress:
            with tqdm.external_write_mode():
                emit(line)
        else:
            emit(line)
        bar.update(1)
        write_results(out, figures=False)

    try:
        executor.run(todo, on_done)
    finally:
        bar.close()
    files = write_results(out, figures=figures)
    return SweepResult(out, outcomes, files)


def _run_line(outcome: RunOutcome, width: int) -> str:
    """``sam-symmetric0.4-seed0  completed  test 81.39%  12.3s``."""
    head = f"{outcome.run_id:<{width}}  {outcome.status:<9}"
    record = outcome.record or {}
    if outcome.status == "completed":
        detail = f"test {100 * record['final_test_acc']:.2f}%"
    elif outcome.status == "diverged":
        detail = f"non-finite loss in epoch {record.get('diverged_in_epoch')}"
    else:
        detail = outcome.error or ""
    return f"{head}  {detail}  {outcome.seconds:.1f}s"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
