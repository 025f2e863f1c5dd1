// Autograd of hnas_fast::mixed_sum, registered once for every backend.
//
// In C++ rather than through torch.library.register_autograd: with its Tensor[] input the Python autograd node
// cost about 370 us per call, about as much as the CPU kernel on a supernet edge. Saves the K candidates and
// the weights, as the Python node did.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace hnas_fast {
namespace {

at::Tensor call_forward(at::TensorList ys, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnas_fast::mixed_sum", "")
                       .typed<at::Tensor(at::TensorList, const at::Tensor&)>();
  return op.call(ys, weights);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> call_backward(const at::Tensor& grad, at::TensorList ys,
                                                             const at::Tensor& weights, bool need_ys,
                                                             bool need_w) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnas_fast::mixed_sum_backward", "")
                       .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
                           const at::Tensor&, at::TensorList, const at::Tensor&, bool, bool)>();
  return op.call(grad, ys, weights, need_ys, need_w);
}

class MixedSum : public torch::autograd::Function<MixedSum> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList ys, const at::Tensor& weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> saved(ys.begin(), ys.end());
    saved.push_back(weights);
    ctx->save_for_backward(saved);
    return call_forward(ys, weights);
  }

  // One gradient per tensor input, the K candidates first (autograd flattens the Tensor[] argument).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const size_t K = saved.size();
    bool need_ys = false;
    for (size_t k = 0; k < K; ++k) {
      need_ys = need_ys || ctx->needs_input_grad(k);
    }
    const bool need_w = ctx->needs_input_grad(K);
    auto [grad_ys, grad_w] = call_backward(grads[0], saved, weights, need_ys, need_w);
    torch::autograd::variable_list out(K + 1);
    for (size_t k = 0; k < K; ++k) {
      if (need_ys && ctx->needs_input_grad(k)) {
        out[k] = grad_ys[k];
      }
    }
    if (need_w) {
      out[K] = grad_w;
    }
    return out;
  }
};

at::Tensor mixed_sum_autograd(at::TensorList ys, const at::Tensor& weights) { return MixedSum::apply(ys, weights); }

}  // namespace
}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, Autograd, m) {
  m.impl("mixed_sum", &hnas_fast::mixed_sum_autograd);
}
