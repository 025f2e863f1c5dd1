"""depthwise_conv2d (fused input ReLU) against F.conv2d(groups=C): the C++ kernel and the CUDA fallback."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from hnas_fast.kernels import depthwise_conv2d, depthwise_conv2d_reference, extension_available
from hnas_fast.nn.operations import DilConv, SepConv
from tests.helpers import assert_close_rule

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _input(shape, dtype, layout: str, device: str = "cpu") -> torch.Tensor:
    n, c, h, w = shape
    if layout == "channels_last":
        return torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor, at an offset
        return torch.randn(n, c, h, 2 * w + 1, device=device).to(dtype)[..., 1::2]
    if layout == "permuted":  # neither contiguous nor channels_last
        return torch.randn(n, h, c, w, device=device).to(dtype).permute(0, 2, 1, 3)
    return torch.randn(shape, device=device).to(dtype)


def _check(shape, k, stride, dilation, relu, dtype, layout, device="cpu", need=(True, True)):
    padding = dilation * (k - 1) // 2
    x = _input(shape, dtype, layout, device).requires_grad_(need[0])
    w = torch.randn(shape[1], 1, k, k, device=device).to(dtype).requires_grad_(need[1])
    out = depthwise_conv2d(x, w, stride, padding, dilation, relu, backend="cpp")
    x64, w64 = x.detach().double().requires_grad_(need[0]), w.detach().double().requires_grad_(need[1])
    ref64 = depthwise_conv2d_reference(x64, w64, stride, padding, dilation, relu)
    assert out.shape == ref64.shape and out.dtype == dtype
    want_cl = layout == "channels_last" and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
    xs, ws = x.detach().clone().requires_grad_(need[0]), w.detach().clone().requires_grad_(need[1])
    same = depthwise_conv2d_reference(xs, ws, stride, padding, dilation, relu)
    assert_close_rule(out, same, ref64)
    g = torch.randn(out.shape, device=device).to(dtype)
    inputs = [t for t, n in zip((x, w), need) if n]
    got = torch.autograd.grad(out, inputs, g)
    refs = torch.autograd.grad(ref64, [t for t, n in zip((x64, w64), need) if n], g.double())
    sames = torch.autograd.grad(same, [t for t, n in zip((xs, ws), need) if n], g)
    for a, b, c in zip(got, sames, refs):
        assert_close_rule(a, b, c)
    if need[0]:
        assert got[0].is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)


CASES = [  # (N, C, H, W)
    (2, 1, 9, 7), (1, 3, 11, 13), (3, 16, 8, 8), (2, 17, 7, 10), (1, 64, 9, 9), (4, 5, 16, 15), (2, 33, 6, 5),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "permuted"])
@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (7, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_conv2d_float32(seed, layout, k, dilation, stride):
    for shape in random.sample(CASES, 2):
        _check(shape, k, stride, dilation, random.random() < 0.75, torch.float32, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dtypes(seed, dtype, layout):
    for stride in (1, 2):
        k, d = random.choice([(3, 1), (5, 1), (3, 2), (5, 2), (7, 1)])
        _check(random.choice(CASES), k, stride, d, True, dtype, layout)


@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_full_and_partial_blocks(seed, stride):
    """channels_last with C = 33: two full 16-channel blocks the kernel writes in place, one partial block
    through its buffer; float64 too (8-lane blocks)."""
    for dtype in (torch.float32, torch.float64):
        _check((2, 33, 9, 11), 3, stride, 2, True, dtype, "channels_last")
        _check((2, 33, 9, 11), 5, stride, 1, False, dtype, "channels_last")


def test_one_gradient_only(seed):
    _check((2, 16, 9, 9), 3, 1, 2, True, torch.float32, "channels_last", need=(True, False))
    _check((2, 5, 9, 9), 5, 2, 1, True, torch.float32, "contiguous", need=(False, True))


def test_other_paddings_and_strides(seed):
    x = torch.randn(2, 6, 13, 11, dtype=torch.float64)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    for stride, padding, dilation in [(1, 0, 1), (3, 1, 1), (2, 0, 3), (1, 4, 1)]:
        got = depthwise_conv2d(x, w, stride, padding, dilation, True)
        torch.testing.assert_close(got, F.conv2d(F.relu(x), w, None, stride, padding, dilation, 6))


def test_gradcheck(seed):
    for relu, stride, dilation, cl in [(True, 1, 1, False), (True, 2, 2, True), (False, 2, 1, False),
                                       (True, 1, 2, True)]:
        x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
        x = x + 0.05 * x.sign()  # finite differences (eps 1e-6) must not straddle the ReLU's kink
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda a, b, s=stride, d=dilation, r=relu: depthwise_conv2d(a, b, s, d, d, r), (x, w))


def test_opcheck(seed):
    for shape, cl in [((2, 3, 7, 6), False), ((2, 16, 8, 8), True)]:
        x = torch.randn(shape)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(shape[1], 1, 5, 5, requires_grad=True)
        torch.library.opcheck(torch.ops.hnas_fast.depthwise_conv2d.default, (x, w, 2, 4, 2, True))
        g = torch.randn_like(torch.ops.hnas_fast.depthwise_conv2d(x.detach(), w.detach(), 2, 4, 2, True))
        torch.library.opcheck(torch.ops.hnas_fast.depthwise_conv2d_backward.default,
                              (g, x.detach(), w.detach(), 2, 4, 2, True, True, True))


def test_weight_grad_independent_of_threads(seed):
    x = torch.randn(16, 20, 12, 12)
    w = torch.randn(20, 1, 5, 5)
    g = torch.randn(16, 20, 12, 12)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append(torch.ops.hnas_fast.depthwise_conv2d_backward(g, x, w, 1, 4, 2, True, True, True))
    for gx, gw in results[1:]:
        assert torch.equal(gx, results[0][0]) and torch.equal(gw, results[0][1])


def test_nan_and_relu_boundary():
    x = torch.tensor([[[[float("nan"), 0.0, -1.0], [2.0, -0.0, 3.0], [1.0, 1.0, 1.0]]]], requires_grad=True)
    w = torch.randn(1, 1, 3, 3, requires_grad=True)
    out = depthwise_conv2d(x, w, 1, 1, 1, True)
    ref = F.conv2d(F.relu(x), w, None, 1, 1, 1, 1)
    torch.testing.assert_close(out, ref, equal_nan=True)
    g = torch.ones_like(out)
    got, want = torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0]
    torch.testing.assert_close(got, want, equal_nan=True)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8)


@pytest.mark.parametrize("args,match", [
    (lambda: (_x(), torch.randn(3, 1, 3, 3), 1, 1, 1), "weight must have shape"),
    (lambda: (_x(), torch.randn(4, 1, 4, 4), 1, 1, 1), "odd"),
    (lambda: (torch.randn(4, 8, 8), torch.randn(4, 1, 3, 3), 1, 1, 1), "x must be 4-D"),
    (lambda: (_x().int(), torch.randn(4, 1, 3, 3), 1, 1, 1), "x must be float"),
    (lambda: (_x(), torch.randn(4, 1, 3, 3, dtype=torch.float64), 1, 1, 1), "weight has dtype"),
    (lambda: (_x(), torch.randn(4, 1, 3, 3, device="meta"), 1, 1, 1), "weight is on"),
    (lambda: (_x(), torch.randn(4, 1, 3, 3), 0, 1, 1), "stride"),
    (lambda: (_x(), torch.randn(4, 1, 3, 3), 1, -1, 1), "padding"),
    (lambda: (_x(), torch.randn(4, 1, 3, 3), 1, 1, 0), "dilation"),
    (lambda: (torch.randn(2, 4, 2, 2), torch.randn(4, 1, 5, 5), 1, 0, 1), "too small"),
])
def test_bad_input_names_the_argument(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        depthwise_conv2d(*args())


def test_compiled_op_checks_too():
    with pytest.raises(RuntimeError, match="weight must have shape"):
        torch.ops.hnas_fast.depthwise_conv2d(torch.randn(2, 4, 8, 8), torch.randn(3, 1, 3, 3), 1, 1, 1, True)
    with pytest.raises(RuntimeError, match="stride must be"):
        torch.ops.hnas_fast.depthwise_conv2d(torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3), 0, 1, 1, True)


def test_batch_zero():
    x = torch.randn(0, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    out = depthwise_conv2d(x, w, 1, 1, 1, True)
    assert out.shape == (0, 4, 8, 8)
    gx, gw = torch.autograd.grad(out.sum(), [x, w])
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(w))


@pytest.mark.cuda
def test_cuda_fallback_matches(seed):
    for layout in ("contiguous", "channels_last"):
        _check((2, 16, 9, 9), 5, 2, 2, True, torch.float32, layout, device="cuda")


@pytest.mark.parametrize("cls,args", [(SepConv, (8, 8, 3, 2, 1)), (SepConv, (6, 6, 5, 1, 2)),
                                      (DilConv, (8, 8, 3, 1, 2, 2)), (DilConv, (5, 5, 5, 2, 4, 2))])
def test_modules_fused_equal_reference(seed, cls, args):
    fused = cls(*args).double()
    ref = cls(*args, backend="reference").double()
    ref.load_state_dict(fused.state_dict())
    assert list(fused.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, args[0], 9, 9, dtype=torch.float64)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    of, orf = fused(xf), ref(xr)
    torch.testing.assert_close(of, orf)
    g = torch.randn_like(of)
    gf = torch.autograd.grad(of, [xf, *fused.parameters()], g)
    gr = torch.autograd.grad(orf, [xr, *ref.parameters()], g)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b)
    for (name, a), b in zip(fused.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, msg=name)


def test_env_var_selects_reference(monkeypatch):
    m = SepConv(4, 4, 3, 1, 1)
    x = torch.randn(2, 4, 6, 6)
    monkeypatch.setenv("HNAS_FAST_BACKEND", "reference")
    calls = []
    handle = m.op[0].register_forward_hook(lambda *a: calls.append(1))
    m(x)
    assert calls  # the plain nn.Sequential ran
    monkeypatch.delenv("HNAS_FAST_BACKEND")
    calls.clear()
    m(x)
    handle.remove()
    assert not calls  # the fused op ran instead of the ReLU module
