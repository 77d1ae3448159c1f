// backend/ops.h — what model code calls: model parameters placed on backends, and the dispatcher
// that runs each op where its tensors are, or on the CPU when that backend declines it.
//
//   Ops ops(compute.layer(l), compute.cpu());
//   ops.rms_norm(x, &L.attn_norm, eps, xb);          // on the layer's backend
//   ops.matmul(L.wq, xb, q, &L.bq);
//
// A declined op (Backend::supports() false) is never a load failure: its tensor arguments are
// copied to host memory, the CPU backend runs it, its outputs are copied back (one line on stderr
// the first time, when the backend is verbose). Parameters are read from their host copy then.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace aircache {

// A model parameter: a weight matrix in its file's type (a view of the mapped file) or a small
// owned array (norm gains and biases dequantized to F32, RoPE tables), with copies on the backends
// it was placed on. Copies of a Param share its device memory (a tied output projection is
// uploaded once).
class Param {
public:
    Param() = default;
    // A view of host memory that outlives the Param (the mapped GGUF file). `file_mapped`: the bytes
    // are a read-only file mapping, so once the CPU kernels' repacked copy is made (place() on a
    // host backend) their pages are handed back to the OS (a later reader faults them in again).
    static Param view(std::string name, const void* data, GGMLType type, int64_t rows, int64_t cols,
                      bool file_mapped = false);
    static Param f32(std::string name, std::vector<float> data, int64_t rows = 1);
    static Param i32(std::string name, std::vector<int32_t> data, int64_t rows = 1);

    explicit operator bool() const { return static_cast<bool>(host_); }
    const std::string& name() const { return name_; }
    const Tensor& host() const { return host_; }
    // The copy on `be` (the host data when `be` reads host memory); an internal error when the
    // parameter was not placed there.
    const Tensor& on(const Backend& be) const;
    // Uploads a copy to `be` (nothing for host backends or when one exists); returns the bytes uploaded.
    size_t place(Backend& be);
    const float* host_f32() const { return host_ ? host_.as<const float>() : nullptr; }

private:
    struct Copy {
        Backend* be;
        std::shared_ptr<Buffer> buf;
        Tensor t;
    };
    std::string name_;
    Tensor host_;
    std::shared_ptr<std::vector<uint8_t>> owned_;
    bool file_mapped_ = false;
    std::shared_ptr<std::vector<Copy>> copies_ = std::make_shared<std::vector<Copy>>();
    // the CPU kernels' repacked rows (made when first placed on a host backend; shared by copies)
    std::shared_ptr<std::shared_ptr<const cpu::PackedWeight>> packed_ =
        std::make_shared<std::shared_ptr<const cpu::PackedWeight>>();
};

// The rows table of AttentionKV / KVStore: built on the host, `table` its copy on the backend.
struct KVRows {
    KVShape shape;
    std::vector<KVRow> host;
    Tensor table;
};

class Ops {
public:
    Ops(Backend& be, Backend& cpu) : be_(be), cpu_(cpu) {}
    Backend& backend() const { return be_; }

    void matmul(const Param& w, const Tensor& x, const Tensor& y, const Param* bias = nullptr, bool rowwise = false);
    // Several projections of the same x (Q/K/V, gate/up): each y exactly what matmul gives it, run
    // together where the backend can (the CPU: one job, the activations quantized once).
    struct Proj {
        const Param* w;
        const Tensor* y;
        const Param* bias = nullptr;
    };
    void matmuls(const Tensor& x, std::initializer_list<Proj> projs, bool rowwise = false);
    void add(const Tensor& x, const Tensor& y);
    void add(const Tensor& x, const Param& y);
    void mul(const Tensor& x, const Tensor& y);
    void mul(const Tensor& x, const Param& y);
    void scale(const Tensor& x, float s);
    void rms_norm(const Tensor& x, const Param* w, float eps, const Tensor& out);
    void layer_norm(const Tensor& x, const Param* w, const Param* b, float eps, const Tensor& out);
    void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& pos, const Param& inv_freq,
              const Param* pair_axis, const RopeParams& p);
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, int64_t n_head_kv,
                   int64_t head_dim, const Tensor* ranges, float scale, const Tensor& out);
    void attention_kv(const Tensor& q, int64_t n_head, const KVRows& rows, float scale, const Tensor& out);
    void kv_store(const Tensor& k, const Tensor& v, const KVRows& rows);
    void activation(const Tensor& x, Activation act);
    void glu(const Tensor& gate, const Tensor& up, Activation act);
    void softmax(const Tensor& x);
    void get_rows(const Tensor& src, const Tensor& idx, const Tensor& dst);
    void set_rows(const Tensor& dst, const Tensor& idx, const Tensor& src);
    void concat(const std::vector<Tensor>& parts, const Tensor& out);
    void patch_embed(const Tensor& pixels, int64_t channels, int64_t height, int64_t width, int64_t patch,
                     const Param& w, const Param* bias, const Tensor& out);
    void avg_pool(const Tensor& x, int64_t height, int64_t width, int64_t k, const Tensor& out);

private:
    // true: `be_` runs it (recorded); false: the caller runs the CPU fallback (recorded on the CPU)
    bool here(Op op, GGMLType type);
    bool here_kv(Op op, const KVShape& kv);  // both cache types supported here

    Backend& be_;
    Backend& cpu_;
};

// KV-cache compaction of one layer's buffers on `be` (the CPU's kernel on a host copy when `be`
// declines it).
void kv_compact(Backend& be, Backend& cpu, void* k, void* v, const KVShape& kv, const std::vector<int32_t>& kept,
                int64_t n_kept);

// Whether a tensor's memory is host memory the CPU kernels may read in place.
inline bool on_host(const Tensor& t) { return t.be == nullptr || t.be->is_host(); }

}  // namespace aircache
