"""Views and the cached run of the sparse-fusion clip page: the sparse model and its dense control
(``concat_clips``) on one clip with this call's pooling, and the pure pieces the page draws (the time-aligned
strip of face crops, spectrogram and speech-token scores with the kept tokens highlighted, the word-piece chips
with the kept pieces highlighted, the tokens / FLOPs comparison). Nothing is stored on a model: the models are
shared by every session; the run is cached per model, input digest, modalities and pooling settings.
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots

from pages._common import Run, load_model

from fusion import inference
from fusion.data.clips import ClipInput
from fusion.data.emotion import HOP_LENGTH, SAMPLE_RATE
from fusion.models.clip_sparse import AUDIO_TOKEN_SECONDS, counted_fusion
from fusion.types import AUDIO, FACE, TEXT

LABEL = {FACE: "Face", AUDIO: "Speech", TEXT: "Transcript"}
KEPT, DROPPED = "#e4572e", "#c9ced6"
POOL_HELP = {
    "none": "every token (dense: no pooling)",
    "max": "windows over time, per-channel max",
    "avg": "windows over time, mean",
    "topk": "the k tokens with the highest learned score",
    "attn_avg": "windows over time, weighted by the attention each token receives",
    "topk_attn": "the k tokens that receive the most attention",
    "random": "k random tokens (control)",
    "strided_random": "one random token per window (control)",
}


def _trace_rows(tr: Any) -> dict[str, dict[str, list]]:
    """Plain data of a sparse trace (batch of one): per modality the kept positions, scores and spans."""
    out = {}
    for m in tr.kept:
        keep = tr.kept_mask[m][0]
        n = int(tr.lengths[m][0])
        out[m] = {"kept": [int(k) for k in tr.kept[m][0][keep]], "scores": [float(s) for s in tr.scores[m][0][:n]],
                  "spans": [[float(a), float(b)] for a, b in tr.spans[m][0][keep].tolist()], "length": n,
                  "windows": None if tr.windows[m] is None else [int(w) for w in tr.windows[m][0][:n]]}
    return out


@st.cache_data(show_spinner=False, max_entries=32)
def _run(_sparse: Any, _dense: Any, model_key: str, input_digest: str, toggles: tuple[str, ...], pool: str,
         keep_ratio: float, zero: bool, _clip: ClipInput) -> Run:
    inputs = inference.clip_inputs(_sparse, _clip, toggles)
    with torch.no_grad():
        out = _sparse(inputs, count_flops=True, pool=pool, keep_ratio=keep_ratio, zero_block=zero)
        enc = {m: _dense.encode(m, inputs) for m in out.present}
        dense_logits, dense_fusion = counted_fusion(lambda: _dense.fuse(enc))
    # both run the same encoders: the dense forward = the encoders' FLOPs (sparse total - its fusion) + dense fusion
    dense_total = float(out.flops[0]) - float(out.block.fusion_flops) + dense_fusion
    tr = out.tokens
    dense_tokens = sum(1 if m == FACE else int(tr.lengths[m][0]) for m in tr.kept)
    return Run(probs=torch.softmax(out.logits, 1)[0].tolist(),
               dense_probs=torch.softmax(dense_logits, 1)[0].tolist(), present=list(out.present), notes=out.notes,
               trace=_trace_rows(tr), sparse_tokens=int(sum(int(k.sum()) for k in tr.kept_mask.values())),
               dense_tokens=dense_tokens, sparse_fusion=float(out.block.fusion_flops),
               dense_fusion=dense_fusion, sparse_total=float(out.flops[0]), dense_total=dense_total,
               window=tr.window, pool=pool, keep_ratio=keep_ratio, zeroed=zero)


def analyse(sparse_name: str, sparse_trained: bool, dense_name: str, dense_trained: bool, clip: ClipInput,
            input_digest: str, toggles: Sequence[str], *, pool: str, keep_ratio: float, zero: bool) -> Run:
    """Both models on the clip (cached): probabilities, the sparse trace, tokens and measured FLOPs."""
    sparse, _ = load_model(sparse_name, sparse_trained)
    dense, _ = load_model(dense_name, dense_trained)
    return _run(sparse, dense, f"{sparse_name}:{sparse_trained}:{dense_name}:{dense_trained}", input_digest,
                tuple(toggles), pool, float(keep_ratio), bool(zero), clip)


# --------------------------------------------------------------------------- the strip


def marked_crop(crop: np.ndarray, kept: bool, border: int = 3) -> np.ndarray:
    """A grey 48x48 crop as RGB with a coloured frame: orange when kept, grey when dropped."""
    g = np.asarray(crop, dtype=np.uint8)
    rgb = np.repeat(g[..., None], 3, axis=2).copy()
    color = np.array([int(c, 16) for c in ((KEPT if kept else DROPPED)[1:3], (KEPT if kept else DROPPED)[3:5],
                                            (KEPT if kept else DROPPED)[5:7])], dtype=np.uint8)
    rgb[:border], rgb[-border:], rgb[:, :border], rgb[:, -border:] = color, color, color, color
    return rgb


def strip_figure(mel: np.ndarray | None, face_times: Sequence[float] | None, trace: Mapping[str, Mapping[str, Any]],
                 max_columns: int = 1200) -> go.Figure:
    """The time-aligned strip, one shared time axis (seconds): face crops (a marker at each crop's time, kept
    ones large and orange), the log-mel spectrogram with every kept speech token's span shaded, and each speech
    token's score (bars, kept ones orange)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.14, 0.56, 0.30], vertical_spacing=0.04,
                        subplot_titles=("face crops", "log-mel spectrogram (kept speech tokens shaded)",
                                        "speech-token score the pooling used"))
    if face_times is not None and FACE in trace:
        kept = set(trace[FACE]["kept"])
        t = [float(x) for x in face_times]
        fig.add_trace(go.Scatter(x=t, y=[0] * len(t), mode="markers", showlegend=False,
                                 marker=dict(size=[16 if i in kept else 8 for i in range(len(t))],
                                             color=[KEPT if i in kept else DROPPED for i in range(len(t))],
                                             symbol="square"),
                                 hovertemplate="crop at %{x:.2f} s<extra></extra>"), row=1, col=1)
    if mel is not None:
        mel = np.asarray(mel, dtype=np.float32)
        step = max(1, int(np.ceil(mel.shape[1] / max_columns)))
        starts = np.arange(0, mel.shape[1], step)
        if step > 1:
            counts = np.diff(np.append(starts, mel.shape[1]))
            mel = np.add.reduceat(mel, starts, axis=1) / counts
        fig.add_trace(go.Heatmap(z=mel, x=starts * HOP_LENGTH / SAMPLE_RATE, y=np.arange(mel.shape[0]),
                                 colorscale="Viridis", showscale=False,
                                 hovertemplate="%{x:.2f} s · band %{y}: %{z:.0f} dB<extra></extra>"), row=2, col=1)
    if AUDIO in trace:
        a = trace[AUDIO]
        kept = set(a["kept"])
        x = [(i + 0.5) * AUDIO_TOKEN_SECONDS for i in range(a["length"])]
        fig.add_trace(go.Bar(x=x, y=a["scores"], width=AUDIO_TOKEN_SECONDS * 0.9, showlegend=False,
                             marker_color=[KEPT if i in kept else DROPPED for i in range(a["length"])],
                             hovertemplate="token at %{x:.2f} s: score %{y:.3f}<extra></extra>"), row=3, col=1)
        for s, e in a["spans"]:
            fig.add_vrect(x0=s, x1=e, fillcolor=KEPT, opacity=0.25, line_width=1, line_color=KEPT, row=2, col=1)
    fig.update_yaxes(visible=False, row=1, col=1)
    fig.update_yaxes(title_text="band", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_layout(height=460, margin=dict(l=50, r=10, t=30, b=40), bargap=0)
    return fig


def kept_chips_html(pieces: Sequence[str], kept: Sequence[int], scores: Sequence[float],
                    spans: Sequence[Sequence[float]] | None = None) -> str:
    """Word pieces as chips, the kept ones orange (a window mode: every piece its pooled token covers is
    outlined), each with its score as a tooltip."""
    covered = set()
    for s, e in spans or []:
        covered.update(range(int(s), int(e)))
    kept_set = set(kept)
    out = []
    for i, p in enumerate(pieces):
        if i in kept_set:
            style = f"background:{KEPT};color:white;font-weight:bold;"
        elif i in covered:
            style = f"background:#fff;color:#333;border:1px dashed {KEPT};"
        else:
            style = "background:#eef0f3;color:#777;"
        score = f"score {scores[i]:.3f}" if i < len(scores) else ""
        out.append(f'<span title="{html.escape(score)}" style="display:inline-block;margin:2px;padding:1px 6px;'
                   f'border-radius:8px;font-family:monospace;{style}">{html.escape(p)}</span>')
    return "".join(out)


def kept_table(trace: Mapping[str, Mapping[str, Any]], pieces: Sequence[str] | None,
               face_times: Sequence[float] | None) -> pd.DataFrame:
    """Per modality: tokens before pooling, tokens kept, and what the kept ones are (times, word pieces)."""
    rows = []
    for m, t in trace.items():
        if m == AUDIO:
            what = ", ".join(f"{s:.2f}–{e:.2f} s" for s, e in t["spans"])
        elif m == TEXT and pieces is not None:
            what = " ".join(pieces[k] for k in t["kept"] if k < len(pieces))
        elif m == FACE and face_times is not None:
            what = ", ".join(f"crop at {float(face_times[k]):.2f} s" for k in t["kept"] if k < len(face_times))
        else:
            what = ", ".join(str(k) for k in t["kept"])
        rows.append({"modality": LABEL[m], "tokens in": t["length"], "kept": len(t["kept"]), "kept tokens": what})
    return pd.DataFrame(rows)


def compute_table(r: Run) -> pd.DataFrame:
    """Tokens into cross-modal attention and measured FLOPs, dense control vs sparse model."""
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}× fewer" if b else "-"

    return pd.DataFrame([
        {"": "tokens into cross-modal attention", "dense (concat_clips)": f"{r.dense_tokens}",
         "sparse": f"{r.sparse_tokens}", "saving": ratio(r.dense_tokens, r.sparse_tokens)},
        {"": "fusion-stage FLOPs (measured)", "dense (concat_clips)": f"{r.dense_fusion / 1e6:.2f} M",
         "sparse": f"{r.sparse_fusion / 1e6:.2f} M", "saving": ratio(r.dense_fusion, r.sparse_fusion)},
        {"": "whole forward FLOPs (measured, encoders included)", "dense (concat_clips)": f"{r.dense_total / 1e9:.3f} G",
         "sparse": f"{r.sparse_total / 1e9:.3f} G", "saving": ratio(r.dense_total, r.sparse_total)},
    ])
