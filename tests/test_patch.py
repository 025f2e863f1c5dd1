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
    PatchedPoolBN,
    is_darts_conv_op,
    is_darts_mixed_op,
    is_darts_pool_bn,
    patch_darts_model,
    unpatch_darts_model,
)
from tests.darts_style import PRIMITIVES, DilConv, Network, SepConv
from tests.helpers import rel_err

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
    n_pools = sum(is_darts_pool_bn(m) for m in model.modules())
    assert n_pools == 3 * 5 * 2
    assert patch_darts_model(model) is model
    assert sum(isinstance(m, PatchedConvOp) for m in model.modules()) == n_convs
    assert sum(isinstance(m, PatchedPoolBN) for m in model.modules()) == n_pools
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
    assert sum(is_darts_pool_bn(m) for m in model.modules()) == n_pools
    assert not any(isinstance(m, (PatchedMixedOp, PatchedConvOp, PatchedPoolBN)) for m in model.modules())
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


@pytest.mark.skipif(not extension_available(), reason="extension not built")
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_patched_pools_run_the_fused_op_and_track_statistics(seed, pool):
    """Each pool + BN pair runs as one pool_bn (the pool module's own forward no longer runs); outputs,
    gradients and the running statistics after 3 training steps equal the unpatched model's."""
    torch.manual_seed(seed)
    make = (lambda: nn.MaxPool2d(3, 2, 1)) if pool == "max" else (lambda: nn.AvgPool2d(3, 1, 1,
                                                                                       count_include_pad=False))
    ref = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(make(), nn.BatchNorm2d(4, affine=False))).double()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(make(), nn.BatchNorm2d(4, affine=False))).double()
    model.load_state_dict(ref.state_dict())
    keys = list(model.state_dict())
    calls = []
    model[1][0].register_forward_hook(lambda *args: calls.append(1))
    patch_darts_model(model)
    assert isinstance(model[1], PatchedPoolBN) and list(model.state_dict()) == keys and not calls
    for _ in range(3):
        x = torch.randn(3, 3, 7, 9, dtype=torch.float64)
        outs, grads = [], []
        for m in (ref, model):
            m.zero_grad(set_to_none=True)
            out = m(x)
            (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
            outs.append(out.detach())
            grads.append(m[0].weight.grad.clone())
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    assert not calls
    for name, buf in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], buf, rtol=1e-12, atol=1e-12, msg=name)
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-12, atol=1e-12)  # running statistics in eval
    unpatch_darts_model(model)
    assert type(model[1]) is nn.Sequential and is_darts_pool_bn(model[1])
    model(x)
    assert calls


def test_pools_the_patch_leaves_alone():
    """Only a plain Sequential of exactly a fusable pool and an affine-free BatchNorm2d is swapped."""
    assert not is_darts_pool_bn(nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4)))  # affine
    assert not is_darts_pool_bn(nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=False)))  # pads
    assert not is_darts_pool_bn(nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=False),
                                              nn.ReLU()))
    assert is_darts_pool_bn(nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=False)))
    net = nn.Sequential(nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=False)))
    patch_darts_model(net, pools=False, strict=False)
    assert type(net[0]) is nn.Sequential


def test_strict_patch_refuses_a_model_without_mixed_ops():
    with pytest.raises(ValueError, match="no DARTS MixedOp"):
        patch_darts_model(nn.Sequential(nn.Linear(2, 2)))
    assert patch_darts_model(nn.Sequential(nn.Linear(2, 2)), strict=False) is not None
