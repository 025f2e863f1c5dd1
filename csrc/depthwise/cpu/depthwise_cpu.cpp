// CPU kernels of the depthwise convolution with a fused input ReLU.
//
// The unit of work is one sample and one block of L channels (L = 16 floats or 8 doubles, one 64-byte
// vector). Its input is copied once, ReLU'd, into a zero-padded channels-last plane (rows x cols pixels of
// L lanes), so every tap of any kernel size, dilation and stride is a vector load at a constant offset and
// nothing in the inner loops tests a border. Forward keeps a few output pixels in registers across the
// taps. Backward makes one pass over the output gradient: each tap adds gradient x input into the weight
// gradient and scatters weight x gradient into a padded input-gradient plane, whose interior is then
// masked by the ReLU's gradient (recomputed from x) and written out. Only x and the weight are needed.
//
// Determinism: each (sample, block) item is computed by one thread in a fixed order, and its weight-
// gradient partial (double, flushed from float after every output row) is summed over samples in sample
// order after the parallel loop, so grad_weight does not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../common/depthwise_math.h"
#include "../../common/macros.h"
#include "../../common/mixed_sum_math.h"
#include "../depthwise.h"

#define DW_INLINE inline __attribute__((always_inline))

namespace hnas_fast {
namespace {

// One 64-byte vector of the accumulation type (GCC vector extensions: each target clone lowers it to its
// own ISA, one zmm register under AVX-512, two ymm under AVX2).
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
  static constexpr int64_t L = 16;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
  static constexpr int64_t L = 8;
};
template <typename T>
using vec = typename Vec<T>::type;

template <typename T>
DW_INLINE vec<T> ld(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
DW_INLINE void st(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// The stencil's view of one item: a padded plane of `cols` pixels per row, tap offsets in pixels.
struct Stencil {
  int64_t taps, Ho, Wo, stride, cols;
  const int64_t* off;  // [taps]: (kh d) cols + kw d
};

// out[o, q] = sum_t w[t] * plane[(o s) cols + q s + off[t]] for B consecutive output pixels.
template <typename acc, int B>
DW_INLINE void forward_block(const acc* __restrict plane, const acc* __restrict w, const Stencil& g, int64_t o,
                             int64_t q, acc* __restrict out) {
  constexpr int64_t L = Vec<acc>::L;
  vec<acc> a[B];
  for (int b = 0; b < B; ++b) {
    a[b] = vec<acc>{};
  }
  const acc* base = plane + (o * g.stride * g.cols + q * g.stride) * L;
  const int64_t step = g.stride * L;
  for (int64_t t = 0; t < g.taps; ++t) {
    const vec<acc> wv = ld(w + t * L);
    const acc* p = base + g.off[t] * L;
    for (int b = 0; b < B; ++b) {
      a[b] += wv * ld(p + b * step);
    }
  }
  for (int b = 0; b < B; ++b) {
    st(out + (o * g.Wo + q + b) * L, a[b]);
  }
}

template <typename acc>
DW_INLINE void forward_stencil(const acc* __restrict plane, const acc* __restrict w, const Stencil& g,
                               acc* __restrict out) {
  for (int64_t o = 0; o < g.Ho; ++o) {
    int64_t q = 0;
    for (; q + 8 <= g.Wo; q += 8) {
      forward_block<acc, 8>(plane, w, g, o, q, out);
    }
    for (; q + 4 <= g.Wo; q += 4) {
      forward_block<acc, 4>(plane, w, g, o, q, out);
    }
    for (; q < g.Wo; ++q) {
      forward_block<acc, 1>(plane, w, g, o, q, out);
    }
  }
}

// For B consecutive output pixels and every tap: gw[t] += sum_b g[b] * plane[.], dplane[.] += w[t] * g[b].
template <typename acc, int B, bool GX, bool GW>
DW_INLINE void backward_block(const acc* __restrict plane, const acc* __restrict grad, const acc* __restrict w,
                              const Stencil& g, int64_t o, int64_t q, acc* __restrict dplane, acc* __restrict gw) {
  constexpr int64_t L = Vec<acc>::L;
  vec<acc> gv[B];
  for (int b = 0; b < B; ++b) {
    gv[b] = ld(grad + (o * g.Wo + q + b) * L);
  }
  const int64_t at = (o * g.stride * g.cols + q * g.stride) * L;
  const int64_t step = g.stride * L;
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t pos = at + g.off[t] * L;
    if constexpr (GW) {
      // two partial chains: the sum over b is not one long dependency
      vec<acc> s0 = vec<acc>{}, s1 = vec<acc>{};
      for (int b = 0; b + 1 < B; b += 2) {
        s0 += gv[b] * ld(plane + pos + b * step);
        s1 += gv[b + 1] * ld(plane + pos + (b + 1) * step);
      }
      if constexpr (B % 2 == 1) {
        s0 += gv[B - 1] * ld(plane + pos + (B - 1) * step);
      }
      st(gw + t * L, ld(gw + t * L) + (s0 + s1));
    }
    if constexpr (GX) {
      const vec<acc> wv = ld(w + t * L);
      for (int b = 0; b < B; ++b) {
        acc* d = dplane + pos + b * step;
        st(d, ld(d) + wv * gv[b]);
      }
    }
  }
}

// One item's backward. The float weight-gradient row sums are flushed into double after every output row.
template <typename acc, bool GX, bool GW>
DW_INLINE void backward_stencil(const acc* __restrict plane, const acc* __restrict grad, const acc* __restrict w,
                                const Stencil& g, acc* __restrict dplane, acc* __restrict gw_row,
                                double* __restrict gw) {
  constexpr int64_t L = Vec<acc>::L;
  for (int64_t o = 0; o < g.Ho; ++o) {
    if constexpr (GW) {
      std::fill(gw_row, gw_row + g.taps * L, acc(0));
    }
    int64_t q = 0;
    for (; q + 8 <= g.Wo; q += 8) {
      backward_block<acc, 8, GX, GW>(plane, grad, w, g, o, q, dplane, gw_row);
    }
    for (; q + 4 <= g.Wo; q += 4) {
      backward_block<acc, 4, GX, GW>(plane, grad, w, g, o, q, dplane, gw_row);
    }
    for (; q < g.Wo; ++q) {
      backward_block<acc, 1, GX, GW>(plane, grad, w, g, o, q, dplane, gw_row);
    }
    if constexpr (GW) {
      for (int64_t i = 0; i < g.taps * L; ++i) {
        gw[i] += static_cast<double>(gw_row[i]);
      }
    }
  }
}

// Non-template entry points, so that target_clones compiles each for AVX-512, AVX2 and the baseline.
#define HNAS_DW_ENTRY_POINTS(acc, suffix)                                                                        \
  HNAS_CPU_CLONES void forward_stencil_##suffix(const acc* plane, const acc* w, const Stencil& g, acc* out) {   \
    forward_stencil<acc>(plane, w, g, out);                                                                     \
  }                                                                                                             \
  HNAS_CPU_CLONES void backward_stencil_##suffix(const acc* plane, const acc* grad, const acc* w,               \
                                                 const Stencil& g, acc* dplane, acc* gw_row, double* gw,        \
                                                 bool gx, bool gwt) {                                           \
    if (gx && gwt) {                                                                                            \
      backward_stencil<acc, true, true>(plane, grad, w, g, dplane, gw_row, gw);                                 \
    } else if (gx) {                                                                                            \
      backward_stencil<acc, true, false>(plane, grad, w, g, dplane, gw_row, gw);                                \
    } else {                                                                                                    \
      backward_stencil<acc, false, true>(plane, grad, w, g, dplane, gw_row, gw);                                \
    }                                                                                                           \
  }
HNAS_DW_ENTRY_POINTS(float, f32)
HNAS_DW_ENTRY_POINTS(double, f64)
#undef HNAS_DW_ENTRY_POINTS

inline void forward_stencil_any(const float* p, const float* w, const Stencil& g, float* out) {
  forward_stencil_f32(p, w, g, out);
}
inline void forward_stencil_any(const double* p, const double* w, const Stencil& g, double* out) {
  forward_stencil_f64(p, w, g, out);
}
inline void backward_stencil_any(const float* p, const float* gr, const float* w, const Stencil& g, float* dp,
                                 float* row, double* gw, bool gx, bool gwt) {
  backward_stencil_f32(p, gr, w, g, dp, row, gw, gx, gwt);
}
inline void backward_stencil_any(const double* p, const double* gr, const double* w, const Stencil& g, double* dp,
                                 double* row, double* gw, bool gx, bool gwt) {
  backward_stencil_f64(p, gr, w, g, dp, row, gw, gx, gwt);
}

// ---- layout: tensors of any strides <-> the channels-last working buffers ---------------------------------

struct View4 {
  int64_t sn, sc, sh, sw;
};
inline View4 view_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

struct Geom {
  DepthwiseShape s;
  int64_t L, Cb, rows, cols, taps;
  std::vector<int64_t> off;
  Stencil stencil() const { return {taps, s.Ho, s.Wo, s.stride, cols, off.data()}; }
};

Geom geometry(const DepthwiseShape& s, int64_t L) {
  Geom g{s, L, (s.C + L - 1) / L, 0, 0, s.k * s.k, {}};
  const int64_t ext = s.dilation * (s.k - 1) + 1;
  g.rows = std::max(s.padding + s.H, (s.Ho - 1) * s.stride + ext);
  g.cols = std::max(s.padding + s.W, (s.Wo - 1) * s.stride + ext);
  for (int64_t kh = 0; kh < s.k; ++kh) {
    for (int64_t kw = 0; kw < s.k; ++kw) {
      g.off.push_back(kh * s.dilation * g.cols + kw * s.dilation);
    }
  }
  return g;
}

// plane = relu(x[n, c0 : c0 + nc]) (x itself when !relu) inside a zero border, channels-last [rows][cols][L].
template <typename scalar_t, typename acc>
void load_plane(const scalar_t* x, const View4& v, const Geom& g, int64_t n, int64_t c0, int64_t nc, bool relu,
                acc* plane) {
  constexpr int64_t L = Vec<acc>::L;
  const int64_t p = g.s.padding;
  std::fill(plane, plane + g.rows * g.cols * L, acc(0));
  const scalar_t* xn = x + n * v.sn + c0 * v.sc;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sc == 1 && nc == L) {  // channels_last: a pixel's block is one vector
      for (int64_t i = 0; i < g.s.H; ++i) {
        for (int64_t j = 0; j < g.s.W; ++j) {
          const vec<acc> val = ld(xn + i * v.sh + j * v.sw);
          st(plane + ((i + p) * g.cols + j + p) * L, relu ? (val < vec<acc>{} ? vec<acc>{} : val) : val);
        }
      }
      return;
    }
  }
  // pixel by pixel, so the writes stream through the plane once (lane-outer loops would sweep it L times)
  for (int64_t i = 0; i < g.s.H; ++i) {
    for (int64_t j = 0; j < g.s.W; ++j) {
      const scalar_t* src = xn + i * v.sh + j * v.sw;
      acc* dst = plane + ((i + p) * g.cols + j + p) * L;
      for (int64_t l = 0; l < nc; ++l) {
        dst[l] = relu_if(static_cast<acc>(src[l * v.sc]), relu);
      }
    }
  }
}

// buf[o, q, l] = t[n, c0 + l, o, q] (zero in the lanes past nc): an output-shaped tensor into a block.
template <typename scalar_t, typename acc>
void load_block(const scalar_t* t, const View4& v, const Geom& g, int64_t n, int64_t c0, int64_t nc, acc* buf) {
  constexpr int64_t L = Vec<acc>::L;
  const int64_t P = g.s.Ho * g.s.Wo;
  const scalar_t* tn = t + n * v.sn + c0 * v.sc;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sc == 1 && nc == L) {
      for (int64_t o = 0; o < g.s.Ho; ++o) {
        for (int64_t q = 0; q < g.s.Wo; ++q) {
          st(buf + (o * g.s.Wo + q) * L, ld(tn + o * v.sh + q * v.sw));
        }
      }
      return;
    }
  }
  if (nc < L) {
    std::fill(buf, buf + P * L, acc(0));
  }
  for (int64_t o = 0; o < g.s.Ho; ++o) {
    for (int64_t q = 0; q < g.s.Wo; ++q) {
      const scalar_t* src = tn + o * v.sh + q * v.sw;
      acc* dst = buf + (o * g.s.Wo + q) * L;
      for (int64_t l = 0; l < nc; ++l) {
        dst[l] = static_cast<acc>(src[l * v.sc]);
      }
    }
  }
}

// t[n, c0 + l, o, q] = buf[o, q, l] for l < nc.
template <typename scalar_t, typename acc>
void store_block(const acc* buf, const View4& v, const Geom& g, int64_t n, int64_t c0, int64_t nc, scalar_t* t) {
  constexpr int64_t L = Vec<acc>::L;
  scalar_t* tn = t + n * v.sn + c0 * v.sc;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sc == 1 && nc == L) {
      for (int64_t o = 0; o < g.s.Ho; ++o) {
        for (int64_t q = 0; q < g.s.Wo; ++q) {
          st(tn + o * v.sh + q * v.sw, ld(buf + (o * g.s.Wo + q) * L));
        }
      }
      return;
    }
  }
  for (int64_t o = 0; o < g.s.Ho; ++o) {
    for (int64_t q = 0; q < g.s.Wo; ++q) {
      scalar_t* dst = tn + o * v.sh + q * v.sw;
      const acc* src = buf + (o * g.s.Wo + q) * L;
      for (int64_t l = 0; l < nc; ++l) {
        dst[l * v.sc] = static_cast<scalar_t>(src[l]);
      }
    }
  }
}

// dx[n, c0 + l, i, j] = relu'(x) * dplane interior, for l < nc.
template <typename scalar_t, typename acc>
void store_grad_input(const acc* dplane, const scalar_t* x, const View4& vx, const View4& vd, const Geom& g,
                      int64_t n, int64_t c0, int64_t nc, bool relu, scalar_t* dx) {
  constexpr int64_t L = Vec<acc>::L;
  const int64_t p = g.s.padding;
  const scalar_t* xn = x + n * vx.sn + c0 * vx.sc;
  scalar_t* dn = dx + n * vd.sn + c0 * vd.sc;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (vx.sc == 1 && vd.sc == 1 && nc == L) {
      for (int64_t i = 0; i < g.s.H; ++i) {
        for (int64_t j = 0; j < g.s.W; ++j) {
          vec<acc> d = ld(dplane + ((i + p) * g.cols + j + p) * L);
          if (relu) {
            const vec<acc> xv = ld(xn + i * vx.sh + j * vx.sw);
            d = xv <= vec<acc>{} ? vec<acc>{} : d;
          }
          st(dn + i * vd.sh + j * vd.sw, d);
        }
      }
      return;
    }
  }
  for (int64_t i = 0; i < g.s.H; ++i) {
    for (int64_t j = 0; j < g.s.W; ++j) {
      const acc* src = dplane + ((i + p) * g.cols + j + p) * L;
      const scalar_t* xr = xn + i * vx.sh + j * vx.sw;
      scalar_t* dst = dn + i * vd.sh + j * vd.sw;
      for (int64_t l = 0; l < nc; ++l) {
        dst[l * vd.sc] = static_cast<scalar_t>(relu_grad_if(src[l], static_cast<acc>(xr[l * vx.sc]), relu));
      }
    }
  }
}

// The weight as [Cb][taps][L] in the accumulation type, zero in the lanes past C.
template <typename scalar_t, typename acc>
std::vector<acc> transposed_weight(const at::Tensor& weight, const Geom& g) {
  constexpr int64_t L = Vec<acc>::L;
  const at::Tensor w = weight.contiguous();
  const scalar_t* wp = w.data_ptr<scalar_t>();
  std::vector<acc> wt(g.Cb * g.taps * L, acc(0));
  for (int64_t c = 0; c < g.s.C; ++c) {
    for (int64_t t = 0; t < g.taps; ++t) {
      wt[((c / L) * g.taps + t) * L + c % L] = static_cast<acc>(wp[c * g.taps + t]);
    }
  }
  return wt;
}

}  // namespace

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                                int64_t dilation, bool relu_input) {
  const DepthwiseShape s = check_depthwise_args(x, weight, stride, padding, dilation);
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(depthwise_out_format(x)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int64_t L = Vec<acc>::L;
    const Geom g = geometry(s, L);
    const Stencil sg = g.stencil();
    const std::vector<acc> wt = transposed_weight<scalar_t, acc>(weight, g);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const View4 vx = view_of(x), vo = view_of(out);
    at::parallel_for(0, s.N * g.Cb, 1, [&](int64_t i0, int64_t i1) {
      std::vector<acc> plane(g.rows * g.cols * L), obuf(s.Ho * s.Wo * L);
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t n = item / g.Cb, cb = item % g.Cb, c0 = cb * L, nc = std::min(L, s.C - c0);
        load_plane<scalar_t, acc>(xp, vx, g, n, c0, nc, relu_input, plane.data());
        forward_stencil_any(plane.data(), wt.data() + cb * g.taps * L, sg, obuf.data());
        store_block<scalar_t, acc>(obuf.data(), vo, g, n, c0, nc, op);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const at::Tensor& weight, int64_t stride,
                                                                 int64_t padding, int64_t dilation,
                                                                 bool relu_input, bool need_input_grad,
                                                                 bool need_weight_grad) {
  const DepthwiseShape s = check_depthwise_backward_args(grad_out, x, weight, stride, padding, dilation);
  at::Tensor gx = need_input_grad
                      ? at::empty(x.sizes(), x.options().memory_format(depthwise_out_format(x)))
                      : at::empty({0}, x.options());
  at::Tensor gw = need_weight_grad ? at::empty(weight.sizes(), weight.options()) : at::empty({0}, weight.options());
  if (!need_input_grad && !need_weight_grad) {
    return {gx, gw};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int64_t L = Vec<acc>::L;
    const Geom g = geometry(s, L);
    const Stencil sg = g.stencil();
    const std::vector<acc> wt = transposed_weight<scalar_t, acc>(weight, g);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    scalar_t* dxp = need_input_grad ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    const View4 vx = view_of(x), vg = view_of(grad_out);
    const View4 vd = need_input_grad ? view_of(gx) : View4{};
    const int64_t items = s.N * g.Cb, wlen = g.taps * L;
    std::vector<double> partial(need_weight_grad ? items * wlen : 0, 0.0);
    at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
      std::vector<acc> plane(g.rows * g.cols * L), grad(s.Ho * s.Wo * L), row(wlen);
      std::vector<acc> dplane(need_input_grad ? g.rows * g.cols * L : 0);
      std::vector<double> scratch(need_weight_grad ? 0 : wlen);
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t n = item / g.Cb, cb = item % g.Cb, c0 = cb * L, nc = std::min(L, s.C - c0);
        load_plane<scalar_t, acc>(xp, vx, g, n, c0, nc, relu_input, plane.data());
        load_block<scalar_t, acc>(gp, vg, g, n, c0, nc, grad.data());
        if (need_input_grad) {
          std::fill(dplane.begin(), dplane.end(), acc(0));
        }
        double* gwp = need_weight_grad ? partial.data() + item * wlen : scratch.data();
        backward_stencil_any(plane.data(), grad.data(), wt.data() + cb * wlen, sg, dplane.data(), row.data(), gwp,
                             need_input_grad, need_weight_grad);
        if (need_input_grad) {
          store_grad_input<scalar_t, acc>(dplane.data(), xp, vx, vd, g, n, c0, nc, relu_input, dxp);
        }
      }
    });
    if (need_weight_grad) {
      scalar_t* wp = gw.mutable_data_ptr<scalar_t>();  // contiguous [C, 1, k, k]
      for (int64_t c = 0; c < s.C; ++c) {
        const int64_t cb = c / L, l = c % L;
        for (int64_t t = 0; t < g.taps; ++t) {
          double sum = 0.0;
          for (int64_t n = 0; n < s.N; ++n) {
            sum += partial[(n * g.Cb + cb) * wlen + t * L + l];
          }
          wp[c * g.taps + t] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
  return {gx, gw};
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CPU, m) {
  m.impl("depthwise_conv2d", &hnas_fast::depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &hnas_fast::depthwise_conv2d_backward_cpu);
}
