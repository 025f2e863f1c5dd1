"""The fused mixed-edge sum: functional API, reference and kernels."""

from hnas_fast.kernels.mixed_sum.op import check_inputs, mixed_sum
from hnas_fast.kernels.mixed_sum.reference import mixed_sum_reference

__all__ = ["check_inputs", "mixed_sum", "mixed_sum_reference"]
