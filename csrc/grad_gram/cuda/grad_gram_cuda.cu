// CUDA kernel of grad_gram: each block walks column tiles of one parameter tensor's m gradients,
// widening them to double in shared memory; one thread owns each (a, b) pair and accumulates its dot
// product across tiles. Per-block partials are summed in a fixed order (deterministic). For m above
// kMaxM the op falls back to a float64 matmul per tensor.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../../common/grad_gram_math.h"
#include "../grad_gram.h"

namespace hnas_fast {
namespace {

constexpr int kMaxM = 32;
constexpr int kMaxP = kMaxM * (kMaxM + 1) / 2;
constexpr int kTile = 64;
constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void gram_kernel(const scalar_t* __restrict__ g, int m, int64_t n, double* __restrict__ partial) {
  __shared__ double tile[kMaxM * kTile];
  __shared__ double acc[kMaxP];
  __shared__ unsigned char pa[kMaxP];
  __shared__ unsigned char pb[kMaxP];
  const int P = static_cast<int>(gram_pairs(m));
  if (threadIdx.x == 0) {
    for (int a = 0; a < m; ++a) {
      for (int b = a; b < m; ++b) {
        const int p = static_cast<int>(gram_pair_index(a, b, m));
        pa[p] = static_cast<unsigned char>(a);
        pb[p] = static_cast<unsigned char>(b);
      }
    }
  }
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    acc[p] = 0.0;
  }
  for (int64_t lo = blockIdx.x * static_cast<int64_t>(kTile); lo < n; lo += static_cast<int64_t>(gridDim.x) * kTile) {
    __syncthreads();
    const int64_t len = min(static_cast<int64_t>(kTile), n - lo);
    for (int e = threadIdx.x; e < m * kTile; e += blockDim.x) {
      const int a = e / kTile;
      const int j = e % kTile;
      if constexpr (std::is_same_v<scalar_t, double>) {
        tile[e] = j < len ? g[a * n + lo + j] : 0.0;
      } else {
        tile[e] = j < len ? static_cast<double>(static_cast<float>(g[a * n + lo + j])) : 0.0;
      }
    }
    __syncthreads();
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
      const double* ra = tile + pa[p] * kTile;
      const double* rb = tile + pb[p] * kTile;
      double s = 0.0;
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) {
        gram_accumulate(s, ra[j], rb[j]);
      }
      acc[p] += s;
    }
  }
  __syncthreads();
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    partial[blockIdx.x * static_cast<int64_t>(P) + p] = acc[p];
  }
}

}  // namespace

at::Tensor grad_gram_cuda(at::TensorList grads) {
  check_grad_gram_inputs(grads);
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const int64_t m = grads[0].size(0);
  const auto opts = grads[0].options().dtype(at::kDouble);
  if (m > kMaxM) {
    at::Tensor gram = at::zeros({m, m}, opts);
    for (const auto& g : grads) {
      const at::Tensor flat = g.reshape({m, -1}).to(at::kDouble);
      gram.add_(at::mm(flat, flat.t()));
    }
    return gram;
  }
  const int64_t P = gram_pairs(m);
  int device = 0;
  int sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  at::Tensor packed = at::zeros({P}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (const auto& g_in : grads) {
    const at::Tensor g = g_in.contiguous();
    const int64_t n = g.numel() / m;
    if (n == 0) {
      continue;
    }
    const int grid = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kTile - 1) / kTile, sms * 4)));
    at::Tensor partial = at::empty({grid, P}, opts);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_gram_cuda", [&] {
      gram_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(g.data_ptr<scalar_t>(), static_cast<int>(m), n,
                                                           partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    packed.add_(partial.sum(0));
  }
  return gram_from_pairs(packed, m);
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CUDA, m) {
  m.impl("grad_gram", &hnas_fast::grad_gram_cuda);
}
