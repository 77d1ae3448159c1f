#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"

namespace aircache {

namespace {

constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" read as a little-endian u32

size_t gguf_scalar_size(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
        case GGUFType::UINT16: case GGUFType::INT16: return 2;
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
        case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
        default: return 0;  // STRING, ARRAY: variable
    }
}

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) { return static_cast<uint32_t>(rd16(p)) | (static_cast<uint32_t>(rd16(p + 2)) << 16); }
uint64_t rd64(const uint8_t* p) { return static_cast<uint64_t>(rd32(p)) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }

// Bounds-checked sequential reads over the file. Every failure names the field being read.
class Cursor {
public:
    Cursor(const uint8_t* base, uint64_t size, const std::string& path) : base_(base), size_(size), path_(path) {}

    uint64_t pos() const { return pos_; }
    uint64_t remaining() const { return size_ - pos_; }

    [[noreturn]] void fail(const std::string& msg) const { throw FormatError(path_ + ": " + msg); }

    void need(uint64_t n, const std::string& what) const {
        if (n > remaining())
            fail(strprintf("truncated file: %s (%llu bytes at offset %llu) runs past the end of the file (size %llu)",
                           what.c_str(), static_cast<unsigned long long>(n), static_cast<unsigned long long>(pos_),
                           static_cast<unsigned long long>(size_)));
    }
    const uint8_t* take(uint64_t n, const std::string& what) {
        need(n, what);
        const uint8_t* p = base_ + pos_;
        pos_ += n;
        return p;
    }
    uint32_t u32(const std::string& what) { return rd32(take(4, what)); }
    uint64_t u64(const std::string& what) { return rd64(take(8, what)); }

    // A GGUF string: u64 length + bytes.
    std::string_view str(const std::string& what) {
        uint64_t len = u64("length of " + what);
        if (len > kGGUFMaxString)
            fail(strprintf("%s has length %llu, above the limit of %llu bytes", what.c_str(),
                           static_cast<unsigned long long>(len), static_cast<unsigned long long>(kGGUFMaxString)));
        const uint8_t* p = take(len, what);
        return std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(len));
    }

private:
    const uint8_t* base_;
    uint64_t size_;
    uint64_t pos_ = 0;
    const std::string& path_;
};

std::string quote(std::string_view s) { return "'" + printable(s) + "'"; }

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GGUFType::FLOAT64); }

}  // namespace

const char* gguf_type_name(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: return "UINT8";
        case GGUFType::INT8: return "INT8";
        case GGUFType::UINT16: return "UINT16";
        case GGUFType::INT16: return "INT16";
        case GGUFType::UINT32: return "UINT32";
        case GGUFType::INT32: return "INT32";
        case GGUFType::FLOAT32: return "FLOAT32";
        case GGUFType::BOOL: return "BOOL";
        case GGUFType::STRING: return "STRING";
        case GGUFType::ARRAY: return "ARRAY";
        case GGUFType::UINT64: return "UINT64";
        case GGUFType::INT64: return "INT64";
        case GGUFType::FLOAT64: return "FLOAT64";
    }
    return "INVALID";
}

// ------------------------------------------------------------------------------------------------
// GGUFValue
// ------------------------------------------------------------------------------------------------

static bool is_int_type(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64: return true;
        default: return false;
    }
}
static bool is_float_type(GGUFType t) { return t == GGUFType::FLOAT32 || t == GGUFType::FLOAT64; }
static bool is_signed_type(GGUFType t) {
    return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}

bool GGUFValue::is_integer() const { return !is_array() && is_int_type(type); }
bool GGUFValue::is_float() const { return !is_array() && is_float_type(type); }

int64_t GGUFValue::int_at(uint64_t i) const {
    const uint8_t* p = data + i * gguf_scalar_size(elem);
    switch (elem) {
        case GGUFType::UINT8: return p[0];
        case GGUFType::INT8: return static_cast<int8_t>(p[0]);
        case GGUFType::UINT16: return rd16(p);
        case GGUFType::INT16: return static_cast<int16_t>(rd16(p));
        case GGUFType::UINT32: return rd32(p);
        case GGUFType::INT32: return static_cast<int32_t>(rd32(p));
        case GGUFType::UINT64: return static_cast<int64_t>(rd64(p));
        case GGUFType::INT64: return static_cast<int64_t>(rd64(p));
        case GGUFType::BOOL: return p[0];
        default: return 0;
    }
}

uint64_t GGUFValue::uint_at(uint64_t i) const {
    if (elem == GGUFType::UINT64) return rd64(data + i * 8);
    return static_cast<uint64_t>(int_at(i));
}

double GGUFValue::float_at(uint64_t i) const {
    const uint8_t* p = data + i * gguf_scalar_size(elem);
    if (elem == GGUFType::FLOAT32) return bits_to_f32(rd32(p));
    if (elem == GGUFType::FLOAT64) {
        uint64_t u = rd64(p);
        double d;
        std::memcpy(&d, &u, sizeof(d));
        return d;
    }
    if (elem == GGUFType::UINT64) return static_cast<double>(uint_at(i));
    return static_cast<double>(int_at(i));
}

std::string GGUFValue::type_name() const {
    if (is_array()) return std::string("ARRAY[") + gguf_type_name(elem) + "]";
    return gguf_type_name(type);
}

std::string GGUFTensorInfo::shape_str() const {
    std::string s = "[";
    for (uint32_t i = 0; i < n_dims; ++i) {
        if (i) s += ", ";
        s += std::to_string(ne[i]);
    }
    return s + "]";
}

// ------------------------------------------------------------------------------------------------
// Opening and parsing
// ------------------------------------------------------------------------------------------------

std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        throw IOError(e, path, strprintf("cannot open '%s': %s", path.c_str(), std::strerror(e)));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        throw IOError(e, path, strprintf("cannot stat '%s': %s", path.c_str(), std::strerror(e)));
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        throw IOError(EISDIR, path, strprintf("cannot open '%s': it is a directory", path.c_str()));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw FormatError(path + ": not a regular file");
    }
    if (st.st_size == 0) {
        ::close(fd);
        throw FormatError(path + ": empty file (0 bytes), not a GGUF file");
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    void* m = mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);
    if (m == MAP_FAILED) throw IOError(e, path, strprintf("cannot map '%s': %s", path.c_str(), std::strerror(e)));

    std::unique_ptr<GGUFFile> f(new GGUFFile());
    f->path_ = path;
    f->base_ = static_cast<const uint8_t*>(m);
    f->size_ = size;
    f->map_ = m;
    f->parse();
    return f;
}

std::unique_ptr<GGUFFile> GGUFFile::from_memory(const void* data, size_t size, const std::string& name) {
    std::unique_ptr<GGUFFile> f(new GGUFFile());
    f->path_ = name;
    f->base_ = static_cast<const uint8_t*>(data);
    f->size_ = size;
    if (size == 0) throw FormatError(name + ": empty file (0 bytes), not a GGUF file");
    f->parse();
    return f;
}

GGUFFile::~GGUFFile() {
    if (map_) munmap(map_, static_cast<size_t>(size_));
}

void GGUFFile::check_block_tensors(const std::string& prefix, int64_t n_blocks, const std::string& key) const {
    for (const GGUFTensorInfo& t : tensors_) {
        if (t.name.compare(0, prefix.size(), prefix) != 0) continue;
        int64_t i = 0;
        size_t k = prefix.size();
        for (; k < t.name.size() && t.name[k] >= '0' && t.name[k] <= '9' && i < (int64_t(1) << 40); ++k)
            i = i * 10 + (t.name[k] - '0');
        if (k > prefix.size() && k < t.name.size() && t.name[k] == '.' && i >= n_blocks)
            fail(strprintf("tensor '%s' is for layer %lld but %s is %lld", printable(t.name).c_str(),
                           static_cast<long long>(i), key.c_str(), static_cast<long long>(n_blocks)));
    }
}

void GGUFFile::fail(const std::string& msg) const { throw FormatError(path_ + ": " + msg); }

void GGUFFile::parse() {
    Cursor c(base_, size_, path_);

    // --- header ---
    c.need(4, "magic");
    const uint32_t magic = rd32(base_);
    if (magic != kMagic) {
        char shown[5] = {0, 0, 0, 0, 0};
        std::memcpy(shown, base_, 4);
        fail(strprintf("bad magic %s (0x%08x): not a GGUF file (expected \"GGUF\")",
                       quote(std::string_view(shown, 4)).c_str(), magic));
    }
    c.take(4, "magic");
    version_ = c.u32("version");
    if (version_ == 0) fail("invalid GGUF version 0");
    if ((version_ & 0xFFFFu) == 0)
        throw UnsupportedError(strprintf(
            "%s: the file is big-endian (version field reads 0x%08x); only little-endian GGUF files are supported",
            path_.c_str(), version_));
    if (version_ == 1)
        fail("GGUF version 1 is not supported (an obsolete format with 32-bit counts); re-convert the model");
    if (version_ > 3) fail(strprintf("unknown GGUF version %u (this reader reads versions 2 and 3)", version_));

    const uint64_t n_tensors = c.u64("tensor count");
    const uint64_t n_kv = c.u64("metadata count");
    // Smallest possible records: a KV is key length (8) + 1 key byte + type (4) + 1 value byte;
    // a tensor info is name length (8) + 1 name byte + n_dims (4) + 1 dim (8) + type (4) + offset (8).
    if (n_tensors > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(strprintf("tensor count %llu is negative as int64", static_cast<unsigned long long>(n_tensors)));
    if (n_kv > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(strprintf("metadata count %llu is negative as int64", static_cast<unsigned long long>(n_kv)));
    if (n_kv > c.remaining() / 14)
        fail(strprintf("metadata count %llu cannot fit in the remaining %llu bytes of the file",
                       static_cast<unsigned long long>(n_kv), static_cast<unsigned long long>(c.remaining())));
    if (n_tensors > c.remaining() / 33)
        fail(strprintf("tensor count %llu cannot fit in the remaining %llu bytes of the file",
                       static_cast<unsigned long long>(n_tensors), static_cast<unsigned long long>(c.remaining())));

    // --- metadata ---
    kvs_.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
        const std::string entry = strprintf("metadata entry #%llu", static_cast<unsigned long long>(i));
        std::string_view key = c.str("key of " + entry);
        if (key.empty()) fail(entry + " has an empty key");
        const std::string what = "key " + quote(key);
        if (kv_index_.count(std::string(key))) fail("duplicate key " + quote(key));

        GGUFValue v;
        const uint32_t t = c.u32("value type of " + what);
        if (!valid_value_type(t)) fail(strprintf("%s has invalid value type %u", what.c_str(), t));
        v.type = v.elem = static_cast<GGUFType>(t);
        if (v.type == GGUFType::ARRAY) {
            const uint32_t et = c.u32("array element type of " + what);
            if (!valid_value_type(et)) fail(strprintf("%s: array has invalid element type %u", what.c_str(), et));
            v.elem = static_cast<GGUFType>(et);
            if (v.elem == GGUFType::ARRAY) fail(what + ": nested arrays (arrays of arrays) are not supported");
            v.count = c.u64("array length of " + what);
            if (v.count > kGGUFMaxArray)
                fail(strprintf("%s: array length %llu is above the limit of %llu elements", what.c_str(),
                               static_cast<unsigned long long>(v.count), static_cast<unsigned long long>(kGGUFMaxArray)));
            if (v.elem == GGUFType::STRING) {
                if (v.count > c.remaining() / 8)
                    fail(strprintf("%s: array of %llu strings cannot fit in the remaining %llu bytes of the file",
                                   what.c_str(), static_cast<unsigned long long>(v.count),
                                   static_cast<unsigned long long>(c.remaining())));
                v.strings.reserve(static_cast<size_t>(v.count));
                for (uint64_t k = 0; k < v.count; ++k)
                    v.strings.push_back(c.str(strprintf("element %llu of %s", static_cast<unsigned long long>(k), what.c_str())));
            } else {
                const uint64_t es = gguf_scalar_size(v.elem);
                if (v.count > c.remaining() / es)
                    fail(strprintf("%s: array of %llu %s values (%llu bytes each) runs past the end of the file",
                                   what.c_str(), static_cast<unsigned long long>(v.count), gguf_type_name(v.elem),
                                   static_cast<unsigned long long>(es)));
                v.data = c.take(v.count * es, "array of " + what);
                if (v.elem == GGUFType::BOOL)
                    for (uint64_t k = 0; k < v.count; ++k)
                        if (v.data[k] > 1)
                            fail(strprintf("%s: element %llu is an invalid bool byte %u", what.c_str(),
                                           static_cast<unsigned long long>(k), v.data[k]));
            }
        } else if (v.type == GGUFType::STRING) {
            v.strings.push_back(c.str("string value of " + what));
        } else {
            v.data = c.take(gguf_scalar_size(v.type), "value of " + what);
            if (v.type == GGUFType::BOOL && v.data[0] > 1)
                fail(strprintf("%s has an invalid bool byte %u (must be 0 or 1)", what.c_str(), v.data[0]));
        }
        kv_index_.emplace(std::string(key), kvs_.size());
        kvs_.push_back(GGUFKV{std::string(key), std::move(v)});
    }

    // --- alignment ---
    if (const GGUFValue* a = find("general.alignment")) {
        if (a->type != GGUFType::UINT32)
            fail("key 'general.alignment' has type " + a->type_name() + ", must be UINT32");
        const uint32_t al = rd32(a->data);
        if (al == 0 || (al & (al - 1)) != 0 || al > kGGUFMaxAlignment)
            fail(strprintf("key 'general.alignment' is %u: must be a power of two between 1 and %llu", al,
                           static_cast<unsigned long long>(kGGUFMaxAlignment)));
        alignment_ = al;
    }

    // --- tensor infos ---
    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        const std::string entry = strprintf("tensor info #%llu", static_cast<unsigned long long>(i));
        const uint64_t name_len = rd64(c.take(8, "name length of " + entry));
        if (name_len == 0) fail(entry + " has an empty name");
        if (name_len > kGGUFMaxTensorName) {
            std::string_view head;
            if (c.remaining() > 0) head = std::string_view(reinterpret_cast<const char*>(base_ + c.pos()),
                                                           static_cast<size_t>(std::min<uint64_t>(c.remaining(), 40)));
            fail(strprintf("%s: tensor name is %llu bytes long (%s...), above the limit of %zu bytes", entry.c_str(),
                           static_cast<unsigned long long>(name_len), quote(head).c_str(), kGGUFMaxTensorName));
        }
        std::string_view name(reinterpret_cast<const char*>(c.take(name_len, "name of " + entry)),
                              static_cast<size_t>(name_len));
        const std::string what = "tensor " + quote(name);
        if (tensor_index_.count(std::string(name))) fail("duplicate tensor name " + quote(name));

        GGUFTensorInfo t;
        t.name = std::string(name);
        t.n_dims = c.u32("n_dims of " + what);
        if (t.n_dims < 1 || t.n_dims > 4) fail(strprintf("%s has n_dims %u (must be 1 to 4)", what.c_str(), t.n_dims));
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            const uint64_t ne = c.u64(strprintf("dimension %u of %s", d, what.c_str()));
            if (ne == 0) fail(strprintf("%s: dimension %u is 0 (must be at least 1)", what.c_str(), d));
            if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                fail(strprintf("%s: dimension %u is negative (%lld)", what.c_str(), d,
                               static_cast<long long>(static_cast<int64_t>(ne))));
            t.ne[d] = static_cast<int64_t>(ne);
        }
        const uint32_t type_id = c.u32("type of " + what);
        t.info = type_info(type_id);
        if (!t.info) fail(strprintf("%s has unknown ggml type id %u", what.c_str(), type_id));
        t.type = t.info->type;
        if (t.info->block_size == 0)
            throw UnsupportedError(strprintf("%s: %s has type %s (id %u), whose layout this runtime does not know",
                                             path_.c_str(), what.c_str(), t.info->name, type_id));
        t.offset = c.u64("data offset of " + what);

        // element count and byte size, overflow-checked
        int64_t n = 1;
        for (int d = 0; d < 4; ++d)
            if (__builtin_mul_overflow(n, t.ne[d], &n))
                fail(strprintf("%s: element count of shape %s overflows 64 bits", what.c_str(), t.shape_str().c_str()));
        t.n_elements = n;
        if (t.ne[0] % t.info->block_size != 0)
            fail(strprintf("%s: row length %lld is not a multiple of the %s block size %lld", what.c_str(),
                           static_cast<long long>(t.ne[0]), t.info->name, static_cast<long long>(t.info->block_size)));
        uint64_t nbytes = static_cast<uint64_t>(t.ne[0] / t.info->block_size);
        bool ovf = __builtin_mul_overflow(nbytes, static_cast<uint64_t>(t.info->type_size), &nbytes);
        for (int d = 1; d < 4; ++d) ovf = ovf || __builtin_mul_overflow(nbytes, static_cast<uint64_t>(t.ne[d]), &nbytes);
        ovf = ovf || nbytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
        if (ovf) fail(strprintf("%s: byte size of %s shape %s overflows int64", what.c_str(), t.info->name, t.shape_str().c_str()));
        t.nbytes = nbytes;
        if (t.offset % alignment_ != 0)
            fail(strprintf("%s: data offset %llu is not a multiple of the alignment %llu", what.c_str(),
                           static_cast<unsigned long long>(t.offset), static_cast<unsigned long long>(alignment_)));
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // --- data section ---
    const uint64_t end_of_infos = c.pos();
    data_offset_ = end_of_infos;
    if (n_tensors > 0) {
        data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;  // end_of_infos <= size < 2^63
        if (data_offset_ > size_)
            fail(strprintf("truncated file: the data section would start at offset %llu, past the end of the file (size %llu)",
                           static_cast<unsigned long long>(data_offset_), static_cast<unsigned long long>(size_)));
    }
    const uint64_t data_size = size_ - data_offset_;
    for (GGUFTensorInfo& t : tensors_) {
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            fail(strprintf("tensor %s: data [%llu, %llu) (offset %llu, %llu bytes) extends past the end of the file: "
                           "the data section holds %llu bytes (file truncated or offset out of range)",
                           quote(t.name).c_str(), static_cast<unsigned long long>(data_offset_ + t.offset),
                           static_cast<unsigned long long>(data_offset_ + t.offset + t.nbytes),
                           static_cast<unsigned long long>(t.offset), static_cast<unsigned long long>(t.nbytes),
                           static_cast<unsigned long long>(data_size)));
        t.data = base_ + data_offset_ + t.offset;
    }
    std::vector<const GGUFTensorInfo*> order;
    order.reserve(tensors_.size());
    for (const GGUFTensorInfo& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const GGUFTensorInfo* a, const GGUFTensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
        const GGUFTensorInfo* a = order[i - 1];
        const GGUFTensorInfo* b = order[i];
        if (a->offset + a->nbytes > b->offset)
            fail(strprintf("tensors %s [%llu, %llu) and %s [%llu, %llu) overlap in the data section",
                           quote(a->name).c_str(), static_cast<unsigned long long>(a->offset),
                           static_cast<unsigned long long>(a->offset + a->nbytes), quote(b->name).c_str(),
                           static_cast<unsigned long long>(b->offset), static_cast<unsigned long long>(b->offset + b->nbytes)));
    }
}

// ------------------------------------------------------------------------------------------------
// Metadata access
// ------------------------------------------------------------------------------------------------

const GGUFValue* GGUFFile::find(std::string_view key) const {
    auto it = kv_index_.find(std::string(key));
    return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

const GGUFValue& GGUFFile::require(std::string_view key) const {
    const GGUFValue* v = find(key);
    if (!v) fail("missing metadata key " + quote(key));
    return *v;
}

void GGUFFile::wrong_type(std::string_view key, const GGUFValue& v, const char* expected) const {
    fail(strprintf("key %s has type %s, expected %s", quote(key).c_str(), v.type_name().c_str(), expected));
}

std::string GGUFFile::architecture() const { return get_str("general.architecture", ""); }

template <class T> T GGUFFile::get_int(std::string_view key, const char* tname) const {
    const GGUFValue& v = require(key);
    if (!v.is_integer()) wrong_type(key, v, (std::string("an integer (") + tname + ")").c_str());
    if (is_signed_type(v.type)) {
        const int64_t x = v.int_at(0);
        if (x < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
            (x > 0 && static_cast<uint64_t>(x) > static_cast<uint64_t>(std::numeric_limits<T>::max())))
            fail(strprintf("key %s value %lld does not fit in %s", quote(key).c_str(), static_cast<long long>(x), tname));
        return static_cast<T>(x);
    }
    const uint64_t x = v.uint_at(0);
    if (x > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        fail(strprintf("key %s value %llu does not fit in %s", quote(key).c_str(), static_cast<unsigned long long>(x), tname));
    return static_cast<T>(x);
}

uint32_t GGUFFile::get_u32(std::string_view key) const { return get_int<uint32_t>(key, "u32"); }
uint32_t GGUFFile::get_u32(std::string_view key, uint32_t def) const { return has(key) ? get_u32(key) : def; }
int32_t GGUFFile::get_i32(std::string_view key) const { return get_int<int32_t>(key, "i32"); }
int32_t GGUFFile::get_i32(std::string_view key, int32_t def) const { return has(key) ? get_i32(key) : def; }
uint64_t GGUFFile::get_u64(std::string_view key) const { return get_int<uint64_t>(key, "u64"); }
int64_t GGUFFile::get_i64(std::string_view key) const { return get_int<int64_t>(key, "i64"); }
int64_t GGUFFile::get_i64(std::string_view key, int64_t def) const { return has(key) ? get_i64(key) : def; }

float GGUFFile::get_f32(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (v.is_float()) return static_cast<float>(v.float_at(0));
    if (v.is_integer()) return static_cast<float>(v.float_at(0));
    wrong_type(key, v, "a number (f32)");
}
float GGUFFile::get_f32(std::string_view key, float def) const { return has(key) ? get_f32(key) : def; }

bool GGUFFile::get_bool(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (v.type != GGUFType::BOOL) wrong_type(key, v, "BOOL");
    return v.data[0] != 0;
}
bool GGUFFile::get_bool(std::string_view key, bool def) const { return has(key) ? get_bool(key) : def; }

std::string GGUFFile::get_str(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (v.type != GGUFType::STRING) wrong_type(key, v, "STRING");
    return std::string(v.strings[0]);
}
std::string GGUFFile::get_str(std::string_view key, const std::string& def) const {
    return has(key) ? get_str(key) : def;
}

std::vector<std::string_view> GGUFFile::get_str_array(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (!v.is_array() || v.elem != GGUFType::STRING) wrong_type(key, v, "ARRAY[STRING]");
    return v.strings;
}

std::vector<float> GGUFFile::get_f32_array(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (!v.is_array() || !(is_float_type(v.elem) || is_int_type(v.elem))) wrong_type(key, v, "an array of numbers");
    std::vector<float> out(static_cast<size_t>(v.count));
    for (uint64_t i = 0; i < v.count; ++i) out[i] = static_cast<float>(v.float_at(i));
    return out;
}

std::vector<int64_t> GGUFFile::get_int_array(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (!v.is_array() || !is_int_type(v.elem)) wrong_type(key, v, "an array of integers");
    std::vector<int64_t> out(static_cast<size_t>(v.count));
    for (uint64_t i = 0; i < v.count; ++i) {
        if (v.elem == GGUFType::UINT64 && v.uint_at(i) > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            fail(strprintf("key %s: element %llu value %llu does not fit in i64", quote(key).c_str(),
                           static_cast<unsigned long long>(i), static_cast<unsigned long long>(v.uint_at(i))));
        out[i] = v.int_at(i);
    }
    return out;
}

uint64_t GGUFFile::get_array_len(std::string_view key) const {
    const GGUFValue& v = require(key);
    if (!v.is_array()) wrong_type(key, v, "an array");
    return v.count;
}

const GGUFTensorInfo* GGUFFile::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(std::string(name));
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensorInfo& GGUFFile::tensor(std::string_view name) const {
    const GGUFTensorInfo* t = find_tensor(name);
    if (!t) fail("missing tensor " + quote(name));
    return *t;
}

}  // namespace aircache
