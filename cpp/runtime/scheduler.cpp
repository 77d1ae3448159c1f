#include "runtime/scheduler.h"

#include <algorithm>

#include "common.h"

namespace aircache {

namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
}  // namespace

// What the submitters, the readers and the worker share: the queue and the metrics.
struct SchedulerShared {
    std::mutex mu;
    std::condition_variable cv;  // the worker waits here for work
    std::deque<std::shared_ptr<ScheduledRequest>> queue;
    bool stop = false;
    SchedulerMetrics metrics;
    uint64_t next_id = 1;
    int n_busy = 0;  // slots holding a request (admission and release change it under mu)

    // A request's end in the counters and histograms (mu held).
    void account(const ScheduledRequest& r, const GenerationStats& st, bool failed, bool cancelled, Clock::time_point now) {
        if (failed) metrics.requests_failed++;
        else if (cancelled) metrics.requests_cancelled++;
        else metrics.requests_finished++;
        metrics.prompt_tokens += static_cast<uint64_t>(std::max<int64_t>(0, st.n_prompt));
        metrics.generated_tokens += static_cast<uint64_t>(std::max<int64_t>(0, st.n_generated));
        if (st.compression.compacted) {
            metrics.kv_bytes_before += st.compression.kv_bytes_before;
            metrics.kv_bytes_after += st.compression.kv_bytes_after;
        }
        metrics.request_duration.observe(seconds(r.t_submit_, now));
        if (r.first_seen_ && st.n_generated > 1)
            metrics.time_per_token.observe(seconds(r.t_first_, now) / static_cast<double>(st.n_generated - 1));
    }
};

void SchedulerParams::validate() const {
    if (n_parallel < 1 || n_parallel > 1024) throw InputError(strprintf("n_parallel must be in [1, 1024] (got %d)", n_parallel));
    if (queue_size < 0 || queue_size > 1 << 20)
        throw InputError(strprintf("queue_size must be in [0, 1048576] (got %d)", queue_size));
}

void Histogram::observe(double v) {
    size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;
    counts[i]++;
    sum += v;
    count++;
}

// --- ScheduledRequest ---------------------------------------------------------------------------

bool ScheduledRequest::next(std::string& piece, double timeout_s) {
    piece.clear();
    std::unique_lock<std::mutex> lk(mu_);
    auto ready = [&] { return !pending_.empty() || finished_; };
    if (timeout_s < 0) cv_.wait(lk, ready);
    else if (!cv_.wait_for(lk, std::chrono::duration<double>(timeout_s), ready)) return true;
    if (!pending_.empty()) {
        piece.swap(pending_);
        return true;
    }
    if (error_) std::rethrow_exception(error_);
    return false;
}

void ScheduledRequest::push(const std::string& piece) {
    if (piece.empty()) return;
    {
        std::lock_guard<std::mutex> lk(mu_);
        pending_ += piece;
    }
    cv_.notify_all();
}

void ScheduledRequest::finish(std::exception_ptr err) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (seq_) {
            text_ = seq_->text();
            tokens_ = seq_->tokens();
            stats_ = seq_->stats();
        }
        error_ = err;
        finished_ = true;
    }
    cv_.notify_all();
}

void ScheduledRequest::cancel() {
    cancel_.store(true);
    std::shared_ptr<SchedulerShared> sh = shared_;
    if (!sh) return;
    std::shared_ptr<ScheduledRequest> dropped;
    {
        std::lock_guard<std::mutex> lk(sh->mu);
        auto it = std::find_if(sh->queue.begin(), sh->queue.end(), [&](const auto& r) { return r.get() == this; });
        if (it != sh->queue.end()) {  // still waiting: it ends here
            dropped = *it;
            sh->queue.erase(it);
            sh->metrics.queue_depth = static_cast<int64_t>(sh->queue.size());
            GenerationStats st;
            st.stop_reason = "cancelled";
            sh->account(*this, st, false, true, Clock::now());
        }
    }
    if (dropped) end_unstarted();
    sh->cv.notify_all();  // a running one: the worker frees its slot at the next step
}

void ScheduledRequest::end_unstarted() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stats_.stop_reason = "cancelled";
        stats_.n_prompt = seq_ ? static_cast<int64_t>(seq_->prompt().size()) : 0;
        seq_.reset();
        finished_ = true;
    }
    cv_.notify_all();
}

bool ScheduledRequest::done() const {
    std::lock_guard<std::mutex> lk(mu_);
    return finished_;
}

std::string ScheduledRequest::text() const {
    std::lock_guard<std::mutex> lk(mu_);
    return text_;
}

std::vector<int32_t> ScheduledRequest::tokens() const {
    std::lock_guard<std::mutex> lk(mu_);
    return tokens_;
}

GenerationStats ScheduledRequest::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    return stats_;
}

// --- Scheduler ----------------------------------------------------------------------------------

Scheduler::Scheduler(Engine& e, const SchedulerParams& p) : e_(e), p_(p), sh_(std::make_shared<SchedulerShared>()) {
    p_.validate();
    slots_.resize(static_cast<size_t>(p_.n_parallel));
    uint64_t capacity = 0;
    for (size_t i = 0; i < slots_.size(); ++i) {
        slots_[i].kv = &e_.batch_cache(i);
        capacity += slots_[i].kv->capacity_bytes();
    }
    sh_->metrics.n_parallel = p_.n_parallel;
    sh_->metrics.kv_capacity_bytes = capacity;
    logits_.resize(static_cast<size_t>(p_.n_parallel) * static_cast<size_t>(e_.config().n_vocab));
    worker_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
    {
        std::lock_guard<std::mutex> lk(sh_->mu);
        sh_->stop = true;
    }
    sh_->cv.notify_all();
    if (worker_.joinable()) worker_.join();
}

std::shared_ptr<ScheduledRequest> Scheduler::submit(std::vector<int32_t> prompt, std::vector<Image> images,
                                                    const GenerateParams& p) {
    // checked here, on the caller's thread (the checks read the engine's immutable parts only)
    auto seq = std::make_unique<SequenceState>(e_, std::move(prompt), p, std::move(images));
    std::lock_guard<std::mutex> lk(sh_->mu);
    if (sh_->stop) throw InputError("the scheduler was stopped");
    // a request may wait when a slot is free for it or the queue has room
    if (static_cast<int>(sh_->queue.size()) >= p_.queue_size + (p_.n_parallel - sh_->n_busy)) {
        sh_->metrics.requests_rejected++;
        throw QueueFull(strprintf("the request queue is full (%d waiting, %d slots busy): try again later",
                                  p_.queue_size, p_.n_parallel));
    }
    std::shared_ptr<ScheduledRequest> r(new ScheduledRequest(sh_->next_id++, std::move(seq), sh_));
    r->t_submit_ = Clock::now();
    sh_->queue.push_back(r);
    sh_->metrics.requests_submitted++;
    sh_->metrics.queue_depth = static_cast<int64_t>(sh_->queue.size());
    sh_->cv.notify_all();
    return r;
}

SchedulerMetrics Scheduler::metrics() const {
    std::lock_guard<std::mutex> lk(sh_->mu);
    return sh_->metrics;
}

void Scheduler::release(Slot& s, std::exception_ptr err) {
    ScheduledRequest& r = *s.req;
    const bool cancelled = !err && r.cancelled() && !r.seq_->done();
    if (cancelled) {
        std::string piece;
        r.seq_->finish("cancelled", piece);
        r.push(piece);
    }
    GenerationStats st = r.seq_->stats();
    {
        std::lock_guard<std::mutex> lk(sh_->mu);
        sh_->account(r, st, static_cast<bool>(err), cancelled, Clock::now());
        sh_->n_busy--;
        sh_->metrics.slots_busy = sh_->n_busy;
    }
    r.finish(err);
    {
        std::lock_guard<std::mutex> lk(r.mu_);
        r.seq_.reset();  // the sequence's buffers go now; its cache is the slot's
    }
    s.req.reset();
    s.begun = false;
    // an idle slot holds no KV memory: the next request's prefill allocates what it needs
    s.kv->clear();
    s.kv->shrink_to_fit(0);
}

void Scheduler::run() {
    const int64_t V = e_.config().n_vocab;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(sh_->mu);
            auto busy = [&] {
                for (const Slot& s : slots_)
                    if (s.req) return true;
                return false;
            };
            sh_->cv.wait(lk, [&] { return sh_->stop || !sh_->queue.empty() || busy(); });
            if (sh_->stop) break;
            // admit waiting requests into free slots, in arrival order
            const auto now = Clock::now();
            for (Slot& s : slots_) {
                if (s.req || sh_->queue.empty()) continue;
                s.req = std::move(sh_->queue.front());
                sh_->queue.pop_front();
                sh_->n_busy++;
                sh_->metrics.slots_busy = sh_->n_busy;
                s.req->t_start_ = now;
                sh_->metrics.queue_wait.observe(seconds(s.req->t_submit_, now));
            }
            sh_->metrics.queue_depth = static_cast<int64_t>(sh_->queue.size());
        }

        // cancelled requests leave first
        for (Slot& s : slots_)
            if (s.req && s.req->cancelled()) release(s, nullptr);

        // one prefill chunk: the earliest admitted request still prefilling
        Slot* pf = nullptr;
        for (Slot& s : slots_)
            if (s.req && (!s.begun || s.req->seq_->prefilling()) && (!pf || s.req->id() < pf->req->id())) pf = &s;
        if (pf) {
            SequenceState& q = *pf->req->seq_;
            try {
                if (!pf->begun) {
                    pf->begun = true;
                    q.begin_turn(*pf->kv, {}, true);  // images encoded, the prefill set up
                } else {
                    std::string piece;
                    if (q.prefill_step(piece)) {
                        pf->req->t_first_ = Clock::now();
                        pf->req->first_seen_ = true;
                        {
                            std::lock_guard<std::mutex> lk(sh_->mu);
                            sh_->metrics.time_to_first_token.observe(seconds(pf->req->t_submit_, pf->req->t_first_));
                        }
                        pf->req->push(piece);
                        if (q.done()) release(*pf, nullptr);
                    }
                }
                std::lock_guard<std::mutex> lk(sh_->mu);
                sh_->metrics.prefill_chunks++;
            } catch (...) {
                release(*pf, std::current_exception());
            }
        }

        // one decode step of every generating slot
        std::vector<Slot*> dec;
        std::vector<int32_t> tokens;
        std::vector<KVCache*> caches;
        for (Slot& s : slots_) {
            if (!s.req || !s.begun) continue;
            SequenceState& q = *s.req->seq_;
            if (q.prefilling() || q.done()) continue;
            dec.push_back(&s);
            tokens.push_back(q.next_token());
            caches.push_back(s.kv);
        }
        if (!dec.empty()) {
            const auto t0 = Clock::now();
            try {
                e_.decode_batch(tokens, caches, logits_.data());
            } catch (...) {
                const std::exception_ptr err = std::current_exception();
                for (Slot* s : dec) release(*s, err);
                continue;
            }
            const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
            for (size_t i = 0; i < dec.size(); ++i) {
                Slot& s = *dec[i];
                try {
                    std::string piece;
                    s.req->seq_->accept(logits_.data() + static_cast<int64_t>(i) * V, ms, piece);
                    s.req->push(piece);
                    if (s.req->seq_->done()) release(s, nullptr);
                } catch (...) {
                    release(s, std::current_exception());
                }
            }
            std::lock_guard<std::mutex> lk(sh_->mu);
            sh_->metrics.decode_steps++;
        }

        // the gauges
        uint64_t in_use = 0, allocated = 0;
        for (const Slot& s : slots_) {
            in_use += s.kv->bytes_in_use();
            allocated += s.kv->capacity_bytes();
        }
        std::lock_guard<std::mutex> lk(sh_->mu);
        sh_->metrics.kv_bytes_in_use = in_use;
        sh_->metrics.kv_capacity_bytes = allocated;
    }

    // stopped: everything still running or waiting ends as cancelled
    for (Slot& s : slots_)
        if (s.req) {
            s.req->cancel_.store(true);
            release(s, nullptr);
        }
    std::deque<std::shared_ptr<ScheduledRequest>> rest;
    {
        std::lock_guard<std::mutex> lk(sh_->mu);
        rest.swap(sh_->queue);
        for (auto& r : rest) {
            GenerationStats st;
            sh_->account(*r, st, false, true, Clock::now());
        }
        sh_->metrics.queue_depth = 0;
        sh_->metrics.slots_busy = 0;
    }
    for (auto& r : rest) {
        r->cancel_.store(true);
        r->end_unstarted();
    }
}

}  // namespace aircache
