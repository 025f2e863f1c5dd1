"""``grad_gram``: batched pairwise inner products of m gradients, for gradient confusion.

``grad_gram(grads) = Σ_i G_i G_iᵀ`` (float64, m×m) with ``G_i = grads[i].reshape(m, -1)`` holding the m
per-minibatch gradients of parameter tensor i. The result equals the Gram of the concatenated gradients,
without ever concatenating them (design.md §2). Differentiable: ``dL/dG_i = (S + Sᵀ) G_i`` for
``S = dL/dgram``, so it can sit inside a loss too.

``grad_gram_row(held, grads, rows)`` is one row of that Gram, for a streamed measurement: the new gradient
``grads`` against the first ``rows`` gradients of ``held`` (``[k, *shape_i]`` slots) and itself, so each
gradient is folded in as its backward ends and the last one never needs a slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hnas_fast.kernels._ext import register_compiled_op
from hnas_fast.kernels.backend import resolve_backend
from hnas_fast.kernels.grad_gram.reference import grad_gram_reference, grad_gram_row_reference

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_inputs(grads: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending entry of ``grads``."""
    if len(grads) == 0:
        raise ValueError("grad_gram: grads must hold at least one tensor")
    g0 = grads[0]
    if g0.dim() < 1 or g0.shape[0] < 1:
        raise ValueError(f"grad_gram: grads[0] must be [m, ...] with m >= 1, got shape {tuple(g0.shape)}")
    m = g0.shape[0]
    for i, g in enumerate(grads):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"grad_gram: grads[{i}] must be a tensor, got {type(g).__name__}")
        if g.dim() < 1 or g.shape[0] != m:
            raise ValueError(f"grad_gram: grads[{i}] must have m = {m} rows (dim 0) like grads[0], "
                             f"got shape {tuple(g.shape)}")
        if g.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"grad_gram: grads[{i}] must be floating point, got {g.dtype}")
        if g.device != g0.device:
            raise ValueError(f"grad_gram: grads[{i}] is on {g.device} but grads[0] is on {g0.device}")


def check_row_inputs(held: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rows: int) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending argument of ``grad_gram_row``."""
    if len(grads) == 0:
        raise ValueError("grad_gram_row: grads must hold at least one tensor")
    if len(held) != len(grads):
        raise ValueError(f"grad_gram_row: held has {len(held)} tensors but grads has {len(grads)}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"grad_gram_row: rows must be an int >= 0, got {rows!r}")
    dev = grads[0].device if isinstance(grads[0], torch.Tensor) else None
    for i, (h, g) in enumerate(zip(held, grads)):
        for name, t in (("held", h), ("grads", g)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"grad_gram_row: {name}[{i}] must be a tensor, got {type(t).__name__}")
            if t.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"grad_gram_row: {name}[{i}] must be floating point, got {t.dtype}")
            if t.device != dev:
                raise ValueError(f"grad_gram_row: {name}[{i}] is on {t.device} but grads[0] is on {dev}")
        if h.dim() < 1 or h.shape[0] < rows:
            raise ValueError(f"grad_gram_row: held[{i}] must be [k, ...] with k >= rows = {rows}, "
                             f"got shape {tuple(h.shape)}")
        if tuple(h.shape[1:]) != tuple(g.shape):
            raise ValueError(f"grad_gram_row: grads[{i}] must have shape {tuple(h.shape[1:])} (held[{i}] "
                             f"without its first dim), got {tuple(g.shape)}")


def _setup_context(ctx, inputs, output) -> None:
    (grads,) = inputs
    ctx.save_for_backward(*grads)


def _backward(ctx, grad_gram_out):
    grads = ctx.saved_tensors
    sym = grad_gram_out + grad_gram_out.T
    m = sym.shape[0]
    return ([(sym.to(g.dtype) @ g.reshape(m, -1)).reshape(g.shape) for g in grads],)


def _row_setup_context(ctx, inputs, output) -> None:
    held, grads, rows = inputs
    ctx.rows = rows
    ctx.save_for_backward(*held, *grads)


def _row_backward(ctx, grad_out):
    saved = ctx.saved_tensors
    k, rows = len(saved) // 2, ctx.rows
    held, grads = saved[:k], saved[k:]
    d_held, d_grads = [], []
    for h, g in zip(held, grads):
        dh = torch.zeros_like(h)
        dh[:rows] = (grad_out[:rows].to(g.dtype).reshape(-1, *([1] * g.dim())) * g).to(h.dtype)
        d_held.append(dh)
        s = torch.tensordot(grad_out[:rows].to(h.dtype), h[:rows], dims=1).to(g.dtype)
        d_grads.append(s + 2 * grad_out[rows].to(g.dtype) * g)
    return d_held, d_grads, None


def _row_fake(held, grads, rows):
    return grads[0].new_empty((rows + 1,), dtype=torch.float64)


def _fake(grads):
    m = grads[0].shape[0]
    return grads[0].new_empty((m, m), dtype=torch.float64)


def _register_cpp() -> bool:
    """Attach autograd and the fake kernel to the compiled op (once); False without the extension."""
    return (register_compiled_op("grad_gram", {"grad_gram": _fake}, _backward, _setup_context)
            and register_compiled_op("grad_gram_row", {"grad_gram_row": _row_fake}, _row_backward,
                                     _row_setup_context))


@torch.library.custom_op("hnas_fast::grad_gram_triton", mutates_args=())
def grad_gram_triton(grads: list[torch.Tensor]) -> torch.Tensor:
    """Triton implementation of ``grad_gram`` (same contract as ``torch.ops.hnas_fast.grad_gram``)."""
    from hnas_fast.kernels.grad_gram import triton_impl

    check_inputs(grads)
    return triton_impl.grad_gram(grads)


grad_gram_triton.register_fake(_fake)
grad_gram_triton.register_autograd(_backward, setup_context=_setup_context)


def grad_gram(grads: Sequence[torch.Tensor] | torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Float64 m×m Gram ``Σ_i G_i G_iᵀ`` of m gradients spread over parameter tensors.

    Args:
        grads: tensors shaped ``[m, *param_shape_i]`` (the m gradients of parameter tensor i), or one
            ``[m, ...]`` tensor.
        backend: ``"cpp"``, ``"cuda"``, ``"triton"``, ``"reference"`` or ``None`` (automatic).
    """
    grads = [grads] if isinstance(grads, torch.Tensor) else list(grads)
    check_inputs(grads)
    chosen = resolve_backend(backend, grads[0].device)
    if chosen == "cpp" and _register_cpp():
        return torch.ops.hnas_fast.grad_gram(grads)
    if chosen == "triton":
        return torch.ops.hnas_fast.grad_gram_triton(grads)
    return grad_gram_reference(grads)


def grad_gram_row(held: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rows: int, *,
                  backend: str | None = None) -> torch.Tensor:
    """Row ``rows`` of the Gram, streamed (float64, length ``rows + 1``).

    ``out[j] = Σ_i <held[i][j], grads[i]>`` for ``j < rows`` and ``out[rows] = Σ_i ‖grads[i]‖²``.

    Args:
        held: per parameter tensor, the ``[k, *shape_i]`` slots of the gradients already taken
            (``k >= rows``; only the first ``rows`` are read).
        grads: per parameter tensor, the new gradient, shaped ``shape_i``.
        rows: how many held gradients to fold the new one against.
        backend: ``"cpp"``, ``"reference"`` or ``None`` (automatic). CUDA tensors use the reference
            (per-tensor float64 matrix-vector products) until the CUDA kernel gets the row.
    """
    held, grads = list(held), list(grads)
    check_row_inputs(held, grads, rows)
    chosen = resolve_backend(backend, grads[0].device)
    if chosen == "cpp" and grads[0].device.type == "cpu" and _register_cpp():
        return torch.ops.hnas_fast.grad_gram_row(held, grads, rows)
    return grad_gram_row_reference(held, grads, rows)


_register_cpp()
