"""Sparse token fusion after Ding et al., "Sparse Fusion for Multimodal Transformers" (Sparse Fusion
Transformers, SFT; arXiv:2111.11992, 2021).

The paper's observation: information is highly complementary across modalities, so each modality's token
set can be sparsified *before* cross-modal attention with little loss. A sparse-pooling block reduces every
unimodal token set (after a unimodal transformer layer), the pooled sets are concatenated, and the
cross-modal transformer works on the small set only; its quadratic attention cost falls by the square of
the keep ratio. The paper classifies from the fused set.

Adaptation to dense prediction (RGB-D segmentation). A classifier can drop tokens for good; a segmenter
must still answer for every pixel. Here the fused, pooled token set is kept as a *memory*: the primary
modality's full-resolution tokens (the output of its unimodal layer, all ``H*W`` of them) read it back
through one cross-attention layer, so every grid cell gets an output while the cross-modal layer itself only
sees ``M << N`` tokens. The read-back costs ``O(N * M)`` instead of the ``O(N^2)`` a dense cross-modal layer
would spend. Pipeline, per call::

    per modality m:  1x1 projection -> tokens (B, N_m, D) + 2-D positional + modality embedding
                     -> unimodal TransformerLayer (also returns its attention)
                     -> sparse pooling (POOL_MODES) -> (B, M_m, D)
    concat pooled tokens of the present modalities -> cross-modal TransformerLayer (the fusion proper)
    primary tokens (B, N_p, D) -- CrossAttention --> fused memory -> zero-initialised linear -> (B, C_out, H, W)

The output projection starts at zero, so the module is a no-op residual at initialisation: the caller adds
``out`` to its primary feature map (``feat = feat + out``) and training grows the fused contribution from
nothing. Absent modalities are simply skipped (the primary must be present).

The pooling catalogue (``POOL_MODES``) covers the family of strategies an SFT-style ablation compares (dense,
window max / mean, learned top-k, attention-weighted window mean, attention top-k, random and strided-random
baselines); it is this project's catalogue, not a transcription of the paper's table. Compute is meant to be
*measured* by the caller (``torch.utils.flop_counter.FlopCounterMode`` around :meth:`SparseTokenFusion.fuse`);
:func:`attention_flops` is only an analytic cross-check. Attention is written with explicit matmuls so the
counter sees it and the probabilities can be returned. Use the module on a low-resolution stage (e.g. 1/32
or 1/16 of the image): the unimodal layers are dense ``O(N^2)`` attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

POOL_MODES = ("none", "max", "avg", "topk", "attn_avg", "topk_attn", "random", "strided_random")
WINDOW_MODES = ("max", "avg", "attn_avg", "strided_random")  # non-overlapping windows of the token grid
TOPK_MODES = ("topk", "topk_attn", "random")  # keep k = num_kept(N, keep_ratio) tokens


@dataclass(frozen=True)
class SparseConfig:
    """Sparse token fusion settings (the comments double as the app's tooltips)."""

    dim: int = 96  # token width D of every transformer layer
    heads: int = 4  # attention heads (dim must be divisible by heads)
    mlp_ratio: float = 2.0  # hidden width of each layer's MLP, as a multiple of dim
    pool: str = "topk_attn"  # how each modality's tokens are sparsified before fusion; one of POOL_MODES
    keep_ratio: float = 0.1  # fraction of each modality's tokens kept by top-k / random pooling (1.0 = dense)
    window: tuple[int, int] | None = (3, 4)  # (rows, cols) window of the window modes; None = sized from keep_ratio
    pos_grid: int = 16  # side of the learned positional-embedding grid, resized bilinearly to each input
    seed: int = 0  # seed of the random / strided_random modes in eval mode (training draws fresh randomness)
    read_residual: bool = True  # read-back keeps the primary's own tokens (x + attn); False = only what it read


# ----------------------------------------------------------------------------------------------- helpers


def attention_flops(n_q: int, n_k: int, dim: int) -> float:
    """Analytic FLOPs of one attention's two matmuls, ``Q K^T`` and ``A V``, summed over heads.

    Each is ``n_q * n_k * dim`` multiply-accumulates, 2 FLOPs each: ``4 * n_q * n_k * dim``. Projections,
    softmax and the MLP are not included. A cross-check for measured numbers, not a substitute.
    """
    return 4.0 * n_q * n_k * dim


def num_kept(n: int, keep_ratio: float) -> int:
    """Tokens kept by the top-k style modes: ``max(1, round(keep_ratio * n))`` (Python rounding), at most n."""
    return min(n, max(1, round(keep_ratio * n)))


def pool_window(window: tuple[int, int] | None, keep_ratio: float) -> tuple[int, int]:
    """The window used by the window modes.

    An explicit ``window`` wins. With ``None`` the window area is about ``1 / keep_ratio``: rows
    ``floor(sqrt(1 / r))``, columns ``round(1 / (r * rows))`` (0.125 -> (2, 4), 0.25 -> (2, 2), 1.0 -> (1, 1)).
    """
    if window is not None:
        wh, ww = int(window[0]), int(window[1])
        if wh < 1 or ww < 1:
            raise ValueError(f"window must be positive, got {window}")
        return wh, ww
    area = 1.0 / keep_ratio
    wh = max(1, math.floor(math.sqrt(area)))
    return wh, max(1, round(area / wh))


def window_layout(grid: tuple[int, int], window: tuple[int, int],
                  device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Non-overlapping windows over a row-major ``(H, W)`` token grid, ragged edges padded.

    Returns ``cells`` (n_win, area) long grid index of each window slot (0 on padding), ``valid``
    (n_win, area) bool (False on padding) and ``window_of`` (H*W,) long window id of each grid cell.
    Windows are numbered row-major; slot 0 of every window (its top-left cell, the *anchor*) is always valid.
    """
    h, w = grid
    wh, ww = window
    nh, nw = -(-h // wh), -(-w // ww)
    rows = torch.arange(nh * wh, device=device).view(nh, 1, wh, 1)
    cols = torch.arange(nw * ww, device=device).view(1, nw, 1, ww)
    valid = (rows < h) & (cols < w)  # (nh, nw, wh, ww)
    cells = torch.where(valid, rows * w + cols, torch.zeros((), dtype=torch.long, device=device))
    window_of = ((torch.arange(h, device=device) // wh)[:, None] * nw
                 + (torch.arange(w, device=device) // ww)[None, :]).flatten()
    return cells.reshape(nh * nw, wh * ww), valid.reshape(nh * nw, wh * ww), window_of


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, m]]`` for x (B, N, D) and idx (B, M) -> (B, M, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _to_grid(per_slot: Tensor, cells: Tensor, valid: Tensor, n: int) -> Tensor:
    """Scatter window-slot values (B, n_win, area) back to the grid (B, n); every cell is one valid slot."""
    out = per_slot.new_zeros(per_slot.shape[0], n)
    return out.index_copy(1, cells[valid], per_slot[:, valid])


@dataclass
class Pooled:
    """Result of :func:`sparse_pool` for one modality (trace tensors are not detached here)."""

    tokens: Tensor  # (B, M, D) pooled tokens fed to the fusion layer
    kept: Tensor  # (B, M) long grid index of the token representing each pooled token
    windows: Tensor | None  # (B, N) long window id per grid cell, window modes only
    scores: Tensor  # (B, N) per-cell importance the mode used
    weights: Tensor  # (B, M) scores at the kept cells
    window: tuple[int, int] | None  # window used, window modes only


def sparse_pool(x: Tensor, *, mode: str, grid: tuple[int, int], keep_ratio: float,
                window: tuple[int, int] | None = None, attn_received: Tensor | None = None,
                score_logits: Tensor | None = None, generator: torch.Generator | None = None) -> Pooled:
    """Sparsify one modality's tokens ``x`` (B, N, D) laid out row-major on ``grid`` (H, W).

    ``attn_received`` (B, N): attention each token receives in the unimodal layer (mean over heads and
    queries); needed by ``attn_avg`` / ``topk_attn`` and used as the display score of ``none``.
    ``score_logits`` (B, N): the learned scorer's logits, needed by ``topk``. ``generator`` seeds the random
    modes (``None`` = global RNG). Modes:

    - ``none``: every token; scores = attention received (display only).
    - ``max``: per-channel max over each window; kept = the cell holding the most channels' maxima;
      scores = share of the window's channels a cell holds the max of.
    - ``avg``: mean over the valid cells of each window; kept = the window's anchor (top-left); scores = 1/count.
    - ``topk``: the k cells with the highest learned score, multiplied by sigmoid(score) so the scorer gets a
      gradient; scores = sigmoid(score).
    - ``attn_avg``: attention-received-weighted mean within each window (weights renormalised per window);
      kept = the heaviest cell; scores = the renormalised weights.
    - ``topk_attn``: the k cells receiving the most attention; scores = attention received.
    - ``random``: k uniformly random cells; scores = k / N (probability of being kept).
    - ``strided_random``: one uniformly random valid cell per window; scores = 1 / count.

    Top-k style modes keep k = :func:`num_kept` tokens, sorted by grid index; window modes keep one token
    per window of :func:`pool_window`.
    """
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pool mode {mode!r}; expected one of {POOL_MODES}")
    b, n, _ = x.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"grid {grid} does not match {n} tokens")
    dev = x.device

    if mode == "none":
        scores = attn_received if attn_received is not None else x.new_full((b, n), 1.0 / n)
        kept = torch.arange(n, device=dev).expand(b, n)
        return Pooled(x, kept, None, scores, scores, None)

    if mode in TOPK_MODES:
        k = num_kept(n, keep_ratio)
        if mode == "topk":
            if score_logits is None:
                raise ValueError("pool 'topk' needs score_logits")
            scores = torch.sigmoid(score_logits)  # (B, N)
            idx = score_logits.topk(k, dim=1).indices
        elif mode == "topk_attn":
            if attn_received is None:
                raise ValueError("pool 'topk_attn' needs attn_received")
            scores = attn_received
            idx = attn_received.topk(k, dim=1).indices
        else:  # random
            noise = torch.rand(b, n, generator=generator, device=dev)
            idx = noise.topk(k, dim=1).indices
            scores = x.new_full((b, n), k / n)
        kept = idx.sort(dim=1).values  # (B, k)
        weights = scores.gather(1, kept)
        tokens = _gather(x, kept)  # (B, k, D)
        if mode == "topk":
            tokens = tokens * weights.unsqueeze(-1)
        return Pooled(tokens, kept, None, scores, weights, None)

    # window modes
    win = pool_window(window, keep_ratio)
    cells, valid, window_of = window_layout(grid, win, dev)
    n_win, area = cells.shape
    xs = x[:, cells.flatten()].view(b, n_win, area, -1)  # (B, n_win, area, D)
    vmask = valid.view(1, n_win, area)
    count = valid.sum(1).to(x.dtype)  # (n_win,)
    if mode == "max":
        neg = torch.finfo(x.dtype).min
        tokens, arg = xs.masked_fill(~vmask.unsqueeze(-1), neg).max(dim=2)  # (B, n_win, D) each
        wins = F.one_hot(arg, area).to(x.dtype).mean(2)  # (B, n_win, area): share of channels won
        slot = wins.argmax(2)  # (B, n_win)
    elif mode == "avg":
        tokens = (xs * vmask.unsqueeze(-1)).sum(2) / count.view(1, n_win, 1)
        wins = (vmask / count.view(1, n_win, 1)).to(x.dtype).expand(b, -1, -1)
        slot = torch.zeros(b, n_win, dtype=torch.long, device=dev)
    elif mode == "attn_avg":
        if attn_received is None:
            raise ValueError("pool 'attn_avg' needs attn_received")
        a = attn_received[:, cells.flatten()].view(b, n_win, area) * vmask
        wins = a / a.sum(2, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)  # (B, n_win, area)
        tokens = (xs * wins.unsqueeze(-1)).sum(2)
        slot = wins.argmax(2)
    else:  # strided_random
        noise = torch.rand(b, n_win, area, generator=generator, device=dev)
        slot = noise.masked_fill(~vmask, -1.0).argmax(2)  # (B, n_win)
        tokens = xs.gather(2, slot.view(b, n_win, 1, 1).expand(-1, -1, 1, xs.shape[-1])).squeeze(2)
        wins = (vmask / count.view(1, n_win, 1)).to(x.dtype).expand(b, -1, -1)
    kept = cells[torch.arange(n_win, device=dev), slot]  # (B, n_win)
    scores = _to_grid(wins, cells, valid, n)  # (B, N)
    weights = wins.gather(2, slot.unsqueeze(-1)).squeeze(-1)
    return Pooled(tokens, kept, window_of.expand(b, n), scores, weights, win)


@dataclass
class PooledSequence:
    """Result of :func:`pool_sequences`: a batch of variable-length 1-D sequences, each pooled on its own."""

    tokens: Tensor  # (B, M, D) pooled tokens, zero-padded to the batch's longest pooled row
    mask: Tensor  # (B, M) bool, True = a real pooled token (padding is never kept)
    kept: Tensor  # (B, M) long position (in the input sequence) representing each pooled token, -1 on padding
    windows: Tensor | None  # (B, N) long window id per position (-1 on padding), window modes only
    scores: Tensor  # (B, N) per-position importance the mode used, 0 on padding
    weights: Tensor  # (B, M) scores at the kept positions, 0 on padding
    window: tuple[int, int] | None  # (1, w) window used, window modes only


def sequence_window(keep_ratio: float, window: int | None = None) -> tuple[int, int]:
    """The (1, w) window of the window modes on a 1-D sequence: ``window`` if given, else ``round(1 / r)``."""
    w = int(window) if window is not None else max(1, round(1.0 / keep_ratio))
    if w < 1:
        raise ValueError(f"window must be positive, got {window}")
    return 1, w


def pool_sequences(x: Tensor, mask: Tensor, *, mode: str, keep_ratio: float, window: int | None = None,
                   attn_received: Tensor | None = None, score_logits: Tensor | None = None,
                   generator: torch.Generator | None = None) -> PooledSequence:
    """:func:`sparse_pool` on 1-D token sequences with padding: ``x`` (B, N, D), ``mask`` (B, N) True = real.

    Each row's real positions form a ``(1, L_b)`` grid that is pooled on its own (so a row's result does not
    depend on the padding its batch gave it, and padding is never kept); the pooled rows are right-padded to
    the longest. ``attn_received`` / ``score_logits`` (B, N) as in :func:`sparse_pool` (padding ignored).
    Top-k modes keep ``num_kept(L_b, keep_ratio)`` tokens of row b, window modes ``ceil(L_b / w)``.
    """
    _check_ratio(keep_ratio)
    b, n, _ = x.shape
    if tuple(mask.shape) != (b, n):
        raise ValueError(f"mask must be {(b, n)}, got {tuple(mask.shape)}")
    win = sequence_window(keep_ratio, window)
    rows = []
    for i in range(b):
        pos = mask[i].nonzero().squeeze(1)  # (L,) real positions
        if pos.numel() == 0:
            raise ValueError("every sequence needs at least one real token")
        sub = lambda t: None if t is None else t[i:i + 1, pos]  # noqa: E731  (1, L)
        p = sparse_pool(x[i:i + 1, pos], mode=mode, grid=(1, pos.numel()), keep_ratio=keep_ratio, window=win,
                        attn_received=sub(attn_received), score_logits=sub(score_logits), generator=generator)
        rows.append((pos, p))
    m = max(p.tokens.shape[1] for _, p in rows)
    tokens = torch.stack([F.pad(p.tokens[0], (0, 0, 0, m - p.tokens.shape[1])) for _, p in rows])  # (B, M, D)
    keep = torch.zeros(b, m, dtype=torch.bool, device=x.device)
    kept = torch.full((b, m), -1, dtype=torch.long, device=x.device)
    weights = x.new_zeros(b, m)
    scores = x.new_zeros(b, n)
    windowed = rows[0][1].windows is not None
    windows = torch.full((b, n), -1, dtype=torch.long, device=x.device) if windowed else None
    for i, (pos, p) in enumerate(rows):
        k = p.tokens.shape[1]
        keep[i, :k] = True
        kept[i, :k] = pos[p.kept[0]]
        weights[i, :k] = p.weights[0].detach()
        scores[i, pos] = p.scores[0].detach()
        if windows is not None and p.windows is not None:
            windows[i, pos] = p.windows[0]
    return PooledSequence(tokens, keep, kept, windows, scores, weights, rows[0][1].window)


# ------------------------------------------------------------------------------------------------ blocks


def _attend(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention with explicit matmuls: q (B, h, Nq, d), k/v (B, h, Nk, d)."""
    att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, Nq, Nk)
    att = att.softmax(dim=-1)
    return att @ v, att  # (B, h, Nq, d), (B, h, Nq, Nk)


class Mlp(nn.Sequential):
    """Two-layer GELU MLP."""

    def __init__(self, *, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``.

    :meth:`forward` returns ``(x, attn)`` with the attention probabilities ``attn`` (B, heads, N, N).
    """

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y, att = _attend(qkv[0], qkv[1], qkv[2])  # (B, h, N, d/h), (B, h, N, N)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        x = x + self.mlp(self.norm2(x))
        return x, att


class CrossAttention(nn.Module):
    """Pre-norm cross-attention layer: queries ``x`` read keys/values from ``memory``, residual, then MLP.

    ``residual=False`` drops the query path (``y = attn(x, memory)``, then ``y + MLP(LN(y))``): the output is
    a function of what the queries read, so the memory cannot be bypassed.

    :meth:`forward` returns ``(x, attn)`` with ``attn`` (B, heads, Nq, Nk).
    """

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float, residual: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.residual = residual
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio))

    def forward(self, x: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        b, nq, d = x.shape
        nk = memory.shape[1]
        hd = d // self.heads
        q = self.q(self.norm_q(x)).view(b, nq, self.heads, hd).transpose(1, 2)  # (B, h, Nq, d/h)
        kv = self.kv(self.norm_kv(memory)).view(b, nk, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        y, att = _attend(q, kv[0], kv[1])  # (B, h, Nq, d/h), (B, h, Nq, Nk)
        y = self.proj(y.transpose(1, 2).reshape(b, nq, d))
        # residual=False: the output holds only what was read from the memory (the queries pick, they do not
        # pass through), so nothing reaches the caller except through the pooled, fused tokens
        x = x + y if self.residual else y
        x = x + self.mlp(self.norm2(x))
        return x, att


# ------------------------------------------------------------------------------------------------ module


@dataclass
class SparseTrace:
    """What sparse fusion did on one call; per-modality dicts hold only the modalities present.

    Tensors are detached. ``kept`` indexes the row-major ``grid`` of its modality, so
    ``scores[m][b].view(grid[m])`` is a heatmap and ``kept[m][b]`` the surviving cells.
    """

    kept: dict[str, Tensor] = field(default_factory=dict)  # (B, M) long grid index representing each pooled token
    windows: dict[str, Tensor | None] = field(default_factory=dict)  # (B, N) long window id per cell, or None
    scores: dict[str, Tensor] = field(default_factory=dict)  # (B, N) per-cell importance the pooling used
    weights: dict[str, Tensor] = field(default_factory=dict)  # (B, M) score of each kept cell
    grid: dict[str, tuple[int, int]] = field(default_factory=dict)  # (H, W) token grid of each modality
    tokens_before: int = 0  # sum over present modalities of N = H * W
    tokens_after: int = 0  # sum over present modalities of M (the fusion layer's sequence length)
    pool: str = "none"  # pooling mode used on this call
    keep_ratio: float = 1.0  # keep ratio requested on this call
    window: tuple[int, int] | None = None  # window used by a window mode, else None
    fusion_flops: float | None = None  # measured FLOPs of pooling + cross-modal layer + read-back (measure=True)
    fusion_bytes: float | None = None  # bytes allocated by those ops (measure=True)
    unimodal_flops: float | None = None  # measured FLOPs of projection + unimodal layers (measure=True)
    dense_fusion_flops: float | None = None  # the same with pool "none"; filled by the caller
    # 1-D sequences (emotion clips, :func:`pool_sequences`): rows hold different numbers of kept tokens
    kept_mask: dict[str, Tensor] = field(default_factory=dict)  # (B, M) bool, True = a real kept token
    lengths: dict[str, Tensor] = field(default_factory=dict)  # (B,) long real tokens of each row before pooling
    spans: dict[str, Tensor] = field(default_factory=dict)  # (B, M, 2) what each kept token covers: [start, end)
    span_unit: dict[str, str] = field(default_factory=dict)  # unit of ``spans``: "s" (audio), "word piece", "crop"


@dataclass
class Encoded:
    """Per-modality output of :meth:`SparseTokenFusion.encode`."""

    tokens: Tensor  # (B, N, D) unimodal-layer output
    attn: Tensor  # (B, heads, N, N) unimodal attention probabilities
    grid: tuple[int, int]  # (H, W)


class SparseTokenFusion(nn.Module):
    """Sparse token fusion of several feature maps into the primary one (SFT, Ding et al. 2021, adapted to
    dense prediction; see the module docstring).

    ``forward(maps)`` returns ``(out, trace)``; ``out`` (B, out_channels, H, W) is on the primary's grid and
    is zero at initialisation, meant to be added to the caller's primary feature map. The stages are public
    so compute can be measured where it is spent: :meth:`encode` (projection + unimodal layers),
    :meth:`pool` (sparsification) and :meth:`fuse` (cross-modal layer + read-back + output projection).
    """

    def __init__(self, *, in_channels: dict[str, int], primary: str, out_channels: int,
                 cfg: SparseConfig) -> None:
        super().__init__()
        if primary not in in_channels:
            raise ValueError(f"primary {primary!r} is not among the modalities {list(in_channels)}")
        if cfg.pool not in POOL_MODES:
            raise ValueError(f"unknown pool mode {cfg.pool!r}; expected one of {POOL_MODES}")
        _check_ratio(cfg.keep_ratio)
        self.cfg = cfg
        self.primary = primary
        self.modalities = tuple(in_channels)
        self.out_channels = out_channels
        d = cfg.dim
        self.proj_in = nn.ModuleDict({m: nn.Linear(c, d) for m, c in in_channels.items()})
        self.pos = nn.Parameter(torch.zeros(1, d, cfg.pos_grid, cfg.pos_grid))
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, d)) for m in in_channels})
        self.unimodal = nn.ModuleDict({m: TransformerLayer(dim=d, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)
                                       for m in in_channels})
        self.scorer = nn.ModuleDict({m: nn.Linear(d, 1) for m in in_channels})  # used by pool "topk" only
        self.fusion = TransformerLayer(dim=d, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)
        self.read_back = CrossAttention(dim=d, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, residual=cfg.read_residual)
        self.out = nn.Linear(d, out_channels)
        nn.init.trunc_normal_(self.pos, std=0.02)
        for p in self.modality_embed.values():
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.out.weight)  # zero output: the module starts as a no-op residual
        nn.init.zeros_(self.out.bias)

    def encode(self, maps: dict[str, Tensor]) -> dict[str, Encoded]:
        """Project, embed and run the unimodal layer of every present modality (in constructor order)."""
        unknown = set(maps) - set(self.modalities)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected some of {list(self.modalities)}")
        if self.primary not in maps:
            raise ValueError(f"the primary modality {self.primary!r} must be present")
        enc = {}
        for m in self.modalities:
            if m not in maps:
                continue
            x = maps[m]
            _, _, h, w = x.shape
            t = self.proj_in[m](x.flatten(2).transpose(1, 2))  # (B, N, D)
            pos = F.interpolate(self.pos, size=(h, w), mode="bilinear", align_corners=False)  # (1, D, H, W)
            t = t + pos.flatten(2).transpose(1, 2) + self.modality_embed[m]
            t, att = self.unimodal[m](t)  # (B, N, D), (B, h, N, N)
            enc[m] = Encoded(t, att, (h, w))
        return enc

    def pool(self, name: str, enc: Encoded, *, pool: str, keep_ratio: float,
             generator: torch.Generator | None = None) -> Pooled:
        """Sparsify one modality's encoded tokens (see :func:`sparse_pool`)."""
        received = enc.attn.mean(dim=(1, 2))  # (B, N) attention each token receives
        logits = self.scorer[name](enc.tokens).squeeze(-1) if pool == "topk" else None  # (B, N)
        return sparse_pool(enc.tokens, mode=pool, grid=enc.grid, keep_ratio=keep_ratio, window=self.cfg.window,
                           attn_received=received, score_logits=logits, generator=generator)

    def fuse(self, pooled: Tensor, primary_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Cross-modal layer over ``pooled`` (B, M, D), read-back by ``primary_tokens`` (B, N, D) -> (B, C, H, W).

        Run it under ``FlopCounterMode`` to measure the fusion cost; with the concatenation of all
        unimodal tokens as ``pooled`` it gives the dense reference.
        """
        fused, _ = self.fusion(pooled)  # (B, M, D)
        read, _ = self.read_back(primary_tokens, fused)  # (B, N, D)
        b, n, _ = read.shape
        return self.out(read).transpose(1, 2).reshape(b, self.out_channels, *grid)

    def forward(self, maps: dict[str, Tensor], *, pool: str | None = None, keep_ratio: float | None = None,
                measure: bool = False) -> tuple[Tensor, SparseTrace]:
        """Fuse ``maps`` (name -> (B, C_m, H_m, W_m)); ``pool`` / ``keep_ratio`` override the config per call.

        ``measure``: count the FLOPs (FlopCounterMode) of the unimodal stage and of the cross-modal stage
        (pooling, fusion layer, read-back) separately, and the bytes the cross-modal stage allocates."""
        if measure:
            from torch.utils.flop_counter import FlopCounterMode

            from fusion.compute import AllocationCounter
            with FlopCounterMode(display=False) as fc_uni:
                enc = self.encode(maps)
            with FlopCounterMode(display=False) as fc_fuse, AllocationCounter() as mem:
                out, trace = self._pool_and_fuse(enc, pool, keep_ratio)
            trace.unimodal_flops = float(fc_uni.get_total_flops())
            trace.fusion_flops, trace.fusion_bytes = float(fc_fuse.get_total_flops()), float(mem.bytes)
            return out, trace
        return self._pool_and_fuse(self.encode(maps), pool, keep_ratio)

    def _pool_and_fuse(self, enc: dict[str, Encoded], pool: str | None, keep_ratio: float | None
                       ) -> tuple[Tensor, SparseTrace]:
        pool = self.cfg.pool if pool is None else pool
        keep_ratio = self.cfg.keep_ratio if keep_ratio is None else float(keep_ratio)
        if pool not in POOL_MODES:
            raise ValueError(f"unknown pool mode {pool!r}; expected one of {POOL_MODES}")
        _check_ratio(keep_ratio)
        gen = None
        if not self.training and pool in ("random", "strided_random"):
            dev = enc[self.primary].tokens.device
            gen = torch.Generator(device=dev).manual_seed(self.cfg.seed)
        trace = SparseTrace(pool=pool, keep_ratio=keep_ratio)
        parts = []
        for m, e in enc.items():
            p = self.pool(m, e, pool=pool, keep_ratio=keep_ratio, generator=gen)
            parts.append(p.tokens)
            trace.kept[m] = p.kept.detach()
            trace.windows[m] = None if p.windows is None else p.windows.detach()
            trace.scores[m] = p.scores.detach()
            trace.weights[m] = p.weights.detach()
            trace.grid[m] = e.grid
            trace.tokens_before += e.tokens.shape[1]
            trace.tokens_after += p.tokens.shape[1]
            trace.window = p.window
        prim = enc[self.primary]
        out = self.fuse(torch.cat(parts, dim=1), prim.tokens, prim.grid)  # (B, C_out, H, W)
        return out, trace


def _check_ratio(keep_ratio: float) -> None:
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
