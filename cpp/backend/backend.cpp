#include "backend/backend.h"

#include "common.h"
#include "quants.h"

namespace aircache {

namespace {
const char* const kOpNames[] = {"matmul",       "add",      "mul",      "scale",    "rms_norm", "layer_norm",
                                "rope",         "attention", "attention_kv", "kv_store", "kv_compact", "activation",
                                "glu",          "softmax",  "get_rows", "set_rows", "concat",   "patch_embed",
                                "avg_pool"};
static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == static_cast<size_t>(Op::Count), "one name per op");
}  // namespace

const char* op_name(Op op) {
    const int i = static_cast<int>(op);
    return i >= 0 && i < static_cast<int>(Op::Count) ? kOpNames[i] : "?";
}

std::vector<Op> all_ops() {
    std::vector<Op> v;
    for (int i = 0; i < static_cast<int>(Op::Count); ++i) v.push_back(static_cast<Op>(i));
    return v;
}

Op op_from_name(const std::string& s) {
    std::string names;
    for (Op op : all_ops()) {
        if (s == op_name(op)) return op;
        names += (names.empty() ? "" : ", ") + std::string(op_name(op));
    }
    throw InputError("unknown backend op '" + s + "' (valid: " + names + ")");
}

const char* activation_name(Activation a) {
    switch (a) {
        case Activation::GELU: return "gelu";
        case Activation::QuickGELU: return "quick_gelu";
        case Activation::SiLU: return "silu";
        case Activation::GELUTanh: return "gelu_tanh";
    }
    return "?";
}

Activation activation_from_name(const std::string& s) {
    for (Activation a : {Activation::GELU, Activation::QuickGELU, Activation::SiLU, Activation::GELUTanh})
        if (s == activation_name(a)) return a;
    throw InputError("unknown activation '" + s + "' (valid: gelu, quick_gelu, silu, gelu_tanh)");
}

size_t tensor_row_bytes(GGMLType type, int64_t cols) {
    if (type == GGMLType::I32) return sizeof(int32_t) * static_cast<size_t>(cols);
    return row_bytes(type_info(type), cols);
}

Tensor make_tensor(Backend* be, void* data, GGMLType type, int64_t rows, int64_t cols) {
    Tensor t;
    t.be = be;
    t.data = data;
    t.type = type;
    t.rows = rows;
    t.cols = cols;
    t.row_bytes = tensor_row_bytes(type, cols);
    return t;
}

Tensor Tensor::slice_rows(int64_t r0, int64_t n) const {
    Tensor t = *this;
    t.data = static_cast<uint8_t*>(data) + static_cast<size_t>(r0) * row_bytes;
    t.rows = n;
    return t;
}

Tensor Tensor::reshape(int64_t r, int64_t c) const {
    if (r * c != rows * cols) throw Error(strprintf("internal: reshape [%lld][%lld] as [%lld][%lld]",
                                                    static_cast<long long>(rows), static_cast<long long>(cols),
                                                    static_cast<long long>(r), static_cast<long long>(c)));
    return make_tensor(be, data, type, r, c);
}

Buffer::Buffer(Backend& be, size_t bytes) : be_(&be), bytes_(bytes) { p_ = be.alloc(bytes); }

Buffer::~Buffer() {
    if (p_) be_->free(p_);
}

Buffer::Buffer(Buffer&& o) noexcept : be_(o.be_), p_(o.p_), bytes_(o.bytes_) {
    o.p_ = nullptr;
    o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        if (p_) be_->free(p_);
        be_ = o.be_;
        p_ = o.p_;
        bytes_ = o.bytes_;
        o.p_ = nullptr;
        o.bytes_ = 0;
    }
    return *this;
}

Tensor Buffer::tensor(GGMLType type, int64_t rows, int64_t cols) const {
    Tensor t = make_tensor(be_, p_, type, rows, cols);
    if (t.bytes() > bytes_) throw Error("internal: a tensor larger than its buffer");
    return t;
}

void Buffer::reserve(Backend& be, size_t bytes) {
    if (be_ == &be && bytes <= bytes_) return;
    if (p_) be_->free(p_);
    p_ = nullptr;
    bytes_ = 0;
    be_ = &be;
    p_ = be.alloc(bytes);
    bytes_ = bytes;
}

}  // namespace aircache
