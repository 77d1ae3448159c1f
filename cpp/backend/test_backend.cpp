// test_backend.cpp — a backend for the test suite on machines without a GPU: its memory is host
// memory of its own that the runtime reaches only through upload/download (is_host() is false, so
// every placement, transfer, device-KV and fallback path of a device runs), its ops are the CPU's
// kernels (the same bits), and it declines the ops it is told to, which then run on the CPU through
// the dispatcher's fallback. Device name "test" ("test:decline=op1+op2").
#include <cstring>

#include "backend/cpu_backend.h"
#include "common.h"

namespace aircache {

namespace {

class TestBackend final : public CpuOps {
public:
    TestBackend(ThreadPool& pool, const std::vector<Op>& decline) : CpuOps(pool), decline_(decline.begin(), decline.end()) {}
    std::string name() const override {
        std::string s = "test";
        for (Op op : decline_) s += (s == "test" ? ":decline=" : "+") + std::string(op_name(op));
        return s;
    }
    bool supports(Op op, GGMLType type) const override {
        return decline_.count(op) == 0 && CpuOps::supports(op, type);
    }
    void* alloc(size_t bytes) override { return host_alloc(bytes); }
    void free(void* p) noexcept override { host_free(p); }
    void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }

private:
    std::set<Op> decline_;
};

}  // namespace

std::unique_ptr<Backend> make_test_backend(ThreadPool& pool, const std::vector<Op>& decline) {
    return std::make_unique<TestBackend>(pool, decline);
}

}  // namespace aircache
