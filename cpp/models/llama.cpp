// models/llama.cpp — the LLaMA decoder (LLaVA's language model): pre-norm blocks of RMSNorm ->
// GQA attention with RoPE -> residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; output
// projection (or the tied token embedding).
//
// GGUF conventions (../shared/FORMATS.md §3): Q/K rows are stored in llama.cpp's interleaved order
// (the converter permuted HF's rotate-half rows), so RoPE rotates adjacent pairs.
#include <algorithm>
#include <cmath>
#include <memory>

#include "common.h"
#include "gpu_model.h"
#include "text_model.h"

namespace aircache {

namespace {

class LlamaModel final : public TextModel {
public:
    LlamaModel(std::shared_ptr<const GGUFFile> file, const std::string& arch) : TextModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_ = read_llama_like_config(f, arch);
        cfg_.rope_style = cpu::RopeStyle::Norm;
        const int64_t E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim, F = cfg_.n_ff;
        tok_embd_ = weight("token_embd.weight", {E, cfg_.n_vocab});
        out_norm_ = vector("output_norm.weight", E);
        output_ = optional_weight("output.weight", {E, cfg_.n_vocab});
        cfg_.tied_output = !output_;
        if (!output_) output_ = tok_embd_;
        layers_.resize(static_cast<size_t>(cfg_.n_layer));
        for (int64_t l = 0; l < cfg_.n_layer; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".";
            Layer& L = layers_[static_cast<size_t>(l)];
            L.attn_norm = vector(p + "attn_norm.weight", E);
            L.wq = weight(p + "attn_q.weight", {E, H * D});
            L.wk = weight(p + "attn_k.weight", {E, Hkv * D});
            L.wv = weight(p + "attn_v.weight", {E, Hkv * D});
            L.wo = weight(p + "attn_output.weight", {H * D, E});
            L.bq = optional_vector(p + "attn_q.bias", H * D);
            L.bk = optional_vector(p + "attn_k.bias", Hkv * D);
            L.bv = optional_vector(p + "attn_v.bias", Hkv * D);
            L.bo = optional_vector(p + "attn_output.bias", E);
            L.ffn_norm = vector(p + "ffn_norm.weight", E);
            L.w_gate = weight(p + "ffn_gate.weight", {E, F});
            L.w_up = weight(p + "ffn_up.weight", {E, F});
            L.w_down = weight(p + "ffn_down.weight", {F, E});
        }
        // Rotary frequencies as HF computes them (float32): 1 / theta^(2i/n_rot), then linear scaling.
        inv_freq_.resize(static_cast<size_t>(cfg_.n_rot / 2));
        for (int64_t i = 0; i < cfg_.n_rot / 2; ++i) {
            const float e = static_cast<float>(2 * i) / static_cast<float>(cfg_.n_rot);
            inv_freq_[static_cast<size_t>(i)] = (1.0f / std::pow(cfg_.rope_theta, e)) * cfg_.rope_freq_scale;
        }
    }

    void offload(int n_layers, int device) override {
        gpu_.reset();
        n_device_layers_ = 0;
        device_weight_bytes_ = 0;
        device_ = device;
        if (n_layers <= 0) return;
        gpu::DecoderWeights w;
        w.cfg = cfg_;
        w.inv_freq = inv_freq_.data();
        for (const Layer& L : layers_) {
            gpu::DecoderWeights::Layer g;
            g.attn_norm = L.attn_norm.data();
            g.ffn_norm = L.ffn_norm.data();
            g.bq = bias(L.bq);
            g.bk = bias(L.bk);
            g.bv = bias(L.bv);
            g.bo = bias(L.bo);
            g.wq = L.wq;
            g.wk = L.wk;
            g.wv = L.wv;
            g.wo = L.wo;
            g.w_gate = L.w_gate;
            g.w_up = L.w_up;
            g.w_down = L.w_down;
            w.layers.push_back(g);
        }
        w.out_norm = out_norm_.data();
        w.output = output_;
        const int n = static_cast<int>(std::min<int64_t>(n_layers, cfg_.n_layer));
        gpu_ = gpu::make_decoder(w, n, device);
        n_device_layers_ = n;
        device_weight_bytes_ = gpu_->weight_bytes();
    }

    using TextModel::forward;
    void forward(const TextBatch& b, KVCache* const* caches, float* logits, ThreadPool& pool) override {
        const int64_t n = b.n, E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim;
        const int64_t F = cfg_.n_ff, V = cfg_.n_vocab;
        if (n <= 0) return;
        scratch(n);
        float *x = x_.data(), *xb = xb_.data(), *q = q_.data(), *k = k_.data(), *v = v_.data();
        float *att = att_.data(), *gate = gate_.data(), *up = up_.data();

        // input embeddings
        if (b.embd) std::copy(b.embd, b.embd + n * E, x);
        else embed_tokens(b.tokens, n, x);
        auto seq_of = [&](int64_t t) { return b.seq ? b.seq[t] : 0; };
        // a decode batch (one row per sequence): every row computed as it would be alone
        bool rowwise = b.seq != nullptr && n > 1;
        for (int64_t t = 1; t < n && rowwise; ++t) rowwise = b.seq[t] != b.seq[t - 1];
        kv_len_.resize(static_cast<size_t>(n));

        // the layers on the GPU (all of them, and the output, when fully offloaded)
        int64_t first_host_layer = 0;
        if (gpu_) {
            gpu_->forward(b, caches, x, logits);
            if (gpu_->has_output()) return;
            first_host_layer = gpu_->n_layers();
        }

        for (int64_t l = first_host_layer; l < cfg_.n_layer; ++l) {
            const Layer& L = layers_[static_cast<size_t>(l)];
            const int li = static_cast<int>(l);
            // attention
            cpu::rmsnorm(x, L.attn_norm.data(), n, E, cfg_.rms_eps, xb, pool);
            cpu::matmul(L.wq, xb, n, q, pool, bias(L.bq), rowwise);
            cpu::matmul(L.wk, xb, n, k, pool, bias(L.bk), rowwise);
            cpu::matmul(L.wv, xb, n, v, pool, bias(L.bv), rowwise);
            cpu::rope(q, n, H, D, cfg_.n_rot, b.pos, inv_freq_.data(), cfg_.rope_style, pool);
            cpu::rope(k, n, Hkv, D, cfg_.n_rot, b.pos, inv_freq_.data(), cfg_.rope_style, pool);
            // append each row's K/V to its sequence's cache (rows of a sequence are in order): row t
            // then sees its sequence's entries up to and including its own
            for (int64_t t0 = 0; t0 < n;) {
                int64_t t1 = t0 + 1;
                while (t1 < n && seq_of(t1) == seq_of(t0)) ++t1;
                KVCache& kv = *caches[seq_of(t0)];
                const int64_t base = kv.length(li);
                kv.append(li, k + t0 * Hkv * D, v + t0 * Hkv * D, t1 - t0);
                for (int64_t t = t0; t < t1; ++t) kv_len_[static_cast<size_t>(t)] = base + (t - t0) + 1;
                t0 = t1;
            }
            cpu::attention(q, n, H, caches, b.seq, kv_len_.data(), li, att, pool);
            if (b.stats) b.stats->observe(li, q, b.pos, n, *caches[0], pool);
            cpu::matmul(L.wo, att, n, xb, pool, bias(L.bo), rowwise);
            cpu::add(x, xb, n * E);
            // feed-forward (SwiGLU)
            cpu::rmsnorm(x, L.ffn_norm.data(), n, E, cfg_.rms_eps, xb, pool);
            cpu::matmul(L.w_gate, xb, n, gate, pool, nullptr, rowwise);
            cpu::matmul(L.w_up, xb, n, up, pool, nullptr, rowwise);
            cpu::silu_mul(gate, up, n * F, pool);
            cpu::matmul(L.w_down, gate, n, xb, pool, nullptr, rowwise);
            cpu::add(x, xb, n * E);
        }

        // logits of the wanted rows
        int64_t n_out = 0;
        for (int64_t t = 0; t < n; ++t) {
            if (b.want_logits && !b.want_logits[t]) continue;
            if (n_out != t) std::copy(x + t * E, x + (t + 1) * E, x + n_out * E);
            ++n_out;
        }
        if (n_out == 0) return;
        cpu::rmsnorm(x, out_norm_.data(), n_out, E, cfg_.rms_eps, xb, pool);
        cpu::matmul(output_, xb, n_out, logits, pool, nullptr, rowwise);
        (void)V;
    }

private:
    struct Layer {
        std::vector<float> attn_norm, ffn_norm, bq, bk, bv, bo;
        Weight wq, wk, wv, wo, w_gate, w_up, w_down;
    };

    static const float* bias(const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); }

    // Activations for n rows, allocated once for the largest batch seen (no allocation per token).
    void scratch(int64_t n) {
        if (n <= scratch_rows_) return;
        const int64_t E = cfg_.n_embd, QD = cfg_.n_head * cfg_.head_dim, KD = cfg_.n_head_kv * cfg_.head_dim;
        x_.resize(static_cast<size_t>(n * E));
        xb_.resize(static_cast<size_t>(n * std::max(E, QD)));
        q_.resize(static_cast<size_t>(n * QD));
        k_.resize(static_cast<size_t>(n * KD));
        v_.resize(static_cast<size_t>(n * KD));
        att_.resize(static_cast<size_t>(n * QD));
        gate_.resize(static_cast<size_t>(n * cfg_.n_ff));
        up_.resize(static_cast<size_t>(n * cfg_.n_ff));
        scratch_rows_ = n;
    }

    std::vector<Layer> layers_;
    std::vector<float> out_norm_;
    Weight output_;
    std::vector<float> inv_freq_;
    int64_t scratch_rows_ = 0;
    std::vector<float> x_, xb_, q_, k_, v_, att_, gate_, up_;
    std::vector<int64_t> kv_len_;
    std::unique_ptr<gpu::Decoder> gpu_;
};

}  // namespace

std::unique_ptr<TextModel> make_llama(std::shared_ptr<const GGUFFile> file, const std::string& arch) {
    return std::make_unique<LlamaModel>(std::move(file), arch);
}

}  // namespace aircache
