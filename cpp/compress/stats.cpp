#include "compress/stats.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common.h"
#include "cpu/kernels.h"
#include "fp16.h"
#include "quants.h"

namespace aircache {
namespace compress {

StatsCollector::StatsCollector(ProbeSet probes, const PromptLayout& layout, const ModelShape& shape, int64_t head_dim)
    : probes_(std::move(probes)), layout_(std::make_shared<PromptLayout>(layout)), shape_(shape), head_dim_(head_dim) {
    ProbeShape s;
    s.layout = layout_.get();
    s.shape = shape_;
    s.head_dim = head_dim_;
    for (int l = 0; l < shape_.n_layer; ++l) {
        const int ml = shape_.model_layer(l);
        if (ml >= static_cast<int>(index_.size())) index_.resize(static_cast<size_t>(ml) + 1, -1);
        index_[static_cast<size_t>(ml)] = l;
    }
    first_row_ = layout_->m;
    last_chunk_ = layout_->m;
    for (const auto& p : probes_.list()) {
        p->begin(s);
        first_row_ = std::min(first_row_, p->first_row());
        last_chunk_ = std::min(last_chunk_, p->last_chunk_start());
    }
}

// Keys [0, n) of KV head `h` of `layer` as a contiguous float block [n][D]: F32 host caches are read
// in place, the other types (or a host copy `raw` of a device layer) converted once into `buf`.
static const float* keys_f32(const KVCache& kv, int layer, int h, int64_t n, const uint8_t* raw,
                             std::vector<float>& buf) {
    const int64_t D = kv.config().head_dim;
    const size_t row = kv.k_row_bytes();
    const uint8_t* src = raw ? raw + static_cast<size_t>(h) * kv.allocated(layer) * row : kv.k_row(layer, h, 0);
    if (kv.config().type_k == KVType::F32) return reinterpret_cast<const float*>(src);
    buf.resize(static_cast<size_t>(n * D));
    if (kv.config().type_k == KVType::F16) {
        const uint16_t* s16 = reinterpret_cast<const uint16_t*>(src);
        const cpu::KernelTable& kt = cpu::kernels();
        if (kt.f16_to_f32) {
            kt.f16_to_f32(s16, buf.data(), n * D);  // vectorized, exact (the same floats)
        } else {
            for (int64_t i = 0; i < n * D; ++i) buf[static_cast<size_t>(i)] = f16_to_f32(s16[i]);
        }
    } else {
        const GGMLType t = kv_ggml_type(kv.config().type_k);
        for (int64_t i = 0; i < n; ++i) dequantize_row(t, src + static_cast<size_t>(i) * row, buf.data() + i * D, D);
    }
    return buf.data();
}

void StatsCollector::host_pass(const std::vector<Probe*>& probes, const HostChunk& chunk, int model_layer,
                               const KVCache& kv, const uint8_t* raw, ThreadPool& pool) {
    int64_t n_keys = 0;
    for (Probe* p : probes) n_keys = std::max(n_keys, p->n_keys(chunk));
    // KV groups x parts of a group's query heads: with more threads than KV heads (Qwen2-VL-2B has
    // 2), a group's heads are split so every thread works (each part converts the group's keys)
    const int Hkv = shape_.n_head_kv, G = shape_.n_head / Hkv;
    const int S = std::clamp((pool.size() + Hkv - 1) / Hkv, 1, G);
    pool.parallel_for(static_cast<int64_t>(Hkv) * S, [&](int64_t t0, int64_t t1) {
        thread_local std::vector<float> kbuf;
        for (int64_t t = t0; t < t1; ++t) {
            const int g = static_cast<int>(t / S), part = static_cast<int>(t % S);
            HostChunk c = chunk;
            c.head_from = part * G / S;
            c.head_to = (part + 1) * G / S;
            if (c.head_from == c.head_to) continue;
            const float* K = keys_f32(kv, model_layer, g, n_keys, raw, kbuf);
            for (Probe* p : probes) p->observe(c, g, K);
        }
        trim_scratch(kbuf);
    });
}

void StatsCollector::observe(int layer, const Tensor& q, const KVRows& rows, const KVCache& kv, Compute& c) {
    const int64_t n = q.rows;
    if (n <= 0 || probes_.empty()) return;
    const int pl = layer < static_cast<int>(index_.size()) ? index_[static_cast<size_t>(layer)] : -1;
    if (pl < 0) return;  // a layer the policies do not plan over (a sliding-window layer)
    std::vector<int32_t> r(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) r[static_cast<size_t>(t)] = rows.host[static_cast<size_t>(t)].dst;
    if (r.back() < first_row_) return;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Probe*> todo;
    for (const auto& p : probes_.list())
        if (r.back() >= p->first_row()) todo.push_back(p.get());
    HostChunk hc;
    hc.layer = pl;
    hc.n = n;
    hc.rows = r.data();
    if (on_host(q) && kv.on_host(layer)) {
        hc.q = q.as<const float>();
        host_pass(todo, hc, layer, kv, nullptr, c.pool());
    } else {
        Backend& be = kv.backend(layer);
        DeviceChunk dc;
        dc.layer = pl;
        dc.n = n;
        dc.rows = r.data();
        dc.q = q.as<const float>();
        dc.k = kv.k(layer);
        dc.capacity = kv.allocated(layer);
        dc.f16 = kv.config().type_k == KVType::F16;
        dc.stream = be.native_stream();
        dc.device = be.device_index();
        std::vector<Probe*> rest;
        for (Probe* p : todo)
            if (dc.device < 0 || kv_type_quantized(kv.config().type_k) || !p->observe_device(dc)) rest.push_back(p);
        if (!rest.empty()) {
            // the host halves on host copies of the queries and of this layer's keys
            std::vector<float> hq(static_cast<size_t>(q.numel()));
            Compute::download(q, hq.data());
            int64_t n_keys = 0;
            hc.q = hq.data();
            for (Probe* p : rest) n_keys = std::max(n_keys, p->n_keys(hc));
            const size_t head = static_cast<size_t>(kv.allocated(layer)) * kv.k_row_bytes();
            std::vector<uint8_t> keys(head * static_cast<size_t>(kv.config().n_head_kv));
            const size_t used = static_cast<size_t>(n_keys) * kv.k_row_bytes();
            for (int h = 0; h < kv.config().n_head_kv; ++h)
                be.download(keys.data() + h * head, static_cast<const uint8_t*>(kv.k(layer)) + h * head, used);
            host_pass(rest, hc, layer, kv, keys.data(), c.pool());
        }
    }
    ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace compress
}  // namespace aircache
