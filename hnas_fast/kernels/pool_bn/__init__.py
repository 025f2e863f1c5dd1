"""Pooling fused with the search network's non-affine BatchNorm: functional API, reference, kernels."""

from hnas_fast.kernels.pool_bn.op import KINDS, check_inputs, pool_bn, resolve_pool_bn_backend
from hnas_fast.kernels.pool_bn.reference import pool_bn_reference

__all__ = ["KINDS", "check_inputs", "pool_bn", "pool_bn_reference", "resolve_pool_bn_backend"]
