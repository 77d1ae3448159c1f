#include "threadpool.h"

#include <fstream>
#include <set>
#include <string>
#include <utility>

namespace aircache {

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    threads_.reserve(static_cast<size_t>(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_start_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::call(int ith) {
    try {
        (*job_)(ith, n_threads_);
    } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
    }
}

void ThreadPool::worker(int ith) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
        }
        call(ith);
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (--pending_ == 0) cv_done_.notify_one();
        }
    }
}

void ThreadPool::run(const std::function<void(int, int)>& f) {
    if (n_threads_ == 1) {
        f(0, 1);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        job_ = &f;
        pending_ = n_threads_ - 1;
        error_ = nullptr;
        ++generation_;
    }
    cv_start_.notify_all();
    call(0);
    std::exception_ptr err;
    {
        std::unique_lock<std::mutex> lk(mu_);
        cv_done_.wait(lk, [&] { return pending_ == 0; });
        job_ = nullptr;
        err = std::exchange(error_, nullptr);
    }
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
