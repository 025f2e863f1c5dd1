// Autograd of hnas_fast::depthwise_conv2d, registered once for every backend (torchvision's csrc/ops style).
//
// In C++ rather than through torch.library.register_autograd: the Python autograd node cost about 160 us per
// forward+backward, as much as the CPU kernel itself at the supernet's 16x16x32x32 shapes. Only x and the
// weight are saved; the backward op recomputes the ReLU mask from x.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace hnas_fast {
namespace {

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                        int64_t dilation, bool relu_input) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnas_fast::depthwise_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, bool)>();
  return op.call(x, weight, stride, padding, dilation, relu_input);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& x,
                                                 const at::Tensor& weight, int64_t stride, int64_t padding,
                                                 int64_t dilation, bool relu_input, bool need_x, bool need_w) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnas_fast::depthwise_conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, int64_t, int64_t, int64_t,
                                                                 bool, bool, bool)>();
  return op.call(grad, x, weight, stride, padding, dilation, relu_input, need_x, need_w);
}

class DepthwiseConv2d : public torch::autograd::Function<DepthwiseConv2d> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            int64_t stride, int64_t padding, int64_t dilation, bool relu_input) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["relu_input"] = relu_input;
    ctx->save_for_backward({x, weight});
    return call_forward(x, weight, stride, padding, dilation, relu_input);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    auto [gx, gw] = call_backward(grads[0], saved[0], saved[1], ctx->saved_data["stride"].toInt(),
                                  ctx->saved_data["padding"].toInt(), ctx->saved_data["dilation"].toInt(),
                                  ctx->saved_data["relu_input"].toBool(), need_x, need_w);
    return {need_x ? gx : at::Tensor(), need_w ? gw : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor depthwise_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, int64_t stride,
                                     int64_t padding, int64_t dilation, bool relu_input) {
  return DepthwiseConv2d::apply(x, weight, stride, padding, dilation, relu_input);
}

}  // namespace
}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, Autograd, m) {
  m.impl("depthwise_conv2d", &hnas_fast::depthwise_conv2d_autograd);
}
