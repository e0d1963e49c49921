"""RGB-D segmentation page: static fusion vs DynMM on an uploaded frame or an NYUv2 test frame.

Thin by design: read widgets -> call ``fusion`` -> draw what it returns. Every widget has a key
(prefix ``rgbd_``); models sit behind ``st.cache_resource`` (eval mode), pure transforms and the
per-input forwards behind ``st.cache_data``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from pages._nav import ensure_navigation_mode

from fusion import inference, viz
from fusion.data import nyuv2, upload
from fusion.types import FusionError


ensure_navigation_mode()

TASK = "rgbd_seg"
WORK_SIDE = 640  # longer side above which inputs are shrunk (the models run at 240x320 anyway)
UNIT_LABELS = {
    "auto": "auto-detect",
    "u8_nyu": "8-bit PNG, NYUv2 (m × 25.5)",
    "mm16": "16-bit PNG, millimetres",
    "sunrgbd": "16-bit PNG, SUN RGB-D",
    "m_npy": ".npy, metres",
    "mm_npy": ".npy, millimetres",
}
RGB_TYPES = ["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff"]
DEPTH_TYPES = ["png", "tif", "tiff", "npy"]
STATIC, DYNMM = "Static fusion", "DynMM"


# --------------------------------------------------------------------------- models (cache_resource)


@st.cache_resource(show_spinner="Loading model…")
def load_model(name: str, trained: bool) -> tuple[Any, dict]:
    """A shipped checkpoint, or (``trained=False``, no checkpoints yet) a randomly initialised registry model."""
    if trained:
        model, card = inference.load_checkpoint(name)
    else:
        import torch

        from fusion.registry import create

        torch.manual_seed(0)  # the same stand-in on every load
        model, card = create(name, pretrained=False), {"name": name, "title": f"{name} (untrained)"}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, card


class Run(dict):
    """What the page keeps of one forward (no logits), as a dict so st.cache_data can pickle it.

    Keys: labels, num_classes, flops, ms, branch, gate_probs, present, notes.
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@st.cache_data(show_spinner=False, max_entries=24)
def _segment(_model: Any, model_key: str, rgb: np.ndarray, depth: np.ndarray | None) -> dict:
    res = inference.segment(_model, rgb, depth, count_flops=True)
    return dict(
        labels=np.asarray(res.labels).astype(np.int64),
        num_classes=int(res.out.logits.shape[1]),
        flops=res.flops,
        ms=res.ms,
        branch=res.branch,
        gate_probs=res.gate_probs,
        present=tuple(res.present),
        notes=[str(n) for n in res.notes],
    )


def segment(title_name_trained: tuple[str, str, bool], rgb: np.ndarray, depth: np.ndarray | None) -> Run:
    """Segment one frame with one model; cached per model and input (``ms`` = that run's measured time)."""
    _title, name, trained = title_name_trained
    model, _card = load_model(name, trained)
    return Run(_segment(model, f"{name}:{trained}", rgb, depth))


# --------------------------------------------------------------------------- pure transforms (cache_data)


@st.cache_data(show_spinner=False, max_entries=16)
def decode_rgb(data: bytes) -> np.ndarray:
    return upload.decode_rgb(data)


@st.cache_data(show_spinner=False, max_entries=16)
def decode_depth(data: bytes, filename: str, units: str) -> tuple[np.ndarray, dict]:
    depth, info = upload.decode_depth(data, filename, units=units)
    return depth, {k: getattr(info, k) for k in ("units", "detected", "hole_fraction", "min_m", "max_m", "notes")}


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


def sidebar() -> dict:
    sb = st.sidebar
    sb.header("Input")
    path = sb.text_input(
        "NYUv2 folder", value=os.environ.get("FUSION_NYUV2", ""), key="rgbd_data_path",
        placeholder="../shared/data/nyuv2",
        help="A folder with images/, depths/, labels40/ and test.txt. Empty: $FUSION_NYUV2, else "
             "../shared/data/nyuv2 next to the project. Convert the official .mat with "
             "`python -m fusion.data.nyuv2 convert`.",
    )
    root, where = data_root(path)
    sources = ["Upload", "NYUv2 test frame"] if root else ["Upload"]
    source = sb.radio("Source", sources, key="rgbd_source", horizontal=True)
    sb.caption(where)
    sb.header("Display")
    alpha = sb.slider("Overlay opacity", 0.0, 1.0, 0.55, 0.05, key="rgbd_alpha",
                      help="Weight of the class colours over the photo.")
    return {"root": root, "source": source, "alpha": alpha}


@dataclass
class Frame:
    rgb: np.ndarray
    depth: np.ndarray | None
    label40: np.ndarray | None
    title: str
    notes: list[str]


def read_input(opts: dict) -> Frame | None:
    """The frame to segment, from the NYUv2 test split or the upload widgets (None = nothing yet)."""
    if opts["source"] == "NYUv2 test frame":
        root = str(opts["root"])
        ids = test_split(root)
        i = st.selectbox("Test frame", ids, index=0, key="rgbd_frame", format_func=lambda i: f"frame {i}",
                         help=f"The {len(ids)} frames of the official NYUv2 test split (0-based ids).")
        rgb, depth, label40 = test_frame(root, int(i))
        return Frame(rgb, depth, label40, f"NYUv2 test frame {i}", [])

    c1, c2, c3 = st.columns([2, 2, 1.3])
    f_rgb = c1.file_uploader("RGB image", type=RGB_TYPES, key="rgbd_rgb_file")
    f_depth = c2.file_uploader("Depth map (optional)", type=DEPTH_TYPES, key="rgbd_depth_file",
                               help="Same scene and camera as the photo. Holes (0) stay holes. "
                                    "Without depth, DynMM runs RGB only.")
    units = c3.selectbox(
        "Depth units", list(upload.DEPTH_UNITS), format_func=lambda u: UNIT_LABELS.get(u, u), key="rgbd_depth_units",
        help="\n".join(f"- **{UNIT_LABELS.get(u, u)}**: {h}" for u, h in upload.DEPTH_UNITS_HELP.items()),
    )
    if f_rgb is None:
        st.info("Upload an RGB image (and, ideally, its depth map) to segment it"
                + (", or pick “NYUv2 test frame” in the sidebar." if opts["root"] else "."))
        return None
    rgb = decode_rgb(f_rgb.getvalue())
    depth, notes = None, []
    if f_depth is not None:
        depth, info = decode_depth(f_depth.getvalue(), f_depth.name, units)
        notes.append(depth_info_text(info))
    return Frame(rgb, depth, None, f_rgb.name, notes)


def depth_info_text(info: dict) -> str:
    how = "auto-detected" if info["detected"] else "as chosen"
    text = (f"Depth read as **{UNIT_LABELS.get(info['units'], info['units'])}** ({how}): "
            f"{info['min_m']:.2f}–{info['max_m']:.2f} m, {info['hole_fraction'] * 100:.1f}% holes.")
    extra = [str(n) for n in info["notes"] if not str(n).startswith("auto-detected")]
    return text + (" " + "; ".join(extra) if extra else "")


def card_kind(c: dict) -> str | None:
    """"static" or "dynmm" for a model card (by its registry name, else its method text)."""
    reg = str(c.get("registry") or "")
    if reg in ("static_rgbd", "dynmm_rgbd"):
        return reg.split("_")[0]
    method = str(c.get("method") or "").lower()
    return "dynmm" if "dynmm" in method else "static" if "static" in method else None


def pick_models() -> list[tuple[str, str, bool]]:
    """[(title, checkpoint or registry name, trained)] for static fusion and DynMM."""
    cards = inference.list_checkpoints(TASK)
    static = [c for c in cards if card_kind(c) == "static"]
    dyn = [c for c in cards if card_kind(c) == "dynmm"]
    chosen: list[tuple[str, str, bool]] = []
    chosen.append((STATIC, static[0]["name"], True) if static else (STATIC, "static_rgbd", False))
    if dyn:
        labels = {c["name"]: card_label(c) for c in dyn}
        pick = st.sidebar.selectbox(
            "DynMM budget", list(labels), format_func=labels.get, key="rgbd_budget",
            help="DynMM checkpoints trained with different resource-loss weights λ: a higher λ makes the "
                 "gate prefer cheaper branches (less depth).")
        chosen.append((DYNMM, pick, True))
    else:
        chosen.append((DYNMM, "dynmm_rgbd", False))
    if not (static and dyn):
        missing = " and ".join(n for n, have in (("static fusion", static), ("DynMM", dyn)) if not have)
        st.info(f"No trained checkpoint for {missing} in `assets/checkpoints/` yet. Showing **randomly "
                "initialised** models in its place, so you can see the mechanics (gate, compute, depth "
                "ablation) — their predictions mean nothing.")
    return chosen


def card_label(c: dict) -> str:
    """``dynmm_rgbd_b1 · λ=0.2 · 1.23 GFLOPs · mIoU 30.1%`` from whatever the card holds."""
    parts = [str(c.get("title") or c["name"])]
    lam = (c.get("training") or {}).get("resource_weight") if isinstance(c.get("training"), dict) else None
    if isinstance(lam, (int, float)):
        parts.append(f"λ={lam:g}")
    m = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
    if isinstance(m.get("mean_gflops"), (int, float)):
        parts.append(f"{m['mean_gflops']:.2f} GFLOPs")
    if isinstance(m.get("miou"), (int, float)):  # fusion.evaluate writes percent
        parts.append(f"test mIoU {m['miou']:.1f}%")
    return " · ".join(parts)


def card_summary(card: dict) -> dict:
    """The card without bulky fields (per-class IoU, full config)."""
    out = {k: v for k, v in card.items() if k not in ("config",)}
    if isinstance(out.get("metrics"), dict):
        out["metrics"] = {k: v for k, v in out["metrics"].items() if k != "per_class_iou"}
    return out


# --------------------------------------------------------------------------- drawing helpers


def metrics_line(pred: np.ndarray, gt: np.ndarray | None, n: int) -> str | None:
    if gt is None:
        return None
    m = viz.frame_metrics(pred, gt, n)
    if not np.isfinite(m["pixel_acc"]):
        return "no labelled pixels in this frame"
    return (f"pixel acc **{m['pixel_acc'] * 100:.1f}%** · mIoU **{m['miou'] * 100:.1f}%** "
            f"(this frame, {m['n_classes']} classes)")


def decision_text(r: Run) -> str:
    if r.branch is None:
        return "n/a"
    n_stages = len(r.gate_probs) - 1 if r.gate_probs else None
    return f"k={r.branch} — {viz.branch_description(r.branch, n_stages)}"


def draw_legend(label_maps: list[np.ndarray], names: list[str]) -> None:
    """Colour chips for the classes present (≥ 0.1% of the pixels) in any of the shown maps."""
    present = np.concatenate([np.asarray(m).ravel() for m in label_maps])
    entries = viz.legend_entries(present, names, min_fraction=0.001)
    st.markdown(viz.legend_html(entries, show_fraction=False), unsafe_allow_html=True)


# --------------------------------------------------------------------------- the page


def main() -> None:
    st.title("RGB-D segmentation: static fusion vs DynMM")
    st.caption(
        "Two networks with the same RGB and depth encoders (EfficientNet-Lite0) label every pixel of an indoor "
        "scene with an NYUv2 class. **Static fusion** adds depth features into the RGB stream at all four stages. "
        "**DynMM** (Xue & Marculescu 2023) first runs a small gate that picks branch *k*: depth fused into the "
        "first *k* stages; *k* = 0 means the depth encoder never runs, so easy inputs cost less."
    )
    opts = sidebar()
    frame = read_input(opts)
    if frame is None:
        return
    rgb, depth, label40, notes = prepare(frame.rgb, frame.depth, frame.label40)
    notes = frame.notes + notes

    st.subheader(f"Input · {frame.title}")
    c_rgb, c_depth, c_notes = st.columns(3)
    c_rgb.image(rgb, caption=f"RGB {rgb.shape[1]}×{rgb.shape[0]}", width="stretch")
    if depth is not None:
        pic, lo, hi, holes = depth_picture(depth)
        c_depth.image(pic, width="stretch",
                      caption=f"depth: blue {lo:.1f} m → red {hi:.1f} m; black = no reading ({holes * 100:.1f}%)")
    else:
        c_depth.info("No depth map: static fusion gets an all-zero depth, DynMM runs RGB only.")
    with c_notes:
        for n in notes:
            st.markdown(n)

    models = pick_models()
    st.sidebar.header("Ablation")
    remove_depth = st.sidebar.toggle(
        "Remove depth", value=False, key="rgbd_remove_depth", disabled=depth is None,
        help="Re-run both models without the depth map and show which pixels change.")

    with st.spinner("Segmenting (each model: one counted forward, a warm-up and three timed runs)…"):
        runs = {m[0]: segment(m, rgb, depth) for m in models}
    stat, dyn = runs[STATIC], runs[DYNMM]
    n_cls = dyn.num_classes
    names = class_names(n_cls)
    gt = None if label40 is None else gt_targets(label40, n_cls)

    # ---- segmentations, side by side with the ground truth
    st.subheader("Segmentation")
    cols = st.columns(3)
    for col, (title, r) in zip(cols, runs.items()):
        with col:
            st.markdown(f"**{title}**" + (f" · branch k={r.branch}" if r.branch is not None else ""))
            st.image(overlay(rgb, r.labels, opts["alpha"]), width="stretch")
            line = metrics_line(r.labels, gt, n_cls)
            if line:
                st.markdown(line)
            for note in r.notes:
                st.caption(note)
    with cols[2]:
        if gt is not None:
            st.markdown("**Ground truth**")
            st.image(overlay(rgb, gt, opts["alpha"]), width="stretch",
                     caption="untinted = otherprop/unlabelled (ignored in the scores)")
        st.markdown("**Classes**")
        draw_legend([r.labels for r in runs.values()] + ([gt] if gt is not None else []), names)

    # ---- the gate and the compute it saves
    g1, g2 = st.columns(2)
    with g1:
        st.subheader("DynMM gate")
        st.markdown(f"**Decision:** {decision_text(dyn)}")
        if dyn.gate_probs is not None:
            st.plotly_chart(viz.gate_probs_figure(dyn.gate_probs, dyn.branch, n_stages=len(dyn.gate_probs) - 1),
                            key="rgbd_gate_chart", width="stretch")
    with g2:
        st.subheader("Compute spent")
        rows = [{"name": t, "flops": r.flops, "ms": r.ms} for t, r in runs.items()]
        st.plotly_chart(viz.compute_figure(rows), key="rgbd_compute_chart", width="stretch")
        save_f = viz.saving_percent(stat.flops, dyn.flops)
        save_t = viz.saving_percent(stat.ms, dyn.ms)
        m1, m2 = st.columns(2)
        m1.metric("DynMM FLOPs", viz.format_flops(dyn.flops), delta_color="inverse",
                  delta=None if save_f is None else f"{-save_f:+.1f}% vs static")
        m2.metric("DynMM time", f"{dyn.ms:.0f} ms", delta_color="inverse",
                  delta=None if save_t is None else f"{-save_t:+.1f}% vs static")
        if save_f is not None:
            verb = "saves" if save_f >= 0 else "spends"
            st.caption(
                f"On this input DynMM {verb} **{abs(save_f):.1f}%** {'of' if save_f >= 0 else 'more than'} static "
                f"fusion's FLOPs ({viz.format_flops(stat.flops)} → {viz.format_flops(dyn.flops)}, gate included). "
                "FLOPs are counted with torch's FlopCounterMode on the path that ran; times are the median of "
                "three forwards on this machine's CPU, at the models' 240×320 input.")

    # ---- what the checkpoints say about themselves
    trained = [m for m in models if m[2]]
    if trained:
        with st.expander("Model cards (data, licence, test-set scores, how to reproduce)"):
            for title, name, _ in trained:
                card = load_model(name, True)[1]
                st.markdown(f"**{title}** — `{name}`")
                st.json(card_summary(card), expanded=False)

    # ---- ablation: remove depth
    if remove_depth and depth is not None:
        st.subheader("Without depth: what changes")
        st.caption("Both models re-run on the same photo with the depth map removed. Magenta pixels changed label.")
        acols = st.columns(3)
        for col, m in zip(acols, models):
            title = m[0]
            r0, r1 = runs[title], segment(m, rgb, None)
            mask = viz.changed_mask(r0.labels, r1.labels)
            with col:
                st.markdown(f"**{title}**: {mask.mean() * 100:.1f}% of pixels change label")
                st.image(viz.change_image(rgb, mask), width="stretch", caption=f"{int(mask.sum()):,} pixels changed")
                if r0.branch is not None:
                    same = " (unchanged)" if r0.branch == r1.branch else ""
                    st.markdown(f"Gate decision: k={r0.branch} → **k={r1.branch}**{same}")
                    st.caption(decision_text(r1))
                st.caption(f"compute {viz.format_flops(r0.flops)} → {viz.format_flops(r1.flops)}")
                line = metrics_line(r1.labels, gt, n_cls)
                if line:
                    st.markdown("without depth: " + line)
                for note in r1.notes:
                    st.caption(note)


try:
    main()
except FusionError as e:
    st.error(str(e))
except Exception as e:  # last resort: a message, never a traceback
    st.error("Something went wrong while processing this input. Try another file, or report the details below.")
    with st.expander("Details"):
        st.code(f"{type(e).__name__}: {e}")
