"""The Ray executor: each run of a sweep is one Ray task, on a local or an existing cluster.

``--executor ray`` (extra ``pip install 'robustkit[ray]'``). Every task calls the same
:func:`robustkit.sweep.executors.run_task` as the local executor, so a run that raises is a
``failed`` outcome with ``<run>/error.txt``, the other runs go on, a finished run is skipped by
:func:`~robustkit.sweep.executors.run_sweep` before it reaches the executor, and an
interrupted one resumes from its last epoch when the sweep is started again.

Resources per task: one GPU (``gpus_per_run``, fractional values such as 0.5 put two runs on
one GPU) when the cluster has GPUs and the runs' device is ``auto``/``cuda``, else
``cpus_per_run`` CPUs; Ray sets ``CUDA_VISIBLE_DEVICES`` for the task, which trains on
``cuda:0`` of what it sees, with ``cpus_per_run`` torch threads. Ray's own task retries are
off (``max_retries=0``): a worker or node that dies makes the run ``failed`` (recorded like a
crashed local worker) and rerunning the sweep retries it, as with the local executor.

Where the files go:

* Shared storage (default): every node must see the sweep directory at the same absolute path
  (NFS, Lustre, a bind mount at the same place in every container). Tasks write their run
  directories there directly, exactly as local runs do. Data-set paths in the config
  (``npz:PATH``, ``--data-dir``) must also be valid on every node: use absolute paths or set
  ``ROBUSTKIT_DATA_DIR`` on every node.
* ``ship_results=True`` (``--ray-ship-results``), when the nodes share no storage with the
  driver: the driver sends the run directory's current files (a partial run's checkpoint) with
  the task, the task runs in a temporary directory on its node and returns every file of the
  run directory as bytes, and the driver writes them into ``<out>/<run-id>/`` atomically, one
  file at a time with ``result.json`` last (its presence means "done", as always). A run
  interrupted while in flight loses the progress made on the remote node; whatever came back
  (a failed run's checkpoints) is resumed from. Checkpoints travel through Ray's object store,
  so this suits models of up to a few hundred MB.

Without ``address`` a local Ray instance is started for the sweep and shut down after it; with
``address`` (``auto``, ``ray://host:10001`` or ``host:6379``) the driver joins that cluster. A
Ray instance already initialised in this process (``ray.init`` by the caller) is used as it is
and left running.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustkit.io import atomic_write, atomic_write_text
from robustkit.sweep.executors import Executor, OnDone, RunOutcome, longest_first, run_task
from robustkit.sweep.grid import ERROR_FILE, RunTask

__all__ = ["RayExecutor", "check_reachable", "import_ray", "read_run_files", "write_run_files"]

#: Written last when files are shipped back: its presence marks a finished run.
_RESULT = "result.json"
_INSTALL_HINT = "--executor ray needs Ray: pip install 'robustkit[ray]'"


def import_ray() -> Any:
    """``import ray``, or a one-line ``ValueError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(_INSTALL_HINT) from None
    return ray


def _file_names(root: Path) -> list[str]:
    """The files under ``root`` as relative POSIX paths (temporary files of writers left out)."""
    if not root.is_dir():
        return []
    return [
        path.relative_to(root).as_posix()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp"))
    ]


def read_run_files(run_dir: str | Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` as ``{relative POSIX path: bytes}`` (empty if absent)."""
    root = Path(run_dir)
    return {name: (root / name).read_bytes() for name in _file_names(root)}


def write_run_files(run_dir: str | Path, files: dict[str, bytes]) -> None:
    """Make ``run_dir`` hold exactly ``files``, each written atomically, ``result.json`` last.

    Files of ``run_dir`` that ``files`` lacks (a stale ``error.txt`` of an earlier failure) are
    removed before ``result.json`` appears, so a reader never sees a finished run with
    leftovers.
    """
    root = Path(run_dir)
    for name in files:
        if root.resolve() not in (root / name).resolve().parents:
            raise ValueError(f"refusing to write {name!r} outside {root}")

    def write(name: str) -> None:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda fh: fh.write(files[name]), mode="wb")

    for name in sorted(files):
        if name != _RESULT:
            write(name)
    for stale in set(_file_names(root)) - files.keys():
        (root / stale).unlink()
    if _RESULT in files:
        write(_RESULT)


def _ray_task(
    task: RunTask, use_gpu: bool, num_threads: int, files: dict[str, bytes] | None
) -> tuple[RunOutcome, dict[str, bytes] | None]:
    """The body of one Ray task (module level, so Ray pickles it by reference).

    ``files is None``: shared storage, train into ``task.run_dir``. Otherwise train in a
    temporary directory seeded with ``files`` and return the run directory's files.
    """
    device = "cuda:0" if use_gpu else "cpu"
    if files is None:
        return run_task(task, device=device, num_threads=num_threads), None
    scratch = Path(tempfile.mkdtemp(prefix="robustkit-ray-"))
    try:
        local = scratch / task.run_id
        if files:
            write_run_files(local, files)
        outcome = run_task(
            dataclasses.replace(task, run_dir=str(local)), device=device, num_threads=num_threads
        )
        return outcome, read_run_files(local)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: Seconds to wait for a TCP connection to a cluster address before giving up.
CONNECT_TIMEOUT = 10.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast when nothing listens at a ``HOST:PORT`` or ``ray://HOST:PORT`` address.

    ``ray.init`` retries an unreachable address for minutes before it gives up; one TCP
    connection tells in seconds. ``auto`` and addresses without a port are left to Ray.

    Raises:
        ValueError: The port is not a number, or the connection is refused or times out.
    """
    import socket

    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port_text = target.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad Ray address {address!r}: the port must be a number") from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(
            f"could not join the Ray cluster at {address}: nothing answers at {host}:{port} "
            f"({reason})"
        ) from None


class RayExecutor(Executor):
    """Runs each run of a sweep as a Ray task; see the module docstring.

    Args:
        workers: At most this many runs in flight at once (``None``: as many as the cluster's
            resources allow; Ray queues the rest).
        address: The cluster to join (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``); ``None``
            starts a local Ray instance for the sweep.
        gpus_per_run: GPUs per run when the cluster has GPUs: 1 by default; a fraction in
            ``(0, 1)`` shares a GPU between runs; whole numbers above 1 are allowed but a run
            trains on one device.
        cpus_per_run: CPUs per run (and the run's torch threads).
        ship_results: Return the run directories' files to the driver instead of writing them
            on shared storage.
        num_cpus: CPUs of a local Ray instance (default: all of this machine's).
        init_options: More keyword arguments for ``ray.init``.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        gpus_per_run: float | None = None,
        cpus_per_run: int = 1,
        ship_results: bool = False,
        num_cpus: int | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ValueError(f"workers must be an int >= 1 or None, got {workers!r}")
        if gpus_per_run is not None:
            gpus_per_run = float(gpus_per_run)
            if not gpus_per_run > 0 or (gpus_per_run > 1 and not gpus_per_run.is_integer()):
                raise ValueError(
                    f"gpus per run must be a fraction in (0, 1] or a whole number, "
                    f"got {gpus_per_run:g}"
                )
        if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
            raise ValueError(f"cpus per run must be an int >= 1, got {cpus_per_run!r}")
        if num_cpus is not None and address is not None:
            raise ValueError("num_cpus sizes a local Ray instance; it cannot be given with address")
        self.workers = workers
        self.address = address
        self.gpus_per_run = gpus_per_run
        self.cpus_per_run = cpus_per_run
        self.ship_results = bool(ship_results)
        self.num_cpus = num_cpus
        self.init_options = dict(init_options or {})

    def _init(self, ray: Any) -> bool:
        """Start or join Ray; True when this executor started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if self.address is None and self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus
        options.update(self.init_options)
        if self.address is not None:
            check_reachable(self.address)
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"join the Ray cluster at {self.address}" if self.address else "start Ray"
            text = str(exc).strip().splitlines()
            reason = text[0] if text else type(exc).__name__
            raise ValueError(f"could not {where}: {reason}") from exc
        return True

    def _resources(self, ray: Any, tasks: Sequence[RunTask]) -> tuple[bool, dict[str, float]]:
        """``(use_gpu, ray options)`` for the runs of this sweep."""
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        wants_gpu = all(
            str(t.config.get("device", "auto")).startswith(("auto", "cuda")) for t in tasks
        )
        explicit_cuda = any(str(t.config.get("device", "")).startswith("cuda") for t in tasks)
        if explicit_cuda and cluster_gpus == 0:
            raise ValueError("the runs ask for CUDA but the Ray cluster has no GPUs")
        if self.gpus_per_run is not None and cluster_gpus == 0:
            raise ValueError(
                f"{self.gpus_per_run:g} GPUs per run asked for, but the Ray cluster has no GPUs"
            )
        use_gpu = wants_gpu and cluster_gpus > 0
        options: dict[str, float] = {"num_cpus": self.cpus_per_run}
        if use_gpu:
            options["num_gpus"] = self.gpus_per_run if self.gpus_per_run is not None else 1.0
        return use_gpu, options

    def run(self, tasks: Sequence[RunTask], on_done: OnDone) -> list[RunOutcome]:
        """Run ``tasks`` as Ray tasks; see :meth:`Executor.run`."""
        if not tasks:
            return []
        ray = import_ray()
        # Nodes other than this one have other working directories: send absolute paths.
        tasks = [dataclasses.replace(t, run_dir=str(Path(t.run_dir).resolve())) for t in tasks]
        started = self._init(ray)
        try:
            return self._run(ray, tasks, on_done)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, tasks: list[RunTask], on_done: OnDone) -> list[RunOutcome]:
        use_gpu, options = self._resources(ray, tasks)
        remote = ray.remote(_ray_task).options(max_retries=0, **options)
        queue = longest_first(tasks)
        pending: dict[Any, tuple[RunTask, float]] = {}
        outcomes: list[RunOutcome] = []
        try:
            while queue or pending:
                while queue and (self.workers is None or len(pending) < self.workers):
                    task = queue.pop(0)
                    files = read_run_files(task.run_dir) if self.ship_results else None
                    ref = remote.remote(task, use_gpu, self.cpus_per_run, files)
                    pending[ref] = (task, time.perf_counter())
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task, start = pending.pop(ref)
                    outcome = self._collect(ray, ref, task, start)
                    outcomes.append(outcome)
                    on_done(outcome)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return outcomes

    def _collect(self, ray: Any, ref: Any, task: RunTask, start: float) -> RunOutcome:
        """The outcome of a finished task; a task Ray could not run becomes ``failed``."""
        try:
            outcome, files = ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            text = str(cause).strip().splitlines()
            detail = f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
            message = f"ray task failed ({detail}); rerun to retry"
            Path(task.run_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(task.run_dir) / ERROR_FILE, message + "\n")
            return RunOutcome(task.run_id, "failed", None, message, time.perf_counter() - start)
        if files is not None:
            write_run_files(task.run_dir, files)
        return outcome
