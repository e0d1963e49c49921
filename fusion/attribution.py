"""Which modality drove this prediction? Exact per-modality Shapley values and per-element attribution, with
captum's perturbation methods (no gradients: a DynMM model's skipped branches carry none, and perturbing the
inputs works the same for every model of both tasks).

**The score.** Attribution explains one scalar of one input (batch of one): the *log-probability* of a class.
Clips: ``log p(emotion)`` (:func:`clip_score`); RGB-D: the mean, over a pixel mask, of ``log p(class)`` per pixel
(:func:`rgbd_score`; default mask: the pixels the full prediction labels with that class).

**The empty subset.** With no modality the model cannot run. Its score is defined as the score of a *uniform
prediction*: ``log(1/C)`` (C classes), for both tasks. So the Shapley values of the present modalities sum to
``score(all present) - log(1/C)`` (efficiency), how far the evidence moved the class's log-probability away
from knowing nothing. A non-empty subset the model refuses (a :class:`FusionError`, e.g. DynMM RGB-D without
the photo) is scored the same way — no prediction, so no evidence — and listed in ``refused``.

**Exact.** :func:`modality_shapley` gives captum's :class:`~captum.attr.ShapleyValues` a ``(1, M)`` presence
vector (1 = the modality is given, baseline 0 = absent, i.e. left out of the inputs dict); captum walks all M!
orderings, which is exact. Each of the 2^M subsets is evaluated once (memoised), so M = 3 costs 7 forwards.

**Shares** (:func:`share_sentence`): ``phi_m / sum_k |phi_k|`` — a modality's share of all the movement; a
negative value is said as "lowered", never folded into a positive percentage.

**Per element** (:func:`element_attribution`): captum's :class:`~captum.attr.FeatureAblation` over a ``(1, N)``
keep vector, one entry per element (RGB-D: a cell of a grid over the image or the depth map; clips: a face
crop, an audio window, a word piece). Ablating an element = RGB cell -> the image's mean colour, depth cell -> 0
(what the models see for missing depth), face crop / audio window -> masked out, word piece -> ``[PAD]`` and
masked out. The value is ``score(all) - score(element ablated)``: positive = the element supported the class.
``batch=B`` scores B ablated inputs per forward (stacked into one batch): the same values, fewer model calls.

**Picking the class on the image** (:func:`picked_class`): the RGB-D pages draw the prediction with a grid of
clickable points (:func:`picker_grid`); the point a click selects gives the pixel, and the class predicted there is
the one explained.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fusion.types import AUDIO, DEPTH, FACE, MODALITIES, RGB, TEXT, FusionError, FusionOutput

Score = Callable[[FusionOutput], torch.Tensor]  # output of a batch of one -> scalar tensor
AUDIO_FRAMES_PER_S = 100  # 10 ms hop
MASK_OF = {FACE: "face_mask", AUDIO: "audio_mask", TEXT: "text_mask"}


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class ScoreSpec:
    """A scalar score of a model output and its value with no modality (a uniform prediction: log(1/C))."""

    fn: Score
    empty: float
    label: str  # what it scores, e.g. "sofa" or "happy"
    rows: Callable[[FusionOutput], torch.Tensor] | None = None  # the score of each input of a batch: (B,)

    def batch(self, out: FusionOutput, n: int) -> torch.Tensor:
        """The ``n`` scores of a batched output (``rows``; without it only a batch of one can be scored)."""
        if self.rows is not None:
            return self.rows(out).reshape(n)
        if n != 1:
            raise FusionError("this score explains a batch of one only (it has no per-row form)")
        return self.fn(out).reshape(1)


def clip_score(out_or_classes: int, cls: int, label: str = "") -> ScoreSpec:
    """``log p(cls)`` of a clip model's (1, C) output; ``out_or_classes``: C."""
    n = int(out_or_classes)
    if not 0 <= int(cls) < n:
        raise FusionError(f"unknown class {cls}: the model has {n} classes")

    def rows(out: FusionOutput) -> torch.Tensor:
        return torch.log_softmax(out.logits.float(), 1)[:, int(cls)]

    def fn(out: FusionOutput) -> torch.Tensor:
        return rows(out)[0]

    return ScoreSpec(fn, math.log(1.0 / n), label or str(cls), rows)


def rgbd_score(num_classes: int, cls: int, mask: torch.Tensor | np.ndarray, label: str = "") -> ScoreSpec:
    """Mean over ``mask`` (H, W) bool at the model's input size of ``log p(cls)`` per pixel."""
    n = int(num_classes)
    if not 0 <= int(cls) < n:
        raise FusionError(f"unknown class {cls}: the model has {n} classes")
    m = torch.as_tensor(np.asarray(mask)).bool()
    if m.dim() != 2 or not bool(m.any()):
        raise FusionError("the class mask must be a non-empty (H, W) boolean map")

    def rows(out: FusionOutput) -> torch.Tensor:
        lp = torch.log_softmax(out.logits.float(), 1)[:, int(cls)]
        if lp.shape[1:] != m.shape:
            raise FusionError(f"class mask {tuple(m.shape)} does not match the prediction {tuple(lp.shape[1:])}")
        return lp[:, m].mean(1)

    def fn(out: FusionOutput) -> torch.Tensor:
        return rows(out)[0]

    return ScoreSpec(fn, math.log(1.0 / n), label or str(cls), rows)


def _check(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    if not isinstance(inputs, Mapping):
        raise FusionError("inputs must be a dict of modality -> tensor")
    present = tuple(m for m in MODALITIES if inputs.get(m) is not None)
    if not present:
        raise FusionError("no modality is present: nothing to attribute")
    if int(inputs[present[0]].shape[0]) != 1:
        raise FusionError("attribution explains one input: give a batch of one")
    return present


@torch.no_grad()
def default_score(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], cls: int | None = None,
                  label: str = "", **options: object) -> ScoreSpec:
    """The score of the shown prediction. Clips: ``log p(cls)`` (default: the predicted emotion). RGB-D: mean
    ``log p(cls)`` over the pixels the full prediction labels ``cls`` (default: the most frequent label); all
    pixels when none is labelled ``cls``."""
    _check(model, inputs)
    out = model(dict(inputs), **options)
    lg = out.logits
    n = int(lg.shape[1])
    if lg.dim() == 2:
        c = int(lg.argmax(1)[0]) if cls is None else int(cls)
        return clip_score(n, c, label)
    labels = lg.argmax(1)[0]
    c = int(torch.bincount(labels.flatten(), minlength=n).argmax()) if cls is None else int(cls)
    if not 0 <= c < n:
        raise FusionError(f"unknown class {c}: the model has {n} classes")
    mask = labels == c
    if not bool(mask.any()):
        mask = torch.ones_like(mask)
    return rgbd_score(n, c, mask, label)


# --------------------------------------------------------------------------- per-modality Shapley values


@dataclass
class ModalityAttribution:
    """Exact Shapley values of the present modalities for one score of one input."""

    modalities: tuple[str, ...]
    phi: dict[str, float]  # Shapley value of each present modality (sums to full - base)
    subsets: dict[tuple[str, ...], float]  # score of every subset (the empty one = base)
    base: float  # score with no modality: a uniform prediction, log(1/C)
    full: float  # score with every present modality
    ms: float  # wall time of the whole attribution
    forwards: int  # model forwards run
    label: str = ""
    refused: list[tuple[str, ...]] = field(default_factory=list)  # subsets the model cannot run: scored as empty

    def shares(self) -> dict[str, float]:
        """``phi_m / sum |phi|`` (signed; 0 when nothing moved)."""
        tot = sum(abs(v) for v in self.phi.values())
        return {m: (v / tot if tot > 0 else 0.0) for m, v in self.phi.items()}


def subset_inputs(inputs: Mapping[str, torch.Tensor], keep: Sequence[str]) -> dict[str, torch.Tensor]:
    """``inputs`` with only the modalities in ``keep`` (a dropped modality's ``_mask`` dropped too)."""
    drop = {m for m in MODALITIES if inputs.get(m) is not None} - set(keep)
    return {k: v for k, v in inputs.items() if k not in drop and k.removesuffix("_mask") not in drop}


def modality_shapley(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], score: ScoreSpec | None = None,
                     **options: object) -> ModalityAttribution:
    """Exact Shapley values of the present modalities of ``inputs`` (a batch of one) for ``score`` (default:
    :func:`default_score`). ``options``: the model's per-call settings. Only inputs are perturbed: no gradients."""
    from captum.attr import ShapleyValues

    present = _check(model, inputs)
    t0 = time.perf_counter()
    score = score or default_score(model, inputs, **options)
    cache: dict[tuple[str, ...], float] = {(): float(score.empty)}
    refused: list[tuple[str, ...]] = []

    def value(keep: tuple[str, ...]) -> float:
        if keep not in cache:
            try:
                with torch.no_grad():
                    cache[keep] = float(score.fn(model(subset_inputs(inputs, keep), **options)))
            except FusionError:  # a subset this model cannot run on (e.g. DynMM RGB-D needs the photo)
                if keep == present:
                    raise
                cache[keep] = float(score.empty)
                refused.append(keep)
        return cache[keep]

    def forward(mask: torch.Tensor) -> torch.Tensor:  # (B, M) presence -> (B,) scores
        return torch.tensor([value(tuple(m for m, on in zip(present, row) if float(on) > 0.5)) for row in mask],
                            dtype=torch.float64)

    ones = torch.ones(1, len(present), dtype=torch.float64)
    phi = ShapleyValues(forward).attribute(ones, baselines=0.0)[0]
    for r in range(len(present) + 1):  # every subset, also those captum's orderings already covered
        for keep in _subsets(present, r):
            value(keep)
    ms = (time.perf_counter() - t0) * 1e3
    full = cache[present]
    return ModalityAttribution(present, {m: float(p) for m, p in zip(present, phi)}, dict(cache), float(score.empty),
                               full, ms, len(cache) - 1 - len(refused), score.label, refused)


def _subsets(items: tuple[str, ...], r: int) -> list[tuple[str, ...]]:
    from itertools import combinations

    return [tuple(c) for c in combinations(items, r)]


# --------------------------------------------------------------------------- per-element attribution


@dataclass
class ElementAttribution:
    """Per-element attribution within one modality: ``values[i]`` = score(all) - score(element i ablated)."""

    modality: str
    values: np.ndarray  # RGB-D: (rows, cols) grid; clips: (N,)
    labels: list[str] = field(default_factory=list)  # clips: each element's name (time, word piece)
    ms: float = 0.0
    forwards: int = 0  # model calls (batch = 1: the full input once, then one per element)
    evaluations: int = 0  # inputs scored (the full one and each ablated one), whatever the batching
    batch: int = 1  # ablated inputs per model call


def stack_inputs(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inputs of batch one with the same keys and shapes, as one batch (concatenated along dimension 0)."""
    keys = list(items[0])
    if any(list(x) != keys for x in items[1:]):
        raise FusionError("inputs of a batch must give the same modalities")
    return {k: torch.cat([x[k] for x in items], 0) for k in keys}


def _grid_groups(h: int, w: int, rows: int, cols: int) -> torch.Tensor:
    """(H, W) cell index of a rows x cols grid."""
    r = torch.clamp(torch.arange(h) * rows // h, max=rows - 1)
    c = torch.clamp(torch.arange(w) * cols // w, max=cols - 1)
    return r[:, None] * cols + c[None, :]


def _elements(inputs: Mapping[str, torch.Tensor], modality: str, grid: tuple[int, int], window_s: float,
              pieces: Sequence[str] | None) -> tuple[int, Callable[[torch.Tensor], dict[str, torch.Tensor] | None],
                                                     list[str], tuple[int, ...]]:
    """(N, build(keep (N,) bool) -> inputs or None when the modality is all ablated, labels, values shape)."""
    x = inputs[modality]
    if modality in (RGB, DEPTH):
        rows, cols = grid
        h, w = x.shape[-2:]
        cells = _grid_groups(h, w, rows, cols)
        fill = x.mean(dim=(-2, -1), keepdim=True) if modality == RGB else torch.zeros_like(x[..., :1, :1])

        def build(keep: torch.Tensor) -> dict[str, torch.Tensor] | None:
            on = keep[cells][None, None]  # (1, 1, H, W)
            return {**inputs, modality: torch.where(on, x, fill.expand_as(x))}

        return rows * cols, build, [], (rows, cols)
    mask = inputs.get(MASK_OF[modality])
    length = x.shape[1] if modality != AUDIO else x.shape[2]
    mask = torch.ones(1, length, dtype=torch.bool) if mask is None else mask.bool()
    if modality == AUDIO:
        step = max(1, int(round(window_s * AUDIO_FRAMES_PER_S)))
        group = torch.arange(length) // step
        n = int(group.max()) + 1
        labels = [f"{i * step / AUDIO_FRAMES_PER_S:.2f} s" for i in range(n)]
        real = list(range(n))
    else:
        group = torch.arange(length)
        real = [i for i in range(length) if bool(mask[0, i])]
        if modality == TEXT and len(real) > 2:
            real = real[1:-1]  # [CLS] and [SEP] are not words
        n = len(real)
        pos = torch.full((length,), -1, dtype=torch.long)
        pos[torch.tensor(real, dtype=torch.long)] = torch.arange(n)
        group = pos
        if modality == FACE:
            labels = [f"crop {i + 1}" for i in range(n)]
        else:
            labels = [str(pieces[i]) if pieces is not None and i < len(pieces) else f"token {i}" for i in real]

    def build(keep: torch.Tensor) -> dict[str, torch.Tensor] | None:
        kept_pos = torch.where(group >= 0, keep[group.clamp(min=0)], torch.ones_like(group, dtype=torch.bool))
        m = mask & kept_pos[None]
        if not bool(m.any()):
            return None
        out = {**inputs, MASK_OF[modality]: m}
        if modality == TEXT:
            out[TEXT] = torch.where(m, x, torch.zeros_like(x))  # [PAD] = 0 in MiniLM's vocabulary
        return out

    return n, build, labels, (n,)


def element_attribution(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], modality: str,
                        score: ScoreSpec | None = None, *, grid: tuple[int, int] = (8, 8), window_s: float = 0.25,
                        pieces: Sequence[str] | None = None, batch: int = 1, **options: object) -> ElementAttribution:
    """captum :class:`~captum.attr.FeatureAblation` of the elements of ``modality`` (see the module text).
    ``grid``: RGB-D cells (rows, cols); ``window_s``: audio window; ``pieces``: the word pieces, for labels.

    ``batch``: ablated inputs per model call (captum's ``perturbations_per_eval``): they are stacked into one
    batch, so one forward scores several ablations; the values equal the unbatched ones up to float rounding
    (every model of both tasks treats the inputs of a batch independently; a DynMM gate routes each one to its
    own branch). An ablation that removes the whole modality (its only element) changes which inputs are
    given and runs on its own."""
    from captum.attr import FeatureAblation

    present = _check(model, inputs)
    if modality not in present:
        raise FusionError(f"{modality!r} is not present: present are {', '.join(present)}")
    if int(batch) < 1:
        raise FusionError(f"batch must be at least 1, got {batch}")
    t0 = time.perf_counter()
    score = score or default_score(model, inputs, **options)
    if score.rows is None:
        batch = 1
    n, build, labels, shape = _elements(inputs, modality, grid, window_s, pieces)
    if n == 0:
        raise FusionError(f"{modality!r} has no element to attribute")
    count = {"forwards": 0, "evaluations": 0}

    def run(items: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        with torch.no_grad():
            out = model(items[0] if len(items) == 1 else stack_inputs(items), **options)
        count["forwards"] += 1
        count["evaluations"] += len(items)
        return score.batch(out, len(items)).double()

    def forward(keep: torch.Tensor) -> torch.Tensor:  # (B, N) keep -> (B,) scores
        vals = torch.full((keep.shape[0],), float(score.empty), dtype=torch.float64)
        stacked, idx = [], []
        for i, row in enumerate(keep):
            x = build(row > 0.5)
            if x is None:  # the modality's last element: the modality is left out
                x = subset_inputs(inputs, [m for m in present if m != modality])
                if any(x.get(m) is not None for m in MODALITIES):
                    vals[i] = run([x])[0]
                continue
            stacked.append(x)
            idx.append(i)
        if stacked:
            vals[torch.tensor(idx)] = run(stacked)
        return vals

    attr = FeatureAblation(forward).attribute(torch.ones(1, n, dtype=torch.float64), baselines=0.0,
                                              perturbations_per_eval=int(batch))[0]
    return ElementAttribution(modality, attr.numpy().reshape(shape), labels, (time.perf_counter() - t0) * 1e3,
                              count["forwards"], count["evaluations"], int(batch))


# --------------------------------------------------------------------------- the class a click picks (RGB-D)


@dataclass(frozen=True)
class Pick:
    """A pixel clicked on an RGB-D prediction and the class predicted there."""

    cls: int
    row: int  # y, in pixels of the prediction map
    col: int  # x


def _points(selection: object) -> list:
    """The selected points of a Streamlit ``plotly_chart`` event, of its ``selection``, or a list of points."""
    if selection is None:
        return []
    if isinstance(selection, Mapping):
        if "selection" in selection:
            return _points(selection["selection"])
        return list(selection.get("points") or [])
    if isinstance(selection, (list, tuple)):
        return list(selection)
    return []


def _pixel(point: object, shape: tuple[int, int]) -> tuple[int, int] | None:
    """(row, col) of one selected point: its ``customdata`` [row, col] when given, else its rounded (y, x)."""
    if not isinstance(point, Mapping):
        return None
    h, w = shape
    custom = point.get("customdata")
    try:
        if isinstance(custom, (list, tuple)) and len(custom) >= 2:
            r, c = int(custom[0]), int(custom[1])
        else:
            x, y = float(point["x"]), float(point["y"])
            if not (math.isfinite(x) and math.isfinite(y)):
                return None
            r, c = int(round(y)), int(round(x))
    except (KeyError, TypeError, ValueError):
        return None
    return (r, c) if 0 <= r < h and 0 <= c < w else None


def picked_class(selection: object, labels: np.ndarray | torch.Tensor) -> Pick | None:
    """The class predicted at the pixel a user clicked on a prediction map drawn with x = column and y = row
    in pixels of ``labels`` (H, W) (the shown prediction's class per pixel). ``selection``: what Streamlit's
    ``st.plotly_chart(..., on_select=...)`` returns (or keeps under its key), its ``selection``, or a list of
    points. The last selected point that lies on the map counts (a click selects one; a box several: the last);
    None when nothing usable is selected."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise FusionError(f"the label map must be (H, W), got {lab.shape}")
    for point in reversed(_points(selection)):
        px = _pixel(point, lab.shape)
        if px is not None:
            return Pick(int(lab[px]), *px)
    return None


def picker_grid(shape: tuple[int, int], target: int = 2400) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (flat arrays) of the clickable points over an (H, W) map: a regular grid of about
    ``target`` points, each at the centre of its cell."""
    h, w = shape
    step = max(1, math.ceil(math.sqrt(h * w / max(1, target))))
    rows = np.arange(step // 2, h, step)
    cols = np.arange(step // 2, w, step)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return rr.ravel(), cc.ravel()


# --------------------------------------------------------------------------- words

NAMES = {RGB: "RGB", DEPTH: "depth", FACE: "the face", AUDIO: "speech", TEXT: "the transcript"}


def share_sentence(att: ModalityAttribution, label: str | None = None) -> str:
    """A plain sentence: "Depth contributed 69% of the sofa score, RGB 31%." Shares are ``phi / sum |phi|``; a
    modality with a negative value is said to have lowered the score, with its share of the total movement."""
    label = label or att.label or "predicted"
    shares = att.shares()
    if not att.modalities or all(v == 0 for v in att.phi.values()):
        return f"No modality moved the {label} score on this input."
    up = sorted((m for m in att.modalities if att.phi[m] > 0), key=lambda m: -att.phi[m])
    down = sorted((m for m in att.modalities if att.phi[m] < 0), key=lambda m: att.phi[m])
    parts = []
    if up:
        first, *rest = up
        parts.append(", ".join([f"{NAMES.get(first, first)} contributed {shares[first] * 100:.0f}% of the {label} "
                                "score"] + [f"{NAMES.get(m, m)} {shares[m] * 100:.0f}%" for m in rest]))
    for m in down:
        parts.append(f"{NAMES.get(m, m)} lowered the {label} score ({-shares[m] * 100:.0f}% of the total movement)")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."
