// One 64-byte vector of the accumulation type and the few operations the CPU kernels build on (GCC vector
// extensions: each target clone, HNAS_CPU_CLONES, lowers them to its own ISA, one zmm register under
// AVX-512, two ymm under AVX2). Host code only.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <ATen/Parallel.h>

#include "macros.h"

#define HNAS_VEC_INLINE inline __attribute__((always_inline))
// For a lambda handed to parallel_cloned: `[&](int64_t begin, int64_t end) HNAS_BODY { ... }`.
#define HNAS_BODY __attribute__((always_inline))

namespace hnas_fast {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
  typedef int32_t mask __attribute__((vector_size(64)));
  static constexpr int64_t L = 16;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
  typedef int64_t mask __attribute__((vector_size(64)));
  static constexpr int64_t L = 8;
};
template <typename T>
using vec = typename Vec<T>::type;
template <typename T>
using vmask = typename Vec<T>::mask;

// Lanes of v where `drop` is set become +0; with bit operations, because a vector `?:` may be lowered to
// one unpredictable branch per lane in the code built for the baseline ISA.
template <typename T>
HNAS_VEC_INLINE vec<T> zero_where(vec<T> v, vmask<T> drop) {
  return reinterpret_cast<vec<T>>(reinterpret_cast<vmask<T>>(v) & ~drop);
}
// a where `take` is set, b elsewhere (bit operations, as zero_where).
template <typename T>
HNAS_VEC_INLINE vec<T> select(vmask<T> take, vec<T> a, vec<T> b) {
  return reinterpret_cast<vec<T>>((reinterpret_cast<vmask<T>>(a) & take) | (reinterpret_cast<vmask<T>>(b) & ~take));
}

template <typename T>
HNAS_VEC_INLINE vec<T> ld(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
HNAS_VEC_INLINE void st(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
// L elements of storage type S read as (or written from) one vector of A = float or double.
template <typename A, typename S>
HNAS_VEC_INLINE vec<A> ld_as(const S* p) {
  if constexpr (std::is_same_v<S, A>) {
    return ld(reinterpret_cast<const A*>(p));
  } else {
    vec<A> v;
    for (int64_t i = 0; i < Vec<A>::L; ++i) {
      v[i] = static_cast<A>(p[i]);
    }
    return v;
  }
}
template <typename A, typename S>
HNAS_VEC_INLINE void st_as(S* p, vec<A> v) {
  if constexpr (std::is_same_v<S, A>) {
    st(reinterpret_cast<A*>(p), v);
  } else {
    for (int64_t i = 0; i < Vec<A>::L; ++i) {
      p[i] = static_cast<S>(v[i]);
    }
  }
}

// The L x L block v[0], ..., v[L-1] transposed in place (v[r][c] <- v[c][r]): the off-diagonal blocks swap at
// every scale L/2, ..., 1, one two-input shuffle per vector and scale (log2 L of them per vector, against
// L scalar moves per vector for an element-wise transpose).
template <typename T>
HNAS_VEC_INLINE void transpose_block(vec<T>* v) {
  constexpr int64_t L = Vec<T>::L;
#pragma GCC unroll 4
  for (int64_t s = L / 2; s >= 1; s /= 2) {
    vmask<T> lo, hi;
#pragma GCC unroll 16
    for (int64_t j = 0; j < L; ++j) {
      lo[j] = (j & s) ? L + j - s : j;
      hi[j] = (j & s) ? L + j : j + s;
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < L; ++i) {
      if (i & s) {
        continue;
      }
      const vec<T> a = v[i], b = v[i + s];
      v[i] = __builtin_shuffle(a, b, lo);
      v[i + s] = __builtin_shuffle(a, b, hi);
    }
  }
}

// at::parallel_for runs its body through lambdas that target_clones does not reach, so a body written inline
// would be built for the baseline ISA only (64-byte vectors split into SSE2 halves). parallel_cloned inlines
// the body (declared HNAS_BODY) into a cloned trampoline instead, so each ISA gets its own copy.
template <typename F>
HNAS_CPU_CLONES void run_cloned(const F& body, int64_t begin, int64_t end) {
  body(begin, end);
}
template <typename F>
void parallel_cloned(int64_t begin, int64_t end, int64_t grain, const F& body) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { run_cloned(body, b, e); });
}

}  // namespace hnas_fast
