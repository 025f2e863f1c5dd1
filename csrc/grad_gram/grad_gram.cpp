// Schema of grad_gram: sum over parameter tensors i of G_i G_i^T (G_i = grads[i] as [m, n_i]), in float64,
// without concatenating the parameters. Used by gradient confusion (StacNAS 3.4.2).
// grad_gram_row: one new row of that Gram, the new gradient against the `rows` already held and itself, so a
// streamed measurement folds each gradient in as its backward ends.
#include "grad_gram.h"

#include <torch/library.h>

#include "../common/grad_gram_math.h"

namespace hnas_fast {

void check_grad_gram_inputs(at::TensorList grads) {
  TORCH_CHECK(!grads.empty(), "grad_gram: grads must hold at least one tensor");
  const auto& g0 = grads[0];
  TORCH_CHECK(g0.dim() >= 1 && g0.size(0) >= 1, "grad_gram: grads[0] must be [m, ...] with m >= 1, got shape ",
              g0.sizes());
  const int64_t m = g0.size(0);
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i];
    TORCH_CHECK(g.dim() >= 1 && g.size(0) == m, "grad_gram: grads[", i, "] must have m = ", m,
                " rows (dim 0) like grads[0], got shape ", g.sizes());
    TORCH_CHECK(at::isFloatingType(g.scalar_type()), "grad_gram: grads[", i, "] must be floating point, got ",
                g.scalar_type());
    TORCH_CHECK(g.device() == g0.device(), "grad_gram: grads[", i, "] is on ", g.device(), " but grads[0] is on ",
                g0.device());
  }
}

void check_grad_gram_row_inputs(at::TensorList held, at::TensorList grads, int64_t rows) {
  TORCH_CHECK(!grads.empty(), "grad_gram_row: grads must hold at least one tensor");
  TORCH_CHECK(held.size() == grads.size(), "grad_gram_row: held has ", held.size(), " tensors but grads has ",
              grads.size());
  TORCH_CHECK(rows >= 0, "grad_gram_row: rows must be >= 0, got ", rows);
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& h = held[i];
    const auto& g = grads[i];
    TORCH_CHECK(h.dim() >= 1 && h.size(0) >= rows, "grad_gram_row: held[", i, "] must be [k, ...] with k >= rows = ",
                rows, ", got shape ", h.sizes());
    TORCH_CHECK(h.sizes().slice(1) == g.sizes(), "grad_gram_row: grads[", i, "] must have shape ",
                h.sizes().slice(1), " (held[", i, "] without its first dim), got ", g.sizes());
    TORCH_CHECK(at::isFloatingType(g.scalar_type()), "grad_gram_row: grads[", i, "] must be floating point, got ",
                g.scalar_type());
    TORCH_CHECK(at::isFloatingType(h.scalar_type()), "grad_gram_row: held[", i, "] must be floating point, got ",
                h.scalar_type());
    TORCH_CHECK(g.device() == grads[0].device() && h.device() == grads[0].device(), "grad_gram_row: held[", i,
                "] and grads[", i, "] must be on ", grads[0].device(), " like grads[0]");
  }
}

at::Tensor gram_from_pairs(const at::Tensor& packed, int64_t m) {
  const at::Tensor idx = at::triu_indices(m, m, 0, packed.options().dtype(at::kLong));
  at::Tensor gram = at::zeros({m, m}, packed.options());
  gram.index_put_({idx[0], idx[1]}, packed);
  gram.index_put_({idx[1], idx[0]}, packed);
  return gram;
}

}  // namespace hnas_fast

TORCH_LIBRARY_FRAGMENT(hnas_fast, m) {
  m.def("grad_gram(Tensor[] grads) -> Tensor");
  m.def("grad_gram_row(Tensor[] held, Tensor[] grads, int rows) -> Tensor");
}
