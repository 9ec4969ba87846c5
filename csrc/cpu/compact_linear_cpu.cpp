// CPU kernels of the compact linear ops: a masked linear layer whose kept weights are stored
// alone, as one vector `values` [nnz] in CSR order (row-major over the kept positions).
//
//   y       = x @ W.T + b            W[n, col_idx[p]] = values[p] for p in row_ptr[n]..row_ptr[n+1]
//   grad_x  = grad_y @ W             by input column: CSC (col_ptr, row_idx) with csc_to_csr[q],
//                                    the CSR position (index into values) of CSC position q
//   grad_values[p] = sum_b grad_y[b, n] * x[b, col_idx[p]]   (an SDDMM, nnz-sized output)
//
// Every op is O(nnz * B) and never builds a dense [N, K] tensor; the tiling is the masked
// ops' sparse path (sparse.h). bf16/fp16 accumulate in fp32, fp64 in fp64.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common.h"

#include <cstdint>
#include <optional>

#include "capability.h"
#include "sparse.h"

namespace ceag {
namespace CEAG_CAP_NS {
namespace {

using sparse::check_layout;
using sparse::kVB;
using sparse::round_up;
using sparse::transpose_padded;

void check_values(const at::Tensor& values, const at::Tensor& a, const char* a_name, int64_t nnz) {
  check_cpu(values, "values");
  check_cpu(a, a_name);
  TORCH_CHECK(a.dim() == 2, a_name, " must be 2-D, got shape ", a.sizes());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), a_name, " must be floating point, got ", a.scalar_type());
  TORCH_CHECK(values.dim() == 1 && values.size(0) == nnz, "values must have shape [", nnz,
              "] (one per kept weight), got ", values.sizes());
  TORCH_CHECK(values.scalar_type() == a.scalar_type(), "values dtype ", values.scalar_type(), " must match ",
              a_name, " dtype ", a.scalar_type());
}

at::Tensor compact_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                              const at::Tensor& col_idx, const at::Tensor& col_ptr,
                              const at::Tensor& /*row_idx: backward only*/,
                              const at::Tensor& /*csc_to_csr: backward only*/, const std::optional<at::Tensor>& bias) {
  const int64_t N = row_ptr.dim() == 1 ? row_ptr.size(0) - 1 : -1;
  TORCH_CHECK(N >= 0, "row_ptr must be 1-D [out_features + 1], got ", row_ptr.sizes());
  const int64_t in_features = col_ptr.dim() == 1 ? col_ptr.size(0) - 1 : -1;
  TORCH_CHECK(in_features >= 0, "col_ptr must be 1-D [in_features + 1], got ", col_ptr.sizes());
  check_layout("row_ptr", row_ptr, "col_idx", col_idx, N);
  check_values(values, x, "x", col_idx.size(0));
  TORCH_CHECK(x.size(1) == in_features, "x must have in_features = ", in_features, " columns, got shape ",
              x.sizes());
  if (bias.has_value()) {
    check_cpu(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias must have shape [", N, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype ", bias->scalar_type(), " must match x dtype ",
                x.scalar_type());
  }
  const int64_t B = x.size(0);
  at::Tensor y = at::empty({B, N}, x.options());
  if (B == 0 || N == 0) return y;
  const at::Tensor v = values.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "compact_linear_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t Bp = round_up(B, kVB);
    const at::Tensor xT = transpose_padded(x, c10::CppTypeToScalarType<acc_t>::value, Bp);
    const scalar_t* vp = v.data_ptr<scalar_t>();
    auto wval = [vp](int64_t, int64_t p, uint32_t) { return acc_t(vp[p]); };
    sparse::spmm_transposed<scalar_t, acc_t>(N, B, Bp, row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
                                             in_features, wval, xT.data_ptr<acc_t>(),
                                             bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                                             y.data_ptr<scalar_t>(), "compact_linear");
  });
  return y;
}

at::Tensor compact_linear_grad_input_cpu(const at::Tensor& grad_y, const at::Tensor& values, const at::Tensor& col_ptr,
                                         const at::Tensor& row_idx, const at::Tensor& csc_to_csr) {
  const int64_t K = col_ptr.dim() == 1 ? col_ptr.size(0) - 1 : -1;
  TORCH_CHECK(K >= 0, "col_ptr must be 1-D [in_features + 1], got ", col_ptr.sizes());
  check_layout("col_ptr", col_ptr, "row_idx", row_idx, K);
  const int64_t nnz = row_idx.size(0);
  check_values(values, grad_y, "grad_y", nnz);
  check_cpu(csc_to_csr, "csc_to_csr");
  TORCH_CHECK(csc_to_csr.scalar_type() == at::kInt && csc_to_csr.dim() == 1 && csc_to_csr.size(0) == nnz &&
                  csc_to_csr.is_contiguous(),
              "csc_to_csr must be a contiguous int32 tensor of shape [", nnz, "], got ", csc_to_csr.scalar_type(),
              " ", csc_to_csr.sizes());
  const int64_t B = grad_y.size(0), N = grad_y.size(1);
  at::Tensor gx = at::empty({B, K}, grad_y.options());
  if (B == 0 || K == 0) return gx;
  if (N == 0) return gx.zero_();
  const int32_t* perm = csc_to_csr.data_ptr<int32_t>();
  for (int64_t q = 0; q < nnz; ++q) {  // checked once here, so the kernel's inner loop need not
    TORCH_CHECK(uint32_t(perm[q]) < uint64_t(nnz), "csc_to_csr[", q, "] = ", perm[q], " is out of range [0, ", nnz,
                ")");
  }
  const at::Tensor v = values.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_y.scalar_type(), "compact_linear_grad_input_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t Bp = round_up(B, kVB);
    const at::Tensor gyT = transpose_padded(grad_y, c10::CppTypeToScalarType<acc_t>::value, Bp);
    const scalar_t* vp = v.data_ptr<scalar_t>();
    auto wval = [vp, perm](int64_t, int64_t q, uint32_t) { return acc_t(vp[perm[q]]); };
    sparse::spmm_transposed<scalar_t, acc_t>(K, B, Bp, col_ptr.data_ptr<int32_t>(), row_idx.data_ptr<int32_t>(), N,
                                             wval, gyT.data_ptr<acc_t>(), nullptr, gx.data_ptr<scalar_t>(),
                                             "compact_linear_grad_input");
  });
  return gx;
}

at::Tensor compact_linear_grad_values_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& row_ptr,
                                          const at::Tensor& col_idx) {
  const int64_t N = row_ptr.dim() == 1 ? row_ptr.size(0) - 1 : -1;
  TORCH_CHECK(N >= 0, "row_ptr must be 1-D [out_features + 1], got ", row_ptr.sizes());
  check_layout("row_ptr", row_ptr, "col_idx", col_idx, N);
  check_cpu(grad_y, "grad_y");
  check_cpu(x, "x");
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(1) == N, "grad_y must have shape [B, ", N, "], got ", grad_y.sizes());
  TORCH_CHECK(x.dim() == 2 && x.size(0) == grad_y.size(0), "x must be 2-D with grad_y's batch size ",
              grad_y.size(0), ", got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "grad_y dtype ", grad_y.scalar_type(), " must match x dtype ",
              x.scalar_type());
  const int64_t nnz = col_idx.size(0), B = x.size(0), K = x.size(1);
  at::Tensor gv = at::empty({nnz}, x.options());
  if (nnz == 0) return gv;
  if (B == 0) return gv.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "compact_linear_grad_values_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t Bp = round_up(B, kVB);
    const at::Tensor gyT = transpose_padded(grad_y, c10::CppTypeToScalarType<acc_t>::value, Bp);
    const at::Tensor xT = transpose_padded(x, c10::CppTypeToScalarType<acc_t>::value, Bp);
    scalar_t* out = gv.data_ptr<scalar_t>();
    sparse::sddmm_rows<acc_t>(
        N, K, Bp, row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), gyT.data_ptr<acc_t>(),
        xT.data_ptr<acc_t>(), [](int64_t) {}, [out](int64_t, int64_t p, uint32_t, acc_t v) { out[p] = scalar_t(v); },
        "compact_linear_grad_values");
  });
  return gv;
}

}  // namespace

void register_compact_linear(torch::Library& m) {
  m.impl("compact_linear", &compact_linear_cpu);
  m.impl("compact_linear_grad_input", &compact_linear_grad_input_cpu);
  m.impl("compact_linear_grad_values", &compact_linear_grad_values_cpu);
}

}  // namespace CEAG_CAP_NS
}  // namespace ceag

#include "capability_end.h"
