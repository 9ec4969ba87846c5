// Ends the capability's instruction set (see capability.h).
#if defined(CEAG_CAP_AVX512) || defined(CEAG_CAP_AVX2)
#pragma GCC pop_options
#endif
#undef CEAG_CAP_NS
#undef CEAG_SIMD_AVX512
