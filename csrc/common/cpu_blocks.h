// Copies between a 4-d tensor of any strides and the CPU kernels' working buffers: one sample's block of L
// channels (L = Vec<acc>::L, one 64-byte vector) as a channels-last plane of pixels of L lanes, optionally
// inside a zero border. The depthwise convolution and pooling+BN kernels compute on these planes, so each
// kernel has one inner loop for every input layout; contiguous NCHW blocks move 16 pixels x 16 channels at a
// time through an in-register transpose. Host code only.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_vec.h"
#include "depthwise_math.h"

namespace hnas_fast {

// relu_if (depthwise_math.h) for a whole vector: a NaN compares false, so it passes.
template <typename T>
HNAS_VEC_INLINE vec<T> relu_vec(vec<T> v) {
  return zero_where<T>(v, v < vec<T>{});
}

struct View4 {
  int64_t sn, sc, sh, sw;
};
inline View4 view_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// A zero-bordered channels-last plane of rows x cols pixels whose interior starts at (top, left).
struct Padded {
  int64_t rows, cols, top, left;
};

// Zeroes the pixels of a padded plane outside its h x w interior.
template <typename acc>
HNAS_VEC_INLINE void zero_border(acc* plane, const Padded& pd, int64_t h, int64_t w) {
  constexpr int64_t L = Vec<acc>::L;
  std::fill(plane, plane + pd.top * pd.cols * L, acc(0));
  for (int64_t i = pd.top; i < pd.top + h; ++i) {
    acc* row = plane + i * pd.cols * L;
    std::fill(row, row + pd.left * L, acc(0));
    std::fill(row + (pd.left + w) * L, row + pd.cols * L, acc(0));
  }
  std::fill(plane + (pd.top + h) * pd.cols * L, plane + pd.rows * pd.cols * L, acc(0));
}

// The interior of `plane` = t[n, c0 : c0 + nc, :h, :w] (ReLU'd when `relu`), zero elsewhere.
template <typename scalar_t, typename acc>
HNAS_VEC_INLINE void load_padded(const scalar_t* t, const View4& v, int64_t h, int64_t w, const Padded& pd,
                                 int64_t n, int64_t c0, int64_t nc, bool relu, acc* plane) {
  constexpr int64_t L = Vec<acc>::L;
  if (nc < L) {
    std::fill(plane, plane + pd.rows * pd.cols * L, acc(0));
  } else {
    zero_border(plane, pd, h, w);
  }
  const scalar_t* tn = t + n * v.sn + c0 * v.sc;
  acc* interior = plane + (pd.top * pd.cols + pd.left) * L;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sc == 1 && nc == L) {  // channels_last: a pixel's block is one vector
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          const vec<acc> val = ld(tn + i * v.sh + j * v.sw);
          st(interior + (i * pd.cols + j) * L, relu ? relu_vec<acc>(val) : val);
        }
      }
      return;
    }
  }
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sw == 1 && v.sh == w && nc == L) {
      // Contiguous channel planes (NCHW): L consecutive pixels of the L channels at a time, one cache line
      // per channel, transposed in registers into L pixel vectors.
      const int64_t pixels = h * w;
      int64_t p = 0, i = 0, jj = 0;  // (i, jj): the image pixel of flat index p
      const auto next = [&] {
        ++p;
        if (++jj == w) {
          jj = 0;
          ++i;
        }
      };
      vec<acc> blk[L];
      while (p + L <= pixels) {
        for (int64_t l = 0; l < L; ++l) {
          const vec<acc> val = ld(tn + l * v.sc + p);
          blk[l] = relu ? relu_vec<acc>(val) : val;
        }
        transpose_block<acc>(blk);
        for (int64_t b = 0; b < L; ++b, next()) {
          st(interior + (i * pd.cols + jj) * L, blk[b]);
        }
      }
      for (; p < pixels; next()) {
        acc* dst = interior + (i * pd.cols + jj) * L;
        for (int64_t l = 0; l < L; ++l) {
          dst[l] = relu_if(tn[l * v.sc + p], relu);
        }
      }
      return;
    }
  }
  if (v.sc == 1) {  // lanes adjacent in memory: pixel by pixel
    for (int64_t i = 0; i < h; ++i) {
      for (int64_t j = 0; j < w; ++j) {
        const scalar_t* src = tn + i * v.sh + j * v.sw;
        acc* dst = interior + (i * pd.cols + j) * L;
        for (int64_t l = 0; l < nc; ++l) {
          dst[l] = relu_if(static_cast<acc>(src[l]), relu);
        }
      }
    }
    return;
  }
  // Channel planes (NCHW): one image row of one channel at a time. Lane-inner loops would read nc
  // addresses a whole plane apart, which share an L1 set and evict each other.
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t l = 0; l < nc; ++l) {
      const scalar_t* src = tn + l * v.sc + i * v.sh;
      acc* dst = interior + i * pd.cols * L + l;
      for (int64_t j = 0; j < w; ++j) {
        dst[j * L] = relu_if(static_cast<acc>(src[j * v.sw]), relu);
      }
    }
  }
}

// t[n, c0 + l, o, q] = buf[o, q, l] for l < nc (buf: h rows of w pixels).
template <typename scalar_t, typename acc>
HNAS_VEC_INLINE void store_dense(const acc* buf, int64_t h, int64_t w, const View4& v, int64_t n, int64_t c0,
                                 int64_t nc, scalar_t* t) {
  constexpr int64_t L = Vec<acc>::L;
  scalar_t* tn = t + n * v.sn + c0 * v.sc;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sc == 1 && nc == L) {
      for (int64_t o = 0; o < h; ++o) {
        for (int64_t q = 0; q < w; ++q) {
          st(tn + o * v.sh + q * v.sw, ld(buf + (o * w + q) * L));
        }
      }
      return;
    }
  }
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (v.sw == 1 && v.sh == w && nc == L) {  // contiguous channel planes: as in load_padded, reversed
      const int64_t pixels = h * w;
      int64_t p0 = 0;
      vec<acc> blk[L];
      for (; p0 + L <= pixels; p0 += L) {
        for (int64_t b = 0; b < L; ++b) {
          blk[b] = ld(buf + (p0 + b) * L);
        }
        transpose_block<acc>(blk);
        for (int64_t l = 0; l < L; ++l) {
          st(tn + l * v.sc + p0, blk[l]);
        }
      }
      for (int64_t p = p0; p < pixels; ++p) {
        for (int64_t l = 0; l < L; ++l) {
          tn[l * v.sc + p] = buf[p * L + l];
        }
      }
      return;
    }
  }
  if (v.sc == 1) {
    for (int64_t o = 0; o < h; ++o) {
      for (int64_t q = 0; q < w; ++q) {
        const acc* src = buf + (o * w + q) * L;
        scalar_t* dst = tn + o * v.sh + q * v.sw;
        for (int64_t l = 0; l < nc; ++l) {
          dst[l] = static_cast<scalar_t>(src[l]);
        }
      }
    }
    return;
  }
  for (int64_t o = 0; o < h; ++o) {  // channel planes: row by row, as in load_padded
    for (int64_t l = 0; l < nc; ++l) {
      const acc* src = buf + o * w * L + l;
      scalar_t* dst = tn + l * v.sc + o * v.sh;
      for (int64_t q = 0; q < w; ++q) {
        dst[q * v.sw] = static_cast<scalar_t>(src[q * L]);
      }
    }
  }
}

}  // namespace hnas_fast
