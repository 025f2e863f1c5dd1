// Per-element math of the batched pairwise gradient inner products (gradient confusion), shared by
// the CPU and CUDA kernels: the upper triangle of the m x m Gram, accumulated in double.
#pragma once

#include <cstdint>

#include "macros.h"

namespace hnas_fast {

// Number of (a, b) pairs with a <= b among m gradients.
HNAS_HOST_DEVICE int64_t gram_pairs(int64_t m) { return m * (m + 1) / 2; }

// Row-major index of pair (a, b), a <= b, in the packed upper triangle.
HNAS_HOST_DEVICE int64_t gram_pair_index(int64_t a, int64_t b, int64_t m) {
  return a * m - a * (a - 1) / 2 + (b - a);
}

// acc += a * b with both factors widened to double before the multiply (half types through float; the CPU
// kernel widens its tiles by the same rule).
template <typename scalar_t>
HNAS_HOST_DEVICE void gram_accumulate(double& acc, scalar_t a, scalar_t b) {
  acc += static_cast<double>(static_cast<float>(a)) * static_cast<double>(static_cast<float>(b));
}
template <>
HNAS_HOST_DEVICE void gram_accumulate<double>(double& acc, double a, double b) {
  acc += a * b;
}

}  // namespace hnas_fast
