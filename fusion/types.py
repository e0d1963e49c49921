"""Modality names, the typed per-call options and the one typed output every model returns, for both tasks.

Inputs are ``dict[str, Tensor]`` keyed by modality name. A missing modality is *absent* from the dict; models
say in their output which modalities they actually used (``present``) and how they treated an absent one
(``notes``). Method-specific views travel as typed traces (gate, tokens, solver, fusion block), never as an
untyped dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the traces are defined next to their methods
    from fusion.methods.deq import DEQTrace
    from fusion.methods.sparse import SparseTrace

RGB, DEPTH, FACE, AUDIO, TEXT = "rgb", "depth", "face", "audio", "text"
MODALITIES: tuple[str, ...] = (RGB, DEPTH, FACE, AUDIO, TEXT)


class FusionError(ValueError):
    """A clean, user-facing error from the library (bad input, bad checkpoint, bad config)."""


@dataclass(frozen=True)
class RunOptions:
    """Per-call settings of a forward (the app's live controls). Nothing here is stored on the model, so a model
    shared between sessions serves each call with its own options. ``None`` = the model's own setting."""

    force_branch: int | None = None  # DynMM: run this branch instead of the gate's choice
    tau: float = 1.0  # DynMM: gate temperature while training
    adapter: str | bool = "auto"  # adapted models: "auto" = the adapter set of the present subset; False = base only
    pool: str | None = None  # sparse fusion: pooling mode
    keep_ratio: float | None = None  # sparse fusion: fraction of tokens kept
    solver: str | None = None  # DEQ: "anderson", "broyden" or "naive"
    max_iter: int | None = None  # DEQ: solver iteration cap
    tol: float | None = None  # DEQ: residual tolerance
    stop_mode: str | None = None  # DEQ: "rel" or "abs" residual
    keep_states_at: tuple[int, ...] | None = None  # DEQ: solver iterations whose prediction is decoded too
    zero_block: bool = False  # sparse / DEQ ablation: the method block's output zeroed

    @classmethod
    def of(cls, options: "RunOptions | None" = None, **kw: object) -> "RunOptions":
        """``options`` with keyword overrides; unknown names raise :class:`FusionError`."""
        known = {f.name for f in fields(cls)}
        bad = set(kw) - known
        if bad:
            raise FusionError(f"unknown forward options {sorted(bad)}; known: {sorted(known)}")
        base = options if options is not None else cls()
        if not kw:
            return base
        vals = {f.name: getattr(base, f.name) for f in fields(cls)}
        vals.update(kw)
        if vals["keep_states_at"] is not None:
            vals["keep_states_at"] = tuple(int(t) for t in vals["keep_states_at"])  # type: ignore[union-attr]
        return cls(**vals)  # type: ignore[arg-type]

    def method_kwargs(self, names: tuple[str, ...]) -> dict[str, object]:
        """The options among ``names`` that were set, as keyword arguments for a method block."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class GateTrace:
    """DynMM: what the gate decided. ``branch_logits`` / ``resource_loss`` are filled in training only."""

    probs: torch.Tensor  # (B, K) branch probabilities
    branch: torch.Tensor  # (B,) long, the branch taken
    names: tuple[str, ...]  # what each branch computes, e.g. "depth in 2 stages" or "face+text"
    branch_logits: torch.Tensor | None = None  # (K, B, ...) every branch's output (training: all-branch loss)
    resource_loss: torch.Tensor | None = None  # expected normalised cost (training)


@dataclass
class BlockTrace:
    """Sparse / DEQ: the fusion block's own measured cost, and whether it was switched off on this call."""

    fusion_flops: float | None = None  # FLOPs of the block alone (nested FlopCounterMode), when counted
    fusion_bytes: float | None = None  # bytes its ops allocated, when counted
    zeroed: bool = False  # the ablation: the block's output was zeroed
    output: torch.Tensor | None = None  # the block's output (training only: the distillation warm-up)


@dataclass
class FusionOutput:
    """What every model of every task returns for a batch.

    Cheap trace fields are always filled; ``flops`` only when the forward was asked to count
    (``count_flops=True``), because counting costs time."""

    logits: torch.Tensor  # RGB-D: (B, C, H, W) class scores at the input resolution; clips: (B, 7) emotion scores
    present: tuple[str, ...]  # modalities the model actually consumed
    flops: torch.Tensor | None = None  # (B,) FLOPs spent on each input, measured with FlopCounterMode
    notes: list[str] = field(default_factory=list)  # e.g. "depth absent: zero-filled"
    gate: GateTrace | None = None  # DynMM
    tokens: "SparseTrace | None" = None  # sparse fusion: kept tokens, scores, counts
    solver: "DEQTrace | None" = None  # DEQ fusion: residual per iteration, steps, convergence
    iterate_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # DEQ: prediction at kept iterations
    block: BlockTrace | None = None  # sparse / DEQ: the block's cost and ablation state
    adapter: str | None = None  # adapted model: the adapter set that was switched on (None = base only)
    ran: tuple[str, ...] = ()  # encoders that actually ran on this call (DynMM skips the others)
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # clips: each encoder's own head
    per_sample: list["FusionOutput"] = field(default_factory=list)  # count_flops on a batch: each input's output

    @property
    def labels(self) -> torch.Tensor:
        """Arg-max class: (B, H, W) per pixel for RGB-D, (B,) for clips."""
        return self.logits.argmax(1)

    @property
    def gate_probs(self) -> torch.Tensor | None:
        return None if self.gate is None else self.gate.probs

    @property
    def branch(self) -> torch.Tensor | None:
        return None if self.gate is None else self.gate.branch


SegmentationOutput = FusionOutput  # the RGB-D name of the same output (kept for readers of older code)
