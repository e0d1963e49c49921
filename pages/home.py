"""Home page: what Fusion Explorer is, what ships today, where to go."""
from __future__ import annotations

import streamlit as st

from pages._nav import ensure_navigation_mode


ensure_navigation_mode()

st.title("Fusion Explorer")
st.markdown(
    """
See inside **multimodal fusion models**: give them inputs, switch a modality off, and look at *why*
each model did what it did — gate decisions, which tokens survive, how a fixed point is reached, what
tiny adapters recover, and the compute actually spent.

| method | idea | what the page shows |
|---|---|---|
| **DynMM** — dynamic multimodal fusion (Xue & Marculescu, 2023) | a small gate picks, per input, how much of the second modality to use; skipped branches are never run | the gate's decision and the FLOPs / ms it really saved |
| **Sparse fusion** (Ding et al., 2021) | each modality's tokens are pooled to a few before cross-modal attention | which tokens survive, live pooling controls, the fusion stage's cost vs dense |
| **Deep-equilibrium fusion** (Ni et al., 2023) | fusion as the fixed point of a recursive block, found by a solver | the residual per solver step, live solver controls, the prediction as it settles |
| **Missing-modality adapters** (Reza et al., 2023) | tiny LoRA / scale-shift / BitFit adapters per missing subset on a frozen model | modality toggles, frozen vs adapted prediction, the robustness matrix |

| task | data | status |
|---|---|---|
| **RGB-D semantic segmentation** | NYU Depth V2 (indoor scenes, 40-class set) | **all four methods** plus a static-fusion baseline |
| Video–text–audio emotion clips | FER2013 faces, RAVDESS speech, MELD text (**paired by label, not recorded together**) | **all four methods** plus static baselines (late fusion, concat-token transformer) |
"""
)

st.page_link("pages/rgbd.py", label="Static fusion vs DynMM →", icon=":material/layers:")
st.page_link("pages/sparse.py", label="Sparse token fusion →", icon=":material/grid_on:")
st.page_link("pages/deq.py", label="Deep-equilibrium fusion →", icon=":material/all_inclusive:")
st.page_link("pages/adapters.py", label="Missing modalities: adapters →", icon=":material/extension:")
st.page_link("pages/clips.py", label="Emotion clips: static vs DynMM →", icon=":material/mood:")
st.page_link("pages/clips_sparse.py", label="Emotion clips: sparse token fusion →", icon=":material/filter_list:")
st.page_link("pages/clips_deq.py", label="Emotion clips: equilibrium fusion →", icon=":material/all_inclusive:")
st.page_link("pages/clips_adapters.py", label="Emotion clips: missing modalities →", icon=":material/extension:")

st.caption(
    "Compute is measured on the path that actually ran (FLOPs with torch's FlopCounterMode, wall time "
    "of the forward), not assumed. NYU Depth V2 is for research use; checkpoints trained on it are for "
    "research and teaching."
)
