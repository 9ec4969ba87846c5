// CPU kernels of the segmented per-group cross-entropy (ceag::group_cross_entropy,
// ceag::group_cross_entropy_backward, ceag::weighted_group_cross_entropy).
//
// One sweep over logits [N, C]. Each row is processed in blocks of kBlock classes that stay
// in L1: a vectorized pass for the block max / first argmax (and the row sum when label
// smoothing needs it), then a pass for sum(exp(x - max)) with an online rescale between
// blocks; rows of up to kBlock classes are read from memory once. bf16/fp16 blocks are
// widened to fp32 first; float64 logits run in float64.
//
// Per-group sums go to privatized histograms, one per chunk of rows. The chunking depends
// only on (N, C, G), never on the thread count, and the chunks are reduced in chunk order,
// so the results are bit-identical for any torch.set_num_threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "capability.h"

#if defined(CEAG_SIMD_AVX512)
// GCC 12 flags _mm512_undefined_*() inside its own _mm512_reduce_* intrinsics: a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace ceag {
namespace CEAG_CAP_NS {
namespace {

constexpr int64_t kBlock = 4096;  // classes per block: 16 KiB of fp32, fits L1 with its twin

// ---------------------------------------------------------------------------------------
// Block primitives. Generic scalar versions (used for float64, and for float32 without
// AVX-512), plus AVX-512 overloads for float32.
// ---------------------------------------------------------------------------------------

// Max of the block, and optionally its sum.
template <typename A>
inline void block_max(const A* p, int64_t n, bool want_sum, A& bmax, A& bsum) {
  A m = -std::numeric_limits<A>::infinity();
  A s = 0;
  for (int64_t j = 0; j < n; ++j) m = p[j] > m ? p[j] : m;
  if (want_sum) {
    for (int64_t j = 0; j < n; ++j) s += p[j];
  }
  bmax = m;
  bsum = s;
}

// sum_j exp(p[j] - m), storing the exponentials in e_out when given; arg receives the first
// j with p[j] == m (torch.argmax's tie rule: the lowest index wins), or 0 if there is none.
template <typename A>
inline A block_sum_exp_arg(const A* p, int64_t n, A m, A* e_out, int64_t& arg) {
  A s = 0;
  int64_t found = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (found < 0 && p[j] == m) found = j;
    A e = std::exp(p[j] - m);
    if (e_out) e_out[j] = e;
    s += e;
  }
  arg = found < 0 ? 0 : found;
  return s;
}

// out[j] = exp(p[j] - shift) * scale + bias
template <typename A>
inline void block_affine_exp(const A* p, int64_t n, A shift, A scale, A bias, A* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = std::exp(p[j] - shift) * scale + bias;
}

// out[j] = e[j] * scale + bias (in place allowed)
template <typename A>
inline void block_affine(const A* e, int64_t n, A scale, A bias, A* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = e[j] * scale + bias;
}

#if defined(CEAG_SIMD_AVX512)
// exp for fp32 lanes: Cephes polynomial on [-ln2/2, ln2/2], scaled by 2^n with scalef
// (which also flushes very negative inputs to 0 and overflows large ones to inf). NaN
// propagates. Max error ~2 ulp.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-110.0f), x);  // max(c, NaN) returns NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

inline __mmask16 tail_mask(int64_t rem) { return static_cast<__mmask16>((1u << rem) - 1u); }

inline void block_max(const float* p, int64_t n, bool want_sum, float& bmax, float& bsum) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = ninf, m1 = ninf;
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 x0 = _mm512_loadu_ps(p + j), x1 = _mm512_loadu_ps(p + j + 16);
    m0 = _mm512_max_ps(m0, x0);
    m1 = _mm512_max_ps(m1, x1);
    if (want_sum) {
      s0 = _mm512_add_ps(s0, x0);
      s1 = _mm512_add_ps(s1, x1);
    }
  }
  for (; j + 16 <= n; j += 16) {
    const __m512 x0 = _mm512_loadu_ps(p + j);
    m0 = _mm512_max_ps(m0, x0);
    if (want_sum) s0 = _mm512_add_ps(s0, x0);
  }
  if (j < n) {
    const __mmask16 tm = tail_mask(n - j);
    const __m512 x0 = _mm512_mask_loadu_ps(ninf, tm, p + j);
    m0 = _mm512_max_ps(m0, x0);
    if (want_sum) s0 = _mm512_mask_add_ps(s0, tm, s0, x0);
  }
  bmax = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  bsum = want_sum ? _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) : 0.0f;
}

inline float block_sum_exp_arg(const float* p, int64_t n, float m, float* e_out, int64_t& arg) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t found = -1;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 x0 = _mm512_loadu_ps(p + j), x1 = _mm512_loadu_ps(p + j + 16);
    if (found < 0) {
      const uint32_t eq = static_cast<uint32_t>(_mm512_cmp_ps_mask(x0, vm, _CMP_EQ_OQ)) |
                          (static_cast<uint32_t>(_mm512_cmp_ps_mask(x1, vm, _CMP_EQ_OQ)) << 16);
      if (eq) found = j + __builtin_ctz(eq);
    }
    const __m512 e0 = exp512(_mm512_sub_ps(x0, vm));
    const __m512 e1 = exp512(_mm512_sub_ps(x1, vm));
    if (e_out) {
      _mm512_storeu_ps(e_out + j, e0);
      _mm512_storeu_ps(e_out + j + 16, e1);
    }
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; j + 16 <= n; j += 16) {
    const __m512 x0 = _mm512_loadu_ps(p + j);
    if (found < 0) {
      const uint32_t eq = _mm512_cmp_ps_mask(x0, vm, _CMP_EQ_OQ);
      if (eq) found = j + __builtin_ctz(eq);
    }
    const __m512 e0 = exp512(_mm512_sub_ps(x0, vm));
    if (e_out) _mm512_storeu_ps(e_out + j, e0);
    s0 = _mm512_add_ps(s0, e0);
  }
  if (j < n) {
    const __mmask16 tm = tail_mask(n - j);
    const __m512 x0 = _mm512_maskz_loadu_ps(tm, p + j);
    if (found < 0) {
      const uint32_t eq = _mm512_mask_cmp_ps_mask(tm, x0, vm, _CMP_EQ_OQ);
      if (eq) found = j + __builtin_ctz(eq);
    }
    const __m512 e0 = exp512(_mm512_sub_ps(x0, vm));
    if (e_out) _mm512_mask_storeu_ps(e_out + j, tm, e0);
    s0 = _mm512_mask_add_ps(s0, tm, s0, e0);
  }
  arg = found < 0 ? 0 : found;
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

inline void block_affine_exp(const float* p, int64_t n, float shift, float scale, float bias,
                             float* out) {
  const __m512 vsh = _mm512_set1_ps(shift), vsc = _mm512_set1_ps(scale), vb = _mm512_set1_ps(bias);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p + j), vsh));
    _mm512_storeu_ps(out + j, _mm512_fmadd_ps(e, vsc, vb));
  }
  if (j < n) {
    const __mmask16 tm = tail_mask(n - j);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, p + j), vsh));
    _mm512_mask_storeu_ps(out + j, tm, _mm512_fmadd_ps(e, vsc, vb));
  }
}

inline void block_affine(const float* e, int64_t n, float scale, float bias, float* out) {
  const __m512 vsc = _mm512_set1_ps(scale), vb = _mm512_set1_ps(bias);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    _mm512_storeu_ps(out + j, _mm512_fmadd_ps(_mm512_loadu_ps(e + j), vsc, vb));
  }
  if (j < n) {
    const __mmask16 tm = tail_mask(n - j);
    _mm512_mask_storeu_ps(out + j, tm, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, e + j), vsc, vb));
  }
}
#endif  // CEAG_SIMD_AVX512

// ---------------------------------------------------------------------------------------
// Widening loads and narrowing stores between the logits dtype T and the compute type A.
// ---------------------------------------------------------------------------------------

template <typename T, typename A>
inline const A* load_block(const T* x, int64_t n, A* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    return x;
  } else {
#if defined(CEAG_SIMD_AVX512)
    if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<A, float>) {
      int64_t j = 0;
      for (; j + 16 <= n; j += 16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
        _mm512_storeu_ps(scratch + j,
                         _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
      }
      for (; j < n; ++j) scratch[j] = static_cast<float>(x[j]);
      return scratch;
    }
    if constexpr (std::is_same_v<T, c10::Half> && std::is_same_v<A, float>) {
      int64_t j = 0;
      for (; j + 16 <= n; j += 16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
        _mm512_storeu_ps(scratch + j, _mm512_cvtph_ps(h));
      }
      for (; j < n; ++j) scratch[j] = static_cast<float>(x[j]);
      return scratch;
    }
#endif
    for (int64_t j = 0; j < n; ++j) scratch[j] = static_cast<A>(x[j]);
    return scratch;
  }
}

template <typename T, typename A>
inline void store_block(const A* src, int64_t n, T* dst) {
  if constexpr (std::is_same_v<T, A>) {
    if (static_cast<const void*>(src) != static_cast<const void*>(dst)) std::copy(src, src + n, dst);
  } else {
    // c10's conversions round to nearest even.
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
  }
}

template <typename T>
inline void zero_row(T* dst, int64_t n) {
  std::fill(dst, dst + n, static_cast<T>(0));
}

// ---------------------------------------------------------------------------------------
// Row statistics and the forward / backward sweeps.
// ---------------------------------------------------------------------------------------

template <typename A>
struct RowStats {
  A max;
  A sum;      // sum_j exp(x_j - max)
  A sum_x;    // sum_j x_j (label smoothing only)
  int64_t arg;
};

// Online (blockwise) max / argmax / sum-exp over one row. When the row fits in one block and
// e_out is given, e_out receives exp(x_j - max) for the whole row.
template <typename T, typename A>
inline RowStats<A> row_stats(const T* x, int64_t C, bool want_sum, A* scratch, A* e_out) {
  RowStats<A> st{-std::numeric_limits<A>::infinity(), A(0), A(0), 0};
  if (C <= kBlock) {
    const A* p = load_block<T, A>(x, C, scratch);
    block_max(p, C, want_sum, st.max, st.sum_x);
    st.sum = block_sum_exp_arg(p, C, st.max, e_out, st.arg);
    return st;
  }
  for (int64_t b0 = 0; b0 < C; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, C - b0);
    const A* p = load_block<T, A>(x + b0, nb, scratch);
    A bm, bs;
    block_max(p, nb, want_sum, bm, bs);
    const bool new_max = bm > st.max;
    if (new_max) {
      st.sum = b0 == 0 ? A(0) : st.sum * std::exp(st.max - bm);
      st.max = bm;
    }
    st.sum_x += bs;
    int64_t ba;
    st.sum += block_sum_exp_arg(p, nb, st.max, static_cast<A*>(nullptr), ba);
    if (new_max) st.arg = b0 + ba;  // ties with an earlier block: the earlier index stays
  }
  return st;
}

// grad_row = (exp(x - lse) - eps/C) * gw, then grad_row[t] -= (1 - eps) * gw, the target
// entry recomputed in the compute type so that narrow outputs round only once.
template <typename T, typename A>
inline void write_grad_row(const T* x, int64_t C, int64_t t, A lse, A gw, A eps, A* scratch,
                           T* out) {
  const A bias = -eps / static_cast<A>(C) * gw;
  for (int64_t b0 = 0; b0 < C; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, C - b0);
    const A* p = load_block<T, A>(x + b0, nb, scratch);
    if constexpr (std::is_same_v<T, A>) {
      block_affine_exp(p, nb, lse, gw, bias, out + b0);
    } else {
      block_affine_exp(p, nb, lse, gw, bias, scratch);
      store_block<T, A>(scratch, nb, out + b0);
    }
  }
  const A xt = static_cast<A>(x[t]);
  out[t] = static_cast<T>(std::exp(xt - lse) * gw + bias - (A(1) - eps) * gw);
}

// First j with x[j] NaN, or fallback if there is none. torch.argmax counts NaN as the
// maximum (the first NaN wins), which the max/argmax primitives above do not: a row whose
// exp-sum is NaN (it holds a NaN, or its max is +-inf) is rescanned here. Rare, so scalar.
template <typename T, typename A>
inline int64_t first_nan_or(const T* x, int64_t C, int64_t fallback) {
  for (int64_t j = 0; j < C; ++j) {
    if (std::isnan(static_cast<A>(x[j]))) return j;
  }
  return fallback;
}

struct Chunking {
  int64_t rows_per_chunk;
  int64_t num_chunks;
};

// Depends on the problem size only (determinism), never on the number of threads.
inline Chunking make_chunking(int64_t N, int64_t C, int64_t G) {
  if (N == 0) return {1, 0};
  constexpr int64_t kMaxChunks = 64;
  constexpr int64_t kMaxHistEntries = int64_t(1) << 21;  // chunks * G: bounds histogram memory
  const int64_t min_rows = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(C, 1));
  int64_t chunks = std::min<int64_t>(kMaxChunks, (N + min_rows - 1) / min_rows);
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, kMaxHistEntries / G));
  chunks = std::max<int64_t>(chunks, 1);
  const int64_t rows = (N + chunks - 1) / chunks;
  return {rows, (N + rows - 1) / rows};
}

void check_common(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& group,
                  double label_smoothing) {
  check_cpu(logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D [N, C], got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1, "logits must have at least one class, got shape ",
              logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "logits must be float32, float64, bfloat16 or float16, got ", dt);
  const int64_t N = logits.size(0);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"target", target},
                                std::pair<const char*, const at::Tensor&>{"group", group}}) {
    check_cpu(t, name);
    check_index_1d(t, name, N);
  }
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              "label_smoothing must be in [0, 1], got ", label_smoothing);
}

inline void check_row(int64_t i, int64_t t, int64_t g, int64_t C, int64_t G, int64_t ignore_index) {
  TORCH_CHECK(t == ignore_index || (t >= 0 && t < C), "target must be in [0, ", C,
              ") or equal ignore_index=", ignore_index, ", found ", t, " at index ", i);
  TORCH_CHECK(g >= 0 && g < G, "group must be in [0, ", G, "), found ", g, " at index ", i);
}

// Shared forward. grad_w (nullptr for the plain forward) makes it write the gradient of
// sum_g grad_w[g] * loss_sum[g] into grad_out during the same sweep.
template <typename T, typename A>
void forward_kernel(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& group,
                    int64_t G, double label_smoothing, int64_t ignore_index, const A* grad_w,
                    at::Tensor& loss_sum, at::Tensor& correct, at::Tensor& count,
                    at::Tensor& sample_correct, at::Tensor& lse_out, T* grad_out) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const T* X = logits.data_ptr<T>();
  const int64_t* tgt = target.data_ptr<int64_t>();
  const int64_t* grp = group.data_ptr<int64_t>();
  bool* sc = sample_correct.data_ptr<bool>();
  A* lse_p = lse_out.data_ptr<A>();
  const A eps = static_cast<A>(label_smoothing);
  const bool want_sum = label_smoothing != 0.0;
  const A eps_over_c = eps / static_cast<A>(C);

  const Chunking ch = make_chunking(N, C, G);
  std::vector<double> h_loss(static_cast<size_t>(ch.num_chunks * G), 0.0);
  std::vector<int64_t> h_correct(static_cast<size_t>(ch.num_chunks * G), 0);
  std::vector<int64_t> h_count(static_cast<size_t>(ch.num_chunks * G), 0);

  at::parallel_for(0, ch.num_chunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<A> scratch(static_cast<size_t>(std::min(C, kBlock)));
    std::vector<A> ebuf(grad_out && C <= kBlock ? static_cast<size_t>(C) : 0);
    for (int64_t c = cb; c < ce; ++c) {
      double* hl = h_loss.data() + c * G;
      int64_t* hc = h_correct.data() + c * G;
      int64_t* hn = h_count.data() + c * G;
      const int64_t r0 = c * ch.rows_per_chunk, r1 = std::min(N, r0 + ch.rows_per_chunk);
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t t = tgt[i], g = grp[i];
        check_row(i, t, g, C, G, ignore_index);
        const bool keep = t != ignore_index;
        const T* x = X + i * C;
        const bool fused_row = grad_out && keep && C <= kBlock;
        RowStats<A> st =
            row_stats<T, A>(x, C, want_sum, scratch.data(), fused_row ? ebuf.data() : nullptr);
        if (std::isnan(st.sum)) st.arg = first_nan_or<T, A>(x, C, st.arg);
        const A lse = st.max + std::log(st.sum);
        lse_p[i] = lse;
        const bool ok = keep && st.arg == t;
        sc[i] = ok;
        if (keep) {
          const A xt = static_cast<A>(x[t]);
          const A loss = lse - (A(1) - eps) * xt - eps_over_c * st.sum_x;
          hl[g] += static_cast<double>(loss);
          hc[g] += ok;
          hn[g] += 1;
        }
        if (grad_out) {
          T* out = grad_out + i * C;
          if (!keep) {
            zero_row(out, C);
          } else if (fused_row) {
            // The exponentials of this row are still in ebuf (L1): scale them in place.
            const A gw = grad_w[g];
            const A bias = -eps_over_c * gw;
            const A et = ebuf[t];
            if constexpr (std::is_same_v<T, A>) {
              block_affine(ebuf.data(), C, gw / st.sum, bias, out);
            } else {
              block_affine(ebuf.data(), C, gw / st.sum, bias, ebuf.data());
              store_block<T, A>(ebuf.data(), C, out);
            }
            out[t] = static_cast<T>(et * (gw / st.sum) + bias - (A(1) - eps) * gw);
          } else {
            write_grad_row<T, A>(x, C, t, lse, grad_w[g], eps, scratch.data(), out);
          }
        }
      }
    }
  });

  // Deterministic reduction over chunks, in chunk order, parallel over groups.
  A* ls = loss_sum.data_ptr<A>();
  int64_t* cr = correct.data_ptr<int64_t>();
  int64_t* cn = count.data_ptr<int64_t>();
  const int64_t nc = ch.num_chunks;
  at::parallel_for(0, G, 4096, [&](int64_t gb, int64_t ge) {
    for (int64_t g = gb; g < ge; ++g) {
      double l = 0.0;
      int64_t a = 0, b = 0;
      for (int64_t c = 0; c < nc; ++c) {
        l += h_loss[c * G + g];
        a += h_correct[c * G + g];
        b += h_count[c * G + g];
      }
      ls[g] = static_cast<A>(l);
      cr[g] = a;
      cn[g] = b;
    }
  });
}

template <typename T, typename A>
void backward_kernel(const at::Tensor& grad_loss_sum, const at::Tensor& logits,
                     const at::Tensor& target, const at::Tensor& group, const at::Tensor& lse,
                     double label_smoothing, int64_t ignore_index, at::Tensor& grad) {
  const int64_t N = logits.size(0), C = logits.size(1), G = grad_loss_sum.size(0);
  const T* X = logits.data_ptr<T>();
  const int64_t* tgt = target.data_ptr<int64_t>();
  const int64_t* grp = group.data_ptr<int64_t>();
  const A* gl = grad_loss_sum.data_ptr<A>();
  const A* lse_p = lse.data_ptr<A>();
  T* out = grad.data_ptr<T>();
  const A eps = static_cast<A>(label_smoothing);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / C);
  at::parallel_for(0, N, grain, [&](int64_t rb, int64_t re) {
    std::vector<A> scratch(static_cast<size_t>(std::min(C, kBlock)));
    for (int64_t i = rb; i < re; ++i) {
      const int64_t t = tgt[i], g = grp[i];
      check_row(i, t, g, C, G, ignore_index);
      if (t == ignore_index) {
        zero_row(out + i * C, C);
      } else {
        write_grad_row<T, A>(X + i * C, C, t, lse_p[i], gl[g], eps, scratch.data(), out + i * C);
      }
    }
  });
}

#define CEAG_DISPATCH_LOGITS(DT, NAME, ...)                                         \
  [&] {                                                                             \
    switch (DT) {                                                                   \
      case at::kFloat: {                                                            \
        using scalar_t = float;                                                     \
        using acc_t = float;                                                        \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      case at::kDouble: {                                                           \
        using scalar_t = double;                                                    \
        using acc_t = double;                                                       \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      case at::kBFloat16: {                                                         \
        using scalar_t = c10::BFloat16;                                             \
        using acc_t = float;                                                        \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      case at::kHalf: {                                                             \
        using scalar_t = c10::Half;                                                 \
        using acc_t = float;                                                        \
        return __VA_ARGS__();                                                       \
      }                                                                             \
      default:                                                                      \
        TORCH_CHECK(false, NAME, ": unsupported logits dtype ", DT);                \
    }                                                                               \
  }()

using Outputs5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Outputs6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs6 forward_impl(const at::Tensor& logits_, const at::Tensor& target_,
                      const at::Tensor& group_, int64_t num_groups,
                      const c10::optional<at::Tensor>& group_weight, double label_smoothing,
                      int64_t ignore_index) {
  check_common(logits_, target_, group_, label_smoothing);
  TORCH_CHECK(num_groups >= 1, "num_groups must be >= 1, got ", num_groups);
  const at::Tensor logits = logits_.contiguous();
  const at::Tensor target = target_.to(at::kLong).contiguous();
  const at::Tensor group = group_.to(at::kLong).contiguous();
  const int64_t N = logits.size(0), C = logits.size(1), G = num_groups;
  const auto acc = acc_dtype(logits);
  const auto fopt = logits.options().dtype(acc);
  at::Tensor loss_sum = at::empty({G}, fopt);
  at::Tensor correct = at::empty({G}, logits.options().dtype(at::kLong));
  at::Tensor count = at::empty({G}, logits.options().dtype(at::kLong));
  at::Tensor sample_correct = at::empty({N}, logits.options().dtype(at::kBool));
  at::Tensor lse = at::empty({N}, fopt);
  at::Tensor grad;
  at::Tensor w;
  if (group_weight.has_value()) {
    const at::Tensor& gw = *group_weight;
    check_cpu(gw, "group_weight");
    TORCH_CHECK(gw.dim() == 1 && gw.size(0) == G, "group_weight must be 1-D of length num_groups=",
                G, ", got shape ", gw.sizes());
    TORCH_CHECK(at::isFloatingType(gw.scalar_type()), "group_weight must be floating point, got ",
                gw.scalar_type());
    w = gw.to(acc).contiguous();
    grad = at::empty({N, C}, logits.options());
  }
  CEAG_DISPATCH_LOGITS(logits.scalar_type(), "group_cross_entropy", [&] {
    forward_kernel<scalar_t, acc_t>(logits, target, group, G, label_smoothing, ignore_index,
                                    w.defined() ? w.data_ptr<acc_t>() : nullptr, loss_sum,
                                    correct, count, sample_correct, lse,
                                    grad.defined() ? grad.data_ptr<scalar_t>() : nullptr);
  });
  return {loss_sum, correct, count, sample_correct, lse, grad};
}

Outputs5 group_cross_entropy_cpu(const at::Tensor& logits, const at::Tensor& target,
                                 const at::Tensor& group, int64_t num_groups,
                                 double label_smoothing, int64_t ignore_index) {
  auto r = forward_impl(logits, target, group, num_groups, c10::nullopt, label_smoothing,
                        ignore_index);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

Outputs6 weighted_group_cross_entropy_cpu(const at::Tensor& logits, const at::Tensor& target,
                                          const at::Tensor& group, const at::Tensor& group_weight,
                                          double label_smoothing, int64_t ignore_index) {
  TORCH_CHECK(group_weight.dim() == 1, "group_weight must be 1-D [num_groups], got shape ",
              group_weight.sizes());
  return forward_impl(logits, target, group, group_weight.size(0), group_weight, label_smoothing,
                      ignore_index);
}

at::Tensor group_cross_entropy_backward_cpu(const at::Tensor& grad_loss_sum,
                                            const at::Tensor& logits_, const at::Tensor& target_,
                                            const at::Tensor& group_, const at::Tensor& lse_,
                                            double label_smoothing, int64_t ignore_index) {
  check_common(logits_, target_, group_, label_smoothing);
  const at::Tensor logits = logits_.contiguous();
  const int64_t N = logits.size(0);
  const auto acc = acc_dtype(logits);
  check_cpu(grad_loss_sum, "grad_loss_sum");
  TORCH_CHECK(grad_loss_sum.dim() == 1 && grad_loss_sum.size(0) >= 1,
              "grad_loss_sum must be 1-D [num_groups], got shape ", grad_loss_sum.sizes());
  TORCH_CHECK(at::isFloatingType(grad_loss_sum.scalar_type()),
              "grad_loss_sum must be floating point, got ", grad_loss_sum.scalar_type());
  check_cpu(lse_, "lse");
  TORCH_CHECK(lse_.dim() == 1 && lse_.size(0) == N, "lse must be 1-D of length N=", N,
              ", got shape ", lse_.sizes());
  TORCH_CHECK(at::isFloatingType(lse_.scalar_type()), "lse must be floating point, got ",
              lse_.scalar_type());
  const at::Tensor target = target_.to(at::kLong).contiguous();
  const at::Tensor group = group_.to(at::kLong).contiguous();
  const at::Tensor gl = grad_loss_sum.to(acc).contiguous();
  const at::Tensor lse = lse_.to(acc).contiguous();
  at::Tensor grad = at::empty(logits.sizes(), logits.options());
  CEAG_DISPATCH_LOGITS(logits.scalar_type(), "group_cross_entropy_backward", [&] {
    backward_kernel<scalar_t, acc_t>(gl, logits, target, group, lse, label_smoothing,
                                     ignore_index, grad);
  });
  return grad;
}

}  // namespace

// The hand-written instruction-set path this variant holds (capability.h; asked by
// torch.ops.ceag.cpu_kernel_paths, so a build that loses it fails a test, not only speed).
const char* group_cross_entropy_path() {
#if defined(CEAG_SIMD_AVX512)
  return "avx512";
#else
  return "scalar";
#endif
}

void register_group_cross_entropy(torch::Library& m) {
  m.impl("group_cross_entropy", &group_cross_entropy_cpu);
  m.impl("group_cross_entropy_backward", &group_cross_entropy_backward_cpu);
  m.impl("weighted_group_cross_entropy", &weighted_group_cross_entropy_cpu);
}

}  // namespace CEAG_CAP_NS
}  // namespace ceag

#include "capability_end.h"
