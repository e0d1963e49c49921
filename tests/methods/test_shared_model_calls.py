"""A model cached with st.cache_resource serves every session: concurrent calls with different per-call
settings must give exactly what the same calls give one after another, and leave no state on the module."""
from __future__ import annotations

import threading

import torch

from fusion.methods.adapters import adapter_parameters
from fusion.registry import create


def _adapted_model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create("adapted_rgbd", pretrained=False, num_classes=5, adapter={"kind": "lora"}).eval()
    with torch.no_grad():  # distinct, non-identity adapters per subset
        for p in adapter_parameters(m):
            p.add_(torch.randn_like(p) * 0.3)
    return m


def _calls() -> list[tuple[dict, dict]]:
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(1, 3, 64, 96, generator=g)
    depth = torch.rand(1, 1, 64, 96, generator=g) * 4 + 0.5
    big_rgb = torch.rand(1, 3, 96, 128, generator=g)
    big_depth = torch.rand(1, 1, 96, 128, generator=g) * 4 + 0.5
    return [({"rgb": rgb}, {}), ({"depth": depth}, {}), ({"rgb": rgb, "depth": depth}, {}),
            ({"rgb": rgb}, {"adapter": False}), ({"rgb": big_rgb, "depth": big_depth}, {}),
            ({"depth": big_depth}, {})]


def test_concurrent_calls_equal_sequential_calls() -> None:
    model = _adapted_model()
    calls = _calls()
    with torch.no_grad():
        expected = [model(x, **kw).logits for x, kw in calls]
    assert not torch.allclose(expected[0], model(calls[3][0], adapter=False).logits)  # the adapters matter
    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for rep in range(4):  # interleave: each thread calls repeatedly while the others do too
                with torch.no_grad():
                    results[(i, rep)] = model(calls[i][0], **calls[i][1]).logits
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (i, _), out in results.items():
        assert out.shape == expected[i].shape
        assert torch.equal(out, expected[i]), f"call {i} differs when run concurrently"


def test_forward_leaves_no_per_call_state_on_the_module() -> None:
    model = _adapted_model()
    before = {k: v for k, v in vars(model).items() if not k.startswith("_modules")}
    layer_state = [(m._active, m._merged) for m in model.modules() if hasattr(m, "_active")]
    with torch.no_grad():
        for x, kw in _calls():
            model(x, **kw)
    assert {k: v for k, v in vars(model).items() if not k.startswith("_modules")}.keys() == before.keys()
    assert not hasattr(model, "_out_size")
    assert [(m._active, m._merged) for m in model.modules() if hasattr(m, "_active")] == layer_state
