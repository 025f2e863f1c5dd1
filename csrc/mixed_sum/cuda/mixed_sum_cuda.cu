// CUDA kernels of the mixed-edge sum. Candidate pointers travel by value in a fixed-size pack;
// larger K is processed in slices. The dL/dw reduction writes one partial per block and candidate,
// summed afterwards in a fixed order, so results are deterministic.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../common/mixed_sum_math.h"
#include "../mixed_sum.h"

namespace hnas_fast {
namespace {

constexpr int kMaxK = 8;  // candidates per launch; registers hold one dot accumulator each
constexpr int kThreads = 256;

template <typename scalar_t>
struct Pack {
  const scalar_t* y[kMaxK];
  scalar_t* gy[kMaxK];
};

template <typename scalar_t, typename acc>
__global__ void forward_kernel(Pack<scalar_t> p, const acc* __restrict__ w, int K, bool accumulate,
                               scalar_t* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc sum = accumulate ? static_cast<acc>(out[i]) : acc(0);
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < K) {
        mixed_sum_fma(sum, w[k], p.y[k][i]);
      }
    }
    out[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const scalar_t* __restrict__ g_in, Pack<scalar_t> p, const acc* __restrict__ w,
                                int K, bool grad_y, double* __restrict__ partial, int64_t n) {
  double dot[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    dot[k] = 0.0;
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc g = static_cast<acc>(g_in[i]);
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < K) {
        scalar_t gy;
        mixed_sum_backward_element(g, w[k], p.y[k][i], dot[k], gy);
        if (grad_y) {
          p.gy[k][i] = gy;
        }
      }
    }
  }
  if (partial == nullptr) {
    return;
  }
  __shared__ double red[kThreads];
  for (int k = 0; k < K; ++k) {
    red[threadIdx.x] = dot[k];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        red[threadIdx.x] += red[threadIdx.x + s];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      partial[blockIdx.x * static_cast<int64_t>(K) + k] = red[0];
    }
    __syncthreads();
  }
}

int grid_for(int64_t n) {
  int device = 0;
  int sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, sms * 8)));
}

}  // namespace

at::Tensor mixed_sum_cuda(at::TensorList ys_in, const at::Tensor& weights) {
  check_mixed_sum_inputs(ys_in, weights);
  const c10::cuda::CUDAGuard guard(ys_in[0].device());
  const auto ys = dense_like_first(ys_in);
  at::Tensor out = at::empty_like(ys[0]);
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(ys.size());
  if (n == 0) {
    return out;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixed_sum_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const at::Tensor w = weights.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    for (int64_t k0 = 0; k0 < K; k0 += kMaxK) {
      Pack<scalar_t> p{};
      const int kn = static_cast<int>(std::min<int64_t>(kMaxK, K - k0));
      for (int j = 0; j < kn; ++j) {
        p.y[j] = ys[k0 + j].data_ptr<scalar_t>();
      }
      forward_kernel<scalar_t, acc><<<grid_for(n), kThreads, 0, stream>>>(
          p, w.data_ptr<acc>() + k0, kn, k0 > 0, out.data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(const at::Tensor& grad_out,
                                                                        at::TensorList ys_in,
                                                                        const at::Tensor& weights,
                                                                        bool need_ys_grad,
                                                                        bool need_weights_grad) {
  check_mixed_sum_backward_inputs(grad_out, ys_in, weights);
  const c10::cuda::CUDAGuard guard(ys_in[0].device());
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
  const int grid = grid_for(n);
  at::Tensor partial;
  if (need_weights_grad) {
    partial = at::empty({grid, K}, g.options().dtype(at::kDouble));
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const at::Tensor w = weights.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    for (int64_t k0 = 0; k0 < K; k0 += kMaxK) {
      Pack<scalar_t> p{};
      const int kn = static_cast<int>(std::min<int64_t>(kMaxK, K - k0));
      for (int j = 0; j < kn; ++j) {
        p.y[j] = ys[k0 + j].data_ptr<scalar_t>();
        p.gy[j] = need_ys_grad ? grad_ys[k0 + j].data_ptr<scalar_t>() : nullptr;
      }
      at::Tensor slice;
      if (need_weights_grad) {
        slice = at::empty({grid, kn}, partial.options());
      }
      backward_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), p, w.data_ptr<acc>() + k0, kn, need_ys_grad,
          need_weights_grad ? slice.data_ptr<double>() : nullptr, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_weights_grad) {
        partial.narrow(1, k0, kn).copy_(slice);
      }
    }
  });
  if (need_weights_grad) {
    grad_w = partial.sum(0).to(weights.scalar_type());
  }
  return {grad_ys, grad_w};
}

}  // namespace hnas_fast

TORCH_LIBRARY_IMPL(hnas_fast, CUDA, m) {
  m.impl("mixed_sum", &hnas_fast::mixed_sum_cuda);
  m.impl("mixed_sum_backward", &hnas_fast::mixed_sum_backward_cuda);
}
