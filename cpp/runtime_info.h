// runtime_info.h — what this build contains and what the machine offers.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace aircache {

struct BuildInfo {
    std::string version;
    std::string compiler;            // "GNU 12.2.0"
    std::string build_type;          // "Release"
    bool cuda = false;               // CUDA kernels compiled in
    std::string cuda_compiler;       // "NVCC 13.0.88" (empty without CUDA)
    std::string cuda_architectures;  // "80,86,87,89,90"
    std::string cuda_gemm;           // prefill GEMMs: "cuBLAS (loaded at run time)" or "built-in kernels (...)"
    std::vector<std::string> simd_compiled;  // instruction sets the baseline code may use
    std::vector<std::string> simd_cpu;       // what this CPU supports (runtime detection)
    std::string system;              // "Linux x86_64"
    std::vector<std::string> image_formats;  // image files this build decodes: "png", "jpeg"
};

BuildInfo build_info();

// One human-readable block (aircache-cli --version).
std::string build_info_text();

// True when CUDA was built in and a usable device with a working driver is present.
bool cuda_available();
// Number of usable CUDA devices (0 without CUDA, driver or device).
int cuda_device_count();

}  // namespace aircache
