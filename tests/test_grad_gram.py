"""grad_gram (batched pairwise gradient inner products) against its plain-PyTorch reference."""

from __future__ import annotations

import random

import pytest
import torch

from hnas_fast.kernels import extension_available, grad_gram, grad_gram_reference
from hnas_fast.kernels.grad_gram import grad_gram_row, grad_gram_row_reference
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
@pytest.mark.parametrize("m", [2, 10, 40, 65])
def test_cuda_matches_reference(seed, backend, m):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        if backend == "triton" and dtype == torch.bfloat16:
            continue
        _check(backend, m, dtype, big=True, device="cuda")


def _mixed(m: int) -> list[torch.Tensor]:
    """Every dtype in one call, views with offsets and row strides, zero-size and size-1 tensors, and
    tensors long enough to cross the kernel's column tiles (and its tile boundaries between tensors)."""
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    out = []
    for i in range(9):
        shape = random.choice([(random.randint(1, 3),), (random.randint(1, 4), random.randint(1, 6)),
                               (random.randint(60, 700), 3, 3), (0, 3), (1,)])
        g = torch.randn(m, *shape).to(dtypes[i % 4])
        kind = i % 3
        if kind == 1 and g.dim() >= 2:  # permuted: rows not contiguous, the kernel copies them
            g = torch.randn(m, *reversed(shape)).to(g.dtype).permute(0, *range(g.dim() - 1, 0, -1))
        elif kind == 2:  # rows contiguous but spaced (and offset): read in place
            g = torch.randn(m + 2, 2 * max(1, g[0].numel()) + 3).to(g.dtype)[1:m + 1, 3:3 + g[0].numel()]
        out.append(g)
    return out


@pytest.mark.parametrize("m", [1, 2, 7, 10, 32, 64, 65])
def test_cpp_mixed_dtypes_shapes_and_views(seed, m):
    if not extension_available():
        pytest.skip("extension not built")
    grads = _mixed(m)
    got = grad_gram(grads, backend="cpp")
    ref = grad_gram_reference(grads)
    assert rel_err(got, ref) <= 1e-12
    assert torch.equal(got, got.T)


def test_cpp_many_small_tensors_share_tiles(seed):
    if not extension_available():
        pytest.skip("extension not built")
    grads = [torch.randn(10, random.randint(1, 40)) for _ in range(500)] + [torch.randn(10, 5000)]
    assert rel_err(grad_gram(grads, backend="cpp"), grad_gram_reference(grads)) <= 1e-12


def _streamed(grads: list[torch.Tensor], backend: str) -> torch.Tensor:
    """The Gram rebuilt row by row as a streamed measurement takes it: slot i is filled after row i."""
    m = grads[0].shape[0]
    held = [torch.zeros_like(g) for g in grads]
    gram = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        row = grad_gram_row(held, [g[i] for g in grads], i, backend=backend)
        assert row.dtype == torch.float64 and row.shape == (i + 1,)
        gram[i, :i + 1] = row
        gram[:i + 1, i] = row
        for h, g in zip(held, grads):
            h[i] = g[i]
    return gram


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("m", [1, 2, 7, 33])
def test_row_rebuilds_the_gram(seed, backend, m):
    if backend == "cpp" and not extension_available():
        pytest.skip("extension not built")
    grads = _mixed(m)
    assert rel_err(_streamed(grads, backend), grad_gram_reference(grads)) <= 1e-12


def test_row_reads_only_the_first_rows_and_mixed_slot_dtypes(seed):
    if not extension_available():
        pytest.skip("extension not built")
    new = [torch.randn(3, 5), torch.randn(700).double()]
    held = [torch.randn(6, 3, 5).half(), torch.randn(6, 700)]
    held[0][4:] = float("nan")  # beyond rows: must not be read
    got = grad_gram_row(held, new, 4, backend="cpp")
    ref = grad_gram_row_reference([h[:4] for h in held], new, 4)
    assert rel_err(got, ref) <= 1e-12


def test_row_gradcheck_and_opcheck(seed):
    if not extension_available():
        pytest.skip("extension not built")
    held = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)]
    new = [torch.randn(4, dtype=torch.float64, requires_grad=True),
           torch.randn(2, 2, dtype=torch.float64, requires_grad=True)]

    def fn(h0, h1, g0, g1):
        return grad_gram_row([h0, h1], [g0, g1], 2, backend="cpp")

    assert torch.autograd.gradcheck(fn, (*held, *new))
    torch.library.opcheck(torch.ops.hnas_fast.grad_gram_row.default, (held, new, 2))


def test_row_deterministic_across_threads(seed):
    if not extension_available():
        pytest.skip("extension not built")
    held = [torch.randn(5, 40000), torch.randn(5, 3, 3, 333)]
    new = [torch.randn(40000), torch.randn(3, 3, 333)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grad_gram_row(held, new, 5, backend="cpp")
        torch.set_num_threads(2)
        two = grad_gram_row(held, new, 5, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_row_bad_inputs_name_the_argument(backend):
    if backend == "cpp" and not extension_available():
        pytest.skip("extension not built")
    h, g = torch.randn(3, 2), torch.randn(2)
    cases = [
        (([], [], 0), "at least one"),
        (([h], [g, g], 0), "held has 1"),
        (([h], [g], -1), "rows"),
        (([h], [g], 4), r"held\[0\]"),
        (([h], [torch.randn(3)], 1), r"grads\[0\]"),
        (([h], [torch.ones(2, dtype=torch.long)], 1), r"grads\[0\]"),
        (([h.long()], [g], 1), r"held\[0\]"),
        (([h], [torch.randn(2, device="meta")], 1), r"grads\[0\]"),
    ]
    for args, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            grad_gram_row(*args, backend=backend)
    # The compiled op checks too, naming the argument, when called directly.
    if backend == "cpp":
        with pytest.raises(RuntimeError, match=r"grads\[0\]"):
            torch.ops.hnas_fast.grad_gram_row([h], [torch.randn(3)], 1)


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 7, 64, 65, 130])
def test_cuda_mixed_dtypes_shapes_and_views(seed, m):
    """One launch over every tensor, 64-row blocks for any m (no float64-matmul fallback above 32)."""
    grads = [g.to("cuda") for g in _mixed(m)]
    got = grad_gram(grads, backend="cuda")
    assert rel_err(got, grad_gram_reference(grads)) <= 1e-12
    assert torch.equal(got, got.T)
