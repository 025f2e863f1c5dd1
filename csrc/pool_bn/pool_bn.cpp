// Schema of the fused pool + BatchNorm op, the checks every backend shares, and the CUDA fallback.
//
// CUDA tensors: until the CUDA kernel lands (issue 17) they run through at::max_pool2d / at::avg_pool2d and
// at::native_batch_norm with the same contract (the argmax is recomputed in backward), so the op never fails
// on a GPU; it is only not faster there.
#include "pool_bn.h"

#include <torch/library.h>

#include "../common/pool_math.h"
#include "../common/tensor_args.h"

namespace hnas_fast {
namespace {

void check_stat(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) {
    return;
  }
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), "pool_bn: ", name, " must have shape [C] with C = ",
              x.size(1), ", got ", t->sizes());
  TORCH_CHECK(is_float_type(t->scalar_type()), "pool_bn: ", name, " must be a float tensor, got ",
              t->scalar_type());
  TORCH_CHECK(t->device() == x.device(), "pool_bn: ", name, " is on ", t->device(), " but x is on ", x.device());
}

}  // namespace

PoolShape check_pool_bn_args(const at::Tensor& x, int64_t kernel_size, int64_t stride,
                             const std::optional<at::Tensor>& running_mean,
                             const std::optional<at::Tensor>& running_var, bool training, double momentum,
                             double eps) {
  TORCH_CHECK(x.dim() == 4, "pool_bn: x must be 4-D [N, C, H, W], got ", x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "pool_bn: x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "pool_bn: kernel_size must be odd and >= 1, got ",
              kernel_size);
  TORCH_CHECK(stride >= 1, "pool_bn: stride must be >= 1, got ", stride);
  TORCH_CHECK(x.size(1) >= 1 && x.size(0) >= 1, "pool_bn: x must have at least one sample and channel, got ",
              x.sizes());
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, "pool_bn: x must have H, W >= 1, got ", x.sizes());
  const bool has_mean = running_mean.has_value() && running_mean->defined();
  const bool has_var = running_var.has_value() && running_var->defined();
  TORCH_CHECK(has_mean == has_var, "pool_bn: running_mean and running_var must be given together");
  check_stat(running_mean, "running_mean", x);
  check_stat(running_var, "running_var", x);
  TORCH_CHECK(eps > 0, "pool_bn: eps must be > 0, got ", eps);
  TORCH_CHECK(momentum >= 0 && momentum <= 1, "pool_bn: momentum must be in [0, 1], got ", momentum);
  PoolShape s{x.size(0), x.size(1), x.size(2), x.size(3), kernel_size, stride, 0, 0};
  s.Ho = pool_out_size(s.H, kernel_size, stride);
  s.Wo = pool_out_size(s.W, kernel_size, stride);
  TORCH_CHECK(s.Ho >= 1 && s.Wo >= 1, "pool_bn: x of size ", s.H, "x", s.W, " is too small for kernel ",
              kernel_size);
  TORCH_CHECK(!pool_bn_batch_stats(training, running_mean) || s.N * s.Ho * s.Wo > 1,
              "pool_bn: batch statistics need more than one value per channel in training, got output shape [", s.N, ", ", s.C,
              ", ", s.Ho, ", ", s.Wo, "]");
  return s;
}

PoolShape check_pool_bn_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out,
                                      const at::Tensor& invstd, int64_t kernel_size, int64_t stride) {
  const PoolShape s = check_pool_bn_args(x, kernel_size, stride, std::nullopt, std::nullopt, true, 0.1, 1e-5);
  for (const at::Tensor* t : {&grad_out, &out}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == s.N && t->size(1) == s.C && t->size(2) == s.Ho && t->size(3) == s.Wo,
                "pool_bn_backward: grad_out and out must have the output's shape [", s.N, ", ", s.C, ", ", s.Ho,
                ", ", s.Wo, "], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "pool_bn_backward: grad_out and out must have the dtype and device of x");
  }
  TORCH_CHECK(invstd.dim() == 1 && invstd.size(0) == s.C, "pool_bn_backward: invstd must have shape [C], got ",
              invstd.sizes());
  return s;
}

namespace {

at::Tensor pool(const at::Tensor& x, bool is_max, int64_t k, int64_t s) {
  return is_max ? at::max_pool2d(x, {k, k}, {s, s}, {k / 2, k / 2})
                : at::avg_pool2d(x, {k, k}, {s, s}, {k / 2, k / 2}, false, /*count_include_pad=*/false);
}

std::tuple<at::Tensor, at::Tensor> pool_bn_fallback(const at::Tensor& x, bool is_max, int64_t kernel_size,
                                                    int64_t stride, const std::optional<at::Tensor>& running_mean,
                                                    const std::optional<at::Tensor>& running_var, bool training,
                                                    double momentum, double eps) {
  check_pool_bn_args(x, kernel_size, stride, running_mean, running_var, training, momentum, eps);
  const bool batch = pool_bn_batch_stats(training, running_mean);
  const at::Tensor y = pool(x, is_max, kernel_size, stride);
  auto [out, mean, invstd] = at::native_batch_norm(y, std::nullopt, std::nullopt, running_mean, running_var, batch,
                                                   momentum, eps);
  const auto acc = stats_type(x.scalar_type());
  if (!batch) {
    invstd = at::rsqrt(running_var->to(acc) + eps);
  }
  return {out.contiguous(output_memory_format(x)), invstd.to(acc)};
}

at::Tensor pool_bn_backward_fallback(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out,
                                     const at::Tensor& invstd, bool is_max, int64_t k, int64_t s,
                                     bool batch_stats) {
  check_pool_bn_backward_args(grad_out, x, out, invstd, k, s);
  const auto acc = invstd.scalar_type();
  const at::Tensor g = grad_out.to(acc), xhat = out.to(acc);
  const at::Tensor inv = invstd.view({1, -1, 1, 1});
  at::Tensor gy = batch_stats ? inv * (g - g.mean({0, 2, 3}, true) - xhat * (g * xhat).mean({0, 2, 3}, true))
                              : inv * g;
  gy = gy.to(x.scalar_type());
  if (is_max) {
    auto [y, idx] = at::max_pool2d_with_indices(x, {k, k}, {s, s}, {k / 2, k / 2});
    return at::max_pool2d_with_indices_backward(gy, x, {k, k}, {s, s}, {k / 2, k / 2}, {1, 1}, false, idx);
  }
  return at::avg_pool2d_backward(gy, x, {k, k}, {s, s}, {k / 2, k / 2}, false, false, std::nullopt);
}

}  // namespace
}  // namespace hnas_fast

TORCH_LIBRARY_FRAGMENT(hnas_fast, m) {
  m.def("pool_bn(Tensor x, bool is_max, int kernel_size, int stride, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps) -> (Tensor out, Tensor invstd)");
  m.def("pool_bn_backward(Tensor grad_out, Tensor x, Tensor out, Tensor invstd, bool is_max, int kernel_size, "
        "int stride, bool batch_stats) -> Tensor");
}

TORCH_LIBRARY_IMPL(hnas_fast, CUDA, m) {
  m.impl("pool_bn", &hnas_fast::pool_bn_fallback);
  m.impl("pool_bn_backward", &hnas_fast::pool_bn_backward_fallback);
}
