// Geometry and per-element math of pooling followed by the search network's BatchNorm2d(affine=False),
// shared by the CPU kernel and the CUDA kernel to come. Padding is k / 2 (DARTS's pools), so
//
//   window(o) = rows [o s - p, o s - p + k) clipped to [0, H); columns likewise
//   y[n, c, o, q] = max over window(o) x window(q)                 (max; a NaN wins, as torch's CPU pool)
//                 = mean over window(o) x window(q)                (avg: padding is not counted)
//   out = (y - mean_c) * invstd_c,  invstd_c = 1 / sqrt(var_c + eps)
//
// with mean_c and the biased var_c over (n, o, q) in training, the running statistics otherwise. With
// g = dL/dout and xhat = out, in training
//   dL/dy = invstd_c * (g - mean(g) - xhat * mean(g * xhat))         (means over n, o, q)
// and dL/dy = invstd_c * g otherwise; dL/dy then goes to the window's argmax (max: the first maximum in
// row-major order, as torch's CPU kernel; recomputed from x, no index tensor is kept) or, divided by the
// count, to every element of the window (avg). Two documented differences from torch: a window holding NaN
// routes to its first NaN or an earlier maximum (torch: its last NaN), and a window whose maximum is -inf may route to the padding
// (the gradient is dropped; torch gives it to the window's first element).
#pragma once

#include <cstdint>

#include "macros.h"

namespace hnas_fast {

HNAS_HOST_DEVICE int64_t pool_out_size(int64_t in, int64_t k, int64_t stride) {
  return (in + 2 * (k / 2) - k) / stride + 1;
}

// First and one-past-last input index of output o's window along one axis.
HNAS_HOST_DEVICE int64_t window_begin(int64_t o, int64_t k, int64_t stride) {
  const int64_t b = o * stride - k / 2;
  return b < 0 ? 0 : b;
}
HNAS_HOST_DEVICE int64_t window_end(int64_t o, int64_t k, int64_t stride, int64_t in) {
  const int64_t e = o * stride - k / 2 + k;
  return e > in ? in : e;
}

// The max pool's running maximum, as two branch-free selects that vectorize (one compare with `||` does
// not): the largest value so far, and a NaN if one was seen; the result is the NaN when there is one.
template <typename T>
HNAS_HOST_DEVICE T max_fold(T v, T current) {
  return v > current ? v : current;
}
template <typename T>
HNAS_HOST_DEVICE T nan_fold(T v, T seen) {
  return v != v ? v : seen;
}
template <typename T>
HNAS_HOST_DEVICE T max_result(T largest, T seen) {
  return seen != seen ? seen : largest;
}
// In backward, with r the window's largest value (max_fold only): the tap that takes dL/dy is the first
// for which this holds, the first maximum, as torch routes (or the first NaN, see above).
template <typename T>
HNAS_HOST_DEVICE bool max_hit(T v, T r) {
  return !(v < r);
}

}  // namespace hnas_fast
