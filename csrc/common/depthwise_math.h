// Geometry and per-element math of the depthwise (dilated, strided) convolution with an optional fused
// input ReLU, shared by the CPU kernel and the CUDA kernel to come:
//
//   r[n, c, i, j]   = relu(x[n, c, i, j])            (x itself when relu_input = false)
//   out[n, c, o, q] = sum_{kh, kw} w[c, kh, kw] * r[n, c, o*s - p + kh*d, q*s - p + kw*d]   (zero padding)
//
// and, with g = dL/dout,
//   dw[c, kh, kw]   = sum_{n, o, q} g[n, c, o, q] * r[n, c, o*s - p + kh*d, q*s - p + kw*d]
//   dx[n, c, i, j]  = relu'(x[n, c, i, j]) * sum over the taps (o, q, kh, kw) that read (i, j) of w * g
// with relu'(v) = 0 where v <= 0 and 1 elsewhere (a NaN passes), as torch's threshold_backward.
//
// dx as a gather (no scatter, so no read-modify-write chains): split the input rows by phase a = i mod s,
// i = s i' + a. Kernel row kh feeds row i exactly when (a + p - kh d) is a multiple of s, from output row
// o = i' + (a + p - kh d) / s. Within one phase every contributing tap is a constant offset, so each phase of
// dx is a stride-1 correlation of g with a subset of the (flipped) taps; columns likewise.
#pragma once

#include <cstdint>

#include "macros.h"

namespace hnas_fast {

// Output extent of a dilated, strided, zero-padded window along one axis (as torch's conv2d).
HNAS_HOST_DEVICE int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                                       int64_t dilation) {
  return (in + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

// The input as the convolution reads it: torch.relu's semantics (a NaN stays NaN).
template <typename acc>
HNAS_HOST_DEVICE acc relu_if(acc v, bool relu) {
  return (relu && v < acc(0)) ? acc(0) : v;
}

// The ReLU's gradient mask (torch's threshold_backward: 0 where v <= 0, the gradient elsewhere).
template <typename acc>
HNAS_HOST_DEVICE acc relu_grad_if(acc grad, acc v, bool relu) {
  return (relu && v <= acc(0)) ? acc(0) : grad;
}

// Whether kernel row (or column) kh feeds input phase a, and if so the output offset o - i' it reads.
HNAS_HOST_DEVICE bool phase_tap(int64_t a, int64_t kh, int64_t stride, int64_t padding, int64_t dilation,
                                int64_t* offset) {
  const int64_t num = a + padding - kh * dilation;
  const int64_t rem = ((num % stride) + stride) % stride;
  if (rem != 0) {
    return false;
  }
  *offset = num / stride;  // exact, so truncation toward zero is harmless
  return true;
}

// Number of input rows i < extent with i mod stride == a.
HNAS_HOST_DEVICE int64_t phase_extent(int64_t extent, int64_t a, int64_t stride) {
  return extent > a ? (extent - a + stride - 1) / stride : 0;
}

}  // namespace hnas_fast
