"""Small models for CPU experiments: a two-hidden-layer MLP and a three-layer CNN.

Both train the 8x8 digits set (1,797 images) to high accuracy in seconds on one CPU core, so
tests and toy sweeps can exercise every optimiser and metric end to end.
"""

from __future__ import annotations

import torch
from torch import nn

from robustkit.models.resnet_cifar import init_resnet_weights


class MLP(nn.Module):
    """Flatten, then ``num_hidden_layers`` linear-ReLU layers of ``hidden_width``, then logits.

    Hidden layers are He-normal with fan-in, ``w ~ N(0, 2 / fan_in)`` (He et al., "Delving
    Deep into Rectifiers", ICCV 2015), with zero biases; the output layer keeps PyTorch's
    default weight and gets a zero bias.

    Args:
        in_features: Input size, ``channels * height * width``.
        num_classes: Number of output logits.
        hidden_width: Units per hidden layer.
        num_hidden_layers: Number of hidden layers.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_width: int = 256,
        num_hidden_layers: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(num_hidden_layers):
            linear = nn.Linear(width, hidden_width)
            nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
            width = hidden_width
        output = nn.Linear(width, num_classes)
        nn.init.zeros_(output.bias)
        layers.append(output)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU layers (32, 64, 64 filters), two max-pools, average pool, linear.

    Works for any image of at least 4x4 pixels (tested from 8x8 up). Initialised as in
    :func:`robustkit.models.resnet_cifar.init_resnet_weights`.

    Args:
        in_channels: Image channels.
        num_classes: Number of output logits.
        widths: Filters of the three convolutions.
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (32, 64, 64)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if index < 2:
                layers.append(nn.MaxPool2d(2, 2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def mlp(*, in_channels: int, num_classes: int, image_size: int) -> MLP:
    """MLP with two hidden layers of 256 ReLU units on the flattened image."""
    return MLP(in_channels * image_size * image_size, num_classes)


def cnn(*, in_channels: int, num_classes: int, image_size: int) -> SmallCNN:
    """Small CNN (conv 32-64-64 with BatchNorm, two max-pools) for CPU experiments."""
    return SmallCNN(in_channels, num_classes)
