#include "compress/stats.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common.h"
#include "fp16.h"

namespace aircache {
namespace compress {

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; ++i) r += a[i] * b[i];
    return r;
}

// Keys [0, n) of KV head `h` of `layer` as a contiguous float block [n][D]: F32 caches are read in
// place, F16 ones converted once into `buf` (not once per query row).
const float* keys_f32(const KVCache& kv, int layer, int h, int64_t n, std::vector<float>& buf) {
    const int64_t D = kv.config().head_dim;
    if (kv.config().type == KVType::F32) return reinterpret_cast<const float*>(kv.k_row(layer, h, 0));
    buf.resize(static_cast<size_t>(n * D));
    const uint16_t* src = reinterpret_cast<const uint16_t*>(kv.k_row(layer, h, 0));
    for (int64_t i = 0; i < n * D; ++i) buf[static_cast<size_t>(i)] = f16_to_f32(src[i]);
    return buf.data();
}

}  // namespace

StatsCollector::StatsCollector(const StatsRequest& req, const PromptLayout& layout, const ModelShape& shape,
                               int64_t head_dim)
    : req_(req), layout_(layout), shape_(shape), head_dim_(head_dim) {
    const int64_t m = layout_.m, H = shape_.n_head;
    elite_first_ = std::min(req_.elite_from, m - 1);  // an empty window T is {m-1}
    first_row_ = m;
    for (int64_t r0 : req_.colsum_from) first_row_ = std::min(first_row_, std::max<int64_t>(r0, 0));
    if (req_.density) first_row_ = std::min(first_row_, req_.density_from);
    if (req_.elite) first_row_ = std::min(first_row_, elite_first_);
    stats_.resize(static_cast<size_t>(shape_.n_layer));
    double total = 0.0;
    for (int64_t q = std::max<int64_t>(req_.density_from, 0); q < m; ++q) total += static_cast<double>(q + 1);
    for (LayerStats& s : stats_) {
        s.colsum.assign(req_.colsum_from.size(), std::vector<float>(static_cast<size_t>(H * m), 0.0f));
        if (req_.density) {
            s.density_count.assign(static_cast<size_t>(H), 0.0);
            s.density_total = total;
        }
        if (req_.elite) {
            s.elite_importance.assign(static_cast<size_t>(H) * layout_.visual.size(), 0.0f);
            s.elite_size.assign(static_cast<size_t>(H), 0.0f);
        }
    }
}

void StatsCollector::observe(int layer, const float* q, const int32_t* pos, int64_t n, const KVCache& kv,
                             ThreadPool& pool) {
    if (n <= 0 || pos[n - 1] < first_row_) return;
    const auto t0 = std::chrono::steady_clock::now();
    const bool has_last = pos[n - 1] == layout_.m - 1;
    if (req_.elite && has_last && elite_first_ < pos[0])
        throw Error(strprintf("internal: the AirCache window starts at %lld but the last prefill chunk at %d",
                              static_cast<long long>(elite_first_), pos[0]));
    const int G = shape_.n_head / shape_.n_head_kv;
    const bool need_rows = !req_.colsum_from.empty() || req_.density;
    pool.parallel_for(shape_.n_head_kv, [&](int64_t g0, int64_t g1) {
        thread_local std::vector<float> kbuf;
        for (int64_t g = g0; g < g1; ++g) {
            const float* K = keys_f32(kv, layer, static_cast<int>(g), has_last ? layout_.m : pos[n - 1] + 1, kbuf);
            for (int h = static_cast<int>(g) * G; h < (static_cast<int>(g) + 1) * G; ++h) {
                if (need_rows) rows(layer, h, q, pos, n, K);
                if (req_.elite && has_last) elite(layer, h, q, pos[0], K);
            }
        }
    });
    ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void StatsCollector::rows(int layer, int h, const float* q, const int32_t* pos, int64_t n, const float* K) {
    const int64_t H = shape_.n_head, D = head_dim_, m = layout_.m;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    LayerStats& st = stats_[static_cast<size_t>(layer)];
    thread_local std::vector<float> s;
    const int64_t colsum_first = req_.colsum_from.empty() ? m : req_.colsum_from.front();
    for (int64_t t = 0; t < n; ++t) {
        const int64_t p = pos[t];
        const bool want_col = p >= colsum_first, want_den = req_.density && p >= req_.density_from;
        if (!want_col && !want_den) continue;
        const int64_t L = p + 1;
        s.resize(static_cast<size_t>(L));
        const float* qv = q + (t * H + h) * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j < L; ++j) {
            s[j] = dot(qv, K + j * D, D) * scale;
            mx = std::max(mx, s[j]);
        }
        if (want_den) {
            const double thr = static_cast<double>(mx) + req_.density_ln_p;
            int64_t c = 0;
            for (int64_t j = 0; j < L; ++j) c += static_cast<double>(s[j]) < thr;
            st.density_count[static_cast<size_t>(h)] += static_cast<double>(c);
        }
        if (want_col) {
            float sum = 0.0f;
            for (int64_t j = 0; j < L; ++j) sum += (s[j] = std::exp(s[j] - mx));
            const float inv = 1.0f / sum;
            for (size_t k = 0; k < req_.colsum_from.size(); ++k) {
                if (p < req_.colsum_from[k]) continue;
                float* col = st.colsum[k].data() + h * m;
                for (int64_t j = 0; j < L; ++j) col[j] += s[j] * inv;
            }
        }
    }
}

void StatsCollector::elite(int layer, int h, const float* q, int32_t pos0, const float* K) {
    const int64_t H = shape_.n_head, D = head_dim_, m = layout_.m;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const size_t Nv = layout_.visual.size();
    LayerStats& st = stats_[static_cast<size_t>(layer)];
    auto qrow = [&](int64_t p) { return q + ((p - pos0) * H + h) * D; };
    // 1. elite window: the rows of T whose logit from the reference row m-1 is within ln(alpha) of
    //    the largest (the largest always qualifies)
    const int64_t T0 = elite_first_;
    std::vector<float> sref(static_cast<size_t>(m - T0));
    float mx = -INFINITY;
    for (int64_t j = T0; j < m; ++j) {
        sref[static_cast<size_t>(j - T0)] = dot(qrow(m - 1), K + j * D, D) * scale;
        mx = std::max(mx, sref[static_cast<size_t>(j - T0)]);
    }
    std::vector<int64_t> E;
    for (int64_t j = T0; j < m; ++j)
        if (static_cast<double>(sref[static_cast<size_t>(j - T0)]) >= static_cast<double>(mx) + req_.elite_ln_alpha)
            E.push_back(j);
    // 2. visual importance: each elite row's softmax over the keys of V ∪ E it can see, renormalised
    //    over that set; averaged over the elite rows
    std::vector<double> acc(Nv, 0.0);
    std::vector<float> s;
    std::vector<int64_t> keys;
    for (int64_t j : E) {
        keys.clear();
        for (int32_t v : layout_.visual)
            if (v <= j) keys.push_back(v);
        for (int64_t e : E)
            if (e <= j && !layout_.is_visual[static_cast<size_t>(e)]) keys.push_back(e);
        s.resize(keys.size());
        float rmx = -INFINITY;
        for (size_t i = 0; i < keys.size(); ++i) {
            s[i] = dot(qrow(j), K + keys[i] * D, D) * scale;
            rmx = std::max(rmx, s[i]);
        }
        double sum = 0.0;
        for (size_t i = 0; i < keys.size(); ++i) sum += (s[i] = std::exp(s[i] - rmx));
        size_t vi = 0;  // visual keys come first, in the order of layout_.visual
        for (size_t i = 0; i < keys.size() && layout_.is_visual[static_cast<size_t>(keys[i])]; ++i, ++vi)
            acc[vi] += s[i] / sum;
    }
    float* I = st.elite_importance.data() + static_cast<size_t>(h) * Nv;
    for (size_t i = 0; i < Nv; ++i) I[i] = static_cast<float>(acc[i] / static_cast<double>(E.size()));
    st.elite_size[static_cast<size_t>(h)] = static_cast<float>(E.size());
}

}  // namespace compress
}  // namespace aircache
