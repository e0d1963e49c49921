"""The core's contract, checked over every registered model of both tasks (timm-style, over the registry).

Each model is built untrained (RGB-D: no ImageNet weights; clips: untrained encoders) and must: return one typed
FusionOutput whose logits fit the task; say which modalities it used; count FLOPs per input on the path that
ran; refuse bad inputs and unknown options with a FusionError; handle a missing modality (use what is left, or a
clean error); and store nothing per call on the module (models are shared between app sessions)."""
from __future__ import annotations

import copy

import pytest
import torch

from fusion.registry import create, key_of, list_models, methods, model_name
from fusion.tasks import get_task
from fusion.types import AUDIO, DEPTH, FACE, RGB, TEXT, FusionError, FusionOutput

torch.set_num_threads(1)
RGBD = list_models("rgbd_seg")
CLIPS = list_models("emotion_clips")


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    task = key_of(name)[0]
    m = create(name, pretrained=False) if task == "rgbd_seg" else create(name, encoders=False)
    return m.eval()


_CACHE: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _CACHE:
        _CACHE[name] = _build(name)
    return _CACHE[name]


def inputs(name: str, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if key_of(name)[0] == "rgbd_seg":
        return {RGB: torch.rand(b, 3, 64, 96, generator=g), DEPTH: torch.rand(b, 1, 64, 96, generator=g) * 4 + 0.5}
    ids, mask = model(name).encoders[TEXT].tokenize(["I am so happy", "leave me alone now"][:b])
    return {FACE: torch.rand(b, 2, 1, 48, 48, generator=g), "face_mask": torch.ones(b, 2, dtype=torch.bool),
            AUDIO: torch.randn(b, 64, 40, generator=g) * 15 - 45, "audio_mask": torch.ones(b, 40, dtype=torch.bool),
            TEXT: ids, "text_mask": mask}


def _logit_shape(name: str, b: int) -> tuple[int, ...]:
    m = model(name)
    if key_of(name)[0] == "rgbd_seg":
        return (b, m.cfg.num_classes, 64, 96)
    return (b, 7)


def test_registry_is_keyed_by_task_and_method() -> None:
    assert set(methods("rgbd_seg")) >= {"static", "dynmm", "sparse", "deq", "adapted"}
    assert set(methods("emotion_clips")) == {"late", "concat", "dynmm", "deq", "sparse", "adapted", "dedicated"}
    assert model_name("emotion_clips", "dynmm") == "dynmm_clips" and key_of("dynmm_rgbd") == ("rgbd_seg", "dynmm")
    assert get_task("clips").registry_task == "emotion_clips" and get_task("rgbd_seg").name == "rgbd"
    with pytest.raises(FusionError):
        model_name("emotion_clips", "nope")
    with pytest.raises(FusionError):
        get_task("video")


@pytest.mark.parametrize("name", RGBD + CLIPS)
def test_typed_output_and_measured_flops(name: str) -> None:
    m, x = model(name), inputs(name)
    before = copy.deepcopy({k: v.clone() for k, v in m.state_dict().items()})
    attrs = set(vars(m))
    with torch.no_grad():
        out = m(x, count_flops=True)
    assert isinstance(out, FusionOutput) and tuple(out.logits.shape) == _logit_shape(name, 2)
    assert out.flops is not None and out.flops.shape == (2,) and bool((out.flops > 0).all())
    assert set(out.present) <= set(get_task(key_of(name)[0]).modalities) and out.present
    assert not hasattr(out, "extras")
    # nothing stored on the (shared) module by the call
    assert set(vars(m)) == attrs
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a batch counted input by input gives each input's own count
    with torch.no_grad():
        one = m(m.select(x, 1), count_flops=True)
    assert torch.allclose(one.logits, out.logits[1:2], atol=1e-4)
    assert float(one.flops[0]) == pytest.approx(float(out.flops[1]))


@pytest.mark.parametrize("name", RGBD + CLIPS)
def test_bad_inputs_and_options_are_fusion_errors(name: str) -> None:
    m, x = model(name), inputs(name)
    with pytest.raises(FusionError):
        m(x, no_such_option=1)
    with pytest.raises(FusionError):
        m({})
    bad = dict(x)
    key = RGB if RGB in bad else FACE
    bad[key] = bad[key][:, :1] if key == RGB else bad[key][:, :, :, :10]
    with pytest.raises(FusionError):
        m(bad)
    nan = dict(x)
    k2 = DEPTH if DEPTH in nan else AUDIO
    nan[k2] = nan[k2].clone()
    nan[k2].view(-1)[0] = float("nan")
    with pytest.raises(FusionError):
        m(nan)


@pytest.mark.parametrize("name", RGBD + CLIPS)
def test_a_missing_modality_is_handled(name: str) -> None:
    m, x = model(name), inputs(name)
    task = get_task(key_of(name)[0])
    for drop in task.modalities:
        y = {k: v for k, v in x.items() if not k.startswith(drop)}
        try:
            with torch.no_grad():
                out = m(y)
        except FusionError as e:  # a model that cannot run without it says so
            assert str(e)
            continue
        assert drop not in out.present and tuple(out.logits.shape) == _logit_shape(name, 2)
        assert out.notes, "a missing modality must be explained in the notes"


def test_clip_dynmm_runs_only_the_chosen_branchs_encoders() -> None:
    m, x = model("dynmm_clips"), inputs("dynmm_clips")
    with torch.no_grad():
        costs = [float(m(x, count_flops=True, force_branch=k).flops.mean()) for k in range(len(m.branches))]
        outs = [m(x, force_branch=k) for k in range(len(m.branches))]
    for k, (o, s) in enumerate(zip(outs, m.branches)):
        assert set(o.ran) == set(s), (k, o.ran, s)
    assert costs[0] < min(costs[1:3]) and max(costs[1:3]) < costs[3]
    assert m.branches[0] == (TEXT,) and m.branches[-1] == (FACE, AUDIO, TEXT)


def test_clip_models_round_trip_through_a_checkpoint(tmp_path) -> None:
    from fusion.checkpoints import load_checkpoint, save_checkpoint

    m, x = model("concat_clips"), inputs("concat_clips")
    save_checkpoint(m, tmp_path / "c", {"name": "c", "task": "emotion_clips", "registry": "concat_clips"},
                    tensors=m.trainable_state_dict())
    card = (tmp_path / "c.json").read_text()
    assert '"encoders": false' in card  # untrained encoders in this test; shipped cards load the checkpoints
    torch.manual_seed(0)  # the same untrained encoders as the model's (a shipped card loads their checkpoints)
    loaded, _ = load_checkpoint(tmp_path / "c.json")
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, m(x).logits, atol=2e-2)  # fp16 weights
