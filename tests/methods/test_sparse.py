"""Sparse token fusion: every pool mode, token counts, kept indices, pooling values, measured FLOPs saved,
missing modalities, gradients, seeded randomness."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion.methods.sparse import (POOL_MODES, TOPK_MODES, WINDOW_MODES, SparseConfig, SparseTokenFusion,
                                   TransformerLayer, attention_flops, num_kept, pool_window, sparse_pool)

torch.set_num_threads(1)

H, W, C = 6, 10, 16
N = H * W


def make(dim=32, heads=2, **kw):
    torch.manual_seed(0)
    cfg = SparseConfig(dim=dim, heads=heads, **kw)
    return SparseTokenFusion(in_channels={"rgb": C, "depth": C}, primary="rgb", out_channels=C, cfg=cfg)


def maps(b=2, h=H, w=W, c=C, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(b, c, h, w, generator=g), "depth": torch.randn(b, c, h, w, generator=g)}


@pytest.fixture(scope="module")
def model():
    return make().eval()


@pytest.mark.parametrize("mode", POOL_MODES)
def test_every_pool_mode_shapes_counts_and_indices(model, mode):
    x = maps()
    with torch.no_grad():
        out, tr = model(x, pool=mode)
    assert out.shape == (2, C, H, W) and torch.isfinite(out).all()
    assert tr.pool == mode and tr.tokens_before == 2 * N
    assert tr.tokens_after <= tr.tokens_before
    wh, ww = pool_window(model.cfg.window, model.cfg.keep_ratio)
    n_win = math.ceil(H / wh) * math.ceil(W / ww)
    if mode == "none":
        expect = N
    elif mode in TOPK_MODES:
        expect = max(1, round(model.cfg.keep_ratio * N))
    else:
        expect = n_win
    assert tr.tokens_after == 2 * expect
    for m in ("rgb", "depth"):
        kept, scores, weights = tr.kept[m], tr.scores[m], tr.weights[m]
        assert tr.grid[m] == (H, W)
        assert kept.shape == (2, expect) and kept.dtype == torch.long
        assert scores.shape == (2, N) and torch.isfinite(scores).all()
        assert weights.shape == (2, expect) and torch.isfinite(weights).all()
        assert kept.min() >= 0 and kept.max() < N
        torch.testing.assert_close(weights, scores.gather(1, kept))
        for b in range(2):
            assert kept[b].unique().numel() == expect  # distinct tokens (distinct windows for window modes)
        if mode in WINDOW_MODES:
            win = tr.windows[m]
            assert win.shape == (2, N) and win.min() == 0 and win.max() == n_win - 1
            # each kept token lies in its own window, in window order
            assert torch.equal(win.gather(1, kept), torch.arange(n_win).expand(2, -1))
            # per-window scores are a distribution
            per_win = torch.zeros(2, n_win).index_add(1, win[0], scores)
            torch.testing.assert_close(per_win, torch.ones(2, n_win))
        else:
            assert tr.windows[m] is None
    if mode == "none":
        assert tr.tokens_after == tr.tokens_before


def test_window_count_with_ragged_edges():
    # 6x10 with 2x4 windows: 3 x 3 windows, the last column of windows only 2 cells wide
    x = torch.randn(1, N, 4)
    p = sparse_pool(x, mode="avg", grid=(H, W), keep_ratio=0.125, window=(2, 4))
    assert p.tokens.shape == (1, 9, 4)
    grid = x.view(1, H, W, 4)
    torch.testing.assert_close(p.tokens[0, 2], grid[0, 0:2, 8:10].reshape(-1, 4).mean(0))  # padding ignored
    torch.testing.assert_close(p.tokens[0, 4], grid[0, 2:4, 4:8].reshape(-1, 4).mean(0))


def test_window_derived_from_keep_ratio():
    assert pool_window(None, 0.125) == (2, 4)
    assert pool_window(None, 0.25) == (2, 2)
    assert pool_window(None, 1.0) == (1, 1)
    assert pool_window((3, 5), 0.5) == (3, 5)
    m = make(window=None).eval()
    with torch.no_grad():
        _, tr = m(maps(b=1), pool="max", keep_ratio=0.25)
    assert tr.window == (2, 2) and tr.tokens_after == 2 * 3 * 5


def test_topk_attn_keeps_argsort_top_k_of_scores(model):
    with torch.no_grad():
        _, tr = model(maps(), pool="topk_attn", keep_ratio=0.2)
    k = num_kept(N, 0.2)
    for m in ("rgb", "depth"):
        # scores are the attention received: a distribution over the grid
        torch.testing.assert_close(tr.scores[m].sum(1), torch.ones(2))
        for b in range(2):
            top = tr.scores[m][b].argsort(descending=True)[:k]
            assert set(top.tolist()) == set(tr.kept[m][b].tolist())


def test_topk_scorer_keeps_highest_scores(model):
    with torch.no_grad():
        _, tr = model(maps(), pool="topk", keep_ratio=0.3)
    k = num_kept(N, 0.3)
    s = tr.scores["depth"]
    assert ((s > 0) & (s < 1)).all()  # sigmoid of the scorer's logits
    for b in range(2):
        assert set(s[b].argsort(descending=True)[:k].tolist()) == set(tr.kept["depth"][b].tolist())


def test_max_pooling_picks_per_window_max_hand_made():
    # grid 2 x 3, window 2 x 2 -> windows {0,1,3,4} and ragged {2,5}; D = 2
    x = torch.tensor([[[1.0, 9.0], [5.0, 0.0], [7.0, -1.0],
                       [3.0, 2.0], [8.0, 8.5], [-2.0, -3.0]]])
    p = sparse_pool(x, mode="max", grid=(2, 3), keep_ratio=0.5, window=(2, 2))
    assert torch.equal(p.tokens, torch.tensor([[[8.0, 9.0], [7.0, -1.0]]]))
    # cell 4 holds the max of channel 0, cell 0 of channel 1: tie -> the first slot (cell 0); cell 2 wins both
    assert torch.equal(p.kept, torch.tensor([[0, 2]]))
    assert torch.equal(p.windows, torch.tensor([[0, 0, 1, 0, 0, 1]]))
    torch.testing.assert_close(p.scores, torch.tensor([[0.5, 0.0, 1.0, 0.0, 0.5, 0.0]]))
    # negative values in a ragged window must not lose to padding
    y = -torch.arange(1.0, 7.0).view(1, 6, 1)
    q = sparse_pool(y, mode="max", grid=(2, 3), keep_ratio=0.5, window=(2, 2))
    assert torch.equal(q.tokens.flatten(), torch.tensor([-1.0, -3.0]))


def test_attn_avg_is_attention_weighted_window_mean():
    x = torch.randn(1, 4, 3)
    a = torch.tensor([[0.1, 0.3, 0.2, 0.4]])
    p = sparse_pool(x, mode="attn_avg", grid=(2, 2), keep_ratio=0.25, window=(2, 2), attn_received=a)
    torch.testing.assert_close(p.tokens[0, 0], (x[0] * a[0, :, None]).sum(0) / a.sum())
    assert p.kept.tolist() == [[3]]


def test_sparse_fusion_flops_much_lower_than_dense():
    torch.manual_seed(0)
    cfg = SparseConfig(dim=96, heads=4, keep_ratio=1 / 8)
    m = SparseTokenFusion(in_channels={"rgb": 8, "depth": 8}, primary="rgb", out_channels=8, cfg=cfg).eval()
    x = maps(b=1, h=15, w=20, c=8)

    def fusion_flops(pool):
        with torch.no_grad():
            enc = m.encode(x)
            parts = [m.pool(k, e, pool=pool, keep_ratio=cfg.keep_ratio).tokens for k, e in enc.items()]
            with FlopCounterMode(display=False) as fc:
                m.fuse(torch.cat(parts, 1), enc["rgb"].tokens, enc["rgb"].grid)
        return fc.get_total_flops()

    dense, sparse = fusion_flops("none"), fusion_flops("topk_attn")
    assert dense > 4 * sparse, (dense, sparse)
    # the attention matmuls alone shrink by far more
    n, k = 2 * 300, 2 * num_kept(300, 1 / 8)
    assert attention_flops(n, n, 96) + attention_flops(300, n, 96) > 10 * (
        attention_flops(k, k, 96) + attention_flops(300, k, 96))


def test_attention_flops_matches_measured_layer():
    n, d, hidden = 12, 16, 32
    layer = TransformerLayer(dim=d, heads=2, mlp_ratio=hidden / d)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        layer(torch.randn(1, n, d))
    linear = 2 * n * d * (3 * d + d + 2 * hidden)
    assert fc.get_total_flops() == attention_flops(n, n, d) + linear


def test_one_modality_and_missing_primary(model):
    x = maps()
    with torch.no_grad():
        out, tr = model({"rgb": x["rgb"]})
    assert out.shape == (2, C, H, W) and set(tr.kept) == {"rgb"} and tr.tokens_before == N
    with pytest.raises(ValueError):
        model({"depth": x["depth"]})
    with pytest.raises(ValueError):
        model({**x, "audio": x["rgb"]})
    with pytest.raises(ValueError):
        model(x, pool="median")
    with pytest.raises(ValueError):
        model(x, keep_ratio=0.0)


def test_different_grid_sizes_and_interpolated_positions(model):
    x = {"rgb": torch.randn(1, C, 5, 7), "depth": torch.randn(1, C, 3, 4)}
    with torch.no_grad():
        out, tr = model(x, pool="attn_avg")
    assert out.shape == (1, C, 5, 7) and tr.grid == {"rgb": (5, 7), "depth": (3, 4)}


def test_zero_init_output_is_noop():
    m = make().eval()
    with torch.no_grad():
        out, _ = m(maps())
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("mode", ["topk_attn", "topk", "attn_avg"])
def test_all_parameters_get_finite_gradients(mode):
    m = make().train()
    with torch.no_grad():
        m.out.weight.normal_(std=0.1)
    out, _ = m(maps(), pool=mode)
    out.square().mean().backward()
    for name, p in m.named_parameters():
        if name.startswith("scorer.") and mode != "topk":
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["random", "strided_random"])
def test_seeded_random_deterministic_in_eval_fresh_in_training(model, mode):
    x = maps()
    with torch.no_grad():
        o1, t1 = model(x, pool=mode)
        o2, t2 = model(x, pool=mode)
    assert torch.equal(o1, o2) and torch.equal(t1.kept["depth"], t2.kept["depth"])
    m = make(seed=123).eval()
    with torch.no_grad():
        _, t3 = m(x, pool=mode)
    assert not torch.equal(t1.kept["depth"], t3.kept["depth"])
    m.train()
    torch.manual_seed(7)
    draws = {tuple(m(x, pool=mode)[1].kept["depth"].flatten().tolist()) for _ in range(3)}
    assert len(draws) > 1
