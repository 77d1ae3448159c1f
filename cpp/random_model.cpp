#include "random_model.h"

#include <cmath>
#include <cstring>
#include <random>

#include "common.h"
#include "fp16.h"
#include "gguf_writer.h"
#include "quants.h"

namespace aircache {

namespace {

struct Shape {
    const char* name;
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab;
    bool tied;
    int64_t v_image, v_patch, v_embd, v_layer, v_head, v_ff;
};

const Shape kShapes[] = {
    {"tiny", 64, 2, 4, 2, 128, 512, false, 32, 8, 32, 2, 4, 64},
    {"llava-79m", 768, 12, 12, 4, 1024, 32000, true, 336, 14, 384, 6, 6, 1536},
    {"mistral-7b-8l", 4096, 8, 32, 8, 14336, 32000, false, 336, 14, 384, 6, 6, 1536},
};

// Byte offsets of the f16 scale fields in one block of each quantized type.
std::vector<int> scale_fields(GGMLType t) {
    switch (t) {
        case GGMLType::Q4_0: case GGMLType::Q5_0: case GGMLType::Q8_0: return {0};
        case GGMLType::Q4_1: case GGMLType::Q5_1: case GGMLType::Q4_K: case GGMLType::Q5_K: return {0, 2};
        case GGMLType::Q2_K: return {80, 82};
        case GGMLType::Q3_K: return {108};
        case GGMLType::Q6_K: return {208};
        default: return {};
    }
}

std::vector<uint8_t> random_weight(GGMLType type, int64_t rows, int64_t cols, float std_, std::mt19937_64& rng) {
    std::normal_distribution<float> nd(0.0f, std_);
    const TypeInfo& ti = type_info(type);
    const size_t n = static_cast<size_t>(rows * cols);
    std::vector<uint8_t> out;
    if (type == GGMLType::F32) {
        out.resize(n * 4);
        for (size_t i = 0; i < n; ++i) {
            const float x = nd(rng);
            std::memcpy(out.data() + 4 * i, &x, 4);
        }
        return out;
    }
    if (type == GGMLType::F16 || type == GGMLType::BF16) {
        out.resize(n * 2);
        for (size_t i = 0; i < n; ++i) {
            const float x = nd(rng);
            const uint16_t h = type == GGMLType::F16 ? f32_to_f16(x) : static_cast<uint16_t>(f32_to_bits(x) >> 16);
            std::memcpy(out.data() + 2 * i, &h, 2);
        }
        return out;
    }
    // random blocks, then scale fields chosen so that the dequantized values have about std_
    const size_t rb = row_bytes(ti, cols);
    out.resize(rb * static_cast<size_t>(rows));
    for (size_t i = 0; i < out.size(); i += 8) {
        const uint64_t r = rng();
        std::memcpy(out.data() + i, &r, std::min<size_t>(8, out.size() - i));
    }
    const std::vector<int> fields = scale_fields(type);
    const int64_t n_blocks = static_cast<int64_t>(out.size()) / ti.type_size;
    auto set_scales = [&](float v) {
        const uint16_t h = f32_to_f16(v);
        for (int64_t b = 0; b < n_blocks; ++b)
            for (int f : fields) std::memcpy(out.data() + b * ti.type_size + f, &h, 2);
    };
    set_scales(1.0f);
    const int64_t probe = std::min<int64_t>(rows, 4);
    std::vector<float> row(static_cast<size_t>(cols));
    double s2 = 0.0;
    for (int64_t r = 0; r < probe; ++r) {
        dequantize_row(type, out.data() + r * rb, row.data(), cols);
        for (float x : row) s2 += static_cast<double>(x) * x;
    }
    const double sd = std::sqrt(s2 / static_cast<double>(probe * cols));
    set_scales(static_cast<float>(std_ / std::max(sd, 1e-12)));
    return out;
}

}  // namespace

std::vector<std::string> random_model_shapes() {
    std::vector<std::string> v;
    for (const Shape& s : kShapes) v.push_back(s.name);
    return v;
}

std::shared_ptr<const GGUFFile> gguf_from_bytes(std::vector<uint8_t> bytes, const std::string& name) {
    struct Holder {
        std::vector<uint8_t> bytes;
        std::unique_ptr<GGUFFile> file;
    };
    auto h = std::make_shared<Holder>();
    h->bytes = std::move(bytes);
    h->file = GGUFFile::from_memory(h->bytes.data(), h->bytes.size(), name);
    return std::shared_ptr<const GGUFFile>(h, h->file.get());
}

RandomModel make_random_model(const std::string& shape, GGMLType wtype, uint64_t seed) {
    const Shape* s = nullptr;
    for (const Shape& x : kShapes)
        if (shape == x.name) s = &x;
    if (!s) {
        std::string names;
        for (const Shape& x : kShapes) names += (names.empty() ? "" : ", ") + std::string(x.name);
        throw InputError("unknown random model shape '" + shape + "' (valid: " + names + ")");
    }
    require_supported(wtype, "random model weights");
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd01(0.0f, 0.1f);
    RandomModel m;
    m.shape = shape;
    const int64_t E = s->n_embd, H = s->n_head, Hkv = s->n_head_kv, D = E / H, F = s->n_ff, V = s->n_vocab;
    auto wt = [&](int64_t cols) {  // K-quants need rows of whole 256-element blocks (llama.cpp falls back too)
        return cols % type_info(wtype).block_size == 0 ? wtype : GGMLType::F16;
    };
    auto vec = [&](int64_t n, float mean, float sd) {
        std::vector<uint8_t> out(static_cast<size_t>(n) * 4);
        std::normal_distribution<float> nd(mean, sd);
        for (int64_t i = 0; i < n; ++i) {
            const float x = nd(rng);
            std::memcpy(out.data() + 4 * i, &x, 4);
        }
        return out;
    };
    // --- text model
    GGUFWriter w;
    w.add_str("general.architecture", "llama");
    w.add_str("general.name", "random-" + shape);
    w.add_u32("llama.context_length", 32768);
    w.add_u32("llama.embedding_length", static_cast<uint32_t>(E));
    w.add_u32("llama.block_count", static_cast<uint32_t>(s->n_layer));
    w.add_u32("llama.feed_forward_length", static_cast<uint32_t>(F));
    w.add_u32("llama.rope.dimension_count", static_cast<uint32_t>(D));
    w.add_u32("llama.attention.head_count", static_cast<uint32_t>(H));
    w.add_u32("llama.attention.head_count_kv", static_cast<uint32_t>(Hkv));
    w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.add_f32("llama.rope.freq_base", 10000.0f);
    auto add_w = [&](const std::string& name, int64_t rows, int64_t cols) {
        const GGMLType t = wt(cols);
        w.add_tensor(name, t, {cols, rows}, random_weight(t, rows, cols, 0.02f, rng));
        m.n_params += rows * cols;
    };
    add_w("token_embd.weight", V, E);
    w.add_tensor("output_norm.weight", GGMLType::F32, {E}, vec(E, 1.0f, 0.1f));
    if (!s->tied) add_w("output.weight", V, E);
    for (int64_t l = 0; l < s->n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        w.add_tensor(p + "attn_norm.weight", GGMLType::F32, {E}, vec(E, 1.0f, 0.1f));
        add_w(p + "attn_q.weight", H * D, E);
        add_w(p + "attn_k.weight", Hkv * D, E);
        add_w(p + "attn_v.weight", Hkv * D, E);
        add_w(p + "attn_output.weight", E, H * D);
        w.add_tensor(p + "ffn_norm.weight", GGMLType::F32, {E}, vec(E, 1.0f, 0.1f));
        add_w(p + "ffn_gate.weight", F, E);
        add_w(p + "ffn_up.weight", F, E);
        add_w(p + "ffn_down.weight", E, F);
    }
    m.text = gguf_from_bytes(w.bytes(), "random-" + shape + ".gguf");

    // --- mmproj (CLIP-style ViT + mlp projector), F16 matrices
    const int64_t C = s->v_embd, P = s->v_patch, S = s->v_image, Fv = s->v_ff, n_pos = (S / P) * (S / P) + 1;
    GGUFWriter v;
    v.add_str("general.architecture", "clip");
    v.add_bool("clip.has_vision_encoder", true);
    v.add_str("clip.projector_type", "mlp");
    v.add_u32("clip.vision.image_size", static_cast<uint32_t>(S));
    v.add_u32("clip.vision.patch_size", static_cast<uint32_t>(P));
    v.add_u32("clip.vision.embedding_length", static_cast<uint32_t>(C));
    v.add_u32("clip.vision.feed_forward_length", static_cast<uint32_t>(Fv));
    v.add_u32("clip.vision.projection_dim", static_cast<uint32_t>(E));
    v.add_u32("clip.vision.attention.head_count", static_cast<uint32_t>(s->v_head));
    v.add_f32("clip.vision.attention.layer_norm_epsilon", 1e-5f);
    v.add_u32("clip.vision.block_count", static_cast<uint32_t>(s->v_layer));
    v.add_f32_array("clip.vision.image_mean", {0.48145466f, 0.4578275f, 0.40821073f});
    v.add_f32_array("clip.vision.image_std", {0.26862954f, 0.26130258f, 0.27577711f});
    auto f16 = [&](int64_t rows, int64_t cols) { return random_weight(GGMLType::F16, rows, cols, 0.02f, rng); };
    v.add_tensor("v.patch_embd.weight", GGMLType::F16, {P, P, 3, C}, f16(C, 3 * P * P));
    v.add_tensor("v.class_embd", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
    v.add_tensor("v.position_embd.weight", GGMLType::F32, {C, n_pos}, vec(C * n_pos, 0.0f, 0.02f));
    v.add_tensor("v.pre_ln.weight", GGMLType::F32, {C}, vec(C, 1.0f, 0.1f));
    v.add_tensor("v.pre_ln.bias", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
    for (int64_t l = 0; l < s->v_layer; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        for (const char* n : {"ln1", "ln2"}) {
            v.add_tensor(p + n + ".weight", GGMLType::F32, {C}, vec(C, 1.0f, 0.1f));
            v.add_tensor(p + n + ".bias", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
        }
        for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_out"}) {
            v.add_tensor(p + n + ".weight", GGMLType::F16, {C, C}, f16(C, C));
            v.add_tensor(p + n + ".bias", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
        }
        v.add_tensor(p + "ffn_up.weight", GGMLType::F16, {C, Fv}, f16(Fv, C));
        v.add_tensor(p + "ffn_up.bias", GGMLType::F32, {Fv}, vec(Fv, 0.0f, 0.02f));
        v.add_tensor(p + "ffn_down.weight", GGMLType::F16, {Fv, C}, f16(C, Fv));
        v.add_tensor(p + "ffn_down.bias", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
    }
    v.add_tensor("mm.0.weight", GGMLType::F16, {C, E}, f16(E, C));
    v.add_tensor("mm.0.bias", GGMLType::F32, {E}, vec(E, 0.0f, 0.02f));
    v.add_tensor("mm.2.weight", GGMLType::F16, {E, E}, f16(E, E));
    v.add_tensor("mm.2.bias", GGMLType::F32, {E}, vec(E, 0.0f, 0.02f));
    m.mmproj = gguf_from_bytes(v.bytes(), "random-" + shape + "-mmproj.gguf");
    (void)nd01;
    return m;
}

}  // namespace aircache
