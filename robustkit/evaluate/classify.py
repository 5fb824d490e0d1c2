"""Accuracy and mean cross-entropy of a classifier over in-memory tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction in [0, 1]) of ``model`` on ``(x, y)``.

    The model is evaluated in whatever mode it is in (callers put it in eval mode); inputs are
    moved to the model's device batch by batch.

    Returns:
        ``(loss, accuracy)``.
    """
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = x.shape[0]
    for lo in range(0, n, batch_size):
        xb = x[lo : lo + batch_size].to(device, non_blocking=True)
        yb = y[lo : lo + batch_size].to(device, non_blocking=True)
        logits = model(xb).float()
        total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    return float(total_loss) / max(n, 1), float(correct) / max(n, 1)
