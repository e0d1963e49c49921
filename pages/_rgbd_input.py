"""Shared pieces of the RGB-D pages: the input (upload or NYUv2 test frame), cached decoding and drawing
helpers, the cached RGB-D forward. Every function that draws widgets takes the page's key prefix, so each
page keeps its own widget state. The task-agnostic parts (model cache, picker, cards, clean errors) are in
``pages/_common.py``; ``load_model``, ``Run`` and ``run_page`` are re-exported here from there.

An uploaded depth image is shown with the units it was read in and why; when auto-detection is unsure or
the range is not plausible indoors, a warning next to the depth picture offers the choice, and the models
get the depth only once it is plausible or the user has said to use it anyway. An all-black depth image
gives a warning and an RGB-only result; a depth image of another aspect ratio is cropped or resized (the
user's choice) with a note saying what was done.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from pages import _common as common
from pages._common import Run, load_model, run_page  # noqa: F401 (re-exported: the pages' old import path)

from fusion import inference, viz
from fusion.data import nyuv2, upload
from fusion.types import FusionError

TASK = "rgbd_seg"
WORK_SIDE = 640  # longer side above which inputs are shrunk (the models run at 240x320 anyway)
UNIT_LABELS = dict(upload.DEPTH_UNITS_LABEL)  # units key -> what people read (never the key alone)
FIT_LABELS = {"crop": "Crop: cut the depth image's centre to the colour image's shape",
              "resize": "Resize: stretch the whole depth image to the colour image"}
DEFAULT_FIT = "crop"  # keeps shapes undistorted; the page says what was cut
RGB_TYPES = ["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff"]
DEPTH_TYPES = ["png", "tif", "tiff", "npy"]


# --------------------------------------------------------------------------- models (cache_resource)


def checkpoint_or_untrained(registry: str, what: str) -> list[tuple[str, bool]]:
    """[(name, trained)] of the shipped RGB-D checkpoints of ``registry``, or the untrained registry model
    with a note on the page saying so (:func:`pages._common.checkpoint_or_untrained` for this task)."""
    return common.checkpoint_or_untrained(registry, what, TASK)


def _np(t: Any) -> Any:
    return None if t is None else t.detach().cpu().numpy()


@st.cache_data(show_spinner=False, max_entries=48)
def _segment(_model: Any, model_key: str, rgb: np.ndarray, depth: np.ndarray | None, drop_rgb: bool,
             opts: tuple) -> dict:
    res = inference.segment(_model, rgb, depth, count_flops=True, drop_rgb=drop_rgb, **dict(opts))
    run = dict(labels=np.asarray(res.labels).astype(np.int64), num_classes=int(res.out.logits.shape[1]),
               flops=res.flops, ms=res.ms, branch=res.branch, gate_probs=res.gate_probs, present=tuple(res.present),
               notes=[str(n) for n in res.notes], fusion_flops=res.fusion_flops, fusion_bytes=res.fusion_bytes, adapter=res.out.adapter,
               iter_labels={int(t): v.astype(np.int64) for t, v in res.iter_labels.items()}, tokens=None, solver=None)
    tk = res.out.tokens
    if tk is not None:  # first (only) sample of the batch, as NumPy
        run["tokens"] = dict(
            grid={m: tuple(g) for m, g in tk.grid.items()}, kept={m: _np(v)[0] for m, v in tk.kept.items()},
            scores={m: _np(v)[0] for m, v in tk.scores.items()}, weights={m: _np(v)[0] for m, v in tk.weights.items()},
            windows={m: None if v is None else _np(v)[0] for m, v in tk.windows.items()},
            before=int(tk.tokens_before), after=int(tk.tokens_after), pool=tk.pool, keep_ratio=float(tk.keep_ratio),
            window=tk.window)
    sv = res.out.solver
    if sv is not None:
        run["solver"] = dict(residuals=_np(sv.residuals)[0].astype(float), nstep=int(sv.nstep[0]),
                             converged=bool(sv.converged[0]), rel=float(sv.rel_residual[0]),
                             abs=float(sv.abs_residual[0]), solver=sv.solver, tol=float(sv.tol),
                             max_iter=int(sv.max_iter), stop_mode=sv.stop_mode)
    return run


def segment(name: str, trained: bool, rgb: np.ndarray, depth: np.ndarray | None, *, drop_rgb: bool = False,
            **opts) -> Run:
    """Segment one frame with one model (cached per model, input and options). ``opts``: the model's
    per-call settings (pool / keep_ratio; solver / max_iter / tol / keep_states_at; adapter)."""
    model, _card = load_model(name, trained)
    return Run(_segment(model, f"{name}:{trained}", rgb, depth, drop_rgb, tuple(sorted(opts.items()))))


# --------------------------------------------------------------------------- pure transforms (cache_data)


@st.cache_data(show_spinner=False, max_entries=16)
def decode_rgb(data: bytes) -> np.ndarray:
    return upload.decode_rgb(data)


@st.cache_data(show_spinner=False, max_entries=16)
def decode_depth(data: bytes, filename: str, units: str, scale_m: float | None = None) -> tuple[np.ndarray, dict]:
    """The decoded depth (metres) and :class:`fusion.data.upload.DepthInfo` as a dict (candidates as dicts)."""
    depth, info = upload.decode_depth(data, filename, units=units, scale_m=scale_m)
    return depth, dataclasses.asdict(info)


@st.cache_data(show_spinner=False, max_entries=16)
def prepare(rgb: np.ndarray, depth: np.ndarray | None, label40: np.ndarray | None):
    """Match depth to the RGB frame and shrink large inputs to the working size; returns arrays + notes."""
    notes = []
    if depth is not None:
        depth, note = upload.match_depth_to_rgb(depth, rgb.shape)
        if note:
            notes.append(note)
    if max(rgb.shape[:2]) > WORK_SIDE:
        h, w = rgb.shape[:2]
        rgb = viz.fit_within(rgb, WORK_SIDE)
        depth = None if depth is None else viz.fit_within(depth, WORK_SIDE)
        label40 = None if label40 is None else viz.fit_within(label40, WORK_SIDE)
        notes.append(f"image shrunk from {w}×{h} to {rgb.shape[1]}×{rgb.shape[0]} for display and the models")
    writable = [None if a is None else np.require(a, requirements=["C", "W"]) for a in (rgb, depth, label40)]
    return (*writable, notes)


@st.cache_data(show_spinner=False, max_entries=16)
def depth_picture(depth: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    lo, hi = viz.depth_range(depth)
    holes = float(np.mean(depth <= 0))
    return viz.depth_to_rgb(depth, vmin=lo, vmax=hi), lo, hi, holes


@st.cache_data(show_spinner=False, max_entries=32)
def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    return viz.overlay(rgb, labels, alpha)


@st.cache_data(show_spinner=False)
def test_split(root: str) -> list[int]:
    return nyuv2.read_split(root, "test")


@st.cache_data(show_spinner="Reading frame…", max_entries=16)
def test_frame(root: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return nyuv2.load_frame(root, i)


def class_names(n: int) -> list[str]:
    """Names of a model's ``n`` output classes (39: the 40-class set without otherprop; 13)."""
    for full in (40, 13):
        if nyuv2.num_train_classes(full) == n:
            return nyuv2.class_names(full)
    return [f"class {i}" for i in range(n)]


def gt_targets(label40: np.ndarray, n: int) -> np.ndarray | None:
    """Stored 40-class labels in the model's label space (255 = ignored); None for an unknown label set."""
    for full in (40, 13):
        if nyuv2.num_train_classes(full) == n:
            return nyuv2.label_lut(full)[label40]
    return None


# --------------------------------------------------------------------------- widgets


def data_root(text: str) -> tuple[Path | None, str]:
    """The NYUv2 folder to offer test frames from, and a line saying where it is or why there is none."""
    text = text.strip()
    try:
        root = nyuv2.find_root(text or None)
    except FusionError as e:
        return None, f"No data set: {e}"
    if root is None:
        return None, "NYUv2 not found (set a folder above or $FUSION_NYUV2) — uploads only."
    return root, f"Data set: `{root}`"


def sidebar(prefix: str) -> dict:
    sb = st.sidebar
    sb.header("Input")
    path = sb.text_input(
        "NYUv2 folder", value=os.environ.get("FUSION_NYUV2", ""), key=f"{prefix}_data_path",
        placeholder="../shared/data/nyuv2",
        help="A folder with images/, depths/, labels40/ and test.txt. Empty: $FUSION_NYUV2, else "
             "../shared/data/nyuv2 next to the project. Convert the official .mat with "
             "`python -m fusion.data.nyuv2 convert`.",
    )
    root, where = data_root(path)
    sources = ["Upload", "NYUv2 test frame"] if root else ["Upload"]
    source = sb.radio("Source", sources, key=f"{prefix}_source", horizontal=True)
    sb.caption(where)
    sb.header("Display")
    alpha = sb.slider("Overlay opacity", 0.0, 1.0, 0.55, 0.05, key=f"{prefix}_alpha",
                      help="Weight of the class colours over the photo.")
    return {"root": root, "source": source, "alpha": alpha, "prefix": prefix}


@dataclass
class DepthPanel:
    """What the depth column shows, under the depth picture, about an uploaded depth image: the units in
    use and why, a warning when they need the user's eye, and the choices offered there."""

    prefix: str
    info: dict | None  # the decoding in use (DepthInfo as a dict); None when the depth image had no valid pixel
    used: bool  # the models get this depth
    preview: np.ndarray | None = None  # the decoded depth, drawn when the models do not get it
    warning: str | None = None  # plain words: what the user must know about this depth image
    pick: list[dict] = dataclasses.field(default_factory=list)  # candidate readings offered (empty: no choice)
    offer_accept: bool = False  # offer "use the depth image anyway" (implausible range)
    fit: str | None = None  # "crop" / "resize" when the depth image's aspect ratio differs from the colour image's
    fit_note: str | None = None  # what that did


@dataclass
class Frame:
    rgb: np.ndarray
    depth: np.ndarray | None
    label40: np.ndarray | None
    title: str
    notes: list[str]
    depth_panel: DepthPanel | None = None  # an uploaded depth image's units, warnings and choices


def unit_label(units: str) -> str:
    """The label people see for a units key."""
    return UNIT_LABELS.get(units, units)


def read_input(opts: dict) -> Frame | None:
    """The frame to segment, from the NYUv2 test split or the upload widgets (None = nothing yet)."""
    prefix = opts["prefix"]
    if opts["source"] == "NYUv2 test frame":
        root = str(opts["root"])
        ids = test_split(root)
        i = st.selectbox("Test frame", ids, index=0, key=f"{prefix}_frame", format_func=lambda i: f"frame {i}",
                         help=f"The {len(ids)} frames of the official NYUv2 test split (0-based ids).")
        rgb, depth, label40 = test_frame(root, int(i))
        return Frame(rgb, depth, label40, f"NYUv2 test frame {i}", [])

    c1, c2, c3 = st.columns([2, 2, 1.3])
    f_rgb = c1.file_uploader("RGB image", type=RGB_TYPES, key=f"{prefix}_rgb_file")
    f_depth = c2.file_uploader("Depth map (optional)", type=DEPTH_TYPES, key=f"{prefix}_depth_file",
                               help="Same scene and camera as the photo. Holes (0) stay holes.")
    units = c3.selectbox(
        "Depth units", list(upload.DEPTH_UNITS), format_func=unit_label, key=f"{prefix}_depth_units",
        help="\n".join(f"- **{unit_label(u)}**: {h}" for u, h in upload.DEPTH_UNITS_HELP.items()),
    )
    scale = c3.number_input(
        "Metres per unit", min_value=1e-6, max_value=10.0, value=0.001, step=0.0001, format="%g",
        key=f"{prefix}_depth_scale", disabled=units != "scale",
        help="Used with the units “custom metres per unit”: metres = stored value × this number "
             "(0.001 for millimetres, 0.0001 for 0.1 mm, 0.000125 for 1/8 mm, 0.0392 for 8-bit NYU).",
    )
    if f_rgb is None:
        st.info("Upload an RGB image (and, ideally, its depth map) to segment it"
                + (", or pick “NYUv2 test frame” in the sidebar." if opts["root"] else "."))
        return None
    rgb = decode_rgb(f_rgb.getvalue())
    depth, panel = None, None
    if f_depth is not None:
        depth, panel = read_depth(prefix, f_depth.getvalue(), f_depth.name, units,
                                  float(scale) if units == "scale" else None, rgb.shape)
    return Frame(rgb, depth, None, f_rgb.name, [], panel)


def _forget_choices_for_a_new_file(prefix: str, data: bytes) -> None:
    """A new depth file starts with the auto-detected units and without "use anyway" ticked (read before
    the widgets are drawn, so their state may still be dropped)."""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if st.session_state.get(f"{prefix}_depth_digest") != digest:
        for key in (f"{prefix}_depth_pick", f"{prefix}_depth_accept"):
            st.session_state.pop(key, None)
        st.session_state[f"{prefix}_depth_digest"] = digest


def read_depth(prefix: str, data: bytes, name: str, units: str, scale_m: float | None,
               rgb_shape: tuple[int, ...]) -> tuple[np.ndarray | None, DepthPanel]:
    """Decode an uploaded depth image for the models, or leave it out, and say why next to its picture.

    The choices drawn by :func:`show_input` (which reading, "use anyway", crop or resize) are read here
    from the session state of the previous run. The models get the depth only when its range is plausible
    or the user ticked "use anyway" after being told; an all-zero depth image is left out with a warning.
    """
    _forget_choices_for_a_new_file(prefix, data)
    try:
        depth, info = decode_depth(data, name, units, scale_m)
    except upload.EmptyDepthError:
        return None, DepthPanel(prefix, None, used=False, warning=(
            "The depth image has no valid pixel (it is all black: every value is 0), so it was left out: "
            "the models ran on the colour image only."))
    auto = info if info["detected"] else None
    pick: list[dict] = []
    if auto is not None and auto["ambiguous"]:
        pick = list(auto["candidates"])
        chosen = st.session_state.get(f"{prefix}_depth_pick")
        if chosen != info["units"] and chosen in {c["units"] for c in pick}:
            try:
                depth, info = decode_depth(data, name, chosen)
                info = {**info, "picked": True}
            except FusionError:  # a candidate that does not fit after all: stay with the detected units
                pass
    accepted = bool(st.session_state.get(f"{prefix}_depth_accept", False))
    used = bool(info["plausible"]) or accepted

    parts = []
    if auto is not None and auto["warning"]:
        parts.append(auto["warning"])
    if info is not auto and info["warning"]:
        parts.append(info["warning"])
    if not used:
        parts.append("So the models ran on the colour image only: pick other units"
                     + (" below" if pick else " under “Depth units”")
                     + ", or tick “Use the depth image anyway”.")
    elif not info["plausible"]:
        parts.append(f"You chose to use it anyway as **{unit_label(info['units'])}**: the predictions may suffer.")
    elif pick:
        parts.append(f"Now using **{unit_label(info['units'])}**.")
    panel = DepthPanel(prefix, info, used=used, warning=" ".join(parts) or None, pick=pick,
                       offer_accept=not info["plausible"])
    if not used:
        panel.preview = depth
        return None, panel
    if upload.aspects_differ(depth.shape, rgb_shape):
        fit = st.session_state.get(f"{prefix}_depth_fit", DEFAULT_FIT)
        panel.fit = fit if fit in upload.DEPTH_FITS else DEFAULT_FIT
        depth, panel.fit_note = upload.match_depth_to_rgb(depth, rgb_shape, fit=panel.fit)
    return depth, panel


def depth_info_text(info: dict) -> str:
    """One line: the units in use (for people), how they were chosen, the range and the holes."""
    if info["detected"]:
        how = "auto-detected"
    elif info.get("picked"):
        how = "picked from the possible readings"
    elif info["units"] == "scale":
        per_unit = np.format_float_positional(info["scale_m"], precision=3, fractional=False, trim="-")
        how = f"{per_unit} m per stored unit"
    else:
        how = "as chosen"
    text = (f"Depth read as **{unit_label(info['units'])}** ({how}): {info['min_m']:.2f}–{info['max_m']:.2f} m, "
            f"median {info.get('median_m', 0.0):.2f} m, {info['hole_fraction'] * 100:.1f}% holes.")
    warning = str(info.get("warning") or "")
    extra = [str(n) for n in info["notes"] if not str(n).startswith("auto-detected") and str(n) not in warning]
    return text + (" " + "; ".join(extra) if extra else "")


def _candidate_text(c: dict) -> str:
    fits = "" if c["plausible"] else " — not a plausible indoor range"
    return f"{c['label']}: {c['min_m']:.2f}–{c['max_m']:.2f} m, median {c['median_m']:.2f} m{fits}"


def draw_depth_panel(panel: DepthPanel) -> None:
    """Under the depth picture: the units in use and why, the warning, and the choices (unique keys)."""
    p = panel.prefix
    if panel.info is not None:
        st.markdown(depth_info_text(panel.info))
        if panel.info["detected"]:
            st.caption(f"Why: {panel.info['why']}.")
    if panel.warning:
        st.warning(panel.warning)
    if panel.pick:
        options = [c["units"] for c in panel.pick]
        labels = {c["units"]: _candidate_text(c) for c in panel.pick}
        st.radio("Read the depth image as", options, index=0, key=f"{p}_depth_pick", format_func=labels.get,
                 help="The readings auto-detection weighed, most plausible first. Pick the encoding your camera "
                      "or data set writes.")
    if panel.offer_accept:
        st.checkbox("Use the depth image anyway", key=f"{p}_depth_accept",
                    help="Give the models this depth even though its range does not look like an indoor scene.")
    if panel.fit is not None:
        st.radio("The depth image has another shape than the colour image", list(upload.DEPTH_FITS),
                 index=list(upload.DEPTH_FITS).index(DEFAULT_FIT), key=f"{p}_depth_fit",
                 format_func=FIT_LABELS.get, help="How the depth image is brought to the colour image's size.")
        if panel.fit_note:
            st.caption(panel.fit_note[0].upper() + panel.fit_note[1:] + ".")


NO_DEPTH_MAP = "No depth map"  # how a page's no-depth text starts when there is no depth map at all
NO_DEPTH_USED = "No depth used"  # ... and when there is one but the user held it back


def no_depth_words(text: str, held_back: bool) -> str:
    """A page's no-depth text ("No depth map: ...") as it reads when the user held an existing depth map
    back ("No depth used: ..."); unchanged when there is no depth map."""
    if held_back and text.startswith(NO_DEPTH_MAP):
        return NO_DEPTH_USED + text[len(NO_DEPTH_MAP):]
    return text


def show_input(frame: Frame, rgb: np.ndarray, depth: np.ndarray | None, notes: list[str], no_depth_text: str, *,
               held_back: bool = False) -> None:
    """The input row: photo, depth picture (with the units, warnings and choices of an upload), notes.

    ``held_back``: the user switched depth off (a remove-depth toggle) although there is a depth map: it is
    drawn as not given to the models, with ``no_depth_text`` reading "No depth used" instead of "No depth map".
    """
    st.subheader(f"Input · {frame.title}")
    c_rgb, c_depth, c_notes = st.columns(3)
    c_rgb.image(rgb, caption=f"RGB {rgb.shape[1]}×{rgb.shape[0]}", width="stretch")
    panel = frame.depth_panel
    with c_depth:
        if depth is not None and held_back:
            pic, lo, hi, _ = depth_picture(depth)
            st.image(pic, width="stretch",
                     caption=f"the depth map, held back (not given to the models): blue {lo:.1f} m → red {hi:.1f} m")
            st.caption(no_depth_words(no_depth_text, True))
        elif depth is not None:
            pic, lo, hi, holes = depth_picture(depth)
            st.image(pic, width="stretch",
                     caption=f"depth: blue {lo:.1f} m → red {hi:.1f} m; black = no reading ({holes * 100:.1f}%)")
        elif panel is not None and panel.preview is not None:
            pic, lo, hi, _ = depth_picture(panel.preview)
            st.image(pic, width="stretch",
                     caption=f"the depth image, not given to the models: blue {lo:.1f} m → red {hi:.1f} m")
            st.caption(no_depth_text)
        else:
            st.info(no_depth_text)
        if panel is not None:
            draw_depth_panel(panel)
    with c_notes:
        for n in notes:
            st.markdown(n)


# --------------------------------------------------------------------------- drawing helpers


def metrics_line(pred: np.ndarray, gt: np.ndarray | None, n: int) -> str | None:
    if gt is None:
        return None
    m = viz.frame_metrics(pred, gt, n)
    if not np.isfinite(m["pixel_acc"]):
        return "no labelled pixels in this frame"
    return (f"pixel acc **{m['pixel_acc'] * 100:.1f}%** · mIoU **{m['miou'] * 100:.1f}%** "
            f"(this frame, {m['n_classes']} classes)")
