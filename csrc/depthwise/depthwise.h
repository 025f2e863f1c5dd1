// The depthwise (dilated, strided) convolution with an optional fused input ReLU: shapes, the checks every
// backend shares and the backend entry points. The math is in common/depthwise_math.h.
//
//   x       [N, C, H, W]    any strides; float16 / bfloat16 / float32 / float64
//   weight  [C, 1, k, k]    as nn.Conv2d(C, C, k, groups=C) holds it, k odd; the dtype of x
//   out     [N, C, Ho, Wo]  in the memory format of x (channels_last or contiguous), the dtype of x
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace hnas_fast {

struct DepthwiseShape {
  int64_t N, C, H, W, k, Ho, Wo, stride, padding, dilation;
};

// Validates the forward arguments, naming the offending one, and returns the geometry.
DepthwiseShape check_depthwise_args(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                                    int64_t dilation);
// The same, plus grad_out against that geometry.
DepthwiseShape check_depthwise_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                             const at::Tensor& weight, int64_t stride, int64_t padding,
                                             int64_t dilation);

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                                int64_t dilation, bool relu_input);
std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const at::Tensor& weight, int64_t stride,
                                                                 int64_t padding, int64_t dilation,
                                                                 bool relu_input, bool need_input_grad,
                                                                 bool need_weight_grad);

}  // namespace hnas_fast
