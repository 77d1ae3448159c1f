#include "engine.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "common.h"
#include "unicode.h"

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
    if (file_->has("tokenizer.ggml.model")) {
        tokenizer_ = Tokenizer::from_gguf(*file_);
        if (tokenizer_->n_vocab() != model_->config().n_vocab)
            file_->fail(strprintf("the tokenizer has %d tokens but the model's vocabulary is %lld", tokenizer_->n_vocab(),
                                  static_cast<long long>(model_->config().n_vocab)));
    }
}

const Tokenizer& Engine::tokenizer() const {
    if (!tokenizer_) throw InputError(params_.model_path + ": the file has no tokenizer (tokenizer.ggml.* metadata)");
    return *tokenizer_;
}

std::vector<int32_t> Engine::tokenize(const std::string& text, bool add_bos, bool parse_special) const {
    const Tokenizer& t = tokenizer();
    std::vector<int32_t> ids;
    if (add_bos && t.add_bos() && t.bos() >= 0) ids.push_back(t.bos());
    std::vector<int32_t> body = t.encode(text, /*add_special=*/false, parse_special);
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
}

std::string Engine::detokenize(const std::vector<int32_t>& ids, bool skip_special) const {
    const Tokenizer& t = tokenizer();
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0 || ids[i] >= t.n_vocab())
            throw InputError(strprintf("token id %d at position %zu is outside the vocabulary [0, %d)", ids[i], i, t.n_vocab()));
    return utf8_sanitize(t.decode(ids, skip_special));
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

// ------------------------------------------------------------------------------------------------
// Generation
// ------------------------------------------------------------------------------------------------

void GenerateParams::validate() const {
    if (max_tokens < -1) throw InputError(strprintf("max_tokens must be >= 0, or -1 for no limit (got %d)", max_tokens));
    for (const std::string& s : stop)
        if (s.empty()) throw InputError("stop strings must not be empty");
    sampling.validate();
}

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
}  // namespace

Generation::Generation(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p)
    : e_(e), prompt_(std::move(prompt)), p_(p), sampler_(p.sampling), decoder_(e.tokenizer()) {
    p_.validate();
    const int64_t n = static_cast<int64_t>(prompt_.size());
    if (n == 0) throw InputError("the prompt is empty (no tokens)");
    if (n > e_.params().n_ctx)
        throw InputError(strprintf("the prompt is %lld tokens, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(n), static_cast<long long>(e_.params().n_ctx)));
    const int64_t V = e_.config().n_vocab;
    for (size_t i = 0; i < prompt_.size(); ++i)
        if (prompt_[i] < 0 || prompt_[i] >= V)
            throw InputError(strprintf("token id %d at position %zu is outside the vocabulary [0, %lld)", prompt_[i], i,
                                       static_cast<long long>(V)));
    history_ = prompt_;
    logits_.resize(static_cast<size_t>(V));
    stats_.n_prompt = n;
}

std::string Generation::take_emittable(bool final) {
    size_t end = text_.size();
    if (!final) {
        // hold back the longest tail that could still grow into a stop string
        for (const std::string& s : p_.stop)
            for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k)
                if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
                    end = std::min(end, text_.size() - k);
                    break;
                }
    }
    if (end < emitted_) end = emitted_;
    std::string out = text_.substr(emitted_, end - emitted_);
    emitted_ = end;
    return out;
}

void Generation::finish(const std::string& reason, std::string& piece) {
    text_ += utf8_sanitize(decoder_.flush());
    piece += take_emittable(true);
    stats_.stop_reason = reason;
    stats_.kv_bytes = e_.kv().bytes_in_use();
    stats_.kv_capacity_bytes = e_.kv().capacity_bytes();
    done_ = true;
}

bool Generation::step(std::string& piece) {
    piece.clear();
    if (done_) return false;
    const int64_t V = e_.config().n_vocab;
    if (!started_) {
        started_ = true;
        e_.kv().clear();
        const auto t0 = Clock::now();
        e_.prefill(prompt_.data(), nullptr, static_cast<int64_t>(prompt_.size()), 0, logits_.data());
        stats_.prefill_ms = ms_since(t0);
    } else {
        // feed the last sampled token
        const int32_t pos = static_cast<int32_t>(history_.size() - 1);
        if (history_.size() > static_cast<size_t>(e_.params().n_ctx)) {
            finish("context", piece);
            return true;
        }
        const auto t0 = Clock::now();
        e_.prefill(&history_.back(), nullptr, 1, pos, logits_.data());
        stats_.decode_ms += ms_since(t0);
        stats_.decode_steps++;
    }
    if (p_.max_tokens >= 0 && stats_.n_generated >= p_.max_tokens) {
        finish("length", piece);
        return true;
    }
    const auto ts = Clock::now();
    const int32_t id = sampler_.sample(logits_.data(), V, history_);
    const double sms = ms_since(ts);
    stats_.sample_ms += sms;
    stats_.n_generated++;
    if (e_.tokenizer().is_eog(id)) {
        finish("eos", piece);
        return true;
    }
    history_.push_back(id);
    generated_.push_back(id);
    text_ += utf8_sanitize(decoder_.push(id));
    // stop strings: search only where a new match can start
    size_t longest = 0;
    for (const std::string& s : p_.stop) longest = std::max(longest, s.size());
    if (longest) {
        const size_t from = emitted_ > longest ? emitted_ - longest : 0;
        size_t cut = std::string::npos;
        for (const std::string& s : p_.stop) {
            const size_t at = text_.find(s, from);
            if (at != std::string::npos) cut = std::min(cut, at);
        }
        if (cut != std::string::npos) {
            text_.resize(std::max(cut, emitted_));
            piece = take_emittable(true);
            stats_.stop_reason = "stop";
            stats_.kv_bytes = e_.kv().bytes_in_use();
            stats_.kv_capacity_bytes = e_.kv().capacity_bytes();
            done_ = true;
            return true;
        }
    }
    piece = take_emittable(false);
    if (p_.max_tokens >= 0 && stats_.n_generated >= p_.max_tokens) {
        std::string rest;
        finish("length", rest);
        piece += rest;
    }
    return true;
}

}  // namespace aircache
