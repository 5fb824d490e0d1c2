"""``robustkit info``: what this process sees - versions, CUDA devices, data and run paths.

Meant for the first command inside a container or on a new cluster node: it shows whether the
image's torch was built with CUDA, which GPUs ``--gpus`` / ``CUDA_VISIBLE_DEVICES`` exposed,
where data sets are looked up (``$ROBUSTKIT_DATA_DIR``) and where runs go by default.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["collect_info", "info_command", "render_info"]

#: Optional extras whose presence decides which ``--executor`` choices work.
_EXTRAS: dict[str, str] = {"ray": "ray", "submitit": "slurm"}

_GIB = 1024**3


def collect_info() -> dict[str, Any]:
    """Everything ``robustkit info`` reports, as plain JSON-able values.

    torch is imported here, not at module import, so ``robustkit --help`` stays instant.

    Returns:
        A dict with the keys ``robustkit``, ``python``, ``torch``, ``cuda``, ``paths``,
        ``cpu`` and ``extras`` (see ``robustkit info --json``).
    """
    import torch

    from robustkit import __version__
    from robustkit.data.datasets import DATA_DIR_ENV, default_data_dir
    from robustkit.train.env import git_commit

    data_dir = default_data_dir()
    runs_dir = Path("runs")
    return {
        "robustkit": {"version": __version__, "git_commit": git_commit()},
        "python": {
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "torch": {
            "version": torch.__version__,
            "torchvision": _version("torchvision"),
            "cuda_build": torch.version.cuda,
            "cudnn": _cudnn_version(torch),
        },
        "cuda": _cuda_info(torch),
        "paths": {
            "data_dir": str(data_dir.resolve()),
            "data_dir_source": f"${DATA_DIR_ENV}" if DATA_DIR_ENV in os.environ else "./data",
            "data_dir_exists": data_dir.is_dir(),
            "runs_dir": str(runs_dir.resolve()),
            "runs_dir_exists": runs_dir.is_dir(),
            "cwd": str(Path.cwd()),
        },
        "cpu": {
            "torch_threads": torch.get_num_threads(),
            "usable_cores": _usable_cores(),
            "os_cpu_count": os.cpu_count(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "extras": {
            extra: {"package": package, "version": _version(package)}
            for package, extra in _EXTRAS.items()
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cudnn_version(torch: Any) -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # a broken install reports "none", it must not break `info`
        return None


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cuda_info(torch: Any) -> dict[str, Any]:
    """CUDA availability and the visible devices; a driver error is reported, not raised."""
    info: dict[str, Any] = {
        "available": False,
        "device_count": 0,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "devices": [],
        "error": None,
    }
    try:
        info["available"] = bool(torch.cuda.is_available())
        if not info["available"]:
            return info
        info["device_count"] = int(torch.cuda.device_count())
        for index in range(info["device_count"]):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / _GIB, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    except Exception as exc:  # e.g. a driver older than the CUDA build: say so, go on
        text = str(exc).strip()
        info["error"] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    return info


def render_info(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`collect_info`'s dict: one ``key: value`` per line."""
    torch_info, cuda, paths, cpu = info["torch"], info["cuda"], info["paths"], info["cpu"]
    commit = info["robustkit"]["git_commit"]
    rows: list[tuple[str, str]] = [
        ("robustkit", info["robustkit"]["version"] + (f" (git {commit[:12]})" if commit else "")),
        ("python", f"{info['python']['version']} ({info['python']['executable']})"),
        ("platform", info["python"]["platform"]),
        ("torch", torch_info["version"]),
        ("torchvision", torch_info["torchvision"] or "not installed"),
        ("CUDA build", torch_info["cuda_build"] or "none (CPU-only torch)"),
        ("cuDNN", str(torch_info["cudnn"]) if torch_info["cudnn"] else "none"),
        ("CUDA available", _yes_no(cuda["available"])),
        ("CUDA_VISIBLE_DEVICES", _unset(cuda["CUDA_VISIBLE_DEVICES"])),
    ]
    if cuda["error"]:
        rows.append(("CUDA error", cuda["error"]))
    if cuda["available"]:
        rows.append(("visible devices", str(cuda["device_count"])))
        for device in cuda["devices"]:
            rows.append(
                (
                    f"  cuda:{device['index']}",
                    f"{device['name']}, {device['memory_gib']:.1f} GiB, "
                    f"compute capability {device['capability']}",
                )
            )
    rows += [
        ("data dir", f"{paths['data_dir']} (from {paths['data_dir_source']}; {_exists(paths)})"),
        ("runs dir", f"{paths['runs_dir']} (default --out parent; {_exists(paths, 'runs')})"),
        ("working dir", paths["cwd"]),
        (
            "CPU",
            f"{cpu['usable_cores']} usable cores, torch threads {cpu['torch_threads']}, "
            f"OMP_NUM_THREADS {_unset(cpu['OMP_NUM_THREADS'])}",
        ),
    ]
    for extra, entry in info["extras"].items():
        version = entry["version"]
        rows.append(
            (
                f"--executor {extra}",
                f"{entry['package']} {version}"
                if version
                else f"not installed (pip install 'robustkit[{extra}]')",
            )
        )
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in rows)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _unset(value: str | None) -> str:
    return "(unset)" if value is None else repr(value)


def _exists(paths: dict[str, Any], which: str = "data") -> str:
    return "exists" if paths[f"{which}_dir_exists"] else "does not exist"


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info_command(as_json: bool) -> None:
    """Show torch, CUDA, visible devices and the data/run paths robustkit sees.

    Run it first inside a container or on a new node: it says whether torch was built with
    CUDA, which GPUs are visible (docker --gpus, CUDA_VISIBLE_DEVICES), where data sets are
    looked up ($ROBUSTKIT_DATA_DIR, else ./data), where runs go by default (./runs) and which
    optional executors (ray, slurm) are installed.
    """
    info = collect_info()
    click.echo(json.dumps(info, indent=2) if as_json else render_info(info))
