// CPU kernel of ceag::replay_buffer_update_: push values[i] into the ring buffer of group[i],
// in batch order. One sequential O(N) pass (a group with more than k samples in the batch
// simply wraps around and keeps its newest k); no loop over groups.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cstdint>

#include "capability.h"

namespace ceag {
namespace CEAG_CAP_NS {
namespace {

void replay_buffer_update_cpu(at::Tensor& buffer, at::Tensor& head, at::Tensor& fill,
                              const at::Tensor& group_, const at::Tensor& values_) {
  check_cpu(buffer, "buffer");
  TORCH_CHECK(buffer.dim() == 2, "buffer must be 2-D [num_groups, k], got shape ", buffer.sizes());
  const int64_t G = buffer.size(0), k = buffer.size(1);
  TORCH_CHECK(k >= 1, "buffer must have k >= 1 slots per group, got shape ", buffer.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"head", head},
                                std::pair<const char*, const at::Tensor&>{"fill", fill}}) {
    check_cpu(t, name);
    TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == G, name, " must be 1-D of length num_groups=", G,
                ", got shape ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (it is updated in place)");
  }
  TORCH_CHECK(buffer.is_contiguous(), "buffer must be contiguous (it is updated in place)");
  check_cpu(group_, "group");
  TORCH_CHECK(group_.dim() == 1, "group must be 1-D, got shape ", group_.sizes());
  TORCH_CHECK(group_.scalar_type() == at::kLong || group_.scalar_type() == at::kInt,
              "group must be int64 or int32, got ", group_.scalar_type());
  const int64_t N = group_.size(0);
  check_cpu(values_, "values");
  TORCH_CHECK(values_.dim() == 1 && values_.size(0) == N, "values must be 1-D of length N=", N,
              ", got shape ", values_.sizes());
  TORCH_CHECK(values_.scalar_type() == buffer.scalar_type(), "values must have the buffer's dtype ",
              buffer.scalar_type(), ", got ", values_.scalar_type());

  const at::Tensor group = group_.to(at::kLong).contiguous();
  const at::Tensor values = values_.contiguous();
  const int64_t* grp = group.data_ptr<int64_t>();
  int64_t* hd = head.data_ptr<int64_t>();
  int64_t* fl = fill.data_ptr<int64_t>();
  // Validate everything before mutating anything: a bad call leaves the buffers untouched.
  // Every group's head and fill (O(G)), not only the batch's: the same rule as the other
  // backends, whatever groups a batch happens to hold.
  for (int64_t g = 0; g < G; ++g) {
    TORCH_CHECK(hd[g] >= 0 && hd[g] < k, "head must be in [0, ", k, "), found ", hd[g],
                " for group ", g);
    TORCH_CHECK(fl[g] >= 0 && fl[g] <= k, "fill must be in [0, ", k, "], found ", fl[g],
                " for group ", g);
  }
  for (int64_t i = 0; i < N; ++i) {
    const int64_t g = grp[i];
    TORCH_CHECK(g >= 0 && g < G, "group must be in [0, ", G, "), found ", g, " at index ", i);
  }
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, buffer.scalar_type(),
                             "replay_buffer_update_", [&] {
                               scalar_t* buf = buffer.data_ptr<scalar_t>();
                               const scalar_t* val = values.data_ptr<scalar_t>();
                               for (int64_t i = 0; i < N; ++i) {
                                 const int64_t g = grp[i];
                                 int64_t h = hd[g];
                                 buf[g * k + h] = val[i];
                                 hd[g] = ++h == k ? 0 : h;
                                 fl[g] = std::min<int64_t>(fl[g] + 1, k);
                               }
                             });
}

}  // namespace

void register_replay_buffer(torch::Library& m) { m.impl("replay_buffer_update_", &replay_buffer_update_cpu); }

}  // namespace CEAG_CAP_NS
}  // namespace ceag

#include "capability_end.h"
