// tensor.h — a read-only view of a 2-D weight matrix stored in a GGUF file (any supported type).
//
// Rows are ggml rows: ne[0] contiguous elements (the input dimension of a linear layer, a token's
// embedding), ne[1]*ne[2]*ne[3] rows (the output dimension). A PyTorch Linear weight [out, in]
// is a Weight with n_cols = in, n_rows = out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.h"
#include "quants.h"

namespace aircache {

namespace cpu {
struct PackedWeight;
}

struct Weight {
    std::string name;
    GGMLType type = GGMLType::F32;
    const TypeInfo* info = nullptr;
    int64_t n_cols = 0;    // ne[0]
    int64_t n_rows = 0;    // product of the other dims
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;
    // The rows repacked for the CPU kernels (cpu/repack.h), when made at load; data stays the
    // file's layout for every other reader.
    const cpu::PackedWeight* packed = nullptr;

    explicit operator bool() const { return data != nullptr; }
    const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }

    // A view of a tensor; UnsupportedError for types without compute support.
    static Weight from(const GGUFTensorInfo& t, const std::string& file);
};

// The whole tensor dequantized to float (norm gains, biases, small embeddings).
std::vector<float> dequantize_tensor(const GGUFTensorInfo& t, const std::string& file);

// FormatError naming the tensor and the first index when `v` holds a NaN or an infinity.
void check_finite(const GGUFFile& f, const std::string& tensor, const float* v, int64_t n);

// Every value of every tensor of `f` a model uses (its supported types) checked finite, in parallel
// rows (check_tensors / --check-tensors): FormatError naming the first bad tensor, row and column.
class ThreadPool;
void check_all_tensors(const GGUFFile& f, ThreadPool& pool);

}  // namespace aircache
