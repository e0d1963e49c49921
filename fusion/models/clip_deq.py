"""Deep-equilibrium fusion on emotion clips (Ni, Bai, Zhang, Yao, Mei, "Deep Equilibrium Multimodal Fusion",
arXiv:2306.16645, 2023), on the three frozen clip encoders.

The paper's block works on one feature vector per modality, and that is what this model feeds it: each present
modality's state is injected with its encoder's **pooled embedding** (face: the mean over crops, speech: the mean
over its 80 ms tokens, text: the mean over word pieces), concatenated with the encoder head's own 7-way
log-probabilities (``features="pooled+logprobs"``; the evidence late fusion averages). Vectors are not token
sequences on purpose: a face is one token anyway; a solve over tokens would put attention inside ``f`` (a
Jacobian over hundreds of states, many more iterations); and the paper's own benchmarks fuse vectors.

The equilibrium is :class:`fusion.methods.deq.DEQFusion` with vectors as ``(B, C, 1, 1)`` maps and 1x1 kernels
(``DEQConfig.kernel = 1``: the blocks are then linear layers with GroupNorm over channel groups): one state per
present modality plus the fused state, solved jointly from zeros by Anderson / Broyden / plain iteration, each
sample stopping on its own. An absent modality has no state, no gate and no weight in the solve. The same
solvers, stop rules, implicit gradient, Jacobian regulariser and traces as RGB-D; the trace adds each state's
own residual per iteration (``DEQTrace.state_residuals``).

Prediction: ``logits = late(enc) + readout(z_fuse*)`` with ``skip="late"`` (the encoders' heads, late-fused with
learned weights, as a skip path; the readout starts at zero), or the readout alone (``skip="none"``).
``zero_block=True`` zeroes the readout: what the model predicts without the equilibrium block. The equal-training
control is the same model with ``DEQConfig.unroll = 1``: ``f`` applied once from zeros, ordinary backprop.

Paired by label, not recorded together (:data:`fusion.data.emotion.PAIRING_NOTE`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fusion.core import Later
from fusion.data.emotion import NUM_EMOTIONS
from fusion.encoders.common import EncoderOutput
from fusion.methods.deq import DEQConfig, DEQFusion, DEQTrace
from fusion.models.clips import CLIP_MODALITIES, ClipClassifier, ClipConfig, ClipGateConfig, LateFusion
from fusion.registry import register
from fusion.types import BlockTrace, FusionError, FusionOutput, RunOptions

REGISTRY_NAME = "deq_clips"

FEATURES = ("pooled", "pooled+logprobs")
SKIPS = ("late", "none")
SOLVE_OPTIONS = ("solver", "max_iter", "tol", "stop_mode", "keep_states_at")


def clip_deq_defaults() -> DEQConfig:
    """The clip block's defaults: vectors (1x1 kernels), width 128 in 8 groups; the rest as on RGB-D."""
    return DEQConfig(kernel=1, hidden=128, groups=8)


@dataclass(frozen=True)
class ClipDEQConfig(ClipConfig):
    """A clip model whose fusion is a deep equilibrium over the modality states."""

    deq: DEQConfig = field(default_factory=clip_deq_defaults)  # the equilibrium block and its solver
    features: str = "pooled+logprobs"  # each state's injection: the pooled embedding, or with the head's log-probs
    skip: str = "late"  # "late": the encoders' heads late-fused, plus the block's readout; "none": readout only


class ClipDEQFusion(nn.Module):
    """The equilibrium over the present modality states, its readout, and the optional late-fusion skip."""

    def __init__(self, *, dims: Mapping[str, int], cfg: ClipDEQConfig) -> None:
        super().__init__()
        if cfg.features not in FEATURES or cfg.skip not in SKIPS:
            raise FusionError(f"features must be one of {FEATURES} and skip one of {SKIPS}")
        if cfg.deq.kernel != 1:
            raise FusionError("the clip equilibrium works on vectors: DEQConfig.kernel must be 1")
        extra = NUM_EMOTIONS if cfg.features == "pooled+logprobs" else 0
        try:
            self.deq = DEQFusion(in_channels={m: d + extra for m, d in dims.items()}, out_channels=cfg.num_classes,
                                 cfg=cfg.deq)
        except ValueError as e:
            raise FusionError(str(e)) from e
        self.features = cfg.features
        self.late = LateFusion(cfg=cfg) if cfg.skip == "late" else None

    def inject(self, enc: Mapping[str, EncoderOutput]) -> dict[str, torch.Tensor]:
        """Each present modality's input vector as a ``(B, C, 1, 1)`` map."""
        out = {}
        for m in CLIP_MODALITIES:
            if m not in enc:
                continue
            v = enc[m].pooled.float()  # (B, D_m)
            if self.features == "pooled+logprobs":
                v = torch.cat([v, F.log_softmax(enc[m].logits.float(), 1)], 1)  # (B, D_m + 7)
            out[m] = v[:, :, None, None]
        return out

    def skip_logits(self, enc: Mapping[str, EncoderOutput], like: torch.Tensor) -> torch.Tensor:
        return self.late(enc) if self.late is not None else torch.zeros_like(like)

    def forward(self, enc: Mapping[str, EncoderOutput], *, zero_block: bool = False, **solve: object
                ) -> tuple[torch.Tensor, DEQTrace | None, torch.Tensor]:
        """``(logits (B, C), trace, skip logits (B, C))``; ``solve``: per-call solver options (and
        ``decode_kept``). Zeroed: the block does not run (no trace), the logits are the skip path's."""
        if not enc:
            raise FusionError("no modality to fuse")
        first = next(iter(enc.values())).logits
        skip = self.skip_logits(enc, first)
        if zero_block:
            return skip, None, skip
        try:
            out, trace = self.deq(self.inject(enc), **solve)  # (B, C, 1, 1)
        except ValueError as e:
            raise FusionError(str(e)) from e
        return skip + out[:, :, 0, 0], trace, skip


class ClipDEQClassifier(ClipClassifier):
    """Three frozen encoders, deep-equilibrium fusion of their vectors, 7 emotions (kind ``"deq"``)."""

    KINDS = ClipClassifier.KINDS + ("deq",)
    cfg: ClipDEQConfig

    def build_fusion(self, dims: Mapping[str, int]) -> nn.Module:
        return ClipDEQFusion(dims=dims, cfg=self.cfg)

    def fuse(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        return self.fusion(enc)[0]

    def fusion_loss(self, enc: Mapping[str, EncoderOutput], y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the fused prediction plus the Jacobian penalty (``deq.jac_reg_weight``)."""
        logits, trace, _ = self.fusion(enc)
        loss = F.cross_entropy(logits, y)
        if trace is not None and trace.jac_loss is not None:
            loss = loss + trace.jac_loss
        return loss

    def _solve(self, enc: Mapping[str, EncoderOutput], opts: RunOptions, counting: bool
               ) -> tuple[torch.Tensor, dict[str, object], Callable[[], dict[int, torch.Tensor]]]:
        """The fusion with this call's options; the fusion stage's own FLOPs when counting; a function that decodes
        the kept iterates (run it outside the FLOP count)."""
        kw = opts.method_kwargs(SOLVE_OPTIONS)
        kw["decode_kept"] = False
        fc = FlopCounterMode(display=False) if counting else None
        if fc is not None:
            with fc:
                logits, trace, skip = self.fusion(enc, zero_block=opts.zero_block, **kw)
        else:
            logits, trace, skip = self.fusion(enc, zero_block=opts.zero_block, **kw)
        block = BlockTrace(fusion_flops=None if fc is None else float(fc.get_total_flops()), zeroed=opts.zero_block)
        head = self.fusion.deq.out

        def iterates() -> dict[int, torch.Tensor]:
            if trace is None or not trace.states:
                return {}
            with torch.no_grad():
                return {k: skip + head(z)[:, :, 0, 0] for k, z in trace.states.items()}

        return logits, {"solver": trace, "block": block}, iterates

    def fuse_traced(self, enc: Mapping[str, EncoderOutput], opts: RunOptions, *, counting: bool
                    ) -> tuple[torch.Tensor, dict[str, object]]:
        logits, extra, iterates = self._solve(enc, opts, counting)
        return logits, {**extra, "iterate_logits": iterates()}

    def run(self, inputs: Mapping[str, torch.Tensor], present: tuple[str, ...], opts: RunOptions, *,
            counting: bool) -> tuple[FusionOutput, Later]:
        """Encoders of the present modalities, then the equilibrium; the prediction at the kept solver iterations is
        decoded after the FLOP count (an explanation, not the model's path)."""
        notes = [f"{m} absent: no state in the equilibrium" for m in CLIP_MODALITIES if m not in present]
        if opts.zero_block:
            notes.append("equilibrium block switched off: the prediction is the late-fusion skip alone"
                         if self.cfg.skip == "late" else "equilibrium block switched off: the readout is zero")
        enc = {m: self.encode(m, inputs) for m in present}
        logits, extra, iterates = self._solve(enc, opts, counting)
        out = FusionOutput(logits=logits, present=present, notes=notes, ran=present,
                           modality_logits={m: e.logits for m, e in enc.items()}, **extra)

        def later() -> None:
            out.iterate_logits = iterates()

        return out, later


def _deq_config(kw: dict) -> ClipDEQConfig:
    """ClipDEQConfig from keyword arguments (as cards store them: the DEQ settings nested under ``deq``)."""
    kw = dict(kw)
    kw.pop("pretrained", None)
    deq = {**asdict(clip_deq_defaults()), **dict(kw.pop("deq", None) or {})}
    gate = dict(kw.pop("gate", None) or {})
    gate.update({k: kw.pop(k) for k in list(kw) if k in ClipGateConfig.__dataclass_fields__})
    known = {f.name for f in fields(ClipDEQConfig)}
    bad = sorted(set(kw) - known)
    if bad:
        raise FusionError(f"bad clip DEQ config: unknown {bad}")
    try:
        return ClipDEQConfig(**kw, gate=ClipGateConfig(**gate), deq=DEQConfig(**deq))
    except TypeError as e:
        raise FusionError(f"bad clip DEQ config: {e}") from e


@register(REGISTRY_NAME, task="emotion_clips")
def deq_clips(**kw) -> ClipDEQClassifier:
    """Deep-equilibrium fusion of the face, speech and text vectors (one state each plus the fused state)."""
    return ClipDEQClassifier(cfg=_deq_config(kw), kind="deq")
