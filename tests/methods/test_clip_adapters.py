"""Missing-modality adapters on the clip model (``adapted_clips``) and the dedicated subset models
(``dedicated_clips``): the adapter set follows the modalities present, the frozen base is untouched with adapters
off, parameters are counted, a checkpoint holds adapter tensors only and round-trips, nothing is stored per call.
Untrained encoders (no shipped weights needed)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from fusion.checkpoints import load_checkpoint, load_matching, save_checkpoint
from fusion.methods.adapters import adapter_parameters, adapter_state_dict
from fusion.models.clip_adapted import CLIP_SUBSETS, subset_key
from fusion.registry import create
from fusion.results import clip_adapter_table, clip_robustness, recovery
from fusion.types import AUDIO, FACE, TEXT, FusionError

torch.set_num_threads(1)
KINDS = ("lora", "ssf", "bitfit")


def _inputs(model, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids, mask = model.encoders[TEXT].tokenize(["I am so happy", "leave me alone now"][:b])
    return {FACE: torch.rand(b, 2, 1, 48, 48, generator=g), AUDIO: torch.randn(b, 64, 40, generator=g) * 15 - 45,
            TEXT: ids, "text_mask": mask}


def _only(x: dict, subset: str) -> dict:
    mods = subset.split("+")
    return {k: v for k, v in x.items() if k.split("_")[0] in mods}


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return create("concat_clips", encoders=False).eval()


def _adapted(base, kind: str):
    """An adapted model on ``base``'s weights (same encoders: the module objects are shared)."""
    m = create("adapted_clips", encoders=False, adapter={"kind": kind})
    m.encoders = base.encoders
    got = load_matching(m, base.state_dict())
    assert not got["unused"]
    return m.eval()


def _perturb(model, subset: str, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model, subset):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_start_as_the_frozen_base_and_leave_it_untouched(base, kind: str) -> None:
    m = _adapted(base, kind)
    x = _inputs(m)
    with torch.no_grad():
        for s in (*CLIP_SUBSETS, "face+audio+text"):
            ref = base(_only(x, s)).logits
            assert torch.allclose(m(_only(x, s)).logits, ref, atol=1e-5), s  # identity at init
        _perturb(m, "face+text")
        ft = _only(x, "face+text")
        assert not torch.allclose(m(ft).logits, base(ft).logits, atol=1e-3)  # the set is applied (eval, no grad)
        assert torch.allclose(m(ft, adapter=False).logits, base(ft).logits, atol=1e-5)  # off = the base
        for s in ("face", "audio", "text", "face+audio", "audio+text", "face+audio+text"):  # other sets unaffected
            assert torch.allclose(m(_only(x, s)).logits, base(_only(x, s)).logits, atol=1e-5), s


def test_the_subset_is_picked_from_the_modalities_present(base) -> None:
    m = _adapted(base, "lora")
    x = _inputs(m)
    with torch.no_grad():
        for s in CLIP_SUBSETS:
            out = m(_only(x, s))
            assert out.adapter == s and any(s in n for n in out.notes)
        assert m(x).adapter is None
        assert m(_only(x, "audio"), adapter=False).adapter is None
    assert subset_key(["text", "face"]) == "face+text" and subset_key(["face", "audio", "text"]) is None


def test_fuse_on_a_subset_equals_the_forward_with_only_that_subset(base) -> None:
    """What the evaluation's per-subset columns call (``fuse`` on cached encoder outputs) is the forward."""
    m = _adapted(base, "ssf")
    _perturb(m, "audio+text", 1)
    x = _inputs(m)
    with torch.no_grad():
        enc = {k: m.encode(k, x) for k in (FACE, AUDIO, TEXT)}
        got = m.fuse({k: enc[k] for k in (AUDIO, TEXT)})
        assert torch.allclose(got, m(_only(x, "audio+text")).logits, atol=1e-5)
        assert torch.allclose(m.fuse_base({k: enc[k] for k in (AUDIO, TEXT)}),
                              base.fuse({k: enc[k] for k in (AUDIO, TEXT)}), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_are_counted_and_only_adapters_train(base, kind: str) -> None:
    m = _adapted(base, kind)
    counts = m.param_counts()
    assert set(counts) == set(CLIP_SUBSETS)
    for s, c in counts.items():
        assert c["params"] == sum(p.numel() for p in adapter_parameters(m, s)) > 0
        assert 0 < c["share_of_model_percent"] <= 0.5  # the target, encoders included
        assert c["share_of_model_percent"] < c["share_of_fusion_percent"]
    # a modality's input projection carries only the sets of subsets that hold it
    assert counts["face"]["params"] != counts["audio"]["params"]
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter_parameters(m)}
    x = _inputs(m)
    enc = {k: m.encode(k, x) for k in (FACE, TEXT)}
    m.train()
    torch.nn.functional.cross_entropy(m.fuse(enc), torch.tensor([0, 1])).backward()
    got = {id(p) for p in m.parameters() if p.grad is not None}
    assert got and got <= {id(p) for p in adapter_parameters(m, "face+text")}
    m.eval()


def test_checkpoint_holds_adapters_only_and_round_trips(base, tmp_path) -> None:
    torch.manual_seed(0)
    save_checkpoint(base, tmp_path / "b", {"name": "b", "task": "emotion_clips", "registry": "concat_clips"},
                    tensors=base.trainable_state_dict())
    m = _adapted(base, "lora")
    _perturb(m, "face", 2)
    save_checkpoint(m, tmp_path / "a", {"name": "a", "task": "emotion_clips", "registry": "adapted_clips",
                                        "base": "b"}, tensors=m.trainable_state_dict())
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["config"]["adapter"]["kind"] == "lora"
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "a.safetensors"))
    assert set(stored) == set(adapter_state_dict(m))  # no base tensor in the adapter checkpoint
    back, _ = load_checkpoint("a", tmp_path)
    back.encoders = m.encoders  # untrained encoders are rebuilt at random: compare the fusion on the same ones
    x = _inputs(m)
    with torch.no_grad():
        for s in ("face", "face+audio+text"):
            assert torch.allclose(back(_only(x, s)).logits, m(_only(x, s)).logits, atol=2e-2), s  # fp16 storage


def test_nothing_is_stored_on_the_model_per_call(base) -> None:
    m = _adapted(base, "bitfit")
    x = _inputs(m)
    attrs, state = set(vars(m)), copy.deepcopy(m.state_dict())
    with torch.no_grad():
        for s in ("face", "audio+text", "face+audio+text"):
            m(_only(x, s), count_flops=True)
    assert set(vars(m)) == attrs
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert all(layer.active is None for layer in m.modules() if hasattr(layer, "merged"))


def test_dedicated_model_reads_only_its_subset() -> None:
    torch.manual_seed(0)
    d = create("dedicated_clips", encoders=False, modalities=["face", "text"]).eval()
    x = _inputs(d)
    with torch.no_grad():
        out = d(x)
        assert out.present == (FACE, TEXT) and any("audio given but not used" in n for n in out.notes)
        assert torch.allclose(out.logits, d(_only(x, "face+text")).logits, atol=1e-6)
    with pytest.raises(FusionError, match="trained on face\\+text"):
        d(_only(x, "face+audio"))
    with pytest.raises(FusionError):
        create("dedicated_clips", encoders=False, modalities=["face", "smell"])
    assert set(n.split(".")[2] for n in d.trainable_state_dict() if n.startswith("fusion.proj.")) == {FACE, TEXT}


def test_recovery_and_table() -> None:
    assert recovery(40.0, 46.0, 50.0) == 60.0
    assert recovery(40.0, 46.0, 40.5) is None  # no drop to recover
    assert recovery(None, 46.0, 50.0) is None
    subs = {s: 50.0 for s in (*CLIP_SUBSETS, "face+audio+text")}
    res = {"models": {"concat_clips": {"subsets": {**subs, "face": 40.0}},
                      "adapted_clips_lora": {"subsets": {**subs, "face": 45.0}},
                      "dedicated_clips_face": {"subsets": {s: (48.0 if s == "face" else None) for s in subs}}}}
    cards = {"adapted_clips_lora": {"registry": "adapted_clips", "adapter_kind": "lora",
                                    "adapter_params": {"face": 10}, "adapter_share_percent": {"face": 0.01},
                                    "adapter_share_of_fusion_percent": {"face": 1.0}},
             "dedicated_clips_face": {"registry": "dedicated_clips", "trained_on": "face"}}
    rows = clip_adapter_table(res, cards)
    face = rows[0]
    assert face["subset"] == "face" and face["base"] == 40.0 and face["dedicated"] == 48.0
    assert face["adapters"]["lora"]["recovered_percent"] == 62.5 and face["adapters"]["lora"]["params"] == 10
    assert rows[1]["dedicated"] is None and rows[1]["adapters"]["lora"]["recovered_percent"] is None


def test_robustness_matrix_reads_whatever_figures_exist(tmp_path) -> None:
    assert clip_robustness(tmp_path, "test")["rows"] == []
    cols = ("face", "audio", "text", "face+audio", "face+text", "audio+text", "face+audio+text")
    (tmp_path / "clips_test.json").write_text(json.dumps({"samples": 9, "models": {
        "late_clips": {"method": "late", "subsets": {c: 10.0 for c in cols}},
        "concat_clips": {"method": "concat", "subsets": {c: 20.0 for c in cols}}}}))
    (tmp_path / "clips_adapters_models_test.json").write_text(json.dumps({"samples": 9, "models": {
        "concat_clips": {"method": "concat", "subsets": {c: 21.0 for c in cols}},
        "dedicated_clips_face": {"method": "dedicated", "subsets": {c: (30.0 if c == "face" else None) for c in cols}}}}))
    (tmp_path / "clips_deq_models_test.json").write_text("not json")  # unreadable: skipped
    m = clip_robustness(tmp_path, "test")
    assert m["sources"] == ["clips_test.json", "clips_adapters_models_test.json"] and m["samples"] == 9
    names = [r["name"] for r in m["rows"]]
    assert names == ["late_clips", "concat_clips", "dedicated_clips_face"]
    assert m["rows"][1]["cells"]["face"] == 21.0  # the later file's row wins
    assert m["rows"][2]["cells"]["audio"] is None and m["rows"][2]["cells"]["face"] == 30.0
    assert clip_robustness(tmp_path, "val")["rows"] == []


@pytest.mark.parametrize("kind", ("ssf", "bitfit"))
def test_layernorm_adapters_merge_and_unmerge_exactly(kind: str) -> None:
    from fusion.methods.adapters import AdaptedLayer

    ln = torch.nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    w0, b0 = ln.weight.clone(), ln.bias.clone()
    layer = AdaptedLayer(base=ln, kind=kind, subsets=("face",))
    with torch.no_grad():
        for p in layer.adapter_parameters("face"):
            p.add_(torch.randn(p.shape) * 0.3)
    layer.active = "face"
    x = torch.randn(3, 5, 8)
    want = layer(x)
    layer.merge("face")
    assert torch.allclose(layer(x), want, atol=1e-5)
    layer.unmerge()
    assert torch.equal(ln.weight, w0) and torch.equal(ln.bias, b0)


def test_attention_layers_are_wrapped_only_when_the_caller_runs_attention() -> None:
    from fusion.methods.adapters import AdapterConfig, add_adapters

    def net():
        return torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

    with pytest.raises(ValueError, match="MultiheadAttention"):
        add_adapters(net(), cfg=AdapterConfig(), subsets=("face",), select=lambda n, m: n == "self_attn.out_proj")
    names = add_adapters(net(), cfg=AdapterConfig(), subsets=("face",), select=lambda n, m: n == "self_attn.out_proj",
                         attention_run_by_caller=True)
    assert names == ["self_attn.out_proj"]
