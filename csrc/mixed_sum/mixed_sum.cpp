// Schema of the mixed-edge sum and the checks every backend shares.
#include "mixed_sum.h"

#include <torch/library.h>

namespace hnas_fast {

void check_mixed_sum_inputs(at::TensorList ys, const at::Tensor& weights) {
  TORCH_CHECK(!ys.empty(), "mixed_sum: ys must hold at least one candidate output (got K = 0)");
  const auto K = static_cast<int64_t>(ys.size());
  TORCH_CHECK(weights.dim() == 1, "mixed_sum: weights must be 1-D of length K = ", K, ", got shape ",
              weights.sizes());
  TORCH_CHECK(weights.size(0) == K, "mixed_sum: weights has ", weights.size(0),
              " entries but ys holds K = ", K, " candidates");
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "mixed_sum: weights must be floating point, got ",
              weights.scalar_type());
  const auto& y0 = ys[0];
  TORCH_CHECK(at::isFloatingType(y0.scalar_type()), "mixed_sum: ys[0] must be floating point, got ",
              y0.scalar_type());
  for (int64_t k = 1; k < K; ++k) {
    TORCH_CHECK(ys[k].sizes() == y0.sizes(), "mixed_sum: ys[", k, "] has shape ", ys[k].sizes(),
                " but ys[0] has shape ", y0.sizes());
    TORCH_CHECK(ys[k].scalar_type() == y0.scalar_type(), "mixed_sum: ys[", k, "] has dtype ",
                ys[k].scalar_type(), " but ys[0] has dtype ", y0.scalar_type());
    TORCH_CHECK(ys[k].device() == y0.device(), "mixed_sum: ys[", k, "] is on ", ys[k].device(),
                " but ys[0] is on ", y0.device());
  }
  TORCH_CHECK(weights.device() == y0.device(), "mixed_sum: weights is on ", weights.device(),
              " but ys are on ", y0.device());
}

void check_mixed_sum_backward_inputs(const at::Tensor& grad_out, at::TensorList ys, const at::Tensor& weights) {
  check_mixed_sum_inputs(ys, weights);
  TORCH_CHECK(grad_out.sizes() == ys[0].sizes(), "mixed_sum_backward: grad_out has shape ", grad_out.sizes(),
              " but ys[0] has shape ", ys[0].sizes());
  TORCH_CHECK(grad_out.scalar_type() == ys[0].scalar_type(), "mixed_sum_backward: grad_out has dtype ",
              grad_out.scalar_type(), " but ys have dtype ", ys[0].scalar_type());
  TORCH_CHECK(grad_out.device() == ys[0].device(), "mixed_sum_backward: grad_out is on ", grad_out.device(),
              " but ys are on ", ys[0].device());
}

at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) {
    return t;
  }
  return at::empty_like(like).copy_(t);
}

std::vector<at::Tensor> dense_like_first(at::TensorList ys) {
  std::vector<at::Tensor> out;
  out.reserve(ys.size());
  const at::Tensor first = ys[0].is_non_overlapping_and_dense() ? ys[0] : ys[0].contiguous();
  for (const auto& y : ys) {
    out.push_back(match_layout(y, first));
  }
  return out;
}

}  // namespace hnas_fast

TORCH_LIBRARY_FRAGMENT(hnas_fast, m) {
  m.def("mixed_sum(Tensor[] ys, Tensor weights) -> Tensor");
  m.def(
      "mixed_sum_backward(Tensor grad_out, Tensor[] ys, Tensor weights, bool need_ys_grad, "
      "bool need_weights_grad) -> (Tensor[], Tensor)");
}
