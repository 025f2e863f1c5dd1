"""``mixed_sum``: the softmax-weighted sum of a DARTS edge's candidate outputs, as a dispatcher op.

Forward ``out = Σ_k w_k·y_k``; backward, in one pass over ``g = dL/dout``: ``dL/dy_k = w_k·g`` and
``dL/dw_k = <y_k, g>`` (design.md §2). The C++/CUDA op ``torch.ops.hnas_fast.mixed_sum`` gets its autograd
and fake (meta) kernels here; the Triton kernels are wrapped as ``torch.ops.hnas_fast.mixed_sum_triton``
with the same contract, so both work under autograd, ``torch.compile`` and ``torch.library.opcheck``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hnas_fast.kernels._ext import register_compiled_op
from hnas_fast.kernels.backend import resolve_backend
from hnas_fast.kernels.mixed_sum.reference import mixed_sum_reference

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_inputs(ys: Sequence[torch.Tensor], weights: torch.Tensor) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the offending argument for malformed inputs."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"mixed_sum: weights must be a tensor, got {type(weights).__name__}")
    if len(ys) == 0:
        raise ValueError("mixed_sum: ys must hold at least one candidate output (got K = 0)")
    k = len(ys)
    if weights.dim() != 1 or weights.shape[0] != k:
        raise ValueError(f"mixed_sum: weights must have shape ({k},) to match K = {k} candidates in ys, "
                         f"got {tuple(weights.shape)}")
    if weights.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"mixed_sum: weights must be floating point, got {weights.dtype}")
    y0 = ys[0]
    if y0.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"mixed_sum: ys[0] must be float16, bfloat16, float32 or float64, got {y0.dtype}")
    for i, y in enumerate(ys[1:], start=1):
        if y.shape != y0.shape:
            raise ValueError(f"mixed_sum: ys[{i}] has shape {tuple(y.shape)} but ys[0] has {tuple(y0.shape)}")
        if y.dtype != y0.dtype:
            raise TypeError(f"mixed_sum: ys[{i}] has dtype {y.dtype} but ys[0] has {y0.dtype}")
        if y.device != y0.device:
            raise ValueError(f"mixed_sum: ys[{i}] is on {y.device} but ys[0] is on {y0.device}")
    if weights.device != y0.device:
        raise ValueError(f"mixed_sum: weights is on {weights.device} but ys are on {y0.device}")


def _is_dense(t: torch.Tensor) -> bool:
    try:
        from torch._prims_common import is_non_overlapping_and_dense
    except ImportError:  # pragma: no cover - very old torch
        return t.is_contiguous()
    return bool(is_non_overlapping_and_dense(t))


def _dense_like_first(ys: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The candidates in the first one's dense layout (or contiguous): the kernels walk them flat."""
    first = ys[0] if _is_dense(ys[0]) else ys[0].contiguous()
    return [y if y.stride() == first.stride() else torch.empty_like(first).copy_(y) for y in ys]


# ---- autograd of the Triton op, fake kernels of both -------------------------------------------------------

def _setup_context(ctx, inputs, output) -> None:
    ys, weights = inputs
    ctx.num_ys = len(ys)
    ctx.save_for_backward(*ys, weights)


def _make_backward(backward_op):
    def backward(ctx, grad):
        *ys, weights = ctx.saved_tensors
        need = ctx.needs_input_grad[0]
        need_ys = any(need) if isinstance(need, (list, tuple)) else bool(need)
        need_w = bool(ctx.needs_input_grad[1])
        grad_ys, grad_w = backward_op(grad, ys, weights, need_ys, need_w)
        return (list(grad_ys) if need_ys else [None] * len(ys)), (grad_w if need_w else None)

    return backward


def _fake_forward(ys, weights):
    return torch.empty_like(_dense_like_first(ys)[0])


def _fake_backward(grad_out, ys, weights, need_ys_grad, need_weights_grad):
    first = _dense_like_first(ys)[0]
    grad_ys = [torch.empty_like(first) for _ in ys] if need_ys_grad else []
    return grad_ys, torch.empty_like(weights)


def _register_cpp() -> bool:
    """Attach the fake kernels to the compiled op (once; its autograd is in C++, csrc/mixed_sum/autograd);
    False without the extension."""
    return register_compiled_op(
        "mixed_sum", {"mixed_sum": _fake_forward, "mixed_sum_backward": _fake_backward})


# ---- Triton op ------------------------------------------------------------------------------------------

@torch.library.custom_op("hnas_fast::mixed_sum_triton", mutates_args=())
def mixed_sum_triton(ys: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Triton forward of ``mixed_sum`` (same contract as ``torch.ops.hnas_fast.mixed_sum``)."""
    from hnas_fast.kernels.mixed_sum import triton_impl

    check_inputs(ys, weights)
    return triton_impl.forward(_dense_like_first(ys), weights)


@torch.library.custom_op("hnas_fast::mixed_sum_triton_backward", mutates_args=())
def mixed_sum_triton_backward(grad_out: torch.Tensor, ys: list[torch.Tensor], weights: torch.Tensor,
                              need_ys_grad: bool, need_weights_grad: bool
                              ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Triton backward of ``mixed_sum``: ``(dL/dys, dL/dweights)``."""
    from hnas_fast.kernels.mixed_sum import triton_impl

    dense = _dense_like_first(ys)
    g = grad_out if grad_out.stride() == dense[0].stride() else torch.empty_like(dense[0]).copy_(grad_out)
    grad_ys, grad_w = triton_impl.backward(g, dense, weights, need_ys_grad, need_weights_grad)
    # custom_op outputs may not alias each other or the inputs; an unused grad list stays empty.
    return grad_ys, grad_w


mixed_sum_triton.register_fake(_fake_forward)
mixed_sum_triton_backward.register_fake(_fake_backward)
mixed_sum_triton.register_autograd(_make_backward(torch.ops.hnas_fast.mixed_sum_triton_backward),
                                   setup_context=_setup_context)


# ---- functional API -------------------------------------------------------------------------------------

def mixed_sum(ys: Sequence[torch.Tensor] | torch.Tensor, weights: torch.Tensor, *,
              backend: str | None = None) -> torch.Tensor:
    """Softmax-weighted sum of a mixed edge's candidate outputs, ``Σ_k weights[k]·ys[k]``.

    Args:
        ys: K same-shape, same-dtype floating tensors on one device, or one tensor stacked along dim 0.
        weights: 1-D tensor of K weights, typically ``softmax(alpha)`` with grad.
        backend: ``"cpp"``, ``"cuda"``, ``"triton"``, ``"reference"`` or ``None``/``"auto"``
            (environment variable ``HNAS_FAST_BACKEND`` when not given); see ``hnas_fast.kernels.backend``.

    Returns:
        A tensor shaped like ``ys[0]`` in its dtype. Gradients flow to every ``ys[k]`` and to ``weights``.
    """
    if isinstance(ys, torch.Tensor):
        ys = list(ys.unbind(0))
    else:
        ys = list(ys)
    check_inputs(ys, weights)
    chosen = resolve_backend(backend, ys[0].device)
    if chosen == "cpp" and _register_cpp():
        return torch.ops.hnas_fast.mixed_sum(ys, weights)
    if chosen == "triton":
        return torch.ops.hnas_fast.mixed_sum_triton(ys, weights)
    return mixed_sum_reference(ys, weights)


# Registering at import makes torch.ops.hnas_fast.mixed_sum usable (with autograd) after `import hnas_fast`.
_register_cpp()
