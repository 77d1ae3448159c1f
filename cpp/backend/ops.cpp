#include "backend/ops.h"

#include <cstdio>
#include <cstring>
#include <map>

#include "common.h"
#include "cpu/repack.h"
#include "quants.h"

namespace aircache {

// ------------------------------------------------------------------------------------------------
// Param
// ------------------------------------------------------------------------------------------------

Param Param::view(std::string name, const void* data, GGMLType type, int64_t rows, int64_t cols, bool file_mapped) {
    Param p;
    p.name_ = std::move(name);
    p.file_mapped_ = file_mapped;
    p.host_ = make_tensor(nullptr, const_cast<void*>(data), type, rows, cols);
    return p;
}

Param Param::f32(std::string name, std::vector<float> data, int64_t rows) {
    Param p;
    p.name_ = std::move(name);
    const int64_t n = static_cast<int64_t>(data.size());
    p.owned_ = std::make_shared<std::vector<uint8_t>>(sizeof(float) * data.size());
    std::memcpy(p.owned_->data(), data.data(), sizeof(float) * data.size());
    p.host_ = make_tensor(nullptr, p.owned_->data(), GGMLType::F32, rows, rows > 0 ? n / rows : 0);
    return p;
}

Param Param::i32(std::string name, std::vector<int32_t> data, int64_t rows) {
    Param p;
    p.name_ = std::move(name);
    const int64_t n = static_cast<int64_t>(data.size());
    p.owned_ = std::make_shared<std::vector<uint8_t>>(sizeof(int32_t) * data.size());
    std::memcpy(p.owned_->data(), data.data(), sizeof(int32_t) * data.size());
    p.host_ = make_tensor(nullptr, p.owned_->data(), GGMLType::I32, rows, rows > 0 ? n / rows : 0);
    return p;
}

const Tensor& Param::on(const Backend& be) const {
    if (be.is_host()) return host_;
    for (const Copy& c : *copies_)
        if (c.be == &be) return c.t;
    throw Error("internal: parameter '" + name_ + "' was not placed on " + be.name());
}

size_t Param::place(Backend& be) {
    if (host_ && be.runs_cpu_kernels() && host_.rows > 0) {
        // matrices the CPU kernels read: their repacked rows, once (the file's rows stay for other readers)
        if (!*packed_) {
            const Weight W = cpu::weight_view(host_);
            if (cpu::packable(W)) {
                *packed_ = cpu::pack_weight(W);
                if (file_mapped_) cpu::release_pages(W.data, host_.bytes());  // replaced, not duplicated
            }
        }
        host_.packed = packed_->get();  // (also for the CPU fallback of ops the backend declines)
        if (be.is_host()) return 0;
    }
    if (!host_ || be.is_host()) return 0;
    for (const Copy& c : *copies_)
        if (c.be == &be) return 0;
    const size_t bytes = host_.bytes();
    auto buf = std::make_shared<Buffer>(be, bytes);
    be.upload(buf->data(), host_.data, bytes);
    Tensor t = host_;
    t.be = &be;
    t.data = buf->data();
    t.packed = be.runs_cpu_kernels() ? packed_->get() : nullptr;  // (the test backend: the CPU's bits)
    copies_->push_back(Copy{&be, std::move(buf), t});
    return bytes;
}

// ------------------------------------------------------------------------------------------------
// The CPU fallback: host copies of an op's tensors, outputs written back
// ------------------------------------------------------------------------------------------------

namespace {

class HostCopies {
public:
    explicit HostCopies(Backend& cpu) : cpu_(cpu) {}
    ~HostCopies() = default;

    Tensor in(const Tensor& t) {
        if (!t || on_host(t)) return t;
        bufs_.emplace_back(cpu_, t.bytes());
        t.be->download(bufs_.back().data(), t.data, t.bytes());
        return host_view(t, bufs_.back().data());
    }
    Tensor inout(const Tensor& t) {
        Tensor h = in(t);
        if (h.data != t.data) outs_.emplace_back(t, h);
        return h;
    }
    Tensor out(const Tensor& t) {
        if (on_host(t)) return t;
        bufs_.emplace_back(cpu_, t.bytes());
        Tensor h = host_view(t, bufs_.back().data());
        outs_.emplace_back(t, h);
        return h;
    }
    void write_back() {
        for (auto& [d, h] : outs_) d.be->upload(d.data, h.data, d.bytes());
    }

private:
    Tensor host_view(const Tensor& t, void* data) {
        Tensor h = t;
        h.be = &cpu_;
        h.data = data;
        return h;
    }
    Backend& cpu_;
    std::vector<Buffer> bufs_;
    std::vector<std::pair<Tensor, Tensor>> outs_;
};

// Host copies of the cache layers a rows table references (the whole layers: a fallback, not a
// fast path), the table rewritten to point at them.
class HostKV {
public:
    HostKV(Backend& be, Backend& cpu, const KVRows& r) : be_(be) {
        k_row_ = static_cast<size_t>(r.shape.n_head_kv) * r.shape.k_row_bytes();  // one row of every head
        v_row_ = static_cast<size_t>(r.shape.n_head_kv) * r.shape.v_row_bytes();
        rows_ = r.host;
        for (KVRow& row : rows_) {
            row.k = map(row.k, k_row_ * static_cast<size_t>(row.cap), cpu);  // the layer's allocation
            row.v = map(row.v, v_row_ * static_cast<size_t>(row.cap), cpu);
            if (row.bias)  // the layer's logit bias (read only; write_back uploads it unchanged)
                row.bias = static_cast<const float*>(map(const_cast<float*>(row.bias),
                                                         sizeof(float) * static_cast<size_t>(r.shape.n_head_kv) *
                                                             static_cast<size_t>(row.cap), cpu));
        }
        table_ = make_tensor(&cpu, rows_.data(), GGMLType::I32, static_cast<int64_t>(rows_.size()),
                             kKVRowInts);
    }
    const Tensor& table() const { return table_; }
    void write_back() {
        for (auto& [dev, host] : copies_) be_.upload(dev, host.data(), host.bytes());
    }

private:
    void* map(void* dev, size_t bytes, Backend& cpu) {
        auto it = copies_.find(dev);
        if (it != copies_.end()) return it->second.data();
        Buffer b(cpu, bytes);
        be_.download(b.data(), dev, bytes);
        void* p = b.data();
        copies_.emplace(dev, std::move(b));
        return p;
    }
    Backend& be_;
    size_t k_row_ = 0, v_row_ = 0;
    std::vector<KVRow> rows_;
    std::map<void*, Buffer> copies_;
    Tensor table_;
};

const Tensor* host_of(const Param* p) { return p && *p ? &p->host() : nullptr; }

}  // namespace

// ------------------------------------------------------------------------------------------------
// Ops
// ------------------------------------------------------------------------------------------------

bool Ops::here_kv(Op op, const KVShape& kv) {
    if (kv.type_k != kv.type_v && !be_.supports(op, kv.type_v)) return here(op, kv.type_v);  // false, reported
    return here(op, kv.type_k);
}

bool Ops::here(Op op, GGMLType type) {
    if (be_.supports(op, type)) {
        be_.used().emplace(op, type);
        return true;
    }
    cpu_.used().emplace(op, type);
    if (be_.verbose && be_.reported_fallbacks.emplace(op, type).second)
        std::fprintf(stderr, "aircache: %s does not run %s for %s: it runs on the CPU\n", be_.name().c_str(),
                     op_name(op), type_info(type).name);
    return false;
}

void Ops::matmul(const Param& w, const Tensor& x, const Tensor& y, const Param* bias, bool rowwise) {
    if (here(Op::MatMul, w.host().type)) {
        Tensor b = bias && *bias ? bias->on(be_) : Tensor();
        be_.matmul(w.on(be_), x, y, bias && *bias ? &b : nullptr, rowwise);
        return;
    }
    HostCopies h(cpu_);
    cpu_.matmul(w.host(), h.in(x), h.out(y), host_of(bias), rowwise);
    h.write_back();
}

void Ops::matmuls(const Tensor& x, std::initializer_list<Proj> projs, bool rowwise) {
    constexpr int kMax = kMaxMatmuls;
    bool together = projs.size() <= static_cast<size_t>(kMax);
    for (const Proj& p : projs) together = together && be_.supports(Op::MatMul, p.w->host().type);
    if (!together) {
        for (const Proj& p : projs) matmul(*p.w, x, *p.y, p.bias, rowwise);
        return;
    }
    Tensor bias[kMax];
    const Tensor *w[kMax], *y[kMax], *b[kMax];
    int count = 0;
    for (const Proj& p : projs) {
        here(Op::MatMul, p.w->host().type);  // records the use
        w[count] = &p.w->on(be_);
        y[count] = p.y;
        if (p.bias && *p.bias) {
            bias[count] = p.bias->on(be_);
            b[count] = &bias[count];
        } else {
            b[count] = nullptr;
        }
        ++count;
    }
    be_.matmuls(w, y, b, count, x, rowwise);
}

void Ops::add(const Tensor& x, const Tensor& y) {
    if (here(Op::Add, GGMLType::F32)) return be_.add(x, y);
    HostCopies h(cpu_);
    cpu_.add(h.inout(x), h.in(y));
    h.write_back();
}

void Ops::add(const Tensor& x, const Param& y) {
    if (here(Op::Add, GGMLType::F32)) return be_.add(x, y.on(be_));
    HostCopies h(cpu_);
    cpu_.add(h.inout(x), y.host());
    h.write_back();
}

void Ops::mul(const Tensor& x, const Tensor& y) {
    if (here(Op::Mul, GGMLType::F32)) return be_.mul(x, y);
    HostCopies h(cpu_);
    cpu_.mul(h.inout(x), h.in(y));
    h.write_back();
}

void Ops::mul(const Tensor& x, const Param& y) {
    if (here(Op::Mul, GGMLType::F32)) return be_.mul(x, y.on(be_));
    HostCopies h(cpu_);
    cpu_.mul(h.inout(x), y.host());
    h.write_back();
}

void Ops::scale(const Tensor& x, float s) {
    if (here(Op::Scale, GGMLType::F32)) return be_.scale(x, s);
    HostCopies h(cpu_);
    cpu_.scale(h.inout(x), s);
    h.write_back();
}

void Ops::rms_norm(const Tensor& x, const Param* w, float eps, const Tensor& out) {
    if (here(Op::RmsNorm, GGMLType::F32)) {
        Tensor wt = w && *w ? w->on(be_) : Tensor();
        return be_.rms_norm(x, w && *w ? &wt : nullptr, eps, out);
    }
    HostCopies h(cpu_);
    if (out.data == x.data) {
        const Tensor hx = h.inout(x);
        cpu_.rms_norm(hx, host_of(w), eps, hx);
    } else {
        cpu_.rms_norm(h.in(x), host_of(w), eps, h.out(out));
    }
    h.write_back();
}

void Ops::layer_norm(const Tensor& x, const Param* w, const Param* b, float eps, const Tensor& out) {
    if (here(Op::LayerNorm, GGMLType::F32)) {
        Tensor wt = w && *w ? w->on(be_) : Tensor(), bt = b && *b ? b->on(be_) : Tensor();
        return be_.layer_norm(x, w && *w ? &wt : nullptr, b && *b ? &bt : nullptr, eps, out);
    }
    HostCopies h(cpu_);
    if (out.data == x.data) {
        const Tensor hx = h.inout(x);
        cpu_.layer_norm(hx, host_of(w), host_of(b), eps, hx);
    } else {
        cpu_.layer_norm(h.in(x), host_of(w), host_of(b), eps, h.out(out));
    }
    h.write_back();
}

void Ops::rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& pos, const Param& inv_freq,
               const Param* pair_axis, const RopeParams& p) {
    if (here(Op::Rope, GGMLType::F32)) {
        Tensor ax = pair_axis && *pair_axis ? pair_axis->on(be_) : Tensor();
        return be_.rope(x, n_heads, head_dim, pos, inv_freq.on(be_), pair_axis && *pair_axis ? &ax : nullptr, p);
    }
    HostCopies h(cpu_);
    cpu_.rope(h.inout(x), n_heads, head_dim, h.in(pos), inv_freq.host(), host_of(pair_axis), p);
    h.write_back();
}

void Ops::attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, int64_t n_head_kv,
                    int64_t head_dim, const Tensor* ranges, float scale, const Tensor& out) {
    if (here(Op::Attention, GGMLType::F32)) return be_.attention(q, k, v, n_head, n_head_kv, head_dim, ranges, scale, out);
    HostCopies h(cpu_);
    Tensor hr = ranges && *ranges ? h.in(*ranges) : Tensor();
    cpu_.attention(h.in(q), h.in(k), h.in(v), n_head, n_head_kv, head_dim, hr ? &hr : nullptr, scale, h.out(out));
    h.write_back();
}

void Ops::attention_kv(const Tensor& q, int64_t n_head, const KVRows& rows, float scale, const Tensor& out) {
    if (here_kv(Op::AttentionKV, rows.shape)) return be_.attention_kv(q, n_head, rows.shape, rows.table, scale, out);
    HostCopies h(cpu_);
    HostKV kv(be_, cpu_, rows);
    cpu_.attention_kv(h.in(q), n_head, rows.shape, kv.table(), scale, h.out(out));
    h.write_back();
}

void Ops::kv_store(const Tensor& k, const Tensor& v, const KVRows& rows) {
    if (here_kv(Op::KVStore, rows.shape)) return be_.kv_store(k, v, rows.shape, rows.table);
    HostCopies h(cpu_);
    HostKV kv(be_, cpu_, rows);
    cpu_.kv_store(h.in(k), h.in(v), rows.shape, kv.table());
    kv.write_back();
}

void Ops::activation(const Tensor& x, Activation act) {
    if (here(Op::Act, GGMLType::F32)) return be_.activation(x, act);
    HostCopies h(cpu_);
    cpu_.activation(h.inout(x), act);
    h.write_back();
}

void Ops::glu(const Tensor& gate, const Tensor& up, Activation act) {
    if (here(Op::Glu, GGMLType::F32)) return be_.glu(gate, up, act);
    HostCopies h(cpu_);
    cpu_.glu(h.inout(gate), h.in(up), act);
    h.write_back();
}

void Ops::softmax(const Tensor& x) {
    if (here(Op::Softmax, GGMLType::F32)) return be_.softmax(x);
    HostCopies h(cpu_);
    cpu_.softmax(h.inout(x));
    h.write_back();
}

void Ops::get_rows(const Tensor& src, const Tensor& idx, const Tensor& dst) {
    if (here(Op::GetRows, src.type)) return be_.get_rows(src, idx, dst);
    HostCopies h(cpu_);
    cpu_.get_rows(h.in(src), h.in(idx), h.out(dst));
    h.write_back();
}

void Ops::set_rows(const Tensor& dst, const Tensor& idx, const Tensor& src) {
    if (here(Op::SetRows, src.type)) return be_.set_rows(dst, idx, src);
    HostCopies h(cpu_);
    cpu_.set_rows(h.inout(dst), h.in(idx), h.in(src));
    h.write_back();
}

void Ops::concat(const std::vector<Tensor>& parts, const Tensor& out) {
    if (here(Op::Concat, out.type)) return be_.concat(parts, out);
    HostCopies h(cpu_);
    std::vector<Tensor> hp;
    for (const Tensor& p : parts) hp.push_back(h.in(p));
    cpu_.concat(hp, h.out(out));
    h.write_back();
}

void Ops::patch_embed(const Tensor& pixels, int64_t channels, int64_t height, int64_t width, int64_t patch,
                      const Param& w, const Param* bias, const Tensor& out) {
    if (here(Op::PatchEmbed, w.host().type)) {
        Tensor b = bias && *bias ? bias->on(be_) : Tensor();
        return be_.patch_embed(pixels, channels, height, width, patch, w.on(be_), bias && *bias ? &b : nullptr, out);
    }
    HostCopies h(cpu_);
    cpu_.patch_embed(h.in(pixels), channels, height, width, patch, w.host(), host_of(bias), h.out(out));
    h.write_back();
}

void Ops::avg_pool(const Tensor& x, int64_t height, int64_t width, int64_t k, const Tensor& out) {
    // (a file whose tower width or grid disagrees with its projector's would write past `out`)
    if (k < 1 || x.rows != height * width || out.rows != (height / k) * (width / k) || out.cols != x.cols)
        throw FormatError(strprintf("avg_pool: input [%lld x %lld] as a %lld x %lld grid pooled by %lld does not fit the "
                              "output [%lld x %lld] (the vision tower's width or grid disagrees with its projector)",
                              static_cast<long long>(x.rows), static_cast<long long>(x.cols), static_cast<long long>(height),
                              static_cast<long long>(width), static_cast<long long>(k), static_cast<long long>(out.rows),
                              static_cast<long long>(out.cols)));
    if (here(Op::AvgPool, GGMLType::F32)) return be_.avg_pool(x, height, width, k, out);
    HostCopies h(cpu_);
    cpu_.avg_pool(h.in(x), height, width, k, h.out(out));
    h.write_back();
}

void kv_compact(Backend& be, Backend& cpu, void* k, void* v, const KVShape& kv, const std::vector<int32_t>& kept,
                int64_t n_kept) {
    if (be.supports(Op::KVCompact, kv.type_k) && be.supports(Op::KVCompact, kv.type_v)) {
        be.used().emplace(Op::KVCompact, kv.type_k);
        be.kv_compact(k, v, kv, kept, n_kept);
        return;
    }
    cpu.used().emplace(Op::KVCompact, kv.type_k);
    const size_t rows = static_cast<size_t>(kv.n_head_kv) * static_cast<size_t>(kv.capacity);
    const size_t kbytes = rows * kv.k_row_bytes(), vbytes = rows * kv.v_row_bytes();
    Buffer hk(cpu, kbytes), hv(cpu, vbytes);
    be.download(hk.data(), k, kbytes);
    be.download(hv.data(), v, vbytes);
    cpu.kv_compact(hk.data(), hv.data(), kv, kept, n_kept);
    be.upload(k, hk.data(), kbytes);
    be.upload(v, hv.data(), vbytes);
}

}  // namespace aircache
