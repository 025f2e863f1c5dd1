"""Batched pairwise gradient inner products (gradient confusion): functional API, reference, kernels."""

from hnas_fast.kernels.grad_gram.op import check_inputs, check_row_inputs, grad_gram, grad_gram_row
from hnas_fast.kernels.grad_gram.reference import grad_gram_reference, grad_gram_row_reference

__all__ = ["check_inputs", "check_row_inputs", "grad_gram", "grad_gram_reference", "grad_gram_row",
           "grad_gram_row_reference"]
