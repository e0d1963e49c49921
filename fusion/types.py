"""Modality names and the typed outputs every model returns.

Inputs are ``dict[str, Tensor]`` keyed by modality name. A missing modality
is *absent* from the dict; models say in their output which modalities they
actually used (``present``) and how they treated an absent one (``notes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

RGB, DEPTH, FACE, AUDIO, TEXT = "rgb", "depth", "face", "audio", "text"
MODALITIES: tuple[str, ...] = (RGB, DEPTH, FACE, AUDIO, TEXT)


class FusionError(ValueError):
    """A clean, user-facing error from the library (bad input, bad checkpoint, bad config)."""


@dataclass
class SegmentationOutput:
    """What an RGB-D segmentation model returns for a batch.

    Cheap trace fields are always filled; ``flops`` only when the forward was
    asked to count (``count_flops=True``), because counting costs time.
    """

    logits: torch.Tensor  # (B, C, H, W) class scores at the input resolution
    present: tuple[str, ...]  # modalities the model actually consumed
    gate_probs: torch.Tensor | None = None  # (B, K) DynMM branch probabilities
    branch: torch.Tensor | None = None  # (B,) long, DynMM branch taken (k = depth fused into first k stages)
    flops: torch.Tensor | None = None  # (B,) FLOPs spent on each input, measured with FlopCounterMode
    notes: list[str] = field(default_factory=list)  # e.g. "depth absent: zero-filled"
    tokens: Any = None  # sparse fusion: fusion.methods.sparse.SparseTrace (kept tokens, scores, counts)
    solver: Any = None  # DEQ fusion: fusion.methods.deq.DEQTrace (residual per iteration, steps, convergence)
    adapter: str | None = None  # adapted model: the adapter set that was switched on (None = base only)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> torch.Tensor:
        """(B, H, W) arg-max class per pixel."""
        return self.logits.argmax(1)
