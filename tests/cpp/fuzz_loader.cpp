// libFuzzer target for the model + mmproj loader and everything a request touches after it: a
// tiny random model pair, its metadata values and tensor shapes mutated as the input says, written
// back as valid GGUF files, loaded into an Engine and — when the load succeeds — asked for a short
// answer about a small image (prompt template, tokenizer, image preprocessing, vision tower,
// projector, prefill with a compression policy, sampling).
//
// Bases (text + mmproj, the keys and tensors the converters write, tiny widths):
//   0  llama + mlp                LLaVA-style (sentencepiece vocabulary, CLIP tower)
//   1  qwen2vl + qwen2vl_merger   Qwen2-VL (byte-level BPE vocabulary, M-RoPE sections)
//   2  qwen2vl + qwen2.5vl_merger Qwen2.5-VL (window attention, SwiGLU ViT)
//   3  qwen3vl + qwen3vl_merger   Qwen3-VL (q/k norms, fused ViT QKV, position table, DeepStack)
//   4  gemma3 + gemma3            Gemma 3 (sliding-window layers, post norms, SigLIP tower, pooled
//                                 projector; compression plans over its one global layer)
//   5  llama + idefics3           SmolVLM2 (tiles with marker tokens between their rows, SigLIP tower,
//                                 pixel shuffle, linear connector)
// Now and then the mmproj of another base is paired with the text model (the pairing checks).
//
// The input is a base selector, a list of mutations (each a few bytes: which file, which key or
// tensor, what to do with it), engine flags, then a prompt text. A load or a request either works
// or throws FormatError / UnsupportedError / InputError / OutOfMemory; everything else (crashes,
// ASan/UBSan reports, other exceptions, hangs) is a finding. Every unmutated base must answer
// (checked once at start-up; the empty input is the LLaVA base).
//
//   ./fuzz_loader -max_total_time=60 CORPUS_DIR
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "fp16.h"
#include "fuzz_common.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "image.h"
#include "random_model.h"
#include "runtime/engine.h"
#include "runtime/generation.h"

using namespace aircache;

namespace {

// A GGUF file as values that can be edited and written again.
struct KV {
    std::string key;
    GGUFType type = GGUFType::UINT32;  // UINT32, INT32, FLOAT32, BOOL, STRING or ARRAY
    GGUFType elem = GGUFType::UINT32;  // arrays: FLOAT32, INT32 or STRING
    std::vector<double> num;
    std::vector<std::string> str;
};
struct Tensor {
    std::string name;
    GGMLType type = GGMLType::F32;
    std::vector<int64_t> ne;
    std::vector<uint8_t> data;
};
struct File {
    std::vector<KV> kvs;
    std::vector<Tensor> tensors;
};

bool is_int(GGUFType t) {
    return t != GGUFType::FLOAT32 && t != GGUFType::FLOAT64 && t != GGUFType::BOOL && t != GGUFType::STRING;
}

File read_file(const GGUFFile& f) {
    File out;
    for (const GGUFKV& kv : f.kvs()) {
        KV k;
        k.key = kv.key;
        const GGUFValue& v = kv.value;
        if (v.is_array()) {
            k.type = GGUFType::ARRAY;
            k.elem = v.elem == GGUFType::STRING ? GGUFType::STRING : is_int(v.elem) ? GGUFType::INT32 : GGUFType::FLOAT32;
            if (v.elem == GGUFType::STRING)
                for (std::string_view s : v.strings) k.str.emplace_back(s);
            else
                for (uint64_t i = 0; i < v.count; ++i) k.num.push_back(is_int(v.elem) ? double(v.int_at(i)) : v.float_at(i));
        } else if (v.type == GGUFType::STRING) {
            k.type = GGUFType::STRING;
            k.str.emplace_back(v.strings.at(0));
        } else if (v.type == GGUFType::BOOL) {
            k.type = GGUFType::BOOL;
            k.num.push_back(double(v.int_at(0)));
        } else {
            k.type = is_int(v.type) ? GGUFType::UINT32 : GGUFType::FLOAT32;
            k.num.push_back(is_int(v.type) ? double(v.int_at(0)) : v.float_at(0));
        }
        out.kvs.push_back(std::move(k));
    }
    for (const GGUFTensorInfo& t : f.tensors()) {
        Tensor x;
        x.name = t.name;
        x.type = t.type;
        x.ne.assign(t.ne, t.ne + t.n_dims);
        x.data.assign(t.data, t.data + t.nbytes);
        out.tensors.push_back(std::move(x));
    }
    return out;
}

// Values are kept as doubles while mutating (a retyped key may hold 1e30 or NaN): converted back
// with saturation (an out-of-range float-to-int conversion is undefined), integers then wrap.
int64_t sat_i64(double d) {
    if (!(d == d)) return 0;
    if (d >= 9.2e18) return INT64_MAX;
    if (d <= -9.2e18) return INT64_MIN;
    return static_cast<int64_t>(d);
}

float sat_f32(double d) {
    if (d > 3.4028234663852886e38) return INFINITY;
    if (d < -3.4028234663852886e38) return -INFINITY;
    return static_cast<float>(d);
}

std::shared_ptr<const GGUFFile> write_file(const File& f, const std::string& name) {
    GGUFWriter w;
    for (const KV& k : f.kvs) {
        switch (k.type) {
            case GGUFType::UINT32: w.add_u32(k.key, static_cast<uint32_t>(sat_i64(k.num.at(0)))); break;
            case GGUFType::INT32: w.add_i32(k.key, static_cast<int32_t>(sat_i64(k.num.at(0)))); break;
            case GGUFType::FLOAT32: w.add_f32(k.key, sat_f32(k.num.at(0))); break;
            case GGUFType::BOOL: w.add_bool(k.key, k.num.at(0) != 0); break;
            case GGUFType::STRING: w.add_str(k.key, k.str.at(0)); break;
            default:
                if (k.elem == GGUFType::STRING) {
                    w.add_str_array(k.key, k.str);
                } else if (k.elem == GGUFType::INT32) {
                    std::vector<int32_t> v;
                    for (double d : k.num) v.push_back(static_cast<int32_t>(sat_i64(d)));
                    w.add_i32_array(k.key, v);
                } else {
                    std::vector<float> v;
                    for (double d : k.num) v.push_back(sat_f32(d));
                    w.add_f32_array(k.key, v);
                }
        }
    }
    for (const Tensor& t : f.tensors) w.add_tensor(t.name, t.type, t.ne, t.data);
    return gguf_from_bytes(w.bytes(), name);
}

size_t tensor_bytes(GGMLType type, const std::vector<int64_t>& ne) {
    const TypeInfo& ti = type_info(type);
    if (ne.empty() || ne[0] <= 0 || ne[0] % ti.block_size != 0) return 0;
    size_t rows = 1;
    for (size_t i = 1; i < ne.size(); ++i) {
        if (ne[i] <= 0) return 0;
        rows *= static_cast<size_t>(ne[i]);
        if (rows > (size_t(1) << 24)) return 0;
    }
    return row_bytes(ti, ne[0]) * rows;
}

constexpr size_t kMaxTensorBytes = size_t(4) << 20;

// Integer values worth trying for a count, size or id.
int64_t int_value(uint8_t k, int64_t orig, fuzz::Bytes& in) {
    static const int64_t table[] = {0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 511, 512,
                                    513, 1000, 65535, 65536, 2147483647LL, 2147483648LL, 4294967295LL, -1, -2};
    constexpr int n = sizeof table / sizeof *table;
    switch (k % (n + 5)) {
        // wrapping arithmetic (orig may be saturated to the int64 limits)
        case n: return static_cast<int64_t>(static_cast<uint64_t>(orig) * 2u);
        case n + 1: return orig / 2;
        case n + 2: return static_cast<int64_t>(static_cast<uint64_t>(orig) + 1u);
        case n + 3: return static_cast<int64_t>(static_cast<uint64_t>(orig) - 1u);
        case n + 4: return in.u16();
        default: return table[k % (n + 5)];
    }
}

double float_value(uint8_t k, double orig, fuzz::Bytes& in) {
    static const double table[] = {0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 1e-5, 1e6, 3.4e38, 1e-40, 2.0, 100.0,
                                   std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                                   -std::numeric_limits<double>::infinity()};
    constexpr int n = sizeof table / sizeof *table;
    switch (k % (n + 3)) {
        case n: return orig * 2;
        case n + 1: return orig * 0.5;
        case n + 2: return in.f32();
        default: return table[k % (n + 3)];
    }
}

std::string str_value(uint8_t k, fuzz::Bytes& in) {
    static const char* const table[] = {"llama", "clip", "mlp", "ldp", "ldpv2", "qwen2vl_merger", "gemma3", "idefics3",
                                        "internvl", "", "<|im_start|>", "gpt2", "llama-bpe", "qwen2", "none",
                                        "qwen2.5vl_merger", "qwen3vl_merger", "qwen2.5o", "qwen2vl", "qwen3vl",
                                        "qwen3vlmoe", "<|vision_start|>", "<start_of_turn>", "<image_soft_token>",
                                        "linear", "yarn", "<image>", "<fake_token_around_image>", "<row_1_col_2>",
                                        "<end_of_utterance>"};
    constexpr int n = sizeof table / sizeof *table;
    if (k % (n + 2) == n) return std::string("llama\0x", 7);
    if (k % (n + 2) == n + 1) return in.str(16);
    return table[k % (n + 2)];
}

// Keys the loaders read or could read, added with a value of the kind the input picks.
const char* const kExtraKeys[] = {
    "llama.vocab_size", "llama.attention.key_length", "llama.attention.value_length", "llama.rope.scaling.type",
    "llama.rope.scaling.factor", "llama.attention.sliding_window", "llama.expert_count", "llama.rope.dimension_sections",
    "general.alignment", "clip.use_gelu", "clip.use_silu", "clip.vision.image_grid_pinpoints",
    "clip.vision.mm_patch_merge_type", "clip.vision.feature_layer", "clip.has_text_encoder", "clip.has_llava_projector",
    "clip.vision.projector.scale_factor", "clip.vision.spatial_merge_size", "clip.has_vision_encoder",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.chat_template",
    "tokenizer.ggml.pre", "tokenizer.ggml.merges", "llama.attention.layer_norm_epsilon", "llama.context_length",
    // Qwen-VL
    "clip.vision.n_wa_pattern", "clip.vision.window_size", "clip.use_gelu", "clip.vision.image_min_pixels",
    "clip.vision.image_max_pixels", "clip.vision.projector_type", "qwen2vl.rope.dimension_sections",
    "qwen2vl.rope.dimension_count", "qwen2vl.attention.key_length", "qwen2vl.attention.value_length",
    "qwen2vl.rope.scaling.type", "qwen3vl.rope.dimension_sections", "qwen3vl.rope.dimension_count",
    "qwen3vl.n_deepstack_layers", "qwen3vl.attention.key_length", "qwen3vl.attention.value_length",
    // Gemma 3
    "gemma3.attention.sliding_window", "gemma3.attention.sliding_window_pattern", "gemma3.rope.freq_base_swa",
    "gemma3.rope.scaling.type", "gemma3.rope.scaling.factor", "gemma3.final_logit_softcapping",
    "gemma3.attn_logit_softcapping", "gemma3.attention.key_length", "gemma3.attention.value_length",
    "gemma3.rope.dimension_count", "gemma3.context_length",
    // SmolVLM
    "clip.vision.preproc_image_size"};

void set_scalar(KV& k, uint8_t how, fuzz::Bytes& in) {
    const double orig = k.num.empty() ? 0.0 : k.num[0];
    switch (k.type) {
        case GGUFType::UINT32:
        case GGUFType::INT32: {
            const int64_t v = int_value(how, sat_i64(orig), in);
            k.type = v < 0 ? GGUFType::INT32 : GGUFType::UINT32;
            k.num = {double(v)};
            break;
        }
        case GGUFType::FLOAT32: k.num = {float_value(how, orig, in)}; break;
        case GGUFType::BOOL: k.num = {orig != 0 ? 0.0 : 1.0}; break;
        case GGUFType::STRING: k.str = {str_value(how, in)}; break;
        default: break;
    }
}

void retype(KV& k, uint8_t how) {
    const double v = k.num.empty() ? 0.0 : k.num[0];
    const std::string s = k.str.empty() ? "7" : k.str[0];
    k.num.clear();
    k.str.clear();
    switch (how % 6) {
        case 0: k.type = GGUFType::UINT32; k.num = {std::fabs(std::isfinite(v) ? std::floor(v) : 1.0)}; break;
        case 1: k.type = GGUFType::FLOAT32; k.num = {v}; break;
        case 2: k.type = GGUFType::STRING; k.str = {s}; break;
        case 3: k.type = GGUFType::BOOL; k.num = {1.0}; break;
        case 4: k.type = GGUFType::ARRAY; k.elem = GGUFType::INT32; k.num = {v, v}; break;
        default: k.type = GGUFType::ARRAY; k.elem = GGUFType::STRING; k.str = {s}; break;
    }
}

void mutate_array(KV& k, uint8_t how, fuzz::Bytes& in) {
    const size_t len = k.elem == GGUFType::STRING ? k.str.size() : k.num.size();
    const uint8_t sub = in.u8();
    switch (how % 4) {
        case 0: {  // truncate
            const size_t n = len * sub / 256;
            if (k.elem == GGUFType::STRING) k.str.resize(n);
            else k.num.resize(n);
            break;
        }
        case 1: {  // extend
            const size_t n = 1 + sub % 8;
            for (size_t i = 0; i < n; ++i) {
                if (k.elem == GGUFType::STRING) k.str.push_back(k.str.empty() ? std::string("x") : k.str.back() + "x");
                else k.num.push_back(k.num.empty() ? 1.0 : k.num.back());
            }
            break;
        }
        default: {  // one element
            if (len == 0) break;
            const size_t i = (static_cast<size_t>(sub) * 256 + in.u8()) % len;
            if (k.elem == GGUFType::STRING) {
                const uint8_t c = in.u8();
                k.str[i] = c % 4 == 0 ? std::string() : c % 4 == 1 ? k.str[(i + 1) % len] : c % 4 == 2 ? std::string(300, 'a') : str_value(c, in);
            } else if (k.elem == GGUFType::INT32) {
                k.num[i] = double(int_value(in.u8(), sat_i64(k.num[i]), in));
            } else {
                k.num[i] = float_value(in.u8(), k.num[i], in);
            }
        }
    }
}

// Resizes a tensor's data to its (new) shape by repeating its old bytes (whole elements or blocks
// of its type); false when the shape is unusable or too large.
bool refit(Tensor& t, std::vector<uint8_t> old) {
    const size_t want = tensor_bytes(t.type, t.ne);
    if (want == 0 || want > kMaxTensorBytes) return false;
    if (old.empty()) old.assign(type_info(t.type).type_size, 0);
    t.data.resize(want);
    for (size_t i = 0; i < want; ++i) t.data[i] = old[i % old.size()];
    return true;
}

void mutate_tensor_shape(Tensor& t, uint8_t how, fuzz::Bytes& in) {
    Tensor copy = t;
    const size_t d = in.u8() % (t.ne.size() + 1);
    if (d == t.ne.size()) {
        if (how & 1) {
            if (t.ne.size() > 1) copy.ne.pop_back();
        } else if (t.ne.size() < 4) {
            copy.ne.push_back(1 + how % 3);
        }
    } else {
        const int64_t v = int_value(how, t.ne[d], in);
        if (v <= 0 || v > (int64_t(1) << 22)) return;
        copy.ne[d] = v;
    }
    if (refit(copy, t.data)) t = std::move(copy);
}

void mutate_tensor_type(Tensor& t, uint8_t how, uint64_t seed) {
    static const GGMLType types[] = {GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q8_0, GGMLType::Q4_0,
                                     GGMLType::Q4_K, GGMLType::Q6_K, GGMLType::Q5_1, GGMLType::I32};
    const GGMLType to = types[how % (sizeof types / sizeof *types)];
    const size_t want = tensor_bytes(to, t.ne);
    if (want == 0 || want > kMaxTensorBytes) return;
    // the old values, converted (float types) or random blocks (quantized types, integers)
    std::vector<float> vals;
    const TypeInfo& ti = type_info(t.type);
    if (ti.supported) {
        const int64_t n0 = t.ne[0], rows = static_cast<int64_t>(t.data.size() / row_bytes(ti, n0));
        vals.resize(static_cast<size_t>(n0 * rows));
        for (int64_t r = 0; r < rows; ++r) dequantize_row(t.type, t.data.data() + r * row_bytes(ti, n0), vals.data() + r * n0, n0);
    }
    std::vector<uint8_t> out(want);
    if ((to == GGMLType::F32 || to == GGMLType::F16 || to == GGMLType::BF16) && !vals.empty()) {
        const size_t es = type_info(to).type_size;
        for (size_t i = 0; i < want / es; ++i) {
            const float x = vals[i % vals.size()];
            if (to == GGMLType::F32) std::memcpy(&out[4 * i], &x, 4);
            else {
                const uint16_t h = to == GGMLType::F16 ? f32_to_f16(x) : static_cast<uint16_t>(f32_to_bits(x) >> 16);
                std::memcpy(&out[2 * i], &h, 2);
            }
        }
    } else {
        std::mt19937_64 rng(seed);
        for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
    }
    t.type = to;
    t.data = std::move(out);
}

void poke(Tensor& t, uint8_t how, fuzz::Bytes& in) {
    const size_t es = t.type == GGMLType::F32 ? 4 : (t.type == GGMLType::F16 || t.type == GGMLType::BF16) ? 2 : 0;
    if (es == 0 || t.data.size() < es) return;
    const size_t i = (static_cast<size_t>(in.u16()) * 7919) % (t.data.size() / es);
    static const float table[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::infinity(), 1e30f, 65504.0f, 0.0f};
    const float x = table[how % 6];
    if (es == 4) std::memcpy(&t.data[4 * i], &x, 4);
    else {
        const uint16_t h = t.type == GGMLType::F16 ? f32_to_f16(x) : static_cast<uint16_t>(f32_to_bits(x) >> 16);
        std::memcpy(&t.data[2 * i], &h, 2);
    }
}

// The first number in a tensor's name replaced (a block or DeepStack tap index out of range, a
// duplicate, a gap).
void renumber(Tensor& t, uint8_t how, fuzz::Bytes& in) {
    const size_t a = t.name.find_first_of("0123456789");
    if (a == std::string::npos) return;
    size_t b = a;
    while (b < t.name.size() && t.name[b] >= '0' && t.name[b] <= '9') ++b;
    const int64_t v = int_value(how, std::atoll(t.name.substr(a, std::min<size_t>(b - a, 18)).c_str()), in);
    t.name = t.name.substr(0, a) + std::to_string(v) + t.name.substr(b);
}

struct Base {
    const char* name;
    File text, mmproj;
};

// --- tiny Qwen-VL files, as llama.cpp's converters write them (docs: MODELS.md Part I, 1.2, 1.3, 2.8)

struct Writer {
    GGUFWriter w;
    std::mt19937_64 rng;
    explicit Writer(uint64_t seed) : rng(seed) {}
    std::vector<uint8_t> f32s(int64_t n, float mean, float sd) {
        std::normal_distribution<float> nd(mean, sd);
        std::vector<uint8_t> out(static_cast<size_t>(n) * 4);
        for (int64_t i = 0; i < n; ++i) {
            const float x = nd(rng);
            std::memcpy(out.data() + 4 * i, &x, 4);
        }
        return out;
    }
    // a weight of ne (ne[0] contiguous), F16 as --outtype f16 writes matrices
    void matrix(const std::string& name, std::vector<int64_t> ne) {
        int64_t n = 1;
        for (int64_t d : ne) n *= d;
        std::normal_distribution<float> nd(0.0f, 0.05f);
        std::vector<uint8_t> out(static_cast<size_t>(n) * 2);
        for (int64_t i = 0; i < n; ++i) {
            const uint16_t h = f32_to_f16(nd(rng));
            std::memcpy(out.data() + 2 * i, &h, 2);
        }
        w.add_tensor(name, GGMLType::F16, ne, std::move(out));
    }
    void gain(const std::string& name, int64_t n) { w.add_tensor(name, GGMLType::F32, {n}, f32s(n, 1.0f, 0.1f)); }
    void bias(const std::string& name, int64_t n) { w.add_tensor(name, GGMLType::F32, {n}, f32s(n, 0.0f, 0.02f)); }
    void linear(const std::string& name, int64_t in, int64_t out) {  // .weight [in, out] and .bias [out]
        matrix(name + ".weight", {in, out});
        bias(name + ".bias", out);
    }
    File file(const std::string& name) { return read_file(*gguf_from_bytes(w.bytes(), name)); }
};

constexpr int64_t kQwenEmbd = 64;  // the text width every base shares (the tiny LLaVA's too)

// qwen2vl (Qwen2-VL / Qwen2.5-VL: Q/K/V biases, untied output here) or qwen3vl (q/k norms, no
// biases, key_length, n_deepstack_layers, tied output), with a byte-level BPE vocabulary that has
// Qwen's vision tokens and a chat template the engine recognises.
File qwen_text(bool qwen3) {
    const std::string arch = qwen3 ? "qwen3vl" : "qwen2vl", a = arch + ".";
    const int64_t E = kQwenEmbd, L = 2, H = 4, Hkv = 2, D = 16, F = 96;
    Writer x(qwen3 ? 31 : 29);
    GGUFWriter& w = x.w;
    w.add_str("general.architecture", arch);
    w.add_str("general.type", "model");
    w.add_str("general.name", "fuzz-" + arch);
    w.add_u32(a + "block_count", static_cast<uint32_t>(L));
    w.add_u32(a + "context_length", 4096);
    w.add_u32(a + "embedding_length", static_cast<uint32_t>(E));
    w.add_u32(a + "feed_forward_length", static_cast<uint32_t>(F));
    w.add_u32(a + "attention.head_count", static_cast<uint32_t>(H));
    w.add_u32(a + "attention.head_count_kv", static_cast<uint32_t>(Hkv));
    w.add_f32(a + "rope.freq_base", qwen3 ? 5e6f : 1e6f);
    w.add_f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
    // [t, h, w] rotary pairs of a head of 16 (8 pairs), padded to 4 (Qwen3: HF's interleaving
    // needs 3 s_t >= 8 for llama.cpp to agree; MODELS.md 2.9)
    w.add_i32_array(a + "rope.dimension_sections", qwen3 ? std::vector<int32_t>{3, 3, 2, 0} : std::vector<int32_t>{2, 3, 3, 0});
    if (qwen3) {
        w.add_u32(a + "attention.key_length", static_cast<uint32_t>(D));
        w.add_u32(a + "attention.value_length", static_cast<uint32_t>(D));
        w.add_u32(a + "n_deepstack_layers", 2);
    }
    // vocabulary: GPT-2 bytes + merges + <|endoftext|> <|im_start|> <|im_end|> <tool>, then the
    // vision tokens
    GGUFWriter vw;
    fuzz::add_gpt2_vocab(vw, "qwen2");
    File vocab = read_file(*gguf_from_bytes(vw.bytes(), "vocab.gguf"));
    int64_t V = 0;
    for (KV& k : vocab.kvs) {
        if (k.key == "tokenizer.ggml.tokens") {
            for (const char* t : {"<|vision_start|>", "<|vision_end|>", "<|image_pad|>"}) k.str.push_back(t);
            V = static_cast<int64_t>(k.str.size());
        }
        if (k.key == "tokenizer.ggml.token_type")
            for (int i = 0; i < 3; ++i) k.num.push_back(3.0);
    }
    x.matrix("token_embd.weight", {E, V});
    x.gain("output_norm.weight", E);
    if (!qwen3) x.matrix("output.weight", {E, V});
    for (int64_t l = 0; l < L; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        x.gain(p + "attn_norm.weight", E);
        x.matrix(p + "attn_q.weight", {E, H * D});
        x.matrix(p + "attn_k.weight", {E, Hkv * D});
        x.matrix(p + "attn_v.weight", {E, Hkv * D});
        if (!qwen3) {
            x.bias(p + "attn_q.bias", H * D);
            x.bias(p + "attn_k.bias", Hkv * D);
            x.bias(p + "attn_v.bias", Hkv * D);
        } else {
            x.gain(p + "attn_q_norm.weight", D);
            x.gain(p + "attn_k_norm.weight", D);
        }
        x.matrix(p + "attn_output.weight", {H * D, E});
        x.gain(p + "ffn_norm.weight", E);
        x.matrix(p + "ffn_gate.weight", {E, F});
        x.matrix(p + "ffn_up.weight", {E, F});
        x.matrix(p + "ffn_down.weight", {F, E});
    }
    File f = x.file("fuzz-" + arch + ".gguf");
    for (KV& k : vocab.kvs) f.kvs.push_back(std::move(k));
    KV flag;
    flag.key = "tokenizer.ggml.add_bos_token";
    flag.type = GGUFType::BOOL;
    flag.num = {0.0};
    f.kvs.push_back(flag);
    KV tmpl;
    tmpl.key = "tokenizer.chat_template";
    tmpl.type = GGUFType::STRING;
    tmpl.str = {std::string(qwen3 ? "" : "{% if loop.first %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}") +
                "<|im_start|>{{ message['role'] }}\n{% if content['type'] == 'image' %}<|vision_start|><|image_pad|>"
                "<|vision_end|>{% endif %}<|im_end|>\n"};
    f.kvs.push_back(tmpl);
    return f;
}

enum class QwenKind { Qwen2, Qwen25, Qwen3 };

// The Qwen-VL mmprojs: Conv3d kernel split in two frames, 2-D RoPE ViT, 2x2 merger to the text width.
//   qwen2vl_merger    LayerNorm, ffn_up/ffn_down with GELU; feed_forward_length is the LLM width (the
//                     converter's mistake: the MLP width is taken from the tensors)
//   qwen2.5vl_merger  RMSNorm (no norm biases), ffn_gate/up/down, use_silu, n_wa_pattern 2 (window
//                     attention in block 0, full in block 1)
//   qwen3vl_merger    patch 16 with a bias, a 4x4 learned position table (image_size 64), fused
//                     attn_qkv, use_gelu, spatial_merge_size 2, DeepStack taps after blocks 0 and 2
File qwen_mmproj(QwenKind kind) {
    const bool q25 = kind == QwenKind::Qwen25, q3 = kind == QwenKind::Qwen3;
    const int64_t C = q3 ? 32 : 16, NH = 2, P = q3 ? 16 : 14, L = q3 ? 3 : 2, FF = q3 ? 64 : q25 ? 24 : 32;
    const int64_t E = kQwenEmbd, C4 = 4 * C, side = 4;
    Writer x(q3 ? 43 : q25 ? 41 : 37);
    GGUFWriter& w = x.w;
    w.add_str("general.architecture", "clip");
    w.add_str("general.type", "mmproj");
    w.add_bool("clip.has_vision_encoder", true);
    w.add_str("clip.projector_type", q3 ? "qwen3vl_merger" : q25 ? "qwen2.5vl_merger" : "qwen2vl_merger");
    w.add_u32("clip.vision.projection_dim", static_cast<uint32_t>(E));
    w.add_u32("clip.vision.image_size", static_cast<uint32_t>(q3 ? side * P : 560));
    w.add_u32("clip.vision.patch_size", static_cast<uint32_t>(P));
    w.add_u32("clip.vision.embedding_length", static_cast<uint32_t>(C));
    w.add_u32("clip.vision.feed_forward_length", static_cast<uint32_t>(kind == QwenKind::Qwen2 ? E : FF));
    w.add_u32("clip.vision.block_count", static_cast<uint32_t>(L));
    w.add_u32("clip.vision.attention.head_count", static_cast<uint32_t>(NH));
    w.add_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
    if (q3) {
        w.add_f32_array("clip.vision.image_mean", {0.5f, 0.5f, 0.5f});
        w.add_f32_array("clip.vision.image_std", {0.5f, 0.5f, 0.5f});
        w.add_bool("clip.use_gelu", true);
        w.add_u32("clip.vision.spatial_merge_size", 2);
        // (clip.vision.is_deepstack_layers, a bool array nobody reads, is left out: the writer has no
        // bool arrays)
    } else {
        w.add_f32_array("clip.vision.image_mean", {0.48145466f, 0.4578275f, 0.40821073f});
        w.add_f32_array("clip.vision.image_std", {0.26862954f, 0.26130258f, 0.27577711f});
    }
    if (q25) {
        w.add_bool("clip.use_silu", true);
        w.add_u32("clip.vision.n_wa_pattern", 2);
    }
    x.matrix("v.patch_embd.weight", {P, P, 3, C});
    x.matrix("v.patch_embd.weight.1", {P, P, 3, C});
    if (q3) {
        x.bias("v.patch_embd.bias", C);
        w.add_tensor("v.position_embd.weight", GGMLType::F32, {C, side * side}, x.f32s(C * side * side, 0.0f, 0.02f));
    }
    for (int64_t l = 0; l < L; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        for (const char* n : {"ln1", "ln2"}) {
            x.gain(p + n + ".weight", C);
            if (!q25) x.bias(p + n + ".bias", C);
        }
        if (q3) x.linear(p + "attn_qkv", C, 3 * C);
        else
            for (const char* n : {"attn_q", "attn_k", "attn_v"}) x.linear(p + n, C, C);
        x.linear(p + "attn_out", C, C);
        if (q25) x.linear(p + "ffn_gate", C, FF);
        x.linear(p + "ffn_up", C, FF);
        x.linear(p + "ffn_down", FF, C);
    }
    x.gain("v.post_ln.weight", C);
    if (!q25) x.bias("v.post_ln.bias", C);
    x.linear("mm.0", C4, C4);
    x.linear("mm.2", C4, E);
    if (q3)
        for (int b : {0, 2}) {
            const std::string p = "v.deepstack." + std::to_string(b) + ".";
            x.gain(p + "norm.weight", C4);
            x.bias(p + "norm.bias", C4);
            x.linear(p + "fc1", C4, C4);
            x.linear(p + "fc2", C4, E);
        }
    return x.file(q3 ? "fuzz-qwen3vl-mmproj.gguf" : q25 ? "fuzz-qwen2.5vl-mmproj.gguf" : "fuzz-qwen2vl-mmproj.gguf");
}

// --- a tiny Gemma 3 pair, as llama.cpp's converter writes it (docs: MODELS.md Part I, 3.7)

// gemma3: key_length 16 (4/2 heads), q/k norms, post-attention and post-FFN norms, tied output;
// sliding_window 8 with the default pattern 6 (layers 0-4 local, layer 5 global), rope.freq_base_swa
// and linear rope scaling for the global layer. A sentencepiece vocabulary with Gemma's turn and
// image tokens and a chat template the engine recognises.
File gemma_text() {
    const std::string a = "gemma3.";
    const int64_t E = kQwenEmbd, L = 6, H = 4, Hkv = 2, D = 16, F = 128;
    Writer x(47);
    GGUFWriter& w = x.w;
    w.add_str("general.architecture", "gemma3");
    w.add_str("general.type", "model");
    w.add_str("general.name", "fuzz-gemma3");
    w.add_u32(a + "context_length", 4096);
    w.add_u32(a + "embedding_length", static_cast<uint32_t>(E));
    w.add_u32(a + "block_count", static_cast<uint32_t>(L));
    w.add_u32(a + "feed_forward_length", static_cast<uint32_t>(F));
    w.add_u32(a + "attention.head_count", static_cast<uint32_t>(H));
    w.add_u32(a + "attention.head_count_kv", static_cast<uint32_t>(Hkv));
    w.add_f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
    w.add_u32(a + "attention.key_length", static_cast<uint32_t>(D));
    w.add_u32(a + "attention.value_length", static_cast<uint32_t>(D));
    w.add_f32(a + "rope.freq_base", 1e6f);
    w.add_f32(a + "rope.freq_base_swa", 10000.0f);
    w.add_str(a + "rope.scaling.type", "linear");
    w.add_f32(a + "rope.scaling.factor", 8.0f);
    w.add_u32(a + "attention.sliding_window", 8);
    // vocabulary: sentencepiece pieces + <image>, then Gemma's turn and image tokens
    GGUFWriter vw;
    fuzz::add_spm_vocab(vw, 512);
    File vocab = read_file(*gguf_from_bytes(vw.bytes(), "vocab.gguf"));
    const char* const specials[] = {"<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                                    "<image_soft_token>"};
    int64_t V = 0;
    for (KV& k : vocab.kvs) {
        if (k.key == "tokenizer.ggml.tokens") {
            for (const char* t : specials) k.str.push_back(t);
            V = static_cast<int64_t>(k.str.size());
        }
        if (k.key == "tokenizer.ggml.token_type" || k.key == "tokenizer.ggml.scores")
            for (size_t i = 0; i < sizeof specials / sizeof *specials; ++i)
                k.num.push_back(k.key == "tokenizer.ggml.scores" ? 0.0 : 3.0);
    }
    x.matrix("token_embd.weight", {E, V});
    x.gain("output_norm.weight", E);
    for (int64_t l = 0; l < L; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        x.gain(p + "attn_norm.weight", E);
        x.matrix(p + "attn_q.weight", {E, H * D});
        x.matrix(p + "attn_k.weight", {E, Hkv * D});
        x.matrix(p + "attn_v.weight", {E, Hkv * D});
        x.gain(p + "attn_q_norm.weight", D);
        x.gain(p + "attn_k_norm.weight", D);
        x.matrix(p + "attn_output.weight", {H * D, E});
        x.gain(p + "post_attention_norm.weight", E);
        x.gain(p + "ffn_norm.weight", E);
        x.matrix(p + "ffn_gate.weight", {E, F});
        x.matrix(p + "ffn_up.weight", {E, F});
        x.matrix(p + "ffn_down.weight", {F, E});
        x.gain(p + "post_ffw_norm.weight", E);
    }
    File f = x.file("fuzz-gemma3.gguf");
    for (KV& k : vocab.kvs) f.kvs.push_back(std::move(k));
    KV flag;
    flag.key = "tokenizer.ggml.add_bos_token";
    flag.type = GGUFType::BOOL;
    flag.num = {1.0};
    f.kvs.push_back(flag);
    KV tmpl;
    tmpl.key = "tokenizer.chat_template";
    tmpl.type = GGUFType::STRING;
    tmpl.str = {"{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
                "{% if content['type'] == 'image' %}<start_of_image>{% endif %}<end_of_turn>\n{% endfor %}"};
    f.kvs.push_back(tmpl);
    return f;
}

// The gemma3 mmproj: a SigLIP tower (patch 8 with a bias, a 4 x 4 position table without class
// token, no pre-norm, post-norm with a bias, tanh GELU), the 2 x 2 average pool (scale_factor 2:
// 4 image tokens), mm.soft_emb_norm and mm.input_projection (always F16, ne [text, vision]).
File gemma_mmproj() {
    const int64_t C = 16, NH = 2, P = 8, S = 32, L = 2, FF = 32, E = kQwenEmbd, np = (S / P) * (S / P);
    Writer x(53);
    GGUFWriter& w = x.w;
    w.add_str("general.architecture", "clip");
    w.add_str("general.type", "mmproj");
    w.add_bool("clip.has_vision_encoder", true);
    w.add_str("clip.projector_type", "gemma3");
    w.add_u32("clip.vision.projection_dim", static_cast<uint32_t>(E));
    w.add_u32("clip.vision.image_size", static_cast<uint32_t>(S));
    w.add_u32("clip.vision.patch_size", static_cast<uint32_t>(P));
    w.add_u32("clip.vision.embedding_length", static_cast<uint32_t>(C));
    w.add_u32("clip.vision.feed_forward_length", static_cast<uint32_t>(FF));
    w.add_u32("clip.vision.block_count", static_cast<uint32_t>(L));
    w.add_u32("clip.vision.attention.head_count", static_cast<uint32_t>(NH));
    w.add_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
    w.add_f32_array("clip.vision.image_mean", {0.5f, 0.5f, 0.5f});
    w.add_f32_array("clip.vision.image_std", {0.5f, 0.5f, 0.5f});
    w.add_bool("clip.use_gelu", true);
    w.add_u32("clip.vision.projector.scale_factor", 2);
    x.matrix("v.patch_embd.weight", {P, P, 3, C});
    x.bias("v.patch_embd.bias", C);
    w.add_tensor("v.position_embd.weight", GGMLType::F32, {C, np}, x.f32s(C * np, 0.0f, 0.02f));
    for (int64_t l = 0; l < L; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        for (const char* n : {"ln1", "ln2"}) {
            x.gain(p + n + ".weight", C);
            x.bias(p + n + ".bias", C);
        }
        for (const char* n : {"attn_q", "attn_k", "attn_v"}) x.linear(p + n, C, C);
        x.linear(p + "attn_out", C, C);
        x.linear(p + "ffn_up", C, FF);
        x.linear(p + "ffn_down", FF, C);
    }
    x.gain("v.post_ln.weight", C);
    x.bias("v.post_ln.bias", C);
    x.gain("mm.soft_emb_norm.weight", C);
    x.matrix("mm.input_projection.weight", {E, C});
    return x.file("fuzz-gemma3-mmproj.gguf");
}

// --- a tiny SmolVLM2 pair, as llama.cpp's converter writes it (docs: MODELS.md Part I, 4.6)

// llama (SmolLM2's shape: untied output, rope.dimension_count) with a sentencepiece vocabulary that
// has SmolVLM's image tokens (<global-img>, <row_r_col_c> for r, c <= 6, <fake_token_around_image>,
// <image>, <end_of_utterance>) and a chat template the engine recognises (SmolVLM2's).
File smol_text() {
    const std::string a = "llama.";
    const int64_t E = kQwenEmbd, L = 2, H = 4, Hkv = 2, D = 16, F = 128;
    Writer x(59);
    GGUFWriter& w = x.w;
    w.add_str("general.architecture", "llama");
    w.add_str("general.type", "model");
    w.add_str("general.name", "fuzz-smolvlm");
    w.add_u32(a + "context_length", 4096);
    w.add_u32(a + "embedding_length", static_cast<uint32_t>(E));
    w.add_u32(a + "block_count", static_cast<uint32_t>(L));
    w.add_u32(a + "feed_forward_length", static_cast<uint32_t>(F));
    w.add_u32(a + "attention.head_count", static_cast<uint32_t>(H));
    w.add_u32(a + "attention.head_count_kv", static_cast<uint32_t>(Hkv));
    w.add_u32(a + "rope.dimension_count", static_cast<uint32_t>(D));
    w.add_f32(a + "rope.freq_base", 1e5f);
    w.add_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    GGUFWriter vw;
    fuzz::add_spm_vocab(vw, 512);  // ends with <image>
    File vocab = read_file(*gguf_from_bytes(vw.bytes(), "vocab.gguf"));
    std::vector<std::string> specials = {"<global-img>", "<fake_token_around_image>", "<end_of_utterance>"};
    for (int r = 1; r <= 6; ++r)
        for (int c = 1; c <= 6; ++c) specials.push_back("<row_" + std::to_string(r) + "_col_" + std::to_string(c) + ">");
    int64_t V = 0;
    for (KV& k : vocab.kvs) {
        if (k.key == "tokenizer.ggml.tokens") {
            for (const std::string& t : specials) k.str.push_back(t);
            V = static_cast<int64_t>(k.str.size());
        }
        if (k.key == "tokenizer.ggml.token_type" || k.key == "tokenizer.ggml.scores")
            for (size_t i = 0; i < specials.size(); ++i) k.num.push_back(k.key == "tokenizer.ggml.scores" ? 0.0 : 3.0);
    }
    x.matrix("token_embd.weight", {E, V});
    x.gain("output_norm.weight", E);
    x.matrix("output.weight", {E, V});
    for (int64_t l = 0; l < L; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        x.gain(p + "attn_norm.weight", E);
        x.matrix(p + "attn_q.weight", {E, H * D});
        x.matrix(p + "attn_k.weight", {E, Hkv * D});
        x.matrix(p + "attn_v.weight", {E, Hkv * D});
        x.matrix(p + "attn_output.weight", {H * D, E});
        x.gain(p + "ffn_norm.weight", E);
        x.matrix(p + "ffn_gate.weight", {E, F});
        x.matrix(p + "ffn_up.weight", {E, F});
        x.matrix(p + "ffn_down.weight", {F, E});
    }
    File f = x.file("fuzz-smolvlm.gguf");
    for (KV& k : vocab.kvs) f.kvs.push_back(std::move(k));
    KV flag;
    flag.key = "tokenizer.ggml.add_bos_token";
    flag.type = GGUFType::BOOL;
    flag.num = {0.0};
    f.kvs.push_back(flag);
    KV tmpl;
    tmpl.key = "tokenizer.chat_template";
    tmpl.type = GGUFType::STRING;
    tmpl.str = {"<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{{': '}}"
                "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"};
    f.kvs.push_back(tmpl);
    return f;
}

// The idefics3 mmproj: a SigLIP tower on 32 px tiles (patch 8 with a bias, a 4 x 4 position table
// without class token, no pre-norm, post-norm with a bias), pixel shuffle 2 (4 tokens per tile) and
// mm.model.fc (no bias, ne [16 * 4, text]); images up to 64 px: 2 x 2 tiles + the global view.
File smol_mmproj() {
    const int64_t C = 16, NH = 2, P = 8, S = 32, L = 2, FF = 32, E = kQwenEmbd, np = (S / P) * (S / P);
    Writer x(61);
    GGUFWriter& w = x.w;
    w.add_str("general.architecture", "clip");
    w.add_str("general.type", "mmproj");
    w.add_bool("clip.has_vision_encoder", true);
    w.add_str("clip.projector_type", "idefics3");
    w.add_u32("clip.vision.projection_dim", static_cast<uint32_t>(E));
    w.add_u32("clip.vision.image_size", static_cast<uint32_t>(S));
    w.add_u32("clip.vision.patch_size", static_cast<uint32_t>(P));
    w.add_u32("clip.vision.embedding_length", static_cast<uint32_t>(C));
    w.add_u32("clip.vision.feed_forward_length", static_cast<uint32_t>(FF));
    w.add_u32("clip.vision.block_count", static_cast<uint32_t>(L));
    w.add_u32("clip.vision.attention.head_count", static_cast<uint32_t>(NH));
    w.add_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
    w.add_f32_array("clip.vision.image_mean", {0.5f, 0.5f, 0.5f});
    w.add_f32_array("clip.vision.image_std", {0.5f, 0.5f, 0.5f});
    w.add_bool("clip.use_gelu", true);
    w.add_u32("clip.vision.projector.scale_factor", 2);
    w.add_u32("clip.vision.preproc_image_size", 2 * S);
    x.matrix("v.patch_embd.weight", {P, P, 3, C});
    x.bias("v.patch_embd.bias", C);
    w.add_tensor("v.position_embd.weight", GGMLType::F32, {C, np}, x.f32s(C * np, 0.0f, 0.02f));
    for (int64_t l = 0; l < L; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        for (const char* n : {"ln1", "ln2"}) {
            x.gain(p + n + ".weight", C);
            x.bias(p + n + ".bias", C);
        }
        for (const char* n : {"attn_q", "attn_k", "attn_v"}) x.linear(p + n, C, C);
        x.linear(p + "attn_out", C, C);
        x.linear(p + "ffn_up", C, FF);
        x.linear(p + "ffn_down", FF, C);
    }
    x.gain("v.post_ln.weight", C);
    x.bias("v.post_ln.bias", C);
    x.matrix("mm.model.fc.weight", {4 * C, E});
    return x.file("fuzz-smolvlm-mmproj.gguf");
}

std::vector<Base> make_bases() {
    std::vector<Base> bases(6);
    RandomModel m = make_random_model("tiny", GGMLType::F16, 7);
    bases[0].name = "llava";
    bases[0].text = read_file(*m.text);
    bases[0].mmproj = read_file(*m.mmproj);
    GGUFWriter w;
    fuzz::add_spm_vocab(w, 512);
    File vocab = read_file(*gguf_from_bytes(w.bytes(), "vocab.gguf"));
    for (KV& k : vocab.kvs) bases[0].text.kvs.push_back(std::move(k));
    const File qwen2 = qwen_text(false);
    bases[1] = {"qwen2-vl", qwen2, qwen_mmproj(QwenKind::Qwen2)};
    bases[2] = {"qwen2.5-vl", qwen2, qwen_mmproj(QwenKind::Qwen25)};
    bases[3] = {"qwen3-vl", qwen_text(true), qwen_mmproj(QwenKind::Qwen3)};
    bases[4] = {"gemma3", gemma_text(), gemma_mmproj()};
    bases[5] = {"smolvlm", smol_text(), smol_mmproj()};
    return bases;
}

// One request on a loaded engine: a short answer about a small image.
void ask(Engine& e, fuzz::Bytes& in, const std::string& prompt) {
    const uint8_t flags = in.u8(), scale = in.u8();
    // up to 192 px a side (a few 112-px windows of Qwen2.5-VL)
    const int h = (1 + in.u8() % 48) * (1 + scale % 4), w = (1 + in.u8() % 48) * (1 + (scale >> 2) % 4);
    std::vector<uint8_t> px(static_cast<size_t>(h) * w * 3);
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 37 + flags);
    Image img = image_from_pixels(px.data(), h, w, 3);
    std::vector<Image> images;
    if (e.has_vision() && !(flags & 1)) images.push_back(img);
    const std::string tmpl = (flags & 2) ? "chatml" : "";
    // the images' token counts fitted to the context (dynamic resolution), as the CLI builds prompts
    std::vector<int32_t> ids = e.build_fitted(
        images, [&](const std::vector<int64_t>& counts) { return e.build_prompt(prompt, counts, tmpl); });
    GenerateParams gp;
    gp.max_tokens = 1 + flags % 3;
    static const char* const policies[] = {"full", "aircache", "h2o", "snapkv", "streaming", "vlcache", "pyramidkv", "random"};
    gp.compression.policy = policies[(flags >> 2) % 8];
    gp.compression.budget = gp.compression.policy == "full" ? 1.0 : (flags & 0x20) ? 0.5 : 0.25;
    gp.sampling.temperature = 0.0f;
    gp.validate();
    Generation g(e, std::move(ids), gp, std::move(images));
    std::string piece;
    while (g.step(piece)) {
    }
}

[[noreturn]] void unmutated_failed(const char* base, const std::exception& e) {
    std::fprintf(stderr, "fuzz_loader: the unmutated %s model failed: %s\n", base, e.what());
    std::abort();
}

// Loads the files as `flags` say and asks; the errors a refusal may throw propagate.
void run(const File& text, const File& mmproj, uint8_t flags, uint8_t limits, fuzz::Bytes& in, const std::string& prompt) {
    EngineParams p;
    p.model_file = write_file(text, "fuzz.gguf");
    if (!(flags & 1)) p.mmproj_file = write_file(mmproj, "fuzz-mmproj.gguf");
    p.device = "cpu";
    p.n_threads = 1;
    p.n_ctx = 64 + 64 * (flags >> 6);
    p.n_batch = (flags & 2) ? 7 : 64;
    p.check_tensors = flags & 4;
    p.image_mode = (flags & 8) ? ImageMode::Crop : ImageMode::Pad;
    p.kv_type_k = (flags & 16) ? KVType::F32 : KVType::F16;
    p.kv_type_v = p.kv_type_k;
    p.chat_template = (flags & 32) ? "none" : "";
    // image token limits (dynamic resolution): 0 = the model's default
    static const int64_t kLimits[] = {0, 0, 1, 2, 3, 4, 6, 9, 16, 25, 64, 100, 1000, 4096, 65536, 16777216};
    p.image_max_tokens = kLimits[limits % 16];
    p.image_min_tokens = (limits & 0x80) ? kLimits[(limits >> 4) % 8] : 0;
    Engine e(p);
    ask(e, in, prompt);
}

const std::vector<Base>& bases() {
    static const std::vector<Base> b = [] {
        std::vector<Base> v = make_bases();
        for (const Base& x : v) {  // every unmutated base answers
            fuzz::Bytes none(nullptr, 0);
            try {
                run(x.text, x.mmproj, 0xC0, 0, none, "What is in the image?");  // n_ctx 256
            } catch (const std::exception& err) {
                unmutated_failed(x.name, err);
            }
        }
        return v;
    }();
    return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::vector<Base>& all = bases();
    fuzz::Bytes in(data, size);
    // [base]: the pair; its top nibble 0xF pairs the text model with the mmproj of another base
    const uint8_t sel = in.u8();
    const Base& base = all[sel % all.size()];
    const size_t other = (sel % all.size() + 1 + (sel & 3)) % all.size();  // never the base itself
    File text = base.text, mmproj = (sel >> 4) == 0xF ? all[other].mmproj : base.mmproj;

    // mutations: [n] then n x (op, index, how, ...)
    const int n_mut = in.u8() % 9;
    for (int m = 0; m < n_mut && !in.empty(); ++m) {
        const uint8_t op = in.u8();
        File& f = (op & 1) ? mmproj : text;
        const uint8_t idx = in.u8(), how = in.u8();
        const size_t nk = f.kvs.size(), nt = f.tensors.size();
        switch ((op >> 1) % 11) {
            case 0: if (nk) set_scalar(f.kvs[idx % nk], how, in); break;
            case 1: if (nk) retype(f.kvs[idx % nk], how); break;
            case 2: if (nk) f.kvs.erase(f.kvs.begin() + idx % nk); break;
            case 3: {
                KV k;
                k.key = kExtraKeys[idx % (sizeof kExtraKeys / sizeof *kExtraKeys)];
                k.type = GGUFType::UINT32;
                k.num = {1.0};
                retype(k, how);
                if (k.type != GGUFType::ARRAY) set_scalar(k, in.u8(), in);
                bool replaced = false;
                for (KV& old : f.kvs)
                    if (old.key == k.key) old = k, replaced = true;
                if (!replaced) f.kvs.push_back(std::move(k));
                break;
            }
            case 4: {
                std::vector<KV*> arrays;
                for (KV& k : f.kvs)
                    if (k.type == GGUFType::ARRAY) arrays.push_back(&k);
                if (!arrays.empty()) mutate_array(*arrays[idx % arrays.size()], how, in);
                break;
            }
            case 5: if (nt) mutate_tensor_shape(f.tensors[(idx * 7u + how) % nt], in.u8(), in); break;
            case 6: if (nt) mutate_tensor_type(f.tensors[(idx * 7u + how) % nt], in.u8(), static_cast<uint64_t>(m) * 977 + idx); break;
            case 7: if (nt) f.tensors.erase(f.tensors.begin() + (idx * 7u + how) % nt); break;
            case 8: if (nt > 1) std::swap(f.tensors[(idx * 7u) % nt].name, f.tensors[(how * 13u) % nt].name); break;
            case 9: if (nt) renumber(f.tensors[(idx * 7u + how) % nt], in.u8(), in); break;
            default: if (nt) poke(f.tensors[(idx * 7u + how) % nt], in.u8(), in); break;
        }
    }
    const uint8_t flags = in.u8(), limits = in.u8();
    const std::string prompt = in.str(48);

    try {
        run(text, mmproj, flags, limits, in, prompt);
    } catch (const FormatError& err) {
        if (size == 0) unmutated_failed(base.name, err);
    } catch (const UnsupportedError& err) {
        if (size == 0) unmutated_failed(base.name, err);
    } catch (const InputError& err) {
        if (size == 0) unmutated_failed(base.name, err);
    } catch (const OutOfMemory& err) {
        if (size == 0) unmutated_failed(base.name, err);
    }
    return 0;
}
