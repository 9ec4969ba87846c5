// CUDA kernels of the masked linear op: y = x (W⊙M)ᵀ + b, grad_x = gy (W⊙M) and
// grad_W = (gyᵀ x) ⊙ M, on a dense bool mask (the CSR/CSC arguments are CPU-only and ignored).
//
// All three are one tiled shared-memory GEMM C[m, n] = Σ_k A(m, k) · B(k, n) whose operands
// are read through strides, so the transposes cost nothing:
//   forward      A = x  [B, K]  (m=b, k=k)   B(k, n) = W[n, k] ⊙ M[n, k]   + bias[n]
//   grad_input   A = gy [B, N]  (m=b, k=n)   B(k, n) = W[k, n] ⊙ M[k, n]
//   grad_weight  A(m, k) = gy[k, m]           B(k, n) = x[k, n]             C ⊙ M (epilogue)
// The mask is applied while a B tile is copied into shared memory, so W⊙M never exists in
// global memory; a B tile whose mask block is all zero is skipped (no A load, no math).
//   fp32 / fp64: SIMT kernel, 64x64 block tile, BK=16, 256 threads, 4x4 outputs per thread.
//   fp16 / bf16: tensor cores through WMMA 16x16x16 with fp32 accumulation, 64x64 block tile,
//                BK=32, 4 warps of 32x32 each; the epilogue goes through shared memory.
// Loads are element-wise, bounds-checked and zero-filled, so any M, N, K work; consecutive
// threads walk the operand's contiguous dimension so global loads coalesce.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <cstring>
#include <optional>

namespace ceag::cuda_impl {
namespace {

// Operands of C[M, N] = A[M, K] · B[K, N], all as element strides.
template <typename scalar_t>
struct GemmArgs {
  const scalar_t* a;
  int64_t sam, sak;  // A(m, k) = a[m * sam + k * sak]
  const scalar_t* b;
  int64_t sbk, sbn;            // B(k, n) = b[k * sbk + n * sbn]
  const uint8_t* b_mask;       // nullptr, or the mask of B with B's strides
  const uint8_t* c_mask;       // nullptr, or a mask applied to C (laid out like C)
  const scalar_t* bias;        // nullptr, or bias[n]
  scalar_t* c;                 // C(m, n) = c[m * ldc + n]
  int64_t ldc;
  int64_t M, N, K;
  bool a_vec, b_vec;  // operand may be read with 16-byte loads (see operand_vectorizable)
};

// Reads VEC mask bytes at p (VEC-byte aligned) with one load.
template <int VEC>
__device__ __forceinline__ void load_mask_bytes(const uint8_t* p, uint8_t (&out)[VEC]) {
  if constexpr (VEC == 8) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    memcpy(out, &u, 8);
  } else if constexpr (VEC == 4) {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
    memcpy(out, &u, 4);
  } else if constexpr (VEC == 2) {
    const uint16_t u = *reinterpret_cast<const uint16_t*>(p);
    memcpy(out, &u, 2);
  } else {
    static_assert(VEC == 1, "unsupported vector width");
    out[0] = *p;
  }
}

// Loads an O x IN operand tile whose IN dimension is contiguous in memory: tile element
// (o, in) is src[(o0 + o) * so + in0 + in], zero outside [0, o_lim) x [0, in_lim) and zero
// where the optional mask (same layout as src) is 0; store(o, in, value) puts it in shared
// memory. Consecutive threads take consecutive elements along IN, so loads coalesce. With
// vec, VEC = 16 / sizeof(raw_t) elements move as one 16-byte load: the host guarantees
// 16-byte aligned bases and so, in_lim multiples of VEC, so a vector (starting at a multiple
// of VEC) lies entirely inside or entirely outside the matrix. Returns whether any mask
// element in the tile was set.
template <int O, int IN, int NT, typename raw_t, typename Store>
__device__ __forceinline__ int load_tile(const raw_t* __restrict__ src,
                                         const uint8_t* __restrict__ msk, int64_t so, int64_t o0,
                                         int64_t in0, int64_t o_lim, int64_t in_lim, bool vec,
                                         Store store) {
  constexpr int VEC = 16 / sizeof(raw_t);
  static_assert(IN % VEC == 0, "tile width must be a multiple of the vector width");
  int any = 0;
  if (vec) {
    for (int e = threadIdx.x; e < O * IN / VEC; e += NT) {
      const int o = e / (IN / VEC), in = (e % (IN / VEC)) * VEC;
      const int64_t go = o0 + o, gi = in0 + in;
      raw_t v[VEC];
      if (go < o_lim && gi < in_lim) {
        const int64_t off = go * so + gi;
        const uint4 u = *reinterpret_cast<const uint4*>(src + off);
        memcpy(v, &u, 16);
        if (msk != nullptr) {
          uint8_t mb[VEC];
          load_mask_bytes<VEC>(msk + off, mb);
#pragma unroll
          for (int t = 0; t < VEC; ++t) {
            if (mb[t] == 0) v[t] = raw_t(0);
            else any = 1;
          }
        }
      } else {
#pragma unroll
        for (int t = 0; t < VEC; ++t) v[t] = raw_t(0);
      }
#pragma unroll
      for (int t = 0; t < VEC; ++t) store(o, in + t, v[t]);
    }
  } else {
    for (int e = threadIdx.x; e < O * IN; e += NT) {
      const int o = e / IN, in = e % IN;
      const int64_t go = o0 + o, gi = in0 + in;
      raw_t v = raw_t(0);
      if (go < o_lim && gi < in_lim) {
        const int64_t off = go * so + gi;
        const bool keep = msk == nullptr || msk[off] != 0;
        if (keep) v = src[off];
        any |= keep && msk != nullptr;
      }
      store(o, in, v);
    }
  }
  return any;
}

// The A tile (BM x BK, stored by set_a(m, k, v)) and the masked B tile (BK x BN, stored by
// set_b(k, n, v)) of k-step k0; every operand has one unit stride (the host checks).
// Returns whether the B tile has any kept element (always true without a B mask).
template <int BM, int BN, int BK, int NT, typename raw_t, typename scalar_t, typename SetB>
__device__ __forceinline__ int load_b_tile(const GemmArgs<scalar_t>& p, const raw_t* b,
                                           int64_t k0, int64_t n0, SetB set_b) {
  int any;
  if (p.sbn == 1) {  // rows of B along k, contiguous along n
    any = load_tile<BK, BN, NT>(b, p.b_mask, p.sbk, k0, n0, p.K, p.N, p.b_vec,
                                [&](int k, int n, raw_t v) { set_b(k, n, v); });
  } else {  // contiguous along k
    any = load_tile<BN, BK, NT>(b, p.b_mask, p.sbn, n0, k0, p.N, p.K, p.b_vec,
                                [&](int n, int k, raw_t v) { set_b(k, n, v); });
  }
  return any | (p.b_mask == nullptr);
}

template <int BM, int BN, int BK, int NT, typename raw_t, typename scalar_t, typename SetA>
__device__ __forceinline__ void load_a_tile(const GemmArgs<scalar_t>& p, const raw_t* a,
                                            int64_t m0, int64_t k0, SetA set_a) {
  if (p.sak == 1) {  // contiguous along k
    load_tile<BM, BK, NT>(a, nullptr, p.sam, m0, k0, p.M, p.K, p.a_vec,
                          [&](int m, int k, raw_t v) { set_a(m, k, v); });
  } else {  // contiguous along m
    load_tile<BK, BM, NT>(a, nullptr, p.sak, k0, m0, p.K, p.M, p.a_vec,
                          [&](int k, int m, raw_t v) { set_a(m, k, v); });
  }
}

// ---------------------------------------------------------------------------------------
// SIMT kernel (fp32 with FFMA, fp64).
// ---------------------------------------------------------------------------------------
constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16, kSimtThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSimtThreads)
    masked_gemm_simt_kernel(const GemmArgs<scalar_t> p) {
  constexpr int BM = kSimtBM, BN = kSimtBN, BK = kSimtBK;
  // k-major tiles; +1 column breaks the bank conflicts of k-contiguous stores.
  __shared__ acc_t As[BK][BM + 1];
  __shared__ acc_t Bs[BK][BN + 1];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;  // thread owns rows ty+16i, columns tx+16j
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
    // B tile (masked) first: an all-zero mask block skips the A load and the math.
    const int any = load_b_tile<BM, BN, BK, kSimtThreads>(
        p, p.b, k0, n0, [&](int k, int n, scalar_t v) { Bs[k][n] = static_cast<acc_t>(v); });
    if (!__syncthreads_or(any)) continue;  // uniform: every thread sees the same result
    load_a_tile<BM, BN, BK, kSimtThreads>(
        p, p.a, m0, k0, [&](int m, int k, scalar_t v) { As[k][m] = static_cast<acc_t>(v); });
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= p.N) continue;
      acc_t v = acc[i][j];
      if (p.bias != nullptr) v += static_cast<acc_t>(p.bias[n]);
      const int64_t off = m * p.ldc + n;
      if (p.c_mask != nullptr && p.c_mask[off] == 0) v = acc_t(0);
      p.c[off] = static_cast<scalar_t>(v);
    }
  }
}

// ---------------------------------------------------------------------------------------
// WMMA kernel (fp16, bf16) with fp32 accumulation.
// ---------------------------------------------------------------------------------------
template <typename scalar_t>
struct WmmaType;
template <>
struct WmmaType<at::Half> {
  using type = __half;
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

constexpr int kWmmaBM = 64, kWmmaBN = 64, kWmmaBK = 32, kWmmaThreads = 128;
constexpr int kWmmaLdA = kWmmaBK + 8;  // leading dims: multiples of 8 halves (16 bytes)
constexpr int kWmmaLdB = kWmmaBN + 8;
constexpr int kWmmaLdC = kWmmaBN + 4;  // multiple of 4 floats

template <typename scalar_t>
__global__ void __launch_bounds__(kWmmaThreads)
    masked_gemm_wmma_kernel(const GemmArgs<scalar_t> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 WMMA needs sm_80; the build targets sm_80 and sm_90
#else
  using namespace nvcuda;
  using T = typename WmmaType<scalar_t>::type;
  static_assert(sizeof(scalar_t) == 2 && sizeof(T) == 2, "16-bit types only");
  constexpr int BM = kWmmaBM, BN = kWmmaBN, BK = kWmmaBK;
  // Tiles hold raw 16-bit patterns (0 is +0.0 in fp16 and bf16); fragment loads need
  // 32-byte aligned pointers: every fragment origin below is a multiple of 32 bytes.
  __shared__ __align__(128) uint16_t As[BM * kWmmaLdA];  // row-major [m][k]
  __shared__ __align__(128) uint16_t Bs[BK * kWmmaLdB];  // row-major [k][n]
  __shared__ __align__(128) float Cs[BM * kWmmaLdC];     // row-major [m][n]

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int wr = warp / 2, wc = warp % 2;  // warp computes rows wr*32.., columns wc*32..
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const uint16_t* a = reinterpret_cast<const uint16_t*>(p.a);
  const uint16_t* b = reinterpret_cast<const uint16_t*>(p.b);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
    const int any = load_b_tile<BM, BN, BK, kWmmaThreads>(
        p, b, k0, n0, [&](int k, int n, uint16_t v) { Bs[k * kWmmaLdB + n] = v; });
    if (!__syncthreads_or(any)) continue;
    load_a_tile<BM, BN, BK, kWmmaThreads>(
        p, a, m0, k0, [&](int m, int k, uint16_t v) { As[m * kWmmaLdA + k] = v; });
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(
            fa[i], reinterpret_cast<const T*>(&As[(wr * 32 + i * 16) * kWmmaLdA + kk]), kWmmaLdA);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(
            fb[j], reinterpret_cast<const T*>(&Bs[kk * kWmmaLdB + wc * 32 + j * 16]), kWmmaLdB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[(wr * 32 + i * 16) * kWmmaLdC + wc * 32 + j * 16], acc[i][j],
                              kWmmaLdC, wmma::mem_row_major);
  __syncthreads();

  for (int e = tid; e < BM * BN; e += kWmmaThreads) {
    const int mm = e / BN, nn = e % BN;
    const int64_t m = m0 + mm, n = n0 + nn;
    if (m >= p.M || n >= p.N) continue;
    float v = Cs[mm * kWmmaLdC + nn];
    if (p.bias != nullptr) v += static_cast<float>(p.bias[n]);
    const int64_t off = m * p.ldc + n;
    if (p.c_mask != nullptr && p.c_mask[off] == 0) v = 0.0f;
    p.c[off] = static_cast<scalar_t>(v);
  }
#endif
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// 16-byte loads of an operand are safe when its base is 16-byte aligned and both its row
// stride and the length of its contiguous dimension are multiples of the vector width.
bool operand_vectorizable(const void* ptr, const uint8_t* mask, int64_t row_stride,
                          int64_t contiguous_len, int64_t vec) {
  return aligned16(ptr) && (mask == nullptr || aligned16(mask)) && row_stride % vec == 0 &&
         contiguous_len % vec == 0;
}

template <typename scalar_t>
void launch_masked_gemm(GemmArgs<scalar_t> p) {
  if (p.M == 0 || p.N == 0) return;
  TORCH_CHECK((p.sak == 1 || p.sam == 1) && (p.sbn == 1 || p.sbk == 1),
              "masked_linear (cuda): internal error, operand without a unit stride");
  constexpr int64_t vec = 16 / sizeof(scalar_t);
  p.a_vec = p.sak == 1 ? operand_vectorizable(p.a, nullptr, p.sam, p.K, vec)
                       : operand_vectorizable(p.a, nullptr, p.sak, p.M, vec);
  p.b_vec = p.sbn == 1 ? operand_vectorizable(p.b, p.b_mask, p.sbk, p.N, vec)
                       : operand_vectorizable(p.b, p.b_mask, p.sbn, p.K, vec);
  const bool wmma = std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>;
  const int bm = wmma ? kWmmaBM : kSimtBM, bn = wmma ? kWmmaBN : kSimtBN;
  const int64_t gx = (p.M + bm - 1) / bm, gy = (p.N + bn - 1) / bn;
  TORCH_CHECK(gx <= INT32_MAX && gy <= 65535, "masked_linear (cuda): sizes too large (M=", p.M,
              ", N=", p.N, ")");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
    masked_gemm_wmma_kernel<scalar_t><<<grid, kWmmaThreads, 0, stream>>>(p);
  } else {
    masked_gemm_simt_kernel<scalar_t, scalar_t><<<grid, kSimtThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor bool_mask(const at::Tensor& mask) {
  at::Tensor m = mask.scalar_type() == at::kBool ? mask : mask.ne(0);
  return m.contiguous();
}

const uint8_t* mask_ptr(const at::Tensor& m) {
  return static_cast<const uint8_t*>(m.const_data_ptr());
}

void check_common(const char* op, const at::Tensor& a, const at::Tensor& weight,
                  const at::Tensor& mask) {
  TORCH_CHECK(a.is_cuda() && weight.is_cuda() && mask.is_cuda(), op,
              " (cuda): all inputs must be CUDA tensors");
  TORCH_CHECK(weight.dim() == 2, op, " (cuda): weight/grad must be 2-D, got ", weight.sizes());
  TORCH_CHECK(mask.sizes() == weight.sizes(), op, " (cuda): mask shape ", mask.sizes(),
              " must equal ", weight.sizes());
  TORCH_CHECK(a.device() == weight.device() && a.device() == mask.device(), op,
              " (cuda): inputs on different devices");
}

// y = x (W⊙M)ᵀ + b, x [..., K] (flattened to [B, K]), W/M [N, K].
at::Tensor masked_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& /*csr_ptr*/,
                              const std::optional<at::Tensor>& /*csr_idx*/,
                              const std::optional<at::Tensor>& /*csc_ptr*/,
                              const std::optional<at::Tensor>& /*csc_idx*/) {
  check_common("masked_linear", x, weight, mask);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "masked_linear (cuda): x ", x.sizes(),
              " does not match weight ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "masked_linear (cuda): weight dtype ",
              weight.scalar_type(), " != x dtype ", x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor m = bool_mask(mask);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "masked_linear (cuda): bias must have ", N, " elements");
    b = bias->to(x.scalar_type()).contiguous();
  }
  const int64_t B = x2.size(0);
  at::Tensor y = at::empty({B, N}, x2.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x2.scalar_type(),
                                  "masked_linear_cuda", [&] {
    GemmArgs<scalar_t> p{};
    p.a = x2.const_data_ptr<scalar_t>(); p.sam = K; p.sak = 1;
    p.b = w.const_data_ptr<scalar_t>(); p.sbk = 1; p.sbn = K;
    p.b_mask = mask_ptr(m);
    p.c_mask = nullptr;
    p.bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    p.c = y.mutable_data_ptr<scalar_t>(); p.ldc = N;
    p.M = B; p.N = N; p.K = K;
    launch_masked_gemm(p);
  });
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(N);
  return y.view(out_shape);
}

// grad_x = gy (W⊙M), gy [B, N] -> [B, K].
at::Tensor masked_linear_grad_input_cuda(const at::Tensor& grad_y, const at::Tensor& weight,
                                         const at::Tensor& mask,
                                         const std::optional<at::Tensor>& /*csc_ptr*/,
                                         const std::optional<at::Tensor>& /*csc_idx*/) {
  check_common("masked_linear_grad_input", grad_y, weight, mask);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(grad_y.dim() >= 1 && grad_y.size(-1) == N, "masked_linear_grad_input (cuda): ",
              "grad_y ", grad_y.sizes(), " does not match weight ", weight.sizes());
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const at::Tensor gy = grad_y.reshape({-1, N}).contiguous();
  const at::Tensor w = weight.to(gy.scalar_type()).contiguous();
  const at::Tensor m = bool_mask(mask);
  const int64_t B = gy.size(0);
  at::Tensor gx = at::empty({B, K}, gy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(),
                                  "masked_linear_grad_input_cuda", [&] {
    GemmArgs<scalar_t> p{};
    p.a = gy.const_data_ptr<scalar_t>(); p.sam = N; p.sak = 1;
    p.b = w.const_data_ptr<scalar_t>(); p.sbk = K; p.sbn = 1;
    p.b_mask = mask_ptr(m);
    p.c_mask = nullptr;
    p.bias = nullptr;
    p.c = gx.mutable_data_ptr<scalar_t>(); p.ldc = K;
    p.M = B; p.N = K; p.K = N;
    launch_masked_gemm(p);
  });
  std::vector<int64_t> out_shape(grad_y.sizes().begin(), grad_y.sizes().end() - 1);
  out_shape.push_back(K);
  return gx.view(out_shape);
}

// grad_W = (gyᵀ x) ⊙ M, gy [B, N], x [B, K] -> [N, K]; exactly zero where the mask is 0.
at::Tensor masked_linear_grad_weight_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                          const at::Tensor& mask,
                                          const std::optional<at::Tensor>& /*csr_ptr*/,
                                          const std::optional<at::Tensor>& /*csr_idx*/) {
  check_common("masked_linear_grad_weight", grad_y, mask, mask);
  TORCH_CHECK(x.is_cuda() && x.device() == grad_y.device(),
              "masked_linear_grad_weight (cuda): x must be on ", grad_y.device());
  const int64_t N = mask.size(0), K = mask.size(1);
  TORCH_CHECK(grad_y.dim() >= 1 && grad_y.size(-1) == N && x.dim() >= 1 && x.size(-1) == K,
              "masked_linear_grad_weight (cuda): grad_y ", grad_y.sizes(), " and x ", x.sizes(),
              " do not match mask ", mask.sizes());
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const at::Tensor gy = grad_y.reshape({-1, N}).contiguous();
  const at::Tensor x2 = x.reshape({-1, K}).to(gy.scalar_type()).contiguous();
  TORCH_CHECK(gy.size(0) == x2.size(0), "masked_linear_grad_weight (cuda): batch sizes differ (",
              gy.size(0), " vs ", x2.size(0), ")");
  const at::Tensor m = bool_mask(mask);
  const int64_t B = gy.size(0);
  at::Tensor gw = at::empty({N, K}, gy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(),
                                  "masked_linear_grad_weight_cuda", [&] {
    GemmArgs<scalar_t> p{};
    p.a = gy.const_data_ptr<scalar_t>(); p.sam = 1; p.sak = N;
    p.b = x2.const_data_ptr<scalar_t>(); p.sbk = K; p.sbn = 1;
    p.b_mask = nullptr;
    p.c_mask = mask_ptr(m);
    p.bias = nullptr;
    p.c = gw.mutable_data_ptr<scalar_t>(); p.ldc = K;
    p.M = N; p.N = K; p.K = B;
    launch_masked_gemm(p);
  });
  return gw;
}

}  // namespace
}  // namespace ceag::cuda_impl

TORCH_LIBRARY_IMPL(ceag, CUDA, m) {
  m.impl("masked_linear", &ceag::cuda_impl::masked_linear_cuda);
  m.impl("masked_linear_grad_input", &ceag::cuda_impl::masked_linear_grad_input_cuda);
  m.impl("masked_linear_grad_weight", &ceag::cuda_impl::masked_linear_grad_weight_cuda);
}
