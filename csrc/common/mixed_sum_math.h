// Per-element math of the mixed-edge sum, shared by the CPU and CUDA kernels so that both
// backends round the same way: out = sum_k w_k * y_k, dL/dy_k = w_k * g, dL/dw_k = <y_k, g>.
#pragma once

#include "macros.h"

namespace hnas_fast {

// Accumulation type of the weighted sum: float for float/half/bfloat16, double for double.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename AccType<scalar_t>::type;

// acc += w * y, with y widened to the accumulation type before the multiply.
template <typename scalar_t, typename acc>
HNAS_HOST_DEVICE void mixed_sum_fma(acc& sum, acc w, scalar_t y) {
  sum += w * static_cast<acc>(y);
}

// One element of the backward pass for candidate k: the dot-product term for dL/dw_k is
// accumulated in double whatever the storage type (it is a full reduction over the tensor),
// and dL/dy_k = w_k * g is rounded once to the storage type.
template <typename scalar_t, typename acc>
HNAS_HOST_DEVICE void mixed_sum_backward_element(acc g, acc w, scalar_t y, double& dot, scalar_t& grad_y) {
  dot += static_cast<double>(static_cast<acc>(y)) * static_cast<double>(g);
  grad_y = static_cast<scalar_t>(w * g);
}

}  // namespace hnas_fast
