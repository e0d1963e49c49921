"""Missing-modality adapters on the emotion-clip model (Reza, Prater-Bennette & Asif, "Robust Multimodal Learning
with Missing Modalities via Parameter-Efficient Adaptation", arXiv:2310.03986, 2023), and the dedicated subset
models they are measured against.

* ``adapted_clips`` — the shipped all-modality ``concat_clips`` network (concatenated-token transformer), frozen,
  plus one adapter set per proper non-empty modality subset (``face``, ``audio``, ``text``, ``face+audio``,
  ``face+text``, ``audio+text``). A call switches on the set of the modalities present (the shell,
  :meth:`fusion.core.FusionModel.adapter_subset`); with all three present, or ``adapter=False``, the frozen base
  runs alone. Adapter kinds (:mod:`fusion.methods.adapters`): ``lora`` on the Linear layers — each modality's input
  projection, the attention output projection, the two MLP layers of both transformer layers and the head;
  ``ssf`` and ``bitfit`` on those Linear layers and every LayerNorm (input norms, the layers' pre-norms, the
  final norm). The packed q/k/v input projection of ``nn.MultiheadAttention`` is one weight tensor, not a
  layer, and stays frozen without an adapter; the modality embeddings and [CLS] token are frozen too.
* ``dedicated_clips`` — the same concat architecture trained from scratch on one subset only (the control: what
  a model built for that subset reaches in the same epochs).

The adapted transformer runs its layers step by step (the same modules and weights as ``concat_clips``'s
``nn.TransformerEncoder``, attention computed here with the packed projection and the wrapped ``out_proj``):
PyTorch's fused inference path would read the raw weights and skip the adapters.

The emotion corpora are paired by label, not recorded together (:data:`fusion.data.emotion.PAIRING_NOTE`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from fusion.encoders.common import EncoderOutput
from fusion.methods.adapters import (AdapterConfig, add_adapters, adapter_parameters, base_param_count,
                                     count_adapter_params, use_subset)
from fusion.models.clips import CLIP_MODALITIES, ClipClassifier, ClipConfig, TokenFusion, _config
from fusion.registry import register
from fusion.types import FusionError, FusionOutput, RunOptions

# the adapter keys: every proper non-empty subset of the modalities, in canonical order, singles first
CLIP_SUBSETS: tuple[str, ...] = ("face", "audio", "text", "face+audio", "face+text", "audio+text")
BASE_CHECKPOINT = "concat_clips"  # the frozen all-modality model the adapters sit on


def subset_key(modalities) -> str | None:
    """The adapter key of a set of present modalities ("face+text"), None when all three (or none) are present."""
    ms = [m for m in CLIP_MODALITIES if m in set(modalities)]
    key = "+".join(ms)
    return key if key in CLIP_SUBSETS else None


@dataclass(frozen=True)
class AdaptedClipConfig(ClipConfig):
    """A clip model config with the adapters' settings."""

    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # kind (lora / ssf / bitfit) and LoRA rank


@dataclass(frozen=True)
class DedicatedClipConfig(ClipConfig):
    """A clip model config naming the one modality subset a dedicated model is built for."""

    modalities: tuple[str, ...] = CLIP_MODALITIES  # the modalities the model is trained on and reads


def _attention(mha: nn.MultiheadAttention, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Self-attention with ``mha``'s packed q/k/v weights, padding masked, through ``mha.out_proj`` called as a
    module (so an adapter wrapping it applies). ``x`` (B, N, D), ``keep`` (B, N) True on real tokens."""
    b, n, d = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    att = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5  # (B, h, N, N)
    att = att.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    att = F.dropout(att, mha.dropout, mha.training)
    return mha.out_proj((att @ v).transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class AdaptableTokenFusion(TokenFusion):
    """:class:`~fusion.models.clips.TokenFusion` (same modules, same weights) run layer by layer so that adapters
    wrapping its Linear and LayerNorm layers, the attention output projection included, take effect."""

    def layers(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for layer in self.transformer.layers:  # pre-norm: x + SA(LN(x)), then x + MLP(LN(x))
            x = x + layer.dropout1(_attention(layer.self_attn, layer.norm1(x), keep))
            x = x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x))))))
        return x


def adapter_target(kind: str):
    """Which layers of the fusion network get adapters: every Linear but the packed q/k/v projection (LoRA); every
    Linear and LayerNorm (SSF, BitFit)."""
    def select(name: str, module: nn.Module) -> bool:
        if isinstance(module, nn.Linear):
            return True
        return kind != "lora" and isinstance(module, nn.LayerNorm)
    return select


class AdaptedClipClassifier(ClipClassifier):
    """The frozen ``concat_clips`` network with one adapter set per proper modality subset (switched on per call
    from the modalities present)."""

    KINDS = ("adapted",)
    adapted = True
    loaded_elsewhere = ("encoders.",)  # fusion.checkpoints: the encoders load from their own checkpoints

    def __init__(self, *, cfg: AdaptedClipConfig) -> None:
        super().__init__(cfg=cfg, kind="adapted")
        target = adapter_target(cfg.adapter.kind)
        # shared layers get one set per subset; a modality's input projection only the sets of subsets that hold it
        names = add_adapters(self.fusion, cfg=cfg.adapter, subsets=CLIP_SUBSETS, attention_run_by_caller=True,
                             select=lambda n, mod: not n.startswith("proj.") and target(n, mod))
        for m in CLIP_MODALITIES:
            names += add_adapters(self.fusion, cfg=cfg.adapter, subsets=tuple(s for s in CLIP_SUBSETS
                                                                              if m in s.split("+")),
                                  select=lambda n, mod, m=m: n.startswith(f"proj.{m}.") and target(n, mod))
        self.adapted_layers = tuple(names)
        for p in self.parameters():  # add_adapters froze the fusion's base; the encoders are frozen already
            p.requires_grad_(False)
        for p in adapter_parameters(self):
            p.requires_grad_(True)

    def build_fusion(self, dims: Mapping[str, int]) -> nn.Module:
        return AdaptableTokenFusion(in_dims=dims, cfg=self.cfg)

    def train(self, mode: bool = True) -> "AdaptedClipClassifier":
        super().train(mode)
        return self

    def adapter_subset(self, present: tuple[str, ...], opts: RunOptions) -> str | None:
        """The present modalities' adapter set; None (the frozen base) with all three or ``adapter=False``."""
        if opts.adapter in (False, None, "none"):
            return None
        return subset_key(present)

    def fuse(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """Fusion on cached encoder outputs with the adapter set of the modalities in ``enc`` (training, the
        per-subset evaluation columns)."""
        with use_subset(subset_key(enc)):
            return self.fusion(enc)

    def fuse_base(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """The frozen base alone on ``enc`` (adapters off)."""
        with use_subset(None):
            return self.fusion(enc)

    def fuse_traced(self, enc: Mapping[str, EncoderOutput], opts: RunOptions, *, counting: bool
                    ) -> tuple[torch.Tensor, dict[str, object]]:
        return self.fusion(enc), {}  # the shell already switched on this call's subset (or none)

    def run(self, inputs, present, opts, *, counting):
        out, later = super().run(inputs, present, opts, counting=counting)
        key = self.adapter_subset(present, opts)
        if key is not None:
            out.notes.append(f"adapter set '{key}' ({self.cfg.adapter.kind}) switched on for the modalities present")
        elif subset_key(present) is not None:
            out.notes.append("adapters off: the frozen all-modality model alone")
        return out, later

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a shipped adapter checkpoint stores: the adapter tensors only (the card names the base)."""
        from fusion.methods.adapters import adapter_state_dict

        return adapter_state_dict(self)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` where ``state_dict`` may hold the adapter tensors alone (a shipped adapter
        checkpoint, a best-epoch snapshot): the frozen base keeps its current weights."""
        from fusion.methods.adapters import adapter_state_dict

        adapters = set(adapter_state_dict(self))
        own = {k: v for k, v in self.state_dict().items() if k not in state_dict and k not in adapters}
        return nn.Module.load_state_dict(self, {**own, **state_dict}, strict=strict, assign=assign)

    def param_counts(self) -> dict[str, dict[str, float]]:
        """Added parameters per subset: the count, its share of the whole model a user runs (frozen encoders
        included) and of the fusion network alone (percent)."""
        total = base_param_count(self)
        fusion = base_param_count(self.fusion)
        return {s: {"params": count_adapter_params(self, s),
                    "share_of_model_percent": round(100 * count_adapter_params(self, s) / total, 3),
                    "share_of_fusion_percent": round(100 * count_adapter_params(self, s) / fusion, 2)}
                for s in CLIP_SUBSETS}


class DedicatedClipClassifier(ClipClassifier):
    """The concat-token transformer built and trained for one modality subset: reads only its modalities (others
    are ignored, with a note); a missing one of them is a :class:`FusionError`."""

    KINDS = ("dedicated",)

    def __init__(self, *, cfg: DedicatedClipConfig) -> None:
        mods = tuple(m for m in CLIP_MODALITIES if m in set(cfg.modalities))
        if not mods or len(mods) != len(cfg.modalities):
            raise FusionError(f"modalities must be a non-empty subset of {CLIP_MODALITIES}, got {cfg.modalities!r}")
        super().__init__(cfg=dataclasses.replace(cfg, modalities=mods), kind="dedicated")
        self.own = mods

    def build_fusion(self, dims: Mapping[str, int]) -> nn.Module:
        return TokenFusion(in_dims={m: dims[m] for m in self.cfg.modalities}, cfg=self.cfg)

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        missing = [m for m in self.own if inputs.get(m) is None]
        if missing:
            raise FusionError(f"this model was trained on {'+'.join(self.own)} only: give "
                              + " and ".join(f"'{m}'" for m in missing))
        super().check_inputs(inputs)
        return self.own

    def run(self, inputs, present, opts, *, counting):
        out, later = super().run(inputs, present, opts, counting=counting)
        ignored = [m for m in CLIP_MODALITIES if m not in self.own and inputs.get(m) is not None]
        out.notes = [f"dedicated {'+'.join(self.own)} model"] + [f"{m} given but not used: this model was "
                                                                  "trained without it" for m in ignored]
        return out, later

    def fuse(self, enc: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """Fusion on its own modalities' outputs (a subset of them when ``enc`` lacks one)."""
        return self.fusion({m: e for m, e in enc.items() if m in self.own})


def _split_kw(kw: dict, key: str) -> tuple[ClipConfig, object]:
    kw = dict(kw)
    extra = kw.pop(key, None)
    return _config(kw), extra


@register("adapted_clips", task="emotion_clips")
def adapted_clips(**kw) -> AdaptedClipClassifier:
    """The frozen concat-token model with LoRA / SSF / BitFit adapters per missing-modality subset (Reza et al.)."""
    base, ad = _split_kw(kw, "adapter")
    try:
        acfg = ad if isinstance(ad, AdapterConfig) else AdapterConfig(**(ad or {}))
    except (TypeError, ValueError) as e:
        raise FusionError(f"bad adapter config: {e}") from e
    return AdaptedClipClassifier(cfg=AdaptedClipConfig(**{f.name: getattr(base, f.name)
                                                          for f in dataclasses.fields(base)}, adapter=acfg))


@register("dedicated_clips", task="emotion_clips")
def dedicated_clips(**kw) -> DedicatedClipClassifier:
    """The concat-token model trained from scratch on one modality subset (``modalities``): the adapters' control."""
    base, mods = _split_kw(kw, "modalities")
    mods = tuple(mods) if mods else CLIP_MODALITIES
    return DedicatedClipClassifier(cfg=DedicatedClipConfig(**{f.name: getattr(base, f.name)
                                                              for f in dataclasses.fields(base)}, modalities=mods))
