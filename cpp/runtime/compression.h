// runtime/compression.h — the compression runner: prefill with the probes a policy asked for, plan,
// compact the cache, report.
//
//   check_compression(e, params);                                        // before any work
//   CompressionReport r = prefill_compressed(e, prompt, n, params, kv, logits, false);
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compress/policy.h"
#include "compress/stats.h"
#include "kv_cache.h"
#include "runtime/prompt.h"

namespace aircache {

class Engine;
struct Prompt;

// What KV compression did to one prompt (docs/compression.md, "Reported per request and layer").
struct CompressionReport {
    compress::CompressParams params;
    int64_t n_prompt = 0, n_visual = 0;
    bool compacted = false;                                      // false: the cache was left as is
    std::vector<std::vector<int32_t>> kept;                      // [layer] kept prompt rows (indices)
    std::vector<std::vector<std::vector<int32_t>>> kept_heads;   // [layer][kv head] (kv_head mode)
    // The positions (what RoPE saw) of the kept rows: [layer] (or [layer][kv head]) of
    // [n_kept][n_pos_axes], read back from the compacted cache.
    std::vector<std::vector<int32_t>> kept_pos;
    std::vector<std::vector<std::vector<int32_t>>> kept_pos_heads;
    int n_pos_axes = 1;
    std::vector<int64_t> visual_kept, total_kept;                // per layer
    // Per layer: 0 where the policy's budget applies (a layer that holds the whole prompt), else the
    // sliding window w of a layer that was cut to the prompt rows within its last w - 1 positions.
    std::vector<int64_t> layer_window;
    uint64_t kv_bytes_before = 0;    // the full prompt's KV
    uint64_t kv_bytes_after = 0;     // in use after compaction
    uint64_t kv_capacity_bytes = 0;  // allocated
    double importance_ms = 0.0, plan_ms = 0.0, compact_ms = 0.0;
    std::map<std::string, std::vector<double>> diagnostics;
    // Cache hit rate (eval/evaluate.h with hit_rate): per layer, the recall of the top-k candidates
    // ranked by the first continuation token's attention in the full-cache run, k = kept candidates.
    double hit_rate = -1.0;
    std::vector<double> hit_rate_per_layer;
};

// Checks a request before any work: policy, options, budget, scope (InputError otherwise).
void check_compression(const compress::CompressParams& p);
// The same, and what this model allows (UnsupportedError: a model whose layers are all sliding-window
// layers has nothing to compress).
void check_compression(const Engine& e, const compress::CompressParams& p);

// Prefills rows [0, m) of `p` into `kv` (cleared first) with the probes the policy asks for, plans,
// compacts the cache; logits of row m - 1 (or of every row, into `logits`, when all_logits). The
// cache's allocation then shrinks to the kept rows + `room` (what may still be generated).
CompressionReport prefill_compressed(Engine& e, const Prompt& p, int64_t m, const compress::CompressParams& cp,
                                     KVCache& kv, float* logits, bool all_logits, int64_t room = 0);

// A prefill in steps: each step() feeds one of the chunks Engine::feed would (so a prefill cut
// between other work computes exactly what one call does); after the last, a compressing prefill
// plans and compacts. `compress`: the cache is cleared first and the policy's probes collect
// during the chunks; otherwise rows [0, m) of `p` are appended to what `kv` holds. The cache
// allocates the prompt's rows up front; a compressing prefill gives back, after compaction,
// everything beyond the kept rows + room() (KVCache::shrink_to_fit; it grows again on demand).
class Prefill {
public:
    // `p` kept by the Prefill (the first form) or borrowed (the second: it must outlive the Prefill).
    Prefill(Engine& e, Prompt&& p, int64_t m, const compress::CompressParams& cp, KVCache& kv, bool compress,
            bool all_logits);
    Prefill(Engine& e, const Prompt& p, int64_t m, const compress::CompressParams& cp, KVCache& kv, bool compress,
            bool all_logits);
    Prefill(const Prefill&) = delete;
    Prefill& operator=(const Prefill&) = delete;
    // One chunk (the compression after the last); true once the prefill is complete.
    bool step();
    bool done() const { return done_; }
    // Rows the cache keeps allocated beyond the prompt (default 0: it grows on demand), allocated
    // with the prompt and kept after a compaction. Set before the first step.
    void set_room(int64_t rows) { room_ = rows; }
    int64_t rows_done() const { return next_; }
    int64_t rows() const { return m_; }
    // Row m - 1's logits, or every row's ([m][n_vocab]) with all_logits; valid once done.
    const std::vector<float>& logits() const { return logits_; }
    CompressionReport& report() { return report_; }
    const Prompt& prompt() const { return *p_; }

private:
    void init();
    Engine& e_;
    Prompt own_;
    const Prompt* p_;
    int64_t m_, next_ = 0, room_ = 0;
    compress::CompressParams cp_;
    KVCache& kv_;
    bool compress_, all_logits_, done_ = false;
    compress::ProbeSet req_;
    compress::PromptLayout layout_;
    std::unique_ptr<compress::StatsCollector> stats_;
    std::vector<float> logits_;
    CompressionReport report_;
};

// Plans and compacts a cache freshly prefilled with rows [0, layout.m) using `probes` (collected
// for a request that covers the policy's own, possibly merged with other policies').
CompressionReport compress_prefilled(Engine& e, const compress::PromptLayout& layout,
                                     const compress::CompressParams& cp, const compress::ProbeSet& probes, KVCache& kv);

}  // namespace aircache
