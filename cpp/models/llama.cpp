// models/llama.cpp — the LLaMA-family decoder: pre-norm blocks of RMSNorm -> GQA attention with RoPE
// -> residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; output projection (or the tied token
// embedding). Architectures:
//   llama    LLaVA's language model. Q/K rows are stored in llama.cpp's interleaved order (the
//            converter permuted HF's rotate-half rows), so RoPE rotates adjacent pairs.
//   qwen2    Qwen2 / Qwen2.5 (InternVL 2.5 / 3's language model): Q/K/V biases, NeoX RoPE
//            (llama.cpp's converter does not permute Qwen's Q/K rows: rotate-half pairs (i, i + n/2)),
//            1-D positions.
//   qwen2vl  Qwen2-VL / Qwen2.5-VL (the Qwen2 decoder): Q/K/V biases, NeoX RoPE (unpermuted rows)
//            over three position axes (t, h, w) split into the file's rope.dimension_sections: the
//            first s_t rotary pairs take t, the next s_h take h, the rest w (HF's mrope_section).
//   qwen3vl  Qwen3-VL: no biases, per-head RMSNorm of q and k before RoPE, interleaved M-RoPE (pair
//            p takes h when p % 3 == 1 and p < 3 s_h, w when p % 3 == 2 and p < 3 s_w, else t: HF's
//            assignment, so the tail pairs rotate by t), and DeepStack: the vision tower's extra
//            features (TextBatch::deepstack) added to the outputs of the first n_deepstack_layers
//            layers at the image rows.
// The RMSNorm epsilon is read from the file for every architecture (llama.cpp ignores it for qwen2vl).
// qwen3vlmoe (the mixture-of-experts Qwen3-VL) is not supported.
#include <algorithm>
#include <cmath>
#include <memory>

#include "common.h"
#include "nn/attention.h"
#include "nn/decoder.h"
#include "text_model.h"

namespace aircache {

namespace {

class LlamaModel final : public TextModel {
public:
    LlamaModel(std::shared_ptr<const GGUFFile> file, const std::string& arch) : TextModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_ = read_llama_like_config(f, arch);
        const bool qwen3 = arch == "qwen3vl", mrope = arch == "qwen2vl" || qwen3;
        cfg_.rope_style = mrope || arch == "qwen2" ? RopeStyle::Neox : RopeStyle::Norm;
        const int64_t E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim, F = cfg_.n_ff;
        if (mrope) read_mrope_sections(f, arch, qwen3);
        if (qwen3) {
            const std::string key = arch + ".n_deepstack_layers";
            const uint32_t nd = f.get_u32(key, 0);
            if (nd > cfg_.n_layer)  // checked before the cast (2^32 - 1 would have become -1)
                f.fail(strprintf("key '%s' is %u, more than the %lld layers", key.c_str(), nd,
                                 static_cast<long long>(cfg_.n_layer)));
            n_deepstack_ = static_cast<int>(nd);
            cfg_.n_deepstack = n_deepstack_;
        }
        tok_embd_ = matrix("token_embd.weight", {E, cfg_.n_vocab});
        out_norm_ = vector("output_norm.weight", E);
        output_ = optional_matrix("output.weight", {E, cfg_.n_vocab});
        cfg_.tied_output = !output_;
        if (!output_) output_ = tok_embd_;
        layers_.resize(static_cast<size_t>(cfg_.n_layer));
        for (int64_t l = 0; l < cfg_.n_layer; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".";
            Layer& L = layers_[static_cast<size_t>(l)];
            L.attn_norm = vector(p + "attn_norm.weight", E);
            L.wq = matrix(p + "attn_q.weight", {E, H * D});
            L.wk = matrix(p + "attn_k.weight", {E, Hkv * D});
            L.wv = matrix(p + "attn_v.weight", {E, Hkv * D});
            L.wo = matrix(p + "attn_output.weight", {H * D, E});
            L.bq = optional_vector(p + "attn_q.bias", H * D);
            L.bk = optional_vector(p + "attn_k.bias", Hkv * D);
            L.bv = optional_vector(p + "attn_v.bias", Hkv * D);
            L.bo = optional_vector(p + "attn_output.bias", E);
            if (qwen3) {
                L.q_norm = vector(p + "attn_q_norm.weight", D);
                L.k_norm = vector(p + "attn_k_norm.weight", D);
            }
            L.ffn_norm = vector(p + "ffn_norm.weight", E);
            L.w_gate = matrix(p + "ffn_gate.weight", {E, F});
            L.w_up = matrix(p + "ffn_up.weight", {E, F});
            L.w_down = matrix(p + "ffn_down.weight", {F, E});
        }
        // Rotary frequencies as HF computes them (float32): 1 / theta^(2i/n_rot), then linear scaling.
        std::vector<float> inv(static_cast<size_t>(cfg_.n_rot / 2));
        for (int64_t i = 0; i < cfg_.n_rot / 2; ++i) {
            const float e = static_cast<float>(2 * i) / static_cast<float>(cfg_.n_rot);
            inv[static_cast<size_t>(i)] = (1.0f / std::pow(cfg_.rope_theta, e)) * cfg_.rope_freq_scale;
        }
        inv_freq_ = Param::f32("rope.inv_freq", std::move(inv));
    }

    // M-RoPE: which position axis (t = 0, h = 1, w = 2) each rotary pair takes.
    void read_mrope_sections(const GGUFFile& f, const std::string& arch, bool interleaved) {
        const std::string key = arch + ".rope.dimension_sections";
        if (!f.has(key)) f.fail("missing metadata key '" + key + "' (the M-RoPE sections)");
        std::vector<int64_t> s = f.get_int_array(key);
        if (s.size() < 3 || s.size() > 4) f.fail(strprintf("key '%s' has %zu values, expected 3 or 4", key.c_str(), s.size()));
        s.resize(4, 0);
        const int64_t half = cfg_.n_rot / 2;
        for (int64_t v : s)
            if (v < 0 || v > half) f.fail(strprintf("key '%s' holds %lld, outside [0, %lld]", key.c_str(), static_cast<long long>(v), static_cast<long long>(half)));
        if (s[3] != 0)
            throw UnsupportedError(f.path() + ": a fourth M-RoPE section (" + key + "[3] != 0) is not supported");
        if (s[0] + s[1] + s[2] != half)
            f.fail(strprintf("key '%s' = [%lld, %lld, %lld] does not sum to the %lld rotary pairs of a head", key.c_str(),
                             static_cast<long long>(s[0]), static_cast<long long>(s[1]), static_cast<long long>(s[2]),
                             static_cast<long long>(half)));
        std::vector<int32_t> axis(static_cast<size_t>(half), 0);
        for (int64_t p = 0; p < half; ++p) {
            if (interleaved) axis[static_cast<size_t>(p)] = p % 3 == 1 && p < 3 * s[1] ? 1 : p % 3 == 2 && p < 3 * s[2] ? 2 : 0;
            else axis[static_cast<size_t>(p)] = p < s[0] ? 0 : p < s[0] + s[1] ? 1 : 2;
        }
        cfg_.n_pos_axes = 3;
        pair_axis_ = Param::i32("rope.pair_axis", std::move(axis));
    }

    ParamGroups params() override {
        ParamGroups g;
        for (Layer& L : layers_)
            g.layers.push_back({&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv, &L.bo, &L.q_norm,
                                &L.k_norm, &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down});
        g.output = {&out_norm_, &output_};
        g.shared = {&inv_freq_, &pair_axis_};
        return g;
    }

    void forward(const TextBatch& b, KVCache* const* caches, float* logits, Compute& c) override {
        const int64_t n = b.n, E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim;
        const int64_t F = cfg_.n_ff, V = cfg_.n_vocab, A = cfg_.n_pos_axes;
        if (n <= 0) return;
        const int n_layer = static_cast<int>(cfg_.n_layer);
        nn::check_room(b, caches, n_layer);
        if (b.deepstack && b.n_deepstack > n_deepstack_)
            throw InputError(strprintf("the batch carries %d DeepStack feature sets but the model takes %d", b.n_deepstack,
                                       n_deepstack_));
        const bool rowwise = nn::rowwise(b);
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        RopeParams rope;
        rope.style = cfg_.rope_style;
        rope.n_rot = cfg_.n_rot;
        rope.n_axes = static_cast<int>(A);

        // input embeddings (host)
        Tensor x = c.scratch(c.cpu(), kX, GGMLType::F32, n, E);
        if (b.embd) std::copy(b.embd, b.embd + n * E, x.as<float>());
        else embed_tokens(b.tokens, n, x.as<float>());

        runs_.begin(b, caches, n_layer, static_cast<int>(A), nullptr);
        for (int l = 0; l < n_layer; ++l) {
            Backend& be = c.layer(l);
            const KVRows& R = runs_.enter(c, l, x, {kX, kPos, kRows});
            const Tensor& pos = runs_.pos();
            const Layer& L = layers_[static_cast<size_t>(l)];
            Ops ops = c.ops(be);
            Tensor xe = c.scratch(be, kXB, GGMLType::F32, n, E);
            Tensor q = c.scratch(be, kQ, GGMLType::F32, n, H * D);
            Tensor k = c.scratch(be, kK, GGMLType::F32, n, Hkv * D);
            Tensor v = c.scratch(be, kV, GGMLType::F32, n, Hkv * D);
            Tensor att = c.scratch(be, kAtt, GGMLType::F32, n, H * D);
            Tensor gate = c.scratch(be, kGate, GGMLType::F32, n, F);
            Tensor up = c.scratch(be, kUp, GGMLType::F32, n, F);
            // attention
            ops.rms_norm(x, &L.attn_norm, cfg_.rms_eps, xe);
            ops.matmuls(xe, {{&L.wq, &q, &L.bq}, {&L.wk, &k, &L.bk}, {&L.wv, &v, &L.bv}}, rowwise);
            if (L.q_norm) {  // per head, over head_dim
                ops.rms_norm(q.reshape(n * H, D), &L.q_norm, cfg_.rms_eps, q.reshape(n * H, D));
                ops.rms_norm(k.reshape(n * Hkv, D), &L.k_norm, cfg_.rms_eps, k.reshape(n * Hkv, D));
            }
            const Param* pair = pair_axis_ ? &pair_axis_ : nullptr;
            ops.rope(q, H, D, pos, inv_freq_, pair, rope);
            ops.rope(k, Hkv, D, pos, inv_freq_, pair, rope);
            ops.kv_store(k, v, R);  // row t then sees its sequence's entries up to and including its own
            ops.attention_kv(q, H, R, scale, att);
            if (b.stats) b.stats->observe(l, q, R, *caches[0], c);
            ops.matmul(L.wo, att, xe, &L.bo, rowwise);
            ops.add(x, xe);
            // feed-forward (SwiGLU)
            ops.rms_norm(x, &L.ffn_norm, cfg_.rms_eps, xe);
            ops.matmuls(xe, {{&L.w_gate, &gate}, {&L.w_up, &up}}, rowwise);
            ops.glu(gate, up, Activation::SiLU);
            ops.matmul(L.w_down, gate, xe, nullptr, rowwise);
            ops.add(x, xe);
            if (b.deepstack && l < b.n_deepstack) {  // DeepStack: this layer's share of the vision features
                const Tensor ds = c.upload(be, kDeep, b.deepstack + static_cast<size_t>(l) * n * E, GGMLType::F32, n, E);
                ops.add(x, ds);
            }
        }

        nn::output_logits(c, b, x, out_norm_, cfg_.rms_eps, output_, V, logits, rowwise, runs_.backend(),
                          {kX, kXB, kAtt, kWant, kLogits});
    }

private:
    enum Slot { kX, kXB, kQ, kK, kV, kAtt, kGate, kUp, kPos, kRows, kWant, kLogits, kDeep };
    struct Layer {
        Param attn_norm, ffn_norm, bq, bk, bv, bo, q_norm, k_norm;
        Param wq, wk, wv, wo, w_gate, w_up, w_down;
    };

    std::vector<Layer> layers_;
    Param out_norm_, output_, inv_freq_, pair_axis_;
    int n_deepstack_ = 0;
    nn::LayerRuns runs_;
};

}  // namespace

std::unique_ptr<TextModel> make_llama(std::shared_ptr<const GGUFFile> file, const std::string& arch) {
    return std::make_unique<LlamaModel>(std::move(file), arch);
}

}  // namespace aircache
