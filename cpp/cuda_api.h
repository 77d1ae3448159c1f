// cuda_api.h — the host-side entry points implemented in cuda/ (with CUDA) or in
// cpp/nocuda/cuda_stub.cpp (without: every call there is an UnsupportedError, except
// device_count() which is 0). The ops themselves are the CUDA backend's (backend/backend.h,
// make_cuda_backend). Host code never includes CUDA headers: device pointers are void*.
// Every function checks every CUDA call and throws aircache::Error naming the statement, file and
// line, or OutOfMemory (Python MemoryError) with the bytes asked for and free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quant_blocks.h"

namespace aircache {
namespace cuda {

// Number of devices usable with the driver present; 0 when there is no driver or no device
// (never throws: the static runtime reports a missing driver as an error code).
int device_count() noexcept;
// "NVIDIA H200 (sm_90, 139.8 GiB)"; throws when the device does not exist.
std::string device_description(int device);
// Free and total bytes of the device.
void memory_info(int device, size_t& free_bytes, size_t& total_bytes);
// Whether the build found cuBLAS headers (the library itself is loaded at run time).
bool built_with_cublas() noexcept;
// How prefill GEMMs run: "cuBLAS <version> (<library path>)" or "built-in kernels (<why cuBLAS is not used>)".
std::string gemm_backend(int device);

// --- memory ---
void* device_malloc(size_t bytes, int device);  // OutOfMemory naming the bytes asked for and free
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes, int device);
void copy_to_host(void* dst, const void* src, size_t bytes, int device);
void copy_on_device(void* dst, const void* src, size_t bytes, int device);
void memset_device(void* dst, int value, size_t bytes, int device);

// Dequantize n elements of `type` (host bytes in, host floats out) on `device`: copies the raw
// blocks to the device, runs the dequantization kernel, copies the floats back.
void dequantize_on_device(GGMLType type, const void* src, size_t src_bytes, float* dst, int64_t n, int device);

}  // namespace cuda
}  // namespace aircache
