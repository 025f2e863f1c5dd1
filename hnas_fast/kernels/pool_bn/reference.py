"""Plain-PyTorch reference of ``pool_bn``: the tests' oracle and the benchmarks' baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_bn_reference(x: torch.Tensor, kind: str, kernel_size: int, stride: int = 1,
                      running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                      training: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """DARTS's search-network pool: ``max_pool2d`` or ``avg_pool2d(count_include_pad=False)`` with padding
    ``k // 2``, then ``batch_norm`` without affine parameters (running statistics updated in place)."""
    p = kernel_size // 2
    if kind == "max":
        y = F.max_pool2d(x, kernel_size, stride, p)
    else:
        y = F.avg_pool2d(x, kernel_size, stride, p, count_include_pad=False)
    return F.batch_norm(y, running_mean, running_var, None, None, training, momentum, eps)
