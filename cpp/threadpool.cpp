#include "threadpool.h"

#include <atomic>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AC_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define AC_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define AC_CPU_RELAX() ((void)0)
#endif

namespace aircache {

namespace {
constexpr int kSpinIterations = 20000;  // ~100 µs of pause instructions before a worker sleeps
constexpr std::chrono::microseconds kGraceMin{5};  // a spinning worker starts well within this
constexpr uint64_t kShareBits = 16;
constexpr uint64_t kShareMask = (uint64_t(1) << kShareBits) - 1;
inline uint32_t word_gen(uint64_t w) { return static_cast<uint32_t>(w >> 32); }
inline int word_count(uint64_t w) { return static_cast<int>((w >> kShareBits) & kShareMask); }
inline int word_next(uint64_t w) { return static_cast<int>(w & kShareMask); }
}  // namespace

// (at most 65535 threads: the job word counts shares in 16 bits)
ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : (n_threads > 65535 ? 65535 : n_threads)) {
    threads_.reserve(static_cast<size_t>(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_.store(true, std::memory_order_seq_cst);
    }
    cv_start_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::call(int i) {
    try {
        (*job_)(i, n_threads_);
    } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!error_) error_ = std::current_exception();
    }
}

bool ThreadPool::run_one(uint32_t gen) {
    uint64_t w = job_word_.load(std::memory_order_acquire);
    for (;;) {
        if (word_gen(w) != gen || word_next(w) >= word_count(w)) return false;
        if (job_word_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
    }
    // share word_next(w) of job `gen` is ours: the job cannot finish (nor job_ change) before we
    // count it done
    call(word_next(w));
    done_.fetch_add(1, std::memory_order_acq_rel);
    return true;
}

void ThreadPool::worker() {
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = word_gen(job_word_.load(std::memory_order_acquire))) == seen) {
            if (stop_.load(std::memory_order_acquire)) return;
            if (++spins < kSpinIterations) {
                AC_CPU_RELAX();
                continue;
            }
            // idle for a while: sleep until the next job (the predicate is re-checked under the
            // lock after registering as a sleeper, and the caller reads the sleeper count after
            // publishing the job, both sequentially consistent: a job is not missed)
            std::unique_lock<std::mutex> lk(mu_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            cv_start_.wait(lk, [&] {
                return word_gen(job_word_.load(std::memory_order_seq_cst)) != seen || stop_.load(std::memory_order_seq_cst);
            });
            sleepers_.fetch_sub(1, std::memory_order_seq_cst);
            spins = 0;
        }
        seen = g;
        while (run_one(g)) {
        }
    }
}

void ThreadPool::run(const std::function<void(int, int)>& f) {
    if (n_threads_ == 1) {
        f(0, 1);
        return;
    }
    job_ = &f;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    ++gen_;
    job_word_.store((static_cast<uint64_t>(gen_) << 32) | (static_cast<uint64_t>(n_threads_) << kShareBits), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        std::lock_guard<std::mutex> lk(mu_);
        cv_start_.notify_all();
    }
    // the caller's own share first; the workers' shares are theirs for as long as that took (at
    // least kGraceMin): a worker a little late still runs its share (taking it here would double
    // the job), one that is not running (descheduled, its core busy) leaves it to the caller
    using Clock = std::chrono::steady_clock;
    const Clock::time_point t0 = Clock::now();
    run_one(gen_);
    const Clock::time_point t1 = Clock::now();
    const Clock::time_point deadline = t1 + std::max<Clock::duration>(t1 - t0, kGraceMin);
    bool took = false;
    while (done_.load(std::memory_order_acquire) != n_threads_) {
        if (!took && Clock::now() >= deadline) {
            while (run_one(gen_)) {
            }
            took = true;
            continue;
        }
        AC_CPU_RELAX();
    }
    job_ = nullptr;
    std::exception_ptr err = std::exchange(error_, nullptr);
    if (err) std::rethrow_exception(err);
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& f, int64_t grain) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t chunks = (n + grain - 1) / grain;
    if (chunks > n_threads_) chunks = n_threads_;
    if (chunks <= 1) {
        f(0, n);
        return;
    }
    run([&](int ith, int) {
        if (ith >= chunks) return;
        const int64_t b = n * ith / chunks, e = n * (ith + 1) / chunks;
        if (b < e) f(b, e);
    });
}

void ThreadPool::for_each(int64_t n, const std::function<void(int64_t)>& f) {
    if (n <= 0) return;
    if (n_threads_ <= 1 || n == 1) {
        for (int64_t i = 0; i < n; ++i) f(i);
        return;
    }
    std::atomic<int64_t> next{0};
    run([&](int, int) {
        for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) f(i);
    });
}

int physical_cores() {
    std::ifstream in("/proc/cpuinfo");
    std::set<std::pair<std::string, std::string>> cores;
    std::string line, phys = "0";
    while (std::getline(in, line)) {
        if (line.rfind("physical id", 0) == 0) phys = line.substr(line.find(':') + 1);
        else if (line.rfind("core id", 0) == 0) cores.insert({phys, line.substr(line.find(':') + 1)});
    }
    if (!cores.empty()) return static_cast<int>(cores.size());
    const unsigned n = std::thread::hardware_concurrency();
    return n ? static_cast<int>(n) : 1;
}

}  // namespace aircache
