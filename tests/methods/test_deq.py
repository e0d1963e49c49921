"""DEQ fusion: solvers, implicit / phantom backward, Jacobian regulariser, the DEQFusion module."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fusion.methods.deq import (SOLVERS, DEQConfig, DEQFusion, anderson, attach_gradient, fixed_point,
                                jacobian_reg, pack_states, residuals, unpack_states)

torch.set_num_threads(1)


def contraction(D: int, norm: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random (D, D) matrix with spectral norm ``norm``."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=dtype)
    return A * (norm / torch.linalg.matrix_norm(A, 2))


def tanh_map(*, B: int = 3, D: int = 16, norm: float = 0.5, seed: int = 0, dtype=torch.float64):
    """``z -> tanh(A z + b_i)`` with ``||A|| = norm`` and a different ``b_i`` per sample."""
    A = contraction(D, norm, seed, dtype)
    b = torch.randn(B, D, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return (lambda z: torch.tanh(z @ A.T + b)), torch.zeros(B, D, dtype=dtype)


# ---------------------------------------------------------------------------------------------- solvers


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("stop_mode,tol", [("rel", 1e-6), ("abs", 1e-7)])
def test_solver_returns_state_that_meets_its_reported_residual(name, stop_mode, tol):
    f, z0 = tanh_map(norm=0.7)
    z, trace, stats = SOLVERS[name](f, z0, max_iter=100, tol=tol, stop_mode=stop_mode)
    abs_r, rel_r = residuals(z, f(z))
    assert stats["converged"].all()
    assert torch.allclose(abs_r, stats["abs_residual"]) and torch.allclose(rel_r, stats["rel_residual"])
    assert ((rel_r if stop_mode == "rel" else abs_r) < tol).all()
    assert stats["nstep"].dtype == torch.long and (stats["nstep"] >= 1).all() and (stats["nstep"] <= 100).all()
    assert trace.shape == (3, int(stats["nstep"].max()))
    last = trace[torch.arange(3), stats["nstep"] - 1]
    assert torch.allclose(last, rel_r if stop_mode == "rel" else abs_r)
    assert trace[:, 0].min() > tol  # the first iterate is not yet converged


def test_anderson_beats_fixed_point_on_a_slow_contraction():
    # symmetric A with eigenvalues spread over [-0.95, 0.95] and a small b (tanh near-linear): Picard
    # iteration contracts at about 0.95 per step
    D = 32
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(-0.95, 0.95, D, dtype=torch.float64)) @ Q.T
    b = 0.1 * torch.randn(3, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    f = lambda z: torch.tanh(z @ A.T + b)  # noqa: E731
    z0 = torch.zeros(3, D, dtype=torch.float64)
    kw = dict(max_iter=400, tol=1e-6, stop_mode="rel")
    _, _, s_fp = fixed_point(f, z0, **kw)
    _, _, s_aa = anderson(f, z0, **kw)
    assert s_fp["converged"].all() and s_aa["converged"].all()
    assert s_aa["nstep"].max() < s_fp["nstep"].min() / 2


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_per_sample_stop(name):
    D = 16
    A = contraction(D, 0.9, seed=5)
    b = torch.randn(2, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    scale = torch.tensor([[0.05], [1.0]], dtype=torch.float64)  # sample 0 is easy, sample 1 is hard
    f = lambda z: torch.tanh(scale * (z @ A.T) + b)  # noqa: E731
    z0 = torch.zeros(2, D, dtype=torch.float64)
    seen = []
    z, trace, stats = SOLVERS[name](f, z0, max_iter=200, tol=1e-8, stop_mode="abs",
                                    callback=lambda k, zz: seen.append(k))
    n0, n1 = stats["nstep"].tolist()
    assert stats["converged"].all() and n0 < n1
    assert seen == list(range(1, n1 + 1)) and trace.shape[1] == n1
    assert torch.all(trace[0, n0 - 1:] == trace[0, n0 - 1])  # stopped sample repeats its final value
    # the easy sample's answer does not depend on the hard one sharing its batch
    f0 = lambda zz: torch.tanh(scale[:1] * (zz @ A.T) + b[:1])  # noqa: E731
    z_solo, _, s_solo = SOLVERS[name](f0, z0[:1], max_iter=200, tol=1e-8, stop_mode="abs")
    assert int(s_solo["nstep"]) == n0 and torch.allclose(z_solo[0], z[0])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_unconverged_sample_returns_its_lowest_residual_state(name):
    f, z0 = tanh_map(norm=0.9)
    z, trace, stats = SOLVERS[name](f, z0, max_iter=4, tol=0.0, stop_mode="rel")
    assert not stats["converged"].any() and (stats["nstep"] == 4).all() and trace.shape == (3, 4)
    assert torch.allclose(stats["rel_residual"], trace.min(1).values)
    assert torch.allclose(residuals(z, f(z))[1], stats["rel_residual"])


def test_solver_rejects_bad_arguments():
    f, z0 = tanh_map()
    with pytest.raises(ValueError):
        anderson(f, z0, max_iter=5, tol=1e-3, stop_mode="max")
    with pytest.raises(ValueError):
        anderson(f, z0[None], max_iter=5, tol=1e-3, stop_mode="rel")


# ---------------------------------------------------------------------------------------------- backward


class TanhMap(nn.Module):
    """``f(z; x) = tanh(A z + U x + b)`` with a contractive ``A``."""

    def __init__(self, D: int = 8, norm: float = 0.6) -> None:
        super().__init__()
        self.A = nn.Parameter(contraction(D, norm, seed=11))
        self.U = nn.Parameter(torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(12)))
        self.b = nn.Parameter(0.1 * torch.ones(D, dtype=torch.float64))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.A.T + x @ self.U.T + self.b)


def _grads(mod: nn.Module, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mod.zero_grad()
    x.grad = None
    (z * w).sum().backward()
    return torch.cat([p.grad.flatten() for p in mod.parameters()] + [x.grad.flatten()])


def _setup():
    mod = TanhMap()
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 8, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(2, 8, dtype=torch.float64, generator=g)
    z = torch.zeros(2, 8, dtype=torch.float64)
    for _ in range(300):  # unrolled reference, backprop through every step
        z = mod(z, x)
    ref = _grads(mod, x, z, w)
    f = lambda zz: mod(zz, x)  # noqa: E731
    z_star, _, stats = anderson(f, torch.zeros(2, 8, dtype=torch.float64), max_iter=100, tol=1e-12,
                                stop_mode="abs")
    assert stats["converged"].all()
    return mod, x, w, f, z_star, ref


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_implicit_gradient_matches_unrolled(name):
    mod, x, w, f, z_star, ref = _setup()
    record: dict = {}
    z = attach_gradient(f, z_star, mode="implicit", solver=name, max_iter=200, tol=1e-12, stop_mode="abs",
                        record=record)
    got = _grads(mod, x, z, w)
    assert record["stats"]["converged"].all()
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-8)
    # a second backward through a retained graph gives the same gradient (the hook stays consistent)
    z2 = attach_gradient(f, z_star, mode="implicit", solver=name, max_iter=200, tol=1e-12, stop_mode="abs")
    loss = (z2 * w).sum()
    mod.zero_grad()
    x.grad = None
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(mod.A.grad, 2 * ref[:64].view(8, 8), rtol=1e-3, atol=1e-8)


def test_phantom_gradient_points_the_same_way():
    mod, x, w, f, z_star, ref = _setup()
    z = attach_gradient(f, z_star, mode="phantom", phantom_steps=5, phantom_lam=0.8)
    got = _grads(mod, x, z, w)
    assert torch.nn.functional.cosine_similarity(got, ref, dim=0) > 0.9


def test_attach_gradient_rejects_unknown_mode():
    mod, x, w, f, z_star, ref = _setup()
    with pytest.raises(ValueError):
        attach_gradient(f, z_star, mode="unrolled")


def test_jacobian_reg_estimates_frobenius_norm_and_is_differentiable():
    torch.manual_seed(0)
    A = nn.Parameter(contraction(8, 0.8, seed=2))
    f = lambda z: z @ A.T  # noqa: E731  J = A for every sample
    est = jacobian_reg(f, torch.zeros(4, 8, dtype=torch.float64), n_samples=200)
    exact = A.detach().pow(2).sum() / 8
    assert abs(float(est.detach()) / float(exact) - 1) < 0.2
    est.backward()
    assert A.grad is not None and A.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- module

C, HID = 16, 16


def make(**over) -> DEQFusion:
    torch.manual_seed(0)
    cfg = DEQConfig(hidden=HID, groups=4, tol=1e-3, max_iter=30, **over)
    return DEQFusion(in_channels={"rgb": C, "depth": C}, out_channels=8, cfg=cfg)


def feats_for(names=("rgb", "depth"), B: int = 2, H: int = 5, W: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(B, C, H, W, generator=g) for m in names}


def test_pack_unpack_round_trip():
    maps = [torch.randn(2, 3, 4, 5) for _ in range(3)]
    z = pack_states(maps)
    assert z.shape == (2, 180)
    assert all(torch.equal(a, b) for a, b in zip(maps, unpack_states(z, n=3, shape=(3, 4, 5))))


@pytest.mark.parametrize("names", [("rgb", "depth"), ("rgb",), ("depth",)])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_fresh_module_converges_in_eval(names, solver):
    m = make().eval()
    with torch.no_grad():
        out, tr = m(feats_for(names), solver=solver)
    assert out.shape == (2, 8, 5, 6) and torch.isfinite(out).all()
    assert torch.count_nonzero(out) == 0  # zero-init output conv: a no-op when added residually
    assert tr.converged.all() and (tr.rel_residual < 1e-3).all() and (tr.nstep <= 30).all()
    assert tr.residuals.shape == (2, int(tr.nstep.max())) and torch.isfinite(tr.residuals).all()
    assert (tr.residuals[:, -1] < tr.residuals[:, 0] / 10).all()
    assert tr.solver == solver and tr.tol == 1e-3 and tr.max_iter == 30 and tr.stop_mode == "rel"
    assert tr.jac_loss is None and tr.states == {}


def test_batch_members_do_not_interact():
    m = make().eval()
    nn.init.normal_(m.out.weight, std=0.1)
    f = feats_for()
    with torch.no_grad():
        out, tr = m(f)
        out0, tr0 = m({k: v[:1] for k, v in f.items()})
    torch.testing.assert_close(out[:1], out0, rtol=1e-4, atol=1e-5)
    assert int(tr0.nstep[0]) == int(tr.nstep[0])


def test_per_call_overrides():
    m = make().eval()
    with torch.no_grad():
        _, tr = m(feats_for(), solver="fixed_point", max_iter=3, tol=1e-9, stop_mode="abs")
    assert tr.residuals.shape == (2, 3) and (tr.nstep == 3).all() and not tr.converged.any()
    assert (tr.solver, tr.max_iter, tr.tol, tr.stop_mode) == ("fixed_point", 3, 1e-9, "abs")


def test_keep_states_at():
    m = make().eval()
    nn.init.normal_(m.out.weight, std=0.1)
    with torch.no_grad():
        out, tr = m(feats_for(), keep_states_at=(1, 3, 500))
    assert sorted(tr.states) == [1, 3, 500]
    assert all(s.shape == (2, 8, 5, 6) for s in tr.states.values())
    assert not torch.allclose(tr.states[1], tr.states[3])
    torch.testing.assert_close(tr.states[500], out)  # after the solve stopped: the final state


def test_eval_mode_attaches_no_gradient_through_the_solve():
    m = make().eval()
    nn.init.normal_(m.out.weight, std=0.1)
    out, _ = m(feats_for())
    out.sum().backward()
    assert m.out.weight.grad is not None
    assert m.fuse_conv.weight.grad is None and m.proj["rgb"][0].weight.grad is None


@pytest.mark.parametrize("backward", ["implicit", "phantom"])
def test_every_parameter_gets_a_finite_gradient_in_training(backward):
    m = make(backward=backward, jac_reg_weight=0.1).train()
    # zero-init output conv: only it gets a gradient at first
    out, tr = m(feats_for())
    out.pow(2).mean().add(out.mean()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad.abs().sum() > 0) == name.startswith("out."), name
    # once the output conv is non-zero, every parameter learns
    m.zero_grad()
    nn.init.normal_(m.out.weight, std=0.1)
    out, tr = m(feats_for())
    assert tr.jac_loss is not None and tr.jac_loss.dim() == 0 and torch.isfinite(tr.jac_loss)
    (out.pow(2).mean() + tr.jac_loss).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_module_implicit_gradient_matches_long_phantom_unroll():
    # phantom with lam = 1 and many steps from z* is backprop through a long unrolled solve
    mods = [make(backward="implicit", backward_tol=1e-10, backward_max_iter=100),
            make(backward="phantom", phantom_steps=80, phantom_lam=1.0)]
    mods[1].load_state_dict(mods[0].state_dict())
    grads = []
    for m in mods:
        m.double().train()
        torch.manual_seed(0)
        nn.init.normal_(m.out.weight, std=0.1)
        out, tr = m({k: v.double() for k, v in feats_for().items()}, tol=1e-10, max_iter=100, stop_mode="abs")
        assert tr.converged.all()
        out.pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-7)


def test_bad_inputs_raise():
    m = make()
    f = feats_for()
    with pytest.raises(ValueError):
        m({})
    with pytest.raises(ValueError):
        m({**f, "audio": f["rgb"]})
    with pytest.raises(ValueError):
        m({"rgb": torch.randn(2, C + 1, 5, 6)})
    with pytest.raises(ValueError):
        m({"rgb": f["rgb"], "depth": torch.randn(2, C, 4, 6)})
    with pytest.raises(ValueError):
        m({"rgb": f["rgb"][0]})
    with pytest.raises(ValueError):
        m(f, solver="newton")
    with pytest.raises(ValueError):
        m(f, keep_states_at=(0,))
    with pytest.raises(ValueError):
        DEQFusion(in_channels={"rgb": C}, out_channels=8, cfg=DEQConfig(hidden=16, groups=5))
    with pytest.raises(ValueError):
        DEQFusion(in_channels={"rgb": C}, out_channels=8, cfg=DEQConfig(backward="unrolled"))
