// Autograd of hnas_fast::pool_bn, registered once for every backend. Saves x (for the max pool's argmax,
// recomputed in backward, and the average pool's geometry), out (= xhat, the normalized output that the
// next op holds anyway) and invstd [C]: no pooled tensor and no index tensor.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../pool_bn.h"

namespace hnas_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& x, bool is_max, int64_t k, int64_t stride,
                                                const std::optional<at::Tensor>& rm,
                                                const std::optional<at::Tensor>& rv, bool training,
                                                double momentum, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnas_fast::pool_bn", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, bool, int64_t, int64_t, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, bool, double, double)>();
  return op.call(x, is_max, k, stride, rm, rv, training, momentum, eps);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
                         const at::Tensor& invstd, bool is_max, int64_t k, int64_t stride, bool batch_stats) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnas_fast::pool_bn_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, bool, int64_t, int64_t, bool)>();
  return op.call(grad, x, out, invstd, is_max, k, stride, batch_stats);
}

class PoolBN : public torch::autograd::Function<PoolBN> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                bool is_max, int64_t k, int64_t stride,
                                                const std::optional<at::Tensor>& rm,
                                                const std::optional<at::Tensor>& rv, bool training,
                                                double momentum, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, invstd] = call_forward(x, is_max, k, stride, rm, rv, training, momentum, eps);
    ctx->saved_data["is_max"] = is_max;
    ctx->saved_data["k"] = k;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["batch_stats"] = pool_bn_batch_stats(training, rm);
    ctx->save_for_backward({x, out, invstd});
    ctx->mark_non_differentiable({invstd});
    return {out, invstd};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor gx;
    if (grads[0].defined()) {
      gx = call_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["is_max"].toBool(),
                         ctx->saved_data["k"].toInt(), ctx->saved_data["stride"].toInt(),
                         ctx->saved_data["batch_stats"].toBool());
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> pool_bn_autograd(const at::Tensor& x, bool is_max, int64_t k, int64_t stride,
                                                    const std::optional<at::Tensor>& rm,
                                                    const std::optional<at::Tensor>& rv, bool training,
                                                    double momentum, double eps) {
  auto outs = PoolBN::apply(x, is_max, k, stride, rm, rv, training, momentum, eps);
  return {outs[0], outs[1]};
}

}  // namespace
}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, Autograd, m) {
  m.impl("pool_bn", &hnas_fast::pool_bn_autograd);
}
