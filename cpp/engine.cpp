#include "engine.h"

#include <algorithm>
#include <numeric>

#include "common.h"

namespace aircache {

void EngineParams::validate() const {
    if (model_path.empty()) throw InputError("no model path given");
    if (n_ctx < 1 || n_ctx > (int64_t(1) << 24)) throw InputError(strprintf("n_ctx must be in [1, 16777216] (got %lld)", static_cast<long long>(n_ctx)));
    if (n_batch < 1) throw InputError(strprintf("n_batch must be >= 1 (got %lld)", static_cast<long long>(n_batch)));
    if (n_threads < 0 || n_threads > 1024) throw InputError(strprintf("n_threads must be in [0, 1024] (got %d)", n_threads));
}

Engine::Engine(const EngineParams& p) : params_(p) {
    params_.validate();
    if (params_.n_threads == 0) params_.n_threads = physical_cores();
    file_ = GGUFFile::open(params_.model_path);
    model_ = TextModel::load(file_);
    kv_ = std::make_unique<KVCache>(model_->kv_config(params_.n_ctx, params_.kv_type));
    pool_ = std::make_unique<ThreadPool>(params_.n_threads);
}

Engine::~Engine() = default;

void Engine::prefill(const int32_t* tokens, const float* embd, int64_t n, int32_t pos0, float* last_logits) {
    const int64_t E = config().n_embd;
    std::vector<int32_t> pos;
    std::vector<uint8_t> want;
    for (int64_t i0 = 0; i0 < n; i0 += params_.n_batch) {
        const int64_t m = std::min(params_.n_batch, n - i0);
        pos.resize(static_cast<size_t>(m));
        std::iota(pos.begin(), pos.end(), static_cast<int32_t>(pos0 + i0));
        want.assign(static_cast<size_t>(m), 0);
        const bool last = i0 + m == n;
        if (last) want.back() = 1;
        TextBatch b;
        b.n = m;
        b.tokens = tokens ? tokens + i0 : nullptr;
        b.embd = embd ? embd + i0 * E : nullptr;
        b.pos = pos.data();
        b.want_logits = want.data();
        model_->forward(b, *kv_, last ? last_logits : nullptr, *pool_);
    }
}

std::vector<float> Engine::logits(const std::vector<int32_t>& ids) {
    const int64_t n = static_cast<int64_t>(ids.size()), V = config().n_vocab;
    if (n == 0) throw InputError("logits: the input sequence is empty");
    if (n > params_.n_ctx)
        throw InputError(strprintf("logits: the sequence is %lld tokens, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(n), static_cast<long long>(params_.n_ctx)));
    for (int64_t i = 0; i < n; ++i)
        if (ids[static_cast<size_t>(i)] < 0 || ids[static_cast<size_t>(i)] >= V)
            throw InputError(strprintf("token id %d at position %lld is outside the vocabulary [0, %lld)",
                                       ids[static_cast<size_t>(i)], static_cast<long long>(i), static_cast<long long>(V)));
    kv_->clear();
    std::vector<float> out(static_cast<size_t>(n * V));
    std::vector<int32_t> pos;
    for (int64_t i0 = 0; i0 < n; i0 += params_.n_batch) {
        const int64_t m = std::min(params_.n_batch, n - i0);
        pos.resize(static_cast<size_t>(m));
        std::iota(pos.begin(), pos.end(), static_cast<int32_t>(i0));
        TextBatch b;
        b.n = m;
        b.tokens = ids.data() + i0;
        b.pos = pos.data();
        model_->forward(b, *kv_, out.data() + i0 * V, *pool_);
    }
    return out;
}

}  // namespace aircache
