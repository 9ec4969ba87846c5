// CPU kernels of the masked linear ops: y = x @ (W*M).T + b and its two gradients.
//
// Two paths per op, chosen by the caller (ceag/ops/masked_linear.py):
//  * sparse, when the compressed layout is given (int32 CSR by output row for the forward and
//    grad_weight, CSC by input column for grad_input): O(nnz * B) work, W*M never built.
//    The batch is transposed once into a zero-padded fp32/fp64 buffer [rows, Bp] so every
//    kept weight multiplies a contiguous run of the batch. Work is split into tiles of
//    kRowTile output rows x kVB batch columns (at::parallel_for over tiles); each output
//    row's kVB accumulators stay in registers while its kept entries stream past, and the
//    tile is written back transposed, one cache line per batch row.
//    grad_weight is an SDDMM: one dot product over the batch per kept position, zeros
//    elsewhere (written row by row inside the parallel loop).
//  * dense, when the layout is absent (high density): ATen GEMMs on W*M; grad_weight is
//    masked afterwards so it is exactly zero where the mask is 0.
// bf16/fp16 inputs accumulate in fp32 (at::opmath_type), fp64 in fp64.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>

#include "capability.h"
#include "sparse.h"

namespace ceag {
namespace CEAG_CAP_NS {
namespace {

using sparse::check_layout;
using sparse::kVB;
using sparse::round_up;
using sparse::spmm_transposed;
using sparse::transpose_padded;

void check_common(const at::Tensor& a, const char* a_name, int64_t a_cols_expected,
                  const char* cols_what, const at::Tensor& weight, const at::Tensor& mask) {
  check_cpu(a, a_name);
  check_cpu(weight, "weight");
  check_cpu(mask, "mask");
  TORCH_CHECK(a.dim() == 2, a_name, " must be 2-D, got shape ", a.sizes());
  TORCH_CHECK(weight.dim() == 2, "weight must be 2-D [N, K], got shape ", weight.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(mask.sizes() == weight.sizes(), "mask must have weight's shape ", weight.sizes(),
              ", got ", mask.sizes());
  TORCH_CHECK(a.size(1) == a_cols_expected, a_name, " must have ", cols_what, " = ",
              a_cols_expected, " columns, got shape ", a.sizes());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), a_name, " must be floating point, got ",
              a.scalar_type());
  TORCH_CHECK(weight.scalar_type() == a.scalar_type(), "weight dtype ", weight.scalar_type(),
              " must match ", a_name, " dtype ", a.scalar_type());
}

// g[i] = 0 wherever mask[i] is false (exact zeros even where g is inf/nan), in place.
template <typename scalar_t>
void zero_unmasked(scalar_t* g, const bool* mask, int64_t numel) {
  at::parallel_for(0, numel, 1 << 15, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) g[i] = mask[i] ? g[i] : scalar_t(0);
  });
}

// W where the mask is set, exactly 0 elsewhere (one fused pass). Not weight * mask: a pruned
// weight is absent, so a NaN/Inf there must not reach y or grad_x (NaN * 0 is NaN), the same
// as on the sparse path, the reference and the GPU kernels.
at::Tensor dense_masked_weight(const at::Tensor& weight, const at::Tensor& mask) {
  return at::where(mask, weight, at::zeros({}, weight.options()));
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& csr_ptr,
                             const std::optional<at::Tensor>& csr_idx,
                             const std::optional<at::Tensor>& /*csc_ptr: backward only*/,
                             const std::optional<at::Tensor>& /*csc_idx: backward only*/) {
  const int64_t N = weight.dim() == 2 ? weight.size(0) : 0;
  const int64_t K = weight.dim() == 2 ? weight.size(1) : 0;
  check_common(x, "x", K, "K (weight.size(1))", weight, mask);
  if (bias.has_value()) {
    check_cpu(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias must have shape [", N, "], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype ", bias->scalar_type(),
                " must match x dtype ", x.scalar_type());
  }
  TORCH_CHECK(csr_ptr.has_value() == csr_idx.has_value(),
              "csr_ptr and csr_idx must be given together");
  const int64_t B = x.size(0);
  if (!csr_ptr.has_value()) {
    at::Tensor wm = dense_masked_weight(weight, mask);
    return bias.has_value() ? at::addmm(*bias, x, wm.t()) : at::mm(x, wm.t());
  }
  const at::Tensor& ptr = *csr_ptr;
  const at::Tensor& idx = *csr_idx;
  check_layout("csr_ptr", ptr, "csr_idx", idx, N);
  at::Tensor y = at::empty({B, N}, x.options());
  if (B == 0 || N == 0) return y;
  const at::Tensor w = weight.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_linear_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t Bp = round_up(B, kVB);
    const at::Tensor xT = transpose_padded(x, c10::CppTypeToScalarType<acc_t>::value, Bp);
    const scalar_t* wp = w.data_ptr<scalar_t>();
    auto wval = [wp, K](int64_t r, int64_t, uint32_t k) { return acc_t(wp[r * K + k]); };
    spmm_transposed<scalar_t, acc_t>(N, B, Bp, ptr.data_ptr<int32_t>(), idx.data_ptr<int32_t>(),
                                     K, wval, xT.data_ptr<acc_t>(),
                                     bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                                     y.data_ptr<scalar_t>(), "masked_linear");
  });
  return y;
}

at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad_y, const at::Tensor& weight,
                                        const at::Tensor& mask,
                                        const std::optional<at::Tensor>& csc_ptr,
                                        const std::optional<at::Tensor>& csc_idx) {
  const int64_t N = weight.dim() == 2 ? weight.size(0) : 0;
  const int64_t K = weight.dim() == 2 ? weight.size(1) : 0;
  check_common(grad_y, "grad_y", N, "N (weight.size(0))", weight, mask);
  TORCH_CHECK(csc_ptr.has_value() == csc_idx.has_value(),
              "csc_ptr and csc_idx must be given together");
  const int64_t B = grad_y.size(0);
  if (!csc_ptr.has_value()) {
    return at::mm(grad_y, dense_masked_weight(weight, mask));
  }
  check_layout("csc_ptr", *csc_ptr, "csc_idx", *csc_idx, K);
  at::Tensor gx = at::empty({B, K}, grad_y.options());
  if (B == 0 || K == 0) return gx;
  if (N == 0) return gx.zero_();
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_y.scalar_type(), "masked_linear_grad_input_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t Bp = round_up(B, kVB);
    const at::Tensor gyT = transpose_padded(grad_y, c10::CppTypeToScalarType<acc_t>::value, Bp);
    const scalar_t* wp = w.data_ptr<scalar_t>();
    // Column k of W*M: entry p holds row n = csc_idx[p].
    auto wval = [wp, K](int64_t k, int64_t, uint32_t n) { return acc_t(wp[int64_t(n) * K + k]); };
    spmm_transposed<scalar_t, acc_t>(K, B, Bp, csc_ptr->data_ptr<int32_t>(),
                                     csc_idx->data_ptr<int32_t>(), N, wval, gyT.data_ptr<acc_t>(),
                                     nullptr, gx.data_ptr<scalar_t>(), "masked_linear");
  });
  return gx;
}

at::Tensor masked_linear_grad_weight_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                         const at::Tensor& mask,
                                         const std::optional<at::Tensor>& csr_ptr,
                                         const std::optional<at::Tensor>& csr_idx) {
  TORCH_CHECK(mask.dim() == 2, "mask must be 2-D [N, K], got shape ", mask.sizes());
  check_cpu(mask, "mask");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask must be bool, got ", mask.scalar_type());
  check_cpu(grad_y, "grad_y");
  check_cpu(x, "x");
  const int64_t N = mask.size(0), K = mask.size(1);
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(1) == N, "grad_y must have shape [B, ", N,
              "], got ", grad_y.sizes());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "x must have shape [B, ", K, "], got ", x.sizes());
  TORCH_CHECK(x.size(0) == grad_y.size(0), "x and grad_y must have the same batch size, got ",
              x.size(0), " and ", grad_y.size(0));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "grad_y dtype ", grad_y.scalar_type(),
              " must match x dtype ", x.scalar_type());
  TORCH_CHECK(csr_ptr.has_value() == csr_idx.has_value(),
              "csr_ptr and csr_idx must be given together");
  const int64_t B = x.size(0);
  if (!csr_ptr.has_value()) {
    // Exactly zero where the mask is 0, even if the product there is inf/nan.
    at::Tensor gw = at::mm(grad_y.t(), x).contiguous();
    const at::Tensor m = mask.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gw.scalar_type(), "masked_linear_grad_weight_dense", [&] {
      zero_unmasked<scalar_t>(gw.data_ptr<scalar_t>(), m.data_ptr<bool>(), gw.numel());
    });
    return gw;
  }
  check_layout("csr_ptr", *csr_ptr, "csr_idx", *csr_idx, N);
  at::Tensor gw = at::empty({N, K}, x.options());
  if (N == 0 || K == 0) return gw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_linear_grad_weight_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t Bp = round_up(std::max<int64_t>(B, 1), kVB);
    const at::Tensor gyT = transpose_padded(grad_y, c10::CppTypeToScalarType<acc_t>::value, Bp);
    const at::Tensor xT = transpose_padded(x, c10::CppTypeToScalarType<acc_t>::value, Bp);
    // Rows are zeroed inside the parallel loop: the first touch of a large fresh output is
    // split between the threads.
    scalar_t* out = gw.data_ptr<scalar_t>();
    sparse::sddmm_rows<acc_t>(
        N, K, Bp, csr_ptr->data_ptr<int32_t>(), csr_idx->data_ptr<int32_t>(), gyT.data_ptr<acc_t>(),
        xT.data_ptr<acc_t>(),
        [out, K](int64_t n) { std::memset(static_cast<void*>(out + n * K), 0, sizeof(scalar_t) * K); },
        [out, K](int64_t n, int64_t, uint32_t k, acc_t v) { out[n * K + k] = scalar_t(v); },
        "masked_linear_grad_weight");
  });
  return gw;
}

}  // namespace

void register_masked_linear(torch::Library& m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_grad_input", &masked_linear_grad_input_cpu);
  m.impl("masked_linear_grad_weight", &masked_linear_grad_weight_cpu);
}

}  // namespace CEAG_CAP_NS
}  // namespace ceag

#include "capability_end.h"
