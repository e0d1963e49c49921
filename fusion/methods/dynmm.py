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

    Inputs: the RGB stream's stage-1 features (computed on every path anyway) and a 4x4 thumbnail of the
    depth map plus its valid-pixel fraction (a few hundred FLOPs), so the gate can see both modalities
    without running the depth encoder.
    """

    def __init__(self, *, in_channels: int, cfg: GateConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(32 + 17, cfg.hidden), nn.ReLU(inplace=True),
                                 nn.Linear(cfg.hidden, cfg.num_branches))

    def forward(self, rgb_feat: torch.Tensor, depth_norm: torch.Tensor, depth_valid: torch.Tensor) -> torch.Tensor:
        """Return gate logits ``(B, K)``."""
        a = self.conv(rgb_feat).mean((2, 3))  # (B, 32)
        thumb = F.adaptive_avg_pool2d(depth_norm, 4).flatten(1)  # (B, 16)
        valid = depth_valid.float().mean((1, 2, 3)).unsqueeze(1)  # (B, 1)
        return self.mlp(torch.cat([a, thumb, valid], 1))


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
