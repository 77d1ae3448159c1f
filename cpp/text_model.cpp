#include "text_model.h"

#include <cmath>
#include <cstring>

#include "common.h"

namespace aircache {

// The architecture table: one entry per file in cpp/models/.
std::unique_ptr<TextModel> make_llama(std::shared_ptr<const GGUFFile> file, const std::string& arch);
std::unique_ptr<TextModel> make_gemma3(std::shared_ptr<const GGUFFile> file, const std::string& arch);

namespace {

struct ArchEntry {
    const char* name;
    std::unique_ptr<TextModel> (*make)(std::shared_ptr<const GGUFFile>, const std::string&);
};

const ArchEntry kArchitectures[] = {
    {"llama", make_llama},
    {"qwen2", make_llama},    // Qwen2 / Qwen2.5 (InternVL 2.5 / 3's language model)
    {"qwen2vl", make_llama},  // Qwen2-VL and Qwen2.5-VL
    {"qwen3vl", make_llama},
    {"gemma3", make_gemma3},
};

// Sane maxima: far above any real model, far below what would make an allocation absurd.
constexpr int64_t kMaxLayers = 1024, kMaxEmbd = 1 << 17, kMaxHeads = 1024, kMaxHeadDim = 1024;
constexpr int64_t kMaxFF = 1 << 20, kMaxVocab = 1 << 22, kMaxCtx = 1 << 24;

int64_t bounded(const GGUFFile& f, const std::string& key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        f.fail(strprintf("key '%s' is %lld, outside the sane range [%lld, %lld]", key.c_str(), static_cast<long long>(v),
                         static_cast<long long>(lo), static_cast<long long>(hi)));
    return v;
}

// A hyperparameter that may be stored as a scalar or as a per-layer array (all equal here).
int64_t uniform_u32(const GGUFFile& f, const std::string& key) {
    const GGUFValue* v = f.find(key);
    if (v && v->is_array()) {
        std::vector<int64_t> a = f.get_int_array(key);
        if (a.empty()) f.fail("key '" + key + "' is an empty array");
        for (int64_t x : a)
            if (x != a[0]) throw UnsupportedError(f.path() + ": key '" + key + "' differs between layers, which this runtime does not support");
        return a[0];
    }
    return f.get_u32(key);
}

}  // namespace

std::vector<std::string> TextModel::supported_architectures() {
    std::vector<std::string> v;
    for (const ArchEntry& a : kArchitectures) v.push_back(a.name);
    return v;
}

std::unique_ptr<TextModel> TextModel::load(std::shared_ptr<const GGUFFile> file) {
    if (!file->has("general.architecture")) file->fail("missing metadata key 'general.architecture'");
    const std::string arch = file->get_str("general.architecture");
    for (const ArchEntry& a : kArchitectures)
        if (arch == a.name) return a.make(std::move(file), arch);
    std::string names;
    for (const ArchEntry& a : kArchitectures) names += (names.empty() ? "" : ", ") + std::string(a.name);
    if (arch == "qwen3vlmoe")
        throw UnsupportedError(file->path() + ": architecture 'qwen3vlmoe' (the mixture-of-experts Qwen3-VL) is not "
                                              "supported (supported text architectures: " + names + ")");
    if (arch == "internlm2")
        throw UnsupportedError(file->path() + ": architecture 'internlm2' (InternLM2, the language model of "
                                              "InternVL2.5-2B / 8B / 26B and InternVL2-2B / 8B) is not supported; "
                                              "InternVL 2.5 / 3 with a Qwen2 language model (text arch qwen2) are "
                                              "(supported text architectures: " + names + ")");
    if (arch == "clip")
        throw UnsupportedError(file->path() + ": this is an mmproj (vision) file, not a text model; pass it as mmproj");
    throw UnsupportedError(file->path() + ": architecture '" + printable(arch) +
                           "' is not supported (supported text architectures: " + names + ")");
}

TextConfig read_llama_like_config(const GGUFFile& f, const std::string& a) {
    TextConfig c;
    c.arch = a;
    const std::string p = a + ".";
    c.n_embd = bounded(f, p + "embedding_length", f.get_u32(p + "embedding_length"), 1, kMaxEmbd);
    c.n_layer = bounded(f, p + "block_count", f.get_u32(p + "block_count"), 1, kMaxLayers);
    f.check_block_tensors("blk.", c.n_layer, "key '" + p + "block_count'");
    c.n_head = bounded(f, p + "attention.head_count", uniform_u32(f, p + "attention.head_count"), 1, kMaxHeads);
    c.n_head_kv = f.has(p + "attention.head_count_kv") ? uniform_u32(f, p + "attention.head_count_kv") : c.n_head;
    bounded(f, p + "attention.head_count_kv", c.n_head_kv, 1, c.n_head);
    if (c.n_head % c.n_head_kv != 0)
        f.fail(strprintf("attention.head_count %lld is not a multiple of attention.head_count_kv %lld",
                         static_cast<long long>(c.n_head), static_cast<long long>(c.n_head_kv)));
    c.n_ff = bounded(f, p + "feed_forward_length", uniform_u32(f, p + "feed_forward_length"), 1, kMaxFF);
    c.n_ctx_train = bounded(f, p + "context_length", f.get_u32(p + "context_length"), 1, kMaxCtx);
    const int64_t hd_default = c.n_embd / c.n_head;
    c.head_dim = bounded(f, p + "attention.key_length", f.get_u32(p + "attention.key_length", static_cast<uint32_t>(hd_default)), 1, kMaxHeadDim);
    const int64_t vdim = f.get_u32(p + "attention.value_length", static_cast<uint32_t>(c.head_dim));
    if (vdim != c.head_dim)
        throw UnsupportedError(f.path() + ": attention.key_length != attention.value_length is not supported");
    c.n_rot = bounded(f, p + "rope.dimension_count", f.get_u32(p + "rope.dimension_count", static_cast<uint32_t>(c.head_dim)), 2, c.head_dim);
    if (c.n_rot % 2) f.fail(strprintf("key '%srope.dimension_count' is odd (%lld)", p.c_str(), static_cast<long long>(c.n_rot)));
    c.rms_eps = f.get_f32(p + "attention.layer_norm_rms_epsilon");
    if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f)) f.fail(strprintf("key '%sattention.layer_norm_rms_epsilon' is %g, outside (0, 1)", p.c_str(), c.rms_eps));
    c.rope_theta = f.get_f32(p + "rope.freq_base", 10000.0f);
    if (!(c.rope_theta > 1.0f && std::isfinite(c.rope_theta)))
        f.fail(strprintf("key '%srope.freq_base' is %g (must be finite and > 1)", p.c_str(), c.rope_theta));
    // rope scaling: `linear` (positions divided by the factor); old files only have rope.scale_linear
    const std::string scaling = f.get_str(p + "rope.scaling.type", f.has(p + "rope.scale_linear") ? "linear" : "none");
    if (scaling == "linear") {
        const float factor = f.has(p + "rope.scaling.factor") ? f.get_f32(p + "rope.scaling.factor")
                                                              : f.get_f32(p + "rope.scale_linear", 1.0f);
        if (!(factor > 0.0f && factor < 1e6f)) f.fail(strprintf("rope scaling factor %g is out of range", factor));
        c.rope_freq_scale = 1.0f / factor;
    } else if (scaling != "none") {
        throw UnsupportedError(f.path() + ": rope scaling type '" + printable(scaling) +
                               "' is not supported (supported: none, linear)");
    }
    // vocabulary size: the embedding rows (checked against the token list when there is one)
    const GGUFTensorInfo& emb = f.tensor("token_embd.weight");
    c.n_vocab = bounded(f, "token_embd.weight rows", emb.n_rows(), 1, kMaxVocab);
    if (f.has(p + "vocab_size") && f.get_u32(p + "vocab_size") != static_cast<uint64_t>(c.n_vocab))
        f.fail(strprintf("key '%svocab_size' is %u but token_embd.weight has %lld rows", p.c_str(),
                         f.get_u32(p + "vocab_size"), static_cast<long long>(c.n_vocab)));
    if (f.has("tokenizer.ggml.tokens")) {
        const uint64_t nt = f.get_array_len("tokenizer.ggml.tokens");
        if (nt != static_cast<uint64_t>(c.n_vocab))
            f.fail(strprintf("tokenizer.ggml.tokens has %llu tokens but token_embd.weight has %lld rows",
                             static_cast<unsigned long long>(nt), static_cast<long long>(c.n_vocab)));
    }
    return c;
}

KVCacheConfig TextModel::kv_config(int64_t capacity, KVType type_k, KVType type_v, const Compute& c) const {
    KVCacheConfig k;
    k.n_layer = static_cast<int>(cfg_.n_layer);
    k.n_head_kv = static_cast<int>(cfg_.n_head_kv);
    k.head_dim = static_cast<int>(cfg_.head_dim);
    k.capacity = capacity;
    k.type_k = type_k;
    k.type_v = type_v;
    k.n_pos_axes = cfg_.n_pos_axes;
    k.host = &c.cpu();
    for (int l = 0; l < k.n_layer; ++l) k.backends.push_back(&c.layer(l));
    return k;
}

void TextModel::text_positions(int32_t start, int64_t n, int32_t* out) const {
    const int A = cfg_.n_pos_axes;
    for (int64_t t = 0; t < n; ++t)
        for (int a = 0; a < A; ++a) out[t * A + a] = start + static_cast<int32_t>(t);
}

void TextModel::embed_tokens(const int32_t* ids, int64_t n, float* out) const {
    const Tensor& w = tok_embd_.host();
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = ids[i];
        if (id < 0 || id >= cfg_.n_vocab)
            throw InputError(strprintf("token id %d at position %lld is outside the vocabulary [0, %lld)", id,
                                       static_cast<long long>(i), static_cast<long long>(cfg_.n_vocab)));
        dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + static_cast<size_t>(id) * w.row_bytes,
                       out + i * cfg_.n_embd, cfg_.n_embd);
        if (embd_scale_ != 1.0f)
            for (int64_t j = 0; j < cfg_.n_embd; ++j) out[i * cfg_.n_embd + j] *= embd_scale_;
    }
}

static std::string shape_of(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

Param TextModel::optional_matrix(const std::string& name, std::vector<int64_t> ne) const {
    const GGUFTensorInfo* t = file_->find_tensor(name);
    if (!t) return Param{};
    bool ok = ne.size() <= 4;
    for (size_t i = 0; ok && i < 4; ++i) ok = t->ne[i] == (i < ne.size() ? ne[i] : 1);
    if (!ok)
        file_->fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected " + shape_of(ne) +
                    " from the hyperparameters");
    const Weight w = Weight::from(*t, file_->path());
    return Param::view(name, w.data, w.type, w.n_rows, w.n_cols, file_->mapped());
}

Param TextModel::matrix(const std::string& name, std::vector<int64_t> ne) const {
    Param w = optional_matrix(name, std::move(ne));
    if (!w) file_->fail("missing tensor '" + name + "'");
    return w;
}

Param TextModel::optional_vector(const std::string& name, int64_t n) const {
    const GGUFTensorInfo* t = file_->find_tensor(name);
    if (!t) return Param{};
    if (t->n_elements != n)
        file_->fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected [" + std::to_string(n) + "]");
    std::vector<float> v = dequantize_tensor(*t, file_->path());
    check_finite(*file_, name, v.data(), n);  // norms and biases: always checked
    return Param::f32(name, std::move(v));
}

Param TextModel::vector(const std::string& name, int64_t n) const {
    Param v = optional_vector(name, n);
    if (!v) file_->fail("missing tensor '" + name + "'");
    return v;
}

}  // namespace aircache
