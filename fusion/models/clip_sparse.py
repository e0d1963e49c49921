"""Sparse token fusion on emotion clips: each modality's token sequence is pooled to a few tokens before the
cross-modal transformer (after Ding et al., "Sparse Fusion for Multimodal Transformers", SFT, arXiv:2111.11992).

The paper's point is that the modalities' token sets are highly redundant and complementary, so each can be
sparsified *before* cross-modal attention, whose cost is quadratic in the number of tokens. On clips the
sequences are one-dimensional: the face crops over time (one crop in training: FER2013 faces are single
images), the speech encoder's frames (one per 80 ms, about 30 per clip) and the transcript's word pieces (about
14 per utterance, [CLS] and [SEP] included). Pipeline, per present modality ``m``::

    encoder tokens (B, N_m, d_m), mask (B, N_m)          frozen shipped encoder, as concat_clips
    -> LayerNorm + Linear -> (B, N_m, D) + modality embedding + a fixed sinusoid of the position (scaled)
    -> sparse pooling (fusion.methods.sparse.pool_sequences: every mode of the RGB-D model, on a (1, N) grid;
       each row pooled on its own real tokens, so padding is never kept)          -> (B, M_m, D)
    [CLS] + the pooled tokens of the present modalities -> the same 2-layer, 4-head, 128-wide transformer as
    concat_clips -> LayerNorm -> linear head on [CLS]

Learned scoring is cheap: ``topk`` scores every token with one linear unit on the projected token (kept tokens
are multiplied by the sigmoid of their score, so the scorer learns); the attention modes (``attn_avg``,
``topk_attn``) read the attention each token *receives* in a single-head, ``score_dim``-wide self-attention
inside its modality (``topk_attn``'s kept tokens carry the straight-through weight ``1 + a - stop_grad(a)``: the
value is unchanged, the scorer gets a gradient). ``random`` and ``strided_random`` are the controls.

Per call (:class:`~fusion.types.RunOptions`): ``pool``, ``keep_ratio`` and ``zero_block`` (the ablation: the
pooled tokens are zeroed, so the [CLS] token reads nothing from any modality). The trace
(:class:`~fusion.methods.sparse.SparseTrace` in ``FusionOutput.tokens``) holds the kept positions of each
modality, their scores and what each kept token covers (seconds of speech, word pieces, crops); with
``count_flops`` the fusion stage's own FLOPs (everything after the frozen encoders) are in ``FusionOutput.block``.

The training data are paired by label (see :mod:`fusion.models.clips`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from fusion.data.emotion import HOP_LENGTH, SAMPLE_RATE
from fusion.encoders.audio import TIME_STRIDE
from fusion.compute import counted_kernels
from fusion.encoders.common import EncoderOutput
from fusion.methods.sparse import POOL_MODES, PooledSequence, SparseTrace, pool_sequences
from fusion.models.clips import CLIP_MODALITIES, ClipClassifier, ClipConfig, TokenFusion, _config
from fusion.registry import register
from fusion.types import AUDIO, FACE, TEXT, BlockTrace, FusionError, RunOptions

AUDIO_TOKEN_SECONDS = TIME_STRIDE * HOP_LENGTH / SAMPLE_RATE  # one speech token covers 80 ms
SPAN_UNITS = {FACE: "crop", AUDIO: "s", TEXT: "word piece"}
ATTENTION_MODES = ("attn_avg", "topk_attn")  # the modes that read the attention scorer


@dataclass(frozen=True)
class ClipSparseConfig:
    """Sparse pooling of the clip tokens (the comments double as the app's tooltips)."""

    pool: str = "topk"  # how each modality's tokens are pooled before cross-modal attention; one of POOL_MODES
    keep_ratio: float = 0.1  # fraction of each modality's tokens kept (top-k modes); window modes: 1 per 1/r tokens
    window: int | None = None  # window length of the window modes; None = round(1 / keep_ratio)
    score_dim: int = 16  # query/key width of the single-head attention scorer (attention modes)
    seed: int = 0  # seed of the random / strided_random modes in eval mode (training draws fresh randomness)


@dataclass(frozen=True)
class SparseClipConfig(ClipConfig):
    """A clip model's settings plus the sparse pooling."""

    sparse: ClipSparseConfig = field(default_factory=ClipSparseConfig)


def check_pool(pool: str, keep_ratio: float) -> None:
    """A :class:`FusionError` for an unknown mode or a keep ratio outside (0, 1]."""
    if pool not in POOL_MODES:
        raise FusionError(f"unknown pool mode {pool!r}; expected one of {POOL_MODES}")
    if not 0.0 < float(keep_ratio) <= 1.0:
        raise FusionError(f"keep_ratio must be in (0, 1], got {keep_ratio}")


def sinusoid(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, dim) fixed sine/cosine position signal (Vaswani et al.): any sequence length, no parameters."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


def counted_fusion(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its FLOPs (``FlopCounterMode``). ``nn.TransformerEncoderLayer``'s fused inference kernel (taken
    in eval mode without gradients, e.g. by ``concat_clips``) is invisible to the counter, which would count the
    transformer layers as zero FLOPs: it is switched off while counting (a process-wide flag, restored after;
    the layers then run as separate ops, the same computation; :func:`fusion.compute.counted_kernels`), so the dense control is measured in full."""
    with counted_kernels(), FlopCounterMode(display=False) as fc:
        out = fn()
    return out, float(fc.get_total_flops())


class ReceivedAttention(nn.Module):
    """A cheap single-head self-attention inside one modality, used only to score: the attention each token
    receives (mean over the real queries), ``(B, N)``; padding neither attends nor is attended."""

    def __init__(self, *, dim: int, score_dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, score_dim)
        self.k = nn.Linear(dim, score_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k = self.q(x), self.k(x)  # (B, N, s)
        att = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5  # (B, N, N)
        att = att.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        m = mask.to(x.dtype)
        return (att * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)  # (B, N)


def _spans(p: PooledSequence, unit_scale: float) -> torch.Tensor:
    """(B, M, 2) [start, end) each kept token covers, in positions times ``unit_scale``: the window for the
    window modes, the token itself otherwise; -1 on padding."""
    start = p.kept.clone().float()
    end = start + 1
    if p.windows is not None:
        for i in range(p.kept.shape[0]):
            for j in range(int(p.mask[i].sum())):
                pos = (p.windows[i] == j).nonzero().squeeze(1)
                start[i, j], end[i, j] = float(pos.min()), float(pos.max()) + 1
    out = torch.stack([start, end], -1) * unit_scale
    return out.masked_fill(~p.mask[..., None], -1.0)


class SparseClipFusion(TokenFusion):
    """``concat_clips``' token transformer (same projections, width, layers, heads, head) with each modality's
    tokens sparsely pooled before it. ``forward`` returns ``(logits, trace)``."""

    def __init__(self, *, in_dims: Mapping[str, int], cfg: SparseClipConfig) -> None:
        super().__init__(in_dims=in_dims, cfg=cfg)
        sp = cfg.sparse
        check_pool(sp.pool, sp.keep_ratio)
        self.sparse = sp
        self.scorer = nn.ModuleDict({m: nn.Linear(cfg.dim, 1) for m in in_dims})  # pool "topk"
        self.attention = nn.ModuleDict({m: ReceivedAttention(dim=cfg.dim, score_dim=sp.score_dim)
                                        for m in in_dims})  # pools "attn_avg" / "topk_attn"
        self.pos_scale = nn.ParameterDict({m: nn.Parameter(torch.tensor(0.1)) for m in in_dims})

    def embed(self, m: str, e: EncoderOutput) -> torch.Tensor:
        """Project one modality's encoder tokens to the fusion width, with its modality and position signals."""
        x = self.proj[m](e.tokens) + self.modality_emb[m]  # (B, N, D)
        return x + self.pos_scale[m] * sinusoid(x.shape[1], x.shape[2], x.device)

    def forward(self, enc: Mapping[str, EncoderOutput], *, pool: str | None = None,
                keep_ratio: float | None = None, zero: bool = False, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, SparseTrace]:
        pool = self.sparse.pool if pool is None else pool
        keep_ratio = self.sparse.keep_ratio if keep_ratio is None else float(keep_ratio)
        check_pool(pool, keep_ratio)
        trace = SparseTrace(pool=pool, keep_ratio=keep_ratio)
        seqs, masks = [], []
        before, after = 0.0, 0.0
        for m in CLIP_MODALITIES:
            if m not in enc:
                continue
            e = enc[m]
            x, mask = self.embed(m, e), e.mask.bool()
            received = self.attention[m](x, mask) if pool in ATTENTION_MODES else None
            score = self.scorer[m](x).squeeze(-1) if pool == "topk" else None  # (B, N)
            p = pool_sequences(x, mask, mode=pool, keep_ratio=keep_ratio, window=self.sparse.window,
                               attn_received=received, score_logits=score, generator=generator)
            tok = p.tokens  # (B, M, D)
            if pool == "topk_attn":  # straight-through weight: value unchanged, the scorer gets a gradient
                a = received.gather(1, p.kept.clamp_min(0))[..., None]  # type: ignore[union-attr]
                tok = tok * (1 + a - a.detach())
            if zero:  # the ablation: nothing of this modality reaches the cross-modal layers
                tok = torch.zeros_like(tok)
            seqs.append(tok)
            masks.append(p.mask)
            trace.kept[m], trace.kept_mask[m] = p.kept, p.mask
            trace.scores[m], trace.weights[m], trace.windows[m] = p.scores, p.weights, p.windows
            trace.grid[m] = (1, int(x.shape[1]))
            trace.lengths[m] = mask.sum(1)
            trace.spans[m] = _spans(p, AUDIO_TOKEN_SECONDS if m == AUDIO else 1.0)
            trace.span_unit[m] = SPAN_UNITS[m]
            trace.window = p.window
            before += float(mask.sum(1).float().mean())
            after += float(p.mask.sum(1).float().mean())
        if not seqs:
            raise FusionError("no modality to fuse")
        trace.tokens_before, trace.tokens_after = round(before), round(after)
        b = seqs[0].shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), *seqs], 1)  # (B, 1 + sum M_m, D)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), *masks], 1)
        x = self.cross_modal(x, ~keep)
        return self.head(self.norm(x[:, 0])), trace

    def cross_modal(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The transformer layers written out (pre-norm attention, then MLP): the same computation as
        ``self.transformer`` in training mode, but never its fused inference kernel, which ``FlopCounterMode``
        cannot see (it would count the layers as zero FLOPs)."""
        for layer in self.transformer.layers:
            x = x + layer._sa_block(layer.norm1(x), None, pad)
            x = x + layer._ff_block(layer.norm2(x))
        return x


class SparseClipClassifier(ClipClassifier):
    """Three frozen encoders, sparse token fusion, 7 emotions (kind ``"sparse"``)."""

    KINDS = ClipClassifier.KINDS + ("sparse",)
    cfg: SparseClipConfig

    def build_fusion(self, dims: Mapping[str, int]) -> nn.Module:
        return SparseClipFusion(in_dims=dims, cfg=self.cfg)

    def _generator(self, pool: str) -> torch.Generator | None:
        """Eval-mode random pooling is seeded per call (same input, same draw); training draws fresh."""
        if self.training or pool not in ("random", "strided_random"):
            return None
        return torch.Generator().manual_seed(self.cfg.sparse.seed)

    def fuse(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """Logits with the model's own pooling (what training on cached encoder outputs calls)."""
        return self.fusion(enc, generator=self._generator(self.cfg.sparse.pool))[0]

    def fuse_with(self, enc: Mapping[str, EncoderOutput], *, pool: str | None = None,
                  keep_ratio: float | None = None, zero: bool = False, seed: int | None = None
                  ) -> tuple[torch.Tensor, SparseTrace]:
        """Logits and trace with this call's pooling (ablations on cached or precomputed encoder outputs);
        ``seed``: the random modes' seed for this call (default: the config's)."""
        pool = self.cfg.sparse.pool if pool is None else pool
        gen = self._generator(pool)
        if gen is not None and seed is not None:
            gen.manual_seed(seed)
        return self.fusion(enc, pool=pool, keep_ratio=keep_ratio, zero=zero, generator=gen)

    def fuse_traced(self, enc: Mapping[str, EncoderOutput], opts: RunOptions, *, counting: bool
                    ) -> tuple[torch.Tensor, dict[str, object]]:
        kw = {"pool": opts.pool, "keep_ratio": opts.keep_ratio, "zero": opts.zero_block}
        block = BlockTrace(zeroed=opts.zero_block)
        if counting:  # the fusion stage's own cost: projections, scoring, pooling, cross-modal layers, head
            with FlopCounterMode(display=False) as fc:
                logits, trace = self.fuse_with(enc, **kw)
            block.fusion_flops = trace.fusion_flops = float(fc.get_total_flops())
        else:
            logits, trace = self.fuse_with(enc, **kw)
        return logits, {"tokens": trace, "block": block}


@register("sparse_clips", task="emotion_clips")
def sparse_clips(**kw) -> SparseClipClassifier:
    """Sparse token fusion: each modality's tokens pooled to a few before the cross-modal transformer."""
    kw = dict(kw)
    sp = kw.pop("sparse", None) or {}
    base = _config(kw)
    try:
        sparse = ClipSparseConfig(**sp)
    except TypeError as e:
        raise FusionError(f"bad sparse config: {e}") from e
    check_pool(sparse.pool, sparse.keep_ratio)
    cfg = SparseClipConfig(**{f.name: getattr(base, f.name) for f in fields(base)}, sparse=sparse)
    return SparseClipClassifier(cfg=cfg, kind="sparse")
