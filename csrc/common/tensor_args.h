// Host-side facts about an op's tensor arguments that every op's checks and backends share (not for nvcc
// device code: it needs ATen).
#pragma once

#include <ATen/ATen.h>

namespace hnas_fast {

// The dtypes every op takes: float16 / bfloat16 / float32 / float64.
inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Outputs and input gradients keep the input's layout: channels_last when x is, contiguous otherwise.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous;
}

// Per-channel statistics are kept in float32, float64 for float64 inputs.
inline at::ScalarType stats_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace hnas_fast
