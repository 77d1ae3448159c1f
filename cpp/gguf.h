// gguf.h — a read-only, memory-mapped GGUF reader (versions 2 and 3, little-endian).
//
//   auto f = GGUFFile::open("model.gguf");             // validates everything up front
//   uint32_t n_layer = f->get_u32("llama.block_count");
//   const GGUFTensorInfo& t = f->tensor("token_embd.weight");
//   dequantize_row(t.type, t.data, out, t.ne[0]);
//
// Every count, length, dimension, offset and byte size is checked against the file size, in
// overflow-safe 64-bit arithmetic, before anything is allocated from it. Any defect is a
// FormatError whose message names the file, the field and the bad value (a byte-swapped file is an
// UnsupportedError). After open() returns, every tensor's data range lies inside the file and no
// two tensors overlap. Tensors of types this runtime cannot compute with (IQ*, TQ*, ...) are
// readable; require_supported() (quants.h) rejects them where they would be used.
//
// Typed getters are lenient like gguf-py: an integer getter accepts any integer type whose value
// fits, a float getter any float type (or integer); a value of the wrong kind or out of range is a
// FormatError naming the key, the stored type and the expected one. A missing key is a FormatError
// too, unless the getter is given a default.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "quants.h"

namespace aircache {

enum class GGUFType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GGUFType t);

// Limits (llama.cpp's, plus caps that keep a hostile file from asking for absurd work).
constexpr uint64_t kGGUFMaxString = uint64_t(1) << 30;      // bytes in one string
constexpr uint64_t kGGUFMaxArray = uint64_t(1) << 30;       // elements in one array
constexpr uint64_t kGGUFMaxAlignment = uint64_t(1) << 16;   // general.alignment
constexpr size_t kGGUFMaxTensorName = 63;                   // bytes (GGML_MAX_NAME - 1)
constexpr uint32_t kGGUFDefaultAlignment = 32;

// One metadata value. Scalars and numeric arrays point into the mapped file (unaligned: read them
// through the accessors); strings are views into the file.
struct GGUFValue {
    GGUFType type = GGUFType::UINT8;  // ARRAY for arrays
    GGUFType elem = GGUFType::UINT8;  // element type of an array; == type for scalars
    uint64_t count = 1;               // array length (1 for scalars)
    const uint8_t* data = nullptr;    // scalar bytes / first packed array element
    std::vector<std::string_view> strings;  // the string (STRING) or elements (ARRAY of STRING)

    bool is_array() const { return type == GGUFType::ARRAY; }
    bool is_integer() const;  // scalar of an integer type
    bool is_float() const;    // scalar FLOAT32/FLOAT64
    // Element i of a numeric array (or the scalar at i = 0) as int64/uint64/double. For integers
    // `as_i64` fails on uint64 values above INT64_MAX (checked by the getters).
    int64_t int_at(uint64_t i) const;
    uint64_t uint_at(uint64_t i) const;
    double float_at(uint64_t i) const;
    std::string type_name() const;  // "UINT32", "ARRAY[STRING]"
};

struct GGUFKV {
    std::string key;
    GGUFValue value;
};

struct GGUFTensorInfo {
    std::string name;
    GGMLType type = GGMLType::F32;
    uint32_t n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is contiguous; the numpy shape is ne reversed
    uint64_t offset = 0;           // relative to the data section
    uint64_t nbytes = 0;
    int64_t n_elements = 0;
    const uint8_t* data = nullptr; // into the mapping
    const TypeInfo* info = nullptr;

    int64_t n_rows() const { return n_elements / ne[0]; }
    std::string shape_str() const;  // "[4096, 32000]" in ne order
};

class GGUFFile {
public:
    // Maps and validates a file. IOError when the OS refuses, FormatError when malformed.
    static std::unique_ptr<GGUFFile> open(const std::string& path);
    // Parses a buffer the caller keeps alive (fuzzing, tests). `name` appears in messages.
    static std::unique_ptr<GGUFFile> from_memory(const void* data, size_t size, const std::string& name = "<memory>");
    // Whether the bytes are a read-only mapping of the file (open), not caller memory (from_memory).
    bool mapped() const { return map_ != nullptr; }
    ~GGUFFile();
    GGUFFile(const GGUFFile&) = delete;
    GGUFFile& operator=(const GGUFFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
    uint64_t file_size() const { return size_; }
    const uint8_t* base() const { return base_; }

    // --- metadata ---
    const std::vector<GGUFKV>& kvs() const { return kvs_; }
    const GGUFValue* find(std::string_view key) const;
    bool has(std::string_view key) const { return find(key) != nullptr; }
    std::string architecture() const;  // general.architecture, or "" when absent

    uint32_t get_u32(std::string_view key) const;
    uint32_t get_u32(std::string_view key, uint32_t def) const;
    int32_t get_i32(std::string_view key) const;
    int32_t get_i32(std::string_view key, int32_t def) const;
    uint64_t get_u64(std::string_view key) const;
    int64_t get_i64(std::string_view key) const;
    int64_t get_i64(std::string_view key, int64_t def) const;
    float get_f32(std::string_view key) const;
    float get_f32(std::string_view key, float def) const;
    bool get_bool(std::string_view key) const;
    bool get_bool(std::string_view key, bool def) const;
    std::string get_str(std::string_view key) const;
    std::string get_str(std::string_view key, const std::string& def) const;
    std::vector<std::string_view> get_str_array(std::string_view key) const;
    std::vector<float> get_f32_array(std::string_view key) const;
    std::vector<int64_t> get_int_array(std::string_view key) const;
    // Length of an array value (FormatError when not an array).
    uint64_t get_array_len(std::string_view key) const;

    // --- tensors ---
    const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
    const GGUFTensorInfo* find_tensor(std::string_view name) const;
    // FormatError "missing tensor" when absent.
    const GGUFTensorInfo& tensor(std::string_view name) const;

    // "<path>: <msg>" as a FormatError, for loaders that find a defect in otherwise valid files.
    [[noreturn]] void fail(const std::string& msg) const;
    // FormatError for a per-layer tensor "<prefix><i>.*" with i >= n_blocks (`key` says n_blocks):
    // a file that stores more layers than its metadata declares (llama.cpp refuses it too).
    void check_block_tensors(const std::string& prefix, int64_t n_blocks, const std::string& key) const;

private:
    GGUFFile() = default;
    void parse();
    const GGUFValue& require(std::string_view key) const;
    [[noreturn]] void wrong_type(std::string_view key, const GGUFValue& v, const char* expected) const;
    template <class T> T get_int(std::string_view key, const char* tname) const;

    std::string path_;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    void* map_ = nullptr;  // owned mapping (nullptr for from_memory)
    uint32_t version_ = 0;
    uint64_t alignment_ = kGGUFDefaultAlignment;
    uint64_t data_offset_ = 0;
    std::vector<GGUFKV> kvs_;
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<GGUFTensorInfo> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace aircache
