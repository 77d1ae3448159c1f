#include "runtime/compression.h"

#include <chrono>
#include <memory>
#include <numeric>

#include "common.h"
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

CompressionReport prefill_compressed(Engine& e, const Prompt& p, int64_t m, const compress::CompressParams& cp,
                                     KVCache& kv, float* logits, bool all_logits) {
    check_compression(cp);
    const compress::Policy& pol = compress::find_policy(cp.policy);
    const compress::ParsedOptions opt = compress::parse_options(pol, cp.options);
    const compress::PromptLayout layout = p.layout(m);
    compress::ProbeSet req = pol.request(layout, cp, opt);
    std::unique_ptr<compress::StatsCollector> stats;
    if (!req.empty()) stats = std::make_unique<compress::StatsCollector>(req, layout, e.shape(), e.config().head_dim);
    kv.clear();
    e.feed(p, 0, m, kv, logits, all_logits, stats.get());
    CompressionReport r = compress_prefilled(e, layout, cp, req, kv);
    if (stats) r.importance_ms += stats->elapsed_ms();
    return r;
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
    const compress::PlanContext ctx{layout, sh, p, opt, probes};
    compress::Plan plan = pol.plan(ctx);
    rep.plan_ms = std::chrono::duration<double, std::milli>(Clock::now() - tp).count();
    rep.importance_ms += rep.plan_ms;
    rep.diagnostics = std::move(plan.diagnostics);

    const auto tc = Clock::now();
    const int L = sh.n_layer;
    auto count_visual = [&](const std::vector<int32_t>& kept) {
        int64_t c = 0;
        for (int32_t k : kept) c += layout.is_visual[static_cast<size_t>(k)];
        return c;
    };
    if (plan.identity) {
        std::vector<int32_t> all(static_cast<size_t>(layout.m));
        std::iota(all.begin(), all.end(), 0);
        rep.kept.assign(static_cast<size_t>(L), all);
    } else if (p.selection == compress::Selection::Layer) {
        for (int l = 0; l < L; ++l) cache.compact(l, plan.kept[static_cast<size_t>(l)]);
        rep.kept = std::move(plan.kept);
        rep.compacted = true;
    } else {
        for (int l = 0; l < L; ++l) cache.compact_heads(l, plan.kept_heads[static_cast<size_t>(l)]);
        rep.kept_heads = std::move(plan.kept_heads);
        rep.compacted = true;
    }
    rep.compact_ms = std::chrono::duration<double, std::milli>(Clock::now() - tc).count();
    const int A = cache.config().n_pos_axes;
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
