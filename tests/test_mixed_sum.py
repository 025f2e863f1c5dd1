"""mixed_sum against its plain-PyTorch reference, for every backend this machine can run."""

from __future__ import annotations

import os
import random

import pytest
import torch

from hnas_fast.kernels import extension_available, mixed_sum, mixed_sum_reference
from tests.helpers import assert_close_rule

CPU_BACKENDS = ["cpp", "triton"] if extension_available() else ["triton"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _random_shape(big: bool) -> tuple[int, ...]:
    dims = random.randint(1, 4)
    hi = 9 if big else 5
    shape = [random.randint(1, hi) for _ in range(dims)]
    if big:  # cross several CPU chunks and Triton programs
        shape[0] = random.randint(20, 60) * 97
    return tuple(shape)


def _layouts(shape: tuple[int, ...], k: int, dtype: torch.dtype, device: str = "cpu") -> list[torch.Tensor]:
    """K candidates with mixed layouts: contiguous, transposed views, strided slices, channels_last."""
    ys = []
    for i in range(k):
        kind = i % 4
        if kind == 1 and len(shape) >= 2:
            y = torch.randn(shape[::-1], device=device).to(dtype).permute(*reversed(range(len(shape))))
        elif kind == 2:
            y = torch.randn((*shape[:-1], shape[-1] * 2), device=device).to(dtype)[..., ::2]
        elif kind == 3 and len(shape) == 4:
            y = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        else:
            y = torch.randn(shape, device=device).to(dtype)
        ys.append(y)
    return ys


def _check_against_reference(backend: str, shape, k: int, dtype: torch.dtype, device: str = "cpu") -> None:
    ys = [y.requires_grad_() for y in _layouts(shape, k, dtype, device)]
    w = torch.softmax(torch.randn(k, device=device), 0).requires_grad_()
    out = mixed_sum(ys, w, backend=backend)
    assert out.shape == ys[0].shape and out.dtype == dtype
    g = torch.randn(shape, device=device).to(dtype)
    grads = torch.autograd.grad(out, [*ys, w], g)

    # float64 oracle and the same-precision eager computation, on the very same inputs
    ys64 = [y.detach().double().requires_grad_() for y in ys]
    w64 = w.detach().double().requires_grad_()
    out64 = mixed_sum_reference(ys64, w64)
    grads64 = torch.autograd.grad(out64, [*ys64, w64], g.double())
    ys_sp = [y.detach().clone().requires_grad_() for y in ys]
    w_sp = w.detach().clone().requires_grad_()
    out_sp = mixed_sum_reference(ys_sp, w_sp)
    grads_sp = torch.autograd.grad(out_sp, [*ys_sp, w_sp], g)

    assert_close_rule(out, out_sp, out64)
    for got, same, ref in zip(grads, grads_sp, grads64):
        assert_close_rule(got, same, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_cpp_matches_reference(seed, k, dtype):
    if not extension_available():
        pytest.skip("extension not built")
    for big in (False, True):
        _check_against_reference("cpp", _random_shape(big), k, dtype)


def test_cpp_more_than_eight_candidates(seed):
    if not extension_available():
        pytest.skip("extension not built")
    _check_against_reference("cpp", _random_shape(True), 11, torch.float32)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_triton_matches_reference(seed, k, dtype):
    # The interpreter has no bfloat16; tiny shapes keep it fast. K=10 exercises the sliced launch.
    _check_against_reference("triton", (3, 5, 7), k, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(seed, backend):
    ys = [torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    ys[1] = ys[1].detach().transpose(0, 2).contiguous().transpose(0, 2).requires_grad_()
    w = torch.softmax(torch.randn(3, dtype=torch.float64), 0).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, *ys: mixed_sum(list(ys), w, backend=backend), (w, *ys))


def test_opcheck_cpp(seed):
    if not extension_available():
        pytest.skip("extension not built")
    from hnas_fast.kernels.mixed_sum.op import _register_cpp

    _register_cpp()
    for dtype in (torch.float32, torch.float64):
        ys = [torch.randn(3, 4, 5, dtype=dtype, requires_grad=True) for _ in range(4)]
        w = torch.softmax(torch.randn(4, dtype=dtype), 0).requires_grad_()
        torch.library.opcheck(torch.ops.hnas_fast.mixed_sum.default, (ys, w))
        g = torch.randn(3, 4, 5, dtype=dtype)
        torch.library.opcheck(torch.ops.hnas_fast.mixed_sum_backward.default,
                              (g, [y.detach() for y in ys], w.detach(), True, True))


@pytest.mark.triton
def test_opcheck_triton(seed):
    ys = [torch.randn(2, 3, 5, requires_grad=True) for _ in range(3)]
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    torch.library.opcheck(torch.ops.hnas_fast.mixed_sum_triton.default, (ys, w),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_stacked_tensor_input(seed, backend):
    ys = torch.randn(4, 2, 3, 5)
    w = torch.softmax(torch.randn(4), 0)
    torch.testing.assert_close(mixed_sum(ys, w, backend=backend), mixed_sum_reference(list(ys), w))


def test_deterministic_and_thread_independent(seed):
    if not extension_available():
        pytest.skip("extension not built")
    ys = [torch.randn(64 * 1024 + 3, requires_grad=True) for _ in range(5)]
    w = torch.softmax(torch.randn(5), 0).requires_grad_()
    g = torch.randn(64 * 1024 + 3)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(torch.autograd.grad(mixed_sum(ys, w, backend="cpp"), [w, ys[0]], g))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_weights_only_or_ys_only_grad(seed):
    if not extension_available():
        pytest.skip("extension not built")
    ys = [torch.randn(3, 4) for _ in range(3)]
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    (gw,) = torch.autograd.grad(mixed_sum(ys, w, backend="cpp").sum(), [w])
    torch.testing.assert_close(gw, torch.stack([y.sum() for y in ys]))
    ys = [y.requires_grad_() for y in ys]
    gy = torch.autograd.grad(mixed_sum(ys, w.detach(), backend="cpp").sum(), ys)
    for k in range(3):
        torch.testing.assert_close(gy[k], torch.full_like(ys[k], w[k].item()))


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "reference"])
def test_bad_inputs_name_the_argument(backend):
    y = torch.randn(2, 3)
    cases = [
        (([], torch.ones(0)), "K = 0"),
        (([y, y], torch.ones(3)), "weights"),
        (([y, torch.randn(3, 2)], torch.ones(2)), "ys[1]"),
        (([y, y.double()], torch.ones(2)), "ys[1]"),
        (([y.int(), y.int()], torch.ones(2)), "ys[0]"),
        (([y, y], torch.ones(2, dtype=torch.long)), "weights"),
        (([y, y], torch.ones(2, device="meta")), "weights"),
        (([y, y.to("meta")], torch.ones(2)), "ys[1]"),
    ]
    for (ys, w), name in cases:
        with pytest.raises((ValueError, TypeError), match=name.replace("[", r"\[").replace("]", r"\]")):
            mixed_sum(ys, w, backend=backend)


def test_compiled_op_checks_inputs_too():
    if not extension_available():
        pytest.skip("extension not built")
    y = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="weights has 3 entries"):
        torch.ops.hnas_fast.mixed_sum([y, y], torch.ones(3))
    with pytest.raises(RuntimeError, match=r"ys\[1\] has shape"):
        torch.ops.hnas_fast.mixed_sum([y, torch.randn(3, 2)], torch.ones(2))
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        torch.ops.hnas_fast.mixed_sum_backward(torch.randn(3, 2), [y, y], torch.ones(2), True, True)


def test_backend_choice_and_override(monkeypatch):
    from hnas_fast.kernels.backend import resolve_backend

    cpu = torch.device("cpu")
    monkeypatch.delenv("HNAS_FAST_BACKEND", raising=False)
    assert resolve_backend(None, cpu) == ("cpp" if extension_available() else "reference")
    monkeypatch.setenv("HNAS_FAST_BACKEND", "reference")
    assert resolve_backend(None, cpu) == "reference"
    assert resolve_backend("triton", cpu) == "triton"  # an argument beats the environment
    with pytest.raises(ValueError, match="HNAS_FAST_BACKEND"):
        monkeypatch.setenv("HNAS_FAST_BACKEND", "fast")
        resolve_backend(None, cpu)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        if not extension_available():
            raise ValueError("backend='cuda' needs CUDA tensors")
        resolve_backend("cuda", cpu)


def test_torch_compile_aot_eager(seed):
    ys = [torch.randn(2, 3, 4, requires_grad=True) for _ in range(3)]
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    fn = torch.compile(lambda ys, w: mixed_sum(ys, w).sin().sum(), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(fn(ys, w), [w, *ys])
    ref = torch.autograd.grad(mixed_sum_reference(ys, w).sin().sum(), [w, *ys])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("k", [1, 5, 8, 11])
def test_cuda_matches_reference(seed, backend, k, dtype):
    if backend == "cuda" and not extension_available():
        pytest.skip("extension not built")
    for big in (False, True):
        _check_against_reference(backend, _random_shape(big), k, dtype, device="cuda")


@pytest.mark.cuda
def test_cuda_opcheck_and_gradcheck(seed):
    from hnas_fast.kernels.mixed_sum.op import _register_cpp

    _register_cpp()
    ys = [torch.randn(3, 4, 5, device="cuda", dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.softmax(torch.randn(3, device="cuda", dtype=torch.float64), 0).requires_grad_()
    torch.library.opcheck(torch.ops.hnas_fast.mixed_sum.default, (ys, w))
    for backend in ("cuda", "triton"):
        assert torch.autograd.gradcheck(lambda w, *ys, b=backend: mixed_sum(list(ys), w, backend=b), (w, *ys))


def test_environment_is_as_expected():
    # The CPU suite relies on the interpreter for Triton (set in conftest before triton is imported).
    assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
