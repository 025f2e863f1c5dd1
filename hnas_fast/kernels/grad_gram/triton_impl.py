"""Triton kernel of grad_gram: one program per column block of one parameter tensor computes the block's
m×m float64 Gram by broadcasting; per-program partials are summed in a fixed order (deterministic).
Import only after ``TRITON_INTERPRET`` is settled (``triton.jit`` reads it at decoration)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

BLOCK = 64


@triton.jit
def _gram_kernel(g_ptr, partial_ptr, m, n, M_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    rows = tl.arange(0, M_PAD)
    cols = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = (rows[:, None] < m) & (cols[None, :] < n)
    tile = tl.load(g_ptr + rows[:, None] * n + cols[None, :], mask=mask, other=0.0).to(tl.float64)
    gram = tl.sum(tile[:, None, :] * tile[None, :, :], axis=2)
    out = partial_ptr + pid * M_PAD * M_PAD + rows[:, None] * M_PAD + rows[None, :]
    tl.store(out, gram)


def grad_gram(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_i G_i G_iᵀ`` in float64 (see ``hnas_fast.kernels.grad_gram``)."""
    m = grads[0].shape[0]
    m_pad = triton.next_power_of_2(max(m, 2))
    gram = torch.zeros(m_pad, m_pad, dtype=torch.float64, device=grads[0].device)
    for g in grads:
        flat = g.reshape(m, -1).contiguous()
        n = flat.shape[1]
        if n == 0:
            continue
        programs = triton.cdiv(n, BLOCK)
        partial = torch.empty(programs, m_pad, m_pad, dtype=torch.float64, device=flat.device)
        _gram_kernel[(programs,)](flat, partial, m, n, M_PAD=m_pad, BLOCK_SIZE=BLOCK)
        gram += partial.sum(0)
    return gram[:m, :m].contiguous()
