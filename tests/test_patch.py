"""patch_darts_model on a DARTS-style search network written here (the structure of DARTS's
``model_search.py``: ``MixedOp(C, stride)`` with ``_ops``, ``Cell`` with ``_ops``, ``Network`` with
``alphas_normal``/``alphas_reduce``): same outputs, gradients, parameters and state-dict keys; memory-saving
mode keeps less for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.kernels import extension_available
from hnas_fast.patch import (
    PatchedConvOp,
    PatchedMixedOp,
    is_darts_conv_op,
    is_darts_mixed_op,
    patch_darts_model,
    unpatch_darts_model,
)
from tests.helpers import rel_err

# ---- a DARTS-style model, written for this test -------------------------------------------------------


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class Halve(nn.Module):  # the role of DARTS's FactorizedReduce
    def __init__(self, C_in, C_out, affine):
        super().__init__()
        self.a = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.b = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.a(x), self.b(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:])], 1))


def depthwise_block(C, k, stride, pad, dil, affine):
    return [nn.ReLU(), nn.Conv2d(C, C, k, stride, pad, dilation=dil, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine)]


class SepConv(nn.Module):
    def __init__(self, C, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(*depthwise_block(C, k, stride, pad, 1, affine),
                                *depthwise_block(C, k, 1, pad, 1, affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(*depthwise_block(C, k, stride, pad, 2, affine))

    def forward(self, x):
        return self.op(x)


TEST_OPS = {
    "none": lambda C, s, affine: Zero(s),
    "max_pool_3x3": lambda C, s, affine: nn.MaxPool2d(3, s, 1),
    "avg_pool_3x3": lambda C, s, affine: nn.AvgPool2d(3, s, 1, count_include_pad=False),
    "skip_connect": lambda C, s, affine: nn.Identity() if s == 1 else Halve(C, C, affine),
    "sep_conv_3x3": lambda C, s, affine: SepConv(C, 3, s, 1, affine),
    "dil_conv_3x3": lambda C, s, affine: DilConv(C, 3, s, 2, affine),
}
PRIMITIVES = list(TEST_OPS)


class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = TEST_OPS[name](C, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, steps=2):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (Halve(C_pp, C, False) if reduction_prev else
                            nn.Sequential(nn.ReLU(), nn.Conv2d(C_pp, C, 1, bias=False),
                                          nn.BatchNorm2d(C, affine=False)))
        self.preprocess1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C_p, C, 1, bias=False),
                                         nn.BatchNorm2d(C, affine=False))
        self._steps = steps
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._steps:], dim=1)


class Network(nn.Module):
    def __init__(self, C=4, num_classes=5, layers=3, steps=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
        C_pp, C_p, C_curr = 3 * C, 3 * C, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i == layers // 2
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(C_pp, C_p, C_curr, reduction, reduction_prev, steps))
            reduction_prev = reduction
            C_pp, C_p = C_p, steps * C_curr
        self.classifier = nn.Linear(C_p, num_classes)
        k = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-1 * torch.randn(k, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-1 * torch.randn(k, len(PRIMITIVES)))

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        return self.classifier(s1.mean((2, 3)))


# ---- tests ----------------------------------------------------------------------------------------------


def _outputs_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _model(seed):
    torch.manual_seed(seed)
    model = Network().double().train()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    return model, x, y


def test_patch_keeps_outputs_gradients_parameters_and_keys(seed):
    model, x, y = _model(seed)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out0, grads0 = _outputs_and_grads(model, x, y)

    n_edges = sum(is_darts_mixed_op(m) for m in model.modules())
    n_convs = sum(is_darts_conv_op(m) for m in model.modules())
    assert n_convs == sum(isinstance(m, (SepConv, DilConv)) for m in model.modules()) == 3 * 5 * 2
    assert patch_darts_model(model) is model
    assert sum(isinstance(m, PatchedConvOp) for m in model.modules()) == n_convs
    assert not any(is_darts_conv_op(m) for m in model.modules())
    patched = [m for m in model.modules() if isinstance(m, PatchedMixedOp)]
    assert len(patched) == n_edges == 3 * 5
    assert not any(is_darts_mixed_op(m) for m in model.modules())
    assert all(p._active_ids == list(range(1, len(PRIMITIVES))) for p in patched)  # Zero skipped
    assert list(model.state_dict()) == keys
    assert [n for n, _ in model.named_parameters()] == list(params)
    assert all(params[n] is p for n, p in model.named_parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in params.values()}

    out1, grads1 = _outputs_and_grads(model, x, y)
    torch.testing.assert_close(out1, out0, rtol=1e-12, atol=1e-12)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=1e-10, atol=1e-12, msg=name)

    alphas = model.alphas_normal.detach().clone()
    optimizer.step()  # the optimizer created before the patch still moves the patched model
    assert not torch.equal(model.alphas_normal.detach(), alphas)
    unpatch_darts_model(model)
    assert sum(is_darts_mixed_op(m) for m in model.modules()) == n_edges
    assert sum(is_darts_conv_op(m) for m in model.modules()) == n_convs
    assert not any(isinstance(m, (PatchedMixedOp, PatchedConvOp)) for m in model.modules())
    assert list(model.state_dict()) == keys


@pytest.mark.skipif(not extension_available(), reason="extension not built")
@pytest.mark.parametrize("channels_last", [False, True])
def test_patched_convs_run_the_fused_op_float32(seed, channels_last):
    """float32 against a float64 copy of the unpatched model: the patched model's error is at most twice the
    error of the unpatched float32 model (BatchNorm over a batch of 4 at 2x2 can be ill-conditioned, so
    eager float32 itself is off by up to ~1e-2 on some seeds), and within 1e-4 wherever eager is. The
    depthwise modules' own forward no longer runs (the pair goes through the fused op) and comes back after
    unpatch."""
    model, x, y = _model(seed)
    ref64, eager = Network().double().train(), Network().float().train()
    ref64.load_state_dict(model.state_dict())
    eager.load_state_dict(model.state_dict())
    model = model.float()
    x32 = x.float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        eager = eager.to(memory_format=torch.channels_last)
        x32 = x32.contiguous(memory_format=torch.channels_last)
    out64, grads64 = _outputs_and_grads(ref64, x, y)
    out_eager, grads_eager = _outputs_and_grads(eager, x32, y)
    calls = []
    depthwise = model.cells[0]._ops[0]._ops[PRIMITIVES.index("sep_conv_3x3")].op[1]
    depthwise.register_forward_hook(lambda *args: calls.append(1))
    patch_darts_model(model)
    out, grads = _outputs_and_grads(model, x32, y)
    assert not calls
    assert rel_err(out, out64) <= max(2 * rel_err(out_eager, out64), 1e-5)
    for name, g in grads64.items():
        # 1e-4: the fused kernels sum in another order than eager
        assert rel_err(grads[name], g) <= max(2 * rel_err(grads_eager[name], g), 1e-4), name
    unpatch_darts_model(model)
    model(x32)
    assert calls


def test_patch_finds_conv_ops_without_mixed_ops():
    """A final (derived) DARTS network has SepConv/DilConv but no MixedOp: strict accepts it."""
    net = nn.Sequential(SepConv(4, 3, 1, 1, True), DilConv(4, 3, 2, 2, True))
    patch_darts_model(net)
    assert all(isinstance(m, PatchedConvOp) for m in net)


def test_memory_saving_patch_same_result_less_saved(seed):
    model, x, y = _model(seed)
    out0, grads0 = _outputs_and_grads(model, x, y)
    exclude = list(model.parameters())
    before = saved_tensor_bytes(lambda: model(x), exclude=exclude)
    bn = model.cells[0]._ops[0]._ops[1][1]  # a pool's BatchNorm: running stats updated once per step
    patch_darts_model(model, memory_saving=True)
    after = saved_tensor_bytes(lambda: model(x), exclude=exclude)
    assert after * 2 < before
    steps_before = int(bn.num_batches_tracked)
    out1, grads1 = _outputs_and_grads(model, x, y)
    assert int(bn.num_batches_tracked) == steps_before + 1
    torch.testing.assert_close(out1, out0, rtol=1e-12, atol=1e-12)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_strict_patch_refuses_a_model_without_mixed_ops():
    with pytest.raises(ValueError, match="no DARTS MixedOp"):
        patch_darts_model(nn.Sequential(nn.Linear(2, 2)))
    assert patch_darts_model(nn.Sequential(nn.Linear(2, 2)), strict=False) is not None
