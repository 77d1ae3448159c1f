#include "runtime/compression.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <limits>
#include <numeric>

#include "common.h"
#include "cpu/kernels.h"
#include "runtime/engine.h"
#include "runtime/prompt.h"

namespace aircache {

void check_compression(const compress::CompressParams& p) {
    const compress::Policy& pol = compress::find_policy(p.policy);
    if (!(p.budget > 0.0 && p.budget <= 1.0))
        throw InputError(strprintf("kv_budget must be in (0, 1] (got %g)", p.budget));
    pol.check_scope(p.scope);
    compress::parse_options(pol, p.options);
}

void check_compression(const Engine& e, const compress::CompressParams& p) {
    check_compression(p);
    if (p.policy == "full") return;
    if (e.shape().n_layer == 0)
        throw UnsupportedError(strprintf("KV compression ('%s') needs a layer that holds the whole prompt; every layer "
                                         "of this %s model is a sliding-window layer (use kv_policy 'full')",
                                         p.policy.c_str(), e.config().arch.c_str()));
}

Prefill::Prefill(Engine& e, Prompt&& p, int64_t m, const compress::CompressParams& cp, KVCache& kv, bool compress,
                 bool all_logits)
    : e_(e), own_(std::move(p)), p_(&own_), m_(m), cp_(cp), kv_(kv), compress_(compress), all_logits_(all_logits) {
    init();
}

Prefill::Prefill(Engine& e, const Prompt& p, int64_t m, const compress::CompressParams& cp, KVCache& kv, bool compress,
                 bool all_logits)
    : e_(e), p_(&p), m_(m), cp_(cp), kv_(kv), compress_(compress), all_logits_(all_logits) {
    init();
}

void Prefill::init() {
    if (m_ <= 0 || m_ > p_->size()) throw Error("internal: a prefill of no rows or beyond its prompt");
    const int64_t V = e_.config().n_vocab;
    logits_.assign(static_cast<size_t>((all_logits_ ? m_ : 1) * V), 0.0f);
    if (compress_) {
        check_compression(e_, cp_);
        const compress::Policy& pol = compress::find_policy(cp_.policy);
        const compress::ParsedOptions opt = compress::parse_options(pol, cp_.options);
        layout_ = p_->layout(m_);
        req_ = pol.request(layout_, cp_, opt);
        if (!req_.empty())
            stats_ = std::make_unique<compress::StatsCollector>(req_, layout_, e_.shape(), e_.config().head_dim);
        kv_.clear();
    }
}

bool Prefill::step() {
    if (done_) return true;
    const int64_t V = e_.config().n_vocab;
    if (next_ == 0) {
        // the prompt's rows and the room after them allocated at once, not grown chunk by chunk
        // (a compaction gives back what it frees); beyond n_ctx the forward's own check speaks
        for (int l = 0; l < e_.config().n_layer; ++l)
            kv_.ensure(l, std::min(kv_.capacity(), kv_.length(l) + m_ + room_));
    }
    if (next_ < m_) {
        next_ = e_.feed_chunk(*p_, next_, m_, kv_, all_logits_ ? logits_.data() + next_ * V : logits_.data(), all_logits_,
                              stats_.get());
        if (next_ < m_) return false;
    }
    if (compress_) {
        report_ = compress_prefilled(e_, layout_, cp_, req_, kv_);
        if (stats_) report_.importance_ms += stats_->elapsed_ms();
        // the memory compaction freed goes back (timed with the compaction)
        const auto t0 = std::chrono::steady_clock::now();
        kv_.shrink_to_fit(room_);
        report_.compact_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        report_.kv_capacity_bytes = kv_.capacity_bytes();
    } else {
        report_ = CompressionReport();
        report_.params = cp_;
        report_.kv_bytes_before = report_.kv_bytes_after = kv_.bytes_in_use();
        report_.kv_capacity_bytes = kv_.capacity_bytes();
    }
    report_.n_prompt = m_;
    done_ = true;
    return true;
}

CompressionReport prefill_compressed(Engine& e, const Prompt& p, int64_t m, const compress::CompressParams& cp,
                                     KVCache& kv, float* logits, bool all_logits, int64_t room) {
    Prefill pf(e, p, m, cp, kv, true, all_logits);
    pf.set_room(room);
    while (!pf.step()) {
    }
    std::copy(pf.logits().begin(), pf.logits().end(), logits);
    return std::move(pf.report());
}

// A plan's merges (compress::RowMerge) on the prefilled rows, before compaction: per planned layer
// and KV head, each merged row's weighted mean of K and V (or either alone) summed in float from the
// rows as prefilled (then stored in the cache's type, f16 by default, far coarser than the sums),
// written back, and its logit bias stored beside it (docs/compression.md, "Merging dropped rows").
// Host layers run on the engine's threads, every layer and KV head a task, the largest first.
static void apply_merges(KVCache& cache, const compress::ModelShape& sh, const compress::PromptLayout& layout,
                         const compress::Plan& plan, compress::Selection sel, ThreadPool& pool) {
    if (static_cast<int>(plan.merges.size()) != sh.n_layer)
        throw Error(strprintf("internal: a plan's merges cover %zu layers, not %d", plan.merges.size(), sh.n_layer));
    const int64_t D = cache.config().head_dim, m = layout.m;
    const int Hkv = sh.n_head_kv;
    for (int l = 0; l < sh.n_layer; ++l) {
        const auto& per_head = plan.merges[static_cast<size_t>(l)];
        if (!per_head.empty() && static_cast<int>(per_head.size()) != Hkv)
            throw Error(strprintf("internal: a plan's merges of layer %d cover %zu KV heads, not %d", l, per_head.size(), Hkv));
    }
    // the logit biases of merged rows, per layer and KV head (stored after the means, on this thread)
    std::vector<std::vector<int32_t>> bias_rows(static_cast<size_t>(sh.n_layer * Hkv));
    std::vector<std::vector<float>> bias_vals(bias_rows.size());
    auto one_head = [&](int l, int h) {  // reads and writes only KV head h's rows of layer l
        const auto& per_head = plan.merges[static_cast<size_t>(l)];
        if (per_head.empty()) return;
        const std::vector<compress::RowMerge>& merges = per_head[static_cast<size_t>(h)];
        if (merges.empty()) return;
        const int ml = sh.model_layer(l);
        const std::vector<int32_t>& kept = sel == compress::Selection::Layer ? plan.kept[static_cast<size_t>(l)]
                                                                             : plan.kept_heads[static_cast<size_t>(l)][static_cast<size_t>(h)];
        std::vector<int32_t>& brows = bias_rows[static_cast<size_t>(l * Hkv + h)];
        std::vector<float>& bvals = bias_vals[static_cast<size_t>(l * Hkv + h)];
        for (const compress::RowMerge& g : merges)
            if (g.bias != 0.0) {
                if (!std::isfinite(g.bias) || g.dst < 0 || g.dst >= m)
                    throw Error(strprintf("internal: a merge bias %g for row %d of layer %d", g.bias, g.dst, l));
                brows.push_back(g.dst);
                bvals.push_back(static_cast<float>(g.bias));
            }
        if (!plan.merge_keys && !plan.merge_values) return;
        // the rows: a host cache's F16 halves in place (the axpy converts them, exactly), else a float copy
        const cpu::KernelTable& kt = cpu::kernels();
        const bool in_place = cache.on_host(ml) && cache.config().type_k == KVType::F16 && cache.config().type_v == KVType::F16;
        thread_local std::vector<float> K, V, nk, nv;  // (reused: no fresh pages, no zeroing per head)
        if (plan.merge_keys && !in_place) cache.read_into(ml, h, false, K);
        if (plan.merge_values && !in_place) cache.read_into(ml, h, true, V);
        std::vector<int32_t> rows;
        nk.clear();
        nv.clear();
        for (const compress::RowMerge& g : merges) {
            if (g.dst < 0 || g.dst >= m || !std::binary_search(kept.begin(), kept.end(), g.dst) || g.w.size() != g.src.size())
                throw Error(strprintf("internal: a merge into row %d of layer %d, KV head %d, that is not kept", g.dst, l, h));
            const size_t o = rows.size() * static_cast<size_t>(D);
            if (plan.merge_keys) nk.resize(o + static_cast<size_t>(D), 0.0f);
            if (plan.merge_values) nv.resize(o + static_cast<size_t>(D), 0.0f);
            float* ak = plan.merge_keys ? nk.data() + o : nullptr;
            float* av = plan.merge_values ? nv.data() + o : nullptr;
            double wsum = 0.0;
            auto add = [&](int32_t r, double w) {
                if (r < 0 || r >= m || !(w >= 0.0) || !std::isfinite(w))
                    throw Error(strprintf("internal: a merge of row %d (weight %g) in layer %d", r, w, l));
                if (w == 0.0) return;
                wsum += w;
                const size_t ro = static_cast<size_t>(r) * static_cast<size_t>(D);
                const float wf = static_cast<float>(w);
                if (in_place) {
                    if (ak) kt.axpy_f16(wf, reinterpret_cast<const uint16_t*>(cache.k_row(ml, h, r)), ak, D);
                    if (av) kt.axpy_f16(wf, reinterpret_cast<const uint16_t*>(cache.v_row(ml, h, r)), av, D);
                } else {
                    if (ak) kt.axpy_f32(wf, K.data() + ro, ak, D);
                    if (av) kt.axpy_f32(wf, V.data() + ro, av, D);
                }
            };
            add(g.dst, g.w_dst);
            for (size_t i = 0; i < g.src.size(); ++i) add(g.src[i], g.w[i]);
            if (!(wsum > 0.0)) {  // nothing to average: the row stays as it is
                if (plan.merge_keys) nk.resize(o);
                if (plan.merge_values) nv.resize(o);
                continue;
            }
            rows.push_back(g.dst);
            const float inv = static_cast<float>(1.0 / wsum);
            for (int64_t d = 0; d < D; ++d) {
                if (ak) ak[d] *= inv;
                if (av) av[d] *= inv;
            }
        }
        if (!rows.empty())
            cache.write_rows(ml, h, rows, plan.merge_keys ? nk.data() : nullptr, plan.merge_values ? nv.data() : nullptr);
        for (auto* v : {&K, &V, &nk, &nv}) trim_scratch(*v);
    };
    bool host = true;
    for (int l = 0; l < sh.n_layer; ++l) host = host && cache.on_host(sh.model_layer(l));
    const int64_t n = static_cast<int64_t>(sh.n_layer) * Hkv;
    if (host && pool.size() > 1) {  // another backend's reads and writes stay on this thread
        std::vector<int64_t> order(static_cast<size_t>(n));
        std::vector<size_t> work(static_cast<size_t>(n), 0);  // rows averaged
        for (int64_t t = 0; t < n; ++t) {
            order[static_cast<size_t>(t)] = t;
            const auto& per_head = plan.merges[static_cast<size_t>(t / Hkv)];
            if (!per_head.empty())
                for (const compress::RowMerge& g : per_head[static_cast<size_t>(t % Hkv)]) work[static_cast<size_t>(t)] += g.src.size() + 1;
        }
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
            return work[static_cast<size_t>(a)] > work[static_cast<size_t>(b)];
        });
        pool.for_each(n, [&](int64_t i) {
            const int64_t t = order[static_cast<size_t>(i)];
            one_head(static_cast<int>(t / Hkv), static_cast<int>(t % Hkv));
        });
    } else {
        for (int64_t t = 0; t < n; ++t) one_head(static_cast<int>(t / Hkv), static_cast<int>(t % Hkv));
    }
    for (int64_t t = 0; t < n; ++t)
        if (!bias_rows[static_cast<size_t>(t)].empty())
            cache.set_bias(sh.model_layer(static_cast<int>(t / Hkv)), static_cast<int>(t % Hkv), bias_rows[static_cast<size_t>(t)],
                           bias_vals[static_cast<size_t>(t)]);
}

CompressionReport compress_prefilled(Engine& e, const compress::PromptLayout& layout, const compress::CompressParams& p,
                                     const compress::ProbeSet& probes, KVCache& cache) {
    using Clock = std::chrono::steady_clock;
    const compress::Policy& pol = compress::find_policy(p.policy);
    const compress::ParsedOptions opt = compress::parse_options(pol, p.options);
    const compress::ModelShape sh = e.shape();
    CompressionReport rep;
    rep.params = p;
    rep.n_prompt = layout.m;
    rep.n_visual = static_cast<int64_t>(layout.visual.size());
    rep.n_pos_axes = cache.config().n_pos_axes;
    rep.kv_bytes_before = cache.bytes_in_use();

    const auto tp = Clock::now();
    // the prefilled keys of a planned layer, for a policy that reads them (a host copy on any backend)
    auto keys = [&](int l, int h, std::vector<float>& out) {
        if (l < 0 || l >= sh.n_layer || h < 0 || h >= sh.n_head_kv)
            throw Error(strprintf("internal: a policy asked for the keys of layer %d / KV head %d", l, h));
        cache.read_into(sh.model_layer(l), h, false, out);
    };
    bool host_keys = true;
    for (int l = 0; l < sh.n_layer; ++l) host_keys = host_keys && cache.on_host(sh.model_layer(l));
    auto key_view = [&](int l, int h) {
        compress::PlanContext::KeyView v;
        if (l < 0 || l >= sh.n_layer || h < 0 || h >= sh.n_head_kv)
            throw Error(strprintf("internal: a policy asked for the keys of layer %d / KV head %d", l, h));
        const int ml = sh.model_layer(l);
        const KVType t = cache.config().type_k;
        if (cache.on_host(ml) && (t == KVType::F32 || t == KVType::F16)) {
            v.data = cache.k_row(ml, h, 0);
            v.row_bytes = cache.k_row_bytes();
            v.type = t == KVType::F16 ? GGMLType::F16 : GGMLType::F32;
        }
        return v;
    };
    const compress::PlanContext ctx{layout, sh, p, opt, probes, keys, host_keys, key_view, &e.pool()};
    compress::Plan plan = pol.plan(ctx);
    rep.plan_ms = std::chrono::duration<double, std::milli>(Clock::now() - tp).count();
    rep.importance_ms += rep.plan_ms;
    rep.diagnostics = std::move(plan.diagnostics);

    const auto tc = Clock::now();
    const int L = static_cast<int>(e.config().n_layer);
    const int A = cache.config().n_pos_axes;
    auto count_visual = [&](const std::vector<int32_t>& kept) {
        int64_t c = 0;
        for (int32_t k : kept) c += layout.is_visual[static_cast<size_t>(k)];
        return c;
    };
    // the model's layers: the policy's plan where it planned, else (a sliding-window layer of w
    // positions) the prompt rows the next position still sees, those within its last w - 1: the
    // rest are out of every later query's window, so dropping them changes nothing
    std::vector<int> planned(static_cast<size_t>(L), -1);
    for (int l = 0; l < sh.n_layer; ++l) planned[static_cast<size_t>(sh.model_layer(l))] = l;
    const std::vector<int64_t>& windows = e.config().layer_window;
    rep.layer_window.assign(static_cast<size_t>(L), 0);
    auto window_rows = [&](int l) {
        const int64_t w = windows[static_cast<size_t>(l)];
        const int32_t* pp = cache.positions(l, 0);
        int64_t next = 0;
        for (int64_t r = 0; r < layout.m; ++r) next = std::max<int64_t>(next, pp[r * A] + 1);
        std::vector<int32_t> rows;
        for (int64_t r = 0; r < layout.m; ++r)
            if (pp[r * A] > next - w) rows.push_back(static_cast<int32_t>(r));
        return rows;
    };
    for (int l = 0; l < L; ++l)
        if (planned[static_cast<size_t>(l)] < 0) rep.layer_window[static_cast<size_t>(l)] = windows[static_cast<size_t>(l)];
    if (!plan.identity && !plan.merges.empty()) apply_merges(cache, sh, layout, plan, p.selection, e.pool());
    if (plan.identity) {
        std::vector<int32_t> all(static_cast<size_t>(layout.m));
        std::iota(all.begin(), all.end(), 0);
        rep.kept.assign(static_cast<size_t>(L), all);
    } else if (p.selection == compress::Selection::Layer) {
        rep.kept.resize(static_cast<size_t>(L));
        for (int l = 0; l < L; ++l) {
            const int pl = planned[static_cast<size_t>(l)];
            rep.kept[static_cast<size_t>(l)] = pl >= 0 ? std::move(plan.kept[static_cast<size_t>(pl)]) : window_rows(l);
            cache.compact(l, rep.kept[static_cast<size_t>(l)]);
        }
        rep.compacted = true;
    } else {
        rep.kept_heads.resize(static_cast<size_t>(L));
        for (int l = 0; l < L; ++l) {
            const int pl = planned[static_cast<size_t>(l)];
            rep.kept_heads[static_cast<size_t>(l)] =
                pl >= 0 ? std::move(plan.kept_heads[static_cast<size_t>(pl)])
                        : std::vector<std::vector<int32_t>>(static_cast<size_t>(sh.n_head_kv), window_rows(l));
            cache.compact_heads(l, rep.kept_heads[static_cast<size_t>(l)]);
        }
        rep.compacted = true;
    }
    if (!rep.compacted) std::fill(rep.layer_window.begin(), rep.layer_window.end(), 0);
    // the policy's per-layer series on the model's layers (NaN where it did not plan)
    for (auto& [name, series] : rep.diagnostics)
        if (static_cast<int>(series.size()) == sh.n_layer && sh.n_layer != L) {
            std::vector<double> full(static_cast<size_t>(L), std::numeric_limits<double>::quiet_NaN());
            for (int l = 0; l < sh.n_layer; ++l) full[static_cast<size_t>(sh.model_layer(l))] = series[static_cast<size_t>(l)];
            series = std::move(full);
        }
    rep.compact_ms = std::chrono::duration<double, std::milli>(Clock::now() - tc).count();
    auto positions = [&](int l, int h) {
        const int32_t* pp = cache.positions(l, h);
        return std::vector<int32_t>(pp, pp + cache.length(l) * A);
    };
    for (int l = 0; l < L; ++l) {
        const std::vector<int32_t>& k = rep.kept_heads.empty() ? rep.kept[static_cast<size_t>(l)]
                                                               : rep.kept_heads[static_cast<size_t>(l)][0];
        rep.total_kept.push_back(static_cast<int64_t>(k.size()));
        int64_t v = 0;
        if (rep.kept_heads.empty()) {
            v = count_visual(k);
            rep.kept_pos.push_back(positions(l, 0));
        } else {  // every head keeps as many; report the mean of the visual counts over heads
            rep.kept_pos_heads.emplace_back();
            for (size_t h = 0; h < rep.kept_heads[static_cast<size_t>(l)].size(); ++h) {
                v += count_visual(rep.kept_heads[static_cast<size_t>(l)][h]);
                rep.kept_pos_heads.back().push_back(positions(l, static_cast<int>(h)));
            }
        }
        rep.visual_kept.push_back(rep.kept_heads.empty() ? v : v / static_cast<int64_t>(rep.kept_heads[static_cast<size_t>(l)].size()));
    }
    rep.kv_bytes_after = cache.bytes_in_use();
    rep.kv_capacity_bytes = cache.capacity_bytes();
    return rep;
}

}  // namespace aircache
