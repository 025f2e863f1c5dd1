"""Property-based fuzzing of the compiled ops (hypothesis, fixed seed and example budget).

Random shapes (size-1 and zero-size dimensions included), views (offsets, padded strides, permutations,
channels_last), dtypes and mixed dtypes, and requires_grad combinations. The only acceptable outcomes are a
result equal to the plain-PyTorch reference (forward, and backward where something requires grad), or an
error whose message names the offending argument.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hnas_fast.kernels import (
    depthwise_conv2d,
    depthwise_conv2d_reference,
    extension_available,
    grad_gram,
    grad_gram_reference,
    mixed_sum,
    mixed_sum_reference,
    pool_bn,
    pool_bn_reference,
)
from hnas_fast.kernels.grad_gram import grad_gram_row, grad_gram_row_reference
from tests.helpers import rel_err

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")

# derandomize: the same examples on every run (CI must not flake); the budget keeps the file under ~15 s.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float32, torch.float64]
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _view(draw, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of logical ``shape`` laid out as a random kind of view."""
    kind = draw(st.sampled_from(["contiguous", "offset", "permuted", "channels_last"]))
    if kind == "offset":  # padded strides and a nonzero storage offset
        big = torch.randn(2, *[s + 2 for s in shape]).to(dtype)
        return big[(1, *[slice(1, 1 + s) for s in shape])]
    if kind == "permuted" and len(shape) >= 2:
        order = list(range(len(shape)))[::-1]
        return torch.randn(*[shape[i] for i in order]).to(dtype).permute(*order)
    t = torch.randn(*shape).to(dtype)
    if kind == "channels_last" and len(shape) == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _run(fn, names: tuple[str, ...]):
    """``fn()``, or None when it raised an error naming one of the arguments ``names`` (as a word, or as
    ``name[i]`` for list entries); any other error fails."""
    try:
        return fn()
    except (ValueError, TypeError, RuntimeError) as e:
        named = any(re.search(rf"\b{re.escape(n)}(\[\d+\])?(?![\w\[])", str(e)) for n in names)
        assert named, f"error names no argument ({names}): {e}"
        return None


def _grads_close(inputs: list[torch.Tensor], got: torch.Tensor, ref_inputs: list[torch.Tensor],
                 ref: torch.Tensor, tol: float, scale_per_cotangent: float = 0.0) -> None:
    """Backward of the same random cotangent through both; every input's gradient equal within tol,
    relative to the larger of the reference gradient's norm and ``scale_per_cotangent`` x ‖cotangent‖."""
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    if not wanted or got.numel() == 0:
        return
    cot = torch.randn(got.shape, dtype=torch.float64)
    g_got = torch.autograd.grad(got, [inputs[i] for i in wanted], cot.to(got.dtype), allow_unused=True)
    g_ref = torch.autograd.grad(ref, [ref_inputs[i] for i in wanted], cot, allow_unused=True)
    floor = scale_per_cotangent * cot.norm().item()
    for i, a, b in zip(wanted, g_got, g_ref):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        diff, denom = (a.double() - b.double()).norm().item(), max(b.double().norm().item(), floor)
        err = diff / denom if denom > 0 else diff  # both analytically zero (e.g. every ReLU input < 0)
        assert err <= tol, f"input {i}: gradient error {err:.2e}"


def _leaf64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().requires_grad_(t.requires_grad)


@FUZZ
@given(st.data())
def test_fuzz_mixed_sum(data):
    k = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    dtype = data.draw(st.sampled_from(DTYPES))
    ys = [_view(data.draw, shape, dtype).requires_grad_(data.draw(st.booleans())) for _ in range(k)]
    if data.draw(st.booleans()):  # a mixed-dtype candidate list must be refused, naming the entry
        other = torch.float64 if dtype == torch.float32 else torch.float32
        ys[-1] = ys[-1].detach().to(other)
    w = torch.softmax(torch.randn(data.draw(st.sampled_from([k, k, k + 1]))), 0).to(dtype)
    w.requires_grad_(data.draw(st.booleans()))
    got = _run(lambda: mixed_sum(ys, w, backend="cpp"), ("ys", "weights"))
    if got is None:
        return
    ys64, w64 = [_leaf64(y) for y in ys], _leaf64(w)
    ref = mixed_sum_reference(ys64, w64)
    assert got.shape == ref.shape and got.dtype == ys[0].dtype
    tol = TOL[torch.float32] if torch.float32 in (got.dtype, w.dtype) else TOL[torch.float64]
    assert rel_err(got, ref) <= tol
    _grads_close([*ys, w], got, [*ys64, w64], ref, tol)


@FUZZ
@given(st.data())
def test_fuzz_grad_gram(data):
    m = data.draw(st.integers(1, 12))
    grads = []
    for _ in range(data.draw(st.integers(1, 5))):
        shape = (m, *data.draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
        grads.append(_view(data.draw, shape, data.draw(st.sampled_from(ALL_DTYPES))))
    if data.draw(st.integers(0, 9)) == 0:  # a wrong row count must be refused, naming the entry
        grads.append(torch.randn(m + 1, 3))
    got = _run(lambda: grad_gram(grads, backend="cpp"), ("grads",))
    if got is not None:
        assert rel_err(got, grad_gram_reference(grads)) <= 1e-12
    held = [torch.zeros_like(g) for g in grads]
    rows = data.draw(st.integers(0, m))
    for h, g in zip(held, grads):
        if g.shape[0] == m:
            h[:rows] = g[:rows]
    new = [g[m - 1] if g.shape[0] == m else g[0] for g in grads]
    row = _run(lambda: grad_gram_row(held, new, rows, backend="cpp"), ("grads", "held"))
    if row is not None:
        assert rel_err(row, grad_gram_row_reference(held, new, rows)) <= 1e-12


@FUZZ
@given(st.data())
def test_fuzz_depthwise_conv2d(data):
    n, c = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 4))
    h, w = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    k = data.draw(st.sampled_from([1, 3, 5]))
    stride, dilation = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    padding = data.draw(st.integers(0, k // 2 * dilation))
    relu = data.draw(st.booleans())
    dtype = data.draw(st.sampled_from(DTYPES))
    x = _view(data.draw, (n, c, h, w), dtype).requires_grad_(data.draw(st.booleans()))
    wt = _view(data.draw, (c, 1, k, k), dtype)
    if data.draw(st.integers(0, 7)) == 0:  # weight of another dtype must be refused, naming it
        wt = wt.to(torch.float64 if dtype == torch.float32 else torch.float32)
    wt.requires_grad_(data.draw(st.booleans()))
    names = ("x", "weight", "stride", "padding", "dilation")
    got = _run(lambda: depthwise_conv2d(x, wt, stride, padding, dilation, relu, backend="cpp"), names)
    if got is None:
        return
    x64, w64 = _leaf64(x), _leaf64(wt)
    ref = depthwise_conv2d_reference(x64, w64, stride, padding, dilation, relu)
    assert got.shape == ref.shape
    assert rel_err(got, ref) <= TOL[dtype]
    _grads_close([x, wt], got, [x64, w64], ref, TOL[dtype])


@FUZZ
@given(st.data())
def test_fuzz_pool_bn(data):
    n, c = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 4))
    h, w = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    kind = data.draw(st.sampled_from(["max", "avg"]))
    k, stride = data.draw(st.sampled_from([1, 3, 5])), data.draw(st.integers(1, 2))
    dtype = data.draw(st.sampled_from(DTYPES))
    training = data.draw(st.booleans())
    x = _view(data.draw, (n, c, h, w), dtype).requires_grad_(data.draw(st.booleans()))
    stats = data.draw(st.booleans())
    mean = torch.randn(c, dtype=dtype) if stats else None
    var = torch.rand(c, dtype=dtype) + 0.5 if stats else None
    names = ("x", "kind", "kernel_size", "stride", "running_mean", "running_var")
    mean_f, var_f = (mean.clone(), var.clone()) if stats else (None, None)
    got = _run(lambda: pool_bn(x, kind, k, stride, mean_f, var_f, training, backend="cpp"), names)
    if got is None:
        return
    x64 = _leaf64(x)
    mean_r, var_r = (mean.double(), var.double()) if stats else (None, None)
    # Without running statistics the op normalizes by the batch in eval too (track_running_stats=False).
    ref = pool_bn_reference(x64, kind, k, stride, mean_r, var_r, training or not stats)
    assert got.shape == ref.shape
    tol = TOL[dtype]
    # BatchNorm outputs are unit-scale by construction, so the error is measured against the larger of the
    # output's norm and sqrt(numel): a channel whose pooled values are all equal (a 1x2 plane under a 3x3
    # max) has variance 0 and output 0 up to rounding noise, where a norm-relative error divides noise by
    # noise (fused: exactly 0; float64 reference: 2e-15).
    scale = max(ref.detach().norm().item(), got.numel() ** 0.5)
    assert (got.double() - ref.detach()).norm().item() <= tol * scale
    if stats:
        assert rel_err(mean_f, mean_r) <= tol and rel_err(var_f, var_r) <= tol
    # The input gradient's natural scale is ‖cotangent‖ / std: with 2 values per channel BatchNorm's output
    # is ±1 whatever x, so its gradient is analytically 0 and both sides are rounding noise of that scale.
    pad = k // 2
    pooled = (F.max_pool2d(x64.detach(), k, stride, pad) if kind == "max" else
              F.avg_pool2d(x64.detach(), k, stride, pad, count_include_pad=False))
    var = pooled.var((0, 2, 3), unbiased=False) if training or not stats else var_r
    _grads_close([x], got, [x64], ref, tol, scale_per_cotangent=(var + 1e-5).rsqrt().max().item())
