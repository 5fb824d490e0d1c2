"""``robustkit info``: what it reports is what torch and the environment say."""

from __future__ import annotations

import json
import os
import platform
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from robustkit import __version__
from robustkit.cli import main


def _info_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["info", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_reports_versions_cuda_and_threads():
    info = _info_json()
    assert info["robustkit"]["version"] == __version__
    assert info["python"]["version"] == platform.python_version()
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda_build"] == torch.version.cuda
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["cuda"]["device_count"] == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    assert info["cpu"]["torch_threads"] == torch.get_num_threads()
    assert info["cpu"]["usable_cores"] >= 1
    assert set(info["extras"]) == {"ray", "slurm"}


def test_data_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA_DIR", str(tmp_path / "missing"))
    paths = _info_json()["paths"]
    assert paths["data_dir"] == str((tmp_path / "missing").resolve())
    assert paths["data_dir_source"] == "$ROBUSTKIT_DATA_DIR"
    assert paths["data_dir_exists"] is False

    monkeypatch.setenv("ROBUSTKIT_DATA_DIR", str(tmp_path))
    assert _info_json()["paths"]["data_dir_exists"] is True

    monkeypatch.delenv("ROBUSTKIT_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    paths = _info_json()["paths"]
    assert paths["data_dir"] == str((tmp_path / "data").resolve())
    assert paths["data_dir_source"] == "./data"
    assert paths["runs_dir"] == str((tmp_path / "runs").resolve())
    assert paths["runs_dir_exists"] is True


def test_text_output_names_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    text = result.output
    for needle in (
        "robustkit:",
        f"torch:                {torch.__version__}",
        "CUDA build:",
        "cuDNN:",
        "CUDA available:",
        "CUDA_VISIBLE_DEVICES: ''",
        f"data dir:             {tmp_path.resolve()} (from $ROBUSTKIT_DATA_DIR; exists)",
        "runs dir:",
        "usable cores, torch threads",
        "--executor ray:",
        "--executor slurm:",
    ):
        assert needle in text, (needle, text)


class _FakeCuda:
    """Two visible GPUs, as torch.cuda would report them."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 2

    @staticmethod
    def get_device_properties(index: int) -> SimpleNamespace:
        return SimpleNamespace(
            name=f"Fake GPU {index}", total_memory=(80 + index) * 1024**3, major=9, minor=0
        )


def test_lists_visible_devices_with_memory(monkeypatch):
    monkeypatch.setattr(torch, "cuda", _FakeCuda)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    info = _info_json()
    assert info["cuda"]["available"] is True
    assert info["cuda"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert info["cuda"]["devices"] == [
        {"index": 0, "name": "Fake GPU 0", "memory_gib": 80.0, "capability": "9.0"},
        {"index": 1, "name": "Fake GPU 1", "memory_gib": 81.0, "capability": "9.0"},
    ]
    text = CliRunner().invoke(main, ["info"]).output
    assert "visible devices:      2" in text
    assert "cuda:1:             Fake GPU 1, 81.0 GiB, compute capability 9.0" in text
    assert "CUDA_VISIBLE_DEVICES: '2,3'" in text


def test_a_broken_driver_is_reported_not_raised(monkeypatch):
    class Broken(_FakeCuda):
        @staticmethod
        def device_count() -> int:
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(torch, "cuda", Broken)
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "CUDA error:" in result.output and "insufficient" in result.output


@pytest.mark.gpu
def test_real_devices_are_listed():
    info = _info_json()
    assert info["cuda"]["available"] is True
    names = [d["name"] for d in info["cuda"]["devices"]]
    assert names == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert all(d["memory_gib"] > 0 for d in info["cuda"]["devices"])
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == info["cuda"]["CUDA_VISIBLE_DEVICES"]
