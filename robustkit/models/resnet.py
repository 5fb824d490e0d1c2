"""ResNet-18 and ResNet-34 (He et al. 2016) with the CIFAR stem.

The ImageNet networks of Table 1 of He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016 (arXiv:1512.03385): four stages of basic blocks with 64, 128, 256 and
512 filters ([2, 2, 2, 2] blocks for ResNet-18, [3, 4, 6, 3] for ResNet-34) and projection
(option B: 1x1 conv + BN) shortcuts where the shape changes. For small images the 7x7/2 stem
convolution and the max-pool are replaced by one 3x3 convolution with stride 1, as in the
widely used CIFAR variant (11.17M parameters for ResNet-18 on CIFAR-10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.models.resnet_cifar import init_resnet_weights


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a projection shortcut when the shape changes.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution and of the projection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """BasicBlock ResNet with a 3x3 stride-1 stem and no max-pool (CIFAR variant).

    Initialised as in :func:`robustkit.models.resnet_cifar.init_resnet_weights`.

    Args:
        num_blocks: Blocks in each of the four stages, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        in_channels: Image channels.
        num_classes: Number of output logits.
        widths: Filters of the four stages.

    Raises:
        ValueError: If ``num_blocks`` and ``widths`` differ in length or a count is < 1.
    """

    def __init__(
        self,
        num_blocks: tuple[int, ...],
        *,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if len(num_blocks) != len(widths) or min(num_blocks) < 1:
            raise ValueError(
                f"need one positive block count per stage, got {num_blocks} for widths {widths}"
            )
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        stages = []
        for stage, (count, width) in enumerate(zip(num_blocks, widths, strict=True)):
            blocks = []
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet18(*, in_channels: int, num_classes: int, image_size: int) -> ResNet:
    """ResNet-18 (He et al. 2016) with the CIFAR stem, 11.17M parameters on CIFAR-10."""
    return ResNet((2, 2, 2, 2), in_channels=in_channels, num_classes=num_classes)


def resnet34(*, in_channels: int, num_classes: int, image_size: int) -> ResNet:
    """ResNet-34 (He et al. 2016) with the CIFAR stem, 21.28M parameters on CIFAR-10."""
    return ResNet((3, 4, 6, 3), in_channels=in_channels, num_classes=num_classes)
