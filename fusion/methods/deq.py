"""Deep-equilibrium multimodal fusion (Ni, Bai, Zhang, Yao, Mei, "Deep Equilibrium Multimodal Fusion",
arXiv:2306.16645, 2023).

Instead of stacking a fixed number of fusion layers, DEQ fusion defines the fused features as the fixed
point ``z* = f(z*; x)`` of one weight-tied block and finds it with a root solver (Bai, Kolter & Koltun,
"Deep Equilibrium Models", NeurIPS 2019). The file reads top-down in three parts, as torchdeq splits it:

1. **Solvers** -- pure functions with one signature
   ``solver(f, z0, *, max_iter, tol, stop_mode, callback=None, **opts) -> (z, trace, stats)`` on flat
   ``(B, D)`` states: Anderson acceleration, limited-memory (good) Broyden, plain fixed-point iteration.
   Each sample stops on its own once its residual is below ``tol``.
2. **Backward** -- the solvers run under ``no_grad``; ``attach_gradient`` re-attaches a gradient either
   by the implicit function theorem (an adjoint fixed point solved in a backward hook) or by the k-step
   phantom gradient (Geng et al., "On Training Implicit Models", NeurIPS 2021). ``jacobian_reg`` is the
   Hutchinson estimate of ``||J_f(z*)||_F^2 / D`` (Bai, Koltun & Kolter, "Stabilizing Equilibrium Models
   by Jacobian Regularization", ICML 2021), the paper's optional regulariser.
3. **The module** -- ``DEQFusion``: per-modality residual blocks with injected features and a fused state
   that is purified by every modality and receives a weighted sum of the injections; all states are
   solved jointly as one fixed point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor
StateMap = Callable[[Tensor], Tensor]
Callback = Callable[[int, Tensor], None]

STOP_MODES = ("rel", "abs")

# --------------------------------------------------------------------------------------------------------
# 1. Solvers
# --------------------------------------------------------------------------------------------------------


def residuals(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(abs, rel)`` residuals: ``||f(z) - z||`` and ``||f(z) - z|| / (||f(z)|| + 1e-8)``."""
    abs_r = (fz - z).flatten(1).norm(dim=1)  # (B,)
    rel_r = abs_r / (fz.flatten(1).norm(dim=1) + 1e-8)  # (B,)
    return abs_r, rel_r


class _Monitor:
    """Book-keeping shared by the solvers: per-sample stop, best state, residual trace, stats.

    Iteration ``k`` (1-based) produces the iterate ``z_k`` and measures its residual with ``f(z_k)``, so
    every reported residual belongs to a state that is actually returned or shown.
    """

    def __init__(self, z0: Tensor, fz0: Tensor, *, tol: float, stop_mode: str, max_iter: int,
                 parts: tuple[int, ...] | None = None) -> None:
        self.tol, self.stop_mode = tol, stop_mode
        self.parts = parts
        self.part_cols: list[Tensor] = []
        self.final_parts = None if parts is None else self._part_r(z0, fz0)
        abs_r, rel_r = residuals(z0, fz0)
        r = self._pick(abs_r, rel_r)
        self.best_z = z0.clone()  # (B, D)
        self.best_abs, self.best_rel = abs_r.clone(), rel_r.clone()
        self.best_r = torch.nan_to_num(r, nan=float("inf"))
        self.converged = r < tol  # (B,) a warm start may already be converged (nstep 0)
        self.active = ~self.converged
        self.nstep = torch.full_like(r, max_iter, dtype=torch.long).masked_fill(self.converged, 0)
        self.final_r = r.clone()  # value repeated in the trace once a sample stopped
        self.cols: list[Tensor] = []

    def _pick(self, abs_r: Tensor, rel_r: Tensor) -> Tensor:
        return rel_r if self.stop_mode == "rel" else abs_r

    def _part_r(self, z: Tensor, fz: Tensor) -> Tensor:
        """The residual (in ``stop_mode``) of each consecutive chunk of the state, ``(B, P)``."""
        cols = [self._pick(*residuals(zp, fp)) for zp, fp in zip(z.split(self.parts, 1), fz.split(self.parts, 1))]
        return torch.stack(cols, 1)  # (B, P)

    def observe(self, k: int, z: Tensor, fz: Tensor) -> None:
        abs_r, rel_r = residuals(z, fz)
        r = self._pick(abs_r, rel_r)
        act = self.active
        newly = act & (r < self.tol)
        better = act & ((r < self.best_r) | newly)
        self.best_z = torch.where(better[:, None], z, self.best_z)
        self.best_abs = torch.where(better, abs_r, self.best_abs)
        self.best_rel = torch.where(better, rel_r, self.best_rel)
        self.best_r = torch.where(better, r, self.best_r)
        self.final_r = torch.where(act, r, self.final_r)
        self.cols.append(self.final_r.clone())
        if self.parts is not None:
            self.final_parts = torch.where(act[:, None], self._part_r(z, fz), self.final_parts)
            self.part_cols.append(self.final_parts.clone())
        self.converged = self.converged | newly
        self.nstep = self.nstep.masked_fill(newly, k)
        self.active = act & ~newly

    def result(self, z0: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        trace = torch.stack(self.cols, 1) if self.cols else z0.new_zeros(z0.shape[0], 0)  # (B, n_run)
        stats = {"nstep": self.nstep, "abs_residual": self.best_abs, "rel_residual": self.best_rel,
                 "converged": self.converged}
        if self.parts is not None:  # (B, n_run, P)
            stats["part_residuals"] = (torch.stack(self.part_cols, 1) if self.part_cols
                                       else z0.new_zeros(z0.shape[0], 0, len(self.parts)))
        return self.best_z, trace, stats


def _check(z0: Tensor, max_iter: int, tol: float, stop_mode: str, parts: tuple[int, ...] | None = None) -> None:
    if parts is not None and sum(parts) != z0.shape[-1]:
        raise ValueError(f"parts {parts} must add up to the state size {z0.shape[-1]}")
    if z0.dim() != 2:
        raise ValueError(f"solvers work on flat states (B, D); got shape {tuple(z0.shape)}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"stop_mode must be one of {STOP_MODES}, got {stop_mode!r}")
    if max_iter < 0 or tol < 0:
        raise ValueError(f"max_iter and tol must be >= 0, got {max_iter}, {tol}")


def _run(f: StateMap, z0: Tensor, step: Callable[[Tensor, Tensor, Tensor], Tensor], *, max_iter: int,
         tol: float, stop_mode: str, callback: Callback | None, parts: tuple[int, ...] | None = None
         ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The loop every solver shares; ``step(z, fz, active)`` proposes the next iterate. ``parts``: sizes of
    consecutive chunks of the state (e.g. one per modality state) whose own residuals are traced too
    (``stats["part_residuals"]``, ``(B, n_run, P)``); they do not affect the stop."""
    _check(z0, max_iter, tol, stop_mode, parts)
    with torch.no_grad():
        z = z0.detach()
        fz = f(z)
        mon = _Monitor(z, fz, tol=tol, stop_mode=stop_mode, max_iter=max_iter,
                       parts=None if parts is None else tuple(int(p) for p in parts))
        for k in range(1, max_iter + 1):
            if not bool(mon.active.any()):
                break
            z_next = step(z, fz, mon.active)
            z = torch.where(mon.active[:, None], z_next, z)  # stopped samples keep their state
            fz = f(z)
            mon.observe(k, z, fz)
            if callback is not None:
                callback(k, z)
        return mon.result(z0)


def fixed_point(f: StateMap, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel",
                callback: Callback | None = None, parts: tuple[int, ...] | None = None
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Plain fixed-point (Picard) iteration ``z <- f(z)``; converges linearly at the contraction rate.

    Args:
        f: map from ``(B, D)`` to ``(B, D)``; must treat samples independently.
        z0: initial state ``(B, D)``.
        max_iter: iterations at most (one call of ``f`` each, plus one for ``z0``).
        tol: a sample stops once its residual (in ``stop_mode``) is below ``tol``.
        stop_mode: ``"rel"`` = ``||f(z)-z|| / (||f(z)||+1e-8)``, ``"abs"`` = ``||f(z)-z||``.
        callback: called as ``callback(k, z)`` after iteration ``k`` with the current ``(B, D)`` states.
        parts: optional sizes of consecutive chunks of the state (summing to ``D``) whose residuals are traced
            separately in ``stats["part_residuals"]`` ``(B, n_run, P)`` (same measure, same repeat rule).

    Returns:
        ``(z, trace, stats)``: per sample the converged (else lowest-residual) state ``(B, D)``, the residual
        after each iteration ``(B, n_run)`` (a stopped sample repeats its final value), and ``stats`` with
        ``nstep`` (B,) long, ``abs_residual`` / ``rel_residual`` (B,) of the returned ``z``, ``converged`` (B,).
    """
    return _run(f, z0, lambda z, fz, active: fz, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                callback=callback, parts=parts)


class _AndersonStep:
    """Anderson mixing over the last ``m`` pairs ``(z_i, f(z_i))`` (Walker & Ni 2011; Bai et al. 2019).

    Per sample solve ``min ||sum_i a_i g_i||`` s.t. ``sum_i a_i = 1`` (``g_i = f(z_i) - z_i``) through the
    bordered system ``[[0, 1^T], [1, G G^T + lam I]] [nu; a] = [1; 0]``, then
    ``z = beta * sum_i a_i f(z_i) + (1 - beta) * sum_i a_i z_i``.
    """

    def __init__(self, m: int, beta: float, lam: float) -> None:
        if m < 1:
            raise ValueError(f"Anderson memory m must be >= 1, got {m}")
        self.m, self.beta, self.lam = m, beta, lam
        self.X: Tensor | None = None
        self.F: Tensor | None = None
        self.count = 0

    def __call__(self, z: Tensor, fz: Tensor, active: Tensor) -> Tensor:
        B, D = z.shape
        if self.X is None:
            self.X = z.new_zeros(B, self.m, D)
            self.F = z.new_zeros(B, self.m, D)
        slot = self.count % self.m
        self.X[:, slot] = z
        self.F[:, slot] = fz
        self.count += 1
        n = min(self.count, self.m)
        X, Fh = self.X[:, :n], self.F[:, :n]  # (B, n, D)
        G = Fh - X  # (B, n, D)
        GG = torch.bmm(G, G.transpose(1, 2)).double()  # (B, n, n)
        # Tikhonov term scaled by the mean squared residual in memory, so it neither swamps the system
        # near convergence nor vanishes far from it (``lam`` is relative).
        scale = GG.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)  # (B,)
        eye = torch.eye(n, dtype=GG.dtype, device=GG.device)
        H = GG.new_zeros(B, n + 1, n + 1)
        H[:, 0, 1:] = 1.0
        H[:, 1:, 0] = 1.0
        H[:, 1:, 1:] = GG + self.lam * scale[:, None, None] * eye
        rhs = GG.new_zeros(B, n + 1, 1)
        rhs[:, 0] = 1.0
        sol, info = torch.linalg.solve_ex(H, rhs)
        alpha = sol[:, 1:, 0]  # (B, n)
        ok = (info == 0) & torch.isfinite(alpha).all(1)  # (B,) fall back to a plain step otherwise
        alpha = torch.nan_to_num(alpha).to(z.dtype)
        mixed = self.beta * torch.einsum("bn,bnd->bd", alpha, Fh)
        if self.beta != 1.0:
            mixed = mixed + (1.0 - self.beta) * torch.einsum("bn,bnd->bd", alpha, X)
        return torch.where(ok[:, None], mixed, fz)


def anderson(f: StateMap, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel",
             callback: Callback | None = None, m: int = 5, beta: float = 1.0,
             lam: float = 1e-4, parts: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Anderson acceleration (type II) with memory ``m``, mixing ``beta`` and Tikhonov ``lam``.

    ``lam`` is relative to the mean squared residual held in memory. The small ``(m+1) x (m+1)`` bordered
    system is solved per sample in float64 with ``torch.linalg.solve_ex``; a sample whose system fails
    takes a plain fixed-point step. Arguments and returns as in :func:`fixed_point`.
    """
    return _run(f, z0, _AndersonStep(m, beta, lam), max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                callback=callback, parts=parts)


class _BroydenStep:
    """Good Broyden on ``g(z) = f(z) - z`` with a low-rank inverse Jacobian ``B^-1 = -I + sum_i u_i v_i^T``.

    Starts from ``B^-1 = -I`` (so the first step is a fixed-point step); after a step ``s`` with residual
    change ``y`` it applies ``B^-1 += (s - B^-1 y)(s^T B^-1) / (s^T B^-1 y)``. At most ``memory`` rank-one
    terms are kept (oldest overwritten). Updates with a vanishing denominator are skipped.
    """

    def __init__(self, memory: int) -> None:
        if memory < 1:
            raise ValueError(f"Broyden memory must be >= 1, got {memory}")
        self.memory = memory
        self.U: Tensor | None = None
        self.V: Tensor | None = None
        self.count = 0
        self.prev: tuple[Tensor, Tensor] | None = None

    def _matvec(self, x: Tensor) -> Tensor:  # B^-1 x, (B, D)
        return -x + torch.einsum("bmd,bm->bd", self.U, torch.einsum("bmd,bd->bm", self.V, x))

    def _rmatvec(self, x: Tensor) -> Tensor:  # x^T B^-1, (B, D)
        return -x + torch.einsum("bmd,bm->bd", self.V, torch.einsum("bmd,bd->bm", self.U, x))

    def __call__(self, z: Tensor, fz: Tensor, active: Tensor) -> Tensor:
        B, D = z.shape
        if self.U is None:
            self.U = z.new_zeros(B, self.memory, D)
            self.V = z.new_zeros(B, self.memory, D)
        g = fz - z  # (B, D)
        if self.prev is not None:
            s, y = z - self.prev[0], g - self.prev[1]
            vt = self._rmatvec(s)  # (B, D)
            denom = (vt * y).sum(1)  # (B,)
            u = (s - self._matvec(y)) / denom[:, None]
            ok = active & (denom.abs() > 1e-30) & torch.isfinite(u).all(1) & torch.isfinite(vt).all(1)
            slot = self.count % self.memory
            self.U[:, slot] = torch.where(ok[:, None], u, torch.zeros_like(u))
            self.V[:, slot] = torch.where(ok[:, None], vt, torch.zeros_like(vt))
            self.count += 1
        self.prev = (z, g)
        return z - self._matvec(g)


def broyden(f: StateMap, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel",
            callback: Callback | None = None, memory: int | None = None,
            parts: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Limited-memory good Broyden root finding on ``f(z) - z`` (full steps, no line search).

    ``memory`` rank-one updates are kept (default ``max_iter``, i.e. none dropped). Arguments and returns as
    in :func:`fixed_point`; the lowest-residual state is returned if a sample does not converge.
    """
    mem = max(1, max_iter if memory is None else memory)
    return _run(f, z0, _BroydenStep(mem), max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                callback=callback, parts=parts)


SOLVERS: dict[str, Callable[..., tuple[Tensor, Tensor, dict[str, Tensor]]]] = {
    "anderson": anderson,
    "broyden": broyden,
    "fixed_point": fixed_point,
}


def get_solver(solver: str | Callable) -> Callable[..., tuple[Tensor, Tensor, dict[str, Tensor]]]:
    """Look a solver up by name (``SOLVERS``) or pass a callable through."""
    if callable(solver):
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {sorted(SOLVERS)}")
    return SOLVERS[solver]


# --------------------------------------------------------------------------------------------------------
# 2. Backward: implicit (adjoint fixed point) or phantom gradient; Jacobian regulariser
# --------------------------------------------------------------------------------------------------------

BACKWARD_MODES = ("implicit", "phantom")


def attach_gradient(f: StateMap, z_star: Tensor, *, mode: str = "implicit",
                    solver: str | Callable = "anderson", max_iter: int = 20, tol: float = 1e-4,
                    stop_mode: str = "rel", phantom_steps: int = 5, phantom_lam: float = 0.8,
                    record: dict | None = None) -> Tensor:
    """Return a state equal (up to one solver step) to ``z_star`` that carries an autograd graph.

    ``mode="implicit"``: ``z = f(z*)`` with grad, plus a backward hook on ``z`` replacing the incoming
    gradient ``v`` by the solution of the adjoint fixed point ``g = J_f(z*)^T g + v`` (implicit function
    theorem, Bai et al. 2019). Vector-Jacobian products use ``torch.autograd.grad`` on a detached copy of
    ``z*`` (one extra call of ``f``, made inside the hook and freed after it); the adjoint is solved from
    zeros with ``solver`` and its own ``max_iter`` / ``tol``. A re-entrant call of the hook passes the
    gradient through unchanged. If ``record`` is a dict, the adjoint solve's ``stats`` and ``trace`` are
    stored in it at each backward.

    ``mode="phantom"``: from ``z*.detach()``, ``phantom_steps`` damped steps
    ``z <- (1 - phantom_lam) z + phantom_lam f(z)`` with grad (Geng et al. 2021).
    """
    z_star = z_star.detach()
    if mode == "phantom":
        if phantom_steps < 1:
            raise ValueError(f"phantom_steps must be >= 1, got {phantom_steps}")
        z = z_star
        for _ in range(phantom_steps):
            z = (1.0 - phantom_lam) * z + phantom_lam * f(z)
        return z
    if mode != "implicit":
        raise ValueError(f"backward mode must be one of {BACKWARD_MODES}, got {mode!r}")
    solve = get_solver(solver)
    z = f(z_star)
    if not z.requires_grad:
        return z
    busy = [False]

    def hook(grad: Tensor) -> Tensor:
        if busy[0]:
            return grad
        busy[0] = True
        try:
            with torch.enable_grad():  # backward runs with grad mode off; the VJP graph needs it
                z0 = z_star.clone().requires_grad_(True)
                fz0 = f(z0)

            def adjoint(g: Tensor) -> Tensor:
                with torch.enable_grad():
                    vjp = torch.autograd.grad(fz0, z0, g, retain_graph=True, allow_unused=True)[0]
                return grad if vjp is None else vjp + grad

            g, trace, stats = solve(adjoint, torch.zeros_like(grad), max_iter=max_iter, tol=tol,
                                    stop_mode=stop_mode)
            if record is not None:
                record.update(stats=stats, trace=trace)
            return g
        finally:
            busy[0] = False

    z.register_hook(hook)
    return z


def jacobian_reg(f: StateMap, z_star: Tensor, n_samples: int = 1) -> Tensor:
    """Hutchinson estimate of ``||J_f(z*)||_F^2 / D``, averaged over the batch (Bai et al., ICML 2021).

    ``E_v ||v^T J||^2 = ||J||_F^2`` for ``v ~ N(0, I)``; computed with ``create_graph=True`` so the estimate is
    differentiable w.r.t. the parameters of ``f``. Returns a scalar.
    """
    B, D = z_star.shape
    with torch.enable_grad():
        z = z_star.detach().clone().requires_grad_(True)
        fz = f(z)
        total = fz.new_zeros(())
        for _ in range(n_samples):
            v = torch.randn_like(fz)
            (vj,) = torch.autograd.grad(fz, z, v, create_graph=True, retain_graph=True)
            total = total + vj.pow(2).sum()
    return total / (n_samples * B * D)


# --------------------------------------------------------------------------------------------------------
# 3. The module
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DEQConfig:
    """DEQ fusion settings (the help texts double as the app's tooltips)."""

    solver: str = "anderson"  # root solver for the equilibrium: anderson, broyden or fixed_point
    max_iter: int = 15  # forward solver iterations at most (each costs one pass of the fusion block)
    tol: float = 1e-3  # a sample stops once its residual is below this
    stop_mode: str = "rel"  # residual measure: rel = ||f(z)-z|| / ||f(z)||, abs = ||f(z)-z||
    backward: str = "implicit"  # training gradient: implicit (adjoint fixed point) or phantom (k damped steps)
    phantom_steps: int = 5  # k: unrolled steps of the phantom gradient
    phantom_lam: float = 0.8  # damping of each phantom step: z <- (1-lam) z + lam f(z)
    backward_max_iter: int = 20  # adjoint solver iterations at most (implicit gradient)
    backward_tol: float = 1e-4  # adjoint solver tolerance (implicit gradient)
    jac_reg_weight: float = 0.0  # weight of the Jacobian penalty ||J_f||_F^2 / D (0 = off); keeps f contractive
    hidden: int = 64  # channels of every equilibrium state (per modality and fused)
    groups: int = 8  # GroupNorm groups in the fusion block (must divide hidden)
    inject: str = "all"  # fused state's input: all = weighted sum of every injection (the paper); primary = the
    #                      first modality's only, the others arrive through their states (the recursion)
    kernel: int = 3  # spatial kernel of the per-modality blocks: 3 on feature maps; 1 on vectors as (B, C, 1, 1)
    unroll: int = 0  # 0 = solve for the fixed point; k > 0 = the equal-training control: f applied k times from
    #                  zeros with ordinary backpropagation, no solver (a weight-tied k-layer network)


@dataclass
class DEQTrace:
    """What the solve did, for the app's convergence plots; tensors are detached."""

    residuals: Tensor  # (B, n) residual (in stop_mode) after each iteration
    nstep: Tensor  # (B,) long: iteration each sample stopped at (max_iter if it did not converge)
    converged: Tensor  # (B,) bool
    abs_residual: Tensor  # (B,) ||f(z)-z|| of the returned state
    rel_residual: Tensor  # (B,) ||f(z)-z|| / ||f(z)|| of the returned state
    solver: str
    tol: float
    max_iter: int
    stop_mode: str
    states: dict[int, Tensor] = field(default_factory=dict)  # iteration -> decoded output (B, C_out, H, W)
    jac_loss: Tensor | None = None  # jac_reg_weight * Jacobian estimate (training only), add to the loss
    state_residuals: Tensor | None = None  # (B, n, S) residual of each state (the modalities', then the fused)
    state_names: tuple[str, ...] = ()  # what each of the S states is: the present modalities, then "fused"


def pack_states(states: list[Tensor]) -> Tensor:
    """Flatten a list of ``(B, C, H, W)`` maps into one ``(B, D)`` state vector."""
    return torch.cat([s.flatten(1) for s in states], 1)  # (B, sum C*H*W)


def unpack_states(z: Tensor, *, n: int, shape: tuple[int, int, int]) -> list[Tensor]:
    """Inverse of :func:`pack_states` for ``n`` maps that all have per-sample shape ``shape = (C, H, W)``."""
    return list(z.reshape(z.shape[0], n, *shape).unbind(1))  # n x (B, C, H, W)


class ModalityBlock(nn.Module):
    """Per-modality residual block ``f_m(z; x) = GN(ReLU(z + GN(conv3(ReLU(GN(conv3(z))))) + x))``.

    The inner branch's last GroupNorm starts with gain ``branch_gain`` (a small-init residual branch, cf.
    zero-init residuals, Goyal et al. 2017) so the block starts contractive in ``z``; with gain 1 a fresh
    block has a Jacobian norm near 1 and the solver barely converges.
    """

    def __init__(self, *, hidden: int, groups: int, branch_gain: float = 0.1, kernel: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, bias=False)
        self.norm1 = nn.GroupNorm(groups, hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, bias=False)
        self.norm2 = nn.GroupNorm(groups, hidden)
        self.norm3 = nn.GroupNorm(groups, hidden)
        nn.init.constant_(self.norm2.weight, branch_gain)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(z)))))  # (B, hidden, H, W)
        return self.norm3(F.relu(z + y + x))


class DEQFusion(nn.Module):
    """Deep-equilibrium fusion of any set of spatial modality maps (Ni et al. 2023).

    The paper's block works on feature vectors; here it is adapted to conv feature maps ``(B, C_m, H, W)``
    with one state per pixel (1x1 / 3x3 convs instead of linear layers, GroupNorm as the norm):

    - injections ``x_m = GN(conv1x1(feat_m))`` to ``hidden`` channels;
    - per modality ``z_m <- f_m(z_m; x_m)`` (:class:`ModalityBlock`);
    - fused state, purify-then-combine: ``G_m = z_fuse * sigmoid(conv1x1_m(z_m))`` and
      ``z_fuse <- GN(ReLU(conv1x1(sum_m G_m) + sum_m w_m x_m))`` with ``w = softmax`` of learned logits over
      the *present* modalities (the weighted-sum injection);
    - all states are one joint fixed point, packed into a ``(B, D)`` vector, solved from zeros.

    Initialisation makes a fresh ``f`` contractive (small gain on each block's inner branch, small fusion
    conv), so an untrained module converges in about 8 Anderson / 12 fixed-point iterations at rel tol 1e-3.

    The output ``conv1x1_out(z_fuse*)`` has ``out_channels`` channels and its conv is initialised to zero,
    so the module starts as a no-op when the caller adds it residually to a feature map.

    A modality absent from the input dict is absent from the fixed point (its block, gate and weight are
    not used). Gradients: in training, ``cfg.backward`` (implicit or phantom); in eval no gradient flows
    through the solve unless an input requires grad (attribution methods), in which case the same backward
    is attached.
    """

    def __init__(self, *, in_channels: dict[str, int], out_channels: int, cfg: DEQConfig) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("DEQFusion needs at least one modality")
        if cfg.hidden % cfg.groups:
            raise ValueError(f"groups ({cfg.groups}) must divide hidden ({cfg.hidden})")
        if (cfg.solver not in SOLVERS or cfg.backward not in BACKWARD_MODES or cfg.stop_mode not in STOP_MODES
                or cfg.inject not in ("all", "primary") or cfg.kernel not in (1, 3) or cfg.unroll < 0):
            raise ValueError(f"bad solver/backward/stop_mode in {cfg}")
        self.cfg = cfg
        self.names = tuple(in_channels)
        self.in_channels = dict(in_channels)
        h, g = cfg.hidden, cfg.groups
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.GroupNorm(g, h))
                                   for m, c in in_channels.items()})
        self.blocks = nn.ModuleDict({m: ModalityBlock(hidden=h, groups=g, kernel=cfg.kernel) for m in in_channels})
        self.gates = nn.ModuleDict({m: nn.Conv2d(h, h, 1) for m in in_channels})
        self.fuse_conv = nn.Conv2d(h, h, 1)
        # small init (spectral norm ~0.2) so the fused state starts contractive in itself; the default
        # init followed by ReLU + GN gives a fused self-Jacobian of norm 1.2-1.8 and a diverging solve
        nn.init.normal_(self.fuse_conv.weight, std=0.1 / math.sqrt(h))
        nn.init.zeros_(self.fuse_conv.bias)
        self.fuse_norm = nn.GroupNorm(g, h)
        self.mix_logits = nn.Parameter(torch.zeros(len(in_channels)))  # w_m before the softmax
        self.out = nn.Conv2d(h, out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _check(self, feats: dict[str, Tensor]) -> list[str]:
        if not feats:
            raise ValueError("feats is empty: give at least one modality")
        unknown = sorted(set(feats) - set(self.names))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this module knows {list(self.names)}")
        present = [m for m in self.names if m in feats]
        ref = None
        for m in present:
            t = feats[m]
            if t.dim() != 4 or t.shape[1] != self.in_channels[m]:
                raise ValueError(f"{m}: expected (B, {self.in_channels[m]}, H, W), got {tuple(t.shape)}")
            bhw = (t.shape[0], t.shape[2], t.shape[3])
            if ref is not None and bhw != ref:
                raise ValueError(f"{m}: batch/spatial size {bhw} differs from {ref}")
            ref = bhw
        return present

    def _block(self, z: Tensor, x: dict[str, Tensor], present: list[str], shape: tuple[int, int, int]) -> Tensor:
        """The joint map ``f(z; x)`` on the packed state ``(B, D)``."""
        states = unpack_states(z, n=len(present) + 1, shape=shape)
        zs, z_fuse = states[:-1], states[-1]  # each (B, hidden, H, W)
        new = [self.blocks[m](zm, x[m]) for m, zm in zip(present, zs)]
        if self.cfg.inject == "primary":
            # the fused state picks from each modality's state (gate driven by the fused state) and is injected
            # with the first modality alone: the others reach it only through the iteration
            purified = sum(zm * torch.sigmoid(self.gates[m](z_fuse)) for m, zm in zip(present, zs))
            inject = x[present[0]]
        else:
            purified = sum(z_fuse * torch.sigmoid(self.gates[m](zm)) for m, zm in zip(present, zs))
            idx = torch.tensor([self.names.index(m) for m in present], device=self.mix_logits.device)
            w = torch.softmax(self.mix_logits[idx], 0)  # (M_present,)
            inject = sum(w[i] * x[m] for i, m in enumerate(present))
        fused = self.fuse_norm(F.relu(self.fuse_conv(purified) + inject))  # (B, hidden, H, W)
        return pack_states(new + [fused])

    def forward(self, feats: dict[str, Tensor], *, solver: str | None = None, max_iter: int | None = None,
                tol: float | None = None, stop_mode: str | None = None,
                keep_states_at: tuple[int, ...] = (), decode_kept: bool = True) -> tuple[Tensor, DEQTrace]:
        """Fuse the present modalities; returns ``(out (B, out_channels, H, W), DEQTrace)``.

        ``solver``, ``max_iter``, ``tol`` and ``stop_mode`` override the config for this call (live controls).
        ``keep_states_at``: 1-based iterations at which the decoded output ``out(z_fuse)`` is kept in
        ``trace.states``; an iteration after the solve stopped shows the final state. ``decode_kept=False`` keeps
        the raw fused state ``z_fuse`` (B, hidden, H, W) instead, for the caller to decode with ``self.out``
        outside a FLOP count (the decoding is an explanation, not the model's path). ``trace.state_residuals``
        holds each state's own residual per iteration (the present modalities' states, then the fused one).

        With ``cfg.unroll = k > 0`` (the equal-training control) nothing is solved: ``f`` is applied ``k`` times
        from zeros with ordinary autograd; the trace then holds no residuals (``nstep = k``, not converged).
        """
        cfg = self.cfg
        present = self._check(feats)
        solver = cfg.solver if solver is None else solver
        max_iter = cfg.max_iter if max_iter is None else max_iter
        tol = cfg.tol if tol is None else tol
        stop_mode = cfg.stop_mode if stop_mode is None else stop_mode
        solve = get_solver(solver)
        if any(k < 1 for k in keep_states_at):
            raise ValueError(f"keep_states_at holds 1-based iterations, got {keep_states_at}")

        x = {m: self.proj[m](feats[m]) for m in present}  # each (B, hidden, H, W)
        ref = x[present[0]]
        B, shape = ref.shape[0], tuple(ref.shape[1:])
        n = len(present) + 1

        def f(z: Tensor) -> Tensor:
            return self._block(z, x, present, shape)

        def decode(z: Tensor) -> Tensor:
            return self.out(unpack_states(z, n=n, shape=shape)[-1])  # (B, out_channels, H, W)

        wanted = set(keep_states_at)
        kept: dict[int, Tensor] = {}

        def keep(z: Tensor) -> Tensor:
            return decode(z) if decode_kept else unpack_states(z, n=n, shape=shape)[-1].clone()

        def callback(k: int, z: Tensor) -> None:
            if k in wanted:
                kept[k] = keep(z).detach()

        z0 = ref.new_zeros(B, n * ref[0].numel())  # (B, D)
        names = tuple(present) + ("fused",)
        if cfg.unroll:
            return self._unrolled(f, decode, keep, z0, wanted, names, tol, stop_mode)
        z_star, residual_trace, stats = solve(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                                              callback=callback if wanted else None, parts=(ref[0].numel(),) * n)
        if wanted - set(kept):
            with torch.no_grad():
                final = keep(z_star)
            kept.update({k: final for k in wanted - set(kept)})

        grad_on = torch.is_grad_enabled() and (self.training or any(t.requires_grad for t in feats.values()))
        if grad_on:
            z = attach_gradient(f, z_star, mode=cfg.backward, solver=solver, max_iter=cfg.backward_max_iter,
                                tol=cfg.backward_tol, stop_mode=stop_mode, phantom_steps=cfg.phantom_steps,
                                phantom_lam=cfg.phantom_lam)
        else:
            z = z_star
        jac_loss = None
        if grad_on and self.training and cfg.jac_reg_weight > 0:
            jac_loss = cfg.jac_reg_weight * jacobian_reg(f, z_star)
        out = decode(z)  # (B, out_channels, H, W)
        trace = DEQTrace(residuals=residual_trace, nstep=stats["nstep"], converged=stats["converged"],
                         abs_residual=stats["abs_residual"], rel_residual=stats["rel_residual"],
                         solver=solver if isinstance(solver, str) else getattr(solver, "__name__", "custom"),
                         tol=tol, max_iter=max_iter, stop_mode=stop_mode,
                         states=dict(sorted(kept.items())), jac_loss=jac_loss,
                         state_residuals=stats["part_residuals"], state_names=names)
        return out, trace

    def _unrolled(self, f: StateMap, decode: Callable[[Tensor], Tensor], keep: Callable[[Tensor], Tensor], z0: Tensor,
                  wanted: set[int], names: tuple[str, ...], tol: float, stop_mode: str) -> tuple[Tensor, DEQTrace]:
        """The weight-tied control: ``z_k = f(z_{k-1})`` from zeros, ``cfg.unroll`` times, ordinary backprop."""
        k_max = self.cfg.unroll
        z, kept = z0, {}
        for k in range(1, k_max + 1):
            z = f(z)
            if k in wanted:
                kept[k] = keep(z).detach()
        out = decode(z)
        if wanted - set(kept):
            last = keep(z).detach()
            kept.update({k: last for k in wanted - set(kept)})
        B = z0.shape[0]
        empty = z0.new_zeros(B, 0)
        nan = z0.new_full((B,), float("nan"))
        trace = DEQTrace(residuals=empty, nstep=torch.full((B,), k_max, dtype=torch.long),
                         converged=torch.zeros(B, dtype=torch.bool), abs_residual=nan, rel_residual=nan,
                         solver=f"unrolled {k_max}", tol=tol, max_iter=k_max, stop_mode=stop_mode,
                         states=dict(sorted(kept.items())), state_residuals=z0.new_zeros(B, 0, len(names)),
                         state_names=names)
        return out, trace
