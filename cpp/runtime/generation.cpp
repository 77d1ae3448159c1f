#include "runtime/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common.h"
#include "runtime/prompt.h"
#include "unicode.h"

namespace aircache {

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

SequenceState::SequenceState(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images,
                             int64_t literal_prefix)
    : e_(e), prompt_(std::move(prompt)), images_(std::move(images)), p_(p), sampler_(p.sampling),
      decoder_(e.tokenizer()) {
    p_.validate();
    const int64_t n = static_cast<int64_t>(prompt_.size());
    if (n == 0) throw InputError("the prompt is empty (no tokens)");
    if (n > e_.params().n_ctx)
        throw InputError(strprintf("the prompt is %lld positions, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(n), static_cast<long long>(e_.params().n_ctx)));
    if (literal_prefix > 0) literal_.assign(static_cast<size_t>(std::min(literal_prefix, n)), 1);
    int64_t text = e_.text_rows(prompt_);
    for (size_t i = 0; i < literal_.size(); ++i) text += e_.has_vision() && prompt_[i] == e_.image_token_id();
    const std::vector<int64_t> counts = images_.empty() ? std::vector<int64_t>{} : e_.image_token_counts(images_, text);
    check_sequence(e_, prompt_, counts, literal_);
    for (int64_t c : counts) stats_.n_visual += c;
    check_compression(e_, p_.compression);
    stats_.n_images = static_cast<int64_t>(images_.size());
    history_ = prompt_;
    logits_.resize(static_cast<size_t>(e_.config().n_vocab));
    stats_.n_prompt = n;
}

void SequenceState::encode_images() {
    const auto ti = Clock::now();
    media_.clear();
    for (const Image& img : images_) media_.push_back(e_.encode_image(img));
    images_.clear();
    stats_.image_encode_ms = ms_since(ti);
}

void SequenceState::start(KVCache& kv, std::string& piece) { start_turn(kv, {}, true, piece); }

void SequenceState::start_turn(KVCache& kv, const std::vector<int32_t>& history, bool recompress, std::string& piece,
                               const std::vector<uint8_t>& history_literal) {
    begin_turn(kv, history, recompress, history_literal);
    while (!prefill_step(piece)) {
    }
}

void SequenceState::begin_turn(KVCache& kv, const std::vector<int32_t>& history, bool recompress,
                               const std::vector<uint8_t>& history_literal) {
    kv_ = &kv;
    const int64_t n = static_cast<int64_t>(prompt_.size());
    h_ = static_cast<int64_t>(history.size());
    if (h_ + n > e_.params().n_ctx)
        throw InputError(strprintf("the conversation would be %lld positions, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(h_ + n), static_cast<long long>(e_.params().n_ctx)));
    encode_images();
    t_prefill_ = Clock::now();
    if (recompress) {
        // the whole conversation again, so the policy sees it as one prompt (every row's logits
        // when earlier turns come first and the prompt's are asked for)
        std::vector<int32_t> all = history;
        all.insert(all.end(), prompt_.begin(), prompt_.end());
        std::vector<uint8_t> lit(history_literal.begin(), history_literal.end());
        lit.resize(history.size(), 0);
        lit.insert(lit.end(), literal_.begin(), literal_.end());
        Prompt p = make_prompt(e_, std::move(all), std::move(media_), lit);
        stats_.n_visual = p.n_visual();
        prefill_ = std::make_unique<Prefill>(e_, std::move(p), h_ + n, p_.compression, kv, true, p_.prompt_logits);
    } else {
        Prompt p = make_prompt(e_, prompt_, std::move(media_), literal_);
        stats_.n_visual = p.n_visual();
        prefill_ = std::make_unique<Prefill>(e_, std::move(p), n, p_.compression, kv, false, p_.prompt_logits);
    }
    prefill_->set_room(p_.max_tokens >= 0 ? p_.max_tokens + 1 : 0);  // the answer (and the token fed after it)
}

bool SequenceState::prefill_step(std::string& piece) {
    piece.clear();
    if (!prefill_) return true;
    if (!prefill_->step()) return false;
    const int64_t n = static_cast<int64_t>(prompt_.size()), V = e_.config().n_vocab;
    stats_.compression = std::move(prefill_->report());
    stats_.compression.n_prompt = h_ + n;
    const std::vector<float>& lg = prefill_->logits();
    if (p_.prompt_logits) prompt_logits_.assign(lg.end() - n * V, lg.end());
    std::copy(lg.end() - V, lg.end(), logits_.begin());
    prefill_.reset();
    // prefill time without the compression work (reported separately)
    stats_.prefill_ms = ms_since(t_prefill_) - stats_.compression.importance_ms - stats_.compression.compact_ms;
    if (p_.max_tokens == 0) {
        finish("length", piece);
        return true;
    }
    sample(logits_.data(), piece);
    return true;
}

void SequenceState::accept(const float* logits, double forward_ms, std::string& piece) {
    piece.clear();
    stats_.decode_ms += forward_ms;
    stats_.decode_steps++;
    sample(logits, piece);
}

std::string SequenceState::take_emittable(bool final) {
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

void SequenceState::finish(const std::string& reason, std::string& piece) {
    text_ += utf8_sanitize(decoder_.flush());
    piece += take_emittable(true);
    stats_.stop_reason = reason;
    if (kv_) {
        stats_.kv_bytes = kv_->bytes_in_use();
        stats_.kv_capacity_bytes = kv_->capacity_bytes();
    }
    done_ = true;
}

void SequenceState::sample(const float* logits, std::string& piece) {
    const int64_t V = e_.config().n_vocab;
    for (int64_t i = 0; i < V; ++i)
        if (!std::isfinite(logits[i]))
            throw FormatError(strprintf("%s: the model produced %s logits (token %lld of the answer): its weights or an "
                                        "embedding row hold NaN/inf; load it with check_tensors=True (--check-tensors) "
                                        "to find the tensor", e_.params().model_path.c_str(),
                                        std::isnan(logits[i]) ? "NaN" : "infinite",
                                        static_cast<long long>(stats_.n_generated)));
    const auto ts = Clock::now();
    const int32_t id = sampler_.sample(logits, V, history_);
    stats_.sample_ms += ms_since(ts);
    stats_.n_generated++;
    last_sampled_ = id;
    if (e_.tokenizer().is_eog(id)) {
        finish("eos", piece);
        return;
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
            piece += take_emittable(true);
            stats_.stop_reason = "stop";
            stats_.kv_bytes = kv_->bytes_in_use();
            stats_.kv_capacity_bytes = kv_->capacity_bytes();
            done_ = true;
            return;
        }
    }
    piece += take_emittable(false);
    if (p_.max_tokens >= 0 && stats_.n_generated >= p_.max_tokens) {
        finish("length", piece);
        return;
    }
    // the cache is full when its longest layer is (after compaction, layers hold fewer entries
    // than positions: positions go on from the original prompt length)
    int64_t longest_layer = 0;
    for (int l = 0; l < e_.config().n_layer; ++l) longest_layer = std::max(longest_layer, kv_->length(l));
    if (longest_layer >= kv_->capacity()) finish("context", piece);
}

Generation::Generation(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images,
                       int64_t literal_prefix)
    : e_(e), s_(e, std::move(prompt), p, std::move(images), literal_prefix), kv_(&e.kv()) {}

Generation::~Generation() {
    if (!session_ || s_.done()) return;
    // abandoned mid-turn: the rows fed so far stay in the conversation (like an answer cut by length)
    session_->busy_ = false;
    if (started_) {
        session_->pending_ = s_.last_sampled();
        session_->last_stop_ = "length";
        ++session_->turns_;
    }
}

bool Generation::step(std::string& piece) {
    piece.clear();
    if (s_.done()) return false;
    if (!started_) {
        started_ = true;
        if (session_) {
            try {
                s_.start_turn(*kv_, session_->ids_, session_->compressing_turn_, piece, session_->literal_);
            } catch (...) {
                // the cache may hold part of the turn: the conversation starts over
                session_->reset();
                session_ = nullptr;
                throw;
            }
            if (session_->compressing_turn_) {
                session_->compressed_ = true;
                session_->report_ = s_.stats().compression;
            }
            session_->has_images_ = session_->has_images_ || s_.stats().n_images > 0;
            session_->ids_.insert(session_->ids_.end(), s_.prompt().begin(), s_.prompt().end());
            const std::vector<uint8_t>& lit = s_.prompt_literal();
            for (size_t i = 0; i < s_.prompt().size(); ++i) session_->literal_.push_back(i < lit.size() ? lit[i] : 0);
        } else {
            s_.start(*kv_, piece);
        }
        if (s_.done() && session_) session_->finished(s_);
        return true;
    }
    const auto t0 = Clock::now();
    logits_.resize(static_cast<size_t>(e_.config().n_vocab));
    const int32_t tok = s_.next_token();
    e_.decode_batch({tok}, {kv_}, logits_.data());
    if (session_) {
        session_->ids_.push_back(tok);
        session_->literal_.push_back(1);
    }
    s_.accept(logits_.data(), ms_since(t0), piece);
    if (s_.done() && session_) session_->finished(s_);
    return true;
}

BatchGeneration::BatchGeneration(Engine& e, std::vector<std::vector<int32_t>> prompts,
                                 std::vector<std::vector<Image>> images, const GenerateParams& p)
    : e_(e) {
    if (prompts.empty()) throw InputError("a batch needs at least one request");
    if (images.size() != prompts.size()) images.resize(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i)
        seqs_.push_back(std::make_unique<SequenceState>(e, std::move(prompts[i]), p, std::move(images[i])));
}

GenerationStats BatchGeneration::stats(size_t i) const {
    GenerationStats st = seqs_[i]->stats();
    st.batch_size = static_cast<int64_t>(seqs_.size());
    st.batch_decode_tps = decode_ms_ > 0 ? 1000.0 * static_cast<double>(decoded_tokens_) / decode_ms_ : 0.0;
    return st;
}

bool BatchGeneration::step(std::vector<std::string>& pieces) {
    pieces.assign(seqs_.size(), std::string());
    if (!started_) {
        started_ = true;
        for (size_t i = 0; i < seqs_.size(); ++i) seqs_[i]->start(e_.batch_cache(i), pieces[i]);
        return true;
    }
    std::vector<int32_t> tokens;
    std::vector<KVCache*> caches;
    std::vector<size_t> which;
    for (size_t i = 0; i < seqs_.size(); ++i) {
        if (seqs_[i]->done()) continue;
        tokens.push_back(seqs_[i]->next_token());
        caches.push_back(&e_.batch_cache(i));
        which.push_back(i);
    }
    if (which.empty()) return false;
    const int64_t V = e_.config().n_vocab;
    logits_.resize(which.size() * static_cast<size_t>(V));
    const auto t0 = Clock::now();
    e_.decode_batch(tokens, caches, logits_.data());
    const double ms = ms_since(t0);
    decode_ms_ += ms;
    decode_steps_++;
    decoded_tokens_ += static_cast<int64_t>(which.size());
    for (size_t k = 0; k < which.size(); ++k)
        seqs_[which[k]]->accept(logits_.data() + k * static_cast<size_t>(V), ms, pieces[which[k]]);
    return true;
}

// ------------------------------------------------------------------------------------------------
// Sessions
// ------------------------------------------------------------------------------------------------

Session::Session(Engine& e, const compress::CompressParams& compression, const std::string& chat_template,
                 const std::string& system)
    : e_(e), compression_(compression), template_(e.chat_template(chat_template)), system_(system),
      kv_(e.new_cache()) {
    check_compression(e_, compression_);
    e_.tokenizer();
}

void Session::reset() {
    kv_->clear();
    ids_.clear();
    literal_.clear();
    pending_ = -1;
    last_stop_.clear();
    compressed_ = has_images_ = busy_ = compressing_turn_ = false;
    turns_ = 0;
    report_ = CompressionReport();
}

std::unique_ptr<Generation> Session::send(const ChatMessage& message, GenerateParams p, std::vector<Image> images) {
    if (busy_) throw InputError("a turn of this session is still in progress: finish it first");
    if (message.role != "user") throw InputError("a session turn sends a 'user' message (got '" + message.role + "')");
    size_t n_img = 0;
    for (const ChatPart& part : message.parts) n_img += part.image;
    if (n_img != images.size())
        throw InputError(strprintf("the message has %zu image parts but %zu images were given", n_img, images.size()));
    // the turn's text: the previous answer closed as the template closes it, then this message and
    // the assistant prefix (the first turn: the system message first, and BOS)
    std::vector<ChatMessage> msgs;
    if (turns_ == 0 && !system_.empty()) msgs.push_back(ChatMessage{"system", {ChatPart{false, system_}}});
    msgs.push_back(message);
    std::string text = render_chat(template_, msgs, true, turns_ > 0);
    std::vector<int32_t> ids;
    int64_t literal = 0;  // the previous answer's last token, when fed here: text whatever its id
    if (turns_ > 0) {
        // the previous answer's last token was sampled but not fed: feed it (an end-of-generation
        // token stands for the start of the template's closing text), unless a stop string cut it
        std::string close = chat_assistant_end(template_);
        if (pending_ >= 0 && last_stop_ != "stop") {
            ids.push_back(pending_);
            literal = 1;
            if (last_stop_ == "eos") {
                const std::string eog = e_.tokenizer().decode({pending_}, false);
                if (close.compare(0, eog.size(), eog) == 0) close = close.substr(eog.size());
            }
        }
        text = close + text;
    }
    const std::vector<int32_t> body = e_.build_fitted(
        images, [&](const std::vector<int64_t>& counts) { return e_.tokenize_with_images(text, counts, turns_ == 0); },
        static_cast<int64_t>(ids_.size() + ids.size()));
    ids.insert(ids.end(), body.begin(), body.end());
    if (static_cast<int64_t>(ids_.size() + ids.size()) > e_.params().n_ctx)
        throw InputError(strprintf("the conversation would be %zu positions, longer than the context (n_ctx = %lld): "
                                   "start a new session or reset() this one", ids_.size() + ids.size(),
                                   static_cast<long long>(e_.params().n_ctx)));
    GenerateParams gp = p;
    gp.compression = compression_;
    auto g = std::make_unique<Generation>(e_, std::move(ids), gp, std::move(images), literal);
    g->session_ = this;
    g->kv_ = kv_.get();
    compressing_turn_ = n_img > 0 && !compressed_ && !has_images_ && compression_.policy != "full";
    busy_ = true;
    return g;
}

void Session::finished(const SequenceState& s) {
    busy_ = false;
    pending_ = s.last_sampled();
    last_stop_ = s.stats().stop_reason;
    ++turns_;
}

}  // namespace aircache
