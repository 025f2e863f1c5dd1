// CPU kernels of pooling fused with the search network's BatchNorm2d(affine=False).
//
// Forward makes one pass over x that writes the pooled y into the output buffer and sums y and y^2 per
// channel (double), then normalizes the buffer in place: no pooled tensor, no index tensor and no second
// BatchNorm input are allocated or saved. Backward reads g and out (= xhat) once for the two per-channel
// sums, then routes dL/dy through the windows: the max pool's argmax is recomputed from x (the first
// maximum in row-major window order, as torch's CPU kernel; NaN: see pool_math.h), the average pool
// spreads dL/dy / count.
//
// Layouts: channels_last x is done one sample and block of L channels at a time with channels innermost, so
// every window tap is one contiguous channel vector; contiguous float32/float64 x is transposed block by
// block into the same form (pool_blocked). Contiguous float16/bfloat16 x is done one (n, c) plane at a time,
// copied into a padded plane (-inf or 0) so the window loops have no borders and run along the output row.
//
// Determinism: every partial sum belongs to one (n, c) or one n and is reduced over n in order afterwards,
// so the results do not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../../common/cpu_blocks.h"
#include "../../common/cpu_vec.h"
#include "../../common/macros.h"
#include "../../common/pool_math.h"
#include "../../common/tensor_args.h"
#include "../pool_bn.h"

namespace hnas_fast {
namespace {

// ------------------------------------------------------------------------------------------ forward
template <typename T, typename A>
void pool_planes(const T* __restrict x, T* __restrict y, const PoolShape& s, bool is_max,
                  double* __restrict psum, double* __restrict psq) {
  const int64_t k = s.k, st = s.stride, p = k / 2, Hp = s.H + 2 * p, Wp = s.W + 2 * p;
  const A fill = is_max ? -std::numeric_limits<A>::infinity() : A(0);
  parallel_cloned(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
    std::vector<A> pad(Hp * Wp, fill), row(s.Wo), nan_row(s.Wo), inv_w(s.Wo);
    for (int64_t q = 0; q < s.Wo; ++q) {
      inv_w[q] = A(1) / A(window_end(q, k, st, s.W) - window_begin(q, k, st));
    }
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* xp = x + plane * s.H * s.W;
      T* yp = y + plane * s.Ho * s.Wo;
      for (int64_t h = 0; h < s.H; ++h) {
        A* dst = pad.data() + (h + p) * Wp + p;
        for (int64_t w = 0; w < s.W; ++w) {
          dst[w] = static_cast<A>(xp[h * s.W + w]);
        }
      }
      double sum = 0, sq = 0;
      for (int64_t o = 0; o < s.Ho; ++o) {
        A* __restrict r = row.data();
        A* __restrict nr = nan_row.data();
        for (int64_t q = 0; q < s.Wo; ++q) {
          r[q] = fill;
          nr[q] = 0;
        }
        for (int64_t kh = 0; kh < k; ++kh) {
          const A* src = pad.data() + (o * st + kh) * Wp;
          for (int64_t kw = 0; kw < k; ++kw) {
            const A* sk = src + kw;
            if (is_max) {
              for (int64_t q = 0; q < s.Wo; ++q) {
                const A v = sk[q * st];
                r[q] = max_fold(v, r[q]);
                nr[q] = nan_fold(v, nr[q]);
              }
            } else {
              for (int64_t q = 0; q < s.Wo; ++q) {
                r[q] += sk[q * st];
              }
            }
          }
        }
        const A inv_h = A(1) / A(window_end(o, k, st, s.H) - window_begin(o, k, st));
        // double sums: var = E[y^2] - mean^2 cancels badly in float when the mean is large against the spread
        for (int64_t q = 0; q < s.Wo; ++q) {
          const A v = static_cast<A>(static_cast<T>(is_max ? max_result(r[q], nr[q]) : r[q] * (inv_h * inv_w[q])));
          yp[o * s.Wo + q] = static_cast<T>(v);
          sum += double(v);
          sq += double(v) * double(v);
        }
      }
      psum[plane] = sum;
      psq[plane] = sq;
    }
  });
}

// Channels of the scalar channels_last blocks (the last C mod L channels, L <= CB), kept in registers.
constexpr int64_t CB = 16;

// y and the statistics of channels [c0, c0 + nc) of one sample (nc <= CB).
template <typename T, typename A>
HNAS_VEC_INLINE void pool_cl_block(const T* __restrict xn, T* __restrict yn, const PoolShape& s, bool is_max,
                                   int64_t c0, int64_t nc, double* __restrict sum, double* __restrict sq) {
  const int64_t C = s.C, k = s.k, st = s.stride;
  const A fill = is_max ? -std::numeric_limits<A>::infinity() : A(0);
  double bs[CB] = {}, bq[CB] = {};  // double: see pool_planes
  for (int64_t o = 0; o < s.Ho; ++o) {
    const int64_t h0 = window_begin(o, k, st), h1 = window_end(o, k, st, s.H);
    for (int64_t q = 0; q < s.Wo; ++q) {
      const int64_t w0 = window_begin(q, k, st), w1 = window_end(q, k, st, s.W);
      A a[CB], an[CB];
      for (int64_t c = 0; c < nc; ++c) {
        a[c] = fill;
        an[c] = 0;
      }
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t w = w0; w < w1; ++w) {
          const T* px = xn + (h * s.W + w) * C + c0;
          if (is_max) {
            for (int64_t c = 0; c < nc; ++c) {
              const A v = static_cast<A>(px[c]);
              a[c] = max_fold(v, a[c]);
              an[c] = nan_fold(v, an[c]);
            }
          } else {
            for (int64_t c = 0; c < nc; ++c) {
              a[c] += static_cast<A>(px[c]);
            }
          }
        }
      }
      if (is_max) {
        for (int64_t c = 0; c < nc; ++c) {
          a[c] = max_result(a[c], an[c]);
        }
      }
      const A scale = is_max ? A(1) : A(1) / A((h1 - h0) * (w1 - w0));
      T* py = yn + (o * s.Wo + q) * C + c0;
      for (int64_t c = 0; c < nc; ++c) {
        const A v = static_cast<A>(static_cast<T>(a[c] * scale));
        py[c] = static_cast<T>(v);
        bs[c] += double(v);
        bq[c] += double(v) * double(v);
      }
    }
  }
  for (int64_t c = 0; c < nc; ++c) {
    sum[c0 + c] = bs[c];
    sq[c0 + c] = bq[c];
  }
}

// pool_cl_block for the L = Vec<A>::L channels [c0, c0 + L) as one vector each.
template <typename T, typename A>
HNAS_VEC_INLINE void pool_cl_vec(const T* __restrict xn, T* __restrict yn, const PoolShape& s, bool is_max,
                                  int64_t c0, double* __restrict sum, double* __restrict sq) {
  using V = vec<A>;
  constexpr int64_t L = Vec<A>::L;
  const int64_t C = s.C, k = s.k, sd = s.stride;
  const V fill = is_max ? V{} - std::numeric_limits<A>::infinity() : V{};
  double bs[L] = {}, bq[L] = {};  // double: see pool_planes
  for (int64_t o = 0; o < s.Ho; ++o) {
    const int64_t h0 = window_begin(o, k, sd), h1 = window_end(o, k, sd, s.H);
    for (int64_t q = 0; q < s.Wo; ++q) {
      const int64_t w0 = window_begin(q, k, sd), w1 = window_end(q, k, sd, s.W);
      V a = fill, an = V{};
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t w = w0; w < w1; ++w) {
          const V v = ld_as<A>(xn + (h * s.W + w) * C + c0);
          if (is_max) {
            a = select<A>(v > a, v, a);     // max_fold
            an = select<A>(v != v, v, an);  // nan_fold
          } else {
            a += v;
          }
        }
      }
      a = is_max ? select<A>(an != an, an, a) : a * (A(1) / A((h1 - h0) * (w1 - w0)));
      T* py = yn + (o * s.Wo + q) * C + c0;
      st_as<A>(py, a);
      const V v = ld_as<A>(py);  // the stored (rounded) value, as the normalizing pass sees it
      for (int64_t c = 0; c < L; ++c) {
        bs[c] += double(v[c]);
        bq[c] += double(v[c]) * double(v[c]);
      }
    }
  }
  for (int64_t c = 0; c < L; ++c) {
    sum[c0 + c] = bs[c];
    sq[c0 + c] = bq[c];
  }
}

template <typename T, typename A>
void pool_channels_last(const T* __restrict x, T* __restrict y, const PoolShape& s, bool is_max,
                         double* __restrict psum, double* __restrict psq) {
  // Blocks of L channels as vectors, then the last C mod L channels (< CB) as one scalar block.
  constexpr int64_t L = Vec<A>::L;
  const int64_t C = s.C, full = C / L, blocks = full + (C % L != 0);
  parallel_cloned(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, b = item % blocks, c0 = b * L;
      const T* xn = x + n * s.H * s.W * C;
      T* yn = y + n * s.Ho * s.Wo * C;
      if (b < full) {
        pool_cl_vec<T, A>(xn, yn, s, is_max, c0, psum + n * C, psq + n * C);
      } else {
        pool_cl_block<T, A>(xn, yn, s, is_max, c0, C - c0, psum + n * C, psq + n * C);
      }
    }
  });
}

// Contiguous NCHW in float32/float64: each (sample, block of L channels) is transposed into a channels-last
// buffer (cpu_blocks.h), pooled there by pool_cl_vec, and transposed back, so both layouts share the
// vectorized window loops; pool_planes (one padded plane per (n, c), scalar at stride 2, per-plane setup
// that dominates small planes) remains for float16/bfloat16, whose statistics must be taken on the values
// rounded to the storage type.
template <typename T, typename A>
void pool_blocked(const T* __restrict x, T* __restrict y, const PoolShape& s, bool is_max, double* __restrict psum,
                  double* __restrict psq) {
  constexpr int64_t L = Vec<A>::L;
  const int64_t C = s.C, blocks = (C + L - 1) / L;
  PoolShape b = s;
  b.C = L;
  const View4 xv{C * s.H * s.W, s.H * s.W, s.W, 1}, yv{C * s.Ho * s.Wo, s.Ho * s.Wo, s.Wo, 1};
  parallel_cloned(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
    std::vector<A> xb(s.H * s.W * L), yb(s.Ho * s.Wo * L);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = item % blocks * L, nc = std::min(L, C - c0);
      load_padded<T, A>(x, xv, s.H, s.W, Padded{s.H, s.W, 0, 0}, n, c0, nc, false, xb.data());
      double sum[L], sq[L];
      pool_cl_vec<A, A>(xb.data(), yb.data(), b, is_max, 0, sum, sq);
      store_dense<T, A>(yb.data(), s.Ho, s.Wo, yv, n, c0, nc, y);
      for (int64_t l = 0; l < nc; ++l) {
        psum[n * C + c0 + l] = sum[l];
        psq[n * C + c0 + l] = sq[l];
      }
    }
  });
}

// out = (y - mean) * invstd in place; `cl`: channel = index mod C, else (index / plane) mod C.
template <typename T, typename A>
void normalize(T* __restrict y, const PoolShape& s, bool cl, const A* __restrict mean,
                const A* __restrict invstd) {
  const int64_t C = s.C, plane = s.Ho * s.Wo;
  if (cl) {
    parallel_cloned(0, s.N * plane, 256, [&](int64_t begin, int64_t end) HNAS_BODY {
      for (int64_t i = begin; i < end; ++i) {
        T* py = y + i * C;
        for (int64_t c = 0; c < C; ++c) {
          py[c] = static_cast<T>((static_cast<A>(py[c]) - mean[c]) * invstd[c]);
        }
      }
    });
  } else {
    parallel_cloned(0, s.N * C, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
      for (int64_t nc = begin; nc < end; ++nc) {
        const A m = mean[nc % C], is = invstd[nc % C];
        T* py = y + nc * plane;
        for (int64_t i = 0; i < plane; ++i) {
          py[i] = static_cast<T>((static_cast<A>(py[i]) - m) * is);
        }
      }
    });
  }
}

// ------------------------------------------------------------------------------------------ backward
// Per-channel partial sums of g and g * xhat: [N, C], as the forward's.
template <typename T>
void grad_sums(const T* __restrict g, const T* __restrict xhat, const PoolShape& s, bool cl,
                double* __restrict pg, double* __restrict pgx) {
  using A = at::opmath_type<T>;
  const int64_t C = s.C, plane = s.Ho * s.Wo;
  if (cl) {
    parallel_cloned(0, s.N, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
      for (int64_t n = begin; n < end; ++n) {
        double* __restrict a = pg + n * C;
        double* __restrict b = pgx + n * C;
        for (int64_t c = 0; c < C; ++c) {
          a[c] = b[c] = 0;
        }
        for (int64_t i = 0; i < plane; ++i) {
          const T* gi = g + (n * plane + i) * C;
          const T* xi = xhat + (n * plane + i) * C;
          for (int64_t c = 0; c < C; ++c) {
            const A gv = static_cast<A>(gi[c]);
            a[c] += gv;
            b[c] += double(gv * static_cast<A>(xi[c]));
          }
        }
      }
    });
  } else {
    // L running sums per plane, one per vector lane (a single scalar sum is bound by the add latency), flushed
    // to double every 16 vectors so long planes keep their precision.
    using V = vec<A>;
    constexpr int64_t L = Vec<A>::L;
    parallel_cloned(0, s.N * C, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
      for (int64_t nc = begin; nc < end; ++nc) {
        const T* gi = g + nc * plane;
        const T* xi = xhat + nc * plane;
        V a{}, b{};
        double da = 0, db = 0;
        const auto flush = [&]() HNAS_BODY {
          for (int64_t l = 0; l < L; ++l) {
            da += a[l];
            db += b[l];
          }
          a = b = V{};
        };
        int64_t i = 0;
        for (int64_t blocks = 1; i + L <= plane; i += L, ++blocks) {
          const V gv = ld_as<A>(gi + i);
          a += gv;
          b += gv * ld_as<A>(xi + i);
          if (blocks % 16 == 0) {
            flush();
          }
        }
        flush();
        for (; i < plane; ++i) {
          const A gv = static_cast<A>(gi[i]);
          da += gv;
          db += double(gv * static_cast<A>(xi[i]));
        }
        pg[nc] = da;
        pgx[nc] = db;
      }
    });
  }
}

// The routing kernels below take dL/dy of one output element (pool_math.h) as ca * g + cb + cc * xhat, with
// ca = invstd, cb = -invstd * mean(g), cc = -invstd * mean(g xhat) per channel.

// dL/dy of output row o (dv, consumed) routed into the padded plane B; pad holds x (max). S: the stride when
// known at compile time (1, 2), 0 for any other. With S known the tap loops along q are unit- or fixed-stride
// and vectorize.
template <typename A, int64_t S>
HNAS_VEC_INLINE void route_row(const A* __restrict pad, A* __restrict B, A* __restrict rv, A* __restrict dv,
                                const A* __restrict inv_w, const PoolShape& s, bool is_max, int64_t o, int64_t Wp,
                                A fill) {
  const int64_t k = s.k, st = S ? S : s.stride;
  if (is_max) {
    for (int64_t q = 0; q < s.Wo; ++q) {
      rv[q] = fill;
    }
    for (int64_t kh = 0; kh < k; ++kh) {
      const A* src = pad + (o * st + kh) * Wp;
      for (int64_t kw = 0; kw < k; ++kw) {
        for (int64_t q = 0; q < s.Wo; ++q) {
          const A v = src[q * st + kw];
          rv[q] = max_fold(v, rv[q]);
        }
      }
    }
    for (int64_t kh = 0; kh < k; ++kh) {
      const A* src = pad + (o * st + kh) * Wp;
      A* dst = B + (o * st + kh) * Wp;
      for (int64_t kw = 0; kw < k; ++kw) {
        for (int64_t q = 0; q < s.Wo; ++q) {
          const A v = src[q * st + kw];
          const bool hit = max_hit(v, rv[q]);
          dst[q * st + kw] += hit ? dv[q] : A(0);
          dv[q] = hit ? A(0) : dv[q];
        }
      }
    }
  } else {
    const A inv_h = A(1) / A(window_end(o, k, st, s.H) - window_begin(o, k, st));
    for (int64_t q = 0; q < s.Wo; ++q) {
      dv[q] *= inv_h * inv_w[q];
    }
    for (int64_t kh = 0; kh < k; ++kh) {
      A* dst = B + (o * st + kh) * Wp;
      for (int64_t kw = 0; kw < k; ++kw) {
        for (int64_t q = 0; q < s.Wo; ++q) {
          dst[q * st + kw] += dv[q];
        }
      }
    }
  }
}

// The routing is branch-free: the window's maximum r is recomputed, then the taps are visited in row-major
// order and the first one that max_hit()s takes dL/dy, which is then zeroed for the others.
template <typename T, typename A>
void route_planes(const T* __restrict g, const T* __restrict xhat, const T* __restrict x,
                   T* __restrict gx, const PoolShape& s, bool is_max, const A* __restrict ca,
                   const A* __restrict cb, const A* __restrict cc) {
  const int64_t k = s.k, st = s.stride, C = s.C, p = k / 2, Hp = s.H + 2 * p, Wp = s.W + 2 * p;
  const A fill = is_max ? -std::numeric_limits<A>::infinity() : A(0);
  parallel_cloned(0, s.N * C, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
    std::vector<A> pad(Hp * Wp, fill), buf(Hp * Wp), r(s.Wo), d(s.Wo), inv_w(s.Wo);
    for (int64_t q = 0; q < s.Wo; ++q) {
      inv_w[q] = A(1) / A(window_end(q, k, st, s.W) - window_begin(q, k, st));
    }
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t c = nc % C;
      const A a1 = ca[c], a0 = cb[c], a2 = cc[c];
      const T* gp = g + nc * s.Ho * s.Wo;
      const T* hp = xhat + nc * s.Ho * s.Wo;
      const T* xp = x + nc * s.H * s.W;
      if (is_max) {
        for (int64_t h = 0; h < s.H; ++h) {
          A* dst = pad.data() + (h + p) * Wp + p;
          for (int64_t w = 0; w < s.W; ++w) {
            dst[w] = static_cast<A>(xp[h * s.W + w]);
          }
        }
      }
      A* __restrict B = buf.data();
      for (int64_t i = 0; i < Hp * Wp; ++i) {
        B[i] = 0;
      }
      A* __restrict rv = r.data();
      A* __restrict dv = d.data();
      for (int64_t o = 0; o < s.Ho; ++o) {
        for (int64_t q = 0; q < s.Wo; ++q) {
          const int64_t j = o * s.Wo + q;
          dv[q] = a1 * static_cast<A>(gp[j]) + a0 + a2 * static_cast<A>(hp[j]);
        }
        if (st == 1) {
          route_row<A, 1>(pad.data(), B, rv, dv, inv_w.data(), s, is_max, o, Wp, fill);
        } else if (st == 2) {
          route_row<A, 2>(pad.data(), B, rv, dv, inv_w.data(), s, is_max, o, Wp, fill);
        } else {
          route_row<A, 0>(pad.data(), B, rv, dv, inv_w.data(), s, is_max, o, Wp, fill);
        }
      }
      T* gxp = gx + nc * s.H * s.W;
      for (int64_t h = 0; h < s.H; ++h) {
        const A* src = B + (h + p) * Wp + p;
        for (int64_t w = 0; w < s.W; ++w) {
          gxp[h * s.W + w] = static_cast<T>(src[w]);
        }
      }
    }
  });
}

template <typename T, typename A>
HNAS_VEC_INLINE void route_cl_block(const T* __restrict g, const T* __restrict xhat, const T* __restrict xn,
                                    A* __restrict B, const PoolShape& s, bool is_max, int64_t n, int64_t c0,
                                    int64_t nc, const A* __restrict ca, const A* __restrict cb,
                                    const A* __restrict cc) {
  const int64_t C = s.C, k = s.k, st = s.stride;
  for (int64_t o = 0; o < s.Ho; ++o) {
    const int64_t h0 = window_begin(o, k, st), h1 = window_end(o, k, st, s.H);
    for (int64_t q = 0; q < s.Wo; ++q) {
      const int64_t w0 = window_begin(q, k, st), w1 = window_end(q, k, st, s.W);
      const int64_t j = ((n * s.Ho + o) * s.Wo + q) * C + c0;
      A d[CB];
      for (int64_t c = 0; c < nc; ++c) {
        d[c] = ca[c0 + c] * static_cast<A>(g[j + c]) + cb[c0 + c] + cc[c0 + c] * static_cast<A>(xhat[j + c]);
      }
      if (is_max) {
        A r[CB];
        for (int64_t c = 0; c < nc; ++c) {
          r[c] = -std::numeric_limits<A>::infinity();
        }
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            const T* px = xn + (h * s.W + w) * C + c0;
            for (int64_t c = 0; c < nc; ++c) {
              const A v = static_cast<A>(px[c]);
              r[c] = max_fold(v, r[c]);
            }
          }
        }
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            const T* px = xn + (h * s.W + w) * C + c0;
            A* bp = B + (h * s.W + w) * C + c0;
            for (int64_t c = 0; c < nc; ++c) {
              const A v = static_cast<A>(px[c]);
              const bool hit = max_hit(v, r[c]);
              bp[c] += hit ? d[c] : A(0);
              d[c] = hit ? A(0) : d[c];
            }
          }
        }
      } else {
        const A inv = A(1) / A((h1 - h0) * (w1 - w0));
        for (int64_t c = 0; c < nc; ++c) {
          d[c] *= inv;
        }
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            A* bp = B + (h * s.W + w) * C + c0;
            for (int64_t c = 0; c < nc; ++c) {
              bp[c] += d[c];
            }
          }
        }
      }
    }
  }
}

// The same for the L = Vec<A>::L channels [c0, c0 + L) as one vector each (the common case: C a multiple of
// 16 in float32, of 8 in float64).
template <typename T, typename A>
HNAS_VEC_INLINE void route_cl_vec(const T* __restrict g, const T* __restrict xhat, const T* __restrict xn,
                                   A* __restrict B, const PoolShape& s, bool is_max, int64_t n, int64_t c0,
                                   const A* __restrict ca, const A* __restrict cb, const A* __restrict cc) {
  using V = vec<A>;
  const int64_t C = s.C, k = s.k, sd = s.stride;
  const V a1 = ld(ca + c0), a0 = ld(cb + c0), a2 = ld(cc + c0);
  const V ninf = V{} - std::numeric_limits<A>::infinity();
  for (int64_t o = 0; o < s.Ho; ++o) {
    const int64_t h0 = window_begin(o, k, sd), h1 = window_end(o, k, sd, s.H);
    for (int64_t q = 0; q < s.Wo; ++q) {
      const int64_t w0 = window_begin(q, k, sd), w1 = window_end(q, k, sd, s.W);
      const int64_t j = ((n * s.Ho + o) * s.Wo + q) * C + c0;
      V d = a1 * ld_as<A>(g + j) + a0 + a2 * ld_as<A>(xhat + j);
      if (is_max) {
        V r = ninf;
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            const V v = ld_as<A>(xn + (h * s.W + w) * C + c0);
            r = select<A>(v > r, v, r);  // max_fold
          }
        }
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            const V v = ld_as<A>(xn + (h * s.W + w) * C + c0);
            A* bp = B + (h * s.W + w) * C + c0;
            const auto miss = v < r;  // max_hit is its negation
            st(bp, ld(bp) + zero_where<A>(d, miss));
            d = zero_where<A>(d, ~miss);
          }
        }
      } else {
        d *= A(1) / A((h1 - h0) * (w1 - w0));
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            A* bp = B + (h * s.W + w) * C + c0;
            st(bp, ld(bp) + d);
          }
        }
      }
    }
  }
}

template <typename T, typename A>
void route_channels_last(const T* __restrict g, const T* __restrict xhat, const T* __restrict x,
                          T* __restrict gx, const PoolShape& s, bool is_max, const A* __restrict ca,
                          const A* __restrict cb, const A* __restrict cc) {
  const int64_t C = s.C, HW = s.H * s.W;
  parallel_cloned(0, s.N, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
    std::vector<A> buf(HW * C);
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * HW * C;
      A* __restrict B = buf.data();
      for (int64_t i = 0; i < HW * C; ++i) {
        B[i] = 0;
      }
      constexpr int64_t L = Vec<A>::L;
      int64_t c0 = 0;
      for (; c0 + L <= C; c0 += L) {
        route_cl_vec<T, A>(g, xhat, xn, B, s, is_max, n, c0, ca, cb, cc);
      }
      if (c0 < C) {  // the last C mod L channels (< CB)
        route_cl_block<T, A>(g, xhat, xn, B, s, is_max, n, c0, C - c0, ca, cb, cc);
      }
      T* gxn = gx + n * HW * C;
      for (int64_t i = 0; i < HW * C; ++i) {
        gxn[i] = static_cast<T>(B[i]);
      }
    }
  });
}

// The backward of pool_blocked: g, xhat and (max) x of each item transposed into channels-last buffers,
// routed by route_cl_vec into a zeroed one, transposed back into gx.
template <typename T, typename A>
void route_blocked(const T* __restrict g, const T* __restrict xhat, const T* __restrict x, T* __restrict gx,
                   const PoolShape& s, bool is_max, const A* __restrict ca, const A* __restrict cb,
                   const A* __restrict cc) {
  constexpr int64_t L = Vec<A>::L;
  const int64_t C = s.C, blocks = (C + L - 1) / L, HW = s.H * s.W, HWo = s.Ho * s.Wo;
  PoolShape b = s;
  b.C = L;
  const View4 xv{C * HW, HW, s.W, 1}, gv{C * HWo, HWo, s.Wo, 1};
  const Padded px{s.H, s.W, 0, 0}, pg{s.Ho, s.Wo, 0, 0};
  parallel_cloned(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) HNAS_BODY {
    std::vector<A> xb(is_max ? HW * L : 0), gb(HWo * L), hb(HWo * L), buf(HW * L);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = item % blocks * L, nc = std::min(L, C - c0);
      A a1[L] = {}, a0[L] = {}, a2[L] = {};  // lanes past C stay 0
      for (int64_t l = 0; l < nc; ++l) {
        a1[l] = ca[c0 + l];
        a0[l] = cb[c0 + l];
        a2[l] = cc[c0 + l];
      }
      if (is_max) {
        load_padded<T, A>(x, xv, s.H, s.W, px, n, c0, nc, false, xb.data());
      }
      load_padded<T, A>(g, gv, s.Ho, s.Wo, pg, n, c0, nc, false, gb.data());
      load_padded<T, A>(xhat, gv, s.Ho, s.Wo, pg, n, c0, nc, false, hb.data());
      std::fill(buf.begin(), buf.end(), A(0));
      route_cl_vec<A, A>(gb.data(), hb.data(), xb.data(), buf.data(), b, is_max, 0, 0, a1, a0, a2);
      store_dense<T, A>(buf.data(), s.H, s.W, xv, n, c0, nc, gx);
    }
  });
}


// The running statistics' update, as F.batch_norm's: r = (1 - momentum) r + momentum v, in double, for each of
// the C channels (contiguous float32/float64 r in place; other dtypes and strides through ATen).
void update_running(at::Tensor& r, const std::vector<double>& v, double momentum) {
  const int64_t C = r.size(0);
  if (r.is_contiguous() && (r.scalar_type() == at::kFloat || r.scalar_type() == at::kDouble)) {
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "pool_bn_running", [&] {
      scalar_t* p = r.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        p[c] = static_cast<scalar_t>((1 - momentum) * double(p[c]) + momentum * v[c]);
      }
    });
    return;
  }
  const at::Tensor vt = at::tensor(at::ArrayRef<double>(v), r.options().dtype(at::kDouble));
  r.mul_(1 - momentum).add_(vt.to(r.scalar_type()), momentum);
}

// A [C] tensor of the accumulation type `acc` holding v.
at::Tensor stats_tensor(const std::vector<double>& v, at::ScalarType acc, const at::TensorOptions& opts) {
  at::Tensor t = at::empty({int64_t(v.size())}, opts.dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "pool_bn_stats", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    for (size_t c = 0; c < v.size(); ++c) {
      p[c] = static_cast<scalar_t>(v[c]);
    }
  });
  return t;
}

// Column sums of the [N, C] partials over n, in n order (thread-count independent).
std::vector<double> sum_over_samples(const std::vector<double>& part, int64_t N, int64_t C) {
  std::vector<double> total(C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      total[c] += part[n * C + c];
    }
  }
  return total;
}

}  // namespace

// The per-channel finishing work (statistics, running update, backward coefficients) is done in plain loops
// over C rather than a dozen small ATen ops: on 64x64x8x8 those cost about as much as the kernels.
std::tuple<at::Tensor, at::Tensor> pool_bn_cpu(const at::Tensor& x_in, bool is_max, int64_t kernel_size,
                                               int64_t stride, const std::optional<at::Tensor>& running_mean,
                                               const std::optional<at::Tensor>& running_var, bool training,
                                               double momentum, double eps) {
  const PoolShape s = check_pool_bn_args(x_in, kernel_size, stride, running_mean, running_var, training, momentum,
                                         eps);
  const auto fmt = output_memory_format(x_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(fmt));
  const bool batch = pool_bn_batch_stats(training, running_mean);
  const auto acc = stats_type(x.scalar_type());
  std::vector<double> psum(s.N * s.C), psq(s.N * s.C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_bn_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr bool blocked = std::is_same_v<scalar_t, A>;  // see pool_blocked
    (cl ? pool_channels_last<scalar_t, A> : blocked ? pool_blocked<scalar_t, A> : pool_planes<scalar_t, A>)(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s, is_max, psum.data(), psq.data());
  });
  at::Tensor mean, invstd;
  if (batch) {
    const double M = double(s.N * s.Ho * s.Wo);
    std::vector<double> m = sum_over_samples(psum, s.N, s.C), var = sum_over_samples(psq, s.N, s.C);
    std::vector<double> inv(s.C);
    for (int64_t c = 0; c < s.C; ++c) {
      m[c] /= M;
      var[c] = std::max(var[c] / M - m[c] * m[c], 0.0);
      inv[c] = 1 / std::sqrt(var[c] + eps);
    }
    mean = stats_tensor(m, acc, x.options());
    invstd = stats_tensor(inv, acc, x.options());
    if (running_mean.has_value() && running_mean->defined() && training) {
      at::Tensor rm = *running_mean, rv = *running_var;
      update_running(rm, m, momentum);
      for (int64_t c = 0; c < s.C; ++c) {
        var[c] *= M / (M - 1);  // the running variance is unbiased
      }
      update_running(rv, var, momentum);
    }
  } else {
    mean = running_mean->to(at::kDouble).to(acc);
    invstd = (running_var->to(at::kDouble) + eps).rsqrt().to(acc);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_bn_cpu_normalize", [&] {
    using A = at::opmath_type<scalar_t>;
    normalize<scalar_t, A>(out.mutable_data_ptr<scalar_t>(), s, cl, mean.const_data_ptr<A>(),
                           invstd.const_data_ptr<A>());
  });
  return {out, invstd};
}

at::Tensor pool_bn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& out_in,
                                const at::Tensor& invstd_in, bool is_max, int64_t kernel_size, int64_t stride,
                                bool batch_stats) {
  const PoolShape s = check_pool_bn_backward_args(grad_out, x_in, out_in, invstd_in, kernel_size, stride);
  const auto fmt = output_memory_format(x_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(fmt), g = grad_out.contiguous(fmt), xhat = out_in.contiguous(fmt);
  const at::Tensor inv_t = invstd_in.to(at::kDouble).contiguous();
  const double* inv = inv_t.const_data_ptr<double>();
  std::vector<double> ca(inv, inv + s.C), cb(s.C, 0.0), cc(s.C, 0.0);
  if (batch_stats) {
    std::vector<double> pg(s.N * s.C), pgx(s.N * s.C);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_bn_backward_sums", [&] {
      grad_sums<scalar_t>(g.const_data_ptr<scalar_t>(), xhat.const_data_ptr<scalar_t>(), s, cl, pg.data(),
                          pgx.data());
    });
    const double M = double(s.N * s.Ho * s.Wo);
    const std::vector<double> sg = sum_over_samples(pg, s.N, s.C), sgx = sum_over_samples(pgx, s.N, s.C);
    for (int64_t c = 0; c < s.C; ++c) {
      cb[c] = -inv[c] * sg[c] / M;
      cc[c] = -inv[c] * sgx[c] / M;
    }
  }
  at::Tensor gx = at::empty_like(x, x.options().memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_bn_backward_route", [&] {
    using A = at::opmath_type<scalar_t>;
    const std::vector<A> a1(ca.begin(), ca.end()), a0(cb.begin(), cb.end()), a2(cc.begin(), cc.end());
    constexpr bool blocked = std::is_same_v<scalar_t, A>;
    (cl ? route_channels_last<scalar_t, A> : blocked ? route_blocked<scalar_t, A> : route_planes<scalar_t, A>)(
        g.const_data_ptr<scalar_t>(), xhat.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        gx.mutable_data_ptr<scalar_t>(), s, is_max, a1.data(), a0.data(), a2.data());
  });
  return gx;
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CPU, m) {
  m.impl("pool_bn", &hnas_fast::pool_bn_cpu);
  m.impl("pool_bn_backward", &hnas_fast::pool_bn_backward_cpu);
}
