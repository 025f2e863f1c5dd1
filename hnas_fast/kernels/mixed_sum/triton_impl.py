"""Triton kernels of the mixed-edge sum.

Candidates are passed as separate pointer arguments (no stacking copy), up to ``MAX_K`` per launch;
larger K runs in slices that accumulate into the output. The dL/dw reduction writes one float64 partial
per program and candidate, summed afterwards in a fixed order (deterministic).
Import this module only after ``TRITON_INTERPRET`` is settled: ``triton.jit`` reads it at decoration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

MAX_K = 8
BLOCK = 1024


@triton.jit
def _fwd_kernel(out_ptr, w_ptr, y0, y1, y2, y3, y4, y5, y6, y7, n,
                K: tl.constexpr, ACCUMULATE: tl.constexpr, ACC: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    acc = tl.zeros([BLOCK_SIZE], dtype=ACC)
    if ACCUMULATE:
        acc += tl.load(out_ptr + offs, mask=mask, other=0.0).to(ACC)
    acc += tl.load(w_ptr).to(ACC) * tl.load(y0 + offs, mask=mask, other=0.0).to(ACC)
    if K > 1:
        acc += tl.load(w_ptr + 1).to(ACC) * tl.load(y1 + offs, mask=mask, other=0.0).to(ACC)
    if K > 2:
        acc += tl.load(w_ptr + 2).to(ACC) * tl.load(y2 + offs, mask=mask, other=0.0).to(ACC)
    if K > 3:
        acc += tl.load(w_ptr + 3).to(ACC) * tl.load(y3 + offs, mask=mask, other=0.0).to(ACC)
    if K > 4:
        acc += tl.load(w_ptr + 4).to(ACC) * tl.load(y4 + offs, mask=mask, other=0.0).to(ACC)
    if K > 5:
        acc += tl.load(w_ptr + 5).to(ACC) * tl.load(y5 + offs, mask=mask, other=0.0).to(ACC)
    if K > 6:
        acc += tl.load(w_ptr + 6).to(ACC) * tl.load(y6 + offs, mask=mask, other=0.0).to(ACC)
    if K > 7:
        acc += tl.load(w_ptr + 7).to(ACC) * tl.load(y7 + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_one(g, w_ptr, y_ptr, gy_ptr, partial_ptr, offs, mask,
             ACC: tl.constexpr, GRAD_Y: tl.constexpr, GRAD_W: tl.constexpr):
    if GRAD_W:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
        tl.store(partial_ptr, tl.sum(y.to(tl.float64) * g.to(tl.float64), axis=0))
    if GRAD_Y:
        gy = tl.load(w_ptr).to(ACC) * g
        tl.store(gy_ptr + offs, gy.to(gy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, w_ptr, partial_ptr, y0, y1, y2, y3, y4, y5, y6, y7,
                gy0, gy1, gy2, gy3, gy4, gy5, gy6, gy7, n,
                K: tl.constexpr, ACC: tl.constexpr, GRAD_Y: tl.constexpr, GRAD_W: tl.constexpr,
                BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    p = partial_ptr + pid * K
    _bwd_one(g, w_ptr, y0, gy0, p, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 1:
        _bwd_one(g, w_ptr + 1, y1, gy1, p + 1, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 2:
        _bwd_one(g, w_ptr + 2, y2, gy2, p + 2, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 3:
        _bwd_one(g, w_ptr + 3, y3, gy3, p + 3, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 4:
        _bwd_one(g, w_ptr + 4, y4, gy4, p + 4, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 5:
        _bwd_one(g, w_ptr + 5, y5, gy5, p + 5, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 6:
        _bwd_one(g, w_ptr + 6, y6, gy6, p + 6, offs, mask, ACC, GRAD_Y, GRAD_W)
    if K > 7:
        _bwd_one(g, w_ptr + 7, y7, gy7, p + 7, offs, mask, ACC, GRAD_Y, GRAD_W)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pad(ts: Sequence[torch.Tensor], fill: torch.Tensor) -> list[torch.Tensor]:
    return list(ts) + [fill] * (MAX_K - len(ts))


def forward(ys: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k weights[k]·ys[k]`` for same-layout dense candidates (see ``op.py`` for the layout rule)."""
    out = torch.empty_like(ys[0])
    n = out.numel()
    if n == 0:
        return out
    acc_dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
    w = weights.to(acc_dtype).contiguous()
    grid = (triton.cdiv(n, BLOCK),)
    for k0 in range(0, len(ys), MAX_K):
        part = ys[k0:k0 + MAX_K]
        _fwd_kernel[grid](out, w[k0:], *_pad(part, part[0]), n, K=len(part), ACCUMULATE=k0 > 0,
                          ACC=_acc(out.dtype), BLOCK_SIZE=BLOCK)
    return out


def backward(grad_out: torch.Tensor, ys: Sequence[torch.Tensor], weights: torch.Tensor,
             need_ys_grad: bool, need_weights_grad: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(dL/dys, dL/dweights)`` in one pass over ``grad_out`` per slice of ``MAX_K`` candidates."""
    n = grad_out.numel()
    grad_ys = [torch.empty_like(ys[0]) for _ in ys] if need_ys_grad else []
    if n == 0 or not (need_ys_grad or need_weights_grad):
        return [g.zero_() for g in grad_ys], torch.zeros_like(weights)
    acc_dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    w = weights.to(acc_dtype).contiguous()
    programs = triton.cdiv(n, BLOCK)
    sums = []
    for k0 in range(0, len(ys), MAX_K):
        part = ys[k0:k0 + MAX_K]
        partial = torch.empty((programs, len(part)), dtype=torch.float64, device=grad_out.device)
        outs = grad_ys[k0:k0 + MAX_K] if need_ys_grad else [grad_out] * len(part)
        _bwd_kernel[(programs,)](grad_out, w[k0:], partial, *_pad(part, part[0]), *_pad(outs, outs[0]), n,
                                 K=len(part), ACC=_acc(grad_out.dtype), GRAD_Y=need_ys_grad,
                                 GRAD_W=need_weights_grad, BLOCK_SIZE=BLOCK)
        sums.append(partial.sum(0))
    grad_w = torch.cat(sums).to(weights.dtype) if need_weights_grad else torch.zeros_like(weights)
    return grad_ys, grad_w
