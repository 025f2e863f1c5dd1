// The mixed-edge sum: schema-level checks and layout helpers shared by every backend.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace hnas_fast {

// Validates (ys, weights) and names the offending argument in the error.
void check_mixed_sum_inputs(at::TensorList ys, const at::Tensor& weights);

// The same, plus grad_out against ys[0] (shape, dtype, device).
void check_mixed_sum_backward_inputs(const at::Tensor& grad_out, at::TensorList ys, const at::Tensor& weights);

// Returns the candidates in one common dense layout (the first candidate's when it is dense,
// else contiguous) so that kernels can walk all of them, and the output, as flat arrays.
std::vector<at::Tensor> dense_like_first(at::TensorList ys);

// Returns `t` in the same dense layout as `like` (a copy only when the strides differ).
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like);

at::Tensor mixed_sum_cpu(at::TensorList ys, const at::Tensor& weights);
std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(
    const at::Tensor& grad_out, at::TensorList ys, const at::Tensor& weights, bool need_ys_grad,
    bool need_weights_grad);

#ifdef HNAS_WITH_CUDA
at::Tensor mixed_sum_cuda(at::TensorList ys, const at::Tensor& weights);
std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(
    const at::Tensor& grad_out, at::TensorList ys, const at::Tensor& weights, bool need_ys_grad,
    bool need_weights_grad);
#endif

}  // namespace hnas_fast
