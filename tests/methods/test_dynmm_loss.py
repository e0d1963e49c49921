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


def test_expected_branch_loss_prefers_the_cheapest_adequate_branch():
    import torch

    from fusion.methods.dynmm import expected_branch_loss

    branch_loss = torch.tensor([[1.0, 0.50, 0.48]])  # branch 2 is a little better than branch 1
    cost = torch.tensor([0.5, 0.75, 1.0])
    logits = torch.zeros(1, 3, requires_grad=True)
    expected_branch_loss(logits, branch_loss, cost, resource_weight=0.0).backward()
    assert logits.grad.argmin() == 2  # without a budget: the most accurate branch gains probability
    logits.grad = None
    expected_branch_loss(logits, branch_loss, cost, resource_weight=0.2).backward()
    assert logits.grad.argmin() == 1  # with one: the cheaper branch that is almost as good
    assert (logits.grad.abs() > 0).all()  # every branch gets a gradient (no dead decision)


def test_gate_learns_an_input_dependent_decision_and_survives_fp16(tmp_path):
    """On synthetic cached features where the better branch depends on the depth statistics, the gate
    trained by fusion.train_gate routes by them, and rounding its weights to fp16 changes no decision."""
    import argparse

    import torch

    from fusion.registry import create
    from fusion.train_gate import decide, fp16_agreement, train_gate

    torch.manual_seed(0)
    model = create("dynmm_rgbd", pretrained=False, num_classes=5)
    n = 256
    depth = torch.randn(n, 19)
    summary = torch.randn(n, 24, 12, 16).half()
    ce = torch.full((n, 5), 1.0)
    wants_depth = depth[:, 17] > 0  # "mean depth" statistic decides whether fusing depth pays off
    ce[:, 0] = torch.where(wants_depth, 1.5, 0.9)
    ce[:, 4] = torch.where(wants_depth, 0.8, 0.95)
    fit = {"summary": summary, "depth": depth, "ce": ce}
    costs = torch.tensor([0.5, 0.6, 0.7, 0.85, 1.0])
    args = argparse.Namespace(seed=0, lr=3e-3, weight_decay=1e-4, epochs=60, target_temperature=0.02)
    gate = train_gate(model, fit, costs, 0.1, args)
    b = decide(gate, fit)
    oracle = (ce + 0.1 * costs).argmin(1)
    assert float((b == oracle).float().mean()) > 0.9
    assert set(b.tolist()) == {0, 4}  # both decisions occur: the gate is not a constant
    assert fp16_agreement(gate, fit) >= 0.99
