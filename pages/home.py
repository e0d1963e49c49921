"""Home page: what Fusion Explorer is, what ships today, where to go."""
from __future__ import annotations

import streamlit as st

from pages._nav import ensure_navigation_mode


ensure_navigation_mode()

st.title("Fusion Explorer")
st.markdown(
    """
See inside **multimodal fusion models**: give them inputs, switch a modality off, and look at *why*
each model did what it did — gate decisions, compute actually spent, what changes without a modality.

The project covers four fusion methods from the literature, plus static baselines, on two tasks:

| method | idea | status |
|---|---|---|
| **DynMM** — dynamic multimodal fusion (Xue & Marculescu, CVPR 2023) | a small gate picks, per input, how much of the second modality to use; skipped branches are never run | **shipped** (RGB-D) |
| Sparse fusion transformers (Ding et al., 2021) | keep and pool only the informative tokens of each modality before fusing | planned |
| Deep-equilibrium fusion (Ni et al., 2023) | fuse by solving for a fixed point; shows the solver's convergence | planned |
| Missing-modality adapters (Reza et al., 2023) | LoRA / scale-shift / BitFit adapters keyed by which modalities are present | planned |

| task | data | status |
|---|---|---|
| **RGB-D semantic segmentation** | NYU Depth V2 (indoor scenes, 40-class set) | **shipped**: static fusion baseline + DynMM |
| Video–text–audio emotion clips | emotion corpora | planned |

**Shipped so far:** the RGB-D segmentation page with the static-fusion baseline and DynMM.
The other methods and the emotion task are not in the app yet.
"""
)

st.page_link("pages/rgbd.py", label="Open the RGB-D segmentation page →", icon=":material/layers:")

st.caption(
    "Compute is measured on the path that actually ran (FLOPs with torch's FlopCounterMode, wall time "
    "of the forward), not assumed. NYU Depth V2 is for research use; checkpoints trained on it are for "
    "research and teaching."
)
