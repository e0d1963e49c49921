"""Per-modality Shapley values and per-element attribution (fusion.attribution) on tiny untrained models of both
tasks: exact (efficiency, brute-force permutations), a dummy modality gets 0, shapes, the sentence, errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fusion.attribution import (ModalityAttribution, clip_score, default_score, element_attribution,
                                modality_shapley, rgbd_score, share_sentence, subset_inputs)
from fusion.core import FusionModel
from fusion.registry import create
from fusion.types import AUDIO, DEPTH, FACE, RGB, TEXT, FusionError, FusionOutput

torch.set_num_threads(1)
_CACHE: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _CACHE:
        torch.manual_seed(0)
        m = create(name, pretrained=False) if name.endswith("rgbd") else create(name, encoders=False)
        _CACHE[name] = m.eval()
    return _CACHE[name]


def rgbd_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {RGB: torch.rand(1, 3, 64, 96, generator=g), DEPTH: torch.rand(1, 1, 64, 96, generator=g) * 4 + 0.5}


def clip_inputs(m) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids, mask = m.encoders[TEXT].tokenize(["I am so happy"])
    return {FACE: torch.rand(1, 3, 1, 48, 48, generator=g), "face_mask": torch.ones(1, 3, dtype=torch.bool),
            AUDIO: torch.randn(1, 64, 60, generator=g) * 15 - 45, "audio_mask": torch.ones(1, 60, dtype=torch.bool),
            TEXT: ids, "text_mask": mask}


def brute_force(att: ModalityAttribution) -> dict[str, float]:
    """Shapley by definition: mean over all orderings of each modality's marginal contribution."""
    ms = att.modalities
    phi = {m: 0.0 for m in ms}
    perms = list(itertools.permutations(ms))
    for order in perms:
        before: list[str] = []
        for m in order:
            key = lambda s: tuple(x for x in ms if x in s)  # noqa: E731
            phi[m] += att.subsets[key(before + [m])] - att.subsets[key(before)]
            before.append(m)
    return {m: v / len(perms) for m, v in phi.items()}


def check_exact(att: ModalityAttribution) -> None:
    assert sum(att.phi.values()) == pytest.approx(att.full - att.base, abs=1e-5)  # efficiency
    assert len(att.subsets) == 2 ** len(att.modalities) and att.forwards == 2 ** len(att.modalities) - 1 - len(att.refused)
    for m, v in brute_force(att).items():
        assert att.phi[m] == pytest.approx(v, abs=1e-6)
    assert att.ms > 0


@pytest.mark.parametrize("name", ["static_rgbd", "dynmm_rgbd"])
def test_rgbd_shapley_is_exact(name):
    m, x = model(name), rgbd_inputs()
    att = modality_shapley(m, x)
    check_exact(att)
    assert att.base == pytest.approx(math.log(1 / m(x).logits.shape[1]))
    assert set(att.phi) == {RGB, DEPTH}
    s = share_sentence(att, "sofa")
    assert "sofa score" in s and ("depth" in s.lower() or "rgb" in s.lower())


@pytest.mark.parametrize("name", ["late_clips", "dynmm_clips"])
def test_clip_shapley_is_exact(name):
    m = model(name)
    x = clip_inputs(m)
    attrs = set(vars(m))
    att = modality_shapley(m, x)
    check_exact(att)
    assert set(vars(m)) == attrs  # nothing stored on the (shared) model
    assert att.base == pytest.approx(math.log(1 / 7)) and set(att.phi) == {FACE, AUDIO, TEXT}
    # with one modality dropped, only two are attributed
    att2 = modality_shapley(m, subset_inputs(x, [FACE, TEXT]))
    check_exact(att2)
    assert set(att2.phi) == {FACE, TEXT}


class Toy(FusionModel):
    """Two 'modalities' a and b; only rgb moves the output, depth is ignored (a dummy)."""

    task = "rgbd_seg"

    def check_inputs(self, inputs):
        present = tuple(m for m in (RGB, DEPTH) if m in inputs)
        if not present:
            raise FusionError("nothing")
        return present

    def run(self, inputs, present, opts, *, counting):
        lg = torch.zeros(1, 3, 2, 2)
        if RGB in inputs:
            lg[:, 0] += inputs[RGB].mean() * 4
        return FusionOutput(logits=lg, present=present), None


def test_dummy_modality_gets_zero_and_symmetric_ones_share():
    x = {RGB: torch.ones(1, 3, 2, 2), DEPTH: torch.ones(1, 1, 2, 2)}
    score = rgbd_score(3, 0, torch.ones(2, 2, dtype=torch.bool), "wall")
    att = modality_shapley(Toy(), x, score)
    check_exact(att)
    # depth alone = uniform prediction = the empty value, and it adds nothing to rgb: phi = 0 (dummy)
    assert att.phi[DEPTH] == pytest.approx(0.0, abs=1e-7) and att.phi[RGB] > 0
    assert att.shares()[RGB] == pytest.approx(1.0)
    assert share_sentence(att).startswith("RGB contributed 100% of the wall score")


def test_negative_contribution_is_said_as_lowered():
    att = ModalityAttribution((RGB, DEPTH), {RGB: 0.6, DEPTH: -0.2}, {}, -1.0, -0.6, 1.0, 3, "sofa")
    s = share_sentence(att)
    assert s == "RGB contributed 75% of the sofa score; depth lowered the sofa score (25% of the total movement)."
    att3 = ModalityAttribution((FACE, AUDIO, TEXT), {FACE: 0.2, AUDIO: -0.2, TEXT: 0.6}, {}, -1.9, -1.3, 1.0, 7, "happy")
    assert share_sentence(att3) == ("The transcript contributed 60% of the happy score, the face 20%; "
                                    "speech lowered the happy score (20% of the total movement).")


def test_rgbd_element_maps():
    m, x = model("static_rgbd"), rgbd_inputs()
    score = default_score(m, x)
    for mod in (RGB, DEPTH):
        e = element_attribution(m, x, mod, score, grid=(2, 3))
        assert e.values.shape == (2, 3) and np.isfinite(e.values).all() and e.forwards == 7  # the full input, then one per cell


def test_clip_element_bars():
    m = model("late_clips")
    x = clip_inputs(m)
    score = default_score(m, x)
    f = element_attribution(m, x, FACE, score)
    a = element_attribution(m, x, AUDIO, score, window_s=0.25)
    t = element_attribution(m, x, TEXT, score)
    assert f.values.shape == (3,) and a.values.shape == (3,) and len(a.labels) == 3  # 60 frames / 25
    n_words = int(x["text_mask"].sum()) - 2  # [CLS] and [SEP] left out
    assert t.values.shape == (n_words,) and len(t.labels) == n_words
    # one face crop only: ablating it drops the face, which is still a finite score
    one = dict(x, **{FACE: x[FACE][:, :1], "face_mask": x["face_mask"][:, :1]})
    assert np.isfinite(element_attribution(m, one, FACE, score).values).all()


def test_errors():
    m = model("late_clips")
    x = clip_inputs(m)
    with pytest.raises(FusionError):
        modality_shapley(m, {})
    with pytest.raises(FusionError):
        clip_score(7, 9)
    with pytest.raises(FusionError):
        default_score(m, x, cls=12)
    with pytest.raises(FusionError):
        element_attribution(m, subset_inputs(x, [TEXT]), FACE)
    with pytest.raises(FusionError):
        rgbd_score(3, 0, np.zeros((2, 2), bool))
    with pytest.raises(FusionError):
        default_score(model("static_rgbd"), rgbd_inputs(), cls=99)


# --------------------------------------------------------------------------- batched per-element maps


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-6))


@pytest.mark.parametrize("name", ["static_rgbd", "dynmm_rgbd", "sparse_rgbd", "deq_rgbd"])
def test_batched_rgbd_maps_equal_unbatched(name):
    m, x = model(name), rgbd_inputs()
    score = default_score(m, x)
    for mod in (RGB, DEPTH):
        one = element_attribution(m, x, mod, score, grid=(3, 4))
        many = element_attribution(m, x, mod, score, grid=(3, 4), batch=5)
        assert close(one.values, many.values), (mod, one.values, many.values)
        assert (one.forwards, one.evaluations, one.batch) == (13, 13, 1)
        assert (many.forwards, many.evaluations, many.batch) == (1 + 3, 13, 5)  # 12 cells in batches of 5


@pytest.mark.parametrize("name", ["late_clips", "concat_clips", "dynmm_clips"])
def test_batched_clip_bars_equal_unbatched(name):
    m = model(name)
    x = clip_inputs(m)
    score = default_score(m, x)
    moved = 0.0
    for mod in (FACE, AUDIO, TEXT):
        one = element_attribution(m, x, mod, score)
        many = element_attribution(m, x, mod, score, batch=8)
        assert close(one.values, many.values), (mod, one.values, many.values)
        assert many.forwards == 2 and many.evaluations == one.evaluations == one.forwards
        moved = max(moved, float(np.abs(one.values).max()))
    assert moved > 1e-3  # the comparison is not between two maps of zeros


def test_batch_with_the_modality_removed_runs_apart():
    """A single face crop: ablating it leaves the face out, a different set of inputs, run on its own."""
    m = model("concat_clips")
    x = clip_inputs(m)
    one = dict(x, **{FACE: x[FACE][:, :1], "face_mask": x["face_mask"][:, :1]})
    score = default_score(m, one)
    a = element_attribution(m, one, FACE, score)
    b = element_attribution(m, one, FACE, score, batch=4)
    assert close(a.values, b.values) and b.evaluations == 2
    with pytest.raises(FusionError):
        element_attribution(m, one, FACE, score, batch=0)


class _Recorder(torch.nn.Module):
    """Runs a model and records the branch each input of each call took."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[list[int]] = []

    def forward(self, x, **kw):
        out = self.net(x, **kw)
        self.calls.append(out.gate.branch.tolist())
        return out


class _HoleGate(torch.nn.Module):
    """RGB-D gate stand-in: the branch follows the column of the first depth hole (no hole: the last branch),
    so the ablated depth cells of one batch take different branches."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, rgb_feat, depth, valid):
        cols = (~valid.bool()).flatten(1, -2).any(1)  # (B, W): a hole in that column
        w = cols.shape[1]
        first = torch.where(cols.any(1), cols.float().argmax(1) * (self.k - 1) // w,
                            torch.full_like(cols[:, 0], self.k - 1, dtype=torch.long))
        return torch.nn.functional.one_hot(first, self.k).float() * 10


class _TextGate(torch.nn.Module):
    """Clip gate stand-in: the branch follows the position of the first word piece masked out (none: the last
    branch)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, enc):
        off = ~enc[TEXT].mask.bool()
        k = torch.where(off.any(1), off.float().argmax(1) % self.k, torch.full_like(off[:, 0], self.k - 1,
                                                                                  dtype=torch.long))
        return torch.nn.functional.one_hot(k, self.k).float() * 10


def test_gated_batches_whose_inputs_take_different_branches():
    import copy

    rgbd = copy.deepcopy(model("dynmm_rgbd"))
    rgbd.gate = _HoleGate(rgbd.num_stages + 1)
    clips = copy.deepcopy(model("dynmm_clips"))
    clips.gate = _TextGate(len(clips.branches))
    for net, x, mod, kw in [(rgbd, rgbd_inputs(), DEPTH, {"grid": (2, 4)}), (clips, clip_inputs(clips), TEXT, {})]:
        rec = _Recorder(net)
        score = default_score(rec, x)
        one = element_attribution(rec, x, mod, score, **kw)
        rec.calls.clear()
        many = element_attribution(rec, x, mod, score, batch=16, **kw)
        batched = [b for b in rec.calls if len(b) > 1]
        assert batched and len(set(batched[0])) > 1, rec.calls  # one batch, several branches in it
        assert close(one.values, many.values), (one.values, many.values)


# --------------------------------------------------------------------------- the class a click picks


def test_picked_class_from_a_plotly_selection():
    from fusion.attribution import Pick, picked_class, picker_grid

    labels = np.zeros((4, 6), np.uint16)
    labels[1, 4] = 7
    labels[3, 0] = 2
    point = {"curve_number": 1, "point_index": 9, "x": 4, "y": 1}
    event = {"selection": {"points": [point], "point_indices": [9], "box": [], "lasso": []}}
    assert picked_class(event, labels) == Pick(7, 1, 4)  # the event as st.plotly_chart returns it
    assert picked_class(event["selection"], labels) == Pick(7, 1, 4)  # its selection, or the points
    assert picked_class([{"x": 4.4, "y": 0.6}], torch.as_tensor(labels.astype(np.int64))) == Pick(7, 1, 4)  # rounded
    assert picked_class([{"x": 0, "y": 0, "customdata": [3, 0]}], labels) == Pick(2, 3, 0)  # customdata first
    assert picked_class([point, {"x": 0, "y": 3}], labels) == Pick(2, 3, 0)  # the last point counts
    assert picked_class([{"x": 0, "y": 3}, {"x": 6, "y": 0}], labels) == Pick(2, 3, 0)  # off the map: skipped
    for nothing in (None, {}, {"selection": {"points": []}}, [{"x": "a", "y": 1}], [{"y": 1}], [{"x": -1, "y": 0}],
                    [{"x": float("nan"), "y": 0}], "clicked"):
        assert picked_class(nothing, labels) is None, nothing
    with pytest.raises(FusionError):
        picked_class(event, np.zeros(5))
    rows, cols = picker_grid((240, 320))
    assert len(rows) == len(cols) and 1500 <= len(rows) <= 2400
    assert rows.min() >= 0 and rows.max() < 240 and cols.max() < 320
    r, c = picker_grid((3, 5))
    assert len(r) == 15  # a small map: every pixel
