"""fusion.inference helpers the pages call: which card is *the* static model, controls kept off the pages,
which pooling modes read keep_ratio, untimed segmentation and the forward the timer calls."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusion import inference
from fusion.registry import create


def _card(name: str, **kw) -> dict:
    return {"name": name, "task": "rgbd_seg", "registry": "static_rgbd", "method": "static SE-add fusion", **kw}


def test_preferred_card_is_the_exact_name_never_a_dedicated_or_control():
    cards = [_card("a_depth_only", trained_without="rgb"), _card("static_rgbd_ctrl", control_for="static_rgbd"),
             _card("static_rgbd"), _card("static_rgbd_cpu15", superseded="older base")]
    assert inference.preferred_card(cards)["name"] == "static_rgbd"
    assert inference.preferred_card(list(reversed(cards)))["name"] == "static_rgbd"  # not list order
    rest = [c for c in cards if c["name"] != "static_rgbd"]
    assert inference.preferred_card(rest + [_card("static_x")])["name"] == "static_x"  # not superseded first
    assert inference.preferred_card(rest)["name"] == "static_rgbd_cpu15"  # the only usable one
    assert inference.preferred_card(cards[:2]) is None


def test_list_checkpoints_leaves_controls_out(tmp_path):
    for c in (_card("static_rgbd"), _card("static_rgbd_ctrl", control_for="sparse_rgbd")):
        (tmp_path / f"{c['name']}.json").write_text(json.dumps(c))
    assert [c["name"] for c in inference.list_checkpoints("rgbd_seg", tmp_path)] == ["static_rgbd"]
    both = inference.list_checkpoints("rgbd_seg", tmp_path, include_controls=True)
    assert [c["name"] for c in both] == ["static_rgbd", "static_rgbd_ctrl"]
    assert inference.list_checkpoints("rgbd_seg", tmp_path / "missing") == []


@pytest.mark.parametrize("pool,window,uses", [
    ("topk_attn", (3, 4), True), ("topk", (3, 4), True), ("random", (3, 4), True), ("none", (3, 4), False),
    ("max", (3, 4), False), ("avg", (3, 4), False), ("attn_avg", (3, 4), False), ("strided_random", (3, 4), False),
    ("max", None, True), ("none", None, False)])
def test_keep_ratio_applies(pool, window, uses):
    assert inference.keep_ratio_applies(pool, window) is uses


def test_untimed_segment_and_forward_call():
    torch.manual_seed(0)
    model = create("static_rgbd", pretrained=False, num_classes=5).eval()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (48, 64)).astype(np.float32)
    res = inference.segment(model, rgb, depth, size=(64, 96), repeats=0)
    assert res.ms is None and res.flops and res.labels.shape == (48, 64)
    call = inference.forward_call(model, rgb, depth, size=(64, 96))
    out = call()
    assert torch.equal(out.logits.argmax(1), res.out.logits.argmax(1))
    times = inference.time_forwards({"a": call, "b": call}, warmup=0, repeats=2)
    assert set(times) == {"a", "b"} and times["a"].repeats == 2
