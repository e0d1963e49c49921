"""Emotion-clip page: sparse token fusion (SFT, Ding et al. 2021) — which face crops, speech frames and word
pieces survive pooling before cross-modal attention, live pooling mode and keep ratio, against the dense
concat-token transformer (``concat_clips``) on the same clip.

Thin by design: read widgets -> call ``fusion`` -> draw. Widget keys start with ``clips_sparse_`` (the input
widgets are the clip page's own, ``clips_``, from ``pages/_clips_input.py``); models sit behind
``st.cache_resource`` (shared, eval mode), the per-input run behind ``st.cache_data``
(``pages/_clips_sparse_views.py``).
"""
from __future__ import annotations

import streamlit as st

from pages._clips_input import LABEL, choose_source, digest, read_source, sentence, show_source
from pages._clips_sparse_views import (POOL_HELP, analyse, compute_table, kept_chips_html, kept_table, marked_crop,
                                       strip_figure)
from pages._clips_views import _log_mel, prob_figure, word_pieces
from pages._common import checkpoint_or_untrained, load_model, run_and_show, run_page, show_cards, \
    show_modality_attribution
from pages._nav import ensure_navigation_mode

from fusion import inference
from fusion.data.clips import CLIP_MODALITIES
from fusion.data.emotion import EMOTIONS, PAIRING_NOTE
from fusion.methods.sparse import POOL_MODES
from fusion.types import AUDIO, FACE, TEXT, FusionError

ensure_navigation_mode()

TITLE = "Emotion clips: sparse token fusion"
SPARSE, DENSE = "Sparse (sparse_clips)", "Dense (concat_clips)"


def controls(box, cfg) -> tuple[str, float, bool]:
    """Pooling mode, keep ratio and the ablation switch (defaults: the shipped model's own)."""
    pool = box.selectbox("Pooling mode", POOL_MODES, index=POOL_MODES.index(cfg.pool), key="clips_sparse_pool",
                         format_func=lambda m: f"{m} — {POOL_HELP[m]}",
                         help="How each modality's tokens are pooled before cross-modal attention. The model was "
                              f"trained with '{cfg.pool}'; the others are swapped in live.")
    ratio = box.slider("Keep ratio", 0.05, 1.0, float(cfg.keep_ratio), 0.05, key="clips_sparse_ratio",
                       help="Fraction of each modality's tokens kept (top-k modes keep round(r·N), at least one; "
                            "window modes pool windows of round(1/r) tokens).")
    zero = box.checkbox("Zero the pooled tokens (ablation)", value=False, key="clips_sparse_zero",
                        help="The pooled tokens are zeroed before cross-modal attention: the [CLS] token then reads "
                             "nothing from any modality.")
    return pool, ratio, zero


def toggles_row(clip) -> list[str]:
    on = []
    for col, m in zip(st.columns(3), CLIP_MODALITIES):
        if m in clip.problems:
            col.checkbox(LABEL[m], value=False, disabled=True, key=f"clips_sparse_use_{m}_unusable")
            col.caption(f"{LABEL[m]} cannot be used: {sentence(clip.problems[m])}")
        elif col.checkbox(LABEL[m], value=True, key=f"clips_sparse_use_{m}",
                          help=f"Give the models the {LABEL[m].lower()}; off: they run as if it were missing."):
            on.append(m)
    return on


def show_strip(r, clip, key: str, pieces) -> None:
    st.subheader("What the pooling kept")
    tr = r.trace
    if FACE in tr and clip.face_crops is not None:
        kept = set(tr[FACE]["kept"])
        idx = list(range(min(len(clip.face_crops), 16)))
        times = clip.face_times if clip.face_times is not None else [0.0] * len(clip.face_crops)
        st.image([marked_crop(clip.face_crops[i], i in kept) for i in idx], width=64,
                 caption=[f"{float(times[i]):.1f} s{' · kept' if i in kept else ''}" for i in idx])
    mel = _log_mel(key, clip.audio) if AUDIO in tr and clip.audio is not None else None
    if mel is not None or FACE in tr:
        st.plotly_chart(strip_figure(mel, clip.face_times if FACE in tr else None, tr), key="clips_sparse_strip",
                        width="stretch")
    if TEXT in tr and pieces is not None:
        t = tr[TEXT]
        st.markdown(kept_chips_html(pieces, t["kept"], t["scores"], t["spans"] if t["windows"] else None),
                    unsafe_allow_html=True)
        st.caption("Word pieces (with [CLS] and [SEP]), kept ones orange; a window mode outlines the pieces its "
                   "pooled token covers. The transcript has no word timings, so the pieces are in reading order, "
                   "not on the time axis.")
    st.caption("Shared time axis: each face crop at its time in the clip; speech tokens are the speech encoder's "
               "frames, one per 80 ms (kept ones shaded on the spectrogram).")
    st.dataframe(kept_table(tr, pieces, clip.face_times), hide_index=True, width="stretch")


def main() -> None:
    st.title(TITLE)
    st.warning(PAIRING_NOTE, icon=":material/link:")
    st.caption(
        "Sparse Fusion Transformers (Ding et al. 2021): each modality's token sequence — face crops over time, "
        "speech frames (80 ms each), word pieces — is pooled to a few tokens *before* cross-modal attention, whose "
        "cost grows with the square of the token count. The dense control, the concatenated-token transformer, "
        "reads every token through the same two layers.")
    sb = st.sidebar
    sb.header("Input")
    input_box = sb.container()
    sb.header("Pooling")
    control_box = sb.container()
    (sparse_name, sparse_trained), = checkpoint_or_untrained("sparse_clips", "sparse clip", "emotion_clips")[:1]
    (dense_name, dense_trained), = checkpoint_or_untrained("concat_clips", "concat-token clip", "emotion_clips")[:1]
    net, card = load_model(sparse_name, sparse_trained)
    _, dense_card = load_model(dense_name, dense_trained)
    pool, ratio, zero = controls(control_box, net.cfg.sparse)
    source, roots = choose_source(input_box)
    cards = [(SPARSE, card), (DENSE, dense_card)]
    try:
        src = read_source(source, roots)
    except FusionError as e:
        st.error(sentence(str(e)))
        show_cards(cards)
        return
    if src.clip is None:
        st.info(src.prompt)
        show_cards(cards)
        return
    clip, key = src.clip, digest(src.clip)
    show_source(src)
    toggles = toggles_row(clip)
    if not toggles:
        st.info("Switch at least one usable modality on to run the models.")
        show_cards(cards)
        return
    with st.spinner("Running the sparse model and the dense control…"):
        r = run_and_show(analyse, sparse_name, sparse_trained, dense_name, dense_trained, clip, key, toggles,
                         pool=pool, keep_ratio=ratio, zero=zero, what="Running the models")
    if r is not None:
        pieces = word_pieces(net, clip.transcript)[0] if TEXT in r.trace else None
        if zero:
            st.warning("Ablation on: the pooled tokens are zeroed, so the prediction below uses no modality at all.")
        show_strip(r, clip, key, pieces)
        st.subheader("Prediction and compute")
        c1, c2 = st.columns(2)
        sp_lab, de_lab = EMOTIONS[max(range(7), key=lambda i: r.probs[i])], \
            EMOTIONS[max(range(7), key=lambda i: r.dense_probs[i])]
        c1.metric(SPARSE, sp_lab, f"p = {max(r.probs) * 100:.0f}%", delta_color="off", delta_arrow="off")
        c2.metric(DENSE, de_lab, f"p = {max(r.dense_probs) * 100:.0f}%", delta_color="off", delta_arrow="off")
        st.plotly_chart(prob_figure({SPARSE: r.probs, DENSE: r.dense_probs}), key="clips_sparse_probs",
                        width="stretch")
        st.dataframe(compute_table(r), hide_index=True, width="stretch")
        st.caption(f"Pooling '{r.pool}' at keep ratio {r.keep_ratio:g}"
                   + (f", windows of {r.window[1]} tokens" if r.window else "")
                   + ". Tokens: modality tokens entering the cross-modal transformer ([CLS] not counted; the dense "
                     "model averages a clip's face crops into one token). FLOPs: FlopCounterMode on this input; the "
                     "fusion stage is everything after the frozen encoders.")
        for note in r.notes:
            st.caption(sentence(note))
        inputs = inference.clip_inputs(net, clip, toggles)
        run_and_show(show_modality_attribution, net, f"{sparse_name}:{sparse_trained}:{key}", inputs,
                     class_names=EMOTIONS, key="clips_sparse",
                     options={"pool": pool, "keep_ratio": float(ratio), "zero_block": bool(zero)}, pieces=pieces,
                     element_names={m: LABEL[m] for m in (FACE, AUDIO, TEXT)}, what="The attribution")
    show_cards(cards)


run_page(main)
