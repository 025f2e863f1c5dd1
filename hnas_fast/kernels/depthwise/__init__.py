"""Depthwise (dilated, strided) convolution with a fused input ReLU: functional API, reference, kernels."""

from hnas_fast.kernels.depthwise.op import check_inputs, depthwise_conv2d, resolve_depthwise_backend
from hnas_fast.kernels.depthwise.reference import depthwise_conv2d_reference

__all__ = ["check_inputs", "depthwise_conv2d", "depthwise_conv2d_reference", "resolve_depthwise_backend"]
