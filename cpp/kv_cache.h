// kv_cache.h — per-layer contiguous K and V buffers with per-layer lengths.
//
// Layout of one layer (K and V alike): [n_head_kv][capacity][head_dim] elements of the cache type,
// so every KV head of every layer is one contiguous run of positions. Keys are stored after RoPE:
// a kept key never needs re-rotation. compact() keeps any subset of positions per layer (and,
// with compact_heads(), a different subset per KV head of equal size), moving them to the front
// in their original order; the layer's length becomes the number kept.
//
// Placement: layers [0, n_device_layers) live in CUDA device memory (the layers a model offloads),
// the others in host memory. Host accessors (k_row, v_row) are for host layers; device layers are
// read by the CUDA kernels through device_k()/device_v(), and by anyone through read().
//
// The cache does not know positions: the forward decides that entry i of a layer precedes every
// entry appended after it (true for a prompt and for whatever is generated after compaction).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_api.h"

namespace aircache {

enum class KVType { F16, F32 };
const char* kv_type_name(KVType t);
KVType kv_type_from_name(const std::string& name);  // "f16" | "f32" (InputError otherwise)

struct KVCacheConfig {
    int n_layer = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int64_t capacity = 0;  // positions per layer
    KVType type = KVType::F16;
    int n_device_layers = 0;  // layers [0, n) on the CUDA device `device`
    int device = 0;
};

class KVCache {
public:
    explicit KVCache(const KVCacheConfig& cfg);
    ~KVCache();
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;

    const KVCacheConfig& config() const { return cfg_; }
    int64_t capacity() const { return cfg_.capacity; }
    int64_t length(int layer) const { return len_[static_cast<size_t>(layer)]; }
    size_t elem_size() const { return cfg_.type == KVType::F16 ? 2 : 4; }
    // Bytes one position takes in one layer (K and V, all heads).
    size_t bytes_per_position() const { return 2 * static_cast<size_t>(cfg_.n_head_kv) * cfg_.head_dim * elem_size(); }
    size_t bytes_in_use() const;       // sum over layers of length * bytes_per_position
    size_t capacity_bytes() const;     // what is allocated

    // Writes T positions ([T][n_head_kv][head_dim] floats each for K and V) at [length, length+T).
    // InputError when the layer would exceed its capacity.
    void append(int layer, const float* k, const float* v, int64_t T);

    bool on_device(int layer) const { return layer < cfg_.n_device_layers; }
    // Device base pointers of a device layer: [n_head_kv][capacity][head_dim] of the cache type.
    void* device_k(int layer) const { return dk_[static_cast<size_t>(layer)]; }
    void* device_v(int layer) const { return dv_[static_cast<size_t>(layer)]; }
    cuda::KVLayerView device_view(int layer) const;  // what the CUDA kernels take
    // Extends `layer` by T positions that the caller writes itself (the CUDA forward writes its K/V
    // on the device); returns the first new index. InputError when the layer would exceed its capacity.
    int64_t reserve(int layer, int64_t T);
    // The first length(layer) rows of one head of K (value = false) or V as floats ([n][head_dim]),
    // wherever the layer lives.
    std::vector<float> read(int layer, int head, bool value) const;

    // Row `pos` of KV head `head` in host `layer` (cache-typed: uint16 f16 bits or float).
    const uint8_t* k_row(int layer, int head, int64_t pos) const { return at(k_, layer, head, pos); }
    const uint8_t* v_row(int layer, int head, int64_t pos) const { return at(v_, layer, head, pos); }

    void clear();
    void truncate(int layer, int64_t n);
    // Copies another cache's contents (its used rows only; same shape required): a snapshot of a
    // prefilled prompt that several compressions start from.
    void restore(const KVCache& from);
    // Keep positions `kept` (strictly ascending, each < length) of every head of `layer`.
    void compact(int layer, const std::vector<int32_t>& kept);
    // Keep kept[h] for KV head h; all heads must keep the same number of positions.
    void compact_heads(int layer, const std::vector<std::vector<int32_t>>& kept);

private:
    const uint8_t* at(const std::vector<std::vector<uint8_t>>& buf, int layer, int head, int64_t pos) const {
        return buf[static_cast<size_t>(layer)].data() +
               ((static_cast<size_t>(head) * cfg_.capacity + static_cast<size_t>(pos)) * cfg_.head_dim) * elem_size();
    }
    void gather(int layer, int head, const std::vector<int32_t>& kept);
    void release_device() noexcept;
    void check_kept(int layer, int head, const std::vector<int32_t>& kept) const;
    void device_compact(int layer, const std::vector<std::vector<int32_t>>& kept);

    KVCacheConfig cfg_;
    std::vector<std::vector<uint8_t>> k_, v_;  // per host layer (empty for device layers)
    std::vector<void*> dk_, dv_;               // per device layer
    std::vector<int64_t> len_;
};

}  // namespace aircache
