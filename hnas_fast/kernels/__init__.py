"""Fused ops of hnas_fast: each with a plain-PyTorch reference and C++ / CUDA / Triton kernels."""

from hnas_fast.kernels._ext import build_info, extension_available
from hnas_fast.kernels.backend import BACKENDS, resolve_backend
from hnas_fast.kernels.depthwise import depthwise_conv2d, depthwise_conv2d_reference
from hnas_fast.kernels.grad_gram import grad_gram, grad_gram_reference
from hnas_fast.kernels.mixed_sum import mixed_sum, mixed_sum_reference
from hnas_fast.kernels.pool_bn import pool_bn, pool_bn_reference

__all__ = ["BACKENDS", "build_info", "depthwise_conv2d", "depthwise_conv2d_reference", "extension_available",
           "grad_gram", "grad_gram_reference", "mixed_sum", "mixed_sum_reference", "pool_bn",
           "pool_bn_reference", "resolve_backend"]
