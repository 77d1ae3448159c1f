#include "gguf_writer.h"

#include <cstring>

#include "common.h"

namespace aircache {

namespace {

template <class T> void put(std::vector<uint8_t>& out, T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // little-endian hosts only (as the reader)
    out.insert(out.end(), b, b + sizeof(T));
}

void put_str(std::vector<uint8_t>& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

void GGUFWriter::kv_header(const std::string& key, GGUFType t) {
    put_str(kv_, key);
    put<uint32_t>(kv_, static_cast<uint32_t>(t));
    ++n_kv_;
}

void GGUFWriter::add_u32(const std::string& key, uint32_t v) {
    kv_header(key, GGUFType::UINT32);
    put(kv_, v);
}
void GGUFWriter::add_i32(const std::string& key, int32_t v) {
    kv_header(key, GGUFType::INT32);
    put(kv_, v);
}
void GGUFWriter::add_f32(const std::string& key, float v) {
    kv_header(key, GGUFType::FLOAT32);
    put(kv_, v);
}
void GGUFWriter::add_bool(const std::string& key, bool v) {
    kv_header(key, GGUFType::BOOL);
    put<uint8_t>(kv_, v ? 1 : 0);
}
void GGUFWriter::add_str(const std::string& key, const std::string& v) {
    kv_header(key, GGUFType::STRING);
    put_str(kv_, v);
}
void GGUFWriter::add_f32_array(const std::string& key, const std::vector<float>& v) {
    kv_header(key, GGUFType::ARRAY);
    put<uint32_t>(kv_, static_cast<uint32_t>(GGUFType::FLOAT32));
    put<uint64_t>(kv_, v.size());
    for (float x : v) put(kv_, x);
}
void GGUFWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
    kv_header(key, GGUFType::ARRAY);
    put<uint32_t>(kv_, static_cast<uint32_t>(GGUFType::INT32));
    put<uint64_t>(kv_, v.size());
    for (int32_t x : v) put(kv_, x);
}
void GGUFWriter::add_str_array(const std::string& key, const std::vector<std::string>& v) {
    kv_header(key, GGUFType::ARRAY);
    put<uint32_t>(kv_, static_cast<uint32_t>(GGUFType::STRING));
    put<uint64_t>(kv_, v.size());
    for (const std::string& x : v) put_str(kv_, x);
}

void GGUFWriter::add_tensor(const std::string& name, GGMLType type, const std::vector<int64_t>& ne,
                            std::vector<uint8_t> data) {
    const TypeInfo& ti = type_info(type);
    int64_t rows = 1;
    for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
    const size_t want = row_bytes(ti, ne.at(0)) * static_cast<size_t>(rows);
    if (ne[0] % ti.block_size != 0 || data.size() != want)
        throw Error(strprintf("GGUFWriter: tensor '%s' holds %zu bytes, its type %s and shape need %zu", name.c_str(),
                              data.size(), ti.name, want));
    tensors_.push_back(Tensor{name, type, ne, std::move(data)});
}

std::vector<uint8_t> GGUFWriter::bytes() const {
    constexpr size_t kAlign = 32;
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
    put<uint32_t>(out, 3);
    put<uint64_t>(out, tensors_.size());
    put<uint64_t>(out, n_kv_);
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    for (const Tensor& t : tensors_) {
        put_str(out, t.name);
        put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
        for (int64_t d : t.ne) put<uint64_t>(out, static_cast<uint64_t>(d));
        put<uint32_t>(out, static_cast<uint32_t>(t.type));
        put<uint64_t>(out, offset);
        offset += (t.data.size() + kAlign - 1) / kAlign * kAlign;
    }
    out.resize((out.size() + kAlign - 1) / kAlign * kAlign, 0);
    for (const Tensor& t : tensors_) {
        out.insert(out.end(), t.data.begin(), t.data.end());
        out.resize((out.size() + kAlign - 1) / kAlign * kAlign, 0);
    }
    return out;
}

}  // namespace aircache
