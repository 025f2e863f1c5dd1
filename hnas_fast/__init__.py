"""hnas_fast: a compiled-kernel engine for hierarchical differentiable neural architecture search.

The fused mixed-edge sum (``mixed_sum``) and the mixed edge (``MixedOp``) load eagerly; the search layer
(``build_supernet``, genotypes, strategies) loads on first use so that importing the kernels stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from hnas_fast.kernels import (
    build_info,
    depthwise_conv2d,
    extension_available,
    grad_gram,
    mixed_sum,
    mixed_sum_reference,
)
from hnas_fast.nn.mixed_op import MixedOp

__version__ = "0.1.0"

_LAZY = {
    "build_supernet": "hnas_fast.nn.supernet",
    "build_network": "hnas_fast.nn.network",
    "Genotype": "hnas_fast.search.genotype",
    "derive_genotype": "hnas_fast.search.genotype",
    "DARTS_V2": "hnas_fast.search.genotype",
    "get_space": "hnas_fast.spaces",
    "SearchSpace": "hnas_fast.spaces",
    "gradient_confusion": "hnas_fast.analysis.confusion",
    "operator_correlation": "hnas_fast.analysis.correlation",
}

__all__ = ["MixedOp", "__version__", "build_info", "depthwise_conv2d", "extension_available", "grad_gram",
           "info",
           "mixed_sum", "mixed_sum_reference", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hnas_fast' has no attribute {name!r}")


def info(print_out: bool = True) -> dict[str, Any]:
    """Version, compiled backends, CUDA arch list and the runtime's devices; printed unless told not to."""
    import torch

    from hnas_fast.kernels.backend import triton_available, triton_interpreted

    data: dict[str, Any] = {
        "hnas_fast": __version__,
        "torch": torch.__version__,
        "extension": build_info(),
        "cuda_available": torch.cuda.is_available(),
        "triton_available": triton_available(),
        "triton_interpret": triton_interpreted(),
        "cpu_threads": torch.get_num_threads(),
    }
    if print_out:
        for key, value in data.items():
            print(f"{key:>16}: {value}")
    return data
