// compress/stats.h — the importance pass: runs the probes a compression asked for (probe.h) on
// every layer's prefill chunk, on the layer's backend.
//
// The model calls observe() after each layer's attention with the chunk's post-RoPE queries and
// the rows table that wrote its keys. Where the layer ran on a CUDA device, each probe's device
// half runs there; a probe without one (or any other device) gets the queries and keys copied to
// the host for its host half. Host halves run per KV head in parallel, the keys converted to float
// once per head. The elite pass needs its window in the chunk that holds the last prompt row
// (last_chunk_start(): the feeder arranges the chunks so).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/compute.h"
#include "compress/probe.h"
#include "kv_cache.h"

namespace aircache {
namespace compress {

class StatsCollector {
public:
    StatsCollector(ProbeSet probes, const PromptLayout& layout, const ModelShape& shape, int64_t head_dim);

    // The first prompt row any probe reads (rows before it need nothing).
    int64_t first_row() const { return first_row_; }
    // Rows [x, m) must be in the last chunk (m when no probe needs it).
    int64_t last_chunk_start() const { return last_chunk_; }

    // `layer`: the model's layer (a layer the shape does not list is not observed). q: [n][n_head *
    // head_dim] post-RoPE queries of a chunk, on the layer's backend; rows.host[t].dst:
    // each query's prompt row (a fresh prefill: cache index = prompt row); kv: the sequence's cache,
    // this layer's keys written up to the chunk's last row.
    void observe(int layer, const Tensor& q, const KVRows& rows, const KVCache& kv, Compute& c);

    const ProbeSet& probes() const { return probes_; }
    const PromptLayout& layout() const { return *layout_; }
    double elapsed_ms() const { return ms_; }

private:
    void host_pass(const std::vector<Probe*>& probes, const HostChunk& chunk, int model_layer, const KVCache& kv,
                   const uint8_t* keys_override, ThreadPool& pool);

    ProbeSet probes_;
    std::shared_ptr<const PromptLayout> layout_;
    ModelShape shape_;
    int64_t head_dim_;
    std::vector<int> index_;  // model layer -> the shape's layer (-1: not observed)
    int64_t first_row_, last_chunk_;
    double ms_ = 0.0;
};

}  // namespace compress
}  // namespace aircache
