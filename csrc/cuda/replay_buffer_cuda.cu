// CUDA kernel of the per-group ring-buffer update: push values[i] into buffer[group[i]] in
// batch order; a group with more than k samples in the batch keeps its newest k.
//
// One block of 1024 threads walks the batch in chunks of 1024 samples, in order. Within a
// chunk, sample i of group g has rank r = #{earlier samples of g in the chunk} and
// a = #{later samples of g in the chunk} (found by scanning the chunk's groups in shared
// memory, O(chunk) per thread). It goes to slot (head[g] + r) % k, exactly where the
// sequential loop would put it, and is written only when a < k: a sample with k or more later
// samples of its group in the chunk would be overwritten by one of them, so the writes of a
// chunk hit distinct slots and the result does not depend on thread order. After a barrier,
// the last sample of each group in the chunk advances head[g] by n = r + 1 and sets
// fill[g] = min(fill[g] + n, k); the next chunk starts after another barrier, so it sees
// the new heads. Deterministic for any N, G and k; one launch, no scratch memory.
// Elements are copied as raw bytes (values are first converted to the buffer's dtype).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace ceag::cuda_impl {
namespace {

constexpr int kChunk = 1024;  // = threads of the single block

template <typename elem_t>
__global__ void __launch_bounds__(kChunk) replay_buffer_update_kernel(
    elem_t* __restrict__ buffer, int64_t* __restrict__ head, int64_t* __restrict__ fill,
    const int64_t* __restrict__ group, const elem_t* __restrict__ values, int64_t N, int64_t G,
    int64_t k) {
  __shared__ int64_t s_group[kChunk];
  const int tid = threadIdx.x;
  for (int64_t base = 0; base < N; base += kChunk) {
    const int n_chunk = static_cast<int>(N - base < kChunk ? N - base : kChunk);
    const int64_t i = base + tid;
    int64_t g = -1;
    if (tid < n_chunk) {
      g = group[i];
      CUDA_KERNEL_ASSERT(g >= 0 && g < G);  // the Python wrapper validates ranges
      if (g < 0 || g >= G) g = -1;          // out of range: skipped
    }
    s_group[tid] = g;
    __syncthreads();

    int64_t before = 0, after = 0;
    if (g >= 0) {
      for (int j = 0; j < n_chunk; ++j) {
        if (s_group[j] == g) {
          before += j < tid;
          after += j > tid;
        }
      }
      if (after < k) {
        const int64_t slot = (head[g] + before) % k;
        buffer[g * k + slot] = values[i];
      }
    }
    __syncthreads();  // every head[g] of this chunk has been read

    if (g >= 0 && after == 0) {  // last sample of its group in this chunk
      const int64_t n = before + 1;
      head[g] = (head[g] + n) % k;
      const int64_t f = fill[g] + n;
      fill[g] = f < k ? f : k;
    }
    __syncthreads();  // new heads visible; s_group free for the next chunk
  }
}

// Mutable arguments as at::Tensor&: the C++ signature must match the other backends'.
void replay_buffer_update_cuda(at::Tensor& buffer, at::Tensor& head, at::Tensor& fill,
                               const at::Tensor& group, const at::Tensor& values) {
  TORCH_CHECK(buffer.is_cuda() && head.is_cuda() && fill.is_cuda() && group.is_cuda() &&
                  values.is_cuda(),
              "replay_buffer_update_ (cuda): all tensors must be CUDA tensors");
  TORCH_CHECK(buffer.dim() == 2, "replay_buffer_update_ (cuda): buffer must be [G, k], got ",
              buffer.sizes());
  const int64_t G = buffer.size(0), k = buffer.size(1);
  TORCH_CHECK(head.dim() == 1 && head.size(0) == G && fill.dim() == 1 && fill.size(0) == G,
              "replay_buffer_update_ (cuda): head and fill must be [", G, "]");
  TORCH_CHECK(head.scalar_type() == at::kLong && fill.scalar_type() == at::kLong,
              "replay_buffer_update_ (cuda): head and fill must be int64");
  TORCH_CHECK(group.dim() == 1 && values.dim() == 1 && group.size(0) == values.size(0),
              "replay_buffer_update_ (cuda): group and values must be 1-D of the same length");
  const std::initializer_list<const at::Tensor*> others{&head, &fill, &group, &values};
  for (const at::Tensor* t : others) {
    TORCH_CHECK(t->device() == buffer.device(),
                "replay_buffer_update_ (cuda): all tensors must be on ", buffer.device());
  }
  const int64_t N = group.size(0);
  if (N == 0 || G == 0 || k == 0) return;

  const c10::cuda::CUDAGuard guard(buffer.device());
  // Work on contiguous tensors; copy back only where the caller's tensor was not contiguous.
  at::Tensor buf = buffer.contiguous(), hd = head.contiguous(), fl = fill.contiguous();
  const at::Tensor grp = group.to(at::kLong).contiguous();
  const at::Tensor val = values.to(buffer.scalar_type()).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto* tag) {
    using elem_t = std::remove_pointer_t<decltype(tag)>;
    replay_buffer_update_kernel<elem_t><<<1, kChunk, 0, stream>>>(
        static_cast<elem_t*>(buf.mutable_data_ptr()), hd.mutable_data_ptr<int64_t>(),
        fl.mutable_data_ptr<int64_t>(), grp.const_data_ptr<int64_t>(),
        static_cast<const elem_t*>(val.const_data_ptr()), N, G, k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (buf.element_size()) {
    case 1: launch(static_cast<uint8_t*>(nullptr)); break;
    case 2: launch(static_cast<uint16_t*>(nullptr)); break;
    case 4: launch(static_cast<uint32_t*>(nullptr)); break;
    case 8: launch(static_cast<uint64_t*>(nullptr)); break;
    default:
      TORCH_CHECK(false, "replay_buffer_update_ (cuda): unsupported buffer dtype ",
                  buf.scalar_type());
  }
  if (!buf.is_same(buffer)) buffer.copy_(buf);
  if (!hd.is_same(head)) head.copy_(hd);
  if (!fl.is_same(fill)) fill.copy_(fl);
}

}  // namespace
}  // namespace ceag::cuda_impl

TORCH_LIBRARY_IMPL(ceag, CUDA, m) {
  m.impl("replay_buffer_update_", &ceag::cuda_impl::replay_buffer_update_cuda);
}
