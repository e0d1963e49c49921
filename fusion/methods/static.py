"""Static RGB-D fusion: squeeze-excite then add, at every encoder stage.

ESANet (Seichter et al., "Efficient RGB-D Semantic Segmentation for Indoor Scene Analysis", ICRA 2021)
re-weights the channels of each modality with a squeeze-excitation gate (Hu et al., CVPR 2018) and adds
the depth features into the RGB stream; the RGB stream carries the fused features on, the depth stream
stays unimodal.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> bottleneck MLP -> sigmoid -> scale."""

    def __init__(self, *, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))  # (B, C, H, W)


class SEAddFusion(nn.Module):
    """``fused = SE_rgb(rgb) + SE_depth(depth)`` (both maps share shape ``(B, C, H, W)``)."""

    def __init__(self, *, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.se_rgb = SqueezeExcite(channels=channels, reduction=reduction)
        self.se_depth = SqueezeExcite(channels=channels, reduction=reduction)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return self.se_rgb(rgb) + self.se_depth(depth)
