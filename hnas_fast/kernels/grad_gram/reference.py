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
