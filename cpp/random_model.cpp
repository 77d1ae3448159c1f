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

enum class Family { Llava, Qwen25, Qwen3, Gemma3, SmolVLM, InternVL };

struct Shape {
    const char* name;
    Family family;
    int64_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab;
    bool tied;
    int64_t v_image, v_patch, v_embd, v_layer, v_head, v_ff;
};

const Shape kShapes[] = {
    {"tiny", Family::Llava, 64, 2, 4, 2, 16, 128, 512, false, 32, 8, 32, 2, 4, 64},
    {"llava-79m", Family::Llava, 768, 12, 12, 4, 64, 1024, 32000, true, 336, 14, 384, 6, 6, 1536},
    {"mistral-7b-8l", Family::Llava, 4096, 8, 32, 8, 128, 14336, 32000, false, 336, 14, 384, 6, 6, 1536},
    // llava-v1.6-mistral-7b's widths (text Mistral-7B: 4096, 32/8 heads of 128, ff 14336, vocab 32064, untied,
    // RoPE base 1e6; CLIP ViT-L/14-336: 1024 wide, 16 heads, ff 4096), 8 text and 8 ViT layers (of 32 and 23),
    // anyres: llava-1.6's grid pinpoints, the image newline (a 672x672 image: 576 + 48 x 48 = 2,880 visual
    // tokens and 48 newline rows)
    {"llava-next-mistral-7b-8l", Family::Llava, 4096, 8, 32, 8, 128, 14336, 32064, false, 336, 14, 1024, 8, 16, 4096},
    // Qwen2.5-VL-3B's widths (text 2048, 16/2 heads, ff 11008, vocab 151936, tied; ViT 1280 wide, 16
    // heads, ff 3420, patch 14, window attention), 8 text and 8 ViT layers
    {"qwen2.5-vl-3b-8l", Family::Qwen25, 2048, 8, 16, 2, 128, 11008, 151936, true, 0, 14, 1280, 8, 16, 3420},
    // Qwen3-VL-2B's widths (text 2048, 16/8 heads of 128, ff 6144, vocab 151936, tied, 3 DeepStack
    // layers; ViT 1024 wide, 16 heads, ff 4096, patch 16, 48x48 position table), 8 + 8 layers
    {"qwen3-vl-2b-8l", Family::Qwen3, 2048, 8, 16, 8, 128, 6144, 151936, true, 768, 16, 1024, 8, 16, 4096},
    // Gemma 3 4B's widths (text 2560, 8/4 heads of 256, ff 10240, vocab 262208, tied, window 1024, layer
    // 5 global; SigLIP 896 px / 14, 1152 wide, 16 heads, ff 4304, 256 tokens), 8 text and 8 ViT layers
    {"gemma3-4b-8l", Family::Gemma3, 2560, 8, 8, 4, 256, 10240, 262208, true, 896, 14, 1152, 8, 16, 4304},
    // SmolVLM2-2.2B's widths (text SmolLM2-1.7B: 2048, 32/32 heads of 64, ff 8192, vocab 49280, untied, RoPE
    // base 273768; SigLIP-so400m 384 px tiles / 14, 1152 wide, 16 heads, ff 4304, pixel shuffle 3 -> 81
    // tokens per tile, images up to 1536 px: a 1024x768 photo is 4 x 3 tiles + the global view), 8 text and
    // 8 ViT layers (of 24 and 27)
    {"smolvlm2-2b-8l", Family::SmolVLM, 2048, 8, 32, 32, 64, 8192, 49280, false, 384, 14, 1152, 8, 16, 4304},
    // InternVL3-2B's widths (text Qwen2.5-1.5B: 1536, 12/2 heads of 128, ff 8960, vocab 151674, untied, Q/K/V
    // biases, RoPE base 1e6; InternViT-300M: 448 px tiles / 14, 1024 wide, 16 heads, ff 4096, layer scales,
    // pixel shuffle 0.5 -> 256 tokens per tile, 1..12 tiles + a thumbnail: a 1024x768 photo is 4 x 3 tiles
    // + the thumbnail = 3328 tokens), 8 text and 8 ViT layers (of 28 and 24)
    {"internvl3-2b-8l", Family::InternVL, 1536, 8, 12, 2, 128, 8960, 151674, false, 448, 14, 1024, 8, 16, 4096},
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
    RandomModel m;
    m.shape = shape;
    const int64_t E = s->n_embd, H = s->n_head, Hkv = s->n_head_kv, D = s->head_dim, F = s->n_ff, V = s->n_vocab;
    const bool gemma = s->family == Family::Gemma3, smol = s->family == Family::SmolVLM;
    const bool next = shape == "llava-next-mistral-7b-8l";  // LLaVA-NeXT: the llava shapes + anyres
    const bool ivl = s->family == Family::InternVL;
    const bool qwen = s->family == Family::Qwen25 || s->family == Family::Qwen3, qwen3 = s->family == Family::Qwen3;
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
    const std::string arch = gemma                                 ? "gemma3"
                             : s->family == Family::Llava || smol ? "llama"
                             : ivl                                ? "qwen2"
                             : qwen3                              ? "qwen3vl"
                                                                  : "qwen2vl";
    const std::string a = arch + ".";
    GGUFWriter w;
    w.add_str("general.architecture", arch);
    w.add_str("general.name", "random-" + shape);
    w.add_u32(a + "context_length", 32768);
    w.add_u32(a + "embedding_length", static_cast<uint32_t>(E));
    w.add_u32(a + "block_count", static_cast<uint32_t>(s->n_layer));
    w.add_u32(a + "feed_forward_length", static_cast<uint32_t>(F));
    if (!qwen && !gemma && !ivl) w.add_u32(a + "rope.dimension_count", static_cast<uint32_t>(D));
    if (gemma) {
        w.add_u32(a + "attention.key_length", static_cast<uint32_t>(D));
        w.add_u32(a + "attention.value_length", static_cast<uint32_t>(D));
        w.add_u32(a + "attention.sliding_window", 1024);
        w.add_f32(a + "rope.freq_base_swa", 10000.0f);
        w.add_str(a + "rope.scaling.type", "linear");
        w.add_f32(a + "rope.scaling.factor", 8.0f);
    }
    if (qwen3) {
        w.add_u32(a + "attention.key_length", static_cast<uint32_t>(D));
        w.add_u32(a + "attention.value_length", static_cast<uint32_t>(D));
        w.add_u32(a + "n_deepstack_layers", 3);
    }
    w.add_u32(a + "attention.head_count", static_cast<uint32_t>(H));
    w.add_u32(a + "attention.head_count_kv", static_cast<uint32_t>(Hkv));
    w.add_f32(a + "attention.layer_norm_rms_epsilon", qwen || gemma || ivl ? 1e-6f : 1e-5f);
    w.add_f32(a + "rope.freq_base", qwen3 ? 5e6f : qwen || gemma || ivl ? 1e6f : smol ? 273768.0f : next ? 1e6f : 10000.0f);
    if (qwen) w.add_i32_array(a + "rope.dimension_sections", qwen3 ? std::vector<int32_t>{24, 20, 20, 0}
                                                                  : std::vector<int32_t>{16, 24, 24, 0});
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
        if ((qwen && !qwen3) || ivl)
            for (const auto& [n, len] : {std::pair<const char*, int64_t>{"attn_q.bias", H * D}, {"attn_k.bias", Hkv * D},
                                         {"attn_v.bias", Hkv * D}})
                w.add_tensor(p + n, GGMLType::F32, {len}, vec(len, 0.0f, 0.02f));
        if (qwen3 || gemma) {
            w.add_tensor(p + "attn_q_norm.weight", GGMLType::F32, {D}, vec(D, 1.0f, 0.1f));
            w.add_tensor(p + "attn_k_norm.weight", GGMLType::F32, {D}, vec(D, 1.0f, 0.1f));
        }
        w.add_tensor(p + "ffn_norm.weight", GGMLType::F32, {E}, vec(E, 1.0f, 0.1f));
        add_w(p + "ffn_gate.weight", F, E);
        add_w(p + "ffn_up.weight", F, E);
        add_w(p + "ffn_down.weight", E, F);
        if (gemma) {
            w.add_tensor(p + "post_attention_norm.weight", GGMLType::F32, {E}, vec(E, 1.0f, 0.1f));
            w.add_tensor(p + "post_ffw_norm.weight", GGMLType::F32, {E}, vec(E, 1.0f, 0.1f));
        }
    }
    if (smol) {  // the tokens SmolVLM writes images with (the tokenizer: ids as text, no merges)
        std::vector<std::string> toks;
        for (int64_t i = 0; i < V; ++i) toks.push_back("<t" + std::to_string(i) + ">");
        toks[0] = "<|endoftext|>";
        toks[1] = "<|im_start|>";
        toks[2] = "<|im_end|>";
        toks[3] = "<global-img>";
        for (int r = 1; r <= 6; ++r)
            for (int c = 1; c <= 6; ++c) toks[static_cast<size_t>(3 + (r - 1) * 6 + c)] = strprintf("<row_%d_col_%d>", r, c);
        toks[40] = "<fake_token_around_image>";
        toks[41] = "<image>";
        toks[42] = "<end_of_utterance>";
        toks[43] = "\n";
        toks[44] = "\n\n";
        w.add_str("tokenizer.ggml.model", "llama");
        w.add_str("tokenizer.ggml.pre", "default");
        w.add_str_array("tokenizer.ggml.tokens", toks);
        std::vector<float> scores(static_cast<size_t>(V), 0.0f);
        w.add_f32_array("tokenizer.ggml.scores", scores);
        std::vector<int32_t> types(static_cast<size_t>(V), 1);
        for (int i = 0; i <= 42; ++i) types[static_cast<size_t>(i)] = 3;  // control: matched as whole tokens
        w.add_i32_array("tokenizer.ggml.token_type", types);
        w.add_u32("tokenizer.ggml.bos_token_id", 1);
        w.add_u32("tokenizer.ggml.eos_token_id", 42);
        w.add_u32("tokenizer.ggml.unknown_token_id", 0);
        w.add_bool("tokenizer.ggml.add_bos_token", false);
        w.add_bool("tokenizer.ggml.add_space_prefix", false);
    }
    if (ivl) {  // the tokens InternVL writes images with (the tokenizer: ids as text, no merges)
        std::vector<std::string> toks;
        for (int64_t i = 0; i < V; ++i) toks.push_back("<t" + std::to_string(i) + ">");
        const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"};
        for (size_t i = 0; i < 6; ++i) toks[i] = specials[i];
        toks[6] = "\n";
        w.add_str("tokenizer.ggml.model", "llama");
        w.add_str("tokenizer.ggml.pre", "default");
        w.add_str_array("tokenizer.ggml.tokens", toks);
        w.add_f32_array("tokenizer.ggml.scores", std::vector<float>(static_cast<size_t>(V), 0.0f));
        std::vector<int32_t> types(static_cast<size_t>(V), 1);
        for (int i = 0; i < 6; ++i) types[static_cast<size_t>(i)] = 3;  // control: matched as whole tokens
        w.add_i32_array("tokenizer.ggml.token_type", types);
        w.add_u32("tokenizer.ggml.eos_token_id", 2);
        w.add_u32("tokenizer.ggml.unknown_token_id", 0);
        w.add_bool("tokenizer.ggml.add_bos_token", false);
    }
    m.text = gguf_from_bytes(w.bytes(), "random-" + shape + ".gguf");

    // --- mmproj, F16 matrices: a CLIP-style ViT + mlp projector (LLaVA), or the Qwen-VL towers
    const int64_t C = s->v_embd, P = s->v_patch, S = s->v_image, Fv = s->v_ff, n_pos = (S / P) * (S / P) + 1;
    GGUFWriter v;
    v.add_str("general.architecture", "clip");
    v.add_bool("clip.has_vision_encoder", true);
    v.add_str("clip.projector_type", gemma  ? "gemma3"
                                     : smol ? "idefics3"
                                     : ivl  ? "internvl"
                                     : s->family == Family::Llava ? "mlp"
                                     : qwen3 ? "qwen3vl_merger"
                                             : "qwen2.5vl_merger");
    v.add_u32("clip.vision.image_size", static_cast<uint32_t>(qwen && !qwen3 ? 560 : S));
    v.add_u32("clip.vision.patch_size", static_cast<uint32_t>(P));
    v.add_u32("clip.vision.embedding_length", static_cast<uint32_t>(C));
    v.add_u32("clip.vision.feed_forward_length", static_cast<uint32_t>(Fv));
    v.add_u32("clip.vision.projection_dim", static_cast<uint32_t>(E));
    v.add_u32("clip.vision.attention.head_count", static_cast<uint32_t>(s->v_head));
    v.add_f32("clip.vision.attention.layer_norm_epsilon", qwen || gemma || smol || ivl ? 1e-6f : 1e-5f);
    if (gemma || smol || ivl) v.add_bool("clip.use_gelu", true);
    if (ivl) {
        v.add_u32("clip.vision.projector.scale_factor", 2);
        v.add_u32("clip.vision.preproc_min_tiles", 1);
        v.add_u32("clip.vision.preproc_max_tiles", 12);
    }
    if (smol) {
        v.add_u32("clip.vision.projector.scale_factor", 3);
        v.add_u32("clip.vision.preproc_image_size", 1536);
    }
    v.add_u32("clip.vision.block_count", static_cast<uint32_t>(s->v_layer));
    if (next) {  // what llama.cpp's legacy converter writes for llava-1.6
        v.add_i32_array("clip.vision.image_grid_pinpoints", {336, 672, 672, 336, 672, 672, 1008, 336, 336, 1008});
        v.add_str("clip.vision.image_aspect_ratio", "anyres");
        v.add_str("clip.vision.mm_patch_merge_type", "spatial_unpad");
    }
    if (ivl) {
        v.add_f32_array("clip.vision.image_mean", {0.485f, 0.456f, 0.406f});
        v.add_f32_array("clip.vision.image_std", {0.229f, 0.224f, 0.225f});
    } else if (qwen3 || gemma || smol) {
        v.add_f32_array("clip.vision.image_mean", {0.5f, 0.5f, 0.5f});
        v.add_f32_array("clip.vision.image_std", {0.5f, 0.5f, 0.5f});
        if (qwen3) v.add_u32("clip.vision.spatial_merge_size", 2);
    } else {
        v.add_f32_array("clip.vision.image_mean", {0.48145466f, 0.4578275f, 0.40821073f});
        v.add_f32_array("clip.vision.image_std", {0.26862954f, 0.26130258f, 0.27577711f});
    }
    if (qwen && !qwen3) {
        v.add_bool("clip.use_silu", true);
        v.add_u32("clip.vision.n_wa_pattern", 4);  // full attention in blocks 3 and 7
    }
    auto f16 = [&](int64_t rows, int64_t cols) { return random_weight(GGMLType::F16, rows, cols, 0.02f, rng); };
    auto bias = [&](const std::string& name, int64_t n) { v.add_tensor(name, GGMLType::F32, {n}, vec(n, 0.0f, 0.02f)); };
    auto gain = [&](const std::string& name, int64_t n) { v.add_tensor(name, GGMLType::F32, {n}, vec(n, 1.0f, 0.1f)); };
    auto mat = [&](const std::string& name, int64_t in, int64_t out) {
        v.add_tensor(name + ".weight", GGMLType::F16, {in, out}, f16(out, in));
        bias(name + ".bias", out);
    };
    if (qwen) {
        v.add_tensor("v.patch_embd.weight", GGMLType::F16, {P, P, 3, C}, f16(C, 3 * P * P));
        v.add_tensor("v.patch_embd.weight.1", GGMLType::F16, {P, P, 3, C}, f16(C, 3 * P * P));
        if (qwen3) {
            bias("v.patch_embd.bias", C);
            const int64_t np = (S / P) * (S / P);
            v.add_tensor("v.position_embd.weight", GGMLType::F32, {C, np}, vec(C * np, 0.0f, 0.02f));
        }
    } else if (ivl) {
        v.add_tensor("v.patch_embd.weight", GGMLType::F16, {P, P, 3, C}, f16(C, 3 * P * P));
        bias("v.patch_embd.bias", C);
        v.add_tensor("v.class_embd", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
        v.add_tensor("v.position_embd.weight", GGMLType::F32, {C, n_pos}, vec(C * n_pos, 0.0f, 0.02f));
    } else if (gemma || smol) {
        const int64_t np = (S / P) * (S / P);
        v.add_tensor("v.patch_embd.weight", GGMLType::F16, {P, P, 3, C}, f16(C, 3 * P * P));
        bias("v.patch_embd.bias", C);
        v.add_tensor("v.position_embd.weight", GGMLType::F32, {C, np}, vec(C * np, 0.0f, 0.02f));
    } else {
        v.add_tensor("v.patch_embd.weight", GGMLType::F16, {P, P, 3, C}, f16(C, 3 * P * P));
        v.add_tensor("v.class_embd", GGMLType::F32, {C}, vec(C, 0.0f, 0.02f));
        v.add_tensor("v.position_embd.weight", GGMLType::F32, {C, n_pos}, vec(C * n_pos, 0.0f, 0.02f));
        gain("v.pre_ln.weight", C);
        bias("v.pre_ln.bias", C);
    }
    for (int64_t l = 0; l < s->v_layer; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        for (const char* n : {"ln1", "ln2"}) {
            gain(p + n + ".weight", C);
            if (s->family != Family::Qwen25) bias(p + n + ".bias", C);
        }
        if (qwen3) mat(p + "attn_qkv", C, 3 * C);
        else
            for (const char* n : {"attn_q", "attn_k", "attn_v"}) mat(p + n, C, C);
        mat(p + "attn_out", C, C);
        if (ivl) {
            gain(p + "ls1.weight", C);
            gain(p + "ls2.weight", C);
        }
        if (s->family == Family::Qwen25) mat(p + "ffn_gate", C, Fv);
        mat(p + "ffn_up", C, Fv);
        mat(p + "ffn_down", Fv, C);
    }
    if (qwen) {
        gain("v.post_ln.weight", C);
        if (qwen3) bias("v.post_ln.bias", C);
        mat("mm.0", 4 * C, 4 * C);
        mat("mm.2", 4 * C, E);
        if (qwen3)
            for (int b : {1, 3, 5}) {  // DeepStack taps
                const std::string p = "v.deepstack." + std::to_string(b) + ".";
                gain(p + "norm.weight", 4 * C);
                bias(p + "norm.bias", 4 * C);
                mat(p + "fc1", 4 * C, 4 * C);
                mat(p + "fc2", 4 * C, E);
            }
    } else if (gemma) {
        gain("v.post_ln.weight", C);
        bias("v.post_ln.bias", C);
        gain("mm.soft_emb_norm.weight", C);
        v.add_tensor("mm.input_projection.weight", GGMLType::F16, {E, C}, f16(C, E));
    } else if (smol) {
        gain("v.post_ln.weight", C);
        bias("v.post_ln.bias", C);
        v.add_tensor("mm.model.fc.weight", GGMLType::F16, {9 * C, E}, f16(E, 9 * C));
    } else if (ivl) {
        gain("mm.model.mlp.0.weight", 4 * C);
        bias("mm.model.mlp.0.bias", 4 * C);
        mat("mm.model.mlp.1", 4 * C, E);
        mat("mm.model.mlp.3", E, E);
    } else {
        mat("mm.0", C, E);
        mat("mm.2", E, E);
        if (next) v.add_tensor("model.image_newline", GGMLType::F32, {E}, vec(E, 0.0f, 0.02f));
    }
    m.mmproj = gguf_from_bytes(v.bytes(), "random-" + shape + "-mmproj.gguf");
    return m;
}

}  // namespace aircache
