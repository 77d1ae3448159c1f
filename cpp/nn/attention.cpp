#include "nn/attention.h"

#include <algorithm>

#include "common.h"

namespace aircache {
namespace nn {

namespace {
int32_t seq_of(const TextBatch& b, int64_t t) { return b.seq ? b.seq[t] : 0; }
}  // namespace

void check_room(const TextBatch& b, KVCache* const* caches, int n_layer) {
    for (int64_t t0 = 0; t0 < b.n;) {
        int64_t t1 = t0 + 1;
        while (t1 < b.n && seq_of(b, t1) == seq_of(b, t0)) ++t1;
        const KVCache& kv = *caches[seq_of(b, t0)];
        for (int l = 0; l < n_layer; ++l)
            if (!kv.has_room(l, t1 - t0))
                throw InputError(strprintf("KV cache full: layer %d holds %lld positions, %lld more do not fit in its "
                                           "capacity of %lld (n_ctx)", l, static_cast<long long>(kv.length(l)),
                                           static_cast<long long>(t1 - t0), static_cast<long long>(kv.capacity())));
        t0 = t1;
    }
}

KVRows kv_rows(const TextBatch& b, KVCache* const* caches, int layer, int64_t window, int A) {
    KVRows r;
    r.shape = caches[0]->shape(layer);  // sequences' allocations differ: each row carries its own (cap)
    r.host.resize(static_cast<size_t>(b.n));
    for (int64_t t0 = 0; t0 < b.n;) {
        int64_t t1 = t0 + 1;
        while (t1 < b.n && seq_of(b, t1) == seq_of(b, t0)) ++t1;
        KVCache& kv = *caches[seq_of(b, t0)];
        const int64_t base = kv.reserve(layer, t1 - t0);
        kv.set_positions(layer, base, b.pos + t0 * A, t1 - t0);
        const int32_t* kpos = kv.positions(layer, 0);  // keys' positions (head 0), this batch's included
        for (int64_t t = t0; t < t1; ++t) {
            KVRow& row = r.host[static_cast<size_t>(t)];
            row.k = kv.k(layer);
            row.v = kv.v(layer);
            row.bias = kv.bias(layer);
            row.dst = static_cast<int32_t>(base + (t - t0));
            row.cap = static_cast<int32_t>(kv.allocated(layer));
            row.lo = 0;
            row.hi = row.dst + 1;
            if (b.span_end && b.span_end[t] >= 0) row.hi = static_cast<int32_t>(base + (b.span_end[t] - t0));
            if (window > 0) {
                // the first key whose position (axis 0; ascending in a cache) is within the window
                const int64_t p = b.pos[t * A], lim = p - window;
                int64_t lo = 0, hi = row.hi;
                while (lo < hi) {
                    const int64_t mid = (lo + hi) / 2;
                    if (kpos[mid * A] <= lim) lo = mid + 1;
                    else hi = mid;
                }
                row.lo = static_cast<int32_t>(lo);
            }
        }
        t0 = t1;
    }
    return r;
}

bool rowwise(const TextBatch& b) {
    if (!b.seq || b.n <= 1) return false;
    for (int64_t t = 1; t < b.n; ++t)
        if (b.seq[t] == b.seq[t - 1]) return false;
    return true;
}

}  // namespace nn
}  // namespace aircache
