"""What the pages call: list, pick and load checkpoints, segment one RGB-D pair, measure its cost.

Everything here takes and returns NumPy arrays at the user's resolution; resizing to the model's input
size (240x320 by default) and back happens here, once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from fusion.checkpoints import ASSETS, list_cards
from fusion.checkpoints import load_checkpoint as _load
from fusion.compute import Timing, time_interleaved
from fusion.methods.sparse import TOPK_MODES, WINDOW_MODES
from fusion.types import AUDIO, DEPTH, FACE, RGB, TEXT, FusionError, SegmentationOutput

STATIC_FUSION = "static_rgbd"  # the card the pages call "the static fusion model" whenever it is shipped


@dataclass
class SegResult:
    """One segmentation, ready to draw."""

    labels: np.ndarray  # (H, W) int class ids at the RGB's resolution (0..C-1 in the training label set)
    out: SegmentationOutput  # the model's typed output at model resolution
    flops: float | None  # FLOPs spent on this input (FlopCounterMode on the path that ran)
    ms: float | None  # wall time of the forward (median of `repeats` timed runs, no counter); None: not timed
    branch: int | None = None  # DynMM: branch taken (k = depth fused into the first k stages)
    gate_probs: list[float] | None = None  # DynMM: gate probabilities over branches 0..4
    present: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    fusion_flops: float | None = None  # sparse / DEQ: FLOPs of the fusion block alone (nested counter)
    fusion_bytes: float | None = None  # sparse / DEQ: bytes the fusion block's ops allocated
    iter_labels: dict[int, np.ndarray] = field(default_factory=dict)  # DEQ: prediction at kept solver iterations


def list_checkpoints(task: str = "rgbd_seg", root: Path = ASSETS, *, include_controls: bool = False
                     ) -> list[dict[str, Any]]:
    """Model cards of the shipped checkpoints of ``task`` (empty when none are there).

    Controls (cards with ``control_for``: a baseline trained for the same extra epochs as a method, kept as
    evidence for ``fusion.evaluate``) are not models to offer on the pages: left out unless
    ``include_controls``."""
    try:
        cards = list_cards(task, root)
    except FusionError:
        return []
    return [c for c in cards if include_controls or not is_control(c)]


def is_control(card: dict[str, Any]) -> bool:
    """True for a control checkpoint (its card names the method it controls for under ``control_for``)."""
    return bool(card.get("control_for"))


def is_dedicated(card: dict[str, Any]) -> bool:
    """True for a dedicated single-modality baseline (trained with a modality always absent): such a card
    shares its registry name with the fusion model but is not one, so pages that show fusion skip it."""
    mods = (card.get("config") or {}).get("modalities") if isinstance(card.get("config"), dict) else None
    return bool(card.get("trained_without")) or (isinstance(mods, (list, tuple)) and len(mods) == 1)


def preferred_card(cards: Iterable[dict[str, Any]], name: str = STATIC_FUSION) -> dict[str, Any] | None:
    """The card to show as *the* model of a kind among ``cards`` (e.g. every static-fusion card): the one
    named exactly ``name`` when it is there; else the first not marked ``superseded``; else the first.
    Dedicated single-modality baselines and controls are never picked; None when nothing is left."""
    usable = [c for c in cards if not is_dedicated(c) and not is_control(c)]
    exact = [c for c in usable if c.get("name") == name]
    current = [c for c in usable if not c.get("superseded")]
    return (exact or current or usable or [None])[0]


def keep_ratio_applies(pool: str, window: tuple[int, int] | list[int] | None) -> bool:
    """Whether sparse pooling mode ``pool`` reads ``keep_ratio``: the top-k and random modes keep
    ``keep_ratio`` of the tokens; the window modes only when no fixed window is configured (the window is
    then sized from the ratio); ``none`` (dense) never."""
    return pool in TOPK_MODES or (pool in WINDOW_MODES and window is None)


def load_checkpoint(name: str, root: Path = ASSETS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Model (eval mode, float32) and its card. Raises :class:`FusionError`."""
    return _load(name, root)


def model_size(shape: tuple[int, int], *, area: int = 240 * 320, multiple: int = 16) -> tuple[int, int]:
    """Input size for an image of ``shape`` (H, W): about ``area`` pixels, the aspect ratio kept, both sides
    multiples of ``multiple``. 480x640 -> 240x320."""
    h, w = shape
    s = (area / (h * w)) ** 0.5
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


def to_tensors(rgb: np.ndarray, depth_m: np.ndarray | None, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """uint8 (H,W,3) RGB and float metres (H,W) depth -> model inputs at ``size`` (depth resized nearest)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FusionError(f"RGB must be uint8 (H,W,3), got {rgb.dtype} {rgb.shape}")
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    inputs = {RGB: F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)}
    if depth_m is not None:
        if depth_m.shape != rgb.shape[:2]:
            raise FusionError(f"depth {depth_m.shape} must match the RGB's size {rgb.shape[:2]}")
        d = torch.from_numpy(np.array(depth_m, dtype=np.float32, copy=True))[None, None]  # (1, 1, H, W)
        inputs[DEPTH] = F.interpolate(d, size=size, mode="nearest")
    return inputs


def _prepared(model: torch.nn.Module, rgb: np.ndarray, depth_m: np.ndarray | None, size: tuple[int, int] | None,
              force_branch: int | None, drop_rgb: bool, opts: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Model inputs and call options for one forward (shared by :func:`segment` and :func:`forward_call`)."""
    inputs = to_tensors(rgb, depth_m, size or model_size(rgb.shape[:2]))
    if drop_rgb:
        if DEPTH not in inputs:
            raise FusionError("switch at least one modality on")
        del inputs[RGB]
    kw = dict(opts)
    if getattr(model, "dynamic", False):
        kw["force_branch"] = force_branch
    return inputs, kw


@torch.no_grad()
def segment(model: torch.nn.Module, rgb: np.ndarray, depth_m: np.ndarray | None, *, size: tuple[int, int] | None = None,
            count_flops: bool = True, repeats: int = 3, force_branch: int | None = None, drop_rgb: bool = False,
            **opts) -> SegResult:
    """Segment one RGB(-D) input; FLOPs counted on the executed path, time measured without the counter.

    ``size``: model input (H, W); default :func:`model_size` of the RGB (aspect ratio kept, ~240x320).
    ``repeats``: timed runs after one warm-up (median in ``ms``); 0 = not timed here (``ms`` None), e.g.
    when the caller times several models against each other with :func:`time_forwards`.
    ``drop_rgb``: remove the photo (models that accept depth alone). ``opts``: the model's per-call method
    settings (sparse ``pool`` / ``keep_ratio``; DEQ ``solver`` / ``max_iter`` / ``tol`` / ``keep_states_at``;
    adapted ``adapter``)."""
    inputs, kw = _prepared(model, rgb, depth_m, size, force_branch, drop_rgb, opts)
    out = model(inputs, count_flops=count_flops, **kw)
    kw.pop("keep_states_at", None)
    times = []
    if repeats > 0:
        model(inputs, **kw)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model(inputs, **kw)
            times.append((time.perf_counter() - t) * 1e3)

    def labels_of(lg: torch.Tensor) -> np.ndarray:
        return F.interpolate(lg, size=rgb.shape[:2], mode="bilinear", align_corners=False).argmax(1)[0].numpy(
        ).astype(np.int32)

    return SegResult(labels=labels_of(out.logits), out=out, fusion_flops=out.block.fusion_flops if out.block else None,
                     fusion_bytes=out.block.fusion_bytes if out.block else None,
                     iter_labels={t: labels_of(lg) for t, lg in out.iterate_logits.items()},
                     flops=None if out.flops is None else float(out.flops[0]),
                     ms=float(np.median(times)) if times else None,
                     branch=None if out.branch is None else int(out.branch[0]),
                     gate_probs=None if out.gate_probs is None else [float(p) for p in out.gate_probs[0]],
                     present=out.present, notes=list(out.notes))


def forward_call(model: torch.nn.Module, rgb: np.ndarray, depth_m: np.ndarray | None, *,
                 size: tuple[int, int] | None = None, force_branch: int | None = None, drop_rgb: bool = False,
                 **opts) -> Callable[[], SegmentationOutput]:
    """A zero-argument forward of ``model`` on this input, as :func:`segment` runs it but without the FLOP
    counter or kept iterates: the thing :func:`time_forwards` times. Inputs are prepared once, here."""
    inputs, kw = _prepared(model, rgb, depth_m, size, force_branch, drop_rgb, opts)
    kw.pop("keep_states_at", None)

    def call() -> SegmentationOutput:
        with torch.no_grad():
            return model(inputs, **kw)

    return call


def time_forwards(calls: Mapping[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5
                  ) -> dict[str, Timing]:
    """Time the forwards of :func:`forward_call` against each other: one warm-up each, then ``repeats``
    rounds with the models alternating (:func:`fusion.compute.time_interleaved`); median and spread per
    name."""
    return time_interleaved(calls, warmup=warmup, repeats=repeats)


# ---------------------------------------------------------------------------
# Emotion clips
# ---------------------------------------------------------------------------


@dataclass
class ClipResult:
    """One clip through one clip model, ready to show."""

    probs: list[float]  # fused per-emotion probabilities (order: fusion.data.emotion.EMOTIONS)
    label: str  # the arg-max emotion
    per_modality: dict[str, list[float]]  # each encoder's own head, for the encoders that ran
    present: tuple[str, ...]  # modalities given to the model
    ran: tuple[str, ...]  # encoders that actually ran (DynMM skips the others)
    flops: float  # FLOPs of this forward, FlopCounterMode on the path that ran
    ms: float | None  # wall time (median of `repeats` runs), None when not timed
    gate_probs: list[float] | None = None  # DynMM: the gate's branch probabilities
    branch: str | None = None  # DynMM: the subset that ran, e.g. "audio+text"
    branch_names: tuple[str, ...] = ()
    full_flops: float | None = None  # DynMM: the all-present-modalities branch on the same input (for "saved")
    full_ms: float | None = None
    notes: list[str] = field(default_factory=list)


def clips_inputs(faces: np.ndarray | None = None, log_mel: np.ndarray | None = None, text: str | None = None,
                 *, tokenizer: Any = None) -> dict[str, torch.Tensor]:
    """One clip as model inputs: ``faces`` (T, 48, 48) uint8 crops, ``log_mel`` (64, T) dB, ``text`` a string
    (tokenized by ``tokenizer``, the text encoder's ``tokenize``). Missing ones are left out.

    Lives here, not in :mod:`fusion.tasks` (which re-exports it), so that pages reach it without reaching the
    task descriptors' training and evaluation commands."""
    out: dict[str, torch.Tensor] = {}
    if faces is not None and len(faces):
        f = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.uint8)).float().div(255)
        if f.dim() == 2:
            f = f[None]
        out[FACE] = f[None, :, None]  # (1, T, 1, 48, 48)
        out["face_mask"] = torch.ones(1, f.shape[0], dtype=torch.bool)
    if log_mel is not None and np.asarray(log_mel).shape[-1] > 0:
        a = torch.from_numpy(np.ascontiguousarray(log_mel, dtype=np.float32))
        out[AUDIO] = a[None]
        out["audio_mask"] = torch.ones(1, a.shape[-1], dtype=torch.bool)
    if text is not None and text.strip():
        if tokenizer is None:
            raise FusionError("text needs the text encoder's tokenizer")
        ids, mask = tokenizer([text.strip()])
        out[TEXT], out["text_mask"] = ids, mask
    if not any(m in out for m in (FACE, AUDIO, TEXT)):
        raise FusionError("nothing usable: give a face, speech or a transcript")
    return out


def clip_inputs(model: Any, clip: Any, modalities: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Model inputs from a decoded clip (:class:`fusion.data.clips.ClipInput`): its face crops, the log-mel of its
    audio and its transcript, keeping only ``modalities`` (the page's toggles) among the usable ones."""
    from fusion.data.emotion import log_mel

    keep = set(clip.usable if modalities is None else modalities) & set(clip.usable)
    return clips_inputs(faces=clip.face_crops if FACE in keep else None,
                        log_mel=log_mel(clip.audio) if AUDIO in keep and clip.audio is not None else None,
                        text=clip.transcript if TEXT in keep else None,
                        tokenizer=model.encoders[TEXT].tokenize)


def clip_probabilities(out: Any) -> tuple[list[float], dict[str, list[float]]]:
    """The first clip of a clip model's output as per-emotion probabilities: fused, and each encoder's own head
    (for the encoders that ran on it)."""
    probs = torch.softmax(out.logits[0].float(), 0).tolist()
    per = {m: torch.softmax(lg[0].float(), 0).tolist() for m, lg in out.modality_logits.items()
           if bool(torch.isfinite(lg[0]).all())}
    return probs, per


@torch.no_grad()
def analyse_clip(model: Any, inputs: Mapping[str, torch.Tensor], *, repeats: int = 3,
                 compare_full: bool = True) -> ClipResult:
    """Run ``model`` on one clip's ``inputs``: probabilities, FLOPs on the path that ran, wall time, and for DynMM
    the all-modality branch on the same input measured the same way (what the gate saved)."""
    from fusion.data.emotion import EMOTIONS

    out = model(inputs, count_flops=True)
    ms = None
    full_flops = full_ms = None
    if repeats:
        calls: dict[str, Callable[[], Any]] = {"model": lambda: model(inputs)}
        full_k = None
        if getattr(model, "kind", None) == "dynmm" and compare_full and out.gate is not None:
            usable = [k for k, s in enumerate(model.branches) if set(s) <= set(out.present)]
            full_k = usable[-1] if usable else None
            if full_k is not None:
                calls["full"] = lambda: model(inputs, force_branch=full_k)
        times = time_interleaved(calls, repeats=repeats)
        ms = times["model"].median_ms
        if full_k is not None:
            full_flops = float(model(inputs, count_flops=True, force_branch=full_k).flops[0])
            full_ms = times["full"].median_ms
    probs, per = clip_probabilities(out)
    gate = out.gate
    return ClipResult(probs=probs, label=EMOTIONS[max(range(len(probs)), key=probs.__getitem__)], per_modality=per,
                      present=out.present, ran=out.ran, flops=float(out.flops[0]), ms=ms,
                      gate_probs=None if gate is None else gate.probs[0].tolist(),
                      branch=None if gate is None else gate.names[int(gate.branch[0])],
                      branch_names=() if gate is None else gate.names, full_flops=full_flops, full_ms=full_ms,
                      notes=list(out.notes))
