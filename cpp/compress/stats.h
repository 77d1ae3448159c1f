// compress/stats.h — the importance pass: the statistics policies ask for, computed during prefill
// from each layer's post-RoPE Q (the chunk's rows) and K (the cache), one chunk at a time.
//
// The model calls observe() after each layer's attention for every prefill chunk. For the rows the
// request covers, it recomputes the attention logits s_qj = q·k_j/sqrt(d) over the causal keys and
// reduces them at once into per-head vectors (column sums of softmax rows, density counts, the
// AirCache elite-window importance): no m x m matrix is ever held. Work is split by KV head (each
// converts its keys once and serves the query heads of its group), so accumulation needs no locks. The AirCache pass needs the rows of its window in the chunk that
// holds the last prompt row (Engine::feed arranges the chunks so).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "compress/policy.h"
#include "kv_cache.h"
#include "threadpool.h"

namespace aircache {
namespace compress {

class StatsCollector {
public:
    StatsCollector(const StatsRequest& req, const PromptLayout& layout, const ModelShape& shape, int64_t head_dim);

    // The first prompt row any statistic reads (rows before it need nothing).
    int64_t first_row() const { return first_row_; }
    // Rows [first, m) must be in the last chunk for the elite pass (m when not needed).
    int64_t last_chunk_start() const { return req_.elite ? elite_first_ : layout_.m; }

    // q: [n][n_head][head_dim] post-RoPE queries of prompt positions pos[0..n); the cache holds this
    // layer's keys of every position up to pos[n-1] (a fresh prefill: cache index = position).
    void observe(int layer, const float* q, const int32_t* pos, int64_t n, const KVCache& kv, ThreadPool& pool);
    // The same from device-resident queries (d_q, on the cache's device) over a device layer of the
    // cache, computed there by the CUDA kernels of cuda/stats.cu (pos stays a host array); `stream`
    // is the cudaStream_t the forward runs on.
    void observe_device(int layer, const float* d_q, const int32_t* pos, int64_t n, const KVCache& kv, void* stream);

    const std::vector<LayerStats>& stats() const { return stats_; }
    double elapsed_ms() const { return ms_; }

private:
    // K: this head's KV-group keys [0, ...) as floats (converted once per KV head)
    void rows(int layer, int head, const float* q, const int32_t* pos, int64_t n, const float* K);
    void elite(int layer, int head, const float* q, int32_t pos0, const float* K);

    StatsRequest req_;
    PromptLayout layout_;
    ModelShape shape_;
    int64_t head_dim_;
    int64_t first_row_;
    int64_t elite_first_;
    std::vector<LayerStats> stats_;
    double ms_ = 0.0;
    std::shared_ptr<void> device_;  // device buffers of observe_device (cuda/stats.cu)
};

}  // namespace compress
}  // namespace aircache
