// kv_cache.h — one sequence's KV cache: per-layer contiguous K and V buffers with per-layer
// lengths, and each row's position beside its key and value.
//
// Layout of one layer (K and V alike): [n_head_kv][capacity] rows of head_dim elements of the cache
// type, so every KV head of every layer is one contiguous run of rows. K and V have a type each
// (f16, f32, or the 32-element block types q8_0 and q4_0, GGUF's block layout: a row is head_dim / 32
// blocks); a row's bytes are k_row_bytes() / v_row_bytes(). Keys are stored after RoPE: a kept
// key never needs re-rotation. compact() keeps any subset of rows per layer (and, with
// compact_heads(), a different subset per KV head of equal size), moving them to the front in their
// original order, positions moving with them; the layer's length becomes the number kept.
//
// Index and position: a row's index is where it sits in the layer (what compaction changes); its
// position is what RoPE saw (n_pos_axes components: 1 for 1-D RoPE, 3 for M-RoPE's (t, h, w)),
// recorded when the row is written and never changed. next_position() is one past the largest
// position written so far: the model's rule for the next token starts there.
//
// Allocation: a layer holds at most capacity() rows (n_ctx) but allocates only what it needs:
// `initial` rows at first, growing when a write needs more (reserve), and shrink_to_fit() returns
// what compaction freed (each layer down to its length plus the rows still to come), so the memory
// compression saves is really given back. The layout's head stride is the layer's allocation
// (allocated(layer); shape(layer).capacity; KVRow::cap in a rows table).
//
// Placement: each layer lives on the backend its model layer runs on (config().backends), in that
// backend's memory. Host accessors (k_row, v_row) are for layers on a host backend; anyone can read
// a layer with read().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace aircache {

enum class KVType { F16, F32, Q8_0, Q4_0 };
const char* kv_type_name(KVType t);                 // "f16", "f32", "q8_0", "q4_0"
KVType kv_type_from_name(const std::string& name);  // those names, any case (InputError otherwise)
GGMLType kv_ggml_type(KVType t);
bool kv_type_quantized(KVType t);

struct KVCacheConfig {
    int n_layer = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int64_t capacity = 0;       // the most rows a layer may hold (n_ctx)
    int64_t initial = -1;       // rows each layer allocates at first (< 0 or > capacity: capacity)
    KVType type_k = KVType::F16;
    KVType type_v = KVType::F16;
    int n_pos_axes = 1;         // position components per row
    std::vector<Backend*> backends;  // per layer (empty, or null entries: host memory)
    Backend* host = nullptr;    // the CPU backend (null: a process-wide one)
};

// A process-wide CPU backend (one thread) for memory and host-side work outside an engine.
Backend& host_backend();

class KVCache {
public:
    explicit KVCache(const KVCacheConfig& cfg);
    ~KVCache();
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;

    const KVCacheConfig& config() const { return cfg_; }
    int64_t capacity() const { return cfg_.capacity; }
    // Rows allocated for `layer` (its head stride): length(layer) <= allocated(layer) <= capacity().
    int64_t allocated(int layer) const { return cap_[static_cast<size_t>(layer)]; }
    int64_t length(int layer) const { return len_[static_cast<size_t>(layer)]; }
    // Bytes of one row of one KV head (head_dim elements of the K / V type).
    size_t k_row_bytes() const { return k_row_; }
    size_t v_row_bytes() const { return v_row_; }
    // Bytes one row takes in one layer (K and V, all heads).
    size_t bytes_per_position() const { return static_cast<size_t>(cfg_.n_head_kv) * (k_row_ + v_row_); }
    size_t bytes_in_use() const;       // sum over layers of length * bytes_per_position
    size_t capacity_bytes() const;     // what is allocated (every layer's allocation)
    KVShape shape(int layer) const;    // capacity: the layer's allocation

    // Grows `layer`'s allocation to at least `rows` (<= capacity; the rows kept, positions too).
    void ensure(int layer, int64_t rows);
    // Shrinks every layer's allocation to its length + `extra` rows (at most capacity; never grows
    // one); returns the bytes given back. Called after compaction with what may still be generated.
    size_t shrink_to_fit(int64_t extra);

    Backend& backend(int layer) const { return *be_[static_cast<size_t>(layer)]; }
    bool on_host(int layer) const { return be_[static_cast<size_t>(layer)]->is_host(); }
    // The layer's K and V buffers in its backend's memory.
    void* k(int layer) const { return k_[static_cast<size_t>(layer)].data(); }
    void* v(int layer) const { return v_[static_cast<size_t>(layer)].data(); }

    // Extends `layer` by T rows the caller writes itself (a forward's KVStore), growing its
    // allocation when needed (k()/v() may move: read them after); returns the first new index.
    // InputError when the layer would exceed its capacity (has_room first to test).
    int64_t reserve(int layer, int64_t T);
    bool has_room(int layer, int64_t T) const { return T >= 0 && length(layer) + T <= cfg_.capacity; }
    // Records the positions ([T][n_pos_axes]) of rows [first, first + T) of `layer` (every head).
    void set_positions(int layer, int64_t first, const int32_t* pos, int64_t T);
    // Positions of the rows of one KV head of a layer: [length][n_pos_axes].
    const int32_t* positions(int layer, int head = 0) const;
    // One past the largest position component written so far (0 when nothing was).
    int32_t next_position() const { return next_pos_; }

    // Writes T rows ([T][n_head_kv][head_dim] floats each for K and V) at [length, length + T) with
    // positions pos ([T][n_pos_axes]; null: on every axis, one past the layer's last row's position
    // on axis 0, counting up).
    void append(int layer, const float* k, const float* v, int64_t T, const int32_t* pos = nullptr);
    // The first length(layer) rows of one head of K (value = false) or V as floats ([n][head_dim]).
    std::vector<float> read(int layer, int head, bool value) const;
    // The same into `out` (resized; its memory reused: no fresh allocation when it is large enough).
    void read_into(int layer, int head, bool value, std::vector<float>& out) const;
    // Overwrites rows `rows` (each < length) of KV head `head` of `layer` with K and V given as floats
    // ([rows.size()][head_dim] each; null: that one unchanged), stored in the cache's types; on any
    // backend (a host layer in place, another through upload). Positions do not change.
    void write_rows(int layer, int head, const std::vector<int32_t>& rows, const float* k, const float* v);
    // Row `j` of KV head `head` of a host layer (cache-typed: uint16 f16 bits, floats or blocks).
    const uint8_t* k_row(int layer, int head, int64_t j) const { return at(k_, k_row_, layer, head, j); }
    const uint8_t* v_row(int layer, int head, int64_t j) const { return at(v_, v_row_, layer, head, j); }

    // Logit biases (docs/compression.md, "Merging dropped rows"): b[head][row] is added to the scaled
    // score of that key for every later query (0 where none is set; rows written later get 0). Sets
    // rows `rows` (each < length) of KV head `head`; the biases move with compaction, growth and
    // restore, and clear() drops them.
    void set_bias(int layer, int head, const std::vector<int32_t>& rows, const std::vector<float>& b);
    // The layer's bias array for the kernels, [n_head_kv][allocated] floats in its backend's memory
    // (null: the layer has none).
    const float* bias(int layer) const;
    // Row j's bias of KV head `head` (0 without one).
    float bias_at(int layer, int head, int64_t j) const;

    void clear();
    void truncate(int layer, int64_t n);
    // Copies another cache's contents (its used rows and positions; same shape and placement): a
    // snapshot of a prefilled prompt that several compressions start from.
    void restore(const KVCache& from);
    // Keep rows `kept` (strictly ascending, each < length) of every head of `layer`.
    void compact(int layer, const std::vector<int32_t>& kept);
    // Keep kept[h] for KV head h; all heads must keep the same number of rows.
    void compact_heads(int layer, const std::vector<std::vector<int32_t>>& kept);

private:
    const uint8_t* at(const std::vector<Buffer>& buf, size_t row, int layer, int head, int64_t j) const {
        return static_cast<const uint8_t*>(buf[static_cast<size_t>(layer)].data()) +
               (static_cast<size_t>(head) * cap_[static_cast<size_t>(layer)] + static_cast<size_t>(j)) * row;
    }
    void reallocate(int layer, int64_t rows);
    void check_kept(int layer, int head, const std::vector<int32_t>& kept) const;
    void compact_rows(int layer, const std::vector<std::vector<int32_t>>& kept);

    KVCacheConfig cfg_;
    size_t k_row_ = 0, v_row_ = 0;
    std::vector<Backend*> be_;
    std::vector<Buffer> k_, v_;
    std::vector<int64_t> len_, cap_;
    std::vector<std::vector<int32_t>> pos_;  // [layer][head][allocated][n_pos_axes]
    // logit biases: [layer][head][allocated] on the host (empty: none), and each non-host layer's copy
    std::vector<std::vector<float>> bias_;
    std::vector<Buffer> bias_dev_;
    void upload_bias(int layer);
    int32_t next_pos_ = 0;
};

}  // namespace aircache
