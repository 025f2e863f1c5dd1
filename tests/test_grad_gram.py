"""grad_gram (batched pairwise gradient inner products) against its plain-PyTorch reference."""

from __future__ import annotations

import random

import pytest
import torch

from hnas_fast.kernels import extension_available, grad_gram, grad_gram_reference
from tests.helpers import rel_err

CPU_BACKENDS = ["cpp", "triton"] if extension_available() else ["triton"]


def _grads(m: int, dtype: torch.dtype, big: bool, device: str = "cpu") -> list[torch.Tensor]:
    shapes = [(random.randint(1, 4), random.randint(1, 5)) for _ in range(random.randint(1, 4))]
    if big:
        shapes.append((random.randint(300, 900), 3, 3))
    grads = [torch.randn(m, *s, device=device).to(dtype) for s in shapes]
    grads.append(torch.randn(*reversed((m, 7)), device=device).to(dtype).T)  # non-contiguous [m, 7]
    return grads


def _check(backend: str, m: int, dtype: torch.dtype, big: bool, device: str = "cpu") -> None:
    grads = _grads(m, dtype, big, device)
    got = grad_gram(grads, backend=backend)
    assert got.dtype == torch.float64 and got.shape == (m, m)
    ref = grad_gram_reference(grads)  # float64 products of the same stored values: the oracle
    # Both accumulate in float64 but in different orders: 1e-12 relative is far above that rounding noise.
    assert rel_err(got, ref) <= 1e-12
    assert torch.equal(got, got.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 2, 10, 33])
def test_cpp_matches_reference(seed, m, dtype):
    if not extension_available():
        pytest.skip("extension not built")
    for big in (False, True):
        _check("cpp", m, dtype, big)


@pytest.mark.triton
@pytest.mark.parametrize("m", [2, 10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_triton_matches_reference(seed, m, dtype):
    _check("triton", m, dtype, big=False)


def test_equals_gram_of_concatenated_gradients(seed):
    grads = [torch.randn(6, 5, 3), torch.randn(6, 11), torch.randn(6, 2, 2, 2)]
    flat = torch.cat([g.reshape(6, -1) for g in grads], 1).double()
    torch.testing.assert_close(grad_gram(grads), flat @ flat.T)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(seed, backend):
    grads = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *g: grad_gram(list(g), backend=backend), grads)


def test_opcheck(seed):
    if not extension_available():
        pytest.skip("extension not built")
    grads = [torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True),
             torch.randn(4, 9, dtype=torch.float64)]
    torch.library.opcheck(torch.ops.hnas_fast.grad_gram.default, (grads,))
    torch.library.opcheck(torch.ops.hnas_fast.grad_gram_triton.default, (grads,),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_deterministic_across_threads(seed):
    if not extension_available():
        pytest.skip("extension not built")
    grads = [torch.randn(10, 40000), torch.randn(10, 3, 3, 333)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grad_gram(grads, backend="cpp")
        torch.set_num_threads(2)
        two = grad_gram(grads, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "reference"])
def test_bad_inputs_name_the_argument(backend):
    cases = [
        ([], "at least one"),
        ([torch.randn(3, 2), torch.randn(4, 2)], r"grads\[1\]"),
        ([torch.randn(3, 2), torch.ones(3, 2, dtype=torch.long)], r"grads\[1\]"),
        ([torch.randn(3, 2), torch.randn(3, 2, device="meta")], r"grads\[1\]"),
        ([torch.randn(())], r"grads\[0\]"),
    ]
    for grads, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            grad_gram(grads, backend=backend)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("m", [2, 10, 40])
def test_cuda_matches_reference(seed, backend, m):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        if backend == "triton" and dtype == torch.bfloat16:
            continue
        _check(backend, m, dtype, big=True, device="cuda")
