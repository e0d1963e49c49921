"""Fusion Explorer: a Streamlit app that shows what multimodal fusion models do inside.

Run with ``make app`` (or ``streamlit run app.py``). Pages live in ``pages/``; each is a thin
script that reads widgets, calls the ``fusion`` library and draws what it returns.
"""
from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Fusion Explorer", page_icon=":material/merge_type:", layout="wide")

home = st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)
rgbd = st.Page("pages/rgbd.py", title="RGB-D: static vs DynMM", icon=":material/layers:", url_path="rgbd")
sparse = st.Page("pages/sparse.py", title="RGB-D: sparse token fusion", icon=":material/grid_on:", url_path="sparse")
deq = st.Page("pages/deq.py", title="RGB-D: equilibrium fusion", icon=":material/all_inclusive:", url_path="deq")
adapters = st.Page("pages/adapters.py", title="RGB-D: missing modalities", icon=":material/extension:",
                   url_path="adapters")
evidence = st.Page("pages/evidence.py", title="Does it do what it claims?", icon=":material/fact_check:",
                   url_path="evidence")
clips = st.Page("pages/clips.py", title="Clips: static vs DynMM", icon=":material/mood:", url_path="clips")
clips_sparse = st.Page("pages/clips_sparse.py", title="Clips: sparse token fusion", icon=":material/filter_list:", url_path="clips-sparse")
clips_deq = st.Page("pages/clips_deq.py", title="Clips: equilibrium fusion", icon=":material/all_inclusive:", url_path="clips-deq")
clips_adapters = st.Page("pages/clips_adapters.py", title="Clips: missing modalities", icon=":material/extension:", url_path="clips-adapters")

st.navigation({"Fusion Explorer": [home], "RGB-D segmentation": [rgbd, sparse, deq, adapters, evidence],
               "Emotion clips": [clips, clips_sparse, clips_deq, clips_adapters]}).run()
