"""Sparse token fusion on emotion clips: 1-D masked pooling (every mode, padding never kept, counts, rows
independent of their batch's padding), the clip model (trace mapped to time, live options, the ablation, measured
fusion-stage FLOPs, gradients to the learned scorers, checkpoint round trip), and the shipped claims on fixed val
samples (skipped without ../shared and the shipped checkpoints)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fusion.encoders.common import EncoderOutput
from fusion.methods.sparse import POOL_MODES, TOPK_MODES, num_kept, pool_sequences
from fusion.models.clip_sparse import AUDIO_TOKEN_SECONDS, counted_fusion
from fusion.registry import create
from fusion.types import AUDIO, FACE, TEXT, FusionError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
ASSETS = ROOT / "assets" / "checkpoints"
D = 8


def seqs(lengths=(7, 3, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    x = torch.randn(len(lengths), n, D, generator=g)
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    return x, mask


def pool(x, mask, mode, r=0.25, a=None, **kw):
    if a is None:
        a = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(0))
    return pool_sequences(x, mask, mode=mode, keep_ratio=r, attn_received=a, score_logits=a * 4 - 2,
                          generator=torch.Generator().manual_seed(1), **kw)


# --------------------------------------------------------------------------- 1-D pooling


@pytest.mark.parametrize("mode", POOL_MODES)
def test_padding_is_never_kept_and_counts_follow_each_rows_length(mode):
    lengths = (7, 3, 12)
    x, mask = seqs(lengths)
    p = pool(x, mask, mode)
    for i, n in enumerate(lengths):
        k = int(p.mask[i].sum())
        want = n if mode == "none" else num_kept(n, 0.25) if mode in TOPK_MODES else math.ceil(n / 4)
        assert k == want, (mode, n, k)
        assert bool((p.kept[i, :k] >= 0).all() and (p.kept[i, :k] < n).all())  # real positions only
        assert bool((p.kept[i, k:] == -1).all()) and bool((p.tokens[i, k:] == 0).all())
        assert bool((p.scores[i, n:] == 0).all())
        assert p.kept[i, :k].tolist() == sorted(p.kept[i, :k].tolist())  # in time order


@pytest.mark.parametrize("mode", [m for m in POOL_MODES if m not in ("random", "strided_random")])
def test_a_rows_pooling_does_not_depend_on_its_batchs_padding(mode):
    x, mask = seqs((7, 3, 12))
    a = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(0))
    both = pool(x, mask, mode, a=a)
    alone = pool(x[1:2, :3], mask[1:2, :3], mode, a=a[1:2, :3])
    k = int(alone.mask[0].sum())
    assert torch.allclose(both.tokens[1, :k], alone.tokens[0, :k]) and torch.equal(both.kept[1, :k], alone.kept[0])


def test_topk_keeps_the_best_scored_and_window_avg_is_the_window_mean():
    x, mask = seqs((8,))
    score = torch.tensor([[0.0, 5, 1, 4, 2, 3, -1, 0.5]])
    p = pool_sequences(x, mask, mode="topk", keep_ratio=0.25, score_logits=score)
    assert p.kept[0].tolist() == [1, 3]
    assert torch.allclose(p.tokens[0], x[0, [1, 3]] * torch.sigmoid(score[0, [1, 3]])[:, None])
    p = pool_sequences(x, mask, mode="topk_attn", keep_ratio=0.25, attn_received=score.softmax(1))
    assert p.kept[0].tolist() == [1, 3]
    p = pool_sequences(x, mask, mode="avg", keep_ratio=0.25)
    assert torch.allclose(p.tokens[0], x[0].view(2, 4, D).mean(1)) and p.window == (1, 4)


def test_bad_mode_or_ratio_is_refused():
    x, mask = seqs((4,))
    with pytest.raises(ValueError):
        pool_sequences(x, mask, mode="nope", keep_ratio=0.5)
    with pytest.raises(ValueError):
        pool_sequences(x, mask, mode="avg", keep_ratio=0.0)


# --------------------------------------------------------------------------- the clip model


def enc_outputs(b=2, t_audio=(30, 17), t_text=(14, 6), crops=(1, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, dim, lens in ((FACE, 320, crops), (AUDIO, 256, t_audio), (TEXT, 384, t_text)):
        n = max(lens)
        tok = torch.randn(b, n, dim, generator=g)
        mask = torch.arange(n)[None] < torch.tensor(lens)[:, None]
        out[m] = EncoderOutput(tokens=tok, mask=mask, pooled=tok.mean(1), logits=torch.zeros(b, 7), modality=m)
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("sparse_clips", encoders=False).eval()


def test_trace_maps_kept_speech_tokens_to_seconds_and_counts_tokens(model):
    with torch.no_grad():
        _, tr = model.fuse_with(enc_outputs(), pool="topk", keep_ratio=0.1)
    assert tr.span_unit == {FACE: "crop", AUDIO: "s", TEXT: "word piece"}
    k = tr.kept[AUDIO][0][tr.kept_mask[AUDIO][0]]
    assert torch.allclose(tr.spans[AUDIO][0, : len(k), 0], k.float() * AUDIO_TOKEN_SECONDS)
    assert [int(v) for v in tr.kept_mask[AUDIO].sum(1)] == [3, 2]  # round(0.1 * 30), round(0.1 * 17)
    assert [int(v) for v in tr.kept_mask[TEXT].sum(1)] == [1, 1]
    assert tr.lengths[FACE].tolist() == [1, 3]


def test_the_ablation_and_the_options_change_the_answer_not_the_module(model):
    e = enc_outputs()
    with torch.no_grad():
        base, _ = model.fuse_with(e)
        zeroed, _ = model.fuse_with(e, zero=True)
        wide, tr = model.fuse_with(e, keep_ratio=0.5)
    assert not torch.allclose(base, zeroed) and not torch.allclose(base, wide)
    assert sum(int(m.sum()) for m in tr.kept_mask.values()) > 10
    with pytest.raises(FusionError):
        model.fuse_with(e, pool="nope")
    with pytest.raises(FusionError):
        model.fuse_with(e, keep_ratio=1.5)


def test_fusion_stage_flops_are_measured_and_fall_with_the_keep_ratio(model):
    e = {m: EncoderOutput(tokens=v.tokens[:1], mask=v.mask[:1], pooled=v.pooled[:1], logits=v.logits[:1],
                          modality=m) for m, v in enc_outputs().items()}
    flops = {r: counted_fusion(lambda: model.fuse_with(e, keep_ratio=r))[1] for r in (0.1, 0.5, 1.0)}
    _, dense = counted_fusion(lambda: model.fuse_with(e, pool="none"))
    assert 0 < flops[0.1] < flops[0.5] < flops[1.0] <= dense * 1.01


def test_full_forward_reports_the_fusion_stage_inside_the_total(model):
    ids, mask = model.encoders[TEXT].tokenize(["I am so happy"])
    x = {FACE: torch.rand(1, 2, 1, 48, 48), AUDIO: torch.randn(1, 64, 120) * 15 - 45, TEXT: ids, "text_mask": mask}
    with torch.no_grad():
        out = model(x, count_flops=True, pool="topk_attn", keep_ratio=0.2)
    assert out.tokens.pool == "topk_attn" and out.block is not None and not out.block.zeroed
    assert 0 < out.block.fusion_flops < float(out.flops[0])
    with torch.no_grad():
        z = model(x, zero_block=True)
    assert z.block.zeroed


@pytest.mark.parametrize("mode,part", [("topk", "scorer"), ("topk_attn", "attention"), ("attn_avg", "attention")])
def test_learned_scorers_get_a_gradient(mode, part):
    torch.manual_seed(0)
    m = create("sparse_clips", encoders=False, sparse={"pool": mode, "keep_ratio": 0.2}).train()
    loss = m.fusion_loss(enc_outputs(), torch.tensor([0, 3]))
    loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if n.startswith(f"fusion.{part}.{AUDIO}")]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_checkpoint_round_trip_keeps_the_pooling(tmp_path):
    from fusion.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    m = create("sparse_clips", encoders=False, sparse={"pool": "attn_avg", "keep_ratio": 0.2}).eval()
    save_checkpoint(m, tmp_path / "sp", {"task": "emotion_clips", "registry": "sparse_clips", "name": "sp"},
                    tensors=m.trainable_state_dict())
    card = __import__("json").loads((tmp_path / "sp.json").read_text())
    assert card["config"]["sparse"]["pool"] == "attn_avg"
    card["config"]["encoders"] = False
    (tmp_path / "sp.json").write_text(__import__("json").dumps(card))
    back, _ = load_checkpoint("sp", tmp_path)
    e = enc_outputs()
    with torch.no_grad():
        assert torch.allclose(back.fuse(e), m.fuse(e), atol=5e-3)  # weights stored as float16


# --------------------------------------------------------------------------- the shipped claims


SHIPPED = ("sparse_clips", "concat_clips")


@pytest.mark.skipif(not all((SHARED / n).is_dir() for n in ("fer2013", "ravdess", "meld")),
                    reason="needs ../shared/data (FER2013, RAVDESS, MELD)")
@pytest.mark.skipif(not all((ASSETS / f"{n}.json").exists() for n in SHIPPED), reason="needs the shipped checkpoints")
def test_shipped_sparse_model_keeps_its_claims_on_fixed_val_samples():
    """On 8 fixed val samples, real encoders: the shipped model feeds >= 8x fewer modality tokens into cross-modal
    attention than concat_clips and spends >= 4x fewer fusion-stage FLOPs (both measured); zeroing its pooled
    tokens changes its predictions (the block cannot be removed for free)."""
    from fusion.checkpoints import load_checkpoint
    from fusion.clip_sparse_eval import dense_tokens
    from fusion.clip_train import pairing
    from fusion.data.emotion import log_mel
    from fusion.inference import clips_inputs

    sparse, _ = load_checkpoint("sparse_clips")
    dense, _ = load_checkpoint("concat_clips")
    pairs = pairing("val", 0, None)
    tok_d = tok_s = fl_d = fl_s = 0.0
    preds, zeroed = [], []
    with torch.no_grad():
        for i in range(8):
            item = pairs[i]
            x = clips_inputs(faces=item["face"][None], log_mel=log_mel(item["audio"]), text=item["text"],
                             tokenizer=sparse.encoders[TEXT].tokenize)
            e = {m: sparse.encode(m, x) for m in (FACE, AUDIO, TEXT)}
            _, f = counted_fusion(lambda: dense.fuse(e))
            (lg, tr), g = counted_fusion(lambda: sparse.fuse_with(e))
            tok_d += dense_tokens(e)
            tok_s += sum(int(k.sum()) for k in tr.kept_mask.values())
            fl_d, fl_s = fl_d + f, fl_s + g
            preds.append(int(lg.argmax(1)))
            zeroed.append(int(sparse.fuse_with(e, zero=True)[0].argmax(1)))
    assert tok_d / tok_s >= 8.0, (tok_d, tok_s)
    assert fl_d / fl_s >= 4.0, (fl_d, fl_s)
    assert preds != zeroed  # with nothing read from any modality the answers change
