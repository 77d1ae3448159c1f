// cuda_api.h — the host-side entry points implemented in cuda/ (compiled only with CUDA).
// Every function checks every CUDA call and throws aircache::Error naming the statement, file and
// line, or OutOfMemory (Python MemoryError) with the bytes asked for and free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "quant_blocks.h"

namespace aircache {
namespace cuda {

// Number of devices usable with the driver present; 0 when there is no driver or no device
// (never throws: the static runtime reports a missing driver as an error code).
int device_count() noexcept;
// "NVIDIA H200 (sm_90, 139.8 GiB)"; throws when the device does not exist.
std::string device_description(int device);

// Dequantize n elements of `type` (host bytes in, host floats out) on `device`: copies the raw
// blocks to the device, runs the dequantization kernel, copies the floats back.
void dequantize_on_device(GGMLType type, const void* src, size_t src_bytes, float* dst, int64_t n, int device);

}  // namespace cuda
}  // namespace aircache
