"""Batched pairwise gradient inner products (gradient confusion): functional API, reference, kernels."""

from hnas_fast.kernels.grad_gram.op import check_inputs, grad_gram
from hnas_fast.kernels.grad_gram.reference import grad_gram_reference

__all__ = ["check_inputs", "grad_gram", "grad_gram_reference"]
