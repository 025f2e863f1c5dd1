"""Plain-PyTorch batched pairwise gradient inner products: the grad_gram kernels' oracle."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grad_gram_reference(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_i G_i G_iᵀ`` in float64, ``G_i = grads[i].reshape(m, -1)``: the m×m Gram of m gradients
    spread over several parameter tensors (concatenating them would give the same matrix)."""
    m = grads[0].shape[0]
    gram = torch.zeros(m, m, dtype=torch.float64, device=grads[0].device)
    for g in grads:
        flat = g.reshape(m, -1).double()
        gram += flat @ flat.T
    return gram


def grad_gram_row_reference(held: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                            rows: int) -> torch.Tensor:
    """Row ``rows`` of the Gram, streamed: ``out[j] = Σ_i <held[i][j], grads[i]>`` for ``j < rows`` and
    ``out[rows] = Σ_i ‖grads[i]‖²``, in float64 (``held[i]`` is ``[k, *grads[i].shape]``, ``k >= rows``)."""
    out = torch.zeros(rows + 1, dtype=torch.float64, device=grads[0].device)
    for h, g in zip(held, grads):
        flat = g.reshape(-1).double()
        out[:rows] += h[:rows].reshape(rows, flat.numel()).double() @ flat
        out[rows] += flat @ flat
    return out
