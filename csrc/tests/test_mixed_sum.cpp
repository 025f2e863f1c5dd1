// C++ check of the mixed_sum op through the dispatcher, against ATen arithmetic (built by CMakeLists.txt).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  std::vector<at::Tensor> ys;
  for (int k = 0; k < 5; ++k) {
    ys.push_back(torch::randn({3, 4, 33, 17}, torch::kDouble));
  }
  const auto w = torch::softmax(torch::randn({5}, torch::kDouble), 0);
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("hnas_fast::mixed_sum", "").typed<at::Tensor(
      at::TensorList, const at::Tensor&)>();
  const auto out = op.call(ys, w);
  auto ref = torch::zeros_like(ys[0]);
  for (int k = 0; k < 5; ++k) {
    ref += w[k] * ys[k];
  }
  const double err = (out - ref).abs().max().item<double>();
  std::cout << "mixed_sum max abs error vs ATen: " << err << std::endl;
  return err < 1e-12 ? 0 : 1;
}
