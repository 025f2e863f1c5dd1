// Schema of the depthwise convolution op, the checks every backend shares, and the CUDA fallback.
//
// CUDA tensors: until the CUDA kernel lands (issue 17) they run through at::conv2d and
// at::convolution_backward with the same contract (ReLU applied to x first, its mask recomputed from x in
// backward), so the op never fails on a GPU; it is only not faster there.
#include "depthwise.h"

#include <torch/library.h>

#include "../common/depthwise_math.h"
#include "../common/tensor_args.h"

namespace hnas_fast {

DepthwiseShape check_depthwise_args(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                                    int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, "depthwise_conv2d: x must be 4-D [N, C, H, W], got ", x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "depthwise_conv2d: x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(weight.dim() == 4, "depthwise_conv2d: weight must be 4-D [C, 1, k, k], got shape ", weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(1) && weight.size(1) == 1, "depthwise_conv2d: weight must have shape [C, 1, k, k]"
              " with C = ", x.size(1), " (the channels of x), got ", weight.sizes());
  TORCH_CHECK(weight.size(2) == weight.size(3), "depthwise_conv2d: weight must be square [C, 1, k, k], got ",
              weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(k >= 1 && k % 2 == 1, "depthwise_conv2d: the kernel size of weight must be odd, got ", k);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "depthwise_conv2d: weight has dtype ", weight.scalar_type(),
              " but x has ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "depthwise_conv2d: weight is on ", weight.device(), " but x is on ",
              x.device());
  TORCH_CHECK(stride >= 1, "depthwise_conv2d: stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation >= 1, "depthwise_conv2d: dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding >= 0, "depthwise_conv2d: padding must be >= 0, got ", padding);
  TORCH_CHECK(x.size(1) >= 1, "depthwise_conv2d: x must have at least one channel, got shape ", x.sizes());
  DepthwiseShape s{x.size(0), x.size(1), x.size(2), x.size(3), k, 0, 0, stride, padding, dilation};
  s.Ho = conv_out_size(s.H, k, stride, padding, dilation);
  s.Wo = conv_out_size(s.W, k, stride, padding, dilation);
  TORCH_CHECK(s.Ho >= 1 && s.Wo >= 1, "depthwise_conv2d: x of size ", s.H, "x", s.W, " is too small for kernel ", k,
              " with dilation ", dilation, " and padding ", padding);
  return s;
}

DepthwiseShape check_depthwise_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                             const at::Tensor& weight, int64_t stride, int64_t padding,
                                             int64_t dilation) {
  const DepthwiseShape s = check_depthwise_args(x, weight, stride, padding, dilation);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == s.N && grad_out.size(1) == s.C && grad_out.size(2) == s.Ho &&
                  grad_out.size(3) == s.Wo,
              "depthwise_conv2d_backward: grad_out must have the output's shape [", s.N, ", ", s.C, ", ", s.Ho, ", ",
              s.Wo, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "depthwise_conv2d_backward: grad_out has dtype ",
              grad_out.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "depthwise_conv2d_backward: grad_out is on ", grad_out.device(),
              " but x is on ", x.device());
  return s;
}

namespace {

at::Tensor depthwise_conv2d_fallback(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                                     int64_t dilation, bool relu_input) {
  const DepthwiseShape s = check_depthwise_args(x, weight, stride, padding, dilation);
  const at::Tensor r = relu_input ? at::relu(x) : x;
  return at::conv2d(r, weight, {}, {stride, stride}, {padding, padding}, {dilation, dilation}, s.C)
      .contiguous(output_memory_format(x));
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_fallback(const at::Tensor& grad_out, const at::Tensor& x,
                                                                      const at::Tensor& weight, int64_t stride,
                                                                      int64_t padding, int64_t dilation,
                                                                      bool relu_input, bool need_input_grad,
                                                                      bool need_weight_grad) {
  const DepthwiseShape s = check_depthwise_backward_args(grad_out, x, weight, stride, padding, dilation);
  const at::Tensor r = relu_input ? at::relu(x) : x;
  auto grads = at::convolution_backward(grad_out, r, weight, std::nullopt, {stride, stride}, {padding, padding},
                                        {dilation, dilation}, false, {0, 0}, s.C,
                                        {need_input_grad, need_weight_grad, false});
  at::Tensor gx = at::empty({0}, x.options());
  at::Tensor gw = at::empty({0}, weight.options());
  if (need_input_grad) {
    gx = std::get<0>(grads);
    if (relu_input) {
      gx = at::threshold_backward(gx, x, 0);
    }
    gx = gx.contiguous(output_memory_format(x));
  }
  if (need_weight_grad) {
    gw = std::get<1>(grads).contiguous();
  }
  return {gx, gw};
}

}  // namespace
}  // namespace hnas_fast

TORCH_LIBRARY_FRAGMENT(hnas_fast, m) {
  m.def("depthwise_conv2d(Tensor x, Tensor weight, int stride=1, int padding=0, int dilation=1, "
        "bool relu_input=False) -> Tensor");
  m.def("depthwise_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, int stride, int padding, int dilation, "
        "bool relu_input, bool need_input_grad, bool need_weight_grad) -> (Tensor grad_input, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(hnas_fast, CUDA, m) {
  m.impl("depthwise_conv2d", &hnas_fast::depthwise_conv2d_fallback);
  m.impl("depthwise_conv2d_backward", &hnas_fast::depthwise_conv2d_backward_fallback);
}
