// Batched pairwise gradient inner products: checks and layout shared by every backend.
#pragma once

#include <ATen/ATen.h>

namespace hnas_fast {

// Validates grads (each [m, ...] with the same m, floating, one device), naming the offending entry.
void check_grad_gram_inputs(at::TensorList grads);

// Validates grad_gram_row's held ([k, *shape_i], k >= rows) and grads ([*shape_i]), naming the entry.
void check_grad_gram_row_inputs(at::TensorList held, at::TensorList grads, int64_t rows);

// Fills the symmetric m x m float64 Gram from its packed upper triangle.
at::Tensor gram_from_pairs(const at::Tensor& packed, int64_t m);

at::Tensor grad_gram_cpu(at::TensorList grads);
at::Tensor grad_gram_row_cpu(at::TensorList held, at::TensorList grads, int64_t rows);
#ifdef HNAS_WITH_CUDA
at::Tensor grad_gram_cuda(at::TensorList grads);
#endif

}  // namespace hnas_fast
