"""Sparse / DEQ ablation machinery: the shared-prefix scoring path is the model's own forward, zeroing the
block removes exactly the block, and the README blocks render. Random weights; no data needed."""
from __future__ import annotations

import pytest
import torch

from fusion import ablations
from fusion.registry import create
from fusion.types import DEPTH, RGB, RunOptions


def _model(kind: str, pretrained: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create(f"{kind}_rgbd", num_classes=5, pretrained=pretrained).eval()
    block = m.token_fusion if kind == "sparse" else m.deq_fusion
    torch.nn.init.normal_(block.out.weight, std=1.0)  # the zero-initialised output would hide the block
    return m


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {RGB: torch.rand(1, 3, 64, 96, generator=g), DEPTH: torch.rand(1, 1, 64, 96, generator=g) * 4 + 0.5}


@pytest.mark.parametrize("kind,opts", [("sparse", {"pool": "topk_attn", "keep_ratio": 0.25}),
                                       ("sparse", {"pool": "none"}), ("deq", {}), ("deq", {"zero_block": True}),
                                       ("sparse", {"zero_block": True})])
@torch.no_grad()
def test_shared_prefix_path_is_the_models_forward(kind: str, opts: dict) -> None:
    m, x = _model(kind), _inputs()
    pre = ablations._stage_prefix(m, x[RGB], x[DEPTH])
    logits, _ = ablations._stage_suffix(m, pre, RunOptions.of(**opts))
    assert torch.allclose(logits, m(x, **opts).logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["sparse", "deq"])
@torch.no_grad()
def test_zeroing_the_block_removes_its_output_and_only_it(kind: str) -> None:
    m, x = _model(kind), _inputs()
    on, off = m(x).logits, m(x, zero_block=True).logits
    assert float((on - off).abs().max()) > 1e-3  # the block contributes
    block = m.token_fusion if kind == "sparse" else m.deq_fusion
    torch.nn.init.zeros_(block.out.weight)
    torch.nn.init.zeros_(block.out.bias)
    assert torch.allclose(m(x).logits, off, atol=1e-6)  # and nothing but the block is switched off


@torch.no_grad()
def test_deq_iterates_approach_the_fixed_point() -> None:
    # ImageNet encoders (in the wheel): with random encoders the tiny feature map gives a degenerate solve
    m, x = _model("deq", pretrained=True), _inputs()
    out = m(x, keep_states_at=(1, 2, 15))
    assert bool(out.solver.converged[0]) and int(out.solver.nstep[0]) < 15
    errs = [float((out.iterate_logits[k] - out.logits).abs().max()) for k in (1, 2, 15)]
    assert errs[0] > errs[1] > errs[2] and errs[0] > 1e-3 and errs[2] < 1e-6


def _sparse_res() -> dict:
    def s(pool, r, miou, after, flops):
        return {"pool": pool, "keep_ratio": r, "miou": miou, "pixel_acc": 60.0, "tokens_in": 600,
                "tokens_after": after, "fusion_flops": flops}
    sc = {"dense": s("none", None, 30.0, 600, 3.6e8), "zeroed": {"zero_block": True, "miou": 25.0, "pixel_acc": 50.0,
                                                                "tokens_in": 0, "tokens_after": 0, "fusion_flops": 0.0},
          "topk_attn@0.1": s("topk_attn", 0.1, 29.5, 60, 6e7), "random@0.1": s("random", 0.1, 28.0, 60, 6e7),
          "strided_random@0.1": s("strided_random", 0.1, 28.2, 64, 6e7), "shipped": s("topk_attn", 0.1, 29.5, 60, 6e7)}
    return {"name": "sparse_rgbd", "frames": 3, "settings": sc, "token_reduction": 10.0,
            "fusion_flops_reduction": 6.0}


def test_sparse_and_deq_readme_blocks_render() -> None:
    text = "\n".join(ablations.sparse_lines(_sparse_res(), "env", "test"))
    assert "| `topk_attn` (learned) | 29.50 |" in text and "| `random` (baseline) | 28.00 |" in text
    assert "28.20 (64)" in text  # a window mode's differing token count is shown
    assert "-4.50" in text  # zeroed vs shipped
    deq = {"name": "deq_rgbd", "frames": 3, "tol": 1e-3, "max_iter": 15, "converged_percent": 100.0,
           "mean_steps": 7.0, "max_steps": 9, "rel_residual_p99": 8e-4,
           "settings": {"iter1": {"miou": 20.0}, "iter4": {"miou": 29.0}, "fixed_point": {"miou": 30.0},
                        "fixed_point_iteration": {"miou": 29.9}, "zeroed": {"miou": 26.0}}}
    text = "\n".join(ablations.deq_lines(deq, "env", "test"))
    assert "| after 1 Anderson step | 20.00 | -10.00 |" in text and "**100.00%**" in text
