"""Emotion clips (face + speech + transcript) on the shared model shell: three frozen pre-trained encoders, a
fusion method, a 7-way head.

**The training data are paired by label.** FER2013 faces, RAVDESS speech and MELD utterances are not recordings
of the same moments: a trimodal training or test sample joins a face, a clip and an utterance that carry the
same emotion label (:data:`fusion.data.emotion.PAIRING_NOTE`). The models learn to combine three independent
pieces of evidence for one label, not the interplay of one person's face, voice and words.

Three registered models:

* ``late_clips`` — late fusion: each encoder's own 7-way head, log-probabilities averaged with learned
  per-modality weights (absent modalities drop out of the average).
* ``concat_clips`` — a concatenated-token transformer: each modality's tokens projected to a common width,
  tagged with a modality embedding, concatenated behind a [CLS] token, two transformer layers, a linear head on
  [CLS]. An absent modality contributes no tokens.
* ``dynmm_clips`` — DynMM at the modality level (Xue & Marculescu, arXiv:2204.00102): the gate modality's
  encoder (text by default: it is cheap and the most accurate alone) always runs and feeds a small gate, which
  picks one branch, a modality subset that contains the gate modality; only the chosen branch's other
  encoders run. The branches share one concatenated-token fusion network (trained on every subset).

Inputs (tensors only; :func:`fusion.tasks.clips_inputs` builds them from crops, log-mels and strings):
``face`` (B, T, 1, 48, 48) crops in [0, 1] or uint8 with ``face_mask`` (B, T); ``audio`` (B, 64, T) log-mel dB
with ``audio_mask`` (B, T); ``text`` (B, L) MiniLM word-piece ids with ``text_mask`` (B, L). A missing modality is
absent (its mask too). Encoders are loaded from their shipped checkpoints (``encoders``) and frozen.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from fusion.core import FusionModel, Later
from fusion.data.emotion import NUM_EMOTIONS
from fusion.encoders.common import EncoderOutput
from fusion.methods.dynmm import mix_branches, resource_loss, route, run_chosen
from fusion.registry import register
from fusion.types import AUDIO, FACE, TEXT, FusionError, FusionOutput, GateTrace, RunOptions

CLIP_MODALITIES: tuple[str, ...] = (FACE, AUDIO, TEXT)
ENCODER_CHECKPOINTS: dict[str, str] = {FACE: "face_fer2013", AUDIO: "audio_ravdess", TEXT: "text_meld"}
_REGISTRY_ENCODERS = {FACE: "face_encoder", AUDIO: "audio_encoder", TEXT: "text_encoder"}


@dataclass(frozen=True)
class ClipGateConfig:
    """DynMM on clips: which modality always runs and feeds the gate, and the gate's width."""

    gate_modality: str = TEXT  # the encoder(s) that run on every input and feed the gate ("text", "face+text")
    hidden: int = 64  # width of the gate's MLP
    tau_end: float = 0.1  # softmax temperature of the trained gate (inference probabilities)
    gumbel: bool = False


@dataclass(frozen=True)
class ClipConfig:
    """Settings of a clip model."""

    dim: int = 128  # width of the fusion transformer
    layers: int = 2  # transformer layers
    heads: int = 4
    dropout: float = 0.1
    num_classes: int = NUM_EMOTIONS
    encoders: bool = True  # load the shipped encoder checkpoints (False: untrained encoders, for tests)
    branch_fusion: str = "tokens"  # DynMM: the branches' shared fusion, "tokens" (concat transformer) or "late"
    gate: ClipGateConfig = field(default_factory=ClipGateConfig)


def gate_set(gate_modality: str) -> tuple[str, ...]:
    """The always-run modalities named by ``gate_modality`` ("text" or "face+text"), in canonical order."""
    parts = [m for m in gate_modality.split("+") if m]
    bad = [m for m in parts if m not in CLIP_MODALITIES]
    if bad or not parts or len(parts) == len(CLIP_MODALITIES):
        raise FusionError(f"gate_modality must name one or two of {CLIP_MODALITIES} joined by '+', got {gate_modality!r}")
    return tuple(m for m in CLIP_MODALITIES if m in parts)


def branch_subsets(gate_modality: str) -> tuple[tuple[str, ...], ...]:
    """The DynMM branches: every modality subset that contains the gate's modalities, smallest first (the
    gate's own modalities alone, then with one more, then all three)."""
    g = set(gate_set(gate_modality))
    others = [m for m in CLIP_MODALITIES if m not in g]
    subsets = [g | set(extra) for r in range(len(others) + 1) for extra in itertools.combinations(others, r)]
    return tuple(tuple(m for m in CLIP_MODALITIES if m in s) for s in subsets)


@functools.lru_cache(maxsize=None)
def _shipped_encoder(modality: str) -> nn.Module:
    """A shipped encoder checkpoint, loaded once per process: every clip model holds the same frozen module (the
    app keeps three or more clip models; each used to load MiniLM and the others again)."""
    from fusion.checkpoints import load_checkpoint

    enc, _ = load_checkpoint(ENCODER_CHECKPOINTS[modality])
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


def _load_encoder(modality: str, trained: bool) -> nn.Module:
    if trained:
        return _shipped_encoder(modality)
    else:
        from fusion.registry import create

        enc = create(_REGISTRY_ENCODERS[modality], pretrained=False)
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


class TokenFusion(nn.Module):
    """Concatenated-token transformer over any subset of the modalities' token sequences."""

    def __init__(self, *, in_dims: Mapping[str, int], cfg: ClipConfig) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.dim)) for m, d in in_dims.items()})
        self.modality_emb = nn.ParameterDict({m: nn.Parameter(torch.zeros(cfg.dim)) for m in in_dims})
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        for p in self.modality_emb.values():
            nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.cls, std=0.02)

    def forward(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """``enc``: the present modalities' encoder outputs (same batch) -> (B, C) logits. Face crops are pooled
        into one token (the training faces are single images; a video's crops are averaged)."""
        x, keep = self.tokens(enc)
        return self.head(self.norm(self.layers(x, keep)[:, 0]))

    def tokens(self, enc: Mapping[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] + every present modality's projected tokens ``(B, 1 + N, D)`` and which are real ``(B, 1 + N)``."""
        seqs, masks = [], []
        for m in CLIP_MODALITIES:
            if m not in enc:
                continue
            e = enc[m]
            tok, mask = (e.pooled[:, None], e.mask.any(1, keepdim=True)) if m == FACE else (e.tokens, e.mask)
            seqs.append(self.proj[m](tok) + self.modality_emb[m])
            masks.append(mask)
        if not seqs:
            raise FusionError("no modality to fuse")
        b = seqs[0].shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), *seqs], 1)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), *masks], 1)
        return x, keep

    def layers(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The transformer layers over the token sequence (padding masked)."""
        return self.transformer(x, src_key_padding_mask=~keep)


class LateFusion(nn.Module):
    """Weighted average of the encoders' own log-probabilities (weights softplus-positive, renormalised over the
    present modalities) plus a class bias."""

    def __init__(self, *, cfg: ClipConfig) -> None:
        super().__init__()
        self.weight = nn.ParameterDict({m: nn.Parameter(torch.tensor(0.5413)) for m in CLIP_MODALITIES})  # softplus=1
        self.bias = nn.Parameter(torch.zeros(cfg.num_classes))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        ws = {m: F.softplus(self.weight[m]) for m in enc}
        total = sum(ws.values())
        mix = sum(ws[m] / total * F.log_softmax(enc[m].logits, 1) for m in enc)
        return self.scale * mix + self.bias


class ClipGate(nn.Module):
    """The DynMM gate on the always-run modalities' pooled embeddings and their own heads' probabilities (a few
    kFLOPs: the encoders it reads run anyway)."""

    def __init__(self, *, dims: Mapping[str, int], num_branches: int, cfg: ClipGateConfig) -> None:
        super().__init__()
        self.modalities = tuple(dims)
        width = sum(d + NUM_EMOTIONS for d in dims.values())
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, num_branches))

    def forward(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        return self.mlp(torch.cat([t for m in self.modalities
                                   for t in (enc[m].pooled, F.softmax(enc[m].logits, 1))], 1))


class ClipClassifier(FusionModel):
    """Three frozen encoders, one fusion method, 7 emotions. ``kind``: "late", "concat" or "dynmm"."""

    task = "emotion_clips"

    KINDS: tuple[str, ...] = ("late", "concat", "dynmm")  # a subclass adds its own kind and overrides the hooks

    def __init__(self, *, cfg: ClipConfig, kind: str) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise FusionError(f"unknown clip fusion kind {kind!r}")
        self.gate_modalities = gate_set(cfg.gate.gate_modality)
        self.cfg, self.kind = cfg, kind
        self.modalities = CLIP_MODALITIES
        self.encoders = nn.ModuleDict({m: _load_encoder(m, cfg.encoders) for m in CLIP_MODALITIES})
        dims = {m: int(self.encoders[m].out_dim) for m in CLIP_MODALITIES}
        if cfg.branch_fusion not in ("tokens", "late"):
            raise FusionError(f"branch_fusion must be 'tokens' or 'late', got {cfg.branch_fusion!r}")
        self.fusion: nn.Module = self.build_fusion(dims)
        self.branches = branch_subsets(cfg.gate.gate_modality) if kind == "dynmm" else (CLIP_MODALITIES,)
        if kind == "dynmm":
            self.gate = ClipGate(dims={m: dims[m] for m in self.gate_modalities}, num_branches=len(self.branches),
                                 cfg=cfg.gate)
        # measured FLOPs of each branch on the reference clip, normalised to max 1 (set by calibrate_costs)
        self.register_buffer("branch_cost", torch.linspace(0.25, 1.0, len(self.branches)))

    def build_fusion(self, dims: Mapping[str, int]) -> nn.Module:
        """The fusion module on the encoders' outputs (``dims``: each encoder's token width). A method subclass
        overrides this hook, :meth:`fuse_traced` and, if it trains differently, :meth:`fusion_loss`."""
        late = self.kind == "late" or (self.kind == "dynmm" and self.cfg.branch_fusion == "late")
        return LateFusion(cfg=self.cfg) if late else TokenFusion(in_dims=dims, cfg=self.cfg)

    def train(self, mode: bool = True) -> "ClipClassifier":
        super().train(mode)
        self.encoders.eval()  # frozen, BatchNorm statistics included
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a clip checkpoint stores: everything but the encoders (they load from their own checkpoints)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoders.")}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, the frozen encoders kept as loaded from their own checkpoints when
        ``state_dict`` lacks them."""
        own = {k: v for k, v in self.state_dict().items() if k.startswith("encoders.") and k not in state_dict}
        return super().load_state_dict({**own, **state_dict}, strict=strict, assign=assign)

    # ---- inputs ---------------------------------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        present = tuple(m for m in CLIP_MODALITIES if inputs.get(m) is not None)
        if not present:
            raise FusionError("give at least one of 'face', 'audio' and 'text'")
        sizes = {int(inputs[m].shape[0]) for m in present}
        if len(sizes) != 1:
            raise FusionError(f"the modalities hold different batch sizes: {sorted(sizes)}")
        shapes = {FACE: 5, AUDIO: 3, TEXT: 2}
        for m in present:
            x, mask = inputs[m], inputs.get(f"{m}_mask")
            if x.dim() != shapes[m] or (m == FACE and tuple(x.shape[2:]) != (1, 48, 48)) or (
                    m == AUDIO and x.shape[1] != 64) or (m == TEXT and x.is_floating_point()):
                want = {FACE: "(B, T, 1, 48, 48)", AUDIO: "(B, 64, T)", TEXT: "(B, L) word-piece ids"}[m]
                raise FusionError(f"'{m}' must be {want}, got {tuple(x.shape)}")
            t = x.shape[1] if m != AUDIO else x.shape[2]
            if mask is not None and tuple(mask.shape) != (x.shape[0], t):
                raise FusionError(f"'{m}_mask' must be {(x.shape[0], t)}, got {tuple(mask.shape)}")
            if mask is not None and not bool(mask.any(1).all()):
                raise FusionError(f"'{m}' has an input with no real {'crop' if m == FACE else 'frame' if m == AUDIO else 'token'}")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise FusionError(f"'{m}' contains NaN or infinity")
        return present

    def batch_size(self, inputs: Mapping[str, torch.Tensor]) -> int:
        return int(next(inputs[m] for m in CLIP_MODALITIES if inputs.get(m) is not None).shape[0])

    def select(self, inputs: Mapping[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        return {k: v[i:i + 1] for k, v in inputs.items() if v is not None}

    # ---- pieces -----------------------------------------------------------------------------------------
    def encode(self, modality: str, inputs: Mapping[str, torch.Tensor], idx: torch.Tensor | None = None
               ) -> EncoderOutput:
        """Run one frozen encoder on (the ``idx`` rows of) its input."""
        x, mask = inputs[modality], inputs.get(f"{modality}_mask")
        if idx is not None:
            x, mask = x[idx], (None if mask is None else mask[idx])
        if modality == TEXT and mask is None:
            mask = x != 0
        with torch.no_grad():
            return self.encoders[modality](x, mask)

    def fuse(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """The fusion method on encoder outputs (what training on cached encoder outputs calls too)."""
        return self.fusion(enc)

    def fuse_traced(self, enc: Mapping[str, EncoderOutput], opts: RunOptions, *, counting: bool
                    ) -> tuple[torch.Tensor, dict[str, object]]:
        """The forward's fusion step: logits and extra :class:`FusionOutput` fields (a method's trace: kept tokens,
        solver trace, ...), with the call's options. Static fusion: :meth:`fuse` and no trace."""
        return self.fuse(enc), {}

    def fusion_loss(self, enc: Mapping[str, EncoderOutput], y: torch.Tensor) -> torch.Tensor:
        """The training loss on cached encoder outputs (``fusion.clip_train.train_fusion``): cross-entropy of the
        fused prediction; DynMM: the mean over every branch, so each branch learns."""
        logits = self.branch_logits(enc) if self.kind == "dynmm" else self.fuse(enc)[None]
        return torch.stack([F.cross_entropy(lg, y) for lg in logits]).mean()

    def branch_logits(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """DynMM training: every branch's logits ``(K, B, C)`` from all three encoders' outputs."""
        return torch.stack([self.fuse({m: enc[m] for m in s}) for s in self.branches])

    # ---- forward ----------------------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, torch.Tensor], present: tuple[str, ...], opts: RunOptions, *,
            counting: bool) -> tuple[FusionOutput, Later]:
        notes = [f"{m} absent: not used" for m in CLIP_MODALITIES if m not in present]
        if self.kind != "dynmm":
            enc = {m: self.encode(m, inputs) for m in present}
            logits, trace = self.fuse_traced(enc, opts, counting=counting)
            return FusionOutput(logits=logits, present=present, notes=notes, ran=present,
                                modality_logits={m: e.logits for m, e in enc.items()}, **trace), None
        gs = self.gate_modalities
        names = tuple("+".join(s) for s in self.branches)
        forced_ok = opts.force_branch is None or set(self.branches[opts.force_branch]) <= set(present)
        if not set(gs) <= set(present) or not forced_ok:
            # no gate input (or a forced branch that needs an absent modality): fuse what is present
            enc = {m: self.encode(m, inputs) for m in present}
            missing = [m for m in gs if m not in present]
            if missing:
                notes.append(f"{' and '.join(missing)} absent: the gate cannot run; all present modalities fused")
            usable = [k for k, s in enumerate(self.branches) if set(s) <= set(present)]
            gate = None
            if usable:
                probs = F.one_hot(torch.full((self.batch_size(inputs),), usable[-1], dtype=torch.long),
                                  len(self.branches)).float()
                gate = GateTrace(probs=probs, branch=probs.argmax(1), names=names)
            return FusionOutput(logits=self.fuse(enc), present=present, notes=notes, ran=present, gate=gate,
                                modality_logits={m: e.logits for m, e in enc.items()}), None
        ge = {m: self.encode(m, inputs) for m in gs}
        weights, probs, branch = route(self.gate(ge), training=self.training, tau=opts.tau,
                                       tau_end=self.cfg.gate.tau_end, gumbel=self.cfg.gate.gumbel,
                                       force_branch=opts.force_branch)
        if weights is not None:  # training with raw inputs: every branch, mixed
            enc = {**ge, **{m: self.encode(m, inputs) for m in CLIP_MODALITIES if m not in gs}}
            all_logits = self.branch_logits(enc)
            return FusionOutput(logits=mix_branches(weights, all_logits), present=present, notes=notes,
                                ran=CLIP_MODALITIES, gate=GateTrace(probs=probs, branch=branch, names=names,
                                branch_logits=all_logits, resource_loss=resource_loss(probs, self.branch_cost))), None
        # a branch needing an absent modality is replaced by the largest branch within what is present
        usable = [k for k, s in enumerate(self.branches) if set(s) <= set(present)]
        fallback = {k: max(u for u in usable if set(self.branches[u]) <= set(self.branches[k]))
                    for k in range(len(self.branches))}
        chosen = torch.tensor([k if k in usable else fallback[k] for k in branch.tolist()], dtype=torch.long)
        if not torch.equal(chosen, branch):
            notes.append("the gate chose a modality that is absent for some inputs: they ran the branch of what "
                         "is present")
        ran: set[str] = set(gs)
        mod_logits: dict[str, torch.Tensor] = {m: e.logits for m, e in ge.items()}
        b = self.batch_size(inputs)
        first = next(iter(ge.values())).logits
        logits = first.new_zeros(b, self.cfg.num_classes)

        def run_branch(k: int, idx: torch.Tensor) -> torch.Tensor:
            enc = {m: _rows(e, idx) for m, e in ge.items()}
            for m in self.branches[k]:
                if m not in gs:
                    enc[m] = self.encode(m, inputs, idx)
                    ran.add(m)
                    mod_logits.setdefault(m, first.new_full((b, self.cfg.num_classes), float("nan")))[idx] = \
                        enc[m].logits
            return self.fuse(enc)

        logits = run_chosen(chosen, run_branch, logits)
        return FusionOutput(logits=logits, present=present, notes=notes, gate=GateTrace(
            probs=probs, branch=chosen, names=names), ran=tuple(m for m in CLIP_MODALITIES if m in ran),
            modality_logits=mod_logits), None

    # ---- compute bookkeeping ----------------------------------------------------------------------------
    @torch.no_grad()
    def branch_flops(self, inputs: Mapping[str, torch.Tensor]) -> list[float]:
        """Measured FLOPs of each branch's path (gate included) on ``inputs`` (one clip)."""
        was = self.training
        self.eval()
        out = [float(self(inputs, count_flops=True, force_branch=k).flops[0]) for k in range(len(self.branches))]
        self.train(was)
        return out

    def calibrate_costs(self, inputs: Mapping[str, torch.Tensor]) -> list[float]:
        """Set ``branch_cost`` from measured FLOPs on ``inputs`` (normalised to the most expensive branch)."""
        flops = self.branch_flops(inputs)
        self.branch_cost.copy_(torch.tensor(flops) / max(flops))
        return flops


def _rows(e: EncoderOutput, idx: torch.Tensor) -> EncoderOutput:
    return EncoderOutput(tokens=e.tokens[idx], mask=e.mask[idx], pooled=e.pooled[idx], logits=e.logits[idx],
                         modality=e.modality)


def _config(kw: dict) -> ClipConfig:
    """ClipConfig from keyword arguments; the gate keys may be flat (as cards store them) or nested under
    ``gate``. ``pretrained`` (written by every card) is ignored: the encoders come from ``encoders``."""
    kw.pop("pretrained", None)
    gate = dict(kw.pop("gate", None) or {})
    gate.update({k: kw.pop(k) for k in list(kw) if k in ClipGateConfig.__dataclass_fields__})
    try:
        return ClipConfig(**kw, gate=ClipGateConfig(**gate))
    except TypeError as e:
        raise FusionError(f"bad clip model config: {e}") from e


@register("late_clips", task="emotion_clips")
def late_clips(**kw) -> ClipClassifier:
    """Late fusion of the three encoders' own predictions (learned modality weights)."""
    return ClipClassifier(cfg=_config(dict(kw)), kind="late")


@register("concat_clips", task="emotion_clips")
def concat_clips(**kw) -> ClipClassifier:
    """Concatenated-token transformer over face, speech and word-piece tokens."""
    return ClipClassifier(cfg=_config(dict(kw)), kind="concat")


@register("dynmm_clips", task="emotion_clips")
def dynmm_clips(**kw) -> ClipClassifier:
    """DynMM over modality subsets: the gate modality always runs; the gate picks which others run."""
    return ClipClassifier(cfg=_config(dict(kw)), kind="dynmm")
