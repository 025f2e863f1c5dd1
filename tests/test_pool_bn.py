"""pool_bn (pooling fused with the search network's non-affine BatchNorm) against F.max_pool2d /
F.avg_pool2d(count_include_pad=False) + F.batch_norm: the C++ kernel and the CUDA fallback."""

from __future__ import annotations

import random

import pytest
import torch

from hnas_fast.kernels import extension_available, pool_bn, pool_bn_reference
from hnas_fast.kernels.pool_bn import op as pool_bn_op
from tests.helpers import assert_close_rule, rel_err

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (N, C, H, W): odd sizes, one channel, one sample, channel counts around the 16-lane block. No plane is much
# smaller than a 5x5 window: there the max is one value almost everywhere, the batch variance nearly 0 and the
# gradient ill-conditioned (torch's own float32 error reaches 8e-5 on 1x64x5x5), which tests nothing of ours.
CASES = [
    (2, 1, 9, 7), (1, 3, 11, 13), (3, 16, 8, 8), (2, 17, 7, 10), (1, 64, 9, 9), (4, 5, 16, 15), (2, 33, 6, 5),
]


def _input(shape, dtype, layout: str, device: str = "cpu", ties: bool = False) -> torch.Tensor:
    n, c, h, w = shape
    make = (lambda *s: torch.randint(-2, 3, s, device=device).float()) if ties else \
        (lambda *s: torch.randn(*s, device=device))
    if layout == "channels_last":
        return make(*shape).to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor, at an offset
        return make(n, c, h, 2 * w + 1).to(dtype)[..., 1::2]
    if layout == "permuted":  # neither contiguous nor channels_last
        return make(n, h, c, w).to(dtype).permute(0, 2, 1, 3)
    return make(*shape).to(dtype)


def _stats(c: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    stat_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return (torch.randn(c, device=device, dtype=stat_dtype),
            torch.rand(c, device=device, dtype=stat_dtype) + 0.5)


def _check(shape, kind, k, stride, dtype, layout, training=True, device="cpu", ties=False, stats=True):
    x = _input(shape, dtype, layout, device, ties).requires_grad_()
    rm, rv = _stats(shape[1], dtype, device) if stats else (None, None)
    rm_same, rv_same = (rm.clone(), rv.clone()) if stats else (None, None)
    rm64, rv64 = (rm.double(), rv.double()) if stats else (None, None)
    out = pool_bn(x, kind, k, stride, rm, rv, training, 0.1, 1e-5, backend="cpp")
    x64 = x.detach().double().requires_grad_()
    ref64 = pool_bn_reference(x64, kind, k, stride, rm64, rv64, training, 0.1, 1e-5)
    xs = x.detach().clone().requires_grad_()
    same = pool_bn_reference(xs, kind, k, stride, rm_same, rv_same, training, 0.1, 1e-5)
    assert out.shape == ref64.shape and out.dtype == dtype
    want_cl = layout == "channels_last" and not x.is_contiguous()
    fmt = torch.channels_last if want_cl else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    assert_close_rule(out, same, ref64)
    if stats and dtype in (torch.float16, torch.bfloat16):
        # float32 statistics of a half-precision y: 2x torch's own error (the half-precision rule), or the
        # float32 rule where torch's error is at float32 rounding level (C = 1: one number)
        for got, same_stat, ref_stat in ((rm, rm_same, rm64), (rv, rv_same, rv64)):
            assert rel_err(got, ref_stat) <= max(2 * rel_err(same_stat, ref_stat), 1e-5)
    elif stats:
        assert_close_rule(rm, rm_same, rm64)
        assert_close_rule(rv, rv_same, rv64)
    g = torch.randn(out.shape, device=device).to(dtype)
    (got,) = torch.autograd.grad(out, x, g)
    (want64,) = torch.autograd.grad(ref64, x64, g.double())
    (want_same,) = torch.autograd.grad(same, xs, g)
    assert_close_rule(got, want_same, want64)
    assert got.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "permuted"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_pytorch_float32(seed, layout, kind, k, stride):
    for shape in random.sample(CASES, 2):
        _check(shape, kind, k, stride, torch.float32, layout, training=random.random() < 0.8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_dtypes(seed, dtype, layout, kind):
    for stride in (1, 2):
        _check(random.choice(CASES), kind, random.choice([3, 5]), stride, dtype, layout)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_without_running_stats_and_eval(seed, kind):
    _check((3, 7, 9, 8), kind, 3, 1, torch.float32, "contiguous", stats=False)
    _check((3, 20, 9, 8), kind, 5, 2, torch.float32, "channels_last", training=False)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_running_stats_after_many_steps(seed, kind, layout):
    """The running statistics follow BatchNorm2d's update (unbiased variance) step after step, also with
    momentum=None (cumulative average, as BatchNorm2d passes 1 / num_batches_tracked)."""
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    for step in range(1, 9):
        x = _input((4, 6, 9, 7), torch.float64, layout) * step + step
        momentum = 0.1 if step < 5 else 1.0 / step
        pool_bn(x, kind, 3, 2, rm, rv, True, momentum, 1e-5, backend="cpp")
        pool_bn_reference(x, kind, 3, 2, rm_ref, rv_ref, True, momentum, 1e-5)
        torch.testing.assert_close(rm, rm_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv, rv_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_max_ties_route_as_pytorch(seed, layout, k, stride):
    """Inputs drawn from {-2..2} tie in nearly every window: the gradient goes to the same element as in
    torch's CPU kernel (the first maximum in row-major window order)."""
    x = _input((2, 17, 9, 11), torch.float64, layout, ties=True).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = pool_bn(x, "max", k, stride, backend="cpp")
    ref = pool_bn_reference(xr, "max", k, stride)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, xr, g)[0],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-12, atol=1e-12)


def test_gradcheck(seed):
    for kind, k, stride, cl, training in [("max", 3, 1, False, True), ("max", 5, 2, True, True),
                                          ("avg", 3, 2, False, True), ("avg", 5, 1, True, True),
                                          ("avg", 3, 1, False, False), ("max", 3, 2, True, False)]:
        x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        rm, rv = _stats(3, torch.float64)

        def fn(a, kind=kind, k=k, stride=stride, training=training, rm=rm, rv=rv):
            # fresh copies: gradcheck calls fn many times and the running statistics must not drift in eval
            return pool_bn(a, kind, k, stride, rm.clone(), rv.clone(), training, 0.1, 1e-5, backend="cpp")
        assert torch.autograd.gradcheck(fn, (x,))


def test_opcheck(seed):
    for shape, cl, is_max in [((2, 3, 7, 6), False, True), ((2, 16, 8, 8), True, False)]:
        x = torch.randn(shape)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        rm, rv = _stats(shape[1], torch.float32)
        torch.library.opcheck(torch.ops.hnas_fast.pool_bn.default, (x, is_max, 3, 2, rm, rv, True, 0.1, 1e-5))
        torch.library.opcheck(torch.ops.hnas_fast.pool_bn.default,
                              (x, is_max, 5, 1, None, None, True, 0.1, 1e-5))
        out, invstd = torch.ops.hnas_fast.pool_bn(x.detach(), is_max, 3, 2, None, None, True, 0.1, 1e-5)
        g = torch.randn_like(out)
        torch.library.opcheck(torch.ops.hnas_fast.pool_bn_backward.default,
                              (g, x.detach(), out, invstd, is_max, 3, 2, True))


def test_result_independent_of_threads(seed):
    x = torch.randn(8, 20, 12, 12)
    g = torch.randn(8, 20, 12, 12)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xa = x.clone().requires_grad_()
            out = pool_bn(xa, "avg", 3, 1, backend="cpp")
            results.append((out.detach(), torch.autograd.grad(out, xa, g)[0]))
    finally:
        torch.set_num_threads(before)
    for out, gx in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(gx, results[0][1])


def _x() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8)


@pytest.mark.parametrize("args,match", [
    (lambda: (torch.randn(4, 8, 8), "max", 3), "x must be 4-D"),
    (lambda: (_x().int(), "max", 3), "x must be float"),
    (lambda: (_x(), "min", 3), "kind must be one of"),
    (lambda: (_x(), "max", 4), "kernel_size must be odd"),
    (lambda: (_x(), "max", 0), "kernel_size must be an int"),
    (lambda: (_x(), "avg", 3, 0), "stride must be an int"),
    (lambda: (_x(), "avg", 3, 1, torch.zeros(3), torch.ones(3)), "running_mean must be a tensor of shape"),
    (lambda: (_x(), "avg", 3, 1, torch.zeros(4), None), "given together"),
    (lambda: (_x(), "avg", 3, 1, torch.zeros(4), torch.ones(4, device="meta")), "running_var is on"),
    (lambda: (_x(), "avg", 3, 1, None, None, True, 1.5), "momentum"),
    (lambda: (_x(), "avg", 3, 1, None, None, True, 0.1, 0.0), "eps"),
    (lambda: (torch.randn(1, 4, 1, 1), "avg", 3, 2), "more than one value per channel"),
    (lambda: (torch.randn(0, 4, 8, 8), "max", 3), "no empty dimension"),
])
def test_bad_input_names_the_argument(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pool_bn(*args())


def test_compiled_op_checks_too():
    with pytest.raises(RuntimeError, match="kernel_size must be odd"):
        torch.ops.hnas_fast.pool_bn(_x(), True, 4, 1, None, None, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="running_mean must have shape"):
        torch.ops.hnas_fast.pool_bn(_x(), True, 3, 1, torch.zeros(3), torch.ones(3), True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="more than one value"):
        torch.ops.hnas_fast.pool_bn(torch.randn(1, 4, 1, 1), True, 3, 2, None, None, True, 0.1, 1e-5)


@pytest.mark.cuda
def test_cuda_fallback_matches(seed):
    for layout in ("contiguous", "channels_last"):
        for kind in ("max", "avg"):
            _check((2, 16, 9, 9), kind, 3, 2, torch.float32, layout, device="cuda")


def test_env_var_selects_reference(monkeypatch):
    x = torch.randn(2, 4, 6, 6)
    monkeypatch.setenv("HNAS_FAST_BACKEND", "reference")
    calls = []
    monkeypatch.setattr(pool_bn_op, "pool_bn_reference", lambda *a: calls.append(1) or pool_bn_reference(*a))
    pool_bn(x, "max", 3)
    assert calls
    monkeypatch.delenv("HNAS_FAST_BACKEND")
    calls.clear()
    pool_bn(x, "max", 3)
    assert not calls


# ---- the search network's module ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["max_pool_3x3", "avg_pool_3x3", "max_pool_5x5", "avg_pool_5x5"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_pool_bn_module_matches_darts_sequential(name, stride, momentum):
    from hnas_fast.nn.operations import PoolBN, build_op

    torch.manual_seed(0)
    fused = build_op(name, 8, stride, affine=False, search=True).double()
    assert isinstance(fused, PoolBN)
    plain = torch.nn.Sequential(fused[0], torch.nn.BatchNorm2d(8, affine=False, momentum=momentum)).double()
    fused[1].momentum = momentum
    assert list(fused.state_dict()) == list(plain.state_dict())
    for _ in range(3):  # running statistics after several steps, num_batches_tracked included
        x = torch.randn(3, 8, 11, 9, dtype=torch.float64, requires_grad=True)
        y_f, y_p = fused(x), plain(x)
        g = torch.randn_like(y_p)
        torch.testing.assert_close(y_f, y_p)
        (gx_f,), (gx_p,) = torch.autograd.grad(y_f, x, g), torch.autograd.grad(y_p, x, g)
        torch.testing.assert_close(gx_f, gx_p)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], value)
    fused.eval()
    plain.eval()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(fused(x), plain(x))
