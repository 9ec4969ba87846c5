// Registers the CPU kernels of the capability this CPU supports (see capability.h).
//
// Every kernel file is compiled for the portable baseline and, with GCC on x86-64, for AVX2
// and AVX-512; at load the widest one the CPU runs is registered, unless $CEAG_CPU_CAPABILITY
// (default, avx2 or avx512) asks for a narrower one (a wider one than the CPU has is refused
// with a warning). torch.ops.ceag.cpu_capability() says which one runs.
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

namespace ceag {

#define CEAG_DECLARE_KERNELS(ns)                            \
  namespace ns {                                            \
  void register_masked_linear(torch::Library& m);           \
  void register_compact_linear(torch::Library& m);          \
  void register_group_cross_entropy(torch::Library& m);     \
  void register_replay_buffer(torch::Library& m);           \
  const char* group_cross_entropy_path();                   \
  }                                                         \
  static void register_all_##ns(torch::Library& m) {        \
    ns::register_masked_linear(m);                          \
    ns::register_compact_linear(m);                         \
    ns::register_group_cross_entropy(m);                    \
    ns::register_replay_buffer(m);                          \
  }

CEAG_DECLARE_KERNELS(cap_default)
#if defined(CEAG_CPU_VARIANTS)
CEAG_DECLARE_KERNELS(cap_avx2)
CEAG_DECLARE_KERNELS(cap_avx512)
#endif

namespace {

const char* const kNames[] = {"default", "avx2", "avx512"};

int supported() {
#if defined(CEAG_CPU_VARIANTS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi2")) {
    return 2;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) return 1;
#endif
  return 0;
}

int chosen_level() {
  static const int level = [] {
    const int best = supported();
    const char* env = std::getenv("CEAG_CPU_CAPABILITY");
    if (env == nullptr || *env == '\0') return best;
    for (int i = 0; i < 3; ++i) {
      if (std::strcmp(env, kNames[i]) == 0) {
        if (i > best) {
          std::cerr << "ceag: warning: CEAG_CPU_CAPABILITY=" << env << " is not supported by this CPU or build; using "
                    << kNames[best] << "\n";
          return best;
        }
        return i;
      }
    }
    std::cerr << "ceag: warning: CEAG_CPU_CAPABILITY=" << env << " is not one of default, avx2, avx512; using "
              << kNames[best] << "\n";
    return best;
  }();
  return level;
}

}  // namespace

std::string cpu_capability() { return kNames[chosen_level()]; }

// "group_cross_entropy=<path>" for the variant ``capability`` as built (whatever this CPU
// runs: nothing is executed), or "not built" for a variant this build lacks.
std::string cpu_kernel_paths(const std::string& capability) {
  const char* path = nullptr;
  if (capability == "default") path = cap_default::group_cross_entropy_path();
#if defined(CEAG_CPU_VARIANTS)
  if (capability == "avx2") path = cap_avx2::group_cross_entropy_path();
  if (capability == "avx512") path = cap_avx512::group_cross_entropy_path();
#else
  if (capability == "avx2" || capability == "avx512") return "not built";
#endif
  TORCH_CHECK(path != nullptr, "cpu_kernel_paths: capability must be default, avx2 or avx512, got '", capability, "'");
  return std::string("group_cross_entropy=") + path;
}

TORCH_LIBRARY_IMPL(ceag, CPU, m) {
  switch (chosen_level()) {
#if defined(CEAG_CPU_VARIANTS)
    case 2:
      register_all_cap_avx512(m);
      break;
    case 1:
      register_all_cap_avx2(m);
      break;
#endif
    default:
      register_all_cap_default(m);
  }
}

}  // namespace ceag
