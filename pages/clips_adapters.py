"""Missing modalities on emotion clips (Reza et al. 2023): switch the face, the speech or the transcript off and
compare the frozen all-modality model on what is left, the same model with the adapter set trained for that
subset (LoRA, SSF or BitFit), and a model trained on that subset alone; the subset x method robustness matrix.

Thin: widgets -> ``fusion`` -> drawing (views in ``pages/_clips_adapters_views.py``). Widget keys start with
``cad_`` (the shared input widgets keep their ``clips_`` keys).
"""
from __future__ import annotations

import streamlit as st

from pages._clips_adapters_views import (KIND_HELP, KIND_SHORT, adapter_cards, dedicated_card, forward, matrix_view,
                                         params_text, probability_view, table_view)
from pages._clips_input import LABEL, choose_source, digest, read_source, sentence, show_source
from pages._common import load_model, run_and_show, run_page, show_cards, show_modality_attribution
from pages._nav import ensure_navigation_mode

from fusion import inference
from fusion.data.clips import CLIP_MODALITIES
from fusion.data.emotion import EMOTIONS, PAIRING_NOTE
from fusion.types import FusionError

ensure_navigation_mode()


def results(name: str, trained: bool, card: dict, clip, key: str, toggles: list[str], usable: list[str]) -> None:
    subset = "+".join(toggles)
    proper = len(toggles) < len(CLIP_MODALITIES)
    runs = {"frozen base (adapters off)": forward(name, trained, clip, key, toggles, adapter=False)}
    if proper:
        runs[f"+ {KIND_SHORT.get(card.get('adapter_kind'), 'untrained')} adapters"] = forward(name, trained, clip, key,
                                                                                              toggles)
        ded = dedicated_card(subset)
        if ded is not None:
            runs[f"dedicated {subset} model"] = forward(ded["name"], True, clip, key, toggles)
        if set(usable) != set(toggles):
            runs["reference: every usable modality"] = forward(name, trained, clip, key, usable, adapter=False)
    st.subheader(f"Prediction with {' + '.join(LABEL[m].lower() for m in toggles)}")
    probability_view(runs, "cad")
    adapted = next((r for t, r in runs.items() if t.startswith("+ ")), None)
    if adapted is not None:
        st.markdown(f"**Adapter set switched on:** `{adapted.adapter}` — {params_text(card, subset)}. Compute on "
                    f"this input: {adapted.flops / 1e9:.4f} GFLOPs with the adapters vs "
                    f"{runs['frozen base (adapters off)'].flops / 1e9:.4f} without (FlopCounterMode, encoders "
                    "included).")
        if dedicated_card(subset) is None:
            st.caption(f"No dedicated {subset} model is shipped.")
    else:
        st.info("Every modality is on: no adapter is used (the adapted model *is* the frozen all-modality model). "
                "Switch one or two off in the sidebar.")
    for title, r in runs.items():
        for note in r.notes:
            st.caption(f"{title}: {sentence(note)}")
    net, _ = load_model(name, trained)
    show_modality_attribution(net, f"{name}:{trained}:{key}", inference.clip_inputs(net, clip, toggles),
                              class_names=EMOTIONS, key="cad",
                              element_names={m: LABEL[m] for m in CLIP_MODALITIES})


def main() -> None:
    st.title("Emotion clips: missing modalities")
    st.warning(PAIRING_NOTE, icon=":material/link:")
    st.caption(
        "After Reza, Prater-Bennette & Asif, *Robust Multimodal Learning with Missing Modalities via "
        "Parameter-Efficient Adaptation* (2023). The trained concatenated-token model (`concat_clips`) stays "
        "**frozen**; for each of the six proper subsets of {face, speech, transcript} a small adapter set was "
        "trained on samples holding only those modalities. Switch modalities off and the set of what is left "
        "switches on. A dedicated model trained on that subset alone, for the same epochs, is the yardstick.")
    sb = st.sidebar
    sb.header("Input")
    source, roots = choose_source(sb.container())
    sb.header("Modalities")
    wanted = [m for m in CLIP_MODALITIES if sb.toggle(LABEL[m], value=True, key=f"cad_use_{m}",
                                                      help=f"Give the models the {LABEL[m].lower()}.")]
    sb.header("Adapters")
    by_kind = adapter_cards()
    if by_kind:
        kind = sb.selectbox("Adapter kind", list(by_kind), key="cad_kind", format_func=lambda k: KIND_SHORT.get(k, k),
                            help="\n".join(f"- {KIND_HELP.get(k, k)}" for k in by_kind))
        card, name, trained = by_kind[kind], by_kind[kind]["name"], True
    else:
        st.info("No trained adapter checkpoint in `assets/checkpoints/` yet: the untrained `adapted_clips` (adapters "
                "at identity, random fusion) stands in so the mechanics show; its predictions mean nothing.")
        card, name, trained = {"name": "adapted_clips"}, "adapted_clips", False

    try:
        src = read_source(source, roots)
    except FusionError as e:
        st.error(sentence(str(e)))
        src = None
    if src is not None and src.clip is None:
        st.info(src.prompt)
    elif src is not None:
        clip = src.clip
        key = digest(clip)
        show_source(src)
        usable = [m for m in CLIP_MODALITIES if m in clip.usable]
        for m in CLIP_MODALITIES:
            if m in clip.problems:
                st.warning(f"**{LABEL[m]} cannot be used:** {sentence(clip.problems[m])}")
        st.caption("Given: " + (", ".join(LABEL[m].lower() for m in usable) or "nothing usable") + ".")
        toggles = [m for m in wanted if m in usable]
        if not toggles:
            st.warning("Switch at least one usable modality on.")
        else:
            with st.spinner("Running the frozen base, the adapted model and the dedicated model…"):
                run_and_show(results, name, trained, card, clip, key, toggles, usable, what="Running the models")

    st.subheader("Robustness matrix: every clip model × every modality subset")
    run_and_show(matrix_view, "cad", what="The robustness matrix")
    run_and_show(table_view, what="The adapter table")
    if trained:
        show_cards([(f"{KIND_SHORT.get(card.get('adapter_kind'), '')} adapters", card)])


run_page(main)
