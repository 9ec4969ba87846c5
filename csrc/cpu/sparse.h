// The sparse building blocks of the CPU masked-linear kernels, shared by the masked ops
// (dense weight, mask compressed as CSR/CSC: masked_linear_cpu.cpp) and the compact ops
// (only the kept weights stored, in CSR order: compact_linear_cpu.cpp).
//  * spmm_transposed: out[b, r] = bias[r] + sum over row r's kept entries of w * srcT[idx, b],
//    with the batch transposed into a zero-padded [rows, Bp] buffer so every kept weight
//    multiplies a contiguous run of the batch; tiles of kRowTile rows x kVB batch columns.
//  * sddmm_rows: one dot product over the batch per kept position of each row.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

// Inside the capability namespace: each CPU variant (capability.h) has its own copy.
namespace ceag {
namespace CEAG_CAP_NS {
namespace sparse {

constexpr int64_t kVB = 64;      // batch columns per tile: 64 fp32 accumulators = 4 zmm
constexpr int64_t kRowTile = 16;  // output rows per tile: 16 fp32 = one cache line per batch row

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// [B, R] -> [R, Bp] in the accumulation dtype, columns B..Bp zero.
inline at::Tensor transpose_padded(const at::Tensor& a, at::ScalarType acc_type, int64_t Bp) {
  const int64_t B = a.size(0), R = a.size(1);
  at::Tensor out = at::empty({R, Bp}, a.options().dtype(acc_type));
  if (Bp > B) out.narrow(1, B, Bp - B).zero_();
  if (B > 0 && R > 0) out.narrow(1, 0, B).copy_(a.t());
  return out;
}

inline void check_layout(const char* ptr_name, const at::Tensor& ptr, const char* idx_name,
                  const at::Tensor& idx, int64_t rows) {
  TORCH_CHECK(ptr.device().is_cpu() && idx.device().is_cpu(), ptr_name, " and ", idx_name,
              " must be CPU tensors");
  TORCH_CHECK(ptr.scalar_type() == at::kInt, ptr_name, " must be int32, got ", ptr.scalar_type());
  TORCH_CHECK(idx.scalar_type() == at::kInt, idx_name, " must be int32, got ", idx.scalar_type());
  TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) == rows + 1, ptr_name, " must have shape [", rows + 1,
              "], got ", ptr.sizes());
  TORCH_CHECK(idx.dim() == 1, idx_name, " must be 1-D, got ", idx.sizes());
  TORCH_CHECK(ptr.is_contiguous() && idx.is_contiguous(), ptr_name, " and ", idx_name,
              " must be contiguous");
  const int32_t* p = ptr.data_ptr<int32_t>();
  TORCH_CHECK(p[0] == 0 && p[rows] == idx.size(0), ptr_name, " must start at 0 and end at ",
              idx_name, ".numel() = ", idx.size(0), ", got [", p[0], ", ", p[rows], "]");
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(p[r] <= p[r + 1], ptr_name, " must be non-decreasing (row ", r, ")");
  }
}

// out[b, r] = bias[r] + sum_{p in row r} wval(r, p) * srcT[idx[p], b]  for b < B.
// srcT is [*, Bp] (Bp a multiple of kVB, padding zero); out is [B, R] contiguous.
template <typename scalar_t, typename acc_t, typename WVal>
void spmm_transposed(int64_t R, int64_t B, int64_t Bp, const int32_t* ptr, const int32_t* idx,
                     int64_t idx_bound, const WVal& wval, const acc_t* srcT, const scalar_t* bias,
                     scalar_t* out, const char* what) {
  const int64_t n_row_tiles = (R + kRowTile - 1) / kRowTile;
  const int64_t n_col_tiles = Bp / kVB;
  std::atomic<bool> bad_index{false};
  // Tile index = column tile major: consecutive tiles of one thread share the same
  // kVB-wide slice of srcT, which stays cache resident.
  at::parallel_for(0, n_row_tiles * n_col_tiles, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t tile[kRowTile][kVB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b0 = (t / n_row_tiles) * kVB;
      const int64_t r0 = (t % n_row_tiles) * kRowTile;
      const int64_t r1 = std::min(R, r0 + kRowTile);
      const acc_t* src = srcT + b0;
      for (int64_t r = r0; r < r1; ++r) {
        alignas(64) acc_t acc[kVB];
        for (int64_t j = 0; j < kVB; ++j) acc[j] = acc_t(0);
        int64_t p = ptr[r];
        const int64_t p_end = ptr[r + 1];
        for (; p + 4 <= p_end; p += 4) {
          const uint32_t i0 = idx[p], i1 = idx[p + 1], i2 = idx[p + 2], i3 = idx[p + 3];
          if (std::max(std::max(i0, i1), std::max(i2, i3)) >= uint64_t(idx_bound)) {
            bad_index = true;
            break;
          }
          const acc_t w0 = wval(r, p, i0), w1 = wval(r, p + 1, i1);
          const acc_t w2 = wval(r, p + 2, i2), w3 = wval(r, p + 3, i3);
          const acc_t* x0 = src + int64_t(i0) * Bp;
          const acc_t* x1 = src + int64_t(i1) * Bp;
          const acc_t* x2 = src + int64_t(i2) * Bp;
          const acc_t* x3 = src + int64_t(i3) * Bp;
#pragma omp simd aligned(acc : 64)
          for (int64_t j = 0; j < kVB; ++j) {
            acc[j] += w0 * x0[j] + w1 * x1[j] + w2 * x2[j] + w3 * x3[j];
          }
        }
        for (; p < p_end; ++p) {
          const uint32_t i0 = idx[p];
          if (i0 >= uint64_t(idx_bound)) {
            bad_index = true;
            break;
          }
          const acc_t w0 = wval(r, p, i0);
          const acc_t* x0 = src + int64_t(i0) * Bp;
#pragma omp simd aligned(acc : 64)
          for (int64_t j = 0; j < kVB; ++j) acc[j] += w0 * x0[j];
        }
        const acc_t bv = bias ? acc_t(bias[r]) : acc_t(0);
        for (int64_t j = 0; j < kVB; ++j) tile[r - r0][j] = acc[j] + bv;
      }
      const int64_t b1 = std::min(B, b0 + kVB);
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* o = out + b * R;
        for (int64_t r = r0; r < r1; ++r) o[r] = scalar_t(tile[r - r0][b - b0]);
      }
    }
  });
  TORCH_CHECK(!bad_index, what, ": layout index out of range [0, ", idx_bound, ")");
}

// out[n, :] = 0 except out[n, k] = dot(g[n, :Bp], xs[k, :Bp]) for k kept in row n (SDDMM).
template <typename scalar_t, typename acc_t>
void sddmm(int64_t N, int64_t K, int64_t Bp, const int32_t* ptr, const int32_t* idx,
           const acc_t* g, const acc_t* xs, scalar_t* out) {
  std::atomic<bool> bad_index{false};
  // Rows are zeroed inside the parallel loop: the first touch of a large fresh output
  // is split between the threads.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* o = out + n * K;
      std::memset(static_cast<void*>(o), 0, sizeof(scalar_t) * K);
      const acc_t* gr = g + n * Bp;
      int64_t p = ptr[n];
      const int64_t p_end = ptr[n + 1];
      for (; p + 4 <= p_end; p += 4) {
        const uint32_t k0 = idx[p], k1 = idx[p + 1], k2 = idx[p + 2], k3 = idx[p + 3];
        if (std::max(std::max(k0, k1), std::max(k2, k3)) >= uint64_t(K)) {
          bad_index = true;
          break;
        }
        const acc_t* x0 = xs + int64_t(k0) * Bp;
        const acc_t* x1 = xs + int64_t(k1) * Bp;
        const acc_t* x2 = xs + int64_t(k2) * Bp;
        const acc_t* x3 = xs + int64_t(k3) * Bp;
        acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t j = 0; j < Bp; ++j) {
          const acc_t gj = gr[j];
          s0 += gj * x0[j];
          s1 += gj * x1[j];
          s2 += gj * x2[j];
          s3 += gj * x3[j];
        }
        o[k0] = scalar_t(s0);
        o[k1] = scalar_t(s1);
        o[k2] = scalar_t(s2);
        o[k3] = scalar_t(s3);
      }
      for (; p < p_end; ++p) {
        const uint32_t k0 = idx[p];
        if (k0 >= uint64_t(K)) {
          bad_index = true;
          break;
        }
        const acc_t* x0 = xs + int64_t(k0) * Bp;
        acc_t s0 = 0;
#pragma omp simd reduction(+ : s0)
        for (int64_t j = 0; j < Bp; ++j) s0 += gr[j] * x0[j];
        o[k0] = scalar_t(s0);
      }
    }
  });
  TORCH_CHECK(!bad_index, "masked_linear_grad_weight: csr_idx out of range [0, ", K, ")");
}

// For each row n and kept position p of it (column idx[p]): emit(n, p, k, dot(g[n, :Bp], xs[k, :Bp])).
// ``before_row(n)`` runs first for each row (e.g. zeroing a dense output row). Parallel over rows.
template <typename acc_t, typename BeforeRow, typename Emit>
void sddmm_rows(int64_t N, int64_t K, int64_t Bp, const int32_t* ptr, const int32_t* idx, const acc_t* g,
                const acc_t* xs, const BeforeRow& before_row, const Emit& emit, const char* what) {
  std::atomic<bool> bad_index{false};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      before_row(n);
      const acc_t* gr = g + n * Bp;
      int64_t p = ptr[n];
      const int64_t p_end = ptr[n + 1];
      for (; p + 4 <= p_end; p += 4) {
        const uint32_t k0 = idx[p], k1 = idx[p + 1], k2 = idx[p + 2], k3 = idx[p + 3];
        if (std::max(std::max(k0, k1), std::max(k2, k3)) >= uint64_t(K)) {
          bad_index = true;
          break;
        }
        const acc_t* x0 = xs + int64_t(k0) * Bp;
        const acc_t* x1 = xs + int64_t(k1) * Bp;
        const acc_t* x2 = xs + int64_t(k2) * Bp;
        const acc_t* x3 = xs + int64_t(k3) * Bp;
        acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t j = 0; j < Bp; ++j) {
          const acc_t gj = gr[j];
          s0 += gj * x0[j];
          s1 += gj * x1[j];
          s2 += gj * x2[j];
          s3 += gj * x3[j];
        }
        emit(n, p, k0, s0);
        emit(n, p + 1, k1, s1);
        emit(n, p + 2, k2, s2);
        emit(n, p + 3, k3, s3);
      }
      for (; p < p_end; ++p) {
        const uint32_t k0 = idx[p];
        if (k0 >= uint64_t(K)) {
          bad_index = true;
          break;
        }
        const acc_t* x0 = xs + int64_t(k0) * Bp;
        acc_t s0 = 0;
#pragma omp simd reduction(+ : s0)
        for (int64_t j = 0; j < Bp; ++j) s0 += gr[j] * x0[j];
        emit(n, p, k0, s0);
      }
    }
  });
  TORCH_CHECK(!bad_index, what, ": csr_idx out of range [0, ", K, ")");
}

}  // namespace sparse
}  // namespace CEAG_CAP_NS
}  // namespace ceag
