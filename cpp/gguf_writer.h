// gguf_writer.h — a minimal in-memory GGUF (v3) writer: metadata and tensors, llama.cpp layout
// (tensor data back to back, each aligned to 32 bytes). Used to build random-weight models for
// benchmarks without touching the disk; the bytes are read back by GGUFFile::from_memory, so they
// go through the same validation as any file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.h"

namespace aircache {

class GGUFWriter {
public:
    void add_u32(const std::string& key, uint32_t v);
    void add_i32(const std::string& key, int32_t v);
    void add_f32(const std::string& key, float v);
    void add_bool(const std::string& key, bool v);
    void add_str(const std::string& key, const std::string& v);
    void add_f32_array(const std::string& key, const std::vector<float>& v);
    void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
    void add_str_array(const std::string& key, const std::vector<std::string>& v);
    // ne in GGUF order (ne[0] contiguous); data: the raw bytes of the type (checked against ne).
    void add_tensor(const std::string& name, GGMLType type, const std::vector<int64_t>& ne, std::vector<uint8_t> data);
    std::vector<uint8_t> bytes() const;

private:
    struct Tensor {
        std::string name;
        GGMLType type;
        std::vector<int64_t> ne;
        std::vector<uint8_t> data;
    };
    void kv_header(const std::string& key, GGUFType t);
    std::vector<uint8_t> kv_;
    uint64_t n_kv_ = 0;
    std::vector<Tensor> tensors_;
};

}  // namespace aircache
