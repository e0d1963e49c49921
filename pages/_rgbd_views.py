"""Shared views of the RGB-D pages: a segmentation map with its own legend, the without-depth change table,
the block-off comparison of the sparse and DEQ pages, and times measured with the models interleaved. Inputs
live in ``pages/_rgbd_input.py``; the model cache, model cards and the time metric in ``pages/_common.py``
(``show_card_tables`` and ``time_metric`` are re-exported here). This module only draws what ``fusion``
computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from pages._common import load_model
from pages._common import show_card_tables, time_metric  # noqa: F401 (re-exported: the pages' old import path)
from pages._rgbd_input import metrics_line, overlay

from fusion import compute, inference, viz

REPEATS = 5  # timed rounds per comparison (after one warm-up), models alternating round by round


# --------------------------------------------------------------------------- maps with their own legend


def draw_map(title: str, labels: np.ndarray, background: np.ndarray, names: Sequence[str], alpha: float, *,
             gt: np.ndarray | None = None, n_cls: int | None = None, notes: Sequence[str] = (),
             caption: str | None = None) -> None:
    """One segmentation: bold title, the map over ``background`` (the photo, or the depth picture for a
    model that saw depth only), this frame's scores when there is ground truth, the map's own legend with
    each class's pixel share, notes."""
    st.markdown(f"**{title}**")
    st.image(overlay(background, labels, alpha), width="stretch", caption=caption)
    line = metrics_line(labels, gt, n_cls or len(names))
    if line:
        st.markdown(line)
    st.markdown(viz.map_legend_html(labels, names), unsafe_allow_html=True)
    for note in notes:
        st.caption(note)


def draw_ground_truth(gt: np.ndarray, rgb: np.ndarray, names: Sequence[str], alpha: float) -> None:
    """The ground-truth labels over the photo, with its legend (shares of the labelled pixels)."""
    st.markdown("**Ground truth**")
    st.image(overlay(rgb, gt, alpha), width="stretch",
             caption="untinted = otherprop/unlabelled (ignored in the scores); shares are of labelled pixels")
    st.markdown(viz.map_legend_html(gt, names), unsafe_allow_html=True)


def change_table(before: np.ndarray, after: np.ndarray, names: Sequence[str], *, before_col: str = "with depth",
                 after_col: str = "without depth", top: int = 5) -> None:
    """The largest label changes between two maps as a small table (share of the whole image)."""
    changes = viz.label_changes(before, after, names, top=top, min_fraction=0.001)
    if not changes:
        st.caption("No pixel changed label.")
        return
    st.table(pd.DataFrame([{before_col: c.before, "→": "→", after_col: c.after,
                            "share of image": f"{c.fraction * 100:.1f}%"} for c in changes]), hide_index=True)


def block_off_comparison(on: Mapping, off: Mapping, background: np.ndarray, names: Sequence[str], alpha: float, *,
                         on_title: str, gt: np.ndarray | None = None, n_cls: int | None = None) -> float:
    """The method block switched off, next to the normal run: both segmentations (each with its legend),
    the pixels that changed label and what changed into what. ``on`` / ``off``: runs of the same model on
    the same input (``labels``, ``flops``, ``notes``). Returns the share of pixels that changed."""
    changed = viz.changed_mask(on["labels"], off["labels"])
    share = float(changed.mean())
    c_on, c_off, c_diff = st.columns(3)
    with c_on:
        draw_map(on_title, on["labels"], background, names, alpha, gt=gt, n_cls=n_cls)
    with c_off:
        draw_map("block off (its output zeroed)", off["labels"], background, names, alpha, gt=gt, n_cls=n_cls,
                 notes=off.get("notes", ()))
    with c_diff:
        st.markdown(f"**Block on → off**: {share * 100:.1f}% of pixels change label")
        st.image(viz.change_image(background, changed), width="stretch",
                 caption=f"magenta = label changed ({int(changed.sum()):,} pixels)")
        change_table(on["labels"], off["labels"], names, before_col="block on", after_col="block off")
        if on.get("flops") and off.get("flops"):
            st.caption(f"whole model {viz.format_flops(on['flops'])} → {viz.format_flops(off['flops'])} "
                       "with the block off (exact, FlopCounterMode)")
    return share


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timed:
    """One forward to time: the model (checkpoint or registry name, trained or not), whether the depth map
    goes in, whether the photo is dropped, and the per-call options (sorted (key, value) pairs)."""

    name: str
    trained: bool
    depth: bool = True
    drop_rgb: bool = False
    opts: tuple = ()


@st.cache_data(show_spinner=False, max_entries=32)
def _time_calls(_models: dict, spec: tuple, rgb: np.ndarray, depth: np.ndarray | None, repeats: int
                ) -> dict[str, compute.Timing]:
    calls = {title: inference.forward_call(_models[title], rgb, depth if use_depth else None, drop_rgb=drop_rgb,
                                           **dict(opts))
             for title, _name, _trained, use_depth, drop_rgb, opts in spec}
    return inference.time_forwards(calls, warmup=1, repeats=repeats)


def time_calls(calls: Mapping[str, Timed], rgb: np.ndarray, depth: np.ndarray | None) -> dict[str, compute.Timing]:
    """Wall time of each forward in ``calls``, measured against each other (one warm-up each, then
    :data:`REPEATS` rounds with the models alternating); cached per models, input and options."""
    models = {title: load_model(c.name, c.trained)[0] for title, c in calls.items()}
    spec = tuple((title, c.name, c.trained, c.depth and depth is not None, c.drop_rgb, tuple(sorted(c.opts)))
                 for title, c in calls.items())
    return _time_calls(models, spec, rgb, depth, REPEATS)


# --------------------------------------------------------------------------- which modality drove this prediction


def show_attribution(name: str, trained: bool, rgb: np.ndarray, depth: np.ndarray | None, names: Sequence[str], *,
                     key: str, drop_rgb: bool = False, **opts) -> None:
    """:func:`pages._common.show_modality_attribution` of one RGB-D model on this frame (its input at the
    model's size, the photo underneath the region maps). ``opts``: the model's per-call settings;
    ``drop_rgb``: the photo left out (a depth-only run; the regions are still drawn over it)."""
    from pages._common import show_modality_attribution

    model, _card = load_model(name, trained)
    inputs = inference.to_tensors(rgb, depth, inference.model_size(rgb.shape[:2]))
    photo = inputs.pop("rgb") if drop_rgb else inputs["rgb"]
    picture = (photo[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    show_modality_attribution(model, f"{name}:{trained}", inputs, class_names=names, key=key, options=opts,
                              image=picture, element_names={"rgb": "RGB", "depth": "depth"})
