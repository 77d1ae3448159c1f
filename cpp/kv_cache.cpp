#include "kv_cache.h"

#include <cstring>

#include "common.h"
#include "cuda_api.h"
#include "fp16.h"

namespace aircache {

const char* kv_type_name(KVType t) { return t == KVType::F16 ? "f16" : "f32"; }

KVType kv_type_from_name(const std::string& name) {
    if (name == "f16" || name == "F16") return KVType::F16;
    if (name == "f32" || name == "F32") return KVType::F32;
    throw InputError("unknown KV cache type '" + name + "' (valid: f16, f32)");
}

KVCache::KVCache(const KVCacheConfig& cfg) : cfg_(cfg) {
    if (cfg.n_layer <= 0 || cfg.n_head_kv <= 0 || cfg.head_dim <= 0 || cfg.capacity <= 0)
        throw InputError(strprintf("invalid KV cache shape: %d layers, %d KV heads, head dim %d, capacity %lld",
                                   cfg.n_layer, cfg.n_head_kv, cfg.head_dim, static_cast<long long>(cfg.capacity)));
    if (cfg.n_device_layers < 0 || cfg.n_device_layers > cfg.n_layer)
        throw InputError(strprintf("invalid KV cache placement: %d device layers of %d", cfg.n_device_layers,
                                   cfg.n_layer));
    const size_t per_layer = static_cast<size_t>(cfg.n_head_kv) * cfg.capacity * cfg.head_dim * elem_size();
    const size_t L = static_cast<size_t>(cfg.n_layer);
    k_.resize(L);
    v_.resize(L);
    dk_.assign(L, nullptr);
    dv_.assign(L, nullptr);
    try {
        for (int l = 0; l < cfg.n_layer; ++l) {
            if (on_device(l)) {
                dk_[static_cast<size_t>(l)] = cuda::device_malloc(per_layer, cfg.device);
                dv_[static_cast<size_t>(l)] = cuda::device_malloc(per_layer, cfg.device);
            } else {
                k_[static_cast<size_t>(l)].resize(per_layer);
                v_[static_cast<size_t>(l)].resize(per_layer);
            }
        }
    } catch (const std::bad_alloc&) {
        release_device();
        throw OutOfMemory(strprintf("cannot allocate the KV cache: %s for %d layers x %lld positions",
                                    format_bytes(2 * per_layer * cfg.n_layer).c_str(), cfg.n_layer,
                                    static_cast<long long>(cfg.capacity)));
    } catch (...) {
        release_device();
        throw;
    }
    len_.assign(L, 0);
}

KVCache::~KVCache() { release_device(); }

void KVCache::release_device() noexcept {
    for (void*& p : dk_) {
        if (p) cuda::device_free(p);
        p = nullptr;
    }
    for (void*& p : dv_) {
        if (p) cuda::device_free(p);
        p = nullptr;
    }
}

cuda::KVLayerView KVCache::device_view(int layer) const {
    cuda::KVLayerView v;
    v.k = dk_[static_cast<size_t>(layer)];
    v.v = dv_[static_cast<size_t>(layer)];
    v.capacity = cfg_.capacity;
    v.n_head_kv = cfg_.n_head_kv;
    v.head_dim = cfg_.head_dim;
    v.f16 = cfg_.type == KVType::F16;
    return v;
}

int64_t KVCache::reserve(int layer, int64_t T) {
    const size_t L = static_cast<size_t>(layer);
    const int64_t n0 = len_[L];
    if (T < 0 || n0 + T > cfg_.capacity)
        throw InputError(strprintf("KV cache full: layer %d holds %lld positions, %lld more do not fit in its "
                                   "capacity of %lld (n_ctx)", layer, static_cast<long long>(n0),
                                   static_cast<long long>(T), static_cast<long long>(cfg_.capacity)));
    len_[L] = n0 + T;
    return n0;
}

std::vector<float> KVCache::read(int layer, int head, bool value) const {
    const int64_t n = length(layer), D = cfg_.head_dim;
    std::vector<float> out(static_cast<size_t>(n * D));
    if (on_device(layer)) {
        cuda::kv_read(device_view(layer), value, head, n, out.data(), cfg_.device);
        return out;
    }
    for (int64_t j = 0; j < n; ++j) {
        const uint8_t* r = value ? v_row(layer, head, j) : k_row(layer, head, j);
        for (int64_t d = 0; d < D; ++d)
            out[static_cast<size_t>(j * D + d)] = cfg_.type == KVType::F32
                                                      ? reinterpret_cast<const float*>(r)[d]
                                                      : f16_to_f32(reinterpret_cast<const uint16_t*>(r)[d]);
    }
    return out;
}

size_t KVCache::bytes_in_use() const {
    size_t n = 0;
    for (int64_t l : len_) n += static_cast<size_t>(l) * bytes_per_position();
    return n;
}

size_t KVCache::capacity_bytes() const {
    return static_cast<size_t>(cfg_.n_layer) * static_cast<size_t>(cfg_.capacity) * bytes_per_position();
}

void KVCache::append(int layer, const float* k, const float* v, int64_t T) {
    const size_t L = static_cast<size_t>(layer);
    const int64_t n0 = reserve(layer, T);
    if (on_device(layer)) {
        try {
            cuda::kv_write(device_view(layer), n0, k, v, T, cfg_.device);
        } catch (...) {
            len_[L] = n0;
            throw;
        }
        return;
    }
    const int D = cfg_.head_dim, H = cfg_.n_head_kv;
    for (int h = 0; h < H; ++h) {
        for (int64_t t = 0; t < T; ++t) {
            const float* ks = k + (t * H + h) * D;
            const float* vs = v + (t * H + h) * D;
            uint8_t* kd = const_cast<uint8_t*>(k_row(layer, h, n0 + t));
            uint8_t* vd = const_cast<uint8_t*>(v_row(layer, h, n0 + t));
            if (cfg_.type == KVType::F32) {
                std::memcpy(kd, ks, sizeof(float) * D);
                std::memcpy(vd, vs, sizeof(float) * D);
            } else {
                uint16_t* k16 = reinterpret_cast<uint16_t*>(kd);
                uint16_t* v16 = reinterpret_cast<uint16_t*>(vd);
                for (int d = 0; d < D; ++d) {
                    k16[d] = f32_to_f16(ks[d]);
                    v16[d] = f32_to_f16(vs[d]);
                }
            }
        }
    }
}

void KVCache::clear() {
    for (auto& l : len_) l = 0;
}

void KVCache::restore(const KVCache& from) {
    const KVCacheConfig& o = from.cfg_;
    if (o.n_layer != cfg_.n_layer || o.n_head_kv != cfg_.n_head_kv || o.head_dim != cfg_.head_dim || o.type != cfg_.type)
        throw InputError("KV restore: the caches have different shapes or types");
    if (o.n_device_layers != cfg_.n_device_layers || (cfg_.n_device_layers > 0 && o.device != cfg_.device))
        throw InputError("KV restore: the caches live on different devices");
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const int64_t n = from.length(l);
        if (n > cfg_.capacity) throw InputError("KV restore: the snapshot does not fit in this cache");
        if (on_device(l)) {
            cuda::kv_copy(device_view(l), from.device_view(l), n, cfg_.device);
            len_[static_cast<size_t>(l)] = n;
            continue;
        }
        const size_t bytes = static_cast<size_t>(n) * cfg_.head_dim * elem_size();
        for (int h = 0; h < cfg_.n_head_kv; ++h) {
            std::memcpy(const_cast<uint8_t*>(k_row(l, h, 0)), from.k_row(l, h, 0), bytes);
            std::memcpy(const_cast<uint8_t*>(v_row(l, h, 0)), from.v_row(l, h, 0), bytes);
        }
        len_[static_cast<size_t>(l)] = n;
    }
}

void KVCache::truncate(int layer, int64_t n) {
    int64_t& l = len_[static_cast<size_t>(layer)];
    if (n < 0 || n > l) throw InputError(strprintf("cannot truncate layer %d from %lld to %lld positions", layer,
                                                   static_cast<long long>(l), static_cast<long long>(n)));
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

void KVCache::gather(int layer, int head, const std::vector<int32_t>& kept) {
    const size_t row = static_cast<size_t>(cfg_.head_dim) * elem_size();
    for (size_t i = 0; i < kept.size(); ++i) {
        const int64_t p = kept[i];
        if (p != static_cast<int64_t>(i)) {  // i < p: moving forward never overwrites a row still to be read
            std::memmove(const_cast<uint8_t*>(k_row(layer, head, static_cast<int64_t>(i))), k_row(layer, head, p), row);
            std::memmove(const_cast<uint8_t*>(v_row(layer, head, static_cast<int64_t>(i))), v_row(layer, head, p), row);
        }
    }
}

void KVCache::device_compact(int layer, const std::vector<std::vector<int32_t>>& kept) {
    const size_t n_kept = kept[0].size();
    std::vector<int32_t> flat;
    flat.reserve(n_kept * kept.size());
    for (const auto& k : kept) flat.insert(flat.end(), k.begin(), k.end());
    cuda::kv_gather(device_view(layer), flat, static_cast<int64_t>(n_kept), cfg_.device);
}

void KVCache::compact(int layer, const std::vector<int32_t>& kept) {
    check_kept(layer, 0, kept);
    if (on_device(layer)) {
        device_compact(layer, std::vector<std::vector<int32_t>>(static_cast<size_t>(cfg_.n_head_kv), kept));
    } else {
        for (int h = 0; h < cfg_.n_head_kv; ++h) gather(layer, h, kept);
    }
    len_[static_cast<size_t>(layer)] = static_cast<int64_t>(kept.size());
}

void KVCache::compact_heads(int layer, const std::vector<std::vector<int32_t>>& kept) {
    if (static_cast<int>(kept.size()) != cfg_.n_head_kv)
        throw InputError(strprintf("compact_heads: %zu kept lists for %d KV heads", kept.size(), cfg_.n_head_kv));
    for (const auto& k : kept)
        if (k.size() != kept[0].size())
            throw InputError("compact_heads: every KV head of a layer must keep the same number of positions");
    for (int h = 0; h < cfg_.n_head_kv; ++h) check_kept(layer, h, kept[static_cast<size_t>(h)]);
    if (on_device(layer)) {
        device_compact(layer, kept);
    } else {
        for (int h = 0; h < cfg_.n_head_kv; ++h) gather(layer, h, kept[static_cast<size_t>(h)]);
    }
    len_[static_cast<size_t>(layer)] = static_cast<int64_t>(kept[0].size());
}

}  // namespace aircache
