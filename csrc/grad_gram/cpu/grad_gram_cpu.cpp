// CPU kernels of grad_gram and grad_gram_row.
//
// The parameter tensors are treated as one virtual concatenation of columns (never built): a tile of columns
// (kTileBytes of doubles, L1-sized) is gathered from whichever tensors cover it, widened to double (m rows,
// zero-padded to a multiple of kR rows), and every kR x kR block of the upper triangle is accumulated over the
// tile in kR*kR vector registers: each loaded vector feeds kR FMAs instead of one. Small tensors (BN affine
// parameters) therefore cost nothing extra: they share tiles with their neighbours.
//
// Determinism: the chunks are cut into kGroups fixed ranges, independent of the thread count; each range
// keeps its own accumulators, and the ranges are summed in order at the end.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../common/cpu_vec.h"
#include "../../common/grad_gram_math.h"
#include "../grad_gram.h"

namespace hnas_fast {
namespace {

using dvec = vec<double>;
constexpr int64_t kL = Vec<double>::L;
constexpr int kR = 4;             // rows per register block: kR*kR accumulators + 2*kR operands < 32 zmm
constexpr int64_t kGroups = 64;   // fixed reduction ranges (deterministic whatever the thread count)
constexpr int64_t kTileBytes = 24 * 1024;

// One parameter tensor seen as [rows, n] with rows `row_stride` elements apart, each row contiguous.
struct Source {
  const void* data;
  at::ScalarType dtype;
  int64_t n;
  int64_t row_stride;
  int64_t offset;  // first column of this tensor in the virtual concatenation
};

// A 2-D view [rows, n] of g whose rows are contiguous, copying (in g's own dtype) only when they are not.
at::Tensor rows_view(const at::Tensor& g) {
  const int64_t rows = g.size(0);
  at::Tensor flat = g.dim() == 1 ? g.unsqueeze(1) : g;
  if (flat.numel() > 0 && !flat.select(0, 0).is_contiguous()) {
    flat = flat.contiguous();
  }
  int64_t n = 1;
  for (int64_t d = 1; d < flat.dim(); ++d) {
    n *= flat.size(d);
  }
  return flat.as_strided({rows, n}, {flat.stride(0), 1});
}

std::vector<Source> sources(const std::vector<at::Tensor>& views) {
  std::vector<Source> out;
  int64_t offset = 0;
  for (const auto& v : views) {
    if (v.size(1) == 0) {
      continue;
    }
    out.push_back({v.data_ptr(), v.scalar_type(), v.size(1), v.stride(0), offset});
    offset += v.size(1);
  }
  return out;
}

int64_t total_columns(const std::vector<Source>& src) {
  return src.empty() ? 0 : src.back().offset + src.back().n;
}

// Columns per tile: the tile (m rows of doubles) stays within kTileBytes, a multiple of the vector length.
int64_t tile_columns(int64_t rows) {
  const int64_t cols = kTileBytes / (8 * std::max<int64_t>(rows, 1));
  return std::max<int64_t>(kL, std::min<int64_t>(1024, cols / kL * kL));
}

template <typename S>
HNAS_VEC_INLINE void widen_row(const S* src, double* dst, int64_t len) {
  int64_t j = 0;
  if constexpr (std::is_same_v<S, float>) {
    typedef float half_vec __attribute__((vector_size(32)));
    for (; j + kL <= len; j += kL) {
      half_vec h;
      std::memcpy(&h, src + j, sizeof(h));
      st(dst + j, __builtin_convertvector(h, dvec));
    }
  }
  for (; j < len; ++j) {
    dst[j] = gram_widen(src[j]);
  }
}
template <>
HNAS_VEC_INLINE void widen_row<double>(const double* src, double* dst, int64_t len) {
  std::memcpy(dst, src, sizeof(double) * len);
}

// Rows [0, rows) of columns [lo, lo + cols) of the virtual concatenation into tile (row pitch `pitch`),
// zero-filling past the last column. `first` is a hint: the index of the source holding column lo.
// With kPrefetch nothing is written: the same bytes are only requested into L2, a tile ahead, so the next
// tile's DRAM reads overlap this tile's FMAs (without it the widening stalls on memory, ~40% of the time).
template <bool kPrefetch>
HNAS_VEC_INLINE void gather(const std::vector<Source>& src, size_t& first, int64_t lo, int64_t cols, int64_t rows,
                            double* tile, int64_t pitch) {
  while (first + 1 < src.size() && src[first + 1].offset <= lo) {
    ++first;
  }
  int64_t done = 0;
  for (size_t s = first; s < src.size() && lo + done < src[s].offset + src[s].n && done < cols; ++s) {
    const Source& g = src[s];
    const int64_t from = lo + done - g.offset;
    const int64_t len = std::min(cols - done, g.n - from);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t at = r * g.row_stride + from;
      if constexpr (kPrefetch) {
        const int64_t es = static_cast<int64_t>(c10::elementSize(g.dtype));
        const char* p = static_cast<const char*>(g.data) + at * es;
        for (int64_t b = 0; b < len * es; b += 64) {
          __builtin_prefetch(p + b, 0, 2);
        }
        continue;
      }
      double* dst = tile + r * pitch + done;
      // A switch, not AT_DISPATCH: its lambdas would escape the ISA clone this body is inlined into.
      switch (g.dtype) {
        case at::kFloat: widen_row(static_cast<const float*>(g.data) + at, dst, len); break;
        case at::kDouble: widen_row(static_cast<const double*>(g.data) + at, dst, len); break;
        case at::kHalf: widen_row(static_cast<const at::Half*>(g.data) + at, dst, len); break;
        case at::kBFloat16: widen_row(static_cast<const at::BFloat16*>(g.data) + at, dst, len); break;
        default: break;  // rejected by the input checks
      }
    }
    done += len;
  }
  if constexpr (!kPrefetch) {
    for (int64_t r = 0; r < rows; ++r) {
      std::fill(tile + r * pitch + done, tile + r * pitch + cols, 0.0);
    }
  }
}

// Tile `c` of the range ending before tile `end` (cols columns each, N in all) into `tile`, vecs*kL columns
// wide, and the next tile of the range requested ahead.
HNAS_VEC_INLINE void stage(const std::vector<Source>& src, size_t& first, int64_t c, int64_t end, int64_t cols,
                           int64_t N, int64_t vecs, int64_t rows, double* tile, int64_t pitch) {
  gather<false>(src, first, c * cols, vecs * kL, rows, tile, pitch);
  if (c + 1 < end) {
    size_t ahead = first;
    gather<true>(src, ahead, (c + 1) * cols, std::min(cols, N - (c + 1) * cols), rows, nullptr, 0);
  }
}

// The kR*kR vector accumulators at acc (unaligned doubles: std::vector does not honour a vector type's
// 64-byte alignment) += kR rows at ta x kR rows at tb over `vecs` vectors of the tile. A diagonal block
// (kDiag, ta == tb) loads its rows once and skips the kR*(kR-1)/2 pairs below the diagonal.
template <bool kDiag>
HNAS_VEC_INLINE void block(const double* ta, const double* tb, int64_t pitch, int64_t vecs, double* acc) {
  dvec c[kR][kR];
  for (int i = 0; i < kR; ++i) {
    for (int k = 0; k < kR; ++k) {
      c[i][k] = ld(acc + (i * kR + k) * kL);
    }
  }
  for (int64_t v = 0; v < vecs; ++v) {
    dvec a[kR];
    dvec b[kR];
    for (int i = 0; i < kR; ++i) {
      a[i] = ld(ta + i * pitch + v * kL);
      b[i] = kDiag ? a[i] : ld(tb + i * pitch + v * kL);
    }
    for (int i = 0; i < kR; ++i) {
      for (int k = kDiag ? i : 0; k < kR; ++k) {
        c[i][k] += a[i] * b[k];
      }
    }
  }
  for (int i = 0; i < kR; ++i) {
    for (int k = 0; k < kR; ++k) {
      st(acc + (i * kR + k) * kL, c[i][k]);
    }
  }
}

// The kL lanes at p summed in lane order.
HNAS_VEC_INLINE double hsum(const double* p) {
  double s = 0;
  for (int64_t l = 0; l < kL; ++l) {
    s += p[l];
  }
  return s;
}

// Fixed cut of `chunks` into kGroups ranges: range g is [bound(g), bound(g + 1)).
int64_t bound(int64_t g, int64_t chunks, int64_t groups) { return chunks * g / groups; }

}  // namespace

at::Tensor grad_gram_cpu(at::TensorList grads) {
  check_grad_gram_inputs(grads);
  const int64_t m = grads[0].size(0);
  const int64_t P = gram_pairs(m);
  std::vector<at::Tensor> views;
  for (const auto& g : grads) {
    views.push_back(rows_view(g));
  }
  const std::vector<Source> src = sources(views);
  const int64_t N = total_columns(src);
  const int64_t blocks = (m + kR - 1) / kR;
  const int64_t mp = blocks * kR;
  const int64_t cols = tile_columns(mp);
  const int64_t chunks = (N + cols - 1) / cols;
  const int64_t groups = std::min(kGroups, std::max<int64_t>(chunks, 1));
  const int64_t block_pairs = blocks * (blocks + 1) / 2;
  const int64_t pitch = cols + kL;  // not a power of two: rows of the tile do not share L1 sets
  // Per range: the upper triangle as kR x kR blocks, reduced to scalars at the range's end.
  std::vector<double> partial(groups * mp * mp, 0.0);
  parallel_cloned(0, groups, 1, [&](int64_t g0, int64_t g1) HNAS_BODY {
    std::vector<double> tile(mp * pitch, 0.0);
    std::vector<double> acc(block_pairs * kR * kR * kL);
    for (int64_t g = g0; g < g1; ++g) {
      std::fill(acc.begin(), acc.end(), 0.0);
      size_t first = 0;
      const int64_t end = bound(g + 1, chunks, groups);
      for (int64_t c = bound(g, chunks, groups); c < end; ++c) {
        const int64_t vecs = (std::min(cols, N - c * cols) + kL - 1) / kL;
        stage(src, first, c, end, cols, N, vecs, m, tile.data(), pitch);
        double* a = acc.data();
        for (int64_t i = 0; i < blocks; ++i) {
          for (int64_t k = i; k < blocks; ++k, a += kR * kR * kL) {
            const double* ta = tile.data() + i * kR * pitch;
            if (k == i) {
              block<true>(ta, ta, pitch, vecs, a);
            } else {
              block<false>(ta, tile.data() + k * kR * pitch, pitch, vecs, a);
            }
          }
        }
      }
      double* out = partial.data() + g * mp * mp;
      const double* a = acc.data();
      for (int64_t i = 0; i < blocks; ++i) {
        for (int64_t k = i; k < blocks; ++k, a += kR * kR * kL) {
          for (int r = 0; r < kR; ++r) {
            for (int s = 0; s < kR; ++s) {
              out[(i * kR + r) * mp + k * kR + s] = hsum(a + (r * kR + s) * kL);
            }
          }
        }
      }
    }
  });
  at::Tensor packed = at::empty({P}, at::TensorOptions().dtype(at::kDouble));
  double* pk = packed.data_ptr<double>();
  for (int64_t a = 0; a < m; ++a) {
    for (int64_t b = a; b < m; ++b) {
      double s = 0;
      for (int64_t g = 0; g < groups; ++g) {
        s += partial[g * mp * mp + a * mp + b];
      }
      pk[gram_pair_index(a, b, m)] = s;
    }
  }
  return gram_from_pairs(packed, m);
}

at::Tensor grad_gram_row_cpu(at::TensorList held, at::TensorList grads, int64_t rows) {
  check_grad_gram_row_inputs(held, grads, rows);
  std::vector<at::Tensor> held_views;
  std::vector<at::Tensor> new_views;
  for (size_t i = 0; i < grads.size(); ++i) {
    held_views.push_back(rows_view(held[i]));
    new_views.push_back(rows_view(grads[i].reshape({1, -1})));
  }
  const std::vector<Source> hs = sources(held_views);
  const std::vector<Source> gs = sources(new_views);
  const int64_t N = total_columns(gs);
  // Tile rows 0..rows-1: the held gradients; row `rows`: the new one; zero rows up to a multiple of kR.
  const int64_t blocks = rows / kR + 1;
  const int64_t mp = blocks * kR;
  const int64_t cols = tile_columns(mp);
  const int64_t chunks = (N + cols - 1) / cols;
  const int64_t groups = std::min(kGroups, std::max<int64_t>(chunks, 1));
  const int64_t pitch = cols + kL;
  std::vector<double> partial(groups * mp, 0.0);
  parallel_cloned(0, groups, 1, [&](int64_t g0, int64_t g1) HNAS_BODY {
    std::vector<double> tile(mp * pitch, 0.0);
    std::vector<double> acc(mp * kL);
    for (int64_t g = g0; g < g1; ++g) {
      std::fill(acc.begin(), acc.end(), 0.0);
      size_t hfirst = 0;
      size_t gfirst = 0;
      const int64_t end = bound(g + 1, chunks, groups);
      for (int64_t c = bound(g, chunks, groups); c < end; ++c) {
        const int64_t vecs = (std::min(cols, N - c * cols) + kL - 1) / kL;
        stage(hs, hfirst, c, end, cols, N, vecs, rows, tile.data(), pitch);
        stage(gs, gfirst, c, end, cols, N, vecs, 1, tile.data() + rows * pitch, pitch);
        const double* a = tile.data() + rows * pitch;
        for (int64_t i = 0; i < blocks; ++i) {
          dvec c4[kR];
          for (int k = 0; k < kR; ++k) {
            c4[k] = ld(acc.data() + (i * kR + k) * kL);
          }
          const double* b = tile.data() + i * kR * pitch;
          for (int64_t v = 0; v < vecs; ++v) {
            const dvec av = ld(a + v * kL);
            for (int k = 0; k < kR; ++k) {
              c4[k] += av * ld(b + k * pitch + v * kL);
            }
          }
          for (int k = 0; k < kR; ++k) {
            st(acc.data() + (i * kR + k) * kL, c4[k]);
          }
        }
      }
      for (int64_t j = 0; j <= rows; ++j) {
        partial[g * mp + j] = hsum(acc.data() + j * kL);
      }
    }
  });
  at::Tensor out = at::empty({rows + 1}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (int64_t j = 0; j <= rows; ++j) {
    double s = 0;
    for (int64_t g = 0; g < groups; ++g) {
      s += partial[g * mp + j];
    }
    o[j] = s;
  }
  return out;
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CPU, m) {
  m.impl("grad_gram", &hnas_fast::grad_gram_cpu);
  m.impl("grad_gram_row", &hnas_fast::grad_gram_row_cpu);
}
