// dequant.cuh — device-pointer entry point of the dequantization kernels (for other kernel files).
#pragma once

#include <cuda_runtime.h>

#include "quant_blocks.h"

namespace aircache {
namespace cuda {

// n elements of `type` at d_src (device) -> d_dst (device floats), asynchronous on `stream`.
void dequantize_device(GGMLType type, const void* d_src, float* d_dst, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace aircache
