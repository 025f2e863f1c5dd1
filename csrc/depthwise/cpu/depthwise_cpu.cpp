// CPU kernels of the depthwise convolution with a fused input ReLU.
//
// The unit of work is one sample and one block of L channels (L = 16 floats or 8 doubles, one 64-byte
// vector). Its input is copied once, ReLU'd, into a zero-padded channels-last plane (rows x cols pixels of
// L lanes), so every tap of any kernel size, dilation and stride is a vector load at a constant offset and
// nothing in the inner loops tests a border. Forward keeps a few output pixels in registers across the
// taps. Backward loads the item's output gradient once, into a zero-padded plane, and from it computes
// both gradients: the weight gradient (gradient x input, per tap) and the input gradient as a gather, one
// stride phase at a time (depthwise_math.h), with the same register-blocked stencil as the forward, so no
// read-modify-write of an input-gradient plane is ever needed. The ReLU's gradient is recomputed from x
// when the input gradient is written out. Only x and the weight are saved.
//
// Determinism: each (sample, block) item is computed by one thread in a fixed order, and its weight-
// gradient partial (double, flushed from float after every output row) is summed over samples in sample
// order after the parallel loop, so grad_weight does not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../../common/depthwise_math.h"
#include "../../common/tensor_args.h"
#include "../../common/cpu_blocks.h"
#include "../../common/cpu_vec.h"
#include "../../common/macros.h"
#include "../../common/mixed_sum_math.h"
#include "../depthwise.h"

namespace hnas_fast {
namespace {

// relu_grad_if (depthwise_math.h) for a whole vector: a NaN compares false, so it passes.
template <typename T>
HNAS_VEC_INLINE vec<T> relu_grad_vec(vec<T> grad, vec<T> x) {
  return zero_where<T>(grad, x <= vec<T>{});
}

// The stencil's view of one item: an input plane of `cols` pixels per row read at `stride`, tap offsets in
// pixels, and an output of Ho x Wo pixels written `orow` elements apart per row and `ocol` per column (a
// dense blocked buffer, or a channels_last tensor written in place).
struct Stencil {
  int64_t taps, Ho, Wo, stride, cols;
  const int64_t* off;  // [taps]
  int64_t orow, ocol;
};

// out[o, q] = sum_t w[t] * plane[(o s) cols + q s + off[t]] for B consecutive output pixels; with MASK,
// each output pixel is then multiplied by relu'(mask[o mrow + q mcol]) (the input gradient's ReLU mask,
// applied as the pixel is stored rather than in a second pass over the output).
template <typename acc, int B, bool MASK>
HNAS_VEC_INLINE void forward_block(const acc* __restrict plane, const acc* __restrict w, const Stencil& g, int64_t o,
                                   int64_t q, acc* __restrict out, const acc* __restrict mask, int64_t mrow,
                                   int64_t mcol) {
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
  acc* dst = out + o * g.orow + q * g.ocol;
  for (int b = 0; b < B; ++b) {
    if constexpr (MASK) {
      a[b] = relu_grad_vec<acc>(a[b], ld(mask + o * mrow + (q + b) * mcol));
    }
    st(dst + b * g.ocol, a[b]);
  }
}

template <typename acc, bool MASK = false>
HNAS_VEC_INLINE void forward_stencil(const acc* __restrict plane, const acc* __restrict w, const Stencil& g,
                                     acc* __restrict out, const acc* __restrict mask = nullptr, int64_t mrow = 0,
                                     int64_t mcol = 0) {
  for (int64_t o = 0; o < g.Ho; ++o) {
    int64_t q = 0;
    for (; q + 8 <= g.Wo; q += 8) {
      forward_block<acc, 8, MASK>(plane, w, g, o, q, out, mask, mrow, mcol);
    }
    for (; q + 4 <= g.Wo; q += 4) {
      forward_block<acc, 4, MASK>(plane, w, g, o, q, out, mask, mrow, mcol);
    }
    for (; q < g.Wo; ++q) {
      forward_block<acc, 1, MASK>(plane, w, g, o, q, out, mask, mrow, mcol);
    }
  }
}

// gw[t] += sum_b grad[o, q + b] * plane[.] for B consecutive output pixels and every tap; grad rows are
// `gpitch` pixels apart.
template <typename acc, int B>
HNAS_VEC_INLINE void weight_grad_block(const acc* __restrict plane, const acc* __restrict grad, int64_t gpitch,
                                       const Stencil& g, int64_t o, int64_t q, acc* __restrict gw) {
  constexpr int64_t L = Vec<acc>::L;
  vec<acc> gv[B];
  for (int b = 0; b < B; ++b) {
    gv[b] = ld(grad + (o * gpitch + q + b) * L);
  }
  const acc* base = plane + (o * g.stride * g.cols + q * g.stride) * L;
  const int64_t step = g.stride * L;
  for (int64_t t = 0; t < g.taps; ++t) {
    const acc* p = base + g.off[t] * L;
    // two partial chains: the sum over b is not one long dependency
    vec<acc> s0 = vec<acc>{}, s1 = vec<acc>{};
    for (int b = 0; b + 1 < B; b += 2) {
      s0 += gv[b] * ld(p + b * step);
      s1 += gv[b + 1] * ld(p + (b + 1) * step);
    }
    if constexpr (B % 2 == 1) {
      s0 += gv[B - 1] * ld(p + (B - 1) * step);
    }
    st(gw + t * L, ld(gw + t * L) + (s0 + s1));
  }
}

// One item's weight gradient. The float row sums are flushed into double after every output row.
template <typename acc>
HNAS_VEC_INLINE void weight_grad_stencil(const acc* __restrict plane, const acc* __restrict grad, int64_t gpitch,
                                         const Stencil& g, acc* __restrict gw_row, double* __restrict gw) {
  constexpr int64_t L = Vec<acc>::L;
  std::fill(gw, gw + g.taps * L, 0.0);
  for (int64_t o = 0; o < g.Ho; ++o) {
    std::fill(gw_row, gw_row + g.taps * L, acc(0));
    int64_t q = 0;
    for (; q + 8 <= g.Wo; q += 8) {
      weight_grad_block<acc, 8>(plane, grad, gpitch, g, o, q, gw_row);
    }
    for (; q + 4 <= g.Wo; q += 4) {
      weight_grad_block<acc, 4>(plane, grad, gpitch, g, o, q, gw_row);
    }
    for (; q < g.Wo; ++q) {
      weight_grad_block<acc, 1>(plane, grad, gpitch, g, o, q, gw_row);
    }
    for (int64_t i = 0; i < g.taps * L; ++i) {
      gw[i] += static_cast<double>(gw_row[i]);
    }
  }
}

// One stride phase of the input gradient (depthwise_math.h): input pixels (s i' + a, s j' + b), fed by
// `taps` kernel taps, which start at `first` in the phase-ordered tap list.
struct Phase {
  int64_t a, b, Hp, Wp, first, taps;
};

struct Geom {
  DepthwiseShape s;
  int64_t L, Cb, taps;
  Padded in;                 // relu(x), read by the forward and the weight gradient
  std::vector<int64_t> off;  // [taps]: the tap offsets in `in`
  Padded gpad;               // the output gradient, read by the input-gradient gather
  std::vector<Phase> phases;
  std::vector<int64_t> order;     // [taps]: kernel taps grouped by phase
  std::vector<int64_t> phase_off;  // [taps]: their offsets in `gpad`, in that order
  // Forward (and weight gradient) into a dense Ho x Wo blocked buffer, or at (orow, ocol) when given.
  Stencil stencil(int64_t orow = 0, int64_t ocol = 0) const {
    return {taps, s.Ho, s.Wo, s.stride, in.cols, off.data(), orow ? orow : s.Wo * L, ocol ? ocol : L};
  }
  // One phase of the input gradient into an H x W output whose rows are `row` and columns `col` elements
  // apart.
  Stencil phase_stencil(const Phase& ph, int64_t row, int64_t col) const {
    return {ph.taps, ph.Hp, ph.Wp, 1, gpad.cols, phase_off.data() + ph.first, s.stride * row, s.stride * col};
  }
};

// Per axis: for each phase a, the kernel indices feeding it and their output offsets.
struct AxisPhases {
  std::vector<std::vector<int64_t>> index, offset;
  int64_t lo = 0, hi = 0;  // the offsets' range over the phases that have pixels
};

AxisPhases axis_phases(int64_t extent, int64_t out_extent, const DepthwiseShape& s) {
  AxisPhases ax;
  ax.index.resize(s.stride);
  ax.offset.resize(s.stride);
  ax.hi = out_extent - 1;
  for (int64_t a = 0; a < s.stride; ++a) {
    const int64_t n = phase_extent(extent, a, s.stride);
    for (int64_t kh = 0; kh < s.k; ++kh) {
      int64_t o = 0;
      if (phase_tap(a, kh, s.stride, s.padding, s.dilation, &o)) {
        ax.index[a].push_back(kh);
        ax.offset[a].push_back(o);
        if (n > 0) {
          ax.lo = std::min(ax.lo, o);
          ax.hi = std::max(ax.hi, n - 1 + o);
        }
      }
    }
  }
  return ax;
}

Geom geometry(const DepthwiseShape& s, int64_t L) {
  Geom g{s, L, (s.C + L - 1) / L, s.k * s.k, {}, {}, {}, {}, {}, {}};
  const int64_t ext = s.dilation * (s.k - 1) + 1;
  g.in = {std::max(s.padding + s.H, (s.Ho - 1) * s.stride + ext),
          std::max(s.padding + s.W, (s.Wo - 1) * s.stride + ext), s.padding, s.padding};
  for (int64_t kh = 0; kh < s.k; ++kh) {
    for (int64_t kw = 0; kw < s.k; ++kw) {
      g.off.push_back(kh * s.dilation * g.in.cols + kw * s.dilation);
    }
  }
  const AxisPhases rows = axis_phases(s.H, s.Ho, s), cols = axis_phases(s.W, s.Wo, s);
  g.gpad.top = -rows.lo;
  g.gpad.left = -cols.lo;
  g.gpad.rows = g.gpad.top + rows.hi + 1;
  g.gpad.cols = g.gpad.left + cols.hi + 1;
  for (int64_t a = 0; a < s.stride; ++a) {
    for (int64_t b = 0; b < s.stride; ++b) {
      Phase ph{a, b, phase_extent(s.H, a, s.stride), phase_extent(s.W, b, s.stride),
               static_cast<int64_t>(g.order.size()), 0};
      for (size_t i = 0; i < rows.index[a].size(); ++i) {
        for (size_t j = 0; j < cols.index[b].size(); ++j) {
          g.order.push_back(rows.index[a][i] * s.k + cols.index[b][j]);
          g.phase_off.push_back((rows.offset[a][i] + g.gpad.top) * g.gpad.cols + cols.offset[b][j] + g.gpad.left);
          ++ph.taps;
        }
      }
      g.phases.push_back(ph);
    }
  }
  return g;
}

// The weight as [Cb][taps][L] in the accumulation type, zero in the lanes past C, taps in `order` (or in
// kernel order when it is empty).
template <typename scalar_t, typename acc>
std::vector<acc> blocked_weight(const at::Tensor& weight, const Geom& g, const std::vector<int64_t>& order) {
  constexpr int64_t L = Vec<acc>::L;
  const at::Tensor w = weight.contiguous();
  const scalar_t* wp = w.data_ptr<scalar_t>();
  std::vector<acc> wt(g.Cb * g.taps * L, acc(0));
  for (int64_t c = 0; c < g.s.C; ++c) {
    for (int64_t t = 0; t < g.taps; ++t) {
      const int64_t src = order.empty() ? t : order[t];
      wt[((c / L) * g.taps + t) * L + c % L] = static_cast<acc>(wp[c * g.taps + src]);
    }
  }
  return wt;
}

// ---- the per-item work, compiled once per ISA ---------------------------------------------------------------

// Everything one forward item needs; the scratch planes are the caller's (one set per thread).
template <typename scalar_t, typename acc>
struct ForwardJob {
  const Geom* g;
  const acc* wt;  // blocked_weight, kernel tap order
  const scalar_t* x;
  View4 vx;
  scalar_t* out;
  View4 vo;
  bool relu;
};

template <typename scalar_t, typename acc>
HNAS_VEC_INLINE void forward_items(const ForwardJob<scalar_t, acc>& j, int64_t i0, int64_t i1) {
  constexpr int64_t L = Vec<acc>::L;
  const Geom& g = *j.g;
  const DepthwiseShape& s = g.s;
  const Stencil sg = g.stencil();
  std::vector<acc> plane(g.in.rows * g.in.cols * L), obuf(s.Ho * s.Wo * L);
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t n = item / g.Cb, cb = item % g.Cb, c0 = cb * L, nc = std::min(L, s.C - c0);
    load_padded<scalar_t, acc>(j.x, j.vx, s.H, s.W, g.in, n, c0, nc, j.relu, plane.data());
    if constexpr (std::is_same_v<scalar_t, acc>) {
      if (j.vo.sc == 1 && nc == L) {  // channels_last: the stencil writes the output in place
        forward_stencil<acc>(plane.data(), j.wt + cb * g.taps * L, g.stencil(j.vo.sh, j.vo.sw),
                             j.out + n * j.vo.sn + c0);
        continue;
      }
    }
    forward_stencil<acc>(plane.data(), j.wt + cb * g.taps * L, sg, obuf.data());
    store_dense<scalar_t, acc>(obuf.data(), s.Ho, s.Wo, j.vo, n, c0, nc, j.out);
  }
}

template <typename scalar_t, typename acc>
struct BackwardJob {
  const Geom* g;
  const acc* wt;  // blocked_weight, phase tap order; null when no input gradient is wanted
  const scalar_t* x;
  View4 vx;
  const scalar_t* grad;
  View4 vg;
  scalar_t* dx;  // null when no input gradient is wanted
  View4 vd;
  double* partial;  // [items][taps][L]; null when no weight gradient is wanted
  bool relu;
};

template <typename scalar_t, typename acc>
HNAS_VEC_INLINE void backward_items(const BackwardJob<scalar_t, acc>& j, int64_t i0, int64_t i1) {
  constexpr int64_t L = Vec<acc>::L;
  const Geom& g = *j.g;
  const DepthwiseShape& s = g.s;
  const Stencil sg = g.stencil();
  const int64_t wlen = g.taps * L;
  // relu(x) feeds the weight gradient and, with relu_input, the input gradient's mask
  const bool need_plane = j.partial || (j.dx && j.relu);
  std::vector<acc> plane(need_plane ? g.in.rows * g.in.cols * L : 0), row(wlen);
  std::vector<acc> gpad(g.gpad.rows * g.gpad.cols * L), dx(j.dx ? s.H * s.W * L : 0);
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t n = item / g.Cb, cb = item % g.Cb, c0 = cb * L, nc = std::min(L, s.C - c0);
    load_padded<scalar_t, acc>(j.grad, j.vg, s.Ho, s.Wo, g.gpad, n, c0, nc, false, gpad.data());
    if (need_plane) {
      load_padded<scalar_t, acc>(j.x, j.vx, s.H, s.W, g.in, n, c0, nc, j.relu, plane.data());
    }
    if (j.partial) {
      const acc* grad = gpad.data() + (g.gpad.top * g.gpad.cols + g.gpad.left) * L;
      weight_grad_stencil<acc>(plane.data(), grad, g.gpad.cols, sg, row.data(), j.partial + item * wlen);
    }
    if (j.dx) {
      // channels_last: the phases write grad_input in place; otherwise a dense blocked buffer, copied out
      bool direct = false;
      if constexpr (std::is_same_v<scalar_t, acc>) {
        direct = j.vd.sc == 1 && nc == L;
      }
      acc* dst = dx.data();
      int64_t row = s.W * L, col = L;
      if (direct) {
        dst = reinterpret_cast<acc*>(j.dx) + n * j.vd.sn + c0;
        row = j.vd.sh;
        col = j.vd.sw;
      }
      // relu_input: each phase pixel (s o + a, s q + b) is masked by relu'(x) there, read from the
      // interior of the relu(x) plane (relu(x) <= 0 exactly where x <= 0; a NaN passes) as it is stored.
      const int64_t mrow = s.stride * g.in.cols * L, mcol = s.stride * L;
      for (const Phase& ph : g.phases) {
        if (ph.Hp > 0 && ph.Wp > 0) {
          const acc* w = j.wt + (cb * g.taps + ph.first) * L;
          acc* d = dst + ph.a * row + ph.b * col;
          if (j.relu) {
            const acc* mask = plane.data() + ((g.in.top + ph.a) * g.in.cols + g.in.left + ph.b) * L;
            forward_stencil<acc, true>(gpad.data(), w, g.phase_stencil(ph, row, col), d, mask, mrow, mcol);
          } else {
            forward_stencil<acc>(gpad.data(), w, g.phase_stencil(ph, row, col), d);
          }
        }
      }
      if (!direct) {
        store_dense<scalar_t, acc>(dx.data(), s.H, s.W, j.vd, n, c0, nc, j.dx);
      }
    }
  }
}

// Non-template entry points, so that target_clones compiles each for AVX-512, AVX2 and the baseline; the
// layout copies and the ReLU masks are inside, so they get the wide ISA as well as the stencils.
#define HNAS_DW_ENTRY_POINTS(scalar_t, suffix)                                                                 \
  HNAS_CPU_CLONES void forward_items_##suffix(const ForwardJob<scalar_t, acc_t<scalar_t>>& j, int64_t i0,     \
                                              int64_t i1) {                                                   \
    forward_items<scalar_t, acc_t<scalar_t>>(j, i0, i1);                                                      \
  }                                                                                                           \
  HNAS_CPU_CLONES void backward_items_##suffix(const BackwardJob<scalar_t, acc_t<scalar_t>>& j, int64_t i0,   \
                                               int64_t i1) {                                                  \
    backward_items<scalar_t, acc_t<scalar_t>>(j, i0, i1);                                                     \
  }                                                                                                           \
  inline void run_items(const ForwardJob<scalar_t, acc_t<scalar_t>>& j, int64_t i0, int64_t i1) {             \
    forward_items_##suffix(j, i0, i1);                                                                        \
  }                                                                                                           \
  inline void run_items(const BackwardJob<scalar_t, acc_t<scalar_t>>& j, int64_t i0, int64_t i1) {            \
    backward_items_##suffix(j, i0, i1);                                                                       \
  }
HNAS_DW_ENTRY_POINTS(float, f32)
HNAS_DW_ENTRY_POINTS(double, f64)
HNAS_DW_ENTRY_POINTS(c10::Half, f16)
HNAS_DW_ENTRY_POINTS(c10::BFloat16, bf16)
#undef HNAS_DW_ENTRY_POINTS

}  // namespace

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
                                int64_t dilation, bool relu_input) {
  const DepthwiseShape s = check_depthwise_args(x, weight, stride, padding, dilation);
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(output_memory_format(x)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int64_t L = Vec<acc>::L;
    const Geom g = geometry(s, L);
    const std::vector<acc> wt = blocked_weight<scalar_t, acc>(weight, g, {});
    const ForwardJob<scalar_t, acc> job{&g, wt.data(), x.const_data_ptr<scalar_t>(), view_of(x),
                                        out.mutable_data_ptr<scalar_t>(), view_of(out), relu_input};
    at::parallel_for(0, s.N * g.Cb, 1, [&](int64_t i0, int64_t i1) { run_items(job, i0, i1); });
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
                      ? at::empty(x.sizes(), x.options().memory_format(output_memory_format(x)))
                      : at::empty({0}, x.options());
  at::Tensor gw = need_weight_grad ? at::empty(weight.sizes(), weight.options()) : at::empty({0}, weight.options());
  if (!need_input_grad && !need_weight_grad) {
    return {gx, gw};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int64_t L = Vec<acc>::L;
    const Geom g = geometry(s, L);
    const std::vector<acc> wt = need_input_grad ? blocked_weight<scalar_t, acc>(weight, g, g.order)
                                                : std::vector<acc>();
    const int64_t items = s.N * g.Cb, wlen = g.taps * L;
    // Every item zeroes its own partial (in parallel) before accumulating into it.
    std::unique_ptr<double[]> partial(need_weight_grad ? new double[items * wlen] : nullptr);
    const BackwardJob<scalar_t, acc> job{&g,
                                         need_input_grad ? wt.data() : nullptr,
                                         x.const_data_ptr<scalar_t>(),
                                         view_of(x),
                                         grad_out.const_data_ptr<scalar_t>(),
                                         view_of(grad_out),
                                         need_input_grad ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                                         need_input_grad ? view_of(gx) : View4{},
                                         partial.get(),
                                         relu_input};
    at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) { run_items(job, i0, i1); });
    if (need_weight_grad) {
      // Sum the items' partials over samples, in sample order (deterministic), one channel block per task.
      scalar_t* wp = gw.mutable_data_ptr<scalar_t>();  // contiguous [C, 1, k, k]
      const double* part = partial.get();
      at::parallel_for(0, g.Cb, 1, [&](int64_t b0, int64_t b1) {
        std::vector<double> sum(wlen);
        for (int64_t cb = b0; cb < b1; ++cb) {
          std::fill(sum.begin(), sum.end(), 0.0);
          for (int64_t n = 0; n < s.N; ++n) {
            const double* src = part + (n * g.Cb + cb) * wlen;
            for (int64_t i = 0; i < wlen; ++i) {
              sum[i] += src[i];
            }
          }
          for (int64_t l = 0; l < std::min(L, s.C - cb * L); ++l) {
            for (int64_t t = 0; t < g.taps; ++t) {
              wp[(cb * L + l) * g.taps + t] = static_cast<scalar_t>(sum[t * L + l]);
            }
          }
        }
      });
    }
  });
  return {gx, gw};
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CPU, m) {
  m.impl("depthwise_conv2d", &hnas_fast::depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &hnas_fast::depthwise_conv2d_backward_cpu);
}
