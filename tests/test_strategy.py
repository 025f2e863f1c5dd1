"""Search strategies: loss goes down, optimizers stay on their own parameters, DARTS's unrolled gradient."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hnas_fast.search.strategy import (
    NonFiniteLossError,
    OneLevel,
    TwoLevelFirstOrder,
    TwoLevelSecondOrder,
    make_strategy,
)


class ToyNet(nn.Module):
    """A two-candidate mixed layer with a nonlinearity, so the weight Hessian couples to the alphas."""

    def __init__(self, d_in: int = 5, d_hid: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.ops = nn.ModuleList([nn.Linear(d_in, d_hid), nn.Sequential(nn.Linear(d_in, d_hid), nn.Tanh()),
                                  nn.Linear(d_in, d_hid, bias=False)])
        self.head = nn.Linear(d_hid, classes)
        self.alpha = nn.Parameter(0.3 * torch.randn(3))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "alpha"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.alpha, 0)
        h = sum(wk * op(x) for wk, op in zip(w, self.ops, strict=True))
        return self.head(torch.tanh(h))


def _batches(seed: int, n: int = 16, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _tiny_supernet():
    from hnas_fast.nn.supernet import build_supernet

    torch.manual_seed(0)
    # Small enough for six second-order steps in a few seconds on two cores: 2 nodes, 3 ops per edge.
    return build_supernet("s5", cells=3, channels=4, num_classes=4, nodes=2, multiplier=2)


def _image_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("name", ["one-level", "darts", "darts2"])
def test_strategy_lowers_loss_and_moves_alphas_on_supernet(name):
    model = _tiny_supernet()
    strat = make_strategy(name, model, epochs=1, w_lr=0.05, a_lr=0.05)
    alphas0 = [a.detach().clone() for a in model.arch_parameters()]
    train, val = _image_batch(1), _image_batch(1)  # fixed batch: the loss must fall
    with torch.no_grad():
        before = F.cross_entropy(model(train[0]), train[1]).item()
    for _ in range(6):
        m = strat.step(train, val)
        assert {"loss", "acc", "lr"} <= set(m)
    with torch.no_grad():
        after = F.cross_entropy(model(train[0]), train[1]).item()
    assert after < before - 0.05, (before, after)
    assert any(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas0, strict=True))


def test_optimizers_hold_disjoint_parameter_sets():
    model = ToyNet()
    s = OneLevel(model, epochs=1)
    w_ids = {id(p) for g in s.w_opt.param_groups for p in g["params"]}
    a_ids = {id(p) for g in s.a_opt.param_groups for p in g["params"]}
    assert a_ids == {id(model.alpha)}
    assert not w_ids & a_ids
    assert w_ids | a_ids == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("cls", [OneLevel, TwoLevelFirstOrder, TwoLevelSecondOrder])
def test_weight_optimizer_leaves_alphas_and_alpha_optimizer_leaves_weights(cls):
    batch, val = _batches(0), _batches(1)
    torch.manual_seed(0)
    model = ToyNet()
    # Alpha learning rate 0: a step may only move the weights.
    s = cls(model, epochs=1, a_lr=0.0, a_wd=0.0)
    a0 = model.alpha.detach().clone()
    w0 = [p.detach().clone() for p in model.weight_parameters()]
    s.step(batch, val)
    assert torch.equal(model.alpha, a0)
    assert any(not torch.equal(p, q) for p, q in zip(model.weight_parameters(), w0, strict=True))
    # Weight learning rate 0 (and no decay): a step may only move the alphas.
    torch.manual_seed(0)
    model = ToyNet()
    s = cls(model, epochs=1, w_lr=1e-12, w_lr_min=0.0, w_wd=0.0, a_lr=0.1)
    for g in s.w_opt.param_groups:
        g["lr"] = 0.0
    a0 = model.alpha.detach().clone()
    w0 = [p.detach().clone() for p in model.weight_parameters()]
    s.step(batch, val)
    assert not torch.equal(model.alpha, a0)
    assert all(torch.equal(p, q) for p, q in zip(model.weight_parameters(), w0, strict=True))


def test_two_level_alpha_step_gives_weights_no_gradient():
    torch.manual_seed(0)
    model = ToyNet()
    s = TwoLevelFirstOrder(model, epochs=1)
    s.alpha_step(_batches(1))
    assert all(p.grad is None for p in model.weight_parameters())
    g_alpha = model.alpha.grad.clone()
    s.weight_step(_batches(0))
    assert torch.equal(model.alpha.grad, g_alpha)  # the weight backward did not reach the alphas


def test_one_level_uses_one_batch_and_extra_loss_term():
    torch.manual_seed(0)
    model = ToyNet()
    s = OneLevel(model, epochs=1, a_lr=0.1, a_wd=0.0)
    # A term pushing alpha[0] up: after a step it must have grown more than without it.
    s.add_loss_term(lambda m: -10.0 * m.alpha[0], "push")
    ref = copy.deepcopy(model)
    s_ref = OneLevel(ref, epochs=1, a_lr=0.1, a_wd=0.0)
    m = s.step(_batches(0), None)
    s_ref.step(_batches(0), None)
    assert "push" in m
    assert model.alpha[0] - ref.alpha[0] > 0.05


def test_two_level_requires_val_batch():
    s = TwoLevelFirstOrder(ToyNet(), epochs=1)
    with pytest.raises(ValueError, match="validation batch"):
        s.step(_batches(0), None)


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="unknown strategy 'dart'"):
        make_strategy("dart", ToyNet(), epochs=1)


def test_non_finite_loss_raises_before_update():
    torch.manual_seed(0)
    model = ToyNet()
    s = TwoLevelFirstOrder(model, epochs=1)
    params = [p.detach().clone() for p in model.parameters()]
    x, y = _batches(0)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError):
        s.step((x, y), (x, y))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))


def _exact_unrolled_grad(model: ToyNet, s: TwoLevelSecondOrder, train, val) -> torch.Tensor:
    """d/dalpha L_val(w'(alpha), alpha) by autograd through the unrolled SGD step (create_graph)."""
    names = [n for n, _ in model.named_parameters() if n != "alpha"]
    params = dict(model.named_parameters())
    alpha = params["alpha"].detach().clone().requires_grad_(True)
    w = {n: params[n].detach() for n in names}
    group = s.w_opt.param_groups[0]
    xi, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
    wt = {n: w[n].clone().requires_grad_(True) for n in names}
    loss_t = F.cross_entropy(functional_call(model, {**wt, "alpha": alpha}, (train[0],)), train[1])
    grads = torch.autograd.grad(loss_t, list(wt.values()), create_graph=True)
    unrolled = {}
    for (n, wn), g in zip(wt.items(), grads, strict=True):
        buf = s.w_opt.state[params[n]]["momentum_buffer"]
        unrolled[n] = wn - xi * (mom * buf + g + wd * wn)
    loss_v = F.cross_entropy(functional_call(model, {**unrolled, "alpha": alpha}, (val[0],)), val[1])
    return torch.autograd.grad(loss_v, alpha)[0]


def test_second_order_hypergradient_matches_autograd_through_unrolled_step_float64():
    torch.manual_seed(3)
    model = ToyNet().double()
    s = TwoLevelSecondOrder(model, epochs=1, w_lr=0.5, w_momentum=0.9, w_wd=3e-2)
    train, val = _batches(0, dtype=torch.float64), _batches(1, dtype=torch.float64)
    s.weight_step(_batches(2, dtype=torch.float64))  # a momentum buffer, so its term is exercised
    ours, _ = s.hypergradient(train, val)
    exact = _exact_unrolled_grad(model, s, train, val)
    # First-order gradient: the implicit term must be large enough for the comparison to mean something.
    first = torch.autograd.grad(F.cross_entropy(model(val[0]), val[1]), model.alpha)[0]
    assert (exact - first).norm() > 0.05 * exact.norm()
    # Central differences with eps = 0.01/||v||: error O(eps^2), far below 1e-4 relative here.
    assert torch.allclose(ours[0], exact, rtol=1e-4, atol=1e-7), (ours[0], exact)


def test_second_order_restores_weights_and_batchnorm_buffers():
    model = _tiny_supernet()
    s = TwoLevelSecondOrder(model, epochs=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s.hypergradient(_image_batch(1), _image_batch(2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_unrolled_weights_equal_the_next_sgd_step():
    """w' of the hypergradient is the optimizer's own next step (momentum, decay), as in DARTS."""
    torch.manual_seed(0)
    model = ToyNet().double()
    s = TwoLevelSecondOrder(model, epochs=1, w_lr=0.1, grad_clip=0)
    s.weight_step(_batches(2, dtype=torch.float64))
    train = _batches(0, dtype=torch.float64)
    ref = copy.deepcopy(model)
    s_ref = TwoLevelSecondOrder(ref, epochs=1, w_lr=0.1, grad_clip=0)
    s_ref.w_opt.load_state_dict(copy.deepcopy(s.w_opt.state_dict()))  # load_state_dict shares buffers
    s_ref.weight_step(train)  # the real SGD step
    captured = {}
    orig = s._ce_grads

    def spy(batch, wrt, what):
        if what == "unrolled validation":
            captured["w"] = [p.detach().clone() for p in s.weight_params]
        return orig(batch, wrt, what)

    s._ce_grads = spy
    s.hypergradient(train, _batches(1, dtype=torch.float64))
    for a, b in zip(captured["w"], ref.weight_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
