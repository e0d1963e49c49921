"""Parameter-efficient adapters for missing modalities (Reza, Prater-Bennette & Asif, "Robust Multimodal
Learning with Missing Modalities via Parameter-Efficient Adaptation", arXiv:2310.03986, 2023).

A multimodal model is trained once with every modality present and then frozen. For each *modality
subset* that can actually occur at test time (say only ``"rgb"``, or only ``"depth"``) a handful of
extra parameters is trained on top of the frozen layers, and the adapter matching the modalities
present is switched on at inference. Three adapter kinds are provided, each wrapping one existing layer:

* ``"lora"`` -- low-rank weight update ``W + (alpha / r) * B @ A`` (Hu et al., "LoRA: Low-Rank
  Adaptation of Large Language Models", arXiv:2106.09685, 2021); ``Conv2d`` (grouped and depthwise
  included) and ``Linear``.
* ``"ssf"`` -- per-channel scale and shift of the layer's output, ``y * s + t`` (Lian et al., "Scaling &
  Shifting Your Features", NeurIPS 2022, arXiv:2210.08823); ``Conv2d``, ``Linear``, ``BatchNorm2d``.
* ``"bitfit"`` -- a per-channel bias delta, i.e. training only the bias (Ben Zaken et al., "BitFit",
  ACL 2022, arXiv:2106.10199); works on layers built without a bias too.

``ssf`` and ``bitfit`` also wrap ``LayerNorm`` (scale / shift its output per feature, as SSF does after each
norm of a transformer).

Every adapter starts as the identity (``B = 0``; ``s = 1, t = 0``; delta ``= 0``), so adding adapters
does not change the model until they are trained. An adapter can be *merged* into the wrapped layer's
weights for inference at zero extra cost and *unmerged* exactly (the original tensors are kept, not
recomputed). ``state_dict()`` always holds the unmerged base weights plus every adapter, so checkpoints
load into a freshly built model after :func:`add_adapters` with the same arguments.

Typical use::

    names = add_adapters(model, cfg=AdapterConfig(kind="ssf"), subsets=("rgb", "depth"),
                         select=lambda name, m: name.startswith("encoder."))
    set_active_subset(model, "rgb")            # train / run the "only rgb present" adapter
    opt = torch.optim.AdamW(adapter_parameters(model, "rgb"), lr=1e-3)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("lora", "ssf", "bitfit")
# The subset of the call in progress, when a caller chose one per call (:func:`use_subset`). A ContextVar,
# not a module attribute: a model shared between threads (e.g. one cached for every app session) serves
# concurrent calls with different subsets, each seeing its own.
_CALL_SUBSET: ContextVar[tuple[str | None] | None] = ContextVar("adapter_call_subset", default=None)


@contextmanager
def use_subset(subset: str | None) -> Iterator[None]:
    """Per-call adapter selection: inside the block every adapted layer applies ``subset``'s adapter (layers
    without that key, and ``None``, run their base), whatever their ``active`` attribute says. Nothing is
    written on the model, so concurrent calls in other threads are unaffected."""
    token = _CALL_SUBSET.set((subset,))
    try:
        yield
    finally:
        _CALL_SUBSET.reset(token)

# layer types each adapter kind can wrap (isinstance check)
SUPPORTED: dict[str, tuple[type[nn.Module], ...]] = {
    "lora": (nn.Conv2d, nn.Linear),
    "ssf": (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm),
    "bitfit": (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm),
}


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapter to attach and its size (the help texts double as the app's tooltips)."""

    kind: str = "lora"  # "lora": low-rank weight update; "ssf": per-channel scale & shift; "bitfit": bias only
    rank: int = 4  # LoRA rank r: width of the low-rank update B @ A (ignored by ssf / bitfit)
    alpha: float = 4.0  # LoRA scale numerator: the update is multiplied by alpha / rank (ignored by ssf / bitfit)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


# ----------------------------------------------------------------------------------------------- helpers

def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {KINDS}")


def _check_subsets(subsets: tuple[str, ...]) -> None:
    if isinstance(subsets, str) or len(subsets) == 0:
        raise ValueError(f"subsets must be a non-empty tuple of strings, got {subsets!r}")
    if len(set(subsets)) != len(subsets):
        raise ValueError(f"duplicate subset keys in {subsets!r}")
    for s in subsets:
        # keys become state-dict key parts and ParameterDict attribute names
        if not isinstance(s, str) or not s or "." in s or hasattr(nn.ParameterDict(), s):
            raise ValueError(f"invalid subset key {s!r}: use a non-empty name without '.' such as 'rgb' "
                             "or 'rgb+depth'")


def _out_channels(base: nn.Module) -> int:
    if isinstance(base, nn.Conv2d):
        return base.out_channels
    if isinstance(base, nn.Linear):
        return base.out_features
    if isinstance(base, nn.LayerNorm):
        return base.normalized_shape[-1]
    return base.num_features  # BatchNorm2d


# ----------------------------------------------------------------------------------------------- the layer

class AdaptedLayer(nn.Module):
    """A frozen layer plus one adapter per modality subset; ``active`` picks the one applied.

    ``base`` is kept as a child (its state-dict keys become ``<name>.base.weight`` ...); the adapter
    tensors live in ``ParameterDict``s keyed by subset (``<name>.lora_A.rgb``, ``<name>.ssf_scale.rgb``,
    ``<name>.bitfit_bias.rgb`` ...). The layer does not freeze ``base``; :func:`add_adapters` does.

    LoRA on a grouped / depthwise ``Conv2d`` (``groups = g``) is supported: ``A`` has shape
    ``(r, in/g, kh, kw)``, ``B`` has shape ``(out, r)``, and ``delta W = (alpha / r) * B @ A`` has the
    grouped weight's shape ``(out, in/g, kh, kw)``. The forward pass computes it as a grouped conv with
    ``A`` repeated per group (``g * r`` channels) followed by a grouped 1x1 conv with ``B``, which equals
    ``conv(x, delta W)`` exactly (up to float rounding).

    While merged (:meth:`merge`) the adapter lives in the base weights and ``forward`` runs the base only;
    ``active`` is pinned to the merged subset until :meth:`unmerge`. Merging keeps a copy of the original
    weight and bias, so ``unmerge`` restores them bit for bit. Merging is meant for inference: adapter
    parameters receive no gradient while merged.
    """

    def __init__(self, *, base: nn.Module, kind: str, subsets: tuple[str, ...], rank: int = 4,
                 alpha: float = 4.0) -> None:
        super().__init__()
        _check_kind(kind)
        _check_subsets(subsets)
        if isinstance(base, AdaptedLayer):
            raise ValueError("base is already an AdaptedLayer")
        if not isinstance(base, SUPPORTED[kind]):
            names = ", ".join(t.__name__ for t in SUPPORTED[kind])
            raise ValueError(f"adapter kind {kind!r} supports {names}; got {type(base).__name__}")
        if kind == "lora" and rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.kind = kind
        self.subsets = tuple(subsets)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank  # LoRA: delta W = scaling * B @ A
        self._active: str | None = None
        self._merged: str | None = None  # subset folded into base, if any
        self._originals: dict[str, torch.Tensor | None] = {}  # base tensors before merging (None = absent)

        ref = next((t for t in [*base.parameters(), *base.buffers()] if t.is_floating_point()), None)
        fk = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        c_out = _out_channels(base)
        if kind == "lora":
            if isinstance(base, nn.Conv2d):
                a_shape = (self.rank, base.in_channels // base.groups, *base.kernel_size)  # (r, in/g, kh, kw)
            else:
                a_shape = (self.rank, base.in_features)  # (r, in)
            self.lora_A = nn.ParameterDict()
            self.lora_B = nn.ParameterDict()
            for s in self.subsets:
                a = torch.empty(a_shape, **fk)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # small random, as nn.Linear's default init
                self.lora_A[s] = nn.Parameter(a)
                self.lora_B[s] = nn.Parameter(torch.zeros(c_out, self.rank, **fk))  # (out, r): zero -> identity
        elif kind == "ssf":
            self.ssf_scale = nn.ParameterDict({s: nn.Parameter(torch.ones(c_out, **fk)) for s in self.subsets})
            self.ssf_shift = nn.ParameterDict({s: nn.Parameter(torch.zeros(c_out, **fk)) for s in self.subsets})
        else:  # bitfit
            self.bitfit_bias = nn.ParameterDict({s: nn.Parameter(torch.zeros(c_out, **fk)) for s in self.subsets})

        self.register_state_dict_post_hook(_save_unmerged)
        self.register_load_state_dict_pre_hook(_refuse_load_while_merged)

    # --- selection -----------------------------------------------------------------------------------

    @property
    def active(self) -> str | None:
        """The subset whose adapter ``forward`` applies; ``None`` runs the base layer only."""
        return self._active

    @active.setter
    def active(self, subset: str | None) -> None:
        if subset is not None and subset not in self.subsets:
            raise ValueError(f"unknown subset {subset!r}; this layer has {self.subsets}")
        if self._merged is not None and subset != self._merged:
            raise ValueError(f"layer is merged with subset {self._merged!r}; unmerge() before selecting "
                             f"{subset!r}")
        self._active = subset

    @property
    def merged(self) -> str | None:
        """The subset currently folded into the base weights, or ``None``."""
        return self._merged

    def adapter_parameters(self, subset: str | None = None) -> list[nn.Parameter]:
        """The adapter parameters of ``subset`` (all subsets when ``None``)."""
        if subset is not None and subset not in self.subsets:
            raise ValueError(f"unknown subset {subset!r}; this layer has {self.subsets}")
        keys = self.subsets if subset is None else (subset,)
        return [pd[s] for s in keys for pd in self._param_dicts()]

    def num_adapter_params(self, subset: str | None = None) -> int:
        """Number of adapter scalars for ``subset`` (all subsets when ``None``)."""
        return sum(p.numel() for p in self.adapter_parameters(subset))

    def _param_dicts(self) -> list[nn.ParameterDict]:
        if self.kind == "lora":
            return [self.lora_A, self.lora_B]
        if self.kind == "ssf":
            return [self.ssf_scale, self.ssf_shift]
        return [self.bitfit_bias]

    # --- forward -------------------------------------------------------------------------------------

    def _channel(self, v: torch.Tensor) -> torch.Tensor:
        """Shape a per-channel vector to broadcast over the base output's channel dimension."""
        if isinstance(self.base, (nn.Linear, nn.LayerNorm)):
            return v  # (C,) over the last dim of (..., C)
        return v.view(-1, 1, 1)  # (C, 1, 1) over (N, C, H, W) or (C, H, W)

    def _lora_delta_out(self, x: torch.Tensor, s: str) -> torch.Tensor:
        """``scaling * (x conv/matmul delta W)`` computed through the rank-r bottleneck."""
        a, b = self.lora_A[s], self.lora_B[s]
        if isinstance(self.base, nn.Linear):
            return F.linear(F.linear(x, a), b) * self.scaling  # (..., r) -> (..., out)
        g = self.base.groups
        # same kernel / stride / padding (mode) / dilation / groups as the base conv
        h = self.base._conv_forward(x, a.repeat(g, 1, 1, 1), None)  # (N, g*r, H', W')
        return F.conv2d(h, b.reshape(b.shape[0], b.shape[1], 1, 1), groups=g) * self.scaling  # (N, out, H', W')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the active subset's adapter (base only when inactive or merged)."""
        y = self.base(x)
        call = _CALL_SUBSET.get()
        s = self._active if call is None else (call[0] if call[0] in self.subsets else None)
        if self._merged is not None:
            if call is not None and s != self._merged:
                raise ValueError(f"layer is merged with subset {self._merged!r}; a call asked for {s!r}")
            return y
        if s is None:
            return y
        if self.kind == "lora":
            return y + self._lora_delta_out(x, s)
        if self.kind == "ssf":
            return y * self._channel(self.ssf_scale[s]) + self._channel(self.ssf_shift[s])
        return y + self._channel(self.bitfit_bias[s])

    # --- merge / unmerge -----------------------------------------------------------------------------

    def delta_weight(self, subset: str) -> torch.Tensor:
        """LoRA only: ``scaling * B @ A`` reshaped to the base weight's shape."""
        if self.kind != "lora":
            raise ValueError(f"delta_weight is defined for LoRA adapters, not {self.kind!r}")
        a, b = self.lora_A[subset], self.lora_B[subset]
        return (b @ a.flatten(1)).view_as(self.base.weight) * self.scaling  # (out, in[/g * kh * kw])

    @torch.no_grad()
    def merge(self, subset: str) -> None:
        """Fold ``subset``'s adapter into the base weight / bias; afterwards ``forward`` is the base only.

        Merging the subset already merged is a no-op; merging another one raises ``ValueError``.
        A bias (and, for an affine-less BatchNorm, a weight) is created when the fold needs one.
        """
        if subset not in self.subsets:
            raise ValueError(f"unknown subset {subset!r}; this layer has {self.subsets}")
        if self._merged == subset:
            return
        if self._merged is not None:
            raise ValueError(f"layer is already merged with {self._merged!r}; unmerge() before merging {subset!r}")
        base = self.base
        w, b = base.weight, base.bias
        self._originals = {"weight": None if w is None else w.detach().clone(),
                           "bias": None if b is None else b.detach().clone()}
        if self.kind == "lora":
            w.add_(self.delta_weight(subset))  # W + scaling * B @ A
        else:
            # ssf: y * s + t  ->  W * s, b * s + t ;  bitfit: y + d  ->  b + d
            scale = self.ssf_scale[subset] if self.kind == "ssf" else None
            shift = self.ssf_shift[subset] if self.kind == "ssf" else self.bitfit_bias[subset]
            if scale is not None:
                if w is None:  # affine-less BatchNorm: its implicit weight is 1
                    base.weight = nn.Parameter(scale.detach().clone(), requires_grad=False)
                else:
                    w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))  # scale each output channel
                if b is not None:
                    b.mul_(scale)
            if b is None:  # implicit bias 0: 0 * s + t = t
                base.bias = nn.Parameter(shift.detach().clone(), requires_grad=False)
            else:
                b.add_(shift)
        self._merged = subset
        self._active = subset  # the merged weights are what forward now computes

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight and bias exactly as they were before :meth:`merge` (no-op if unmerged)."""
        if self._merged is None:
            return
        for name, orig in self._originals.items():
            if orig is None:
                setattr(self.base, name, None)  # drop a tensor that merging created
            else:
                getattr(self.base, name).copy_(orig)  # in place: same Parameter object, exact values
        self._originals = {}
        self._merged = None  # active stays on the subset, so the layer's function does not change

    def extra_repr(self) -> str:
        extra = f", rank={self.rank}, alpha={self.alpha}" if self.kind == "lora" else ""
        return f"kind={self.kind!r}, subsets={self.subsets}{extra}, active={self._active!r}, merged={self._merged!r}"


def _save_unmerged(module: AdaptedLayer, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook: always save the *unmerged* base, so checkpoints load into fresh models."""
    if module._merged is None:
        return
    for name, orig in module._originals.items():
        key = f"{prefix}base.{name}"
        if orig is None:
            state_dict.pop(key, None)
        else:
            state_dict[key] = orig.clone()


def _refuse_load_while_merged(module: AdaptedLayer, state_dict: dict, prefix: str, *args) -> None:
    if module._merged is not None:
        raise RuntimeError(f"cannot load a state dict into {prefix or 'the layer'} while it is merged with "
                           f"{module._merged!r}; call unmerge_adapters(model) first")


# ----------------------------------------------------------------------------------------------- model helpers

def adapted_layers(model: nn.Module) -> list[tuple[str, AdaptedLayer]]:
    """Every :class:`AdaptedLayer` in ``model`` with its (first) qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]


def add_adapters(model: nn.Module, *, cfg: AdapterConfig, subsets: tuple[str, ...],
                 select: Callable[[str, nn.Module], bool], attention_run_by_caller: bool = False) -> list[str]:
    """Wrap, in place, every submodule with ``select(name, module)`` true whose type ``cfg.kind`` supports.

    Works at any depth and on ``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict`` children; a module
    shared under several names is wrapped once and every reference is replaced. Layers already inside an
    adapter are skipped. Afterwards *all* parameters of ``model`` except adapter ones have
    ``requires_grad = False`` (unfreeze e.g. a head yourself if wanted). Adapters start inactive: call
    :func:`set_active_subset`. Returns the qualified names of the wrapped modules (before wrapping).

    Raises ``ValueError`` when nothing supported was selected, or when a selected layer belongs to an
    ``nn.MultiheadAttention`` (which reads ``out_proj.weight`` directly, bypassing any wrapper) -- unless
    ``attention_run_by_caller``: the model computes attention itself and calls ``out_proj`` as a module (the
    clip adapters, :mod:`fusion.models.clip_adapted`), so wrapping it is safe there.
    """
    _check_subsets(subsets)
    supported = SUPPORTED[cfg.kind]
    snapshot = list(model.modules())  # parents to patch; excludes the wrappers created below
    inside_adapter = {id(m) for a in snapshot if isinstance(a, AdaptedLayer) for m in a.modules()}
    mha_children = {id(m) for p in snapshot if isinstance(p, nn.MultiheadAttention) for m in p.children()}
    wrappers: dict[int, AdaptedLayer] = {}
    names: list[str] = []
    for name, mod in model.named_modules():
        if not name or id(mod) in inside_adapter or not isinstance(mod, supported) or not select(name, mod):
            continue
        if id(mod) in mha_children and not attention_run_by_caller:
            raise ValueError(f"{name}: layers of nn.MultiheadAttention cannot be wrapped (it reads their "
                             "weights directly)")
        wrappers[id(mod)] = AdaptedLayer(base=mod, kind=cfg.kind, subsets=subsets, rank=cfg.rank,
                                         alpha=cfg.alpha)
        names.append(name)
    if not names:
        kinds = ", ".join(t.__name__ for t in supported)
        raise ValueError(f"select matched no layer that adapter kind {cfg.kind!r} supports ({kinds})")
    for parent in snapshot:
        if id(parent) in inside_adapter:
            continue
        for key, child in list(parent._modules.items()):  # not named_children(): it skips repeated modules
            if id(child) in wrappers:
                setattr(parent, key, wrappers[id(child)])
    keep = {id(p) for _, layer in adapted_layers(model) for p in layer.adapter_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return names


def _layers_with(model: nn.Module, subset: str) -> list[AdaptedLayer]:
    layers = [m for _, m in adapted_layers(model)]
    if not layers:
        raise ValueError("model has no adapters; call add_adapters first")
    hits = [m for m in layers if subset in m.subsets]
    if not hits:
        raise ValueError(f"no adapter is keyed by subset {subset!r}")
    return hits


def set_active_subset(model: nn.Module, subset: str | None) -> None:
    """Apply ``subset``'s adapters everywhere (layers without that key run their base); ``None`` = base only.

    Raises ``ValueError`` for a subset no adapter knows, or while a layer is merged with another subset.
    """
    layers = [m for _, m in adapted_layers(model)]
    if subset is not None:
        _layers_with(model, subset)
    targets = [(m, subset if subset in m.subsets else None) for m in layers]
    for m, s in targets:  # validate everything before changing anything
        if m.merged is not None and s != m.merged:
            raise ValueError(f"a layer is merged with {m.merged!r}; unmerge_adapters(model) before selecting "
                             f"{subset!r}")
    for m, s in targets:
        m.active = s


def adapter_parameters(model: nn.Module, subset: str | None = None) -> list[nn.Parameter]:
    """Adapter parameters of ``subset`` (all subsets when ``None``), each once, in module order."""
    layers = _layers_with(model, subset) if subset is not None else [m for _, m in adapted_layers(model)]
    return [p for m in layers for p in m.adapter_parameters(subset)]


def count_adapter_params(model: nn.Module, subset: str | None = None) -> int:
    """Number of adapter scalars for ``subset`` (all subsets when ``None``)."""
    return sum(p.numel() for p in adapter_parameters(model, subset))


def base_param_count(model: nn.Module) -> int:
    """Number of scalars in parameters that are not adapter parameters (the frozen model)."""
    ids = {id(p) for p in adapter_parameters(model)} if adapted_layers(model) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in ids)


def merge_adapters(model: nn.Module, subset: str) -> None:
    """Fold ``subset``'s adapters into the base weights of every layer keyed by it (all-or-nothing check)."""
    layers = _layers_with(model, subset)
    for m in layers:
        if m.merged is not None and m.merged != subset:
            raise ValueError(f"a layer is already merged with {m.merged!r}; unmerge_adapters(model) first")
    for m in layers:
        m.merge(subset)


def unmerge_adapters(model: nn.Module) -> None:
    """Restore every merged layer's original weights exactly."""
    for _, m in adapted_layers(model):
        m.unmerge()


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter entries of ``model.state_dict()`` (every subset), e.g. to ship adapters without the base."""
    ids = {id(p) for p in adapter_parameters(model)}
    keys = {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}
    return {k: v for k, v in model.state_dict().items() if k in keys}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an :func:`adapter_state_dict` into a model with the same adapters; keys must match exactly."""
    expected = set(adapter_state_dict(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"adapter state mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.load_state_dict(state, strict=False)
