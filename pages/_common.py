"""What every page shares, whatever its task: the model cache, a model picker over a task's shipped cards,
model cards drawn as readable tables, and running a page (or one part of it) with clean errors.

Task-agnostic: nothing here knows about RGB-D, images or emotions. Models come from
``fusion.inference`` / ``fusion.checkpoints`` by checkpoint name; the task-specific inputs and views live
in the pages' own helper modules (``pages/_rgbd_input.py``, ``pages/_rgbd_views.py``), which import these.
Pages never import a CLI module (``fusion.evaluate``, ``fusion.train``, ...): what they need from stored
results is in ``fusion.results``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from fusion import compute, inference, viz
from fusion.types import FusionError

T = TypeVar("T")

GENERIC_ERROR = "Something went wrong while processing this input. Try another file, or report the details below."
CARDS_EXPANDER = "Model cards (data, licence, test-set scores, how to reproduce)"
# the fields a card table starts with, in this order (the rest follow as the card lists them)
CARD_FIRST = ("name", "title", "task", "method", "data", "licence", "split", "selected_on", "metrics", "command")


# --------------------------------------------------------------------------- models (cache_resource)


@st.cache_resource(show_spinner="Loading model…")
def load_model(name: str, trained: bool = True) -> tuple[Any, dict]:
    """The model of a shipped checkpoint and its card, loaded once per process (keyed by the checkpoint
    name), for any task. ``trained=False`` (no checkpoint yet): the registry model ``name``, randomly
    initialised with a fixed seed, under a stand-in card.

    The model is in eval mode with gradients off and is shared by every session: callers pass per-call
    settings as arguments of the forward and never store state on the model (or edit the card)."""
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


def task_cards(task: str, keep: Callable[[dict], bool] | None = None) -> list[dict]:
    """The shipped cards of ``task`` a page may offer (controls left out, sorted by name), optionally only
    those ``keep`` accepts."""
    return [c for c in inference.list_checkpoints(task) if keep is None or keep(c)]


def card_label(card: Mapping[str, Any]) -> str:
    """How a picker shows a card: its name and, when the card says, its method (``static_rgbd · static
    SE-add fusion``)."""
    name = str(card.get("name") or "?")
    method = str(card.get("method") or "").strip()
    return f"{name} · {method}" if method else name


def pick_model(task: str, *, key: str, label: str = "Model", keep: Callable[[dict], bool] | None = None,
               format_func: Callable[[dict], str] = card_label, help: str | None = None, where: Any = None,
               empty_note: str | None = None) -> dict | None:
    """A selectbox over the shipped cards of ``task`` (``keep`` filters them), each shown by ``format_func``
    (default: name and method); returns the chosen card, or None (with ``empty_note`` as a note, when
    given) when the task has no card to offer. ``where``: the container (default the sidebar). The
    widget's value is the checkpoint name, so its state survives a change of labels."""
    cards = task_cards(task, keep)
    box = st.sidebar if where is None else where
    if not cards:
        if empty_note:
            box.info(empty_note)
        return None
    by_name = {c["name"]: c for c in cards}
    name = box.selectbox(label, list(by_name), key=key, format_func=lambda n: format_func(by_name[n]), help=help)
    return by_name[name]


def checkpoint_or_untrained(registry: str, what: str, task: str) -> list[tuple[str, bool]]:
    """[(name, trained)] of the shipped checkpoints of ``task`` built as ``registry`` (dedicated
    single-modality baselines left out), or the untrained registry model with a note on the page saying so."""
    cards = task_cards(task, lambda c: c.get("registry") == registry and not inference.is_dedicated(c))
    if cards:
        return [(c["name"], True) for c in cards]
    st.info(f"No trained {what} checkpoint in `assets/checkpoints/` yet: showing a **randomly initialised** "
            "model so you can see the mechanics — its predictions mean nothing.")
    return [(registry, False)]


class Run(dict):
    """What a page keeps of one forward (arrays and numbers, no tensors), as a dict so st.cache_data can
    pickle it; its fields read as attributes too."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


# --------------------------------------------------------------------------- model cards


def card_for_display(card: Mapping[str, Any]) -> dict:
    """The card with :data:`CARD_FIRST` fields first and ``pairing_note`` left out (it is drawn on its own,
    above the table)."""
    first = {k: card[k] for k in CARD_FIRST if k in card}
    rest = {k: v for k, v in card.items() if k not in first and k != "pairing_note"}
    return {**first, **rest}


def card_table(card: Mapping[str, Any]) -> pd.DataFrame:
    """A card as a (field, value) table with readable labels (:func:`fusion.viz.card_rows`)."""
    return pd.DataFrame(viz.card_rows(card_for_display(card)), columns=["field", "value"])


def pairing_notes(cards: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The ``pairing_note`` of each (title, card) that has one, as one line each."""
    return [f"**{title}**: {str(card['pairing_note']).strip()}" for title, card in cards
            if str(card.get("pairing_note") or "").strip()]


def show_cards(cards: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Model cards [(title, card)]: any pairing note in plain sight (how the modalities were paired matters
    for reading every number), then one expander with each card as a readable table."""
    for note in pairing_notes(cards):
        st.warning(note, icon=":material/link:")
    with st.expander(CARDS_EXPANDER):
        for title, card in cards:
            st.markdown(f"**{title}** — `{card.get('name', '?')}`")
            st.table(card_table(card), hide_index=True)


def show_card_tables(items: Sequence[tuple[str, str]]) -> None:
    """:func:`show_cards` for [(title, checkpoint name)] (the cards of the cached models)."""
    show_cards([(title, load_model(name, True)[1]) for title, name in items])


# --------------------------------------------------------------------------- timing


def time_metric(col, label: str, timing: compute.Timing, ratio: compute.TimeRatio | None = None,
                reference: str = "") -> None:
    """A time metric: the median, and versus ``reference`` a percentage only when the timing is steady (else
    a coarse range marked noisy, colour off)."""
    value = f"{'≈' if timing.noisy else ''}{timing.median_ms:.0f} ms"
    if ratio is None:
        col.metric(label, value, "noisy" if timing.noisy else f"IQR {timing.q1_ms:.0f}–{timing.q3_ms:.0f} ms",
                   delta_color="off")
        return
    col.metric(label, value, ratio.delta_text(reference), delta_color="off" if ratio.noisy else "inverse",
               help=f"{timing.text()}. " + ("Too noisy for a percentage: the range is the interquartile range of "
                                            "the per-round time ratios." if ratio.noisy else
                                            "Median of the per-round time ratios (the models alternated)."))


# --------------------------------------------------------------------------- clean errors


def error_message(exc: BaseException, what: str | None = None) -> tuple[str, str | None]:
    """What the page says about ``exc``: (message, details or None). A :class:`FusionError` is the library
    telling the user what is wrong: its text is the message. Anything else is a bug or an unreadable input:
    a general message, the exception's type and text as details. ``what``: the part of the page that failed
    (e.g. "The robustness matrix"), named first."""
    lead = f"{what}: " if what else ""
    if isinstance(exc, FusionError):
        return lead + str(exc), None
    general = GENERIC_ERROR if not what else (f"{what} could not be shown. Try another input, or report the "
                                              "details below.")
    return general, f"{type(exc).__name__}: {exc}"


def run_and_show(fn: Callable[..., T], *args: Any, what: str | None = None, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or — when it raises — an ``st.error`` saying what went wrong (details in an
    expander for an unexpected error) and None, so the rest of the page keeps working. Streamlit's own
    control flow (``st.stop``, ``st.rerun``: not ``Exception``) passes through."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # FusionError first (a message for the user), else a last resort: never a traceback
        message, details = error_message(e, what)
        st.error(message)
        if details:
            with st.expander("Details"):
                st.code(details)
        return None


def run_page(main: Callable[[], Any]) -> None:
    """Run a page's ``main`` with clean errors: a message, never a traceback."""
    run_and_show(main)


# --------------------------------------------------------------------------- which modality drove this prediction

ATTR_LABEL = "Which modality drove this prediction?"


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """A digest of a dict of tensors (keys, shapes, dtypes, bytes): the cache key of an input."""
    import hashlib

    h = hashlib.sha1()
    for k in sorted(inputs):
        t = inputs[k]
        if t is None:
            continue
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{k}:{a.shape}:{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ablated inputs per forward for the per-element maps, by the prediction's kind: measured with `python -m fusion.bench
# attribution` on the 2-core CPU (README): a batch of clips is faster than one at a time; a batch of 240x320 RGB-D
# frames is not (one frame already fills a core), so RGB-D ablations run one per forward
ATTR_BATCH = {"clips": 4, "rgbd": 1}


@st.cache_data(show_spinner=False, max_entries=32)
def _predicted(_model: Any, model_key: str, digest: str, options: tuple, _inputs: Mapping[str, Any]) -> dict:
    """The shown prediction: ``ranked`` = its classes, most supported first [(class, pixels or probability)];
    ``labels`` = the class of each pixel (H, W) uint16 for a 2-D prediction, else None."""
    import torch

    with torch.no_grad():
        lg = _model(dict(_inputs), **dict(options)).logits
    if lg.dim() == 2:
        p = torch.softmax(lg.float(), 1)[0]
        return dict(ranked=[(int(i), float(p[i])) for i in p.argsort(descending=True)], labels=None)
    labels = lg.argmax(1)[0]
    counts = torch.bincount(labels.flatten(), minlength=lg.shape[1])
    return dict(ranked=[(int(i), int(counts[i])) for i in counts.argsort(descending=True) if int(counts[i]) > 0],
                labels=labels.numpy().astype(np.uint16))


@st.cache_data(show_spinner=False, max_entries=32)
def _attribution(_model: Any, model_key: str, digest: str, cls: int, options: tuple, _inputs: Mapping[str, Any],
                 label: str, grid: tuple[int, int], pieces: tuple[str, ...] | None) -> dict:
    """Per-modality Shapley values and per-element attribution of one input (plain data, cached)."""
    from fusion import attribution

    opts = dict(options)
    score = attribution.default_score(_model, _inputs, cls=cls, label=label, **opts)
    att = attribution.modality_shapley(_model, _inputs, score, **opts)
    batch = ATTR_BATCH["rgbd" if getattr(_model, "task", "") == "rgbd_seg" else "clips"]
    elements = {}
    for m in att.modalities:
        e = attribution.element_attribution(_model, _inputs, m, score, grid=grid, pieces=pieces, batch=batch,
                                            **opts)
        elements[m] = dict(values=np.asarray(e.values, dtype=float), labels=list(e.labels), ms=e.ms,
                           forwards=e.forwards, evaluations=e.evaluations)
    return dict(modalities=list(att.modalities), phi=att.phi, base=att.base, full=att.full, ms=att.ms,
                forwards=att.forwards, refused=[list(r) for r in att.refused],
                sentence=attribution.share_sentence(att), elements=elements,
                subsets={" + ".join(k) or "(none)": v for k, v in att.subsets.items()})


def show_modality_attribution(model: Any, model_key: str, inputs: Mapping[str, Any], *, class_names: Sequence[str],
                              key: str, options: Mapping[str, Any] | None = None, image: Any = None,
                              pieces: Sequence[str] | None = None, grid: tuple[int, int] = (6, 8),
                              element_names: Mapping[str, str] | None = None) -> None:
    """"Which modality drove this prediction?" for one model on one input, computed only when the user switches
    it on (it costs 2^M - 1 forwards for the modalities, one per element for the maps; cached per model, input
    digest, class and options): the exact Shapley value of each modality (bar chart), a plain sentence, the
    measured cost, and per-element maps (a 2-D grid drawn over ``image``; a 1-D sequence as bars).
    A 2-D prediction (RGB-D) with an ``image`` of its size: the class to explain is picked by clicking a pixel
    of the prediction drawn over ``image`` (or from the list of predicted classes; the two stay in step).
    ``options``: the model's per-call settings. Errors are shown, never raised."""
    if not st.toggle(ATTR_LABEL, value=False, key=f"{key}_attr_on",
                     help="Exact Shapley values of the modalities (every subset is run) and, within each modality, "
                          "what removing one region / crop / window / word does to the score. Costs extra forwards: "
                          "computed only when switched on."):
        return
    run_and_show(_show_attribution, model, model_key, inputs, class_names=class_names, key=key,
                 options=dict(options or {}), image=image, pieces=pieces, grid=grid,
                 element_names=dict(element_names or {}), what="The attribution")


def _picker_figure(labels: np.ndarray, image: Any, class_names: Sequence[str], point: Mapping | None) -> Any:
    """The prediction over the photo with a grid of clickable (invisible) points, each carrying its pixel
    (row, col) and the class predicted there; the picked pixel marked."""
    import plotly.graph_objects as go

    from fusion.attribution import picker_grid

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if img.shape[:2] != labels.shape:
        raise FusionError(f"the picture {img.shape[:2]} does not match the prediction {labels.shape}")
    rows, cols = picker_grid(labels.shape)
    names = np.asarray([str(class_names[int(c)]) if int(c) < len(class_names) else str(int(c))
                        for c in range(int(labels.max()) + 1)])
    data = [go.Image(z=viz.overlay(img, labels, 0.45), hoverinfo="skip"),
            go.Scatter(x=cols, y=rows, mode="markers", customdata=np.stack([rows, cols], 1),
                       text=names[labels[rows, cols]], hovertemplate="%{text}<br>x=%{x}, y=%{y}<extra></extra>",
                       marker=dict(size=7, color="rgba(0,0,0,0)"), showlegend=False, name="pixels",
                       selected=dict(marker=dict(color="rgba(0,0,0,0)")),
                       unselected=dict(marker=dict(opacity=0)))]
    if point is not None:
        data.append(go.Scatter(x=[point["col"]], y=[point["row"]], mode="markers", hoverinfo="skip",
                               showlegend=False, name="picked",
                               marker=dict(symbol="x-thin", size=16, line=dict(width=3, color="white"))))
    fig = go.Figure(data)
    h, w = labels.shape
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=0, b=0), clickmode="event+select", dragmode=False,
                      xaxis=dict(visible=False, range=[-0.5, w - 0.5], constrain="domain"),
                      yaxis=dict(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain"))
    return fig


def _class_picker(labels: np.ndarray, image: Any, class_names: Sequence[str], *, key: str, digest: str,
                  point: Mapping | None) -> None:
    """Click the prediction to pick the class to explain: the click's pixel goes through
    :func:`fusion.attribution.picked_class` into the class list's state (so the list shows it) and the picked
    point is kept (marked on the figure); choosing from the list forgets the point."""
    from fusion.attribution import picked_class

    pick_key, cls_key, point_key = f"{key}_attr_pick", f"{key}_attr_class", f"{key}_attr_point"

    def on_pick() -> None:
        p = picked_class(st.session_state.get(pick_key), labels)
        if p is None:
            return
        st.session_state[cls_key] = p.cls
        st.session_state[point_key] = {"digest": digest, "row": p.row, "col": p.col, "cls": p.cls}

    st.markdown("**Click the prediction** to explain the class predicted at that pixel.")
    st.plotly_chart(_picker_figure(labels, image, class_names, point), key=pick_key, on_select=on_pick,
                    selection_mode=("points",), width="stretch", config={"displayModeBar": False})
    if point is not None:
        st.caption(f"Picked pixel x = {point['col']}, y = {point['row']} (of {labels.shape[1]}×{labels.shape[0]}): "
                   f"**{class_names[point['cls']]}**.")


def _show_attribution(model: Any, model_key: str, inputs: Mapping[str, Any], *, class_names: Sequence[str], key: str,
                      options: dict, image: Any, pieces: Sequence[str] | None, grid: tuple[int, int],
                      element_names: dict) -> None:
    import plotly.graph_objects as go

    digest = inputs_digest(inputs)
    opts = tuple(sorted(options.items()))
    pred = _predicted(model, model_key, digest, opts, inputs)
    ranked = pred["ranked"]
    if not ranked:
        raise FusionError("the model predicted nothing to explain")
    by_cls = {c: v for c, v in ranked}
    pixels = pred["labels"] is not None
    cls_key, point_key = f"{key}_attr_class", f"{key}_attr_point"
    point = st.session_state.get(point_key)
    if not (isinstance(point, Mapping) and point.get("digest") == digest and point.get("cls") in by_cls):
        point = None  # a pick on another input (or none)
    picker = pixels and image is not None
    if picker:
        _class_picker(pred["labels"], image, class_names, key=key, digest=digest, point=point)
    cls = st.selectbox("… or pick the class from the list" if picker else "Explain the score of",
                       [c for c, _ in ranked], key=cls_key,
                       format_func=lambda c: (f"{class_names[c]} ({by_cls[c]:,} px)" if pixels
                                              else f"{class_names[c]} (p = {by_cls[c] * 100:.0f}%)"),
                       on_change=lambda: st.session_state.pop(point_key, None),
                       help="The class whose score is explained. " + (
                           "Score: mean log-probability of the class over the pixels predicted as it." if pixels else
                           "Score: log-probability of the emotion."))
    with st.spinner("Running every subset of the modalities, then removing one element at a time…"):
        res = _attribution(model, model_key, digest, int(cls), opts, inputs, str(class_names[cls]), tuple(grid),
                           None if pieces is None else tuple(pieces))
    names = [element_names.get(m, m) for m in res["modalities"]]
    st.markdown(f"**{res['sentence']}**")
    fig = go.Figure(go.Bar(x=[res["phi"][m] for m in res["modalities"]], y=names, orientation="h",
                           marker_color=["#2a9d8f" if res["phi"][m] >= 0 else "#e76f51" for m in res["modalities"]]))
    fig.update_layout(height=80 + 40 * len(names), margin=dict(l=10, r=10, t=30, b=30),
                      title="Shapley value (log-probability)", xaxis=dict(zeroline=True))
    st.plotly_chart(fig, key=f"{key}_attr_bars", width="stretch")
    el_ms = sum(e["ms"] for e in res["elements"].values())
    el_fw = sum(e["forwards"] for e in res["elements"].values())
    el_ev = sum(e.get("evaluations", e["forwards"]) for e in res["elements"].values())
    refused = (" Subsets the model cannot run on (" + "; ".join(" + ".join(r) for r in res["refused"])
               + ") count as no evidence." if res["refused"] else "")
    st.caption(f"Exact Shapley values over every subset of the modalities: they sum to the score with everything "
               f"({res['full']:.2f}) minus the score of a uniform prediction ({res['base']:.2f} = log 1/C), the "
               f"value given to no modality. Shares are |value| of the total movement; a negative value lowered the "
               f"score.{refused} Cost, measured: modalities {res['ms']:.0f} ms ({res['forwards']} forwards); "
               f"per-element maps {el_ms:.0f} ms ({el_ev} inputs scored in {el_fw} forwards).")
    cols = st.columns(len(res["modalities"]))
    for col, m, name in zip(cols, res["modalities"], names):
        e = res["elements"][m]
        v = np.asarray(e["values"], dtype=float)
        lim = float(np.abs(v).max()) or 1.0
        with col:
            st.markdown(f"**{name}: what each {'region' if v.ndim == 2 else 'element'} adds**")
            if v.ndim == 2:
                rows, ncols = v.shape
                data = []
                if image is not None:
                    img = np.asarray(image)
                    h, w = img.shape[:2]
                    data.append(go.Image(z=img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)))
                else:
                    h, w = rows, ncols
                data.append(go.Heatmap(z=v, x0=w / ncols / 2 - 0.5, dx=w / ncols, y0=h / rows / 2 - 0.5, dy=h / rows,
                                       colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim, opacity=0.55,
                                       hovertemplate="%{z:.3f}<extra></extra>"))
                f = go.Figure(data)
                f.update_layout(height=300, margin=dict(l=0, r=0, t=10, b=0),
                                yaxis=dict(autorange="reversed", visible=False), xaxis=dict(visible=False))
            else:
                f = go.Figure(go.Bar(x=e["labels"] or list(range(len(v))), y=v,
                                     marker_color=["#2a9d8f" if x >= 0 else "#e76f51" for x in v]))
                f.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=40))
            st.plotly_chart(f, key=f"{key}_attr_{m}", width="stretch")
    st.caption("Each region / crop / window / word: the score with everything minus the score with it removed "
               "(RGB cell → the image's mean colour, depth cell → 0 as for missing depth, a face crop or an audio "
               "window masked out, a word piece → [PAD]). Blue / green: it supported the class; red: it lowered it.")
