// Per-CPU-capability compilation of the CPU kernels (as ATen's CPU_CAPABILITY dispatch).
//
// CMake compiles every csrc/cpu/*_cpu.cpp once per capability through a generated wrapper
// that defines CEAG_CAP_AVX512, CEAG_CAP_AVX2 or nothing (the portable baseline) and includes
// the kernel file. A kernel file includes this header after its ATen and standard headers
// and common.h (those stay compiled for the baseline, so the inline functions every
// translation unit shares are the same code everywhere), puts its kernels in namespace
// ceag::CEAG_CAP_NS and includes capability_end.h at the end. Between the two, GCC compiles
// for the capability's instruction set. csrc/cpu/dispatch.cpp registers, at load, the
// variant the running CPU supports (or $CEAG_CPU_CAPABILITY asks for).
//
// `#pragma GCC target` does not define __AVX512F__ (only -m flags do), so hand-written
// intrinsic paths test CEAG_SIMD_AVX512, defined here for the AVX-512 variant and for a
// native build on an AVX-512 machine. cpu_paths() in each kernel file reports which paths a
// variant holds; tests/ops/test_cpu_capability.py asks the built library, so a variant
// cannot silently lose its instruction-set path again.
#if defined(CEAG_CAP_AVX512)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,f16c,prefer-vector-width=512")
#define CEAG_CAP_NS cap_avx512
#define CEAG_SIMD_AVX512 1
#elif defined(CEAG_CAP_AVX2)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define CEAG_CAP_NS cap_avx2
#else
#define CEAG_CAP_NS cap_default
#if defined(__AVX512F__) && !defined(CEAG_CPU_VARIANTS)  // a native (-march=native) build
#define CEAG_SIMD_AVX512 1
#endif
#endif
