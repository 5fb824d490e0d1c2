"""Seeded evaluation subsets: which examples an evaluator measured on, and how to say so."""

from __future__ import annotations

import torch
from torch import Tensor


def seeded_subset(x: Tensor, y: Tensor, count: int | None, seed: int) -> tuple[Tensor, Tensor, str]:
    """``count`` examples drawn uniformly without replacement (all of them when ``count`` is
    ``None`` or not smaller than the split), kept in data-set order.

    The draw is ``torch.randperm(N, generator=Generator().manual_seed(seed))[:count]``, so the
    same ``seed`` picks the same examples on any machine and in every evaluator.

    Returns:
        ``(x_subset, y_subset, description)``; the description goes into records.
    """
    total = int(y.shape[0])
    if count is None or count >= total:
        return x, y, f"all {total}"
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort()
    picked = index.values
    return x[picked], y[picked], f"{count} of {total}, uniform without replacement, seed {seed}"
