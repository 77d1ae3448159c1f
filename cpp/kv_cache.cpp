#include "kv_cache.h"

#include <cstring>

#include "common.h"
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
    const size_t per_layer = static_cast<size_t>(cfg.n_head_kv) * cfg.capacity * cfg.head_dim * elem_size();
    try {
        k_.assign(static_cast<size_t>(cfg.n_layer), std::vector<uint8_t>(per_layer));
        v_.assign(static_cast<size_t>(cfg.n_layer), std::vector<uint8_t>(per_layer));
    } catch (const std::bad_alloc&) {
        throw OutOfMemory(strprintf("cannot allocate the KV cache: %s for %d layers x %lld positions",
                                    format_bytes(2 * per_layer * cfg.n_layer).c_str(), cfg.n_layer,
                                    static_cast<long long>(cfg.capacity)));
    }
    len_.assign(static_cast<size_t>(cfg.n_layer), 0);
}

size_t KVCache::bytes_in_use() const {
    size_t n = 0;
    for (int64_t l : len_) n += static_cast<size_t>(l) * bytes_per_position();
    return n;
}

size_t KVCache::capacity_bytes() const {
    size_t n = 0;
    for (size_t l = 0; l < k_.size(); ++l) n += k_[l].size() + v_[l].size();
    return n;
}

void KVCache::append(int layer, const float* k, const float* v, int64_t T) {
    const size_t L = static_cast<size_t>(layer);
    const int64_t n0 = len_[L];
    if (n0 + T > cfg_.capacity)
        throw InputError(strprintf("KV cache full: layer %d holds %lld positions, %lld more do not fit in its "
                                   "capacity of %lld (n_ctx)", layer, static_cast<long long>(n0),
                                   static_cast<long long>(T), static_cast<long long>(cfg_.capacity)));
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
    len_[L] = n0 + T;
}

void KVCache::clear() {
    for (auto& l : len_) l = 0;
}

void KVCache::restore(const KVCache& from) {
    const KVCacheConfig& o = from.cfg_;
    if (o.n_layer != cfg_.n_layer || o.n_head_kv != cfg_.n_head_kv || o.head_dim != cfg_.head_dim || o.type != cfg_.type)
        throw InputError("KV restore: the caches have different shapes or types");
    for (int l = 0; l < cfg_.n_layer; ++l) {
        const int64_t n = from.length(l);
        if (n > cfg_.capacity) throw InputError("KV restore: the snapshot does not fit in this cache");
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

void KVCache::gather(int layer, int head, const std::vector<int32_t>& kept) {
    const int64_t len = len_[static_cast<size_t>(layer)];
    const size_t row = static_cast<size_t>(cfg_.head_dim) * elem_size();
    int64_t prev = -1;
    for (size_t i = 0; i < kept.size(); ++i) {
        const int64_t p = kept[i];
        if (p <= prev || p >= len)
            throw InputError(strprintf("compact: layer %d head %d: kept positions must be strictly ascending and "
                                       "below the length %lld (got %lld after %lld)", layer, head,
                                       static_cast<long long>(len), static_cast<long long>(p),
                                       static_cast<long long>(prev)));
        prev = p;
        if (p != static_cast<int64_t>(i)) {  // i < p: moving forward never overwrites a row still to be read
            std::memmove(const_cast<uint8_t*>(k_row(layer, head, static_cast<int64_t>(i))), k_row(layer, head, p), row);
            std::memmove(const_cast<uint8_t*>(v_row(layer, head, static_cast<int64_t>(i))), v_row(layer, head, p), row);
        }
    }
}

void KVCache::compact(int layer, const std::vector<int32_t>& kept) {
    for (int h = 0; h < cfg_.n_head_kv; ++h) gather(layer, h, kept);
    len_[static_cast<size_t>(layer)] = static_cast<int64_t>(kept.size());
}

void KVCache::compact_heads(int layer, const std::vector<std::vector<int32_t>>& kept) {
    if (static_cast<int>(kept.size()) != cfg_.n_head_kv)
        throw InputError(strprintf("compact_heads: %zu kept lists for %d KV heads", kept.size(), cfg_.n_head_kv));
    for (const auto& k : kept)
        if (k.size() != kept[0].size())
            throw InputError("compact_heads: every KV head of a layer must keep the same number of positions");
    for (int h = 0; h < cfg_.n_head_kv; ++h) gather(layer, h, kept[static_cast<size_t>(h)]);
    len_[static_cast<size_t>(layer)] = static_cast<int64_t>(kept[0].size());
}

}  // namespace aircache
