// engine.h — one loaded model and the life of a request on it.
//
//   EngineParams p; p.model_path = "model.gguf";
//   Engine e(p);
//   std::vector<float> lg = e.logits(ids);             // [n][n_vocab], a fresh sequence
//
// An Engine owns the mapped file, the model, one KV cache of n_ctx positions and a thread pool.
// It serves one request at a time (callers serialize; the Python layer holds a lock).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "kv_cache.h"
#include "text_model.h"
#include "threadpool.h"

namespace aircache {

struct EngineParams {
    std::string model_path;
    int64_t n_ctx = 4096;     // KV positions per layer (prompt + generated)
    int n_threads = 0;        // 0: physical cores
    int64_t n_batch = 512;    // prompt tokens per forward pass
    KVType kv_type = KVType::F16;
    void validate() const;
};

class Engine {
public:
    explicit Engine(const EngineParams& p);
    ~Engine();

    const EngineParams& params() const { return params_; }
    const TextModel& model() const { return *model_; }
    const TextConfig& config() const { return model_->config(); }
    KVCache& kv() { return *kv_; }
    ThreadPool& pool() { return *pool_; }

    // Logits of every position of a fresh sequence ([n][n_vocab], row-major). InputError when the
    // sequence is empty, longer than n_ctx, or holds ids outside the vocabulary.
    std::vector<float> logits(const std::vector<int32_t>& ids);

    // Feeds `n` inputs (tokens or embeddings) at positions starting at `pos0` in chunks of n_batch,
    // appending to the cache; writes the logits of the last input to `last_logits` (n_vocab).
    void prefill(const int32_t* tokens, const float* embd, int64_t n, int32_t pos0, float* last_logits);

private:
    EngineParams params_;
    std::shared_ptr<const GGUFFile> file_;
    std::unique_ptr<TextModel> model_;
    std::unique_ptr<KVCache> kv_;
    std::unique_ptr<ThreadPool> pool_;
};

}  // namespace aircache
