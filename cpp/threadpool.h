// threadpool.h — a small persistent thread pool for the CPU kernels.
//
//   ThreadPool pool(4);                                  // 4 threads in all: the caller + 3 workers
//   pool.run([&](int ith, int nth) { ... });             // every thread once, then wait
//   pool.parallel_for(n, [&](int64_t b, int64_t e) { ... });  // [0, n) in contiguous chunks
//   pool.for_each(n, [&](int64_t i) { ... });                  // one item at a time, to a free thread
//
// The caller participates. An exception thrown by any thread is rethrown in the caller after all
// threads finished. One job at a time: run() is not reentrant.
//
// run(f) calls f(i, size()) once for every i in [0, size()), each call on whichever thread claims i
// first: normally thread i, but a worker that has not started its share by the time the caller has
// finished its own (and waited as long again) leaves it to the caller — a worker whose core is busy
// with something else, or whose virtual CPU is descheduled, no longer holds the job for
// milliseconds. So i is a share of the work, not a thread identity (thread_local state is per
// thread, as always); parallel_for's chunks and for_each's items alike.
//
// Dispatch is cheap enough for the ~100 small jobs of one decoded token: idle workers spin on the
// job word for a short while (about 100 µs) before sleeping on a condition variable, and the caller
// spins for the completion count.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace aircache {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    void run(const std::function<void(int ith, int nth)>& f);
    // [0, n) split into at most size() contiguous chunks of at least `grain` items.
    void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& f, int64_t grain = 1);
    // f(i) for i in [0, n), handed out one at a time in index order to whichever thread is free
    // (uneven items: order them largest first).
    void for_each(int64_t n, const std::function<void(int64_t i)>& f);

private:
    void worker();
    void call(int i);
    bool run_one(uint32_t gen);  // claim and run one share of job `gen` (false: none left)

    int n_threads_;
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_start_;
    const std::function<void(int, int)>* job_ = nullptr;
    // the job word: generation (high 32 bits), number of shares (16 bits), next unclaimed share (low
    // 16 bits); a share is claimed by one compare-exchange of the whole word, so a claim is never
    // taken from a job other than the one its claimer saw
    std::atomic<uint64_t> job_word_{0};
    uint32_t gen_ = 0;           // the caller's generation counter
    std::atomic<int> done_{0};   // shares of the current job finished
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    std::mutex err_mu_;
    std::exception_ptr error_;
};

// Physical CPU cores of this machine (logical cores when that cannot be determined).
int physical_cores();

}  // namespace aircache
