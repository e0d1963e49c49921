"""Adapters (LoRA / SSF / BitFit) keyed by modality subset: identity at init, merge == unmerged, exact
unmerge, freezing and gradients, parameter counts, subset independence, state-dict round trips."""
import copy

import pytest
import torch
import torch.nn as nn

from fusion.methods.adapters import (
    AdaptedLayer,
    AdapterConfig,
    adapter_parameters,
    adapter_state_dict,
    add_adapters,
    base_param_count,
    count_adapter_params,
    load_adapter_state_dict,
    merge_adapters,
    set_active_subset,
    unmerge_adapters,
)

torch.set_num_threads(1)
SUBSETS = ("rgb", "depth")


def _conv3():
    return nn.Conv2d(3, 5, 3, stride=2, padding=1)


def _conv1():
    return nn.Conv2d(4, 6, 1, bias=False)


def _conv_dw():  # depthwise, dilated, reflect padding, no bias
    return nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False, padding_mode="reflect")


def _conv_grouped():
    return nn.Conv2d(4, 6, 3, padding=1, groups=2)


def _linear():
    return nn.Linear(8, 4)


def _linear_nobias():
    return nn.Linear(8, 4, bias=False)


def _bn():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn.eval()


def _bn_plain():
    return nn.BatchNorm2d(3, affine=False).eval()


INPUTS = {
    _conv3: (2, 3, 7, 7), _conv1: (2, 4, 5, 5), _conv_dw: (2, 4, 6, 6), _conv_grouped: (1, 4, 5, 5),
    _linear: (2, 3, 8), _linear_nobias: (2, 8), _bn: (2, 3, 4, 4), _bn_plain: (2, 3, 4, 4),
}
LORA_LAYERS = [_conv3, _conv1, _conv_dw, _conv_grouped, _linear, _linear_nobias]
NORM_LAYERS = LORA_LAYERS + [_bn, _bn_plain]
CASES = [("lora", f) for f in LORA_LAYERS] + [(k, f) for k in ("ssf", "bitfit") for f in NORM_LAYERS]
IDS = [f"{k}-{f.__name__[1:]}" for k, f in CASES]


def _make(kind, factory, seed=0):
    torch.manual_seed(seed)
    base = factory()
    layer = AdaptedLayer(base=copy.deepcopy(base), kind=kind, subsets=SUBSETS, rank=2, alpha=3.0)
    x = torch.randn(INPUTS[factory])
    return base, layer, x


def _randomise(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("kind,factory", CASES, ids=IDS)
def test_identity_at_init_then_differs_after_randomising(kind, factory):
    base, layer, x = _make(kind, factory)
    with torch.no_grad():
        ref = base(x)
        for s in (None, *SUBSETS):
            layer.active = s
            assert torch.equal(layer(x), ref), s
        _randomise(layer.adapter_parameters("rgb"))
        layer.active = "rgb"
        assert not torch.allclose(layer(x), ref, atol=1e-4)
        layer.active = None
        assert torch.equal(layer(x), ref)


@pytest.mark.parametrize("kind,factory", CASES, ids=IDS)
def test_merge_equals_unmerged_and_unmerge_is_exact(kind, factory):
    base, layer, x = _make(kind, factory)
    _randomise(layer.adapter_parameters("rgb"))
    orig = {k: v.clone() for k, v in layer.base.state_dict().items()}
    orig_params = {k: p for k, p in layer.base.named_parameters()}
    layer.active = "rgb"
    with torch.no_grad():
        adapted = layer(x)
        layer.merge("rgb")
        assert layer.merged == "rgb"
        merged_out = layer(x)
        merged_base = layer.base(x)  # the adapter lives in the weights now, so it is not applied twice
    torch.testing.assert_close(merged_out, adapted, atol=1e-5, rtol=1e-5)
    assert torch.equal(merged_out, merged_base)
    assert not torch.allclose(merged_base, base(x), atol=1e-4)
    with pytest.raises(ValueError):
        layer.merge("depth")
    with pytest.raises(ValueError):
        layer.active = "depth"
    layer.merge("rgb")  # same subset again: no-op
    layer.unmerge()
    after = layer.base.state_dict()
    assert after.keys() == orig.keys()  # a bias created by merging is gone again
    for k in orig:
        assert torch.equal(after[k], orig[k]), k
    for k, p in layer.base.named_parameters():
        assert p is orig_params[k]  # restored in place: optimisers keep their references
    with torch.no_grad():
        torch.testing.assert_close(layer(x), adapted, atol=1e-5, rtol=1e-5)  # still active on "rgb"
        layer.active = None
        assert torch.equal(layer(x), base(x))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 6, 1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.ModuleList([nn.Linear(6, 5)]),
    )


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _net()
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = x
        for m in self.body:
            h = m[0](h) if isinstance(m, nn.ModuleList) else m(h)
        return self.head(h)


def _select_all(name, module):
    return True


@pytest.mark.parametrize("kind", ["lora", "ssf", "bitfit"])
def test_add_adapters_freezes_base_and_trains_adapters(kind):
    model = Net().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
    n_base = sum(p.numel() for p in model.parameters())
    names = add_adapters(model, cfg=AdapterConfig(kind=kind, rank=2), subsets=SUBSETS, select=_select_all)
    expected = {"body.0", "body.3.0", "body.3.1", "body.6.0", "head"} | ({"body.1"} if kind != "lora" else set())
    assert set(names) == expected
    assert isinstance(model.body[6][0], AdaptedLayer) and isinstance(model.body[3][1], AdaptedLayer)
    assert base_param_count(model) == n_base
    adapters = {id(p) for p in adapter_parameters(model)}
    assert adapters and all(p.requires_grad == (id(p) in adapters) for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # inactive
        set_active_subset(model, "rgb")
        assert torch.equal(model(x), ref)  # identity at init
    model(x).square().sum().backward()
    for p in adapter_parameters(model, "rgb"):
        assert p.grad is not None  # (LoRA's A has a zero gradient while B = 0, as in the paper)
    for p in adapter_parameters(model, "depth"):
        assert p.grad is None  # the other subset is not touched
    assert all(p.grad is None for p in model.parameters() if id(p) not in adapters)
    _randomise(adapter_parameters(model, "rgb"))
    model.zero_grad()
    model(x).square().sum().backward()
    for p in adapter_parameters(model, "rgb"):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_param_counts_for_known_cases():
    lin = AdaptedLayer(base=nn.Linear(8, 4), kind="lora", subsets=("rgb",), rank=2, alpha=2.0)
    assert lin.num_adapter_params() == 2 * 8 + 4 * 2
    conv = AdaptedLayer(base=nn.Conv2d(3, 5, 3), kind="lora", subsets=("rgb", "depth"), rank=2, alpha=2.0)
    assert conv.num_adapter_params("rgb") == 2 * 3 * 9 + 5 * 2
    assert conv.num_adapter_params() == 2 * (2 * 3 * 9 + 5 * 2)
    dw = AdaptedLayer(base=nn.Conv2d(4, 4, 3, groups=4), kind="lora", subsets=("rgb",), rank=2, alpha=2.0)
    assert dw.num_adapter_params() == 2 * 1 * 9 + 4 * 2
    bn = AdaptedLayer(base=nn.BatchNorm2d(6), kind="ssf", subsets=("rgb",), rank=2, alpha=2.0)
    assert bn.num_adapter_params() == 12
    bf = AdaptedLayer(base=nn.Conv2d(3, 7, 1, bias=False), kind="bitfit", subsets=SUBSETS, rank=2, alpha=2.0)
    assert bf.num_adapter_params("depth") == 7 and bf.num_adapter_params() == 14

    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    add_adapters(model, cfg=AdapterConfig(kind="lora", rank=2), subsets=SUBSETS,
                 select=lambda n, m: n == "0")
    assert count_adapter_params(model, "rgb") == 2 * 8 + 4 * 2
    assert count_adapter_params(model) == 2 * (2 * 8 + 4 * 2)
    assert base_param_count(model) == 8 * 4 + 4 + 4 * 2 + 2


def test_lora_scale_is_alpha_over_rank():
    torch.manual_seed(0)
    layer = AdaptedLayer(base=nn.Linear(6, 3), kind="lora", subsets=("rgb",), rank=2, alpha=5.0)
    _randomise(layer.adapter_parameters())
    layer.active = "rgb"
    x = torch.randn(4, 6)
    a, b = layer.lora_A["rgb"], layer.lora_B["rgb"]
    with torch.no_grad():
        expected = layer.base(x) + 2.5 * x @ (b @ a).T
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("kind", ["lora", "ssf", "bitfit"])
def test_subsets_are_independent(kind):
    model = Net().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
    add_adapters(model, cfg=AdapterConfig(kind=kind, rank=2), subsets=SUBSETS, select=_select_all)
    depth_before = [p.detach().clone() for p in adapter_parameters(model, "depth")]
    set_active_subset(model, "rgb")
    opt = torch.optim.SGD(adapter_parameters(model), lr=0.5)  # optimiser over every subset on purpose
    for _ in range(2):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    for p, q in zip(adapter_parameters(model, "depth"), depth_before):
        assert torch.equal(p, q)
    with torch.no_grad():
        rgb_out = model(x)
        assert not torch.allclose(rgb_out, ref, atol=1e-4)
        set_active_subset(model, "depth")
        assert torch.equal(model(x), ref)
        set_active_subset(model, None)
        assert torch.equal(model(x), ref)
        merge_adapters(model, "rgb")
        torch.testing.assert_close(model(x), rgb_out, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError):
            set_active_subset(model, "depth")
        with pytest.raises(ValueError):
            merge_adapters(model, "depth")
        unmerge_adapters(model)
        set_active_subset(model, "depth")
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("kind", ["lora", "ssf", "bitfit"])
def test_state_dict_round_trip_even_while_merged(kind):
    cfg = AdapterConfig(kind=kind, rank=2)
    model = Net().eval()
    add_adapters(model, cfg=cfg, subsets=SUBSETS, select=_select_all)
    _randomise(adapter_parameters(model))
    set_active_subset(model, "depth")
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
    unmerged_sd = {k: v.clone() for k, v in model.state_dict().items()}
    merge_adapters(model, "depth")
    sd = model.state_dict()  # saved unmerged: no merged weights, no bias created by merging
    assert sd.keys() == unmerged_sd.keys()
    assert all(torch.equal(sd[k], unmerged_sd[k]) for k in sd)
    with pytest.raises(RuntimeError):
        model.load_state_dict(sd)

    fresh = Net().eval()
    torch.manual_seed(123)  # different adapter init
    add_adapters(fresh, cfg=cfg, subsets=SUBSETS, select=_select_all)
    fresh.load_state_dict(sd)  # strict
    set_active_subset(fresh, "depth")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want)

    other = Net().eval()
    add_adapters(other, cfg=cfg, subsets=SUBSETS, select=_select_all)
    a_sd = adapter_state_dict(model)
    assert set(a_sd) == {k for k in sd if any(t in k for t in ("lora_", "ssf_", "bitfit_"))}
    assert sum(v.numel() for v in a_sd.values()) == count_adapter_params(model)
    load_adapter_state_dict(other, a_sd)
    set_active_subset(other, "depth")
    with torch.no_grad():
        torch.testing.assert_close(other(x), want)
    with pytest.raises(ValueError):
        load_adapter_state_dict(other, {k: v for k, v in list(a_sd.items())[1:]})


def test_shared_module_is_wrapped_once_everywhere():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    names = add_adapters(model, cfg=AdapterConfig(kind="ssf"), subsets=("rgb",), select=_select_all)
    assert names == ["0"]
    assert model[0] is model[2] and isinstance(model[0], AdaptedLayer)
    assert count_adapter_params(model) == 8
    # a second call does not wrap layers inside adapters again
    with pytest.raises(ValueError):
        add_adapters(model, cfg=AdapterConfig(kind="ssf"), subsets=("rgb",), select=_select_all)


def test_errors():
    with pytest.raises(ValueError):
        AdapterConfig(kind="prompt")
    with pytest.raises(ValueError):
        AdapterConfig(rank=0)
    with pytest.raises(ValueError):
        AdaptedLayer(base=nn.Linear(2, 2), kind="adapterfusion", subsets=("rgb",), rank=2, alpha=2.0)
    with pytest.raises(ValueError):  # LoRA has no weight matrix to adapt on a norm layer
        AdaptedLayer(base=nn.BatchNorm2d(3), kind="lora", subsets=("rgb",), rank=2, alpha=2.0)
    with pytest.raises(ValueError):
        AdaptedLayer(base=nn.ReLU(), kind="ssf", subsets=("rgb",), rank=2, alpha=2.0)
    with pytest.raises(ValueError):
        AdaptedLayer(base=nn.Linear(2, 2), kind="ssf", subsets=("rgb.depth",), rank=2, alpha=2.0)
    with pytest.raises(ValueError):
        AdaptedLayer(base=nn.Linear(2, 2), kind="ssf", subsets=("rgb", "rgb"), rank=2, alpha=2.0)
    layer = AdaptedLayer(base=nn.Linear(2, 2), kind="ssf", subsets=("rgb",), rank=2, alpha=2.0)
    with pytest.raises(ValueError):
        layer.active = "audio"
    with pytest.raises(ValueError):
        layer.merge("audio")
    with pytest.raises(ValueError):  # select matches only unsupported layers
        add_adapters(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), cfg=AdapterConfig(kind="lora"),
                     subsets=("rgb",), select=_select_all)
    with pytest.raises(ValueError):
        add_adapters(nn.Sequential(nn.MultiheadAttention(4, 1)), cfg=AdapterConfig(kind="lora"),
                     subsets=("rgb",), select=_select_all)
    model = nn.Sequential(nn.Linear(2, 2))
    add_adapters(model, cfg=AdapterConfig(kind="bitfit"), subsets=("rgb",), select=_select_all)
    with pytest.raises(ValueError):
        set_active_subset(model, "text")
    with pytest.raises(ValueError):
        set_active_subset(nn.Linear(2, 2), "rgb")
