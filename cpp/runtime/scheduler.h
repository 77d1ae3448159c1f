// runtime/scheduler.h — continuous batching: many requests on one Engine, each in a slot with its
// own KV cache (compressed by its own policy after its prefill), decoded together.
//
//   Scheduler s(engine, {.n_parallel = 4, .queue_size = 64});
//   auto r = s.submit(ids, images, params);          // QueueFull when the queue is full
//   std::string piece; while (r->next(piece)) std::cout << piece;
//   r->cancel();                                     // frees its slot at the next step
//
// A worker thread runs the loop. Each iteration admits waiting requests into free slots (in
// arrival order), runs one prefill chunk of the oldest slot still prefilling (the chunks
// Engine::feed runs: boundaries depend on n_batch only) and then one decode step of every slot
// that is generating (Engine::decode_batch). A long prompt therefore delays the running decodes by
// one chunk per token at most, and every request computes exactly what it would alone: greedy
// results equal Generation's. Slots hold a whole context each (Engine n_ctx); a request waits in
// the bounded queue until one is free. The Engine must not be used by anything else while a
// Scheduler runs on it (the Python layer holds the Model's lock for the scheduler's lifetime).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/generation.h"

namespace aircache {

// A request refused because the queue is full (HTTP 429 in a server).
class QueueFull : public Error {
public:
    using Error::Error;
};

struct SchedulerParams {
    int n_parallel = 4;    // slots: requests prefilled / decoded concurrently
    int queue_size = 64;   // requests waiting for a slot when every slot is busy; beyond: QueueFull
    void validate() const;
};

// Latency histogram (Prometheus style: cumulative counts per upper bound, seconds).
struct Histogram {
    std::vector<double> bounds;      // upper bounds; +Inf implied
    std::vector<uint64_t> counts;    // per bound (not cumulative), then +Inf
    double sum = 0.0;
    uint64_t count = 0;
    explicit Histogram(std::vector<double> b = {}) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
    void observe(double v);
};

struct SchedulerMetrics {
    uint64_t requests_submitted = 0, requests_finished = 0, requests_failed = 0, requests_cancelled = 0,
             requests_rejected = 0;
    uint64_t prompt_tokens = 0, generated_tokens = 0;
    uint64_t decode_steps = 0, prefill_chunks = 0;
    int64_t queue_depth = 0, slots_busy = 0, n_parallel = 0;
    uint64_t kv_bytes_before = 0, kv_bytes_after = 0;  // summed over compressed prompts
    uint64_t kv_bytes_in_use = 0;                      // slots' caches now
    uint64_t kv_capacity_bytes = 0;                    // all slots' allocations now (they grow and shrink)
    Histogram time_to_first_token{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
    Histogram time_per_token{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}};
    Histogram request_duration{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
    Histogram queue_wait{{0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
};

class Scheduler;
struct SchedulerShared;

// One submitted request, shared by its submitter and the worker (thread-safe).
class ScheduledRequest {
public:
    // Waits for new text (up to timeout_s; < 0: no limit). True with `piece` set (possibly empty on
    // a timeout) while the request runs or text is pending; false once it finished and everything
    // was handed out. Rethrows the request's error (InputError, FormatError, ...) when it failed.
    bool next(std::string& piece, double timeout_s = -1.0);
    // Stops the request: a queued one is dropped, a running one frees its slot at the next step
    // (its stop reason "cancelled"); no effect once finished.
    void cancel();
    bool done() const;
    bool cancelled() const { return cancel_.load(); }
    // Final state (complete once done()).
    std::string text() const;
    std::vector<int32_t> tokens() const;
    GenerationStats stats() const;
    uint64_t id() const { return id_; }

private:
    friend class Scheduler;
    friend struct SchedulerShared;
    ScheduledRequest(uint64_t id, std::unique_ptr<SequenceState> s, std::shared_ptr<SchedulerShared> sh)
        : id_(id), seq_(std::move(s)), shared_(std::move(sh)) {}
    void push(const std::string& piece);
    // Final text, tokens and stats from the sequence (or an error); wakes the reader.
    void finish(std::exception_ptr err);
    // Ends a request that never reached a slot (cancelled, or the scheduler stopped).
    void end_unstarted();

    const uint64_t id_;
    std::unique_ptr<SequenceState> seq_;   // the worker's while running
    std::shared_ptr<SchedulerShared> shared_;  // the queue, for cancel()
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::string pending_;
    bool finished_ = false;
    std::exception_ptr error_;
    std::string text_;
    std::vector<int32_t> tokens_;
    GenerationStats stats_;
    std::atomic<bool> cancel_{false};
    std::chrono::steady_clock::time_point t_submit_, t_start_, t_first_;
    bool first_seen_ = false;
};

class Scheduler {
public:
    Scheduler(Engine& e, const SchedulerParams& p);
    ~Scheduler();  // cancels what runs or waits, joins the worker
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    // Checks the request (InputError: empty or too long for a slot's context, bad images or
    // parameters) and queues it; QueueFull when queue_size requests already wait.
    std::shared_ptr<ScheduledRequest> submit(std::vector<int32_t> prompt, std::vector<Image> images,
                                             const GenerateParams& p);
    SchedulerMetrics metrics() const;
    const SchedulerParams& params() const { return p_; }
    // Stops the worker (pending and running requests end as cancelled); idempotent.
    void stop();

private:
    struct Slot {
        KVCache* kv = nullptr;
        std::shared_ptr<ScheduledRequest> req;
        bool begun = false;
    };
    void run();
    // Ends the slot's request (err: failed; else finished, or cancelled when asked) and frees it.
    void release(Slot& s, std::exception_ptr err);

    Engine& e_;
    SchedulerParams p_;
    std::vector<Slot> slots_;
    std::shared_ptr<SchedulerShared> sh_;
    std::vector<float> logits_;
    std::thread worker_;
};

}  // namespace aircache
