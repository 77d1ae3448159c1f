// backend/cpu_backend.h — the CPU kernels as backend ops (shared by the CPU backend and the test
// backend, which runs them on memory it treats as a device's).
#pragma once

#include "backend/backend.h"
#include "threadpool.h"

namespace aircache {

class CpuOps : public Backend {
public:
    bool runs_cpu_kernels() const override { return true; }
    explicit CpuOps(ThreadPool& pool);
    ThreadPool& pool() const { return pool_; }
    bool supports(Op op, GGMLType type) const override;
    uint64_t memory_available() const override { return host_memory_available(); }

    void matmul(const Tensor& w, const Tensor& x, const Tensor& y, const Tensor* bias, bool rowwise) override;
    void matmuls(const Tensor* const* w, const Tensor* const* y, const Tensor* const* bias, int count, const Tensor& x,
                 bool rowwise) override;
    void add(const Tensor& x, const Tensor& y) override;
    void mul(const Tensor& x, const Tensor& y) override;
    void scale(const Tensor& x, float s) override;
    void rms_norm(const Tensor& x, const Tensor* w, float eps, const Tensor& out) override;
    void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& out) override;
    void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& pos, const Tensor& inv_freq,
              const Tensor* pair_axis, const RopeParams& p) override;
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, int64_t n_head_kv,
                   int64_t head_dim, const Tensor* ranges, float scale, const Tensor& out) override;
    void attention_kv(const Tensor& q, int64_t n_head, const KVShape& kv, const Tensor& rows, float scale,
                      const Tensor& out) override;
    void kv_store(const Tensor& k, const Tensor& v, const KVShape& kv, const Tensor& rows) override;
    void kv_compact(void* k, void* v, const KVShape& kv, const std::vector<int32_t>& kept, int64_t n_kept) override;
    void activation(const Tensor& x, Activation act) override;
    void glu(const Tensor& gate, const Tensor& up, Activation act) override;
    void softmax(const Tensor& x) override;
    void get_rows(const Tensor& src, const Tensor& idx, const Tensor& dst) override;
    void set_rows(const Tensor& dst, const Tensor& idx, const Tensor& src) override;
    void concat(const std::vector<Tensor>& parts, const Tensor& out) override;
    void patch_embed(const Tensor& pixels, int64_t channels, int64_t height, int64_t width, int64_t patch,
                     const Tensor& w, const Tensor* bias, const Tensor& out) override;
    void avg_pool(const Tensor& x, int64_t height, int64_t width, int64_t k, const Tensor& out) override;

protected:
    static void* host_alloc(size_t bytes);
    static void host_free(void* p) noexcept;

private:
    ThreadPool& pool_;
};

}  // namespace aircache
