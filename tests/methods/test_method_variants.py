"""The experiment switches behind the sparse / DEQ variants of issue 6: a read-back that cannot bypass the
fused tokens, a DEQ fused state injected with RGB alone, and depth reaching the RGB stream through the
method's block only. Random weights; no data needed."""
from __future__ import annotations

import pytest
import torch

from fusion.methods.deq import DEQConfig, DEQFusion
from fusion.methods.sparse import CrossAttention
from fusion.registry import create
from fusion.types import DEPTH, RGB


def _inputs(depth_seed: int = 2) -> dict[str, torch.Tensor]:
    rgb = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    return {RGB: rgb, DEPTH: torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(depth_seed)) * 4 + 0.5}


@torch.no_grad()
def test_read_back_without_residual_depends_only_on_what_it_reads() -> None:
    torch.manual_seed(0)
    x, mem = torch.randn(2, 12, 16), torch.randn(2, 3, 16)
    res, plain = CrossAttention(dim=16, heads=4, mlp_ratio=2.0), CrossAttention(dim=16, heads=4, mlp_ratio=2.0,
                                                                                   residual=False)
    plain.load_state_dict(res.state_dict())
    # one memory token: every query reads the same value, so without the residual every output row is equal
    one = mem[:, :1]
    y, _ = plain(x, one)
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-5)
    y_res, _ = res(x, one)
    assert not torch.allclose(y_res, y_res[:, :1].expand_as(y_res), atol=1e-3)  # the residual passes x through


@torch.no_grad()
def test_deq_primary_injection_gets_depth_only_through_the_iteration() -> None:
    torch.manual_seed(0)
    cfg = DEQConfig(inject="primary", hidden=16, groups=4)
    m = DEQFusion(in_channels={RGB: 8, DEPTH: 8}, out_channels=8, cfg=cfg).eval()
    torch.nn.init.normal_(m.out.weight, std=1.0)
    torch.nn.init.normal_(m.fuse_conv.weight, std=0.5)
    rgb, d1 = torch.randn(1, 8, 4, 5), torch.randn(1, 8, 4, 5)
    d2 = d1 + torch.randn_like(d1)
    k = dict(solver="fixed_point", tol=1e-12, keep_states_at=(1, 2))
    _, t1 = m({RGB: rgb, DEPTH: d1}, **k, max_iter=2)
    _, t2 = m({RGB: rgb, DEPTH: d2}, **k, max_iter=2)
    assert torch.allclose(t1.states[1], t2.states[1])  # one step from zero: no depth in the fused state yet
    assert not torch.allclose(t1.states[2], t2.states[2], atol=1e-4)  # it arrives at the second
    with pytest.raises(ValueError):
        DEQFusion(in_channels={RGB: 8}, out_channels=8, cfg=DEQConfig(inject="bogus", hidden=16, groups=4))


@pytest.mark.parametrize("kind", ["sparse", "deq"])
@torch.no_grad()
def test_depth_via_block_only_makes_the_block_depths_only_way_in(kind: str) -> None:
    torch.manual_seed(0)
    kw = {"sparse": {"read_residual": False, "pool": "none"}} if kind == "sparse" else {}
    # ImageNet encoders (in the wheel): random ones give stage features too flat for depth to show
    m = create(f"{kind}_rgbd", num_classes=5, pretrained=True, depth_via_block_only=True, **kw).eval()
    block = m.token_fusion if kind == "sparse" else m.deq_fusion
    torch.nn.init.normal_(block.out.weight, std=1.0)
    a, b = _inputs(), _inputs(depth_seed=3)
    assert not torch.allclose(m(a).logits, m(b).logits, atol=1e-5)  # depth matters ...
    assert torch.allclose(m(a, zero_block=True).logits, m(b, zero_block=True).logits)  # ... only via the block
    # the default model still adds depth at its other stages
    s = create(f"{kind}_rgbd", num_classes=5, pretrained=True).eval()
    assert not torch.allclose(s(a, zero_block=True).logits, s(b, zero_block=True).logits, atol=1e-6)
