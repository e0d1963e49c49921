"""DynMM gate pieces: straight-through estimator, temperature schedule, resource loss sign and scale."""
import torch

from fusion.methods.dynmm import GateConfig, resource_loss, straight_through, temperature


def test_straight_through_is_hard_forward_soft_backward():
    logits = torch.tensor([[0.1, 2.0, -1.0]], requires_grad=True)
    w, p = straight_through(logits, tau=1.0, gumbel=False)
    assert torch.equal(w.detach(), torch.tensor([[0.0, 1.0, 0.0]]))
    (w * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_temperature_anneals_from_start_to_end():
    cfg = GateConfig(tau_start=1.0, tau_end=0.1)
    assert temperature(cfg, 0.0) == 1.0
    assert abs(temperature(cfg, 1.0) - 0.1) < 1e-9
    assert temperature(cfg, 0.3) > temperature(cfg, 0.6)


def test_resource_loss_sign_and_scale():
    cost = torch.tensor([0.5, 0.75, 1.0])
    cheap = torch.tensor([[1.0, 0.0, 0.0]])
    dear = torch.tensor([[0.0, 0.0, 1.0]])
    assert resource_loss(cheap, cost) == 0.5 and resource_loss(dear, cost) == 1.0
    logits = torch.zeros(1, 3, requires_grad=True)
    resource_loss(torch.softmax(logits, 1), cost).backward()
    # descending the gradient moves probability towards the cheapest branch
    assert logits.grad[0, 0] < 0 < logits.grad[0, 2]
