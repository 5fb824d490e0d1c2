"""The Slurm executor: a sweep is one Slurm array job, one array task per run, via submitit.

``--executor slurm`` (extra ``pip install 'robustkit[slurm]'``), started on a login node of the
cluster. The runs are submitted with ``executor.map_array`` as one array job, each array task
asking for ``gpus_per_run`` GPUs (1 by default) and ``cpus_per_run`` CPUs, on ``partition``
with a ``time`` limit and ``mem`` per run. submitit's files (pickled tasks, stdout/stderr of
every array task) go to ``<out>/slurm/``. The driver stays running, polls the jobs and
aggregates ``results.csv`` as each run finishes; the sweep directory must be on storage the
compute nodes share with the login node (it always is on a Slurm cluster's home or scratch).

Every array task calls :func:`robustkit.sweep.executors.run_task`, as the local executor
does: a run that raises is ``failed`` with ``<run>/error.txt`` and the others go on; a
finished run is skipped; an interrupted one resumes from its last epoch. A job that Slurm
kills (time limit, out of memory, node failure) is a ``failed`` run with the scheduler's
reason in ``error.txt``; rerunning the sweep retries it from its last checkpoint. When Slurm
warns a job of its time limit or of pre-emption, submitit requeues it (at most
``slurm_max_num_timeout`` times, 3 by default) and the requeued job resumes the run.

``cluster="local"`` / ``"debug"`` run the same array through submitit's local executor
(subprocesses on this machine) or in this process, which is how the tests exercise it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustkit.io import atomic_write_text
from robustkit.sweep.executors import Executor, OnDone, RunOutcome, run_task
from robustkit.sweep.grid import ERROR_FILE, RunTask

__all__ = ["CLUSTERS", "SlurmExecutor", "import_submitit", "parse_slurm_time"]

#: Where the array runs: a Slurm cluster, or submitit's local / in-process executors.
CLUSTERS = ("slurm", "local", "debug")
_INSTALL_HINT = "--executor slurm needs submitit: pip install 'robustkit[slurm]'"


def import_submitit() -> Any:
    """``import submitit``, or a one-line ``ValueError`` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ValueError(_INSTALL_HINT) from None
    return submitit


def parse_slurm_time(value: str | int) -> int:
    """A Slurm time limit in minutes: ``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"``.

    Accepts Slurm's ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` and ``D-HH:MM:SS``;
    seconds round up to a whole minute.

    Raises:
        ValueError: Not a time limit, or not positive.
    """
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"not a Slurm time limit: {value!r} (e.g. 90, 4:00:00, 1-12:00:00)")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # HH:MM:SS
        hours, minutes, seconds = int(first), int(second), int(third)
    else:  # MM or MM:SS
        hours, minutes, seconds = 0, int(first), int(second or 0)
    total = int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise ValueError(f"Slurm time limit must be at least a minute, got {value!r}")
    return total


class _SlurmRun:
    """The callable every array task runs; ``checkpoint`` lets submitit requeue it.

    submitit calls ``checkpoint`` when Slurm signals a time limit or pre-emption; requeuing the
    same task is enough, because the run resumes from ``checkpoints/last.pt``.
    """

    def __init__(self, num_gpus: float, num_threads: int) -> None:
        self.num_gpus = num_gpus
        self.num_threads = num_threads

    def __call__(self, task: RunTask) -> RunOutcome:
        device = "cuda:0" if self.num_gpus > 0 else "cpu"
        return run_task(task, device=device, num_threads=self.num_threads)

    def checkpoint(self, task: RunTask) -> Any:
        """Requeue this run as it is (submitit's checkpointing protocol)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


class SlurmExecutor(Executor):
    """Runs a sweep as one Slurm array job through submitit; see the module docstring.

    Args:
        workers: At most this many array tasks at once (Slurm's ``--array=...%N``); ``None``:
            as many as the scheduler gives.
        partition: Slurm partition (``--partition``); ``None``: the cluster's default.
        time: Time limit per run, Slurm syntax (``4:00:00``) or minutes.
        mem: Memory per run, Slurm syntax (``32G``); ``None``: the partition's default.
        gpus_per_run: GPUs per run (``--gpus-per-node`` of each array task); 0 trains on CPUs.
        cpus_per_run: CPUs per run (``--cpus-per-task``), also the run's torch threads.
        cluster: ``slurm``, or ``local`` / ``debug`` to run through submitit on this machine.
        folder: submitit's folder (default ``<out>/slurm``, beside the runs).
        poll_seconds: How often the driver checks the jobs.
        extra: More submitit parameters (e.g. ``{"slurm_account": "abc"}``).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        partition: str | None = None,
        time: str | int = "24:00:00",
        mem: str | None = None,
        gpus_per_run: int = 1,
        cpus_per_run: int = 2,
        cluster: str = "slurm",
        folder: str | Path | None = None,
        poll_seconds: float = 10.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ValueError(f"workers must be an int >= 1 or None, got {workers!r}")
        if cluster not in CLUSTERS:
            raise ValueError(f"unknown cluster {cluster!r} (known: {', '.join(CLUSTERS)})")
        for name, value, low in (
            ("gpus per run", gpus_per_run, 0),
            ("cpus per run", cpus_per_run, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if mem is not None and re.fullmatch(r"\d+[KMGT]?", str(mem).strip().upper()) is None:
            raise ValueError(f"not a Slurm memory size: {mem!r} (e.g. 32G, 16000M)")
        self.workers = workers
        self.partition = partition
        self.timeout_min = parse_slurm_time(time)
        self.mem = None if mem is None else str(mem).strip().upper()
        self.gpus_per_run = gpus_per_run
        self.cpus_per_run = cpus_per_run
        self.cluster = cluster
        self.folder = None if folder is None else Path(folder)
        self.poll_seconds = poll_seconds
        self.extra = dict(extra or {})

    def make_submitit_executor(self, folder: Path) -> Any:
        """The configured ``submitit.AutoExecutor`` writing into ``folder``."""
        submitit = import_submitit()
        if self.cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise ValueError(
                "--executor slurm submits with sbatch and srun, which are not on PATH: run it "
                "on a Slurm login node"
            )
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
        parameters: dict[str, Any] = {
            "name": "robustkit",
            "timeout_min": self.timeout_min,
            "gpus_per_node": self.gpus_per_run,
            "cpus_per_task": self.cpus_per_run,
            "tasks_per_node": 1,
            "nodes": 1,
        }
        if self.cluster == "slurm":
            if self.partition:
                parameters["slurm_partition"] = self.partition
            if self.mem:
                parameters["slurm_mem"] = self.mem
            if self.workers is not None:
                parameters["slurm_array_parallelism"] = self.workers
        parameters.update(self.extra)
        executor.update_parameters(**parameters)
        return executor

    def run(self, tasks: Sequence[RunTask], on_done: OnDone) -> list[RunOutcome]:
        """Submit ``tasks`` as one array job and report each run as it ends."""
        if not tasks:
            return []
        tasks = [RunTask(t.run_id, str(Path(t.run_dir).resolve()), t.config) for t in tasks]
        folder = self.folder or Path(tasks[0].run_dir).parent / "slurm"
        executor = self.make_submitit_executor(folder)
        jobs = executor.map_array(_SlurmRun(self.gpus_per_run, self.cpus_per_run), tasks)
        by_job = {id(job): (job, task, time.perf_counter()) for job, task in zip(jobs, tasks)}
        outcomes: list[RunOutcome] = []
        try:
            while by_job:
                finished = [key for key, (job, _, _) in by_job.items() if job.done()]
                if not finished:
                    time.sleep(self.poll_seconds)
                    continue
                for key in finished:
                    job, task, start = by_job.pop(key)
                    outcome = self._collect(job, task, start)
                    outcomes.append(outcome)
                    on_done(outcome)
        except BaseException:
            for job, _, _ in by_job.values():
                job.cancel(check=False)
            raise
        return outcomes

    def _collect(self, job: Any, task: RunTask, start: float) -> RunOutcome:
        """A finished job's outcome; a job the scheduler killed becomes ``failed``."""
        try:
            return job.result()
        except Exception as exc:  # submitit's FailedJobState / UncompletedJobError and kin
            text = str(exc).strip().splitlines()
            reason = text[0] if text else type(exc).__name__
            message = f"slurm job {job.job_id} failed ({type(exc).__name__}: {reason})"
            message += f"; log in {job.paths.stderr}; rerun to retry"
            Path(task.run_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(task.run_dir) / ERROR_FILE, message + "\n\n" + str(exc))
            return RunOutcome(task.run_id, "failed", None, message, time.perf_counter() - start)
