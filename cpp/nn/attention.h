// nn/attention.h — the attention pieces every decoder family shares, written once over the backend
// ops: the rows table that says which cache layer and which keys each query row uses (causal,
// widened over bidirectional image spans, narrowed to a sliding window), and the checks before a
// forward writes anything.
#pragma once

#include <cstdint>

#include "backend/ops.h"
#include "kv_cache.h"
#include "text_model.h"

namespace aircache {
namespace nn {

// Throws InputError, before anything is written, when a row does not fit its sequence's cache at
// some layer.
void check_room(const TextBatch& b, KVCache* const* caches, int n_layer);

// The rows table of `layer` for the batch: reserves each row's slot in its sequence's cache layer,
// records the row's position there, and gives it the keys it sees: every key before it and its
// own (causal), up to the end of its bidirectional span when it has one, and only those whose
// position is within the last `window` positions when window > 0 (sliding-window layers). `table`
// is left empty (the caller uploads `host`).
KVRows kv_rows(const TextBatch& b, KVCache* const* caches, int layer, int64_t window, int n_pos_axes);

// Whether the batch's rows are independent sequences (a decode batch, one row per sequence): each
// is then computed exactly as it would be alone.
bool rowwise(const TextBatch& b);

}  // namespace nn
}  // namespace aircache
