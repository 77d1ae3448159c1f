// quants.h — the ggml tensor types: geometry of every type a GGUF file may hold, and
// dequantization of the ones this runtime computes with.
//
//   const TypeInfo* ti = type_info(id);          // nullptr: not a ggml type (FormatError territory)
//   if (!ti->supported) -> UnsupportedError       // a real type (IQ*, TQ*, MXFP4, ...) we don't compute with
//   dequantize_row(GGMLType::Q4_K, src, dst, n)  // n a multiple of ti->block_size
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "quant_blocks.h"

namespace aircache {

struct TypeInfo {
    GGMLType type;
    const char* name;    // "Q4_K"
    int64_t block_size;  // elements per block (1 for plain types)
    int64_t type_size;   // bytes per block
    bool supported;      // dequantize_row / compute paths implement it
};

// Geometry for a ggml type id, or nullptr when the id is no (current) ggml type: ids past the end
// of the enum and the removed ones (4, 5, 31-33, 36-38).
const TypeInfo* type_info(uint32_t id);
const TypeInfo& type_info(GGMLType t);
// Look a type up by its name ("q4_k", "Q4_K"); nullptr when unknown.
const TypeInfo* type_info_by_name(const std::string& name);
// Comma-separated names of the supported types, for messages.
std::string supported_type_names();

// Throws UnsupportedError naming the type and `what` (e.g. "tensor 'blk.0.attn_q.weight'").
void require_supported(GGMLType t, const std::string& what);

// Bytes of a row of n elements (n a multiple of the block size; checked by callers).
inline size_t row_bytes(const TypeInfo& ti, int64_t n) {
    return static_cast<size_t>(n / ti.block_size) * static_cast<size_t>(ti.type_size);
}

// Dequantize n elements (a multiple of the block size) starting at `src` into `dst`.
// Throws UnsupportedError for types without a dequantizer and InputError for a bad n.
void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n);

// Quantize n floats into `dst` as F32, F16, Q8_0 or Q4_0 (n a multiple of 32 for the block types),
// bit for bit ggml's reference quantizers (quantize_row_q8_0_ref / quantize_row_q4_0_ref; what
// llama.cpp stores in a q8_0 / q4_0 KV cache): Q8_0 d = amax / 127, q = roundf(x / d); Q4_0 d =
// (the element of largest magnitude) / -8, q = min(15, (int)(x / d + 8.5)). InputError otherwise.
void quantize_row(GGMLType type, const float* src, void* dst, int64_t n);

}  // namespace aircache
