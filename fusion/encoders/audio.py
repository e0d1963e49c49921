"""Audio encoder for the emotion-clip task: a small VGG-style CNN over log-mel spectrograms, trained from
scratch on RAVDESS speech (in the manner of the CNN14 family of Kong et al., "PANNs", 2020, much smaller).

Input: ``(B, 64, T)`` log-mel spectrograms in dB from :func:`fusion.data.emotion.log_mel` (10 ms frames) and an
optional ``(B, T)`` bool mask, True = a real frame. Loudness is kept: the input is normalised with fixed
constants (``(dB - db_mean) / db_std``, roughly RAVDESS's statistics), not per clip.

Variable lengths: clips of a batch are right-padded to the longest and masked. Padded frames are set to zero
before every convolution and pooling, which is what the convolutions' own zero padding does at the end of an
unpadded clip, so the tokens and the pooled vector of a clip do not depend on how much padding the batch
gave it (exactly so in eval mode; in training, batch-norm statistics also see the zeroed frames). Four
blocks of two 3x3 convolutions each (BN, ReLU) with max-pooling reduce time by 8 (one token per 80 ms) and
frequency by 16; the 4 remaining frequency rows are averaged. Tokens: ``(B, ceil(T / 8), 256)`` with their
mask; ``pooled``: their masked mean; ``logits``: the 7-way head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fusion.data.emotion import N_MELS, NUM_EMOTIONS
from fusion.encoders.common import EmotionHead, EncoderOutput, build_config, masked_mean
from fusion.registry import register
from fusion.types import AUDIO, FusionError

# (frequency pool, time pool) after each block; time is reduced by their product, 8.
_POOLS: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (2, 1))
TIME_STRIDE = int(np.prod([p[1] for p in _POOLS]))  # input frames per token (8 = 80 ms)


@dataclass(frozen=True)
class AudioConfig:
    """Settings of the audio encoder."""

    n_mels: int = N_MELS  # mel bands of the input (log_mel's default, 64)
    width: int = 32  # channels of the first block; they double per block (32, 64, 128, 256 = token size)
    dropout: float = 0.3  # dropout before the emotion head (pre-training)
    db_mean: float = -60.0  # input normalisation: (dB - db_mean) / db_std (RAVDESS train: about -63 and 22)
    db_std: float = 20.0
    num_classes: int = NUM_EMOTIONS  # outputs of the emotion head
    pretrained: bool = False  # no pre-trained weights exist for this CNN; kept so every encoder config has it

    def __post_init__(self) -> None:
        if self.n_mels % 16:
            raise ValueError(f"n_mels must be a multiple of 16 (four frequency poolings), got {self.n_mels}")
        if self.width < 1 or self.db_std <= 0:
            raise ValueError("width must be positive and db_std above zero")


def lengths_to_mask(lengths: torch.Tensor | list[int], total: int | None = None) -> torch.Tensor:
    """(B,) frame counts -> (B, T) bool mask, True on the first ``lengths[b]`` frames."""
    n = torch.as_tensor(lengths, dtype=torch.long)
    t = int(n.max()) if total is None else int(total)
    return torch.arange(t, device=n.device)[None, :] < n[:, None]


def pad_spectrograms(specs: list[np.ndarray] | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (n_mels, T_i) spectrograms to the longest: ``(B, n_mels, T)`` and its ``(B, T)`` mask."""
    if not specs:
        raise FusionError("no spectrograms to pad")
    ts = [torch.as_tensor(s, dtype=torch.float32) for s in specs]
    if any(s.dim() != 2 or s.shape[0] != ts[0].shape[0] for s in ts):
        raise FusionError(f"spectrograms must all be (n_mels, T) with one n_mels, got {[tuple(s.shape) for s in ts]}")
    lengths = [s.shape[1] for s in ts]
    out = ts[0].new_zeros(len(ts), ts[0].shape[0], max(lengths))
    for i, s in enumerate(ts):
        out[i, :, : s.shape[1]] = s
    return out, lengths_to_mask(lengths)


class ConvBlock(nn.Module):
    """Two (3x3 conv, BN, ReLU) with padded frames zeroed before each, then max-pooling."""

    def __init__(self, *, cin: int, cout: int, pool: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, T)
        x = F.relu(self.bn1(self.conv1(x))) * m
        x = F.relu(self.bn2(self.conv2(x))) * m
        x = F.max_pool2d(x, self.pool)  # values >= 0, padding 0: a window with one real frame keeps its max
        pt = self.pool[1]
        if pt > 1:
            mask = mask.reshape(mask.shape[0], -1, pt).any(-1)  # (B, T / pt): real if any frame is
        return x, mask


class AudioEncoder(nn.Module):
    """Log-mel CNN; one token per 80 ms (``(B, ceil(T / 8), 8 * width)``), masked mean pooling, a 7-way head."""

    modality = AUDIO

    def __init__(self, *, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = [1] + [cfg.width * 2**i for i in range(len(_POOLS))]
        self.blocks = nn.ModuleList(
            ConvBlock(cin=a, cout=b, pool=p) for a, b, p in zip(chans[:-1], chans[1:], _POOLS)
        )
        self.out_dim = chans[-1]
        self.head = EmotionHead(dim=self.out_dim, num_classes=cfg.num_classes, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """``x``: (B, n_mels, T) log-mel in dB; ``mask``: (B, T) bool, True = real frame (default: all real)."""
        if x.dim() != 3 or x.shape[1] != self.cfg.n_mels:
            raise FusionError(f"audio must be (B, {self.cfg.n_mels}, T) log-mel spectrograms, got {tuple(x.shape)}")
        b, _, t = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        elif mask.shape != (b, t):
            raise FusionError(f"audio mask must be (B, T) = {(b, t)}, got {tuple(mask.shape)}")
        if not bool(mask.any(1).all()):
            raise FusionError("every audio item needs at least one real frame")
        mask = mask.bool()
        pad = -t % TIME_STRIDE  # pad time to a multiple of the stride so every pooling window is whole
        x = F.pad((x - self.cfg.db_mean) / self.cfg.db_std, (0, pad))
        mask = F.pad(mask, (0, pad), value=False)
        x = (x * mask[:, None, :].to(x.dtype)).unsqueeze(1)  # (B, 1, n_mels, T)
        for block in self.blocks:
            x, mask = block(x, mask)
        tokens = x.mean(2).transpose(1, 2)  # (B, T / 8, C): frequency rows averaged
        pooled = masked_mean(tokens, mask)  # (B, C)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled, logits=self.head(pooled), modality=AUDIO)


@register("audio_encoder", task="emotion_encoder")
def audio_encoder(**kw) -> AudioEncoder:
    """Log-mel CNN audio encoder (from scratch) with a 7-way RAVDESS head."""
    return AudioEncoder(cfg=build_config(AudioConfig, dict(kw)))
