"""CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, four stages of two basic blocks.

The base width scales every stage (64 is the standard model). The network exposes its
penultimate features (`features`) and its linear head (`head`) separately, because MeGU
builds its noise pair in feature space against the frozen head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity or 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs; `forward(x) == head(features(x))`."""

    def __init__(
        self,
        num_classes: int,
        blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2),
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.base_width = base_width

        self.stem = nn.Sequential(
            nn.Conv2d(3, base_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        )

        stages = []
        in_channels = base_width
        for stage_index, num_blocks in enumerate(blocks_per_stage):
            out_channels = base_width * 2**stage_index
            first_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                stride = first_stride if block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)

        self.feature_dim = in_channels
        self.head = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the globally pooled penultimate features."""
        out = self.stages(self.stem(x))  # (batch, d, h, w)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (batch, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("resnet18")
def resnet18(num_classes: int, base_width: int = 64) -> CifarResNet:
    """CIFAR ResNet-18; base width 64 is the standard model, 16 the CPU-friendly one."""
    return CifarResNet(num_classes, (2, 2, 2, 2), base_width)
