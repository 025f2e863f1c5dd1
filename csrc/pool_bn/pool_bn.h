// Pooling (max or average, k x k, padding k / 2, stride s) fused with the search network's
// BatchNorm2d(affine=False): shapes, the checks every backend shares and the backend entry points. The
// math is in common/pool_math.h.
//
//   x             [N, C, H, W]   any strides; float16 / bfloat16 / float32 / float64
//   running_mean  [C] or none    updated in place in training, as BatchNorm2d does (float32 or x's dtype)
//   running_var   [C] or none
//   out           [N, C, Ho, Wo] in the memory format of x, the dtype of x
//   invstd        [C]            1 / sqrt(var + eps) of the statistics used (float32; float64 for float64)
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace hnas_fast {

struct PoolShape {
  int64_t N, C, H, W, k, stride, Ho, Wo;
};

PoolShape check_pool_bn_args(const at::Tensor& x, int64_t kernel_size, int64_t stride,
                             const std::optional<at::Tensor>& running_mean,
                             const std::optional<at::Tensor>& running_var, bool training, double momentum,
                             double eps);
PoolShape check_pool_bn_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out,
                                      const at::Tensor& invstd, int64_t kernel_size, int64_t stride);
// Batch statistics are used in training and whenever there are no running statistics (as F.batch_norm).
inline bool pool_bn_batch_stats(bool training, const std::optional<at::Tensor>& running_mean) {
  return training || !running_mean.has_value() || !running_mean->defined();
}

std::tuple<at::Tensor, at::Tensor> pool_bn_cpu(const at::Tensor& x, bool is_max, int64_t kernel_size,
                                               int64_t stride, const std::optional<at::Tensor>& running_mean,
                                               const std::optional<at::Tensor>& running_var, bool training,
                                               double momentum, double eps);
at::Tensor pool_bn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out,
                                const at::Tensor& invstd, bool is_max, int64_t kernel_size, int64_t stride,
                                bool batch_stats);

}  // namespace hnas_fast
