"""Wide residual networks (Zagoruyko & Komodakis 2016).

WRN-d-k of Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146):
a 3x3 convolution with 16 filters, then three groups of ``n = (d - 4) / 6`` pre-activation
basic blocks (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3) with ``16k``, ``32k`` and ``64k``
filters, 1x1 convolution shortcuts where the width or resolution changes, a final BN-ReLU,
global average pooling and a linear layer. WRN-28-10 has 36.5M parameters on CIFAR-10
(Table 4 of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.models.resnet_cifar import init_resnet_weights


class PreActBlock(nn.Module):
    """Pre-activation wide basic block ("B(3,3)" in the paper) with optional dropout.

    When the shape changes, BN-ReLU of the input feeds both the residual branch and the 1x1
    projection shortcut, as in the authors' code.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution and of the projection.
        dropout: Dropout probability between the two convolutions.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen_factor (Zagoruyko & Komodakis, BMVC 2016).

    Initialised as in :func:`robustkit.models.resnet_cifar.init_resnet_weights` (the authors'
    code uses the same He-normal fan-out rule).

    Args:
        depth: Number of weighted layers ``d = 6n + 4`` (e.g. 16, 22, 28, 40).
        widen_factor: Width multiplier ``k``.
        in_channels: Image channels.
        num_classes: Number of output logits.
        dropout: Dropout probability inside each block (0 disables it, the default here;
            the paper uses 0.3 for some results).

    Raises:
        ValueError: If ``depth`` is not ``6n + 4``, ``widen_factor < 1`` or ``dropout``
            is outside ``[0, 1)``.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        *,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        num_blocks = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        channels = 16
        groups = []
        for group, width in enumerate(widths):
            blocks = []
            for block in range(num_blocks):
                stride = 2 if group > 0 and block == 0 else 1
                blocks.append(PreActBlock(channels, width, stride, dropout))
                channels = width
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def wrn28_2(*, in_channels: int, num_classes: int, image_size: int) -> WideResNet:
    """WRN-28-2 (Zagoruyko & Komodakis 2016), 1.47M parameters on CIFAR-10."""
    return WideResNet(28, 2, in_channels=in_channels, num_classes=num_classes)


def wrn28_10(*, in_channels: int, num_classes: int, image_size: int) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016), 36.5M parameters on CIFAR-10."""
    return WideResNet(28, 10, in_channels=in_channels, num_classes=num_classes)
