"""The clip DEQ fusion (``deq_clips``) on synthetic encoder outputs and tiny untrained encoders: it converges
untrained, traces one residual curve per state, drops an absent modality's state, stores nothing per call, keeps
its iterates out of the FLOP count, trains (implicit gradient + Jacobian penalty), the one-step control runs no
solver, and the per-state residuals are the solver's own."""
from __future__ import annotations

import copy

import pytest
import torch

from fusion.checkpoints import load_checkpoint, model_config, save_checkpoint
from fusion.encoders.common import EncoderOutput
from fusion.methods.deq import anderson, fixed_point, residuals
from fusion.registry import create
from fusion.types import AUDIO, FACE, TEXT, FusionError

torch.set_num_threads(1)
DIMS = {FACE: 320, AUDIO: 256, TEXT: 384}


def enc_outputs(b: int = 4, seed: int = 0, modalities=(FACE, AUDIO, TEXT)) -> dict[str, EncoderOutput]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        pooled = torch.randn(b, DIMS[m], generator=g)
        out[m] = EncoderOutput(tokens=pooled[:, None], mask=torch.ones(b, 1, dtype=torch.bool), pooled=pooled,
                               logits=torch.randn(b, 7, generator=g), modality=m)
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create("deq_clips", encoders=False).eval()
    torch.nn.init.normal_(m.fusion.deq.out.weight, std=0.5)  # the readout starts at zero: make it read the state
    return m


def clip_inputs(m, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids, mask = m.encoders[TEXT].tokenize(["I am so happy", "leave me alone now"][:b])
    return {FACE: torch.rand(b, 2, 1, 48, 48, generator=g), AUDIO: torch.randn(b, 64, 40, generator=g) * 15 - 45,
            TEXT: ids, "text_mask": mask}


def test_untrained_block_converges_and_traces_each_state(model):
    with torch.no_grad():
        logits, tr, skip = model.fusion(enc_outputs(), max_iter=30)
    assert logits.shape == (4, 7) and bool(torch.isfinite(logits).all())
    assert bool(tr.converged.all()) and int(tr.nstep.max()) <= 15
    assert bool((tr.rel_residual < 1e-3).all())
    n = tr.residuals.shape[1]
    assert tr.state_names == (FACE, AUDIO, TEXT, "fused")
    assert tr.state_residuals.shape == (4, n, 4)
    # each state's own residual is below the joint one at most by its share: sum of squares matches
    # (abs mode of the same solve: the joint abs residual^2 = sum of the states' abs residual^2)
    with torch.no_grad():
        _, tra, _ = model.fusion(enc_outputs(), stop_mode="abs", tol=1e-4, max_iter=30)
    torch.testing.assert_close(tra.state_residuals.pow(2).sum(2), tra.residuals.pow(2), rtol=1e-4, atol=1e-9)


def test_part_residuals_are_the_chunks_residuals():
    torch.manual_seed(0)
    A = torch.randn(6, 6) * 0.1
    f = lambda z: torch.tanh(z @ A) + 1.0  # noqa: E731
    z, trace, stats = anderson(f, torch.zeros(3, 6), max_iter=4, tol=0.0, parts=(2, 4))
    pr = stats["part_residuals"]
    assert pr.shape == (3, 4, 2)
    _, rel_a = residuals(z[:, :2], f(z)[:, :2])
    _, rel_b = residuals(z[:, 2:], f(z)[:, 2:])
    torch.testing.assert_close(pr[:, -1], torch.stack([rel_a, rel_b], 1))
    with pytest.raises(ValueError):
        fixed_point(f, torch.zeros(3, 6), max_iter=2, tol=1e-3, parts=(2, 3))


def test_a_missing_modality_leaves_the_fixed_point(model):
    enc = enc_outputs(modalities=(FACE, TEXT))
    with torch.no_grad():
        logits, tr, _ = model.fusion(enc)
    assert tr.state_names == (FACE, TEXT, "fused") and tr.state_residuals.shape[2] == 3
    # the absent modality's parameters are not used: changing them changes nothing
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        for p in m2.fusion.deq.blocks[AUDIO].parameters():
            p.add_(1.0)
        m2.fusion.deq.proj[AUDIO][0].weight.add_(1.0)
        logits2, _, _ = m2.fusion(enc)
    torch.testing.assert_close(logits, logits2)
    # but the present modalities matter
    enc3 = enc_outputs(modalities=(FACE, TEXT), seed=5)
    with torch.no_grad():
        assert not torch.allclose(model.fusion(enc3)[0], logits)
    x = clip_inputs(model)
    with torch.no_grad():
        out = model({k: v for k, v in x.items() if not k.startswith(AUDIO)}, keep_states_at=(1,))
    assert out.solver.state_names == (FACE, TEXT, "fused") and "audio absent" in " ".join(out.notes)


def test_live_options_are_per_call_and_nothing_is_stored(model):
    x = clip_inputs(model)
    attrs = set(vars(model))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        a = model(x, solver="fixed_point", max_iter=3, tol=1e-12)
        b = model(x)
        c = model(x, stop_mode="abs", tol=1e-2)
    assert a.solver.solver == "fixed_point" and int(a.solver.nstep.max()) == 3 and not bool(a.solver.converged.any())
    assert b.solver.solver == "anderson" and b.solver.max_iter == 15 and bool(b.solver.converged.all())
    assert c.solver.stop_mode == "abs"
    assert set(vars(model)) == attrs
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FusionError):
        model(x, solver="newton")


def test_iterates_decoded_outside_the_flop_count(model):
    x = {k: v[:1] for k, v in clip_inputs(model).items()}
    with torch.no_grad():
        plain = model(x, count_flops=True)
        kept = model(x, count_flops=True, keep_states_at=(1, 2, 4, 8, 100))
    assert float(kept.flops[0]) == float(plain.flops[0])
    assert kept.block.fusion_flops == plain.block.fusion_flops and plain.block.fusion_flops > 0
    assert sorted(kept.iterate_logits) == [1, 2, 4, 8, 100]
    torch.testing.assert_close(kept.iterate_logits[100], kept.logits)  # after the stop: the final state
    assert not torch.allclose(kept.iterate_logits[1], kept.logits)


def test_zeroed_block_is_the_skip_and_runs_no_solve(model):
    x = clip_inputs(model)
    with torch.no_grad():
        z = model(x, zero_block=True, count_flops=True)
        full = model(x, count_flops=True)
        late = model.fusion.late({m: model.encode(m, x) for m in (FACE, AUDIO, TEXT)})
    assert z.solver is None and z.block.zeroed and z.block.fusion_flops == 0
    torch.testing.assert_close(z.logits, late)
    assert bool((z.flops < full.flops).all())


def test_training_step_gives_every_fusion_parameter_a_gradient():
    torch.manual_seed(0)
    m = create("deq_clips", encoders=False, deq={"jac_reg_weight": 1.0})
    m.train()
    # a trained-looking readout so the gradient reaches the states (the readout starts at zero)
    torch.nn.init.normal_(m.fusion.deq.out.weight, std=0.1)
    loss = m.fusion_loss(enc_outputs(), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for n, p in m.fusion.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), n
        assert float(p.grad.abs().sum()) > 0, n


def test_one_step_control_runs_no_solver():
    torch.manual_seed(0)
    m = create("deq_clips", encoders=False, deq={"unroll": 1}).eval()
    torch.nn.init.normal_(m.fusion.deq.out.weight, std=0.1)
    with torch.no_grad():
        logits, tr, _ = m.fusion(enc_outputs(), keep_states_at=(1, 2))
        direct = m.fusion.deq.out(m.fusion.deq._block(  # one application of f from zeros, by hand
            torch.zeros(4, 4 * 128), {k: m.fusion.deq.proj[k](v) for k, v in m.fusion.inject(enc_outputs()).items()},
            [FACE, AUDIO, TEXT], (128, 1, 1))[:, -128:, None, None])[:, :, 0, 0]
    assert tr.solver == "unrolled 1" and tr.residuals.shape[1] == 0 and int(tr.nstep[0]) == 1
    torch.testing.assert_close(logits, direct + m.fusion.late(enc_outputs()))


def test_config_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = create("deq_clips", encoders=False, deq={"hidden": 64, "jac_reg_weight": 0.5}, skip="none")
    cfg = model_config(m)
    assert cfg["deq"]["hidden"] == 64 and cfg["skip"] == "none"
    save_checkpoint(m, tmp_path / "d", {"name": "d", "task": "emotion_clips", "registry": "deq_clips"},
                    tensors=m.trainable_state_dict())
    m2, card = load_checkpoint(tmp_path / "d.json")
    assert m2.cfg.deq.hidden == 64 and m2.cfg.deq.kernel == 1 and m2.cfg.skip == "none"
    with pytest.raises(FusionError):
        create("deq_clips", encoders=False, deq={"kernel": 3})
    with pytest.raises(FusionError):
        create("deq_clips", encoders=False, nope=1)
