// cpu_backend.cpp — the CPU backend: host memory and the kernels of cpu/ (SIMD tables chosen at
// run time). Everything is supported: it is the fallback of every other backend and the oracle the
// CUDA ops are tested against. The test backend (test_backend.cpp) reuses these ops on memory it
// pretends is a device's.
#include "backend/cpu_backend.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <utility>
#include <cstdlib>
#include <cstring>
#include <new>

#include "common.h"
#include "cpu/ops.h"
#include "cpu/repack.h"
#include "fp16.h"
#include "quants.h"

namespace aircache {

namespace {

const float* f32(const Tensor* t) { return t && *t ? t->as<const float>() : nullptr; }

}  // namespace

CpuOps::CpuOps(ThreadPool& pool) : pool_(pool) {}

bool CpuOps::supports(Op op, GGMLType type) const {
    switch (op) {
        case Op::MatMul: return type_info(type).supported;
        case Op::AttentionKV:
        case Op::KVStore:
        case Op::KVCompact:
            return type == GGMLType::F16 || type == GGMLType::F32 || type == GGMLType::Q8_0 || type == GGMLType::Q4_0;
        default: return type == GGMLType::F32 || type == GGMLType::I32;
    }
}

namespace {

// A number from the first line of a file ("max" or unreadable: UINT64_MAX).
uint64_t read_u64(const char* path) {
    FILE* f = std::fopen(path, "r");
    if (!f) return UINT64_MAX;
    unsigned long long v = 0;
    const int n = std::fscanf(f, "%llu", &v);
    std::fclose(f);
    return n == 1 ? static_cast<uint64_t>(v) : UINT64_MAX;
}

}  // namespace

uint64_t host_memory_available() {
    uint64_t avail = UINT64_MAX;
    // AIRCACHE_MEMORY_LIMIT: the host memory this process may use, in bytes or with a K/M/G suffix
    if (const char* env = std::getenv("AIRCACHE_MEMORY_LIMIT"); env && *env) {
        char* end = nullptr;
        const double v = std::strtod(env, &end);
        const char u = end ? static_cast<char>(std::toupper(static_cast<unsigned char>(*end))) : 0;
        const double mult = u == 'K' ? 1024.0 : u == 'M' ? 1048576.0 : u == 'G' ? 1073741824.0 : 1.0;
        if (end != env && v >= 0.0) avail = static_cast<uint64_t>(v * mult);
    }
    if (FILE* f = std::fopen("/proc/meminfo", "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, f)) {
            unsigned long long kb = 0;
            if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = std::min(avail, static_cast<uint64_t>(kb) * 1024);
                break;
            }
        }
        std::fclose(f);
    }
    // cgroup v2, then v1
    for (auto [lim, use] : {std::pair<const char*, const char*>{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                            {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
        const uint64_t l = read_u64(lim), u = read_u64(use);
        if (l != UINT64_MAX && u != UINT64_MAX && l < (uint64_t(1) << 60)) {
            avail = std::min(avail, l > u ? l - u : 0);
            break;
        }
    }
    return avail;
}

void* CpuOps::host_alloc(size_t bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes == 0 ? 64 : bytes) != 0 || !p)
        throw OutOfMemory(strprintf("cannot allocate %s of host memory", format_bytes(bytes).c_str()));
    return p;
}

void CpuOps::host_free(void* p) noexcept { std::free(p); }

void CpuOps::matmul(const Tensor& w, const Tensor& x, const Tensor& y, const Tensor* bias, bool rowwise) {
    cpu::matmul(cpu::weight_view(w), x.as<const float>(), x.rows, y.as<float>(), pool_, f32(bias), rowwise);
}

void CpuOps::matmuls(const Tensor* const* w, const Tensor* const* y, const Tensor* const* bias, int count, const Tensor& x,
                     bool rowwise) {
    constexpr int kMax = kMaxMatmuls;
    if (count > kMax) {  // (Ops::matmuls never passes more)
        Backend::matmuls(w, y, bias, count, x, rowwise);
        return;
    }
    Weight views[kMax];
    const Weight* W[kMax];
    float* Y[kMax];
    const float* B[kMax];
    for (int i = 0; i < count; ++i) {
        views[i] = cpu::weight_view(*w[i]);
        W[i] = &views[i];
        Y[i] = y[i]->as<float>();
        B[i] = f32(bias[i]);
    }
    cpu::matmuls(W, count, x.as<const float>(), x.rows, Y, pool_, B, rowwise);
}

void CpuOps::add(const Tensor& x, const Tensor& y) {
    float* a = x.as<float>();
    const float* b = y.as<const float>();
    if (y.rows == x.rows) {
        cpu::add(a, b, x.numel());
        return;
    }
    for (int64_t t = 0; t < x.rows; ++t) cpu::add(a + t * x.cols, b, x.cols);
}

void CpuOps::mul(const Tensor& x, const Tensor& y) {
    float* a = x.as<float>();
    const float* b = y.as<const float>();
    const bool bcast = y.rows != x.rows;
    pool_.parallel_for(x.rows, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float* r = a + t * x.cols;
            const float* s = bcast ? b : b + t * x.cols;
            for (int64_t i = 0; i < x.cols; ++i) r[i] *= s[i];
        }
    });
}

void CpuOps::scale(const Tensor& x, float s) {
    float* a = x.as<float>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) a[i] *= s;
}

void CpuOps::rms_norm(const Tensor& x, const Tensor* w, float eps, const Tensor& out) {
    cpu::rmsnorm(x.as<const float>(), f32(w), x.rows, x.cols, eps, out.as<float>(), pool_);
}

void CpuOps::layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& out) {
    cpu::layernorm(x.as<const float>(), f32(w), f32(b), x.rows, x.cols, eps, out.as<float>(), pool_);
}

void CpuOps::rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& pos, const Tensor& inv_freq,
                  const Tensor* pair_axis, const RopeParams& p) {
    cpu::rope(x.as<float>(), x.rows, n_heads, head_dim, p.n_rot, pos.as<const int32_t>(), p.n_axes,
              inv_freq.as<const float>(), pair_axis && *pair_axis ? pair_axis->as<const int32_t>() : nullptr, p.style,
              pool_);
}

void CpuOps::attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, int64_t n_head_kv,
                       int64_t head_dim, const Tensor* ranges, float scale, const Tensor& out) {
    const int64_t T = q.rows;
    const int32_t *lo = nullptr, *hi = nullptr;
    std::vector<int32_t> l, h;
    if (ranges && *ranges) {
        const int32_t* r = ranges->as<const int32_t>();
        l.resize(static_cast<size_t>(T));
        h.resize(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) {
            l[static_cast<size_t>(t)] = r[2 * t];
            h[static_cast<size_t>(t)] = r[2 * t + 1];
        }
        lo = l.data();
        hi = h.data();
    }
    cpu::attention_dense(q.as<const float>(), k.as<const float>(), v.as<const float>(), T, k.rows, n_head, n_head_kv,
                         head_dim, lo, hi, scale, out.as<float>(), pool_);
}

void CpuOps::attention_kv(const Tensor& q, int64_t n_head, const KVShape& kv, const Tensor& rows, float scale,
                          const Tensor& out) {
    cpu::attention_kv(q.as<const float>(), q.rows, n_head, kv, rows.as<const KVRow>(), scale, out.as<float>(), pool_);
}

void CpuOps::kv_store(const Tensor& k, const Tensor& v, const KVShape& kv, const Tensor& rows) {
    const KVRow* r = rows.as<const KVRow>();
    const int64_t H = kv.n_head_kv, D = kv.head_dim, T = k.rows;
    const size_t kb = kv.k_row_bytes(), vb = kv.v_row_bytes();
    // F16 rows through the kernel table's converter (the same rounding as quantize_row's, vectorized)
    const auto f32_to_f16 = cpu::kernels().f32_to_f16;
    auto store = [&](GGMLType type, const float* x, uint8_t* dst) {
        if (type == GGMLType::F16 && f32_to_f16) f32_to_f16(x, reinterpret_cast<uint16_t*>(dst), D);
        else quantize_row(type, x, dst, D);
    };
    pool_.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            if (r[t].dst < 0) continue;
            for (int64_t h = 0; h < H; ++h) {
                const size_t row = static_cast<size_t>(h) * r[t].cap + static_cast<size_t>(r[t].dst);
                store(kv.type_k, k.as<const float>() + (t * H + h) * D, static_cast<uint8_t*>(r[t].k) + row * kb);
                store(kv.type_v, v.as<const float>() + (t * H + h) * D, static_cast<uint8_t*>(r[t].v) + row * vb);
            }
        }
    }, 16);
}

void CpuOps::kv_compact(void* k, void* v, const KVShape& kv, const std::vector<int32_t>& kept, int64_t n_kept) {
    for (int h = 0; h < kv.n_head_kv; ++h) {
        const int32_t* kh = kept.data() + static_cast<size_t>(h) * n_kept;
        for (void* buf : {k, v}) {
            const size_t row = buf == k ? kv.k_row_bytes() : kv.v_row_bytes();
            uint8_t* base = static_cast<uint8_t*>(buf) + static_cast<size_t>(h) * kv.capacity * row;
            for (int64_t i = 0; i < n_kept; ++i)  // i <= kh[i]: moving forward never overwrites a row still to be read
                if (kh[i] != i) std::memmove(base + static_cast<size_t>(i) * row, base + static_cast<size_t>(kh[i]) * row, row);
        }
    }
}

void CpuOps::activation(const Tensor& x, Activation act) { cpu::activation(x.as<float>(), x.numel(), act, pool_); }

void CpuOps::glu(const Tensor& gate, const Tensor& up, Activation act) {
    cpu::glu(gate.as<float>(), up.as<const float>(), gate.numel(), act, pool_);
}

void CpuOps::softmax(const Tensor& x) { cpu::softmax(x.as<float>(), x.rows, x.cols, pool_); }

void CpuOps::get_rows(const Tensor& src, const Tensor& idx, const Tensor& dst) {
    const int32_t* ix = idx.as<const int32_t>();
    for (int64_t i = 0; i < dst.rows; ++i)
        std::memcpy(static_cast<uint8_t*>(dst.data) + static_cast<size_t>(i) * dst.row_bytes,
                    static_cast<const uint8_t*>(src.data) + static_cast<size_t>(ix[i]) * src.row_bytes, dst.row_bytes);
}

void CpuOps::set_rows(const Tensor& dst, const Tensor& idx, const Tensor& src) {
    const int32_t* ix = idx.as<const int32_t>();
    for (int64_t i = 0; i < src.rows; ++i)
        std::memcpy(static_cast<uint8_t*>(dst.data) + static_cast<size_t>(ix[i]) * dst.row_bytes,
                    static_cast<const uint8_t*>(src.data) + static_cast<size_t>(i) * src.row_bytes, src.row_bytes);
}

void CpuOps::concat(const std::vector<Tensor>& parts, const Tensor& out) {
    size_t off = 0;
    for (const Tensor& p : parts) {
        for (int64_t t = 0; t < out.rows; ++t)
            std::memcpy(static_cast<uint8_t*>(out.data) + static_cast<size_t>(t) * out.row_bytes + off,
                        static_cast<const uint8_t*>(p.data) + static_cast<size_t>(t) * p.row_bytes, p.row_bytes);
        off += p.row_bytes;
    }
}

void CpuOps::patch_embed(const Tensor& pixels, int64_t C, int64_t Hh, int64_t Ww, int64_t P, const Tensor& w,
                         const Tensor* bias, const Tensor& out) {
    // patches -> [NP][C*P*P] (c, ky, kx order, as the conv kernel), then the embedding matmul
    const int64_t ny = Hh / P, nx = Ww / P, NP = ny * nx;
    std::vector<float> cols(static_cast<size_t>(NP * C * P * P));
    const float* px = pixels.as<const float>();
    for (int64_t py = 0; py < ny; ++py)
        for (int64_t qx = 0; qx < nx; ++qx) {
            float* dst = cols.data() + (py * nx + qx) * C * P * P;
            for (int64_t ch = 0; ch < C; ++ch)
                for (int64_t ky = 0; ky < P; ++ky)
                    std::memcpy(dst + (ch * P + ky) * P, px + (ch * Hh + py * P + ky) * Ww + qx * P, sizeof(float) * P);
        }
    cpu::matmul(cpu::weight_view(w), cols.data(), NP, out.as<float>(), pool_, f32(bias));
}

void CpuOps::avg_pool(const Tensor& x, int64_t Hh, int64_t Ww, int64_t k, const Tensor& out) {
    const int64_t C = x.cols, oy = Hh / k, ox = Ww / k;
    const float* in = x.as<const float>();
    float* o = out.as<float>();
    const float inv = 1.0f / static_cast<float>(k * k);
    pool_.parallel_for(oy * ox, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
            const int64_t y = r / ox, xx = r % ox;
            float* dst = o + r * C;
            std::fill(dst, dst + C, 0.0f);
            for (int64_t ky = 0; ky < k; ++ky)
                for (int64_t kx = 0; kx < k; ++kx) {
                    const float* src = in + ((y * k + ky) * Ww + xx * k + kx) * C;
                    for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
                }
            for (int64_t c = 0; c < C; ++c) dst[c] *= inv;
        }
    });
}

namespace {

class CpuBackend final : public CpuOps {
public:
    explicit CpuBackend(ThreadPool& pool) : CpuOps(pool) {}
    std::string name() const override { return "cpu"; }
    bool is_host() const override { return true; }
    void* alloc(size_t bytes) override { return host_alloc(bytes); }
    void free(void* p) noexcept override { host_free(p); }
    void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(ThreadPool& pool) { return std::make_unique<CpuBackend>(pool); }

}  // namespace aircache
