// Op schemas for the ceag library. Kernels register per dispatch key in csrc/cpu/ and
// csrc/cuda/; autograd and fake (meta) kernels are registered from Python (ceag/ops/).
#include <Python.h>
#include <torch/library.h>

#include <string>

extern "C" {
// `import ceag._C` only needs to load this library so that the registrations below run.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace ceag {
std::string cpu_capability();  // csrc/cpu/dispatch.cpp
std::string cpu_kernel_paths(const std::string& capability);  // csrc/cpu/dispatch.cpp
}

TORCH_LIBRARY(ceag, m) {
  // Which CPU kernel variant runs: "default" (portable), "avx2" or "avx512" (dispatch.cpp).
  m.def("cpu_capability() -> str", &ceag::cpu_capability);
  m.def("cpu_kernel_paths(str capability) -> str", &ceag::cpu_kernel_paths);

  // y = x @ (weight * mask).T + bias. x is [B, K]. csr_ptr/csr_idx: the mask's kept
  // positions by output row (int32); when given, the CPU kernel takes its sparse path.
  // csc_ptr/csc_idx (kept positions by input column) are not read by the forward: they ride
  // along so that autograd can hand them to masked_linear_grad_input.
  m.def(
      "masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias, "
      "Tensor? csr_ptr, Tensor? csr_idx, Tensor? csc_ptr, Tensor? csc_idx) -> Tensor");
  // grad_x = grad_y @ (weight * mask). csc_ptr/csc_idx: kept positions by input column.
  m.def(
      "masked_linear_grad_input(Tensor grad_y, Tensor weight, Tensor mask, "
      "Tensor? csc_ptr, Tensor? csc_idx) -> Tensor");
  // grad_weight = (grad_y.T @ x) * mask, computed only at kept positions on the sparse path.
  m.def(
      "masked_linear_grad_weight(Tensor grad_y, Tensor x, Tensor mask, "
      "Tensor? csr_ptr, Tensor? csr_idx) -> Tensor");

  // Compact masked linear: only the kept weights are stored, values [nnz] in CSR order (row_ptr
  // [N+1], col_idx [nnz], int32); y = x @ W.T + bias for x [B, K]. The CPU kernels are
  // O(nnz * B) and never build W; other devices run the Python reference. The CSC arrays
  // (col_ptr [K+1], row_idx, csc_to_csr) give K and ride along for autograd's grad_input.
  m.def(
      "compact_linear(Tensor x, Tensor values, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
      "Tensor row_idx, Tensor csc_to_csr, Tensor? bias) -> Tensor");
  // grad_x = grad_y @ W, by input column: col_ptr [K+1] / row_idx [nnz] (CSC) and csc_to_csr
  // [nnz], the position in values of each CSC entry.
  m.def(
      "compact_linear_grad_input(Tensor grad_y, Tensor values, Tensor col_ptr, Tensor row_idx, "
      "Tensor csc_to_csr) -> Tensor");
  // grad_values[p] = sum_b grad_y[b, row(p)] * x[b, col_idx[p]]: nnz-sized.
  m.def("compact_linear_grad_values(Tensor grad_y, Tensor x, Tensor row_ptr, Tensor col_idx) -> Tensor");

  // One pass over logits [N, C]: per-group loss sums, correct and count (int64), per-sample
  // correctness (bool) and the row logsumexp (saved for backward). Loss sums and logsumexp
  // are float32, or float64 for float64 logits (gradcheck).
  m.def(
      "group_cross_entropy(Tensor logits, Tensor target, Tensor group, int num_groups, "
      "float label_smoothing, int ignore_index) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // grad_logits[i] = (softmax_i - smoothed onehot_i) * grad_loss_sum[group[i]].
  m.def(
      "group_cross_entropy_backward(Tensor grad_loss_sum, Tensor logits, Tensor target, "
      "Tensor group, Tensor lse, float label_smoothing, int ignore_index) -> Tensor");
  // The forward above plus the gradient of sum_g group_weight[g] * loss_sum[g] written in
  // the same pass (one read of the logits in training instead of three). Returns
  // (loss_sum, correct, count, sample_correct, lse, grad_logits).
  m.def(
      "weighted_group_cross_entropy(Tensor logits, Tensor target, Tensor group, "
      "Tensor group_weight, float label_smoothing, int ignore_index) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Per-group ring buffers [G, k]: push values[i] into buffer[group[i]] in batch order.
  // head[G] (next write slot) and fill[G] (entries held, at most k) are int64.
  m.def(
      "replay_buffer_update_(Tensor(a!) buffer, Tensor(b!) head, Tensor(c!) fill, "
      "Tensor group, Tensor values) -> ()");
}
