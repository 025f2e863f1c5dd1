// CUDA kernel of grad_gram, tiled as the CPU kernel: the parameter tensors are one virtual concatenation of
// columns (one launch for all of them, whatever their number or dtypes). The m rows are cut into 64-row
// blocks; blockIdx.y picks a pair (I <= J) of row blocks, so any m runs in the same kernel. Per column tile,
// the block stages rows I and J widened to double in shared memory, and each of its 16x16 threads
// accumulates a 4x4 register block of pairs (8 shared loads per 16 FMAs). Each block writes its partial
// pairs once; the partials are summed over blockIdx.x in a fixed order (deterministic on a given GPU).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../../common/grad_gram_math.h"
#include "../grad_gram.h"

namespace hnas_fast {
namespace {

constexpr int kRows = 64;  // rows per row block
constexpr int kR = 4;      // rows per thread, each side
constexpr int kSide = kRows / kR;
constexpr int kCols = 32;  // columns per tile

enum : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

struct DevSource {
  const void* data;
  int64_t n;
  int64_t row_stride;
  int64_t offset;
  int dtype;
};

__device__ double widen(const DevSource& s, int64_t at) {
  switch (s.dtype) {
    case kF32: return gram_widen(static_cast<const float*>(s.data)[at]);
    case kF64: return gram_widen(static_cast<const double*>(s.data)[at]);
    case kF16: return gram_widen(static_cast<const at::Half*>(s.data)[at]);
    default: return gram_widen(static_cast<const at::BFloat16*>(s.data)[at]);
  }
}

// Rows [r0, r0 + kRows) of the tile at column lo into sh; zero past m or past the last column.
__device__ void stage(double (*sh)[kCols + 1], const DevSource* src, int count, int first, int64_t lo,
                      int64_t N, int r0, int m) {
  for (int e = threadIdx.y * kSide + threadIdx.x; e < kRows * kCols; e += kSide * kSide) {
    const int r = e / kCols;
    const int j = e % kCols;
    const int64_t col = lo + j;
    double v = 0.0;
    if (r0 + r < m && col < N) {
      int s = first;
      while (s + 1 < count && src[s + 1].offset <= col) {
        ++s;
      }
      v = widen(src[s], (r0 + r) * src[s].row_stride + (col - src[s].offset));
    }
    sh[r][j] = v;
  }
}

__global__ void gram_kernel(const DevSource* __restrict__ src, int count, const int* __restrict__ tile_first,
                            int64_t tiles, int64_t N, int m, const int* __restrict__ block_pairs,
                            double* __restrict__ partial, int64_t P) {
  __shared__ double sa[kRows][kCols + 1];
  __shared__ double sb[kRows][kCols + 1];
  const int I = block_pairs[2 * blockIdx.y];
  const int J = block_pairs[2 * blockIdx.y + 1];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const bool active = I != J || ty <= tx;  // on a diagonal block pair, only the upper thread blocks
  double acc[kR][kR] = {};
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    __syncthreads();
    stage(sa, src, count, tile_first[t], t * kCols, N, I * kRows, m);
    if (I != J) {
      stage(sb, src, count, tile_first[t], t * kCols, N, J * kRows, m);
    }
    __syncthreads();
    if (active) {
      const double (*tb)[kCols + 1] = I == J ? sa : sb;
      for (int j = 0; j < kCols; ++j) {
        double a[kR];
        double b[kR];
        for (int i = 0; i < kR; ++i) {
          a[i] = sa[ty * kR + i][j];
          b[i] = tb[tx * kR + i][j];
        }
        for (int i = 0; i < kR; ++i) {
          for (int k = 0; k < kR; ++k) {
            acc[i][k] += a[i] * b[k];
          }
        }
      }
    }
  }
  if (!active) {
    return;
  }
  for (int i = 0; i < kR; ++i) {
    for (int k = 0; k < kR; ++k) {
      const int a = I * kRows + ty * kR + i;
      const int b = J * kRows + tx * kR + k;
      if (a <= b && b < m) {
        partial[blockIdx.x * P + gram_pair_index(a, b, m)] = acc[i][k];
      }
    }
  }
}

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    default: return kBF16;  // the input checks admit floating types only
  }
}

}  // namespace

at::Tensor grad_gram_cuda(at::TensorList grads) {
  check_grad_gram_inputs(grads);
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const int64_t m = grads[0].size(0);
  const int64_t P = gram_pairs(m);
  const auto opts = grads[0].options().dtype(at::kDouble);
  // Copied views (rare) are freed after the launch: the caching allocator orders their reuse on this stream.
  std::vector<at::Tensor> keep;
  std::vector<DevSource> host;
  int64_t N = 0;
  for (const auto& g : grads) {
    at::Tensor v = g.dim() == 1 ? g.unsqueeze(1) : g;
    if (v.numel() > 0 && !v.select(0, 0).is_contiguous()) {
      v = v.contiguous();
    }
    const int64_t n = v.numel() / m;
    if (n == 0) {
      continue;
    }
    keep.push_back(v);
    host.push_back({v.data_ptr(), n, v.stride(0), N, dtype_code(v.scalar_type())});
    N += n;
  }
  if (N == 0) {
    return at::zeros({m, m}, opts);
  }
  const int64_t tiles = (N + kCols - 1) / kCols;
  std::vector<int> first(tiles);
  for (int64_t t = 0, s = 0; t < tiles; ++t) {
    while (s + 1 < static_cast<int64_t>(host.size()) && host[s + 1].offset <= t * kCols) {
      ++s;
    }
    first[t] = static_cast<int>(s);
  }
  const int64_t blocks = (m + kRows - 1) / kRows;
  std::vector<int> pairs;
  for (int64_t i = 0; i < blocks; ++i) {
    for (int64_t k = i; k < blocks; ++k) {
      pairs.push_back(static_cast<int>(i));
      pairs.push_back(static_cast<int>(k));
    }
  }
  const auto dev = grads[0].device();
  const auto bytes = [&](const void* p, size_t n) {
    at::Tensor h = at::empty({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(h.data_ptr(), p, n);
    return h.to(dev);
  };
  const at::Tensor d_src = bytes(host.data(), host.size() * sizeof(DevSource));
  const at::Tensor d_first = bytes(first.data(), first.size() * sizeof(int));
  const at::Tensor d_pairs = bytes(pairs.data(), pairs.size() * sizeof(int));
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev.index()));
  const int64_t ny = static_cast<int64_t>(pairs.size() / 2);
  const int gx = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(tiles, 8 * sms / ny + 1)));
  TORCH_CHECK(ny <= 65535, "grad_gram: m = ", m, " needs ", ny, " row-block pairs, above CUDA's grid limit");
  at::Tensor partial = at::zeros({gx, P}, opts);
  gram_kernel<<<dim3(gx, static_cast<unsigned>(ny)), dim3(kSide, kSide), 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const DevSource*>(d_src.data_ptr()), static_cast<int>(host.size()), static_cast<const int*>(d_first.data_ptr()),
      tiles, N, static_cast<int>(m), static_cast<const int*>(d_pairs.data_ptr()), partial.data_ptr<double>(), P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gram_from_pairs(partial.sum(0), m);
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CUDA, m) {
  m.impl("grad_gram", &hnas_fast::grad_gram_cuda);
}
