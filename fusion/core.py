"""The task-agnostic model shell both tasks are built on.

A :class:`FusionModel` owns what every task shares, so that a task body (``fusion.models.rgbd``,
``fusion.models.clips``) only supplies its encoders, where the fusion method sits, and its head:

* **inputs**: which modalities are present (the body validates shapes and fills or skips a missing one and
  says how in ``notes``);
* **per-call options**: one typed :class:`~fusion.types.RunOptions`, never stored on the module;
* **adapters**: the adapter subset is chosen per call from the present modalities and applied through a
  context variable (:func:`fusion.methods.adapters.use_subset`), so a model cached for every app session
  serves concurrent calls with different subsets;
* **measured compute**: ``count_flops=True`` counts each input's own forward with ``FlopCounterMode`` on the
  path that actually ran (a batch is counted one input at a time, because DynMM inputs take different paths);
  explanations that are not part of the model's forward (e.g. decoding DEQ iterates) run after the count;
* **one typed output**: :class:`~fusion.types.FusionOutput` with the gate / tokens / solver / block traces.

The shape follows the encoders + fusion + head split of TorchMultimodal's late-fusion architectures.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Mapping

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from fusion.compute import counted_kernels
from fusion.methods.adapters import use_subset
from fusion.types import FusionError, FusionOutput, GateTrace, RunOptions

Inputs = Mapping[str, torch.Tensor]
Later = Callable[[], None] | None  # work to do after the FLOP count (an explanation, not the model's forward)


class FusionModel(nn.Module):
    """Base of every registered fusion model. Subclasses implement :meth:`check_inputs` and :meth:`run`; an
    adapted model sets ``adapted = True`` and may override :meth:`adapter_subset`."""

    task: str = ""  # registry task id, e.g. "rgbd_seg" or "emotion_clips"
    adapted: bool = False  # has missing-modality adapters (chosen per call)

    # ---- what a task body supplies ---------------------------------------------------------------------
    def check_inputs(self, inputs: Inputs) -> tuple[str, ...]:
        """Validate ``inputs`` (raise :class:`FusionError` on bad ones) and return the present modalities."""
        raise NotImplementedError

    def run(self, inputs: Inputs, present: tuple[str, ...], opts: RunOptions, *, counting: bool
            ) -> tuple[FusionOutput, Later]:
        """The forward on checked inputs. ``counting``: a FLOP count is running (blocks may add nested counts)."""
        raise NotImplementedError

    def batch_size(self, inputs: Inputs) -> int:
        return int(next(iter(inputs.values())).shape[0])

    def select(self, inputs: Inputs, i: int) -> dict[str, torch.Tensor]:
        """Input ``i`` of a batch, as a batch of one."""
        return {m: t[i:i + 1] for m, t in inputs.items() if t is not None}

    def adapter_subset(self, present: tuple[str, ...], opts: RunOptions) -> str | None:
        """The adapter set to switch on for this call (None = the frozen base alone): the present modality's,
        when exactly one is present and adapters are not switched off."""
        if not self.adapted or len(present) != 1 or opts.adapter in (False, None, "none"):
            return None
        return present[0]

    # ---- the shell ---------------------------------------------------------------------------------------
    def forward(self, inputs: Inputs, *, count_flops: bool = False, options: RunOptions | None = None,
                **kw: object) -> FusionOutput:
        """Run a batch. ``options`` (or the same names as keywords: ``force_branch``, ``pool``, ``keep_ratio``,
        ``solver``, ``max_iter``, ``tol``, ``stop_mode``, ``keep_states_at``, ``zero_block``, ``adapter``,
        ``tau``) are this call's settings. ``count_flops`` measures each input's own forward."""
        if not isinstance(inputs, Mapping):
            raise FusionError(f"inputs must be a dict of modality -> tensor, got {type(inputs).__name__}")
        opts = RunOptions.of(options, **kw)
        present = self.check_inputs(inputs)
        if count_flops and self.batch_size(inputs) > 1:
            outs = [self.forward(self.select(inputs, i), count_flops=True, options=opts)
                    for i in range(self.batch_size(inputs))]
            return concat_outputs(outs)
        subset = self.adapter_subset(present, opts)
        with use_subset(subset) if self.adapted else nullcontext():
            if count_flops:
                with counted_kernels(), FlopCounterMode(display=False) as fc:
                    out, later = self.run(inputs, present, opts, counting=True)
                out.flops = torch.tensor([float(fc.get_total_flops())])
            else:
                out, later = self.run(inputs, present, opts, counting=False)
            if later is not None:
                later()
        out.present, out.adapter = present, subset
        return out


def concat_outputs(outs: list[FusionOutput]) -> FusionOutput:
    """One output for a batch counted input by input: tensors concatenated, the first input's traces on top and
    every input's own output in ``per_sample``."""
    first = outs[0]

    def cat(xs: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if any(x is None for x in xs) else torch.cat(xs)  # type: ignore[arg-type]

    gate = None
    if first.gate is not None:
        gate = GateTrace(probs=torch.cat([o.gate.probs for o in outs]),  # type: ignore[union-attr]
                         branch=torch.cat([o.gate.branch for o in outs]),  # type: ignore[union-attr]
                         names=first.gate.names)
    mod = {m: torch.cat([o.modality_logits[m] for o in outs]) for m in first.modality_logits
           if all(m in o.modality_logits for o in outs)}
    return FusionOutput(logits=torch.cat([o.logits for o in outs]), present=first.present,
                        flops=cat([o.flops for o in outs]), notes=first.notes, gate=gate, tokens=first.tokens,
                        solver=first.solver, block=first.block, adapter=first.adapter,
                        ran=tuple(sorted({m for o in outs for m in o.ran})), modality_logits=mod,
                        per_sample=outs if (first.tokens is not None or first.solver is not None
                                            or first.gate is not None) else [])
