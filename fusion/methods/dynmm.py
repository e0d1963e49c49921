"""Dynamic multimodal fusion, fusion-level variant (Xue & Marculescu, "Dynamic Multimodal Fusion", CVPR
Workshops 2023, arXiv:2204.00102).

A light gate looks at early features of each input and picks one of ``K`` fusion branches; for RGB-D
segmentation branch ``k`` fuses depth into the first ``k`` encoder stages (``k = 0``: RGB only, the depth
encoder never runs). Training uses a straight-through softmax (hard one-hot forward, soft gradient) with
an annealed temperature, optionally with Gumbel noise, and a resource-aware loss
``lambda * sum_k p_k * cost_k`` whose costs are the *measured* FLOPs of each branch (normalised by the
most expensive one). At inference the gate is hard and only the chosen branch executes.

The paper's released code evaluates every branch and reports expected MACs; here the skipped depth
stages are never called, so FLOPs and time saved are real (gate cost included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GateConfig:
    """Gate and resource-loss settings (the help texts double as the app's tooltips)."""

    num_branches: int = 5  # K: branches 0..K-1, branch k fuses depth into the first k stages
    hidden: int = 64  # width of the gate's MLP
    resource_weight: float = 0.2  # lambda: weight of the FLOPs-aware loss; higher = cheaper paths (the budget knob)
    tau_start: float = 1.0  # softmax temperature at the start of training
    tau_end: float = 0.1  # temperature at the end (annealed geometrically)
    gumbel: bool = False  # add Gumbel noise to the gate logits while training (Gumbel-softmax variant)
    branch_loss_weight: float = 0.5  # mu: CE on every branch's own output, so unchosen branches keep learning


def temperature(cfg: GateConfig, progress: float) -> float:
    """Geometric annealing from ``tau_start`` to ``tau_end`` as training ``progress`` goes 0 -> 1."""
    p = min(max(progress, 0.0), 1.0)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** p


class FusionGate(nn.Module):
    """Per-input gate over fusion branches.

    Inputs: the RGB stream's stage-1 features (computed on every path anyway), average-pooled to a fixed
    12x16 grid, and a few statistics of the raw depth map (a 4x4 thumbnail, the valid-pixel fraction, the
    mean and spread of the valid depths: a few hundred FLOPs), so the gate sees both modalities without
    running the depth encoder.

    Why this shape: the first gate (a ReLU MLP on raw features, trained at 10x the network's learning rate)
    died: on most frames every hidden ReLU was off and the decision was its output bias. Here the MLP's
    input is layer-normalised and its hidden units are GELUs (no unit can switch off for good), and the
    gate is trained on the frozen branches towards each input's best branch under the budget
    (:func:`routing_target_loss`), whose gradient does not vanish before the decision is learnt.
    """

    GRID = (12, 16)  # RGB summary grid
    DEPTH_FEATURES = 19  # 4x4 thumbnail + valid fraction + mean + std of the valid depths

    def __init__(self, *, in_channels: int, cfg: GateConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU(inplace=True))
        n_in = 2 * 32 + self.DEPTH_FEATURES
        self.norm = nn.LayerNorm(n_in)
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.num_branches))

    @classmethod
    def rgb_summary(cls, rgb_feat: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) stage-1 features -> (B, C, 12, 16)."""
        return F.adaptive_avg_pool2d(rgb_feat, cls.GRID)

    @staticmethod
    def depth_features(depth_norm: torch.Tensor, depth_valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) normalised depth (0 at holes) and its valid mask -> (B, 19) statistics."""
        v = depth_valid.float()
        frac = v.mean((1, 2, 3))  # (B,)
        n = v.sum((1, 2, 3)).clamp_min(1.0)
        mean = (depth_norm * v).sum((1, 2, 3)) / n
        std = (((depth_norm - mean.view(-1, 1, 1, 1)) ** 2 * v).sum((1, 2, 3)) / n).sqrt()
        thumb = F.adaptive_avg_pool2d(depth_norm, 4).flatten(1)  # (B, 16)
        return torch.cat([thumb, frac[:, None], mean[:, None], std[:, None]], 1)

    def head(self, summary: torch.Tensor, dfeat: torch.Tensor) -> torch.Tensor:
        """Gate logits ``(B, K)`` from the RGB summary and the depth statistics."""
        a = self.conv(summary)  # (B, 32, 12, 16)
        feats = torch.cat([a.mean((2, 3)), a.amax((2, 3)), dfeat], 1)
        return self.mlp(self.norm(feats))

    def forward(self, rgb_feat: torch.Tensor, depth_norm: torch.Tensor, depth_valid: torch.Tensor) -> torch.Tensor:
        """Return gate logits ``(B, K)``."""
        return self.head(self.rgb_summary(rgb_feat), self.depth_features(depth_norm, depth_valid))


def expected_branch_loss(logits: torch.Tensor, branch_loss: torch.Tensor, branch_cost: torch.Tensor, *,
                         resource_weight: float, tau: float = 1.0) -> torch.Tensor:
    """DynMM's objective, task loss + lambda * resource loss, as an exact expectation over the gate.

    ``branch_loss`` (B, K): each branch's own task loss on each input (all branches are evaluated in
    training, as in the paper's code); ``branch_cost`` (K,): measured FLOPs normalised to max 1. With
    ``p = softmax(logits / tau)`` the loss is ``mean_b sum_k p_bk (loss_bk + lambda * cost_k)``: the
    straight-through estimate replaced by the expectation it estimates, so every branch's loss difference
    reaches the gate on every input. Its minimiser routes each input to ``argmin_k loss_k + lambda cost_k``.
    """
    p = F.softmax(logits / tau, dim=1)  # (B, K)
    return (p * (branch_loss + resource_weight * branch_cost.to(branch_loss))).sum(1).mean()


def routing_target_loss(logits: torch.Tensor, branch_loss: torch.Tensor, branch_cost: torch.Tensor, *,
                        resource_weight: float, temperature: float = 0.05) -> torch.Tensor:
    """The DynMM objective as a classification target: cross-entropy of the gate against
    ``q = softmax(-(loss_k + lambda * cost_k) / temperature)``.

    :func:`expected_branch_loss` has the same best decision (``argmin_k loss_k + lambda cost_k``) but a
    trap: its gradient ``p_k (L_k - E_p L)`` vanishes once the softmax saturates, and it saturates first on
    the branch that is best *on average*, through the output bias, before the input-dependent weights
    learn anything (we measured exactly that collapse: a constant gate). Here the gradient is ``p - q``,
    zero only when the gate matches the per-input target, so the decision keeps learning from the input.
    ``temperature`` (in loss units) sets how sharp the target is; near-ties stay soft.
    """
    cost = branch_loss + resource_weight * branch_cost.to(branch_loss)  # (B, K)
    q = F.softmax(-cost / temperature, dim=1)
    return -(q * F.log_softmax(logits, dim=1)).sum(1).mean()


def straight_through(logits: torch.Tensor, *, tau: float, gumbel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard one-hot in the forward pass, softmax gradient in the backward pass.

    Returns ``(weights, probs)``: ``weights`` is one-hot valued but differentiable, ``probs`` the soft
    distribution used by the resource loss.
    """
    if gumbel:
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        logits = logits - torch.log(-torch.log(u))
    probs = F.softmax(logits / tau, dim=1)  # (B, K)
    hard = F.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
    return hard - probs.detach() + probs, probs


def resource_loss(probs: torch.Tensor, branch_cost: torch.Tensor) -> torch.Tensor:
    """Expected normalised cost ``mean_b sum_k p_bk * cost_k``; ``branch_cost`` is (K,) with max 1.

    Positive and increasing in the probability of expensive branches, so minimising it pushes the gate
    towards cheap paths; its scale is in [min cost, 1].
    """
    return (probs * branch_cost.to(probs)).sum(1).mean()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean gate entropy in nats (logged to see the gate harden)."""
    return -(probs * probs.clamp_min(1e-9).log()).sum(1).mean() / math.log(probs.shape[1])


# ---------------------------------------------------------------------------
# Routing over any set of branches (RGB-D: depth fused into the first k stages; clips: modality subsets)
# ---------------------------------------------------------------------------


def route(gate_logits: torch.Tensor, *, training: bool, tau: float, tau_end: float, gumbel: bool,
          force_branch: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The gate's decision: ``(weights, probs, branch)``.

    Training: straight-through one-hot ``weights`` (every branch is computed and mixed by them) and the soft
    ``probs`` for the resource loss. Inference: ``weights`` is None, ``probs`` the softmax at the temperature
    training ended at, ``branch`` the arg-max (or ``force_branch`` for every input)."""
    if training:
        weights, probs = straight_through(gate_logits, tau=tau, gumbel=gumbel)
        return weights, probs, probs.argmax(1)
    probs = F.softmax(gate_logits / tau_end, 1)
    branch = probs.argmax(1) if force_branch is None else torch.full_like(probs.argmax(1), force_branch)
    return None, probs, branch


def run_chosen(branch: torch.Tensor, run_branch: Callable[[int, torch.Tensor], torch.Tensor],
               out: torch.Tensor) -> torch.Tensor:
    """Fill ``out`` (B, ...) by running, for each branch some input chose, ``run_branch(k, idx)`` on those inputs
    only: branches nobody chose never execute, so their encoders and fusion cost nothing."""
    for k in branch.unique().tolist():
        idx = (branch == k).nonzero().flatten()
        out[idx] = run_branch(int(k), idx)
    return out


def mix_branches(weights: torch.Tensor, all_logits: torch.Tensor) -> torch.Tensor:
    """Training: the branches' outputs ``(K, B, ...)`` mixed by the straight-through weights ``(B, K)``."""
    return torch.einsum("bk,kb...->b...", weights, all_logits)
