"""Shared test configuration (tolerances live in tests/tolerances.py)."""

from __future__ import annotations

import pytest
import torch

# Fixtures shared by the executor tests (the tiny sweep run locally as the reference).
pytest_plugins = ["tests.sweep_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # Two CPU cores in CI: keep torch from oversubscribing them.
    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
