// CPU kernels of the mixed-edge sum: one pass over the candidates forward, one pass over the output
// gradient and the candidates backward. Work is split into fixed-size chunks, so the result does not
// depend on the number of threads (the dot-product partials are summed per chunk, in chunk order).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../common/mixed_sum_math.h"
#include "../mixed_sum.h"

namespace hnas_fast {
namespace {

constexpr int64_t kChunk = 4096;  // elements per chunk: the float accumulator stays in L1
constexpr int kLanes = 8;         // independent dot accumulators, so the reduction vectorizes

template <typename scalar_t>
inline __attribute__((always_inline)) void forward_chunk(const scalar_t* const* ys, const acc_t<scalar_t>* w,
                                                         int64_t K, int64_t lo, int64_t len, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  acc buf[kChunk];
  const scalar_t* y0 = ys[0] + lo;
  const acc w0 = w[0];
  for (int64_t i = 0; i < len; ++i) {
    buf[i] = w0 * static_cast<acc>(y0[i]);
  }
  for (int64_t k = 1; k < K; ++k) {
    const scalar_t* y = ys[k] + lo;
    const acc wk = w[k];
    for (int64_t i = 0; i < len; ++i) {
      mixed_sum_fma(buf[i], wk, y[i]);
    }
  }
  scalar_t* o = out + lo;
  for (int64_t i = 0; i < len; ++i) {
    o[i] = static_cast<scalar_t>(buf[i]);
  }
}

template <typename scalar_t, bool kGradY, bool kGradW>
inline __attribute__((always_inline)) void backward_chunk(const scalar_t* g_in, const scalar_t* const* ys,
                                                          scalar_t* const* grad_ys, const acc_t<scalar_t>* w,
                                                          int64_t K, int64_t lo, int64_t len, double* partial) {
  using acc = acc_t<scalar_t>;
  acc g[kChunk];
  for (int64_t i = 0; i < len; ++i) {
    g[i] = static_cast<acc>(g_in[lo + i]);
  }
  for (int64_t k = 0; k < K; ++k) {
    const scalar_t* y = ys[k] + lo;
    const acc wk = w[k];
    scalar_t sink[kLanes];
    scalar_t* gy = kGradY ? grad_ys[k] + lo : nullptr;
    double lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t body = len - len % kLanes;
    for (int64_t i = 0; i < body; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        double& dot = lanes[j];
        scalar_t& out = kGradY ? gy[i + j] : sink[j];
        if (kGradW) {
          mixed_sum_backward_element(g[i + j], wk, y[i + j], dot, out);
        } else {
          out = static_cast<scalar_t>(wk * g[i + j]);
        }
      }
    }
    for (int64_t i = body; i < len; ++i) {
      scalar_t& out = kGradY ? gy[i] : sink[0];
      mixed_sum_backward_element(g[i], wk, y[i], lanes[i - body], out);
    }
    double total = 0;
    for (int j = 0; j < kLanes; ++j) {
      total += lanes[j];
    }
    partial[k] = total;
  }
}

// Non-template entry points per dtype, so that target_clones can specialise them.
#define HNAS_DEFINE_CHUNKS(scalar_t, suffix)                                                              \
  HNAS_CPU_CLONES void forward_chunk_##suffix(const scalar_t* const* ys, const acc_t<scalar_t>* w,        \
                                              int64_t K, int64_t lo, int64_t len, scalar_t* out) {         \
    forward_chunk<scalar_t>(ys, w, K, lo, len, out);                                                      \
  }                                                                                                       \
  HNAS_CPU_CLONES void backward_chunk_##suffix(const scalar_t* g, const scalar_t* const* ys,              \
                                               scalar_t* const* grad_ys, const acc_t<scalar_t>* w,        \
                                               int64_t K, int64_t lo, int64_t len, double* partial,        \
                                               bool grad_y, bool grad_w) {                                 \
    if (grad_y && grad_w) {                                                                               \
      backward_chunk<scalar_t, true, true>(g, ys, grad_ys, w, K, lo, len, partial);                       \
    } else if (grad_y) {                                                                                  \
      backward_chunk<scalar_t, true, false>(g, ys, grad_ys, w, K, lo, len, partial);                      \
    } else {                                                                                              \
      backward_chunk<scalar_t, false, true>(g, ys, grad_ys, w, K, lo, len, partial);                      \
    }                                                                                                     \
  }

HNAS_DEFINE_CHUNKS(float, f32)
HNAS_DEFINE_CHUNKS(double, f64)
HNAS_DEFINE_CHUNKS(c10::Half, f16)
HNAS_DEFINE_CHUNKS(c10::BFloat16, bf16)
#undef HNAS_DEFINE_CHUNKS

inline void forward_chunk_any(const float* const* ys, const float* w, int64_t K, int64_t lo, int64_t len,
                              float* out) {
  forward_chunk_f32(ys, w, K, lo, len, out);
}
inline void forward_chunk_any(const double* const* ys, const double* w, int64_t K, int64_t lo, int64_t len,
                              double* out) {
  forward_chunk_f64(ys, w, K, lo, len, out);
}
inline void forward_chunk_any(const c10::Half* const* ys, const float* w, int64_t K, int64_t lo, int64_t len,
                              c10::Half* out) {
  forward_chunk_f16(ys, w, K, lo, len, out);
}
inline void forward_chunk_any(const c10::BFloat16* const* ys, const float* w, int64_t K, int64_t lo,
                              int64_t len, c10::BFloat16* out) {
  forward_chunk_bf16(ys, w, K, lo, len, out);
}
template <typename scalar_t>
inline void backward_chunk_any(const scalar_t* g, const scalar_t* const* ys, scalar_t* const* grad_ys,
                               const acc_t<scalar_t>* w, int64_t K, int64_t lo, int64_t len, double* partial,
                               bool grad_y, bool grad_w) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    backward_chunk_f32(g, ys, grad_ys, w, K, lo, len, partial, grad_y, grad_w);
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    backward_chunk_f64(g, ys, grad_ys, w, K, lo, len, partial, grad_y, grad_w);
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    backward_chunk_f16(g, ys, grad_ys, w, K, lo, len, partial, grad_y, grad_w);
  } else {
    backward_chunk_bf16(g, ys, grad_ys, w, K, lo, len, partial, grad_y, grad_w);
  }
}

// Parallel grain in chunks: below ~128k elements threading costs more than it gains.
constexpr int64_t kGrainChunks = 32;

template <typename T>
std::vector<T*> data_ptrs(const std::vector<at::Tensor>& ts) {
  std::vector<T*> ptrs;
  ptrs.reserve(ts.size());
  for (const auto& t : ts) {
    ptrs.push_back(t.data_ptr<std::remove_const_t<T>>());
  }
  return ptrs;
}

}  // namespace

at::Tensor mixed_sum_cpu(at::TensorList ys_in, const at::Tensor& weights) {
  check_mixed_sum_inputs(ys_in, weights);
  const auto ys = dense_like_first(ys_in);
  at::Tensor out = at::empty_like(ys[0]);
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(ys.size());
  if (n == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixed_sum_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const at::Tensor w = weights.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* wp = w.data_ptr<acc>();
    const auto yp = data_ptrs<const scalar_t>(ys);
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, kGrainChunks, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t lo = c * kChunk;
        forward_chunk_any(yp.data(), wp, K, lo, std::min(kChunk, n - lo), op);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad_out,
                                                                       at::TensorList ys_in,
                                                                       const at::Tensor& weights,
                                                                       bool need_ys_grad,
                                                                       bool need_weights_grad) {
  check_mixed_sum_backward_inputs(grad_out, ys_in, weights);
  const auto ys = dense_like_first(ys_in);
  const at::Tensor g = match_layout(grad_out, ys[0]);
  const int64_t n = g.numel();
  const int64_t K = static_cast<int64_t>(ys.size());

  std::vector<at::Tensor> grad_ys;
  if (need_ys_grad) {
    for (int64_t k = 0; k < K; ++k) {
      grad_ys.push_back(at::empty_like(ys[0]));
    }
  }
  at::Tensor grad_w = at::zeros_like(weights);
  if (n == 0 || (!need_ys_grad && !need_weights_grad)) {
    for (auto& t : grad_ys) {
      t.zero_();
    }
    return {grad_ys, grad_w};
  }
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(need_weights_grad ? chunks * K : K);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const at::Tensor w = weights.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* wp = w.data_ptr<acc>();
    const auto yp = data_ptrs<const scalar_t>(ys);
    const auto gyp = data_ptrs<scalar_t>(grad_ys);
    const scalar_t* gp = g.data_ptr<scalar_t>();
    double* pp = partial.data();
    at::parallel_for(0, chunks, kGrainChunks, [&](int64_t c0, int64_t c1) {
      std::vector<double> scratch(K);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t lo = c * kChunk;
        double* dst = need_weights_grad ? pp + c * K : scratch.data();
        backward_chunk_any<scalar_t>(gp, yp.data(), gyp.data(), wp, K, lo, std::min(kChunk, n - lo), dst,
                                     need_ys_grad, need_weights_grad);
      }
    });
  });
  if (need_weights_grad) {
    at::Tensor sums = at::zeros({K}, at::TensorOptions().dtype(at::kDouble));
    double* sp = sums.data_ptr<double>();
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t k = 0; k < K; ++k) {
        sp[k] += partial[c * K + k];
      }
    }
    grad_w = sums.to(weights.scalar_type());
  }
  return {grad_ys, grad_w};
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CPU, m) {
  m.impl("mixed_sum", &hnas_fast::mixed_sum_cpu);
  m.impl("mixed_sum_backward", &hnas_fast::mixed_sum_backward_cpu);
}
