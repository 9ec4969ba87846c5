// CUDA kernels of the segmented per-group cross-entropy.
//
// One warp per row (8 rows per 256-thread block, grid-stride over rows). Each lane walks the
// row with stride 32 (coalesced) keeping an online (max, Σexp) pair, the running argmax
// (first maximum wins; NaN counts as the maximum, as torch.argmax) and Σz for label
// smoothing, all in fp32 (fp64 for fp64 logits, whose loss_sum and lse are then fp64 too,
// as on the CPU backend); the lanes then merge by butterfly shuffles so every lane ends with
// the row's logsumexp. Lane 0 adds the row to its group:
//   histogram fits 48 KiB: a block-private histogram in shared memory (loss, int32
//                        correct/count), flushed with one global atomic per touched group
//                        (G <= 4096 for fp32/fp16/bf16 logits, G <= 3072 for fp64);
//   otherwise:           global atomics directly.
// Float atomics make loss_sum's last bits depend on the order of the additions.
// The weighted variant writes grad_logits from the same warp right after the reduction
// (the row is still in L1/L2), and the backward is the same row writer driven by a saved lse.
//   loss_i = (1-ε)(lse - z_t) + ε(lse - mean_c z_c)
//   grad_ic = (softmax_ic - (1-ε)[c = t] - ε/C) · w[g_i];   ignored rows: no loss, zero grad.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common.h"

#include <cmath>
#include <cstdint>
#include <tuple>

namespace ceag::cuda_impl {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;
// Shared histogram: acc_t loss + int correct + int count per group, at most the 48 KiB a
// block may use without opting in: 4096 groups in fp32, 3072 for fp64 logits.
constexpr int64_t kSmemMaxBytes = 48 * 1024;
template <typename acc_t>
constexpr int64_t kSmemGroupBytes = sizeof(acc_t) + 2 * sizeof(int);

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }

// Does (v, i) beat the current best (bv, bi) for argmax? NaN is the maximum; ties go to the
// smaller index.
template <typename acc_t>
__device__ __forceinline__ bool argmax_better(acc_t v, int64_t i, acc_t bv, int64_t bi) {
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

template <typename acc_t>
struct RowStats {
  acc_t max;    // running maximum (-inf when empty)
  acc_t sum;    // Σ exp(z - max)
  acc_t zsum;   // Σ z (label smoothing)
  acc_t best;   // argmax value
  int64_t arg;  // argmax index
};

template <typename acc_t>
__device__ __forceinline__ void push_value(RowStats<acc_t>& s, acc_t v, int64_t c) {
  if (v > s.max) {
    s.sum = s.sum * dev_exp(s.max - v) + acc_t(1);  // exp(-inf) = 0 for the first value
    s.max = v;
  } else if (s.max != -INFINITY) {
    s.sum += dev_exp(v - s.max);  // NaN v propagates, as in torch
  }
  s.zsum += v;
  if (argmax_better(v, c, s.best, s.arg)) {
    s.best = v;
    s.arg = c;
  }
}

template <typename acc_t>
__device__ __forceinline__ void merge(RowStats<acc_t>& s, const RowStats<acc_t>& o) {
  const acc_t m = s.max > o.max ? s.max : o.max;
  if (m != -INFINITY) {
    const acc_t a = s.max == -INFINITY ? acc_t(0) : s.sum * dev_exp(s.max - m);
    const acc_t b = o.max == -INFINITY ? acc_t(0) : o.sum * dev_exp(o.max - m);
    s.sum = a + b;
  } else {
    s.sum = acc_t(0);
  }
  s.max = m;  // never NaN: push_value only raises max on v > max
  s.zsum += o.zsum;
  if (argmax_better(o.best, o.arg, s.best, s.arg)) {
    s.best = o.best;
    s.arg = o.arg;
  }
}

// The whole warp computes the stats of one row; every lane returns the merged result.
template <typename scalar_t, typename acc_t>
__device__ RowStats<acc_t> warp_row_stats(const scalar_t* __restrict__ row, int64_t C,
                                          int lane) {
  RowStats<acc_t> s{-INFINITY, acc_t(0), acc_t(0), -INFINITY, INT64_MAX};
  for (int64_t c = lane; c < C; c += kWarp) push_value(s, static_cast<acc_t>(row[c]), c);
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    RowStats<acc_t> o;
    o.max = __shfl_xor_sync(0xffffffffu, s.max, off);
    o.sum = __shfl_xor_sync(0xffffffffu, s.sum, off);
    o.zsum = __shfl_xor_sync(0xffffffffu, s.zsum, off);
    o.best = __shfl_xor_sync(0xffffffffu, s.best, off);
    o.arg = __shfl_xor_sync(0xffffffffu, s.arg, off);
    merge(s, o);
  }
  return s;
}

// grad_c = (exp(z_c - lse) - (1-ε)[c = t] - ε/C) · scale for one row, by the whole warp.
template <typename scalar_t, typename acc_t>
__device__ void warp_write_grad(const scalar_t* __restrict__ row, scalar_t* __restrict__ grow,
                                int64_t C, int64_t t, acc_t lse, acc_t eps, acc_t scale,
                                bool ignored, int lane) {
  if (ignored) {
    for (int64_t c = lane; c < C; c += kWarp) grow[c] = static_cast<scalar_t>(acc_t(0));
    return;
  }
  const acc_t on = acc_t(1) - eps, uniform = eps / static_cast<acc_t>(C);
  for (int64_t c = lane; c < C; c += kWarp) {
    const acc_t p = dev_exp(static_cast<acc_t>(row[c]) - lse);
    const acc_t g = (p - (c == t ? on : acc_t(0)) - uniform) * scale;
    grow[c] = static_cast<scalar_t>(g);
  }
}

template <typename scalar_t, typename acc_t, bool kSmem, bool kGrad>
__global__ void __launch_bounds__(kThreads) group_ce_forward_kernel(
    const scalar_t* __restrict__ logits, const int64_t* __restrict__ target,
    const int64_t* __restrict__ group, const acc_t* __restrict__ group_weight,  // kGrad only
    int64_t N, int64_t C, int64_t G, acc_t eps, int64_t ignore_index,
    acc_t* __restrict__ loss_sum, int64_t* __restrict__ correct, int64_t* __restrict__ count,
    bool* __restrict__ sample_correct, acc_t* __restrict__ lse_out,
    scalar_t* __restrict__ grad_logits) {  // kGrad only
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s_loss = reinterpret_cast<acc_t*>(smem_raw);
  int* s_correct = reinterpret_cast<int*>(s_loss + (kSmem ? G : 0));
  int* s_count = s_correct + (kSmem ? G : 0);
  if constexpr (kSmem) {
    for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
      s_loss[g] = acc_t(0);
      s_correct[g] = 0;
      s_count[g] = 0;
    }
    __syncthreads();
  }

  const int lane = threadIdx.x % kWarp;
  const int64_t warp = threadIdx.x / kWarp;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp; i < N;
       i += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const scalar_t* row = logits + i * C;
    const RowStats<acc_t> s = warp_row_stats<scalar_t, acc_t>(row, C, lane);
    const acc_t lse = s.max + dev_log(s.sum);
    const int64_t t = target[i];
    const int64_t g = group[i];
    const bool ignored = t == ignore_index;
    const bool valid = !ignored && t >= 0 && t < C && g >= 0 && g < G;
    CUDA_KERNEL_ASSERT(ignored || valid);  // the Python wrapper validates ranges

    if (lane == 0) {
      lse_out[i] = lse;
      bool hit = false;
      if (valid) {
        const acc_t zt = static_cast<acc_t>(row[t]);
        const acc_t loss =
            (acc_t(1) - eps) * (lse - zt) + eps * (lse - s.zsum / static_cast<acc_t>(C));
        hit = s.arg == t;
        if constexpr (kSmem) {
          atomicAdd(&s_loss[g], loss);
          atomicAdd(&s_count[g], 1);
          if (hit) atomicAdd(&s_correct[g], 1);
        } else {
          atomicAdd(&loss_sum[g], loss);
          atomicAdd(reinterpret_cast<unsigned long long*>(&count[g]), 1ull);
          if (hit) atomicAdd(reinterpret_cast<unsigned long long*>(&correct[g]), 1ull);
        }
      }
      sample_correct[i] = hit;
    }
    if constexpr (kGrad) {
      const acc_t scale = valid ? group_weight[g] : acc_t(0);
      warp_write_grad<scalar_t, acc_t>(row, grad_logits + i * C, C, t, lse, eps, scale, !valid,
                                       lane);
    }
  }

  if constexpr (kSmem) {
    __syncthreads();
    for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
      const int n = s_count[g];
      if (n == 0) continue;
      atomicAdd(&loss_sum[g], s_loss[g]);
      atomicAdd(reinterpret_cast<unsigned long long*>(&count[g]),
                static_cast<unsigned long long>(n));
      const int k = s_correct[g];
      if (k != 0)
        atomicAdd(reinterpret_cast<unsigned long long*>(&correct[g]),
                  static_cast<unsigned long long>(k));
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) group_ce_backward_kernel(
    const acc_t* __restrict__ grad_loss_sum, const scalar_t* __restrict__ logits,
    const int64_t* __restrict__ target, const int64_t* __restrict__ group,
    const acc_t* __restrict__ lse, int64_t N, int64_t C, int64_t G, acc_t eps,
    int64_t ignore_index, scalar_t* __restrict__ grad_logits) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = threadIdx.x / kWarp;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp; i < N;
       i += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t t = target[i];
    const int64_t g = group[i];
    const bool ignored = t == ignore_index;
    const bool valid = !ignored && t >= 0 && t < C && g >= 0 && g < G;
    CUDA_KERNEL_ASSERT(ignored || valid);
    const acc_t scale = valid ? grad_loss_sum[g] : acc_t(0);
    warp_write_grad<scalar_t, acc_t>(logits + i * C, grad_logits + i * C, C, t, lse[i], eps,
                                     scale, !valid, lane);
  }
}

int num_sms() {
  int dev = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n > 0 ? n : 1;
}

// Enough blocks to fill the GPU; each block's rows share one shared-memory histogram.
unsigned grid_for_rows(int64_t N, int blocks_per_sm) {
  const int64_t need = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t cap = static_cast<int64_t>(num_sms()) * blocks_per_sm;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(need, cap)));
}

void check_inputs(const char* op, const at::Tensor& logits, const at::Tensor& target,
                  const at::Tensor& group) {
  TORCH_CHECK(logits.is_cuda() && target.is_cuda() && group.is_cuda(), op,
              " (cuda): logits, target and group must be CUDA tensors");
  TORCH_CHECK(logits.device() == target.device() && logits.device() == group.device(), op,
              " (cuda): inputs on different devices");
  TORCH_CHECK(logits.dim() == 2, op, " (cuda): logits must be 2-D [N, C], got ", logits.sizes());
  const int64_t N = logits.size(0);
  TORCH_CHECK(target.dim() == 1 && target.size(0) == N, op, " (cuda): target must be [", N,
              "], got ", target.sizes());
  TORCH_CHECK(group.dim() == 1 && group.size(0) == N, op, " (cuda): group must be [", N,
              "], got ", group.sizes());
  TORCH_CHECK(N == 0 || logits.size(1) > 0, op, " (cuda): logits need at least one class");
}

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Statistics (loss_sum, lse, group_weight, grad_loss_sum) are in ceag::acc_dtype: float64 for
// float64 logits and float32 otherwise, as on the CPU backend.
using ceag::acc_dtype;

// Shared by the plain and the weighted forward; grad_logits/group_weight are undefined for
// the plain one.
ForwardResult forward_impl(const at::Tensor& logits_in, const at::Tensor& target_in,
                           const at::Tensor& group_in, int64_t G, double label_smoothing,
                           int64_t ignore_index, const at::Tensor& group_weight,
                           at::Tensor* grad_logits) {
  TORCH_CHECK(G >= 0, "group_cross_entropy (cuda): num_groups must be >= 0");
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.to(at::kLong).contiguous();
  const at::Tensor group = group_in.to(at::kLong).contiguous();
  const int64_t N = logits.size(0), C = logits.size(1);
  const auto dev = logits.options();
  const auto acc = acc_dtype(logits);
  at::Tensor loss_sum = at::zeros({G}, dev.dtype(acc));
  at::Tensor correct = at::zeros({G}, dev.dtype(at::kLong));
  at::Tensor count = at::zeros({G}, dev.dtype(at::kLong));
  at::Tensor sample_correct = at::empty({N}, dev.dtype(at::kBool));
  at::Tensor lse = at::empty({N}, dev.dtype(acc));
  const bool with_grad = grad_logits != nullptr;
  if (with_grad) *grad_logits = at::empty_like(logits);
  if (N == 0) return {loss_sum, correct, count, sample_correct, lse};

  const int64_t group_bytes =
      acc == at::kDouble ? kSmemGroupBytes<double> : kSmemGroupBytes<float>;
  const bool smem = G * group_bytes <= kSmemMaxBytes;
  const size_t smem_bytes = smem ? static_cast<size_t>(G * group_bytes) : 0;
  // Small histograms: few, long-lived blocks amortize the flush; large G: plenty of blocks.
  const unsigned grid = grid_for_rows(N, smem ? 4 : 32);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "group_cross_entropy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* tp = target.const_data_ptr<int64_t>();
    const int64_t* gp = group.const_data_ptr<int64_t>();
    const acc_t* wp = with_grad ? group_weight.const_data_ptr<acc_t>() : nullptr;
    scalar_t* gl = with_grad ? grad_logits->mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t eps = static_cast<acc_t>(label_smoothing);
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, smem_bytes, stream>>>(
          lp, tp, gp, wp, N, C, G, eps, ignore_index, loss_sum.mutable_data_ptr<acc_t>(),
          correct.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>(),
          sample_correct.mutable_data_ptr<bool>(), lse.mutable_data_ptr<acc_t>(), gl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (smem) {
      if (with_grad) launch(group_ce_forward_kernel<scalar_t, acc_t, true, true>);
      else launch(group_ce_forward_kernel<scalar_t, acc_t, true, false>);
    } else {
      if (with_grad) launch(group_ce_forward_kernel<scalar_t, acc_t, false, true>);
      else launch(group_ce_forward_kernel<scalar_t, acc_t, false, false>);
    }
  });
  return {loss_sum, correct, count, sample_correct, lse};
}

ForwardResult group_cross_entropy_cuda(const at::Tensor& logits, const at::Tensor& target,
                                       const at::Tensor& group, int64_t num_groups,
                                       double label_smoothing, int64_t ignore_index) {
  check_inputs("group_cross_entropy", logits, target, group);
  const c10::cuda::CUDAGuard guard(logits.device());
  return forward_impl(logits, target, group, num_groups, label_smoothing, ignore_index,
                      at::Tensor(), nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
weighted_group_cross_entropy_cuda(const at::Tensor& logits, const at::Tensor& target,
                                  const at::Tensor& group, const at::Tensor& group_weight,
                                  double label_smoothing, int64_t ignore_index) {
  check_inputs("weighted_group_cross_entropy", logits, target, group);
  TORCH_CHECK(group_weight.is_cuda() && group_weight.device() == logits.device(),
              "weighted_group_cross_entropy (cuda): group_weight must be on ", logits.device());
  TORCH_CHECK(group_weight.dim() == 1, "weighted_group_cross_entropy (cuda): group_weight must ",
              "be 1-D [G], got ", group_weight.sizes());
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor w = group_weight.to(acc_dtype(logits)).contiguous();
  at::Tensor grad;
  auto [loss_sum, correct, count, sample_correct, lse] = forward_impl(
      logits, target, group, w.size(0), label_smoothing, ignore_index, w, &grad);
  return {loss_sum, correct, count, sample_correct, lse, grad};
}

at::Tensor group_cross_entropy_backward_cuda(const at::Tensor& grad_loss_sum,
                                             const at::Tensor& logits_in,
                                             const at::Tensor& target_in,
                                             const at::Tensor& group_in, const at::Tensor& lse_in,
                                             double label_smoothing, int64_t ignore_index) {
  check_inputs("group_cross_entropy_backward", logits_in, target_in, group_in);
  TORCH_CHECK(grad_loss_sum.is_cuda() && lse_in.is_cuda(),
              "group_cross_entropy_backward (cuda): grad_loss_sum and lse must be CUDA tensors");
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  TORCH_CHECK(lse_in.numel() == N, "group_cross_entropy_backward (cuda): lse must have ", N,
              " elements, got ", lse_in.numel());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.to(at::kLong).contiguous();
  const at::Tensor group = group_in.to(at::kLong).contiguous();
  const at::Tensor lse = lse_in.to(acc_dtype(logits)).contiguous();
  const at::Tensor gls = grad_loss_sum.to(acc_dtype(logits)).reshape({-1}).contiguous();
  const int64_t G = gls.numel();
  at::Tensor grad = at::empty_like(logits);
  if (N == 0) return grad;
  const unsigned grid = grid_for_rows(N, 32);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "group_cross_entropy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    group_ce_backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        gls.const_data_ptr<acc_t>(), logits.const_data_ptr<scalar_t>(),
        target.const_data_ptr<int64_t>(), group.const_data_ptr<int64_t>(),
        lse.const_data_ptr<acc_t>(), N, C, G, static_cast<acc_t>(label_smoothing), ignore_index,
        grad.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace
}  // namespace ceag::cuda_impl

TORCH_LIBRARY_IMPL(ceag, CUDA, m) {
  m.impl("group_cross_entropy", &ceag::cuda_impl::group_cross_entropy_cuda);
  m.impl("group_cross_entropy_backward", &ceag::cuda_impl::group_cross_entropy_backward_cuda);
  m.impl("weighted_group_cross_entropy", &ceag::cuda_impl::weighted_group_cross_entropy_cuda);
}
