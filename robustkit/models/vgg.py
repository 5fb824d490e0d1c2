"""VGG-16 and VGG-19 with batch normalisation, CIFAR variant.

Configurations D and E of Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015 (arXiv:1409.1556), with BatchNorm after every
convolution (Ioffe & Szegedy, ICML 2015). As in the common CIFAR code, the three large fully
connected layers are replaced by global average pooling and one linear classifier on the 512
final features (14.7M parameters for VGG-16-BN on CIFAR-10).

The five 2x2 max-pools halve the image five times (32 -> 1). On smaller images a pool that
would shrink a map of one pixel is replaced by ``nn.Identity``, so the state-dict keys do not
depend on the image size.
"""

from __future__ import annotations

import torch
from torch import nn

POOL = "M"
VGG16_CONFIG: tuple[int | str, ...] = (
    *(64, 64, POOL, 128, 128, POOL),
    *(256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
)
VGG19_CONFIG: tuple[int | str, ...] = (
    *(64, 64, POOL, 128, 128, POOL),
    *(256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
)


class VGG(nn.Module):
    """VGG with BatchNorm: 3x3 conv-BN-ReLU stacks, max-pools, average pool, linear layer.

    Initialised as torchvision does: convolutions He-normal with fan-out and zero bias,
    BatchNorm ``gamma = 1, beta = 0``, classifier ``N(0, 0.01^2)`` with zero bias.

    Args:
        config: Output channels of each convolution, with ``"M"`` for a 2x2 max-pool.
        in_channels: Image channels.
        num_classes: Number of output logits.
        image_size: Side of the (square) input in pixels; decides which pools are skipped.
    """

    def __init__(
        self,
        config: tuple[int | str, ...],
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        size = image_size
        for item in config:
            if item == POOL:
                if size >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                else:
                    layers.append(nn.Identity())
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, 3, 1, 1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16_bn(*, in_channels: int, num_classes: int, image_size: int) -> VGG:
    """VGG-16 with BatchNorm (Simonyan & Zisserman 2015), CIFAR variant, 14.7M parameters."""
    return VGG(
        VGG16_CONFIG, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )


def vgg19_bn(*, in_channels: int, num_classes: int, image_size: int) -> VGG:
    """VGG-19 with BatchNorm (Simonyan & Zisserman 2015), CIFAR variant, 20.0M parameters."""
    return VGG(
        VGG19_CONFIG, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
