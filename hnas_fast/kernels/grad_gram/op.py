"""``grad_gram``: batched pairwise inner products of m gradients, for gradient confusion.

``grad_gram(grads) = Σ_i G_i G_iᵀ`` (float64, m×m) with ``G_i = grads[i].reshape(m, -1)`` holding the m
per-minibatch gradients of parameter tensor i. The result equals the Gram of the concatenated gradients,
without ever concatenating them (design.md §2). Differentiable: ``dL/dG_i = (S + Sᵀ) G_i`` for
``S = dL/dgram``, so it can sit inside a loss too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hnas_fast.kernels._ext import register_compiled_op
from hnas_fast.kernels.backend import resolve_backend
from hnas_fast.kernels.grad_gram.reference import grad_gram_reference

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


def _setup_context(ctx, inputs, output) -> None:
    (grads,) = inputs
    ctx.save_for_backward(*grads)


def _backward(ctx, grad_gram_out):
    grads = ctx.saved_tensors
    sym = grad_gram_out + grad_gram_out.T
    m = sym.shape[0]
    return ([(sym.to(g.dtype) @ g.reshape(m, -1)).reshape(g.shape) for g in grads],)


def _fake(grads):
    m = grads[0].shape[0]
    return grads[0].new_empty((m, m), dtype=torch.float64)


def _register_cpp() -> bool:
    """Attach autograd and the fake kernel to the compiled op (once); False without the extension."""
    return register_compiled_op("grad_gram", {"grad_gram": _fake}, _backward, _setup_context)


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


_register_cpp()
