"""Audio encoder: token shapes and masks over variable lengths, padding invariance, real log-mel input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.data.emotion import SAMPLE_RATE, log_mel
from fusion.encoders.audio import TIME_STRIDE, AudioConfig, AudioEncoder, lengths_to_mask, pad_spectrograms
from fusion.registry import create
from fusion.types import FusionError

torch.set_num_threads(1)


def _enc() -> AudioEncoder:
    torch.manual_seed(0)
    enc = AudioEncoder(cfg=AudioConfig(width=8))
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode is not the identity
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def test_shapes_and_masks() -> None:
    enc = _enc()
    g = torch.Generator().manual_seed(0)
    specs = [torch.randn(64, n, generator=g) * 20 - 60 for n in (37, 80, 5)]
    x, mask = pad_spectrograms(specs)
    assert x.shape == (3, 64, 80) and mask.sum(1).tolist() == [37, 80, 5]
    out = enc(x, mask)
    assert out.tokens.shape == (3, 10, 64) and out.pooled.shape == (3, 64) and out.logits.shape == (3, 7)
    assert out.mask.sum(1).tolist() == [5, 10, 1]  # ceil(T / 8) tokens are real
    assert out.modality == "audio" and TIME_STRIDE == 8
    assert torch.count_nonzero(out.tokens[~out.mask]) == 0
    assert torch.allclose(out.pooled[0], out.tokens[0, :5].mean(0), atol=1e-6)
    assert enc(torch.randn(1, 64, 13)).tokens.shape == (1, 2, 64)  # no mask: all real, time padded inside


@pytest.mark.parametrize("length", [37, 40, 5])
def test_padding_does_not_change_a_clip(length: int) -> None:
    enc = _enc()
    g = torch.Generator().manual_seed(length)
    clip = torch.randn(1, 64, length, generator=g) * 20 - 60
    other = torch.randn(1, 64, 123, generator=g) * 20 - 60
    alone = enc(clip)
    x, mask = pad_spectrograms([clip[0], other[0]])
    x[0, :, length:] = 55.0  # whatever sits in the padding must not matter
    batched = enc(x, mask)
    n = alone.tokens.shape[1]
    assert torch.allclose(batched.tokens[0, :n], alone.tokens[0], atol=1e-5)
    assert torch.allclose(batched.pooled[0], alone.pooled[0], atol=1e-5)
    assert torch.allclose(batched.logits[0], alone.logits[0], atol=1e-5)


def test_real_log_mel_and_gradients() -> None:
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    spec = log_mel((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    enc = create("audio_encoder", width=8).train()
    out = enc(torch.from_numpy(spec)[None].repeat(2, 1, 1))
    assert out.tokens.shape == (2, -(-spec.shape[1] // 8), 64) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in enc.parameters())


def test_bad_inputs() -> None:
    enc = _enc()
    with pytest.raises(FusionError, match="log-mel"):
        enc(torch.randn(2, 40, 50))
    with pytest.raises(FusionError, match="mask"):
        enc(torch.randn(2, 64, 50), torch.ones(2, 49, dtype=torch.bool))
    with pytest.raises(FusionError, match="real frame"):
        enc(torch.randn(2, 64, 50), lengths_to_mask([50, 0]))
    with pytest.raises(FusionError):
        pad_spectrograms([np.zeros((64, 5)), np.zeros((32, 5))])
    with pytest.raises(FusionError):
        create("audio_encoder", n_mels=40)
