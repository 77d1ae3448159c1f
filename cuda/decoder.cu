// decoder.cu — the LLaMA decoder on a CUDA device (models/llama.cpp's forward, layer for layer).
//
// Weights are uploaded once, in their GGUF types. A forward uploads the batch's embeddings,
// positions and one table of RowKV entries (per offloaded layer and row: the row's cache layer,
// the keys it sees, where its K/V go), runs every offloaded layer on one stream, and hands back
// either the wanted rows' logits (everything offloaded) or the hidden states for the host layers.
// The importance pass reads the device queries and cache (StatsCollector::observe_device).
#include <algorithm>

#include "compress/stats.h"
#include "cuda_api.h"
#include "gpu_model.h"
#include "ops.cuh"

namespace aircache {
namespace gpu {

namespace {

using cuda::DeviceBuffer;
using cuda::DeviceWeight;
using cuda::Exec;
using cuda::RowKV;

class CudaDecoder final : public Decoder {
public:
    CudaDecoder(const DecoderWeights& w, int n_layers, int device)
        : cfg_(w.cfg), n_layers_(n_layers), device_(device), ex_(device) {
        cuda::DeviceGuard g(device);
        if (cfg_.head_dim > cuda::kMaxHeadDim)
            throw UnsupportedError(strprintf("the CUDA backend supports head dimensions up to %d (this model: %lld)",
                                             cuda::kMaxHeadDim, static_cast<long long>(cfg_.head_dim)));
        inv_freq_ = vec(w.inv_freq, cfg_.n_rot / 2);
        for (int l = 0; l < n_layers_; ++l) {
            const DecoderWeights::Layer& s = w.layers[static_cast<size_t>(l)];
            Layer L;
            L.attn_norm = vec(s.attn_norm, cfg_.n_embd);
            L.ffn_norm = vec(s.ffn_norm, cfg_.n_embd);
            L.bq = vec(s.bq, cfg_.n_head * cfg_.head_dim);
            L.bk = vec(s.bk, cfg_.n_head_kv * cfg_.head_dim);
            L.bv = vec(s.bv, cfg_.n_head_kv * cfg_.head_dim);
            L.bo = vec(s.bo, cfg_.n_embd);
            L.wq = weight(s.wq);
            L.wk = weight(s.wk);
            L.wv = weight(s.wv);
            L.wo = weight(s.wo);
            L.w_gate = weight(s.w_gate);
            L.w_up = weight(s.w_up);
            L.w_down = weight(s.w_down);
            layers_.push_back(std::move(L));
        }
        if (n_layers_ == static_cast<int>(cfg_.n_layer)) {
            out_norm_ = vec(w.out_norm, cfg_.n_embd);
            output_ = weight(w.output);
        }
        ex_.sync();
    }

    int n_layers() const override { return n_layers_; }
    bool has_output() const override { return output_.data != nullptr; }
    size_t weight_bytes() const override { return weight_bytes_; }

    void forward(const TextBatch& b, KVCache* const* caches, float* x, float* logits) override {
        const int64_t n = b.n, E = cfg_.n_embd, H = cfg_.n_head, Hkv = cfg_.n_head_kv, D = cfg_.head_dim;
        const int64_t F = cfg_.n_ff, V = cfg_.n_vocab, QD = H * D, KD = Hkv * D;
        if (n <= 0) return;
        cuda::DeviceGuard g(device_);
        scratch(n);
        auto seq_of = [&](int64_t t) { return b.seq ? b.seq[t] : 0; };
        const KVCacheConfig& c0 = caches[0]->config();
        const bool f16 = c0.type == KVType::F16;

        // every offloaded layer of every sequence must have room before anything is reserved
        for (int64_t t0 = 0; t0 < n;) {
            int64_t t1 = t0 + 1;
            while (t1 < n && seq_of(t1) == seq_of(t0)) ++t1;
            const KVCache& kv = *caches[seq_of(t0)];
            for (int l = 0; l < n_layers_; ++l)
                if (kv.length(l) + (t1 - t0) > kv.capacity())
                    throw InputError(strprintf("KV cache full: layer %d holds %lld positions, %lld more do not fit in "
                                               "its capacity of %lld (n_ctx)", l, static_cast<long long>(kv.length(l)),
                                               static_cast<long long>(t1 - t0),
                                               static_cast<long long>(kv.capacity())));
            t0 = t1;
        }
        // the row table: per offloaded layer, each row's cache layer, visible keys and slot
        rows_.resize(static_cast<size_t>(n_layers_ * n));
        for (int l = 0; l < n_layers_; ++l) {
            for (int64_t t0 = 0; t0 < n;) {
                int64_t t1 = t0 + 1;
                while (t1 < n && seq_of(t1) == seq_of(t0)) ++t1;
                KVCache& kv = *caches[seq_of(t0)];
                if (!kv.on_device(l) || kv.config().device != device_ || kv.config().type != c0.type)
                    throw Error(strprintf("internal: layer %d of a KV cache is not on cuda:%d", l, device_));
                const int64_t base = kv.reserve(l, t1 - t0);
                for (int64_t t = t0; t < t1; ++t) {
                    RowKV& r = rows_[static_cast<size_t>(l * n + t)];
                    r.k = kv.device_k(l);
                    r.v = kv.device_v(l);
                    r.dst = static_cast<int32_t>(base + (t - t0));
                    r.len = r.dst + 1;
                }
                t0 = t1;
            }
        }
        ex_.upload(d_rows_.get(), rows_.data(), sizeof(RowKV) * rows_.size());
        ex_.upload(d_pos_.get(), b.pos, sizeof(int32_t) * static_cast<size_t>(n));
        ex_.upload(d_x_.get(), x, sizeof(float) * static_cast<size_t>(n * E));

        float *dx = d_x_.as<float>(), *xb = d_xb_.as<float>(), *q = d_q_.as<float>(), *k = d_k_.as<float>();
        float *v = d_v_.as<float>(), *att = d_att_.as<float>(), *gate = d_gate_.as<float>(), *up = d_up_.as<float>();
        const int32_t* pos = d_pos_.as<int32_t>();
        const float* inv_freq = inv_freq_.as<float>();
        for (int l = 0; l < n_layers_; ++l) {
            const Layer& L = layers_[static_cast<size_t>(l)];
            const RowKV* rows = d_rows_.as<RowKV>() + static_cast<size_t>(l) * n;
            cuda::rmsnorm(ex_, dx, L.attn_norm.as<float>(), n, E, cfg_.rms_eps, xb);
            cuda::matmul(ex_, L.wq, xb, n, q, L.bq.as<float>());
            cuda::matmul(ex_, L.wk, xb, n, k, L.bk.as<float>());
            cuda::matmul(ex_, L.wv, xb, n, v, L.bv.as<float>());
            const bool neox = cfg_.rope_style == cpu::RopeStyle::Neox;
            cuda::rope(ex_, q, n, H, D, cfg_.n_rot, pos, inv_freq, neox);
            cuda::rope(ex_, k, n, Hkv, D, cfg_.n_rot, pos, inv_freq, neox);
            cuda::kv_store(ex_, k, v, n, static_cast<int>(Hkv), static_cast<int>(D), rows, c0.capacity, f16);
            cuda::attention_cache(ex_, q, n, static_cast<int>(H), static_cast<int>(Hkv), static_cast<int>(D), rows,
                                  c0.capacity, f16, att);
            if (b.stats) b.stats->observe_device(l, q, b.pos, n, *caches[0], ex_.stream());
            cuda::matmul(ex_, L.wo, att, n, xb, L.bo.as<float>());
            cuda::add(ex_, dx, xb, n * E);
            cuda::rmsnorm(ex_, dx, L.ffn_norm.as<float>(), n, E, cfg_.rms_eps, xb);
            cuda::matmul(ex_, L.w_gate, xb, n, gate, nullptr);
            cuda::matmul(ex_, L.w_up, xb, n, up, nullptr);
            cuda::silu_mul(ex_, gate, up, n * F);
            cuda::matmul(ex_, L.w_down, gate, n, xb, nullptr);
            cuda::add(ex_, dx, xb, n * E);
        }
        (void)QD;
        (void)KD;

        if (!has_output()) {
            ex_.download(x, dx, sizeof(float) * static_cast<size_t>(n * E));
            return;
        }
        // logits of the wanted rows
        std::vector<int32_t> want;
        for (int64_t t = 0; t < n; ++t)
            if (!b.want_logits || b.want_logits[t]) want.push_back(static_cast<int32_t>(t));
        if (want.empty()) {
            ex_.sync();
            return;
        }
        const int64_t n_out = static_cast<int64_t>(want.size());
        ex_.upload(d_want_.get(), want.data(), sizeof(int32_t) * want.size());
        cuda::gather_rows(ex_, dx, d_want_.as<int32_t>(), n_out, E, xb);
        cuda::rmsnorm(ex_, xb, out_norm_.as<float>(), n_out, E, cfg_.rms_eps, att);
        d_logits_.reserve(sizeof(float) * static_cast<size_t>(n_out * V));
        cuda::matmul(ex_, output_, att, n_out, d_logits_.as<float>(), nullptr);
        ex_.download(logits, d_logits_.get(), sizeof(float) * static_cast<size_t>(n_out * V));
    }

private:
    struct Layer {
        DeviceBuffer attn_norm, ffn_norm, bq, bk, bv, bo;
        DeviceWeight wq, wk, wv, wo, w_gate, w_up, w_down;
    };

    DeviceBuffer vec(const float* p, int64_t n) {
        if (!p || n <= 0) return DeviceBuffer();
        weight_bytes_ += sizeof(float) * static_cast<size_t>(n);
        return cuda::upload_buffer(ex_, p, sizeof(float) * static_cast<size_t>(n));
    }

    DeviceWeight weight(const Weight& w) {
        // a tied output projection is the token embedding: upload it once
        for (size_t i = 0; i < host_ptrs_.size(); ++i)
            if (host_ptrs_[i] == w.data) return uploaded_[i];
        DeviceWeight d;
        d.type = w.type;
        d.n_rows = w.n_rows;
        d.n_cols = w.n_cols;
        d.row_bytes = w.row_bytes;
        const size_t bytes = w.row_bytes * static_cast<size_t>(w.n_rows);
        owned_.push_back(cuda::upload_buffer(ex_, w.data, bytes));
        d.data = owned_.back().as<uint8_t>();
        weight_bytes_ += bytes;
        host_ptrs_.push_back(w.data);
        uploaded_.push_back(d);
        return d;
    }

    void scratch(int64_t n) {
        if (n <= rows_cap_) return;
        const int64_t E = cfg_.n_embd, QD = cfg_.n_head * cfg_.head_dim, KD = cfg_.n_head_kv * cfg_.head_dim;
        auto f = [](int64_t k) { return sizeof(float) * static_cast<size_t>(k); };
        d_x_.reserve(f(n * E));
        d_xb_.reserve(f(n * std::max(E, QD)));
        d_q_.reserve(f(n * QD));
        d_k_.reserve(f(n * KD));
        d_v_.reserve(f(n * KD));
        d_att_.reserve(f(n * std::max(E, QD)));
        d_gate_.reserve(f(n * cfg_.n_ff));
        d_up_.reserve(f(n * cfg_.n_ff));
        d_pos_.reserve(sizeof(int32_t) * static_cast<size_t>(n));
        d_want_.reserve(sizeof(int32_t) * static_cast<size_t>(n));
        d_rows_.reserve(sizeof(RowKV) * static_cast<size_t>(n * std::max(n_layers_, 1)));
        rows_cap_ = n;
    }

    TextConfig cfg_;
    int n_layers_;
    int device_;
    Exec ex_;
    size_t weight_bytes_ = 0;
    std::vector<DeviceBuffer> owned_;
    std::vector<const uint8_t*> host_ptrs_;
    std::vector<DeviceWeight> uploaded_;
    std::vector<Layer> layers_;
    DeviceBuffer inv_freq_, out_norm_;
    DeviceWeight output_;
    int64_t rows_cap_ = 0;
    DeviceBuffer d_x_, d_xb_, d_q_, d_k_, d_v_, d_att_, d_gate_, d_up_, d_pos_, d_want_, d_rows_, d_logits_;
    std::vector<RowKV> rows_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const DecoderWeights& w, int n_layers, int device) {
    if (n_layers <= 0 || n_layers > static_cast<int>(w.layers.size()))
        throw InputError(strprintf("cannot offload %d of %zu layers", n_layers, w.layers.size()));
    return std::make_unique<CudaDecoder>(w, n_layers, device);
}

}  // namespace gpu
}  // namespace aircache
