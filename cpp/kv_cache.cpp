#include "kv_cache.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>

#include "backend/ops.h"
#include "common.h"
#include "cpu/kernels.h"
#include "fp16.h"
#include "quants.h"
#include "threadpool.h"

namespace aircache {

const char* kv_type_name(KVType t) {
    switch (t) {
        case KVType::F32: return "f32";
        case KVType::Q8_0: return "q8_0";
        case KVType::Q4_0: return "q4_0";
        default: return "f16";
    }
}

KVType kv_type_from_name(const std::string& name) {
    std::string low;
    for (char c : name) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (KVType t : {KVType::F16, KVType::F32, KVType::Q8_0, KVType::Q4_0})
        if (low == kv_type_name(t)) return t;
    throw InputError("unknown KV cache type '" + name + "' (valid: f16, f32, q8_0, q4_0)");
}

GGMLType kv_ggml_type(KVType t) {
    switch (t) {
        case KVType::F32: return GGMLType::F32;
        case KVType::Q8_0: return GGMLType::Q8_0;
        case KVType::Q4_0: return GGMLType::Q4_0;
        default: return GGMLType::F16;
    }
}

bool kv_type_quantized(KVType t) { return t == KVType::Q8_0 || t == KVType::Q4_0; }

Backend& host_backend() {
    static ThreadPool pool(1);
    static std::unique_ptr<Backend> be = make_cpu_backend(pool);
    return *be;
}

KVCache::KVCache(const KVCacheConfig& cfg) : cfg_(cfg) {
    if (cfg.n_layer <= 0 || cfg.n_head_kv <= 0 || cfg.head_dim <= 0 || cfg.capacity <= 0 || cfg.n_pos_axes <= 0)
        throw InputError(strprintf("invalid KV cache shape: %d layers, %d KV heads, head dim %d, capacity %lld, "
                                   "%d position axes", cfg.n_layer, cfg.n_head_kv, cfg.head_dim,
                                   static_cast<long long>(cfg.capacity), cfg.n_pos_axes));
    if (!cfg.backends.empty() && static_cast<int>(cfg.backends.size()) != cfg.n_layer)
        throw InputError(strprintf("invalid KV cache placement: %zu backends for %d layers", cfg.backends.size(),
                                   cfg.n_layer));
    for (KVType t : {cfg.type_k, cfg.type_v})
        if (kv_type_quantized(t) && cfg.head_dim % 32 != 0)
            throw InputError(strprintf("KV cache type %s stores blocks of 32 elements: it needs a head dimension that "
                                       "is a multiple of 32 (this model's is %d); use f16", kv_type_name(t),
                                       cfg.head_dim));
    if (!cfg_.host) cfg_.host = &host_backend();
    k_row_ = kv_row_bytes(kv_ggml_type(cfg.type_k), cfg.head_dim);
    v_row_ = kv_row_bytes(kv_ggml_type(cfg.type_v), cfg.head_dim);
    const int64_t rows0 = cfg.initial < 0 || cfg.initial > cfg.capacity ? cfg.capacity : std::max<int64_t>(cfg.initial, 1);
    const size_t per_row = bytes_per_position();  // one layer, K and V
    const size_t L = static_cast<size_t>(cfg.n_layer);
    be_.resize(L);
    // refuse, before allocating, a cache whose full context does not fit where it goes (a host
    // allocation would "succeed" under overcommit and fail later; layers allocate lazily, but a
    // sequence of n_ctx positions must be possible)
    std::map<Backend*, uint64_t> need;
    for (size_t l = 0; l < L; ++l)
        need[cfg.backends.empty() || !cfg.backends[l] ? cfg_.host : cfg.backends[l]] +=
            per_row * static_cast<size_t>(cfg.capacity);
    for (const auto& [b, bytes] : need) {
        const uint64_t avail = b->memory_available();
        if (bytes > avail)
            throw OutOfMemory(strprintf("the KV cache needs %s on %s (%d layers x %lld positions, n_ctx) but %s is "
                                        "available: lower n_ctx", format_bytes(bytes).c_str(), b->name().c_str(),
                                        cfg.n_layer, static_cast<long long>(cfg.capacity), format_bytes(avail).c_str()));
    }
    try {
        for (size_t l = 0; l < L; ++l) {
            Backend* b = cfg.backends.empty() || !cfg.backends[l] ? cfg_.host : cfg.backends[l];
            be_[l] = b;
            k_.emplace_back(*b, static_cast<size_t>(cfg.n_head_kv) * k_row_ * static_cast<size_t>(rows0));
            v_.emplace_back(*b, static_cast<size_t>(cfg.n_head_kv) * v_row_ * static_cast<size_t>(rows0));
        }
    } catch (const OutOfMemory& e) {
        throw OutOfMemory(strprintf("cannot allocate the KV cache (%s for %d layers x %lld positions): %s",
                                    format_bytes(per_row * static_cast<size_t>(rows0) * L).c_str(), cfg.n_layer,
                                    static_cast<long long>(rows0), e.what()));
    }
    len_.assign(L, 0);
    cap_.assign(L, rows0);
    pos_.assign(L, std::vector<int32_t>(static_cast<size_t>(cfg.n_head_kv) * rows0 * cfg.n_pos_axes, 0));
    bias_.assign(L, std::vector<float>());
    bias_dev_.resize(L);
}

KVCache::~KVCache() = default;

KVShape KVCache::shape(int layer) const {
    KVShape s;
    s.capacity = allocated(layer);
    s.n_head_kv = cfg_.n_head_kv;
    s.head_dim = cfg_.head_dim;
    s.type_k = kv_ggml_type(cfg_.type_k);
    s.type_v = kv_ggml_type(cfg_.type_v);
    return s;
}

void KVCache::reallocate(int layer, int64_t rows) {
    const size_t l = static_cast<size_t>(layer);
    const int64_t n = len_[l], old = cap_[l];
    if (rows == old) return;
    Backend& be = backend(layer);
    const size_t H = static_cast<size_t>(cfg_.n_head_kv);
    const size_t kbytes = H * k_row_ * static_cast<size_t>(rows), vbytes = H * v_row_ * static_cast<size_t>(rows);
    if (rows > old) {  // K and V of the new size while the old ones still exist
        const uint64_t more = kbytes + vbytes, avail = be.memory_available();
        if (more > avail)
            throw OutOfMemory(strprintf("the KV cache cannot grow layer %d to %lld positions on %s: %s needed, %s "
                                        "available (lower n_ctx)", layer, static_cast<long long>(rows),
                                        be.name().c_str(), format_bytes(more).c_str(), format_bytes(avail).c_str()));
    }
    Buffer nk(be, kbytes), nv(be, vbytes);
    const int A = cfg_.n_pos_axes;
    std::vector<int32_t> np(static_cast<size_t>(cfg_.n_head_kv) * static_cast<size_t>(rows) * A, 0);
    for (int h = 0; h < cfg_.n_head_kv; ++h) {
        const size_t first = static_cast<size_t>(h) * static_cast<size_t>(rows);
        if (n) {
            be.copy(static_cast<uint8_t*>(nk.data()) + first * k_row_, k_row(layer, h, 0), static_cast<size_t>(n) * k_row_);
            be.copy(static_cast<uint8_t*>(nv.data()) + first * v_row_, v_row(layer, h, 0), static_cast<size_t>(n) * v_row_);
        }
        std::memcpy(np.data() + static_cast<size_t>(h) * static_cast<size_t>(rows) * A, positions(layer, h),
                    sizeof(int32_t) * static_cast<size_t>(n * A));
    }
    be.sync();
    k_[l] = std::move(nk);
    v_[l] = std::move(nv);
    pos_[l] = std::move(np);
    const int64_t old_cap = cap_[l];
    cap_[l] = rows;
    if (!bias_[l].empty()) {
        std::vector<float> nb(static_cast<size_t>(cfg_.n_head_kv) * static_cast<size_t>(rows), 0.0f);
        for (int h = 0; h < cfg_.n_head_kv; ++h)
            std::copy_n(bias_[l].begin() + static_cast<size_t>(h) * static_cast<size_t>(old_cap), static_cast<size_t>(n),
                        nb.begin() + static_cast<size_t>(h) * static_cast<size_t>(rows));
        bias_[l] = std::move(nb);
        upload_bias(layer);
    }
}

void KVCache::upload_bias(int layer) {
    const size_t l = static_cast<size_t>(layer);
    if (bias_[l].empty() || on_host(layer)) {
        bias_dev_[l] = Buffer();
        return;
    }
    const size_t bytes = sizeof(float) * bias_[l].size();
    if (bias_dev_[l].bytes() != bytes) bias_dev_[l] = Buffer(backend(layer), bytes);
    backend(layer).upload(bias_dev_[l].data(), bias_[l].data(), bytes);
    backend(layer).sync();
}

void KVCache::set_bias(int layer, int head, const std::vector<int32_t>& rows, const std::vector<float>& b) {
    if (layer < 0 || layer >= cfg_.n_layer || head < 0 || head >= cfg_.n_head_kv)
        throw InputError(strprintf("KV set_bias: no layer %d / KV head %d", layer, head));
    if (rows.size() != b.size()) throw InputError("KV set_bias: one bias per row");
    const size_t l = static_cast<size_t>(layer);
    for (size_t i = 0; i < rows.size(); ++i)
        if (rows[i] < 0 || rows[i] >= length(layer) || !std::isfinite(b[i]))
            throw InputError(strprintf("KV set_bias: row %d (bias %g) of layer %d (length %lld)", rows[i],
                                       static_cast<double>(b[i]), layer, static_cast<long long>(length(layer))));
    if (rows.empty()) return;
    if (bias_[l].empty()) bias_[l].assign(static_cast<size_t>(cfg_.n_head_kv) * static_cast<size_t>(cap_[l]), 0.0f);
    for (size_t i = 0; i < rows.size(); ++i)
        bias_[l][static_cast<size_t>(head) * static_cast<size_t>(cap_[l]) + static_cast<size_t>(rows[i])] = b[i];
    upload_bias(layer);
}

const float* KVCache::bias(int layer) const {
    const size_t l = static_cast<size_t>(layer);
    if (bias_[l].empty()) return nullptr;
    return on_host(layer) ? bias_[l].data() : static_cast<const float*>(bias_dev_[l].data());
}

float KVCache::bias_at(int layer, int head, int64_t j) const {
    const size_t l = static_cast<size_t>(layer);
    if (bias_[l].empty() || j < 0 || j >= cap_[l]) return 0.0f;
    return bias_[l][static_cast<size_t>(head) * static_cast<size_t>(cap_[l]) + static_cast<size_t>(j)];
}

void KVCache::ensure(int layer, int64_t rows) {
    if (rows > cfg_.capacity)
        throw InputError(strprintf("KV cache: layer %d cannot hold %lld positions (capacity %lld, n_ctx)", layer,
                                   static_cast<long long>(rows), static_cast<long long>(cfg_.capacity)));
    if (rows > allocated(layer)) reallocate(layer, rows);
}

size_t KVCache::shrink_to_fit(int64_t extra) {
    const size_t before = capacity_bytes();
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const int64_t want = std::max<int64_t>(1, std::min(cfg_.capacity, length(l) + std::max<int64_t>(extra, 0)));
        if (want < allocated(l)) reallocate(l, want);
    }
    return before - capacity_bytes();
}

int64_t KVCache::reserve(int layer, int64_t T) {
    const size_t L = static_cast<size_t>(layer);
    const int64_t n0 = len_[L];
    if (!has_room(layer, T))
        throw InputError(strprintf("KV cache full: layer %d holds %lld positions, %lld more do not fit in its "
                                   "capacity of %lld (n_ctx)", layer, static_cast<long long>(n0),
                                   static_cast<long long>(T), static_cast<long long>(cfg_.capacity)));
    if (n0 + T > cap_[L])  // grow by half again at least, so token-by-token decoding copies rarely
        reallocate(layer, std::min(cfg_.capacity, std::max(n0 + T, cap_[L] + cap_[L] / 2)));
    len_[L] = n0 + T;
    return n0;
}

void KVCache::set_positions(int layer, int64_t first, const int32_t* pos, int64_t T) {
    const int A = cfg_.n_pos_axes;
    std::vector<int32_t>& p = pos_[static_cast<size_t>(layer)];
    for (int h = 0; h < cfg_.n_head_kv; ++h)
        std::memcpy(p.data() + (static_cast<size_t>(h) * allocated(layer) + static_cast<size_t>(first)) * A, pos,
                    sizeof(int32_t) * static_cast<size_t>(T * A));
    for (int64_t i = 0; i < T * A; ++i) next_pos_ = std::max(next_pos_, pos[i] + 1);
}

const int32_t* KVCache::positions(int layer, int head) const {
    return pos_[static_cast<size_t>(layer)].data() + static_cast<size_t>(head) * allocated(layer) * cfg_.n_pos_axes;
}

size_t KVCache::bytes_in_use() const {
    size_t n = 0;
    for (size_t l = 0; l < len_.size(); ++l) {
        n += static_cast<size_t>(len_[l]) * bytes_per_position();
        if (!bias_[l].empty()) n += static_cast<size_t>(len_[l]) * static_cast<size_t>(cfg_.n_head_kv) * sizeof(float);
    }
    return n;
}

size_t KVCache::capacity_bytes() const {
    size_t n = 0;
    for (size_t l = 0; l < cap_.size(); ++l) n += static_cast<size_t>(cap_[l]) * bytes_per_position() + sizeof(float) * bias_[l].size();
    return n;
}

void KVCache::append(int layer, const float* k, const float* v, int64_t T, const int32_t* pos) {
    if (T <= 0) return;
    const int64_t n0 = reserve(layer, T);
    std::vector<int32_t> own;
    if (!pos) {  // continue the layer's own positions (1-D: its last row's + 1)
        const int A = cfg_.n_pos_axes;
        const int32_t start = n0 == 0 ? 0 : positions(layer, 0)[(n0 - 1) * A] + 1;
        own.resize(static_cast<size_t>(T * A));
        for (int64_t t = 0; t < T; ++t)
            for (int a = 0; a < A; ++a) own[static_cast<size_t>(t * A + a)] = start + static_cast<int32_t>(t);
        pos = own.data();
    }
    try {
        Backend& be = backend(layer);
        const int64_t C = static_cast<int64_t>(cfg_.n_head_kv) * cfg_.head_dim;
        KVRows rows;
        rows.shape = shape(layer);
        rows.host.resize(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) {
            KVRow& r = rows.host[static_cast<size_t>(t)];
            r.k = this->k(layer);
            r.v = this->v(layer);
            r.dst = static_cast<int32_t>(n0 + t);
            r.cap = static_cast<int32_t>(allocated(layer));
            r.lo = 0;
            r.hi = r.dst + 1;
        }
        Ops ops(be, *cfg_.host);
        if (be.is_host()) {
            rows.table = make_tensor(&be, rows.host.data(), GGMLType::I32, T, kKVRowInts);
            ops.kv_store(make_tensor(&be, const_cast<float*>(k), GGMLType::F32, T, C),
                         make_tensor(&be, const_cast<float*>(v), GGMLType::F32, T, C), rows);
        } else {
            Buffer dk(be, sizeof(float) * static_cast<size_t>(T * C)), dv(be, dk.bytes());
            Buffer dr(be, sizeof(KVRow) * static_cast<size_t>(T));
            be.upload(dk.data(), k, dk.bytes());
            be.upload(dv.data(), v, dv.bytes());
            be.upload(dr.data(), rows.host.data(), dr.bytes());
            rows.table = dr.tensor(GGMLType::I32, T, kKVRowInts);
            ops.kv_store(dk.tensor(GGMLType::F32, T, C), dv.tensor(GGMLType::F32, T, C), rows);
            be.sync();
        }
    } catch (...) {
        len_[static_cast<size_t>(layer)] = n0;
        throw;
    }
    set_positions(layer, n0, pos, T);
}

std::vector<float> KVCache::read(int layer, int head, bool value) const {
    std::vector<float> out;
    read_into(layer, head, value, out);
    return out;
}

void KVCache::read_into(int layer, int head, bool value, std::vector<float>& out) const {
    const int64_t n = length(layer), D = cfg_.head_dim;
    out.resize(static_cast<size_t>(n * D));
    const size_t row = value ? v_row_ : k_row_, bytes = static_cast<size_t>(n) * row;
    const uint8_t* src = value ? v_row(layer, head, 0) : k_row(layer, head, 0);
    std::vector<uint8_t> tmp;
    if (!on_host(layer)) {
        tmp.resize(bytes);
        backend(layer).download(tmp.data(), src, bytes);
        src = tmp.data();
    }
    const GGMLType t = kv_ggml_type(value ? cfg_.type_v : cfg_.type_k);
    const cpu::KernelTable& kt = cpu::kernels();
    if (t == GGMLType::F16 && kt.f16_to_f32) {  // one head's rows are contiguous: one vectorized conversion (exact)
        kt.f16_to_f32(reinterpret_cast<const uint16_t*>(src), out.data(), n * D);
    } else if (t == GGMLType::F32) {
        std::memcpy(out.data(), src, bytes);
    } else {
        for (int64_t i = 0; i < n; ++i) dequantize_row(t, src + static_cast<size_t>(i) * row, out.data() + i * D, D);
    }
}

void KVCache::write_rows(int layer, int head, const std::vector<int32_t>& rows, const float* k, const float* v) {
    if (layer < 0 || layer >= cfg_.n_layer || head < 0 || head >= cfg_.n_head_kv)
        throw InputError(strprintf("KV write_rows: no layer %d / KV head %d", layer, head));
    const int64_t n = length(layer), D = cfg_.head_dim;
    for (int32_t r : rows)
        if (r < 0 || r >= n)
            throw InputError(strprintf("KV write_rows: row %d of layer %d is not below its length %lld", r, layer,
                                       static_cast<long long>(n)));
    Backend& be = backend(layer);
    const bool host = on_host(layer);
    const cpu::KernelTable& kt = cpu::kernels();
    std::vector<uint8_t> staged;  // another backend's rows, quantized here (each its own slot) and uploaded
    for (int part = 0; part < 2; ++part) {
        const float* src = part == 0 ? k : v;
        if (!src) continue;
        const size_t bytes = part == 0 ? k_row_ : v_row_;
        const GGMLType t = kv_ggml_type(part == 0 ? cfg_.type_k : cfg_.type_v);
        if (!host) staged.resize(bytes * rows.size());
        for (size_t i = 0; i < rows.size(); ++i) {
            uint8_t* dst = const_cast<uint8_t*>(part == 0 ? k_row(layer, head, rows[i]) : v_row(layer, head, rows[i]));
            uint8_t* out = host ? dst : staged.data() + i * bytes;
            if (t == GGMLType::F16 && kt.f32_to_f16)  // vectorized, round to nearest even as quantize_row
                kt.f32_to_f16(src + static_cast<int64_t>(i) * D, reinterpret_cast<uint16_t*>(out), D);
            else
                quantize_row(t, src + static_cast<int64_t>(i) * D, out, D);
            if (!host) be.upload(dst, staged.data() + i * bytes, bytes);
        }
        if (!host) be.sync();
    }
}

void KVCache::clear() {
    for (auto& l : len_) l = 0;
    for (int l = 0; l < cfg_.n_layer; ++l)
        if (!bias_[static_cast<size_t>(l)].empty()) {
            bias_[static_cast<size_t>(l)].clear();
            upload_bias(l);
        }
    next_pos_ = 0;
}

void KVCache::restore(const KVCache& from) {
    const KVCacheConfig& o = from.cfg_;
    if (o.n_layer != cfg_.n_layer || o.n_head_kv != cfg_.n_head_kv || o.head_dim != cfg_.head_dim ||
        o.type_k != cfg_.type_k || o.type_v != cfg_.type_v || o.n_pos_axes != cfg_.n_pos_axes)
        throw InputError("KV restore: the caches have different shapes or types");
    for (int l = 0; l < cfg_.n_layer; ++l)
        if (&from.backend(l) != &backend(l)) throw InputError("KV restore: the caches live on different backends");
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const int64_t n = from.length(l);
        if (n > cfg_.capacity) throw InputError("KV restore: the snapshot does not fit in this cache");
        ensure(l, n);
        Backend& be = backend(l);
        for (int h = 0; h < cfg_.n_head_kv; ++h) {
            be.copy(const_cast<uint8_t*>(k_row(l, h, 0)), from.k_row(l, h, 0), static_cast<size_t>(n) * k_row_);
            be.copy(const_cast<uint8_t*>(v_row(l, h, 0)), from.v_row(l, h, 0), static_cast<size_t>(n) * v_row_);
            std::memcpy(const_cast<int32_t*>(positions(l, h)), from.positions(l, h),
                        sizeof(int32_t) * static_cast<size_t>(n * cfg_.n_pos_axes));
        }
        len_[static_cast<size_t>(l)] = n;
        const size_t L = static_cast<size_t>(l);
        if (from.bias_[L].empty()) {
            bias_[L].clear();
        } else {
            bias_[L].assign(static_cast<size_t>(cfg_.n_head_kv) * static_cast<size_t>(cap_[L]), 0.0f);
            for (int h = 0; h < cfg_.n_head_kv; ++h)
                std::copy_n(from.bias_[L].begin() + static_cast<size_t>(h) * static_cast<size_t>(from.cap_[L]),
                            static_cast<size_t>(n), bias_[L].begin() + static_cast<size_t>(h) * static_cast<size_t>(cap_[L]));
        }
        upload_bias(l);
    }
    next_pos_ = from.next_pos_;
}

void KVCache::truncate(int layer, int64_t n) {
    int64_t& l = len_[static_cast<size_t>(layer)];
    if (n < 0 || n > l) throw InputError(strprintf("cannot truncate layer %d from %lld to %lld positions", layer,
                                                   static_cast<long long>(l), static_cast<long long>(n)));
    std::vector<float>& b = bias_[static_cast<size_t>(layer)];
    if (!b.empty() && n < l) {  // rows written later start without a bias
        const size_t cap = static_cast<size_t>(cap_[static_cast<size_t>(layer)]);
        for (int h = 0; h < cfg_.n_head_kv; ++h)
            std::fill(b.begin() + static_cast<ptrdiff_t>(h * cap + static_cast<size_t>(n)),
                      b.begin() + static_cast<ptrdiff_t>(h * cap + static_cast<size_t>(l)), 0.0f);
        upload_bias(layer);
    }
    l = n;
}

void KVCache::check_kept(int layer, int head, const std::vector<int32_t>& kept) const {
    const int64_t len = len_[static_cast<size_t>(layer)];
    int64_t prev = -1;
    for (size_t i = 0; i < kept.size(); ++i) {
        const int64_t p = kept[i];
        if (p <= prev || p >= len)
            throw InputError(strprintf("compact: layer %d head %d: kept positions must be strictly ascending and "
                                       "below the length %lld (got %lld after %lld)", layer, head,
                                       static_cast<long long>(len), static_cast<long long>(p),
                                       static_cast<long long>(prev)));
        prev = p;
    }
}

void KVCache::compact_rows(int layer, const std::vector<std::vector<int32_t>>& kept) {
    const int64_t n_kept = static_cast<int64_t>(kept[0].size());
    std::vector<int32_t> flat;
    flat.reserve(static_cast<size_t>(n_kept) * kept.size());
    for (const auto& k : kept) flat.insert(flat.end(), k.begin(), k.end());
    kv_compact(backend(layer), *cfg_.host, this->k(layer), this->v(layer), shape(layer), flat, n_kept);
    // positions move with their rows
    const int A = cfg_.n_pos_axes;
    for (int h = 0; h < cfg_.n_head_kv; ++h) {
        int32_t* p = const_cast<int32_t*>(positions(layer, h));
        const std::vector<int32_t>& kh = kept[static_cast<size_t>(h)];
        for (int64_t i = 0; i < n_kept; ++i)
            if (kh[static_cast<size_t>(i)] != i)
                std::memmove(p + i * A, p + static_cast<int64_t>(kh[static_cast<size_t>(i)]) * A, sizeof(int32_t) * A);
    }
    std::vector<float>& b = bias_[static_cast<size_t>(layer)];
    if (!b.empty()) {  // biases move with their rows; the freed rows' are 0 again
        const size_t cap = static_cast<size_t>(allocated(layer));
        for (int h = 0; h < cfg_.n_head_kv; ++h) {
            float* bh = b.data() + static_cast<size_t>(h) * cap;
            const std::vector<int32_t>& kh = kept[static_cast<size_t>(h)];
            for (int64_t i = 0; i < n_kept; ++i) bh[i] = bh[kh[static_cast<size_t>(i)]];
            std::fill(bh + n_kept, bh + cap, 0.0f);
        }
        upload_bias(layer);
    }
    len_[static_cast<size_t>(layer)] = n_kept;
}

void KVCache::compact(int layer, const std::vector<int32_t>& kept) {
    check_kept(layer, 0, kept);
    compact_rows(layer, std::vector<std::vector<int32_t>>(static_cast<size_t>(cfg_.n_head_kv), kept));
}

void KVCache::compact_heads(int layer, const std::vector<std::vector<int32_t>>& kept) {
    if (static_cast<int>(kept.size()) != cfg_.n_head_kv)
        throw InputError(strprintf("compact_heads: %zu kept lists for %d KV heads", kept.size(), cfg_.n_head_kv));
    for (const auto& k : kept)
        if (k.size() != kept[0].size())
            throw InputError("compact_heads: every KV head of a layer must keep the same number of positions");
    for (int h = 0; h < cfg_.n_head_kv; ++h) check_kept(layer, h, kept[static_cast<size_t>(h)]);
    compact_rows(layer, kept);
}

}  // namespace aircache
