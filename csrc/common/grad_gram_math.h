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

// One stored gradient element as the float64 the Gram accumulates: half types through float (exact), then
// double. Both kernels widen every element by this rule before any product.
template <typename scalar_t>
HNAS_HOST_DEVICE double gram_widen(scalar_t v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
HNAS_HOST_DEVICE double gram_widen<double>(double v) {
  return v;
}

}  // namespace hnas_fast
