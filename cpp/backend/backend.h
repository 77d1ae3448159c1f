// backend/backend.h — the op table every backend implements, tensor handles that know their device,
// and device memory.
//
//   std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
//   Buffer b(*cpu, bytes);                               // memory on a backend (freed with b)
//   Tensor x = b.tensor(GGMLType::F32, rows, cols);      // a view: [rows][cols], row-major
//   cpu->rms_norm(x, &w, 1e-5f, out);                    // one op, every tensor on that backend
//
// Models never call a backend directly: they call Ops (backend/ops.h), which runs an op on the
// backend a layer was placed on, or on the CPU when that backend declines it (supports()).
// Backends: the CPU (cpu_backend.cpp: the SIMD kernel tables of cpu/), CUDA (cuda/backend.cu: the
// kernel families of cuda/*.cu) and a host-memory test backend (test_backend.cpp) that behaves like
// a device (its memory is reached only through upload/download) and can decline chosen ops.
//
// Shapes: every tensor is 2-D [rows][cols] with contiguous rows. A weight is [n_out][n_in] in its
// GGUF type (rows of ggml blocks); activations are F32 [tokens][features] (heads are consecutive
// runs of head_dim features); positions and indices are I32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "quant_blocks.h"

namespace aircache {

class Backend;
class ThreadPool;

// Activations by name (values are shared with the CUDA kernels).
enum class Activation : int { GELU = 0, QuickGELU = 1, SiLU = 2, GELUTanh = 3 };
const char* activation_name(Activation a);       // "gelu", "quick_gelu", "silu", "gelu_tanh"
Activation activation_from_name(const std::string& s);  // InputError listing the valid names

// RoPE pair order: Norm = adjacent pairs (x[2i], x[2i+1]) (llama.cpp's GGUF convention, Q/K rows
// permuted by the converter); Neox = halves (x[i], x[i + n_rot/2]) (HF's rotate_half order).
enum class RopeStyle : int { Norm = 0, Neox = 1 };

// The ops of the table. Adding one: an entry here and in op_name(), a virtual below, the CPU
// implementation (cpu_backend.cpp), a CUDA one (cuda/backend.cu) or a `false` in its supports(),
// the dispatcher's fallback (ops.cpp), and an op test against the CPU (tests/test_backend_ops.py,
// tests/gpu/test_cuda_ops.py).
enum class Op : int {
    MatMul,       // y = x W^T (+ bias), W of any supported weight type
    Add,          // x += y (y the same shape, or one row added to every row)
    Mul,          // x *= y (likewise)
    Scale,        // x *= s
    RmsNorm,      // out = x / sqrt(mean(x^2) + eps) (* w)
    LayerNorm,    // out = (x - mean) / sqrt(var + eps) (* w + b)
    Rope,         // rotary embedding in place: 1-D, NeoX, multi-axis sections (M-RoPE), 2-D
    Attention,    // softmax(q k^T * scale) v over dense k/v, each row a key range (full, windows)
    AttentionKV,  // the same over KV-cache layers: each row its sequence's cache and key range
    KVStore,      // each row's K/V into its sequence's cache layer (converted to the cache type)
    KVCompact,    // kept rows of each KV head to the front, in order
    Act,          // x = act(x)
    Glu,          // gate = act(gate) * up
    Softmax,      // each row, in place
    GetRows,      // dst[i] = src[idx[i]]
    SetRows,      // dst[idx[i]] = src[i]
    Concat,       // out = [a | b | ...] along columns
    PatchEmbed,   // the patch-embedding convolution (kernel = stride = patch): image -> patch rows
    AvgPool,      // 2-D average pooling of a grid of rows
    Count
};
const char* op_name(Op op);
Op op_from_name(const std::string& s);  // InputError listing the valid names
std::vector<Op> all_ops();

// A view of a 2-D tensor in some backend's memory (it owns nothing: see Buffer).
namespace cpu {
struct PackedWeight;
}

struct Tensor {
    Backend* be = nullptr;          // whose memory holds the data
    void* data = nullptr;
    // A weight's rows repacked for the CPU kernels (host parameters, cpu/repack.h); ignored by
    // everything but the CPU matmul, which uses it only when it was made from these very rows.
    const cpu::PackedWeight* packed = nullptr;
    GGMLType type = GGMLType::F32;
    int64_t rows = 0, cols = 0;
    size_t row_bytes = 0;           // bytes of one row

    explicit operator bool() const { return data != nullptr; }
    int64_t numel() const { return rows * cols; }
    size_t bytes() const { return row_bytes * static_cast<size_t>(rows); }
    template <class T> T* as() const { return static_cast<T*>(data); }
    // Rows [r0, r0 + n) of the same memory.
    Tensor slice_rows(int64_t r0, int64_t n) const;
    // The same bytes seen as [rows][cols] of the same type (rows * cols must match).
    Tensor reshape(int64_t rows, int64_t cols) const;
};

// A view of `data` (on `be`) as [rows][cols] of `type`.
Tensor make_tensor(Backend* be, void* data, GGMLType type, int64_t rows, int64_t cols);
size_t tensor_row_bytes(GGMLType type, int64_t cols);

// Memory on a backend, freed on destruction (move-only).
class Buffer {
public:
    Buffer() = default;
    Buffer(Backend& be, size_t bytes);
    ~Buffer();
    Buffer(Buffer&& o) noexcept;
    Buffer& operator=(Buffer&& o) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    Backend* backend() const { return be_; }
    void* data() const { return p_; }
    size_t bytes() const { return bytes_; }
    Tensor tensor(GGMLType type, int64_t rows, int64_t cols) const;
    // Grows (contents lost) to at least `bytes` on `be`.
    void reserve(Backend& be, size_t bytes);

private:
    Backend* be_ = nullptr;
    void* p_ = nullptr;
    size_t bytes_ = 0;
};

// One query row of an attention over KV-cache layers (the rows table of AttentionKV and KVStore,
// built on the host by the forward and uploaded once per layer group).
struct KVRow {
    void* k = nullptr;    // the row's cache layer: K and V are [n_head_kv][cap][head_dim] of the cache type
    void* v = nullptr;
    // Optional logit bias of the layer's keys, [n_head_kv][cap] floats (null: none): added to the scaled
    // score of key j of KV head g (the log of the number of prompt rows a merged row stands for).
    const float* bias = nullptr;
    int32_t lo = 0;       // keys [lo, hi) are visible to the row (its own included)
    int32_t hi = 0;
    int32_t dst = -1;     // where the row's own K/V go (KVStore; -1: nowhere)
    int32_t cap = 0;      // rows of one KV head's run in that layer (its allocation: layers and sequences differ)
};
static_assert(sizeof(KVRow) == 40, "KVRow is shared with the CUDA kernels");
// Columns of a rows table seen as an I32 tensor.
constexpr int64_t kKVRowInts = static_cast<int64_t>(sizeof(KVRow) / sizeof(int32_t));

// Bytes of one KV-cache row of `head_dim` elements of `type` (F16, F32, or the 32-element blocks of
// Q8_0 / Q4_0).
inline size_t kv_row_bytes(GGMLType type, int64_t head_dim) {
    switch (type) {
        case GGMLType::F32: return static_cast<size_t>(head_dim) * 4;
        case GGMLType::Q8_0: return static_cast<size_t>(head_dim / 32) * 34;
        case GGMLType::Q4_0: return static_cast<size_t>(head_dim / 32) * 18;
        default: return static_cast<size_t>(head_dim) * 2;
    }
}

struct KVShape {
    int64_t capacity = 0;  // rows of one KV head's run in one layer (a rows table's rows carry their own: KVRow::cap)
    int n_head_kv = 0;
    int head_dim = 0;
    GGMLType type_k = GGMLType::F16;  // F16, F32, Q8_0 or Q4_0 (head_dim a multiple of 32)
    GGMLType type_v = GGMLType::F16;
    size_t k_row_bytes() const { return kv_row_bytes(type_k, head_dim); }
    size_t v_row_bytes() const { return kv_row_bytes(type_v, head_dim); }
};

// RoPE parameters; the tensors (on the op's backend) carry the rest: inv_freq F32 [n_rot/2],
// positions I32 [tokens][n_axes], pair_axis I32 [n_rot/2] (which position axis each rotary pair
// turns with: M-RoPE sections, 2-D vision RoPE; absent: axis 0).
struct RopeParams {
    RopeStyle style = RopeStyle::Norm;
    int64_t n_rot = 0;    // rotated dimensions of each head (even)
    int n_axes = 1;       // position components per token
};

// The most projections one Backend::matmuls call takes (Ops::matmuls runs longer lists one by one).
constexpr int kMaxMatmuls = 8;

class Backend {
public:
    virtual ~Backend() = default;

    virtual std::string name() const = 0;   // "cpu", "cuda:0", "test"
    // Host memory the CPU kernels may read in place (the CPU backend only).
    virtual bool is_host() const { return false; }
    // Whether its ops are the CPU's kernels (the CPU backend and the test backend): parameters placed
    // on it get the CPU kernels' repacked weights (cpu/repack.h).
    virtual bool runs_cpu_kernels() const { return false; }
    // Whether this backend runs `op` for `type` (the weight type of MatMul, the cache type of the KV
    // ops, the element type otherwise). Declined ops run on the CPU (ops.h).
    virtual bool supports(Op op, GGMLType type) const = 0;

    // --- memory ---
    virtual void* alloc(size_t bytes) = 0;            // OutOfMemory naming the bytes asked and free
    virtual void free(void* p) noexcept = 0;
    virtual void upload(void* dst, const void* src, size_t bytes) = 0;    // host -> this backend
    virtual void download(void* dst, const void* src, size_t bytes) = 0;  // this backend -> host (waits)
    virtual void copy(void* dst, const void* src, size_t bytes) = 0;      // within this backend
    virtual void sync() {}
    // Bytes this backend can still allocate (host: MemAvailable and the cgroup's limit; a device:
    // its free memory): large allocations are checked against it before they are made.
    virtual uint64_t memory_available() const = 0;
    // A CUDA backend's device ordinal and cudaStream_t (the probes' device halves); -1 / null otherwise.
    virtual int device_index() const { return -1; }
    virtual void* native_stream() const { return nullptr; }

    // --- ops (every tensor on this backend; shapes in the Op comments; checked by the dispatcher) ---
    virtual void matmul(const Tensor& w, const Tensor& x, const Tensor& y, const Tensor* bias, bool rowwise) = 0;
    // y[i] = x w[i]^T (+ bias[i], each null or present) for `count` <= kMaxMatmuls weights over the
    // same x (Q/K/V, gate/up): each y[i] exactly what matmul gives it; a backend may run them together.
    virtual void matmuls(const Tensor* const* w, const Tensor* const* y, const Tensor* const* bias, int count, const Tensor& x,
                         bool rowwise) {
        for (int i = 0; i < count; ++i) matmul(*w[i], x, *y[i], bias[i], rowwise);
    }
    virtual void add(const Tensor& x, const Tensor& y) = 0;
    virtual void mul(const Tensor& x, const Tensor& y) = 0;
    virtual void scale(const Tensor& x, float s) = 0;
    virtual void rms_norm(const Tensor& x, const Tensor* w, float eps, const Tensor& out) = 0;
    virtual void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& out) = 0;
    // x [T][n_heads * head_dim], in place.
    virtual void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& pos, const Tensor& inv_freq,
                      const Tensor* pair_axis, const RopeParams& p) = 0;
    // q [T][n_head * D], k/v [S][n_head_kv * D], out [T][n_head * D]; ranges I32 [T][2]: row t sees
    // keys [lo, hi) (null: every key).
    virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, int64_t n_head_kv,
                           int64_t head_dim, const Tensor* ranges, float scale, const Tensor& out) = 0;
    // q, out [T][n_head * head_dim]; rows: KVRow [T] (on this backend).
    virtual void attention_kv(const Tensor& q, int64_t n_head, const KVShape& kv, const Tensor& rows, float scale,
                              const Tensor& out) = 0;
    // k, v [T][n_head_kv * head_dim] F32 into each row's cache layer at rows[t].dst.
    virtual void kv_store(const Tensor& k, const Tensor& v, const KVShape& kv, const Tensor& rows) = 0;
    // kept: host [n_head_kv][n_kept], each head's list strictly ascending.
    virtual void kv_compact(void* k, void* v, const KVShape& kv, const std::vector<int32_t>& kept, int64_t n_kept) = 0;
    virtual void activation(const Tensor& x, Activation act) = 0;
    virtual void glu(const Tensor& gate, const Tensor& up, Activation act) = 0;
    virtual void softmax(const Tensor& x) = 0;
    virtual void get_rows(const Tensor& src, const Tensor& idx, const Tensor& dst) = 0;
    virtual void set_rows(const Tensor& dst, const Tensor& idx, const Tensor& src) = 0;
    virtual void concat(const std::vector<Tensor>& parts, const Tensor& out) = 0;
    // pixels F32 [channels * height][width] (CHW); w [n_out][channels * patch * patch] (c, ky, kx
    // order, a conv kernel); out [(height/patch) * (width/patch)][n_out], patches row-major.
    virtual void patch_embed(const Tensor& pixels, int64_t channels, int64_t height, int64_t width, int64_t patch,
                             const Tensor& w, const Tensor* bias, const Tensor& out) = 0;
    // x [height * width][C] (row-major grid) -> out [(height/k) * (width/k)][C].
    virtual void avg_pool(const Tensor& x, int64_t height, int64_t width, int64_t k, const Tensor& out) = 0;

    // (op, type) pairs dispatched to this backend so far (tests: what a model path uses).
    std::set<std::pair<Op, GGMLType>>& used() { return used_; }
    // Print one line on stderr the first time an op falls back to the CPU.
    bool verbose = false;
    std::set<std::pair<Op, GGMLType>> reported_fallbacks;

private:
    std::set<std::pair<Op, GGMLType>> used_;
};

// The host memory a process can still use: MemAvailable, the cgroup's limit minus its usage when
// there is one, and $AIRCACHE_MEMORY_LIMIT (bytes, or with a K/M/G suffix) when set; the smallest
// (UINT64_MAX when none can be read).
uint64_t host_memory_available();

// --- factories ---
std::unique_ptr<Backend> make_cpu_backend(ThreadPool& pool);
// A backend with separate (host) memory reached only through upload/download, whose ops are the
// CPU's, declining `decline` (tests: the device paths and the CPU fallback without a GPU).
std::unique_ptr<Backend> make_test_backend(ThreadPool& pool, const std::vector<Op>& decline);
// CUDA device `device` (cuda/backend.cu); UnsupportedError in a build without CUDA.
std::unique_ptr<Backend> make_cuda_backend(int device);
// What the CUDA backend declares for (op, type), whether or not a device is present (false without
// CUDA in the build): the table its supports() answers from.
bool cuda_supports(Op op, GGMLType type);

}  // namespace aircache
