"""Emotion-clip page: static fusion (concatenated-token transformer, late fusion) vs DynMM on a clip's face,
speech and transcript — uploaded, captured live, or a test triple of the label-paired data.

Thin by design: read widgets -> call ``fusion`` -> draw what it returns. Every widget has a key (prefix
``clips_``); models sit behind ``st.cache_resource`` (eval mode, shared by every session), decoding and the
per-input analyses behind ``st.cache_data`` (keyed by model, input digest and modality toggles). The inputs are
read in ``pages/_clips_input.py``, the views drawn from ``pages/_clips_views.py``.
"""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from pages._clips_input import LABEL, Source, choose_source, digest, read_source, sentence
from pages._clips_views import (CONCAT, DYNMM, ClipModel, _log_mel, analyse, branch_words, card_notes,
                                cards_for_display, chips_html, compute_rows, crop_strip, encoder_lines, full_branch,
                                gate_figure, mel_figure, picks, pick_models, prob_figure, prob_sources, prob_table,
                                ratio_text, word_pieces)
from pages._common import load_model, run_and_show, run_page, show_cards, show_modality_attribution
from pages._nav import ensure_navigation_mode

from fusion import inference, viz
from fusion.data.clips import CLIP_MODALITIES, SAMPLE_RATE, ClipInput
from fusion.data.emotion import EMOTIONS, PAIRING_NOTE
from fusion.types import AUDIO, FACE, TEXT, FusionError


ensure_navigation_mode()

TITLE = "Emotion clips: static fusion vs DynMM"


# --------------------------------------------------------------------------- input views


def draw_face(clip: ClipInput) -> None:
    crops, captions = crop_strip(clip)
    st.image(crops, caption=captions, width=64)
    n_frames = len(clip.face_boxes) if clip.face_boxes is not None else 0
    k = 0 if clip.face_crops is None else len(clip.face_crops)
    shown = f" ({len(crops)} shown)" if len(crops) < k else ""
    st.caption(f"{k} face crop{'s' if k != 1 else ''}{shown}, 48×48 grey as in FER2013, from {n_frames} sampled "
               f"frame{'s' if n_frames != 1 else ''}; the face encoder reads them all and averages.")


def draw_speech(clip: ClipInput, key: str) -> None:
    st.audio(clip.audio, sample_rate=SAMPLE_RATE)
    st.plotly_chart(mel_figure(_log_mel(key, clip.audio)), key="clips_mel_chart", width="stretch")
    src = f" from {clip.audio_source}" if clip.audio_source else ""
    st.caption(f"{clip.audio.size / SAMPLE_RATE:.2f} s of sound{src}, mono 16 kHz; the speech encoder reads this "
               "log-mel spectrogram (25 ms windows, 10 ms hop).")


def draw_transcript(clip: ClipInput, text_model: ClipModel) -> None:
    net, _ = load_model(text_model.name, text_model.trained)
    pieces, cut = word_pieces(net, clip.transcript)
    st.markdown(f"“{clip.transcript}”")
    st.markdown(chips_html(pieces), unsafe_allow_html=True)
    st.caption(f"{len(pieces)} MiniLM word pieces (with [CLS] and [SEP]): what the text encoder reads."
               + (" The transcript is longer than the encoder reads: it was cut at the end." if cut else ""))


def modality_columns(clip: ClipInput, key: str, text_model: ClipModel) -> list[str]:
    """One column per modality: its toggle (disabled, with the reason, when unusable) and what the models read.
    Returns the modalities switched on."""
    on: list[str] = []
    draw = {FACE: lambda: draw_face(clip), AUDIO: lambda: draw_speech(clip, key),
            TEXT: lambda: draw_transcript(clip, text_model)}
    for col, m in zip(st.columns(3), CLIP_MODALITIES):
        with col:
            if m in clip.problems:
                st.checkbox(LABEL[m], value=False, disabled=True, key=f"clips_use_{m}_unusable",
                            help="This input cannot be used: see why below.")
                st.warning(f"**{LABEL[m]} cannot be used:** {sentence(clip.problems[m])} The other inputs still run.")
                continue
            if st.checkbox(LABEL[m], value=True, key=f"clips_use_{m}",
                           help=f"Give the models the {LABEL[m].lower()}; off: they run as if it were missing."):
                on.append(m)
            run_and_show(draw[m], what=f"The {LABEL[m].lower()} view")
    return on


# --------------------------------------------------------------------------- results


def show_probabilities(runs: dict, src: Source) -> None:
    st.subheader("Per-emotion probabilities")
    sources = prob_sources(runs[CONCAT], runs)
    cols = st.columns(len(runs))
    for col, (title, r) in zip(cols, runs.items()):
        col.metric(title, r.label, f"p = {max(r.probs) * 100:.0f}%", delta_color="off", delta_arrow="off",
                   help="The fused prediction and its probability.")
    st.plotly_chart(prob_figure(sources), key="clips_probs_chart", width="stretch")
    table = prob_table(sources).map(lambda v: f"{v:.1f}")
    table.loc["→ pick"] = list(picks(sources).values())
    st.dataframe(table, width="stretch")
    truth = f" The true label of this test triple is **{src.true_label}**." if src.true_label else ""
    st.caption("“… alone”: each encoder's own 7-way head (faces trained on FER2013, speech on RAVDESS, words on "
               "MELD), from the static model's run. The fused columns are the three fusion models on the same "
               "inputs." + truth)


def show_dynmm(dyn, toggles: Sequence[str], clip: ClipInput, model: ClipModel) -> None:
    st.subheader("DynMM: the gate's decision and the compute it saved")
    net, _ = load_model(model.name, model.trained)
    gate_ms = tuple(getattr(net, "gate_modalities", (TEXT,)))  # the always-run encoders the gate reads
    gate_words = " and the ".join(LABEL[m].lower() for m in gate_ms)
    gate_ok = set(gate_ms) <= set(dyn.present)
    g1, g2 = st.columns(2)
    with g1:
        if dyn.branch is not None and gate_ok:
            st.markdown(f"**Decision:** ran: {branch_words(dyn.branch)}")
        elif dyn.branch is not None:
            st.markdown(f"**Decision:** none — the gate reads the {gate_words}, not all given; "
                        f"ran: {branch_words(dyn.branch)} (every modality given)")
        else:
            st.markdown(f"**Decision:** none — the gate reads the {gate_words}, not all given, and every subset "
                        f"it can pick contains them: DynMM fused what was given.")
        st.markdown("\n".join(encoder_lines(dyn, toggles, clip)))
        if dyn.gate_probs is not None and gate_ok:
            st.plotly_chart(gate_figure(dyn.gate_probs, dyn.branch_names, dyn.branch), key="clips_gate_chart",
                            width="stretch")
        for note in dyn.notes:
            st.caption(sentence(note))
    with g2:
        st.markdown("**Compute, measured on this input**")
        full = full_branch(dyn)
        if dyn.full_flops is not None and full is not None:
            same = dyn.branch == full  # nothing to compare: no delta on the metrics
            save_f = None if same else viz.saving_percent(dyn.full_flops, dyn.flops)
            save_t = None if same or dyn.ms is None or not dyn.full_ms else viz.saving_percent(dyn.full_ms, dyn.ms)
            m1, m2 = st.columns(2)
            m1.metric("DynMM FLOPs", viz.format_flops(dyn.flops), delta_color="inverse",
                      delta=None if save_f is None else f"{0.0 - save_f:+.1f}% vs all-modality branch")
            m2.metric("DynMM time", "n/a" if dyn.ms is None else f"{dyn.ms:.0f} ms", delta_color="inverse",
                      delta=None if save_t is None else f"{0.0 - save_t:+.0f}% vs all-modality branch")
            st.markdown(f"- FLOPs: **{viz.format_flops(dyn.flops)}** vs **{viz.format_flops(dyn.full_flops)}** for "
                        f"the all-modality branch ({branch_words(full)}): "
                        f"{ratio_text(dyn.flops, dyn.full_flops, 'FLOPs')}\n"
                        f"- time: **{_ms(dyn.ms)}** vs **{_ms(dyn.full_ms)}**: {ratio_text(dyn.ms, dyn.full_ms, 'ms')}")
            if same:
                st.markdown("The gate chose the all-modality branch itself: nothing is saved on this input (a time "
                            "difference is timing noise).")
        else:
            st.markdown(f"No saving to measure: every modality given ran ({viz.format_flops(dyn.flops)}, "
                        f"{_ms(dyn.ms)}).")
        st.caption("FLOPs: torch's FlopCounterMode on the path that ran (encoders and gate included), exact. Time: "
                   "median of three runs alternating with the all-modality branch (DynMM forced to run every "
                   "modality given, on the same input) — a noisy sample on a shared machine.")


def show_attribution(models: Sequence[ClipModel], clip: ClipInput, key: str, toggles: Sequence[str]) -> None:
    """Which modality drove one model's prediction on this clip (computed when switched on)."""
    explained = st.radio("Model to explain", [m.title for m in models], horizontal=True, key="clips_attr_model")
    model = next(m for m in models if m.title == explained)
    net, _ = load_model(model.name, model.trained)
    inputs = inference.clip_inputs(net, clip, toggles)
    pieces = word_pieces(net, clip.transcript)[0] if TEXT in inputs else None
    show_modality_attribution(net, f"{model.name}:{model.trained}:{key}", inputs, class_names=EMOTIONS, key="clips",
                              pieces=pieces, element_names={m: LABEL[m] for m in (FACE, AUDIO, TEXT)})


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def show_compute(runs: dict) -> None:
    with st.expander("Compute of every model on this input"):
        st.dataframe(compute_rows(runs, runs[DYNMM]), hide_index=True, width="stretch")
        for title, r in runs.items():
            if title != DYNMM:
                for note in r.notes:
                    st.caption(f"{title}: {sentence(note)}")


# --------------------------------------------------------------------------- the page


def main() -> None:
    st.title(TITLE)
    st.warning(PAIRING_NOTE, icon=":material/link:")
    st.caption(
        "Three frozen encoders — faces (EfficientNet-Lite0 on FER2013), speech (on RAVDESS log-mels), words "
        "(MiniLM on MELD) — feed three fusion models that name one of 7 emotions. **Static** fusion runs every "
        "encoder it is given: a concatenated-token transformer, and late fusion (a weighted average of the "
        "encoders' own predictions). **DynMM** (Xue & Marculescu 2023) always runs its cheap encoders (the shipped "
        "gates: face and transcript, a fifth of a clip's FLOPs) and its gate then decides whether the expensive "
        "speech encoder runs too: an encoder it skips costs nothing.")
    sb = st.sidebar
    sb.header("Input")
    input_box = sb.container()
    sb.header("Models")
    model_box = sb.container()
    models = pick_models(model_box)
    for note in card_notes(models):
        st.warning(note, icon=":material/link:")
    source, roots = choose_source(input_box)

    try:
        src = read_source(source, roots)
    except FusionError as e:
        st.error(sentence(str(e)))
        show_cards(cards_for_display(models))
        return
    if src.clip is None:
        st.info(src.prompt)
        show_cards(cards_for_display(models))
        return
    clip = src.clip
    key = digest(clip)

    st.subheader(f"Input · {src.title}")
    if src.true_label:
        ids = src.ids
        st.markdown(f"**True label: {src.true_label}** — face `{ids.get(FACE)}` (FER2013), speech "
                    f"`{ids.get(AUDIO)}` (RAVDESS), utterance `{ids.get(TEXT)}` (MELD): three unrelated items "
                    "sharing one label.")
    for note in src.notes + clip.notes:
        st.info(sentence(note))
    toggles = modality_columns(clip, key, models[0])
    if not toggles:
        st.info("Switch at least one usable modality on to run the models.")
        show_cards(cards_for_display(models))
        return

    with st.spinner("Running the three models, then timing each (and DynMM's all-modality branch)…"):
        runs = run_and_show(lambda: {m.title: analyse(m, clip, key, toggles) for m in models},
                            what="Running the models")
    if runs is not None:
        show_probabilities(runs, src)
        run_and_show(show_attribution, models, clip, key, toggles, what="The attribution")
        show_dynmm(runs[DYNMM], toggles, clip, models[-1])
        show_compute(runs)
    show_cards(cards_for_display(models))


run_page(main)
