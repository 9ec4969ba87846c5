// Checks and types shared by the CPU and CUDA kernels: one wording for every error message.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace ceag {

// Accumulation dtype of a kernel over `t` (sums, log-sum-exp, per-group statistics):
// float64 for float64 inputs, float32 for float32, bfloat16 and float16.
inline at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
}

// An index tensor (targets, group ids): 1-D of length n, int64 or int32.
inline void check_index_1d(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must be 1-D of length N=", n, ", got shape ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, name,
              " must be int64 or int32, got ", t.scalar_type());
}

}  // namespace ceag
