"""Plain-PyTorch mixed-edge sum: what DARTS-style codebases compute, and the fused kernels' oracle."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mixed_sum_reference(ys: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k weights[k] · ys[k]`` in eager PyTorch, in the candidates' dtype (as DARTS's MixedOp does)."""
    w = weights.to(ys[0].dtype)
    out = ys[0] * w[0]
    for k in range(1, len(ys)):
        out = out + ys[k] * w[k]
    return out
