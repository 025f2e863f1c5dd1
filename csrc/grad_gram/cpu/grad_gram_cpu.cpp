// CPU kernel of grad_gram: column tiles of the m gradients are widened to double once, then every pair's
// dot product runs over the tile from L1/L2. Per-tile partials are summed in tile order (deterministic,
// independent of the thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../common/grad_gram_math.h"
#include "../grad_gram.h"

namespace hnas_fast {
namespace {

constexpr int64_t kCols = 512;  // columns per tile: m rows of doubles stay in L2 for m up to ~64
// Independent accumulators: enough vector registers in flight to hide the FMA latency.
constexpr int kLanes = 32;

HNAS_CPU_CLONES double dot_lanes(const double* a, const double* b, int64_t len) {
  double lanes[kLanes] = {};
  const int64_t body = len - len % kLanes;
  for (int64_t j = 0; j < body; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      gram_accumulate(lanes[l], a[j + l], b[j + l]);
    }
  }
  for (int64_t j = body; j < len; ++j) {
    gram_accumulate(lanes[j - body], a[j], b[j]);
  }
  double total = 0;
  for (int l = 0; l < kLanes; ++l) {
    total += lanes[l];
  }
  return total;
}

template <typename scalar_t>
void widen(const scalar_t* src, double* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    dst[j] = static_cast<double>(src[j]);
  }
}

}  // namespace

at::Tensor grad_gram_cpu(at::TensorList grads) {
  check_grad_gram_inputs(grads);
  const int64_t m = grads[0].size(0);
  const int64_t P = gram_pairs(m);
  std::vector<double> total(P, 0.0);
  for (const auto& g_in : grads) {
    const at::Tensor g = g_in.contiguous();
    const int64_t n = m == 0 ? 0 : g.numel() / m;
    if (n == 0) {
      continue;
    }
    const int64_t tiles = (n + kCols - 1) / kCols;
    std::vector<double> partial(tiles * P);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_gram_cpu", [&] {
      const scalar_t* gp = g.data_ptr<scalar_t>();
      at::parallel_for(0, tiles, 8, [&](int64_t t0, int64_t t1) {
        std::vector<double> tile(m * kCols);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t lo = t * kCols;
          const int64_t len = std::min(kCols, n - lo);
          for (int64_t a = 0; a < m; ++a) {
            widen(gp + a * n + lo, tile.data() + a * kCols, len);
          }
          double* out = partial.data() + t * P;
          for (int64_t a = 0; a < m; ++a) {
            for (int64_t b = a; b < m; ++b) {
              out[gram_pair_index(a, b, m)] = dot_lanes(tile.data() + a * kCols, tile.data() + b * kCols, len);
            }
          }
        }
      });
    });
    for (int64_t t = 0; t < tiles; ++t) {
      for (int64_t p = 0; p < P; ++p) {
        total[p] += partial[t * P + p];
      }
    }
  }
  at::Tensor packed = at::empty({P}, at::TensorOptions().dtype(at::kDouble));
  std::copy(total.begin(), total.end(), packed.data_ptr<double>());
  return gram_from_pairs(packed, m);
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CPU, m) {
  m.impl("grad_gram", &hnas_fast::grad_gram_cpu);
}
