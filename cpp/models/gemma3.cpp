// models/gemma3.cpp — the Gemma 3 decoder (`gemma3`), as HF's Gemma3TextModel computes it:
//   token embeddings scaled by sqrt(n_embd) (image embeddings are not: they are placed after the
//   scaling); per layer x += post_attention_norm(Attn(attn_norm(x))), x += post_ffw_norm(
//   GeGLU_tanh(ffn_norm(x))); q/k RMSNorm per head before RoPE (NeoX pairs); final RMSNorm; the tied
//   output. Every norm weight is stored as 1 + w by the converter, so the norms are plain RMSNorms.
// Layers: 1 in `attention.sliding_window_pattern` (default 6, not in the file: llama.cpp's rule) is
// global — layer l is global when l % pattern == pattern - 1 — with rope.freq_base and the linear
// rope scaling; the others keep the last `attention.sliding_window` positions and use
// rope.freq_base_swa (default 10000) without scaling. The query scale is 1/sqrt(head_dim) (HF's
// query_pre_attn_scalar; llama.cpp's exception: 1/sqrt(n_embd / n_head) for the 62-layer 27B).
// Image rows attend to each other both ways (the media item is bidirectional; HF's token_type_ids).
#include <cmath>
#include <memory>

#include "common.h"
#include "nn/attention.h"
#include "nn/decoder.h"
#include "text_model.h"

namespace aircache {

namespace {

class Gemma3Model final : public TextModel {
public:
    Gemma3Model(std::shared_ptr<const GGUFFile> file, const std::string& arch) : TextModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_ = read_llama_like_config(f, arch);
        cfg_.rope_style = RopeStyle::Neox;
        const int64_t E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim, F = cfg_.n_ff;
        const std::string a = arch + ".";
        if (f.has(a + "final_logit_softcapping"))
            throw UnsupportedError(f.path() + ": " + a + "final_logit_softcapping is not supported");
        if (f.has(a + "attn_logit_softcapping"))
            throw UnsupportedError(f.path() + ": " + a + "attn_logit_softcapping is not supported");
        window_ = f.get_u32(a + "attention.sliding_window");  // required, as llama.cpp reads it
        if (window_ < 1 || window_ > (int64_t{1} << 24))
            f.fail(strprintf("key '%sattention.sliding_window' is %lld, outside [1, 16777216]", a.c_str(),
                             static_cast<long long>(window_)));
        pattern_ = f.get_u32(a + "attention.sliding_window_pattern", 6);
        if (pattern_ < 1 || pattern_ > 1024)
            f.fail(strprintf("key '%sattention.sliding_window_pattern' is %lld, outside [1, 1024]", a.c_str(),
                             static_cast<long long>(pattern_)));
        const float base_swa = f.get_f32(a + "rope.freq_base_swa", 10000.0f);
        if (!(base_swa > 1.0f && std::isfinite(base_swa)))
            f.fail(strprintf("key '%srope.freq_base_swa' is %g (must be finite and > 1)", a.c_str(), base_swa));
        cfg_.sliding_window = window_;
        for (int64_t l = 0; l < cfg_.n_layer; ++l) cfg_.layer_window.push_back(is_global(l) ? 0 : window_);
        // HF's query_pre_attn_scalar is not in the file: 1/sqrt(head_dim), or llama.cpp's 27B exception
        const float scale = cfg_.n_layer == 62 ? 1.0f / std::sqrt(static_cast<float>(E / H))
                                               : 1.0f / std::sqrt(static_cast<float>(D));
        q_mul_ = scale * std::sqrt(static_cast<float>(D));  // the queries pre-scaled; attention divides by sqrt(D)
        embd_scale_ = std::sqrt(static_cast<float>(E));

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
            L.q_norm = vector(p + "attn_q_norm.weight", D);
            L.k_norm = vector(p + "attn_k_norm.weight", D);
            L.post_attn_norm = vector(p + "post_attention_norm.weight", E);
            L.ffn_norm = vector(p + "ffn_norm.weight", E);
            L.w_gate = matrix(p + "ffn_gate.weight", {E, F});
            L.w_up = matrix(p + "ffn_up.weight", {E, F});
            L.w_down = matrix(p + "ffn_down.weight", {F, E});
            L.post_ffw_norm = vector(p + "post_ffw_norm.weight", E);
        }
        // two rotary tables (HF's float32): global layers theta with the linear scale, local ones theta_swa
        std::vector<float> g(static_cast<size_t>(cfg_.n_rot / 2)), s(g.size());
        for (int64_t i = 0; i < cfg_.n_rot / 2; ++i) {
            const float e = static_cast<float>(2 * i) / static_cast<float>(cfg_.n_rot);
            g[static_cast<size_t>(i)] = (1.0f / std::pow(cfg_.rope_theta, e)) * cfg_.rope_freq_scale;
            s[static_cast<size_t>(i)] = 1.0f / std::pow(base_swa, e);
        }
        inv_global_ = Param::f32("rope.inv_freq", std::move(g));
        inv_local_ = Param::f32("rope.inv_freq_swa", std::move(s));
    }

    ParamGroups params() override {
        ParamGroups g;
        for (Layer& L : layers_)
            g.layers.push_back({&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.q_norm, &L.k_norm, &L.post_attn_norm,
                                &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down, &L.post_ffw_norm});
        g.output = {&out_norm_, &output_};
        g.shared = {&inv_global_, &inv_local_};
        return g;
    }

    void forward(const TextBatch& b, KVCache* const* caches, float* logits, Compute& c) override {
        const int64_t n = b.n, E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim;
        const int64_t F = cfg_.n_ff, V = cfg_.n_vocab;
        if (n <= 0) return;
        const int n_layer = static_cast<int>(cfg_.n_layer);
        nn::check_room(b, caches, n_layer);
        const bool rowwise = nn::rowwise(b);
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        RopeParams rope;
        rope.style = RopeStyle::Neox;
        rope.n_rot = cfg_.n_rot;
        rope.n_axes = 1;

        Tensor x = c.scratch(c.cpu(), kX, GGMLType::F32, n, E);
        if (b.embd) std::copy(b.embd, b.embd + n * E, x.as<float>());
        else embed_tokens(b.tokens, n, x.as<float>());  // scaled by sqrt(n_embd)

        runs_.begin(b, caches, n_layer, 1, [this](int l) { return is_global(l) ? int64_t{0} : window_; });
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
            ops.rms_norm(x, &L.attn_norm, cfg_.rms_eps, xe);
            ops.matmuls(xe, {{&L.wq, &q}, {&L.wk, &k}, {&L.wv, &v}}, rowwise);
            ops.rms_norm(q.reshape(n * H, D), &L.q_norm, cfg_.rms_eps, q.reshape(n * H, D));
            ops.rms_norm(k.reshape(n * Hkv, D), &L.k_norm, cfg_.rms_eps, k.reshape(n * Hkv, D));
            const Param& inv = is_global(l) ? inv_global_ : inv_local_;
            ops.rope(q, H, D, pos, inv, nullptr, rope);
            ops.rope(k, Hkv, D, pos, inv, nullptr, rope);
            if (q_mul_ != 1.0f) ops.scale(q, q_mul_);
            ops.kv_store(k, v, R);
            ops.attention_kv(q, H, R, scale, att);
            if (b.stats) b.stats->observe(l, q, R, *caches[0], c);
            ops.matmul(L.wo, att, xe, nullptr, rowwise);
            ops.rms_norm(xe, &L.post_attn_norm, cfg_.rms_eps, xe);
            ops.add(x, xe);
            ops.rms_norm(x, &L.ffn_norm, cfg_.rms_eps, xe);
            ops.matmuls(xe, {{&L.w_gate, &gate}, {&L.w_up, &up}}, rowwise);
            ops.glu(gate, up, Activation::GELUTanh);
            ops.matmul(L.w_down, gate, xe, nullptr, rowwise);
            ops.rms_norm(xe, &L.post_ffw_norm, cfg_.rms_eps, xe);
            ops.add(x, xe);
        }

        nn::output_logits(c, b, x, out_norm_, cfg_.rms_eps, output_, V, logits, rowwise, runs_.backend(),
                          {kX, kXB, kAtt, kWant, kLogits});
    }

private:
    enum Slot { kX, kXB, kQ, kK, kV, kAtt, kGate, kUp, kPos, kRows, kWant, kLogits };
    struct Layer {
        Param attn_norm, post_attn_norm, ffn_norm, post_ffw_norm, q_norm, k_norm;
        Param wq, wk, wv, wo, w_gate, w_up, w_down;
    };
    bool is_global(int64_t l) const { return l % pattern_ == pattern_ - 1; }

    std::vector<Layer> layers_;
    Param out_norm_, output_, inv_global_, inv_local_;
    int64_t window_ = 0, pattern_ = 6;
    float q_mul_ = 1.0f;
    nn::LayerRuns runs_;
};

}  // namespace

std::unique_ptr<TextModel> make_gemma3(std::shared_ptr<const GGUFFile> file, const std::string& arch) {
    return std::make_unique<Gemma3Model>(std::move(file), arch);
}

}  // namespace aircache
