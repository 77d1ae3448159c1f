// backend.cu — the CUDA backend: device memory and the op table (backend/backend.h) over the
// kernel families of this directory, everything on one stream per backend. What it declares it
// runs (cuda_supports) is what the CPU-side test of the LLaVA path checks, and what tests/gpu
// checks op by op against the CPU backend.
#include <cstring>

#include "backend/backend.h"
#include "cuda_api.h"
#include "ops.cuh"
#include "quants.h"

namespace aircache {

namespace {

// The cache kernels read K and V of one type, F16 (true) or F32 (false); the engine refuses other
// caches on this backend, so anything else is an internal error.
bool one_type(const KVShape& kv) {
    if (kv.type_k != kv.type_v || (kv.type_k != GGMLType::F16 && kv.type_k != GGMLType::F32))
        throw Error("internal error: the CUDA KV-cache kernels need K and V both f16 or both f32");
    return kv.type_k == GGMLType::F16;
}

bool weight_type(GGMLType t) {
    switch (t) {
        case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16: case GGMLType::Q4_0: case GGMLType::Q4_1:
        case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q8_0: case GGMLType::Q2_K: case GGMLType::Q3_K:
        case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K:
            return true;
        default:
            return false;
    }
}

cuda::DeviceWeight device_weight(const Tensor& w) {
    cuda::DeviceWeight d;
    d.type = w.type;
    d.n_rows = w.rows;
    d.n_cols = w.cols;
    d.row_bytes = w.row_bytes;
    d.data = static_cast<const uint8_t*>(w.data);
    return d;
}

const float* f32(const Tensor* t) { return t && *t ? t->as<const float>() : nullptr; }

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(int device) : device_(device), ex_(device) {}
    ~CudaBackend() override {
        try {
            ex_.sync();
        } catch (...) {
        }
    }

    std::string name() const override { return strprintf("cuda:%d", device_); }
    bool supports(Op op, GGMLType type) const override { return cuda_supports(op, type); }
    int device_index() const override { return device_; }
    void* native_stream() const override { return ex_.stream(); }

    void* alloc(size_t bytes) override { return cuda::device_malloc(bytes, device_); }
    void free(void* p) noexcept override {
        try {
            ex_.sync();  // the stream may still use it
        } catch (...) {
        }
        cuda::device_free(p);
    }
    void upload(void* dst, const void* src, size_t bytes) override {
        cuda::DeviceGuard g(device_);
        ex_.upload(dst, src, bytes);
    }
    void download(void* dst, const void* src, size_t bytes) override {
        cuda::DeviceGuard g(device_);
        ex_.download(dst, src, bytes);
    }
    void copy(void* dst, const void* src, size_t bytes) override {
        if (bytes == 0 || dst == src) return;
        cuda::DeviceGuard g(device_);
        AC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ex_.stream()));
    }
    void sync() override {
        cuda::DeviceGuard g(device_);
        ex_.sync();
    }
    uint64_t memory_available() const override {
        size_t free_b = 0, total_b = 0;
        cuda::memory_info(device_, free_b, total_b);
        return free_b;
    }

    void matmul(const Tensor& w, const Tensor& x, const Tensor& y, const Tensor* bias, bool) override {
        cuda::DeviceGuard g(device_);
        cuda::matmul(ex_, device_weight(w), x.as<const float>(), x.rows, y.as<float>(), f32(bias));
    }
    void add(const Tensor& x, const Tensor& y) override {
        cuda::DeviceGuard g(device_);
        cuda::add(ex_, x.as<float>(), y.as<const float>(), x.numel(), y.rows == x.rows ? 0 : y.cols);
    }
    void mul(const Tensor& x, const Tensor& y) override {
        cuda::DeviceGuard g(device_);
        cuda::mul(ex_, x.as<float>(), y.as<const float>(), x.numel(), y.rows == x.rows ? 0 : y.cols);
    }
    void scale(const Tensor& x, float s) override {
        cuda::DeviceGuard g(device_);
        cuda::scale(ex_, x.as<float>(), s, x.numel());
    }
    void rms_norm(const Tensor& x, const Tensor* w, float eps, const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        cuda::rmsnorm(ex_, x.as<const float>(), f32(w), x.rows, x.cols, eps, out.as<float>());
    }
    void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        cuda::layernorm(ex_, x.as<const float>(), f32(w), f32(b), x.rows, x.cols, eps, out.as<float>());
    }
    void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& pos, const Tensor& inv_freq,
              const Tensor* pair_axis, const RopeParams& p) override {
        cuda::DeviceGuard g(device_);
        cuda::rope(ex_, x.as<float>(), x.rows, n_heads, head_dim, p.n_rot, pos.as<const int32_t>(), p.n_axes,
                   pair_axis && *pair_axis ? pair_axis->as<const int32_t>() : nullptr, inv_freq.as<const float>(),
                   p.style == RopeStyle::Neox);
    }
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, int64_t n_head_kv,
                   int64_t head_dim, const Tensor* ranges, float scale, const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        cuda::attention_dense(ex_, q.as<const float>(), k.as<const float>(), v.as<const float>(), q.rows, k.rows,
                              static_cast<int>(n_head), static_cast<int>(n_head_kv), static_cast<int>(head_dim),
                              ranges && *ranges ? ranges->as<const int32_t>() : nullptr, scale, out.as<float>());
    }
    void attention_kv(const Tensor& q, int64_t n_head, const KVShape& kv, const Tensor& rows, float scale,
                      const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        cuda::attention_cache(ex_, q.as<const float>(), q.rows, static_cast<int>(n_head), kv.n_head_kv, kv.head_dim,
                              rows.as<const KVRow>(), one_type(kv), scale, out.as<float>());
    }
    void kv_store(const Tensor& k, const Tensor& v, const KVShape& kv, const Tensor& rows) override {
        cuda::DeviceGuard g(device_);
        cuda::kv_store(ex_, k.as<const float>(), v.as<const float>(), k.rows, kv.n_head_kv, kv.head_dim,
                       rows.as<const KVRow>(), one_type(kv));
    }
    void kv_compact(void* k, void* v, const KVShape& kv, const std::vector<int32_t>& kept, int64_t n_kept) override {
        cuda::DeviceGuard g(device_);
        if (n_kept <= 0) return;
        cuda::DeviceBuffer d = cuda::upload_buffer(ex_, kept.data(), sizeof(int32_t) * kept.size());
        cuda::kv_compact(ex_, k, v, d.as<int32_t>(), n_kept, kv.n_head_kv, kv.head_dim, kv.capacity, one_type(kv));
    }
    void activation(const Tensor& x, Activation act) override {
        cuda::DeviceGuard g(device_);
        cuda::activation(ex_, x.as<float>(), x.numel(), static_cast<int>(act));
    }
    void glu(const Tensor& gate, const Tensor& up, Activation act) override {
        cuda::DeviceGuard g(device_);
        cuda::glu(ex_, gate.as<float>(), up.as<const float>(), gate.numel(), static_cast<int>(act));
    }
    void softmax(const Tensor& x) override {
        cuda::DeviceGuard g(device_);
        cuda::softmax(ex_, x.as<float>(), x.rows, x.cols);
    }
    void get_rows(const Tensor& src, const Tensor& idx, const Tensor& dst) override {
        cuda::DeviceGuard g(device_);
        cuda::gather_rows(ex_, src.as<const float>(), idx.as<const int32_t>(), dst.rows, dst.cols, dst.as<float>());
    }
    void set_rows(const Tensor& dst, const Tensor& idx, const Tensor& src) override {
        cuda::DeviceGuard g(device_);
        cuda::scatter_rows(ex_, dst.as<float>(), idx.as<const int32_t>(), src.rows, src.cols, src.as<const float>());
    }
    void concat(const std::vector<Tensor>& parts, const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        size_t off = 0;
        for (const Tensor& p : parts) {
            if (out.rows > 0 && p.row_bytes > 0)
                AC_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<uint8_t*>(out.data) + off, out.row_bytes, p.data,
                                                p.row_bytes, p.row_bytes, static_cast<size_t>(out.rows),
                                                cudaMemcpyDeviceToDevice, ex_.stream()));
            off += p.row_bytes;
        }
    }
    void patch_embed(const Tensor& pixels, int64_t channels, int64_t height, int64_t width, int64_t patch,
                     const Tensor& w, const Tensor* bias, const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        cuda::patch_embed(ex_, pixels.as<const float>(), channels, height, width, patch, device_weight(w), f32(bias),
                          out.as<float>());
    }
    void avg_pool(const Tensor& x, int64_t height, int64_t width, int64_t k, const Tensor& out) override {
        cuda::DeviceGuard g(device_);
        cuda::avg_pool(ex_, x.as<const float>(), height, width, x.cols, k, out.as<float>());
    }

private:
    int device_;
    mutable cuda::Exec ex_;
};

}  // namespace

bool cuda_supports(Op op, GGMLType type) {
    switch (op) {
        case Op::MatMul:
        case Op::PatchEmbed: return weight_type(type);
        case Op::AttentionKV:
        case Op::KVStore:
        case Op::KVCompact: return type == GGMLType::F16 || type == GGMLType::F32;
        case Op::Count: return false;
        default: return type == GGMLType::F32;
    }
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
    if (device < 0 || device >= cuda::device_count())
        throw UnsupportedError(strprintf("CUDA device %d does not exist (%d usable)", device, cuda::device_count()));
    return std::make_unique<CudaBackend>(device);
}

}  // namespace aircache
