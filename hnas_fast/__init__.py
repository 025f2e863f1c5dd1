"""hnas_fast: a compiled-kernel engine for hierarchical differentiable neural architecture search.

The kernels, the mixed edge (``MixedOp``) and the DARTS operations load eagerly (the operations fill
:mod:`hnas_fast.registry`, which spaces and genotypes check names against); supernets, genotypes and the
analysis tools load on first use so that importing the kernels stays cheap.

Layers import downward only (``tests/test_layers.py`` checks it): kernels, files, distributed and the
op registry at the bottom; spaces, then genotypes; ``nn/``; ``data/``; ``search/``; ``train`` and the
CLIs on top. ``analysis/`` and ``viz/`` read from the side: nothing below imports them, except that a
search draws its plots through a lazy import of ``viz/`` (matplotlib loads only when a plot is asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from hnas_fast.kernels import (
    build_info,
    depthwise_conv2d,
    extension_available,
    grad_gram,
    mixed_sum,
    mixed_sum_reference,
)
from hnas_fast.kernels.backend import triton_available, triton_interpreted
from hnas_fast.nn import operations as _operations  # noqa: F401  (fills the op registry)
from hnas_fast.nn.mixed_op import MixedOp

__version__ = "0.1.0"

_LAZY = {
    "build_supernet": "hnas_fast.nn.supernet",
    "build_network": "hnas_fast.nn.network",
    "Genotype": "hnas_fast.genotypes",
    "derive_genotype": "hnas_fast.genotypes",
    "DARTS_V2": "hnas_fast.genotypes",
    "get_space": "hnas_fast.spaces",
    "SearchSpace": "hnas_fast.spaces",
    "gradient_confusion": "hnas_fast.analysis.confusion",
    "operator_correlation": "hnas_fast.search.correlation",
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
