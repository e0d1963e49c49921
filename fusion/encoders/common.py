"""What the emotion-clip encoders share: their typed output, masked pooling, the pre-training head and the
config check of their registry factories.

Every encoder (:mod:`fusion.encoders.face`, :mod:`fusion.encoders.audio`, :mod:`fusion.encoders.text`)
returns an :class:`EncoderOutput`: a token sequence with its mask, for fusion methods that work on tokens
(sparse fusion, DEQ), a pooled vector, for those that work on one vector per modality (static, DynMM),
and the logits of its own 7-way emotion head, used when the encoder is pre-trained on its corpus
(``python -m fusion.train_encoders``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
import torch.nn as nn

from fusion.types import FusionError

T = TypeVar("T")


@dataclass
class EncoderOutput:
    """What an emotion encoder returns for a batch."""

    tokens: torch.Tensor  # (B, T, D) token states: face crops, audio time steps or word pieces
    mask: torch.Tensor  # (B, T) bool, True = a real token, False = padding
    pooled: torch.Tensor  # (B, D) masked mean of the tokens
    logits: torch.Tensor  # (B, 7) scores of the encoder's own emotion head (order: fusion.data.emotion.EMOTIONS)
    modality: str  # "face", "audio" or "text"

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[-1])


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` (B, T, D) over the positions where ``mask`` (B, T) is True; zeros for an all-padding
    row."""
    w = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)


class EmotionHead(nn.Module):
    """Dropout and one linear layer from the pooled vector to the 7 emotions (pre-training only)."""

    def __init__(self, *, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(pooled))


def build_config(cls: type[T], kw: dict[str, Any]) -> T:
    """``cls(**kw)`` for a config dataclass, with unknown keys and bad values raised as FusionError."""
    unknown = set(kw) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise FusionError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise FusionError(f"bad {cls.__name__}: {e}") from e
