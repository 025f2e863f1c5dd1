"""Plain-PyTorch reference of ``depthwise_conv2d``: the tests' oracle and the benchmarks' baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0,
                               dilation: int = 1, relu_input: bool = False) -> torch.Tensor:
    """``conv2d(relu(x) if relu_input else x, weight, groups=C)``, computed in the inputs' dtype."""
    r = F.relu(x) if relu_input else x
    return F.conv2d(r, weight, None, stride, padding, dilation, groups=x.shape[1])
