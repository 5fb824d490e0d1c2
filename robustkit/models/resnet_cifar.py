"""CIFAR ResNets of He et al. (2016) with option-A (parameter-free) shortcuts.

The network of Section 4.2 of He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016 (arXiv:1512.03385): a 3x3 convolution with 16 filters, then three
stages of ``n`` basic blocks with 16, 32 and 64 filters on feature maps of 32, 16 and 8 pixels,
global average pooling and a fully connected layer; ``6n + 2`` weighted layers in all
(ResNet-20, 32, 44, 56, 110 for n = 3, 5, 7, 9, 18). Where a stage halves the feature map and
doubles the width, the shortcut is option A: subsample by 2 and zero-pad the new channels, so
shortcuts carry no parameters and ResNet-20 has 0.27M of them (Table 6 of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the extra channels.

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of the block's output (``>= in_channels``).
        stride: Spatial subsampling factor of the block.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels})"
            )
        self.stride = stride
        extra = out_channels - in_channels
        # Split the zero channels evenly on both sides, as the common CIFAR code does.
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an identity (option-A) shortcut, ReLU after the sum.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 at the start of stages 2 and 3).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al., CVPR 2016, Section 4.2) with option-A shortcuts.

    Initialisation follows the authors' reference reimplementation (fb.resnet.torch, also
    torchvision): convolutions He-normal with fan-out (He et al., ICCV 2015), BatchNorm
    ``gamma = 1, beta = 0``, classifier weight PyTorch's default and bias zero.

    Args:
        depth: Number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        in_channels: Image channels.
        num_classes: Number of output logits.
        widths: Filters of the stem and the three stages (the paper's ``(16, 32, 64)``).

    Raises:
        ValueError: If ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.
    """

    def __init__(
        self,
        depth: int,
        *,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        num_blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(CifarBasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


def init_resnet_weights(model: nn.Module) -> None:
    """Initialise a ResNet in place as fb.resnet.torch and torchvision do.

    Convolutions: He-normal with fan-out, ``w ~ N(0, 2 / (k^2 c_out))`` (He et al., "Delving
    Deep into Rectifiers", ICCV 2015); BatchNorm ``gamma = 1, beta = 0``; linear layers keep
    PyTorch's default weight and get a zero bias.

    Args:
        model: The freshly built network (its parameters are overwritten).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def resnet20(*, in_channels: int, num_classes: int, image_size: int) -> CifarResNet:
    """ResNet-20 (He et al. 2016), 0.27M parameters on CIFAR-10."""
    return CifarResNet(20, in_channels=in_channels, num_classes=num_classes)


def resnet32(*, in_channels: int, num_classes: int, image_size: int) -> CifarResNet:
    """ResNet-32 (He et al. 2016), 0.46M parameters on CIFAR-10."""
    return CifarResNet(32, in_channels=in_channels, num_classes=num_classes)


def resnet44(*, in_channels: int, num_classes: int, image_size: int) -> CifarResNet:
    """ResNet-44 (He et al. 2016), 0.66M parameters on CIFAR-10."""
    return CifarResNet(44, in_channels=in_channels, num_classes=num_classes)


def resnet56(*, in_channels: int, num_classes: int, image_size: int) -> CifarResNet:
    """ResNet-56 (He et al. 2016), 0.85M parameters on CIFAR-10."""
    return CifarResNet(56, in_channels=in_channels, num_classes=num_classes)


def resnet110(*, in_channels: int, num_classes: int, image_size: int) -> CifarResNet:
    """ResNet-110 (He et al. 2016), 1.7M parameters on CIFAR-10."""
    return CifarResNet(110, in_channels=in_channels, num_classes=num_classes)
