// aircache (AirCache) — elite observation window, visual importance from the elite rows' attention
// restricted to visual + elite keys, adaptive layer budgets from the strength and skewness of that
// importance. Visual scope only: it compresses visual KV by design.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "compress/policy.h"
#include "compress/probes/elite.h"

namespace aircache {
namespace compress {
namespace {

constexpr double kEps = 1e-6;

// Normalise a per-layer series (floored at eps) across layers: `mean` s / mean(s), or `minmax`
// eps + (s - min) / (max - min) divided by its mean (all-equal values give 1).
std::vector<double> normalise(std::vector<double> s, const std::string& how) {
    const size_t L = s.size();
    for (double& x : s) x = std::max(x, kEps);
    if (how == "minmax") {
        const auto [mn, mx] = std::minmax_element(s.begin(), s.end());
        const double lo = *mn, hi = *mx;
        if (hi == lo) return std::vector<double>(L, 1.0);
        for (double& x : s) x = kEps + (x - lo) / (hi - lo);
    }
    double mean = 0.0;
    for (double x : s) mean += x;
    mean /= static_cast<double>(L);
    for (double& x : s) x /= mean;
    return s;
}

class AirCache final : public Policy {
public:
    const char* name() const override { return "aircache"; }
    const char* description() const override {
        return "elite observation window + adaptive layer budgets from importance strength and skewness (visual scope)";
    }
    std::vector<OptionSpec> options() const override {
        OptionSpec a, n, inv, b;
        a.name = "air_alpha";
        a.kind = OptionSpec::Float;
        a.def = "0.9";
        a.lo = 0;
        a.hi = 1;
        a.lo_open = true;
        a.help = "elite threshold: text rows whose attention from the last row is >= alpha times the largest";
        n.name = "air_norm";
        n.kind = OptionSpec::Choice;
        n.def = "mean";
        n.choices = {"mean", "minmax"};
        n.help = "normalisation of strength and skewness across layers";
        inv.name = "air_invert_skew";
        inv.kind = OptionSpec::Bool;
        inv.def = "false";
        inv.help = "use the inverse of the normalised skewness";
        b.name = "air_budget";
        b.kind = OptionSpec::Choice;
        b.def = "adaptive";
        b.choices = {"adaptive", "strength", "skew", "uniform"};
        b.help = "layer budget: (strength + skew) / 2, strength, skew, or uniform";
        return {a, n, inv, b};
    }
    void check_scope(Scope s) const override {
        if (s != Scope::Visual)
            throw InputError("KV policy 'aircache' compresses visual KV only: kv_scope must be 'visual' (got 'all')");
    }
    ProbeSet request(const PromptLayout& layout, const CompressParams&, const ParsedOptions& opt) const override {
        ProbeSet r;
        if (!layout.visual.empty())
            r.add(std::make_shared<EliteProbe>(layout.post_vision_start(), std::log(opt.num("air_alpha"))));
        return r;
    }
    Plan plan(const PlanContext& ctx) const override {
        const int L = ctx.shape.n_layer, H = ctx.shape.n_head;
        const size_t Nv = ctx.layout.visual.size();
        Plan empty;
        if (Nv == 0) {  // nothing visual to compress
            empty.layer_budget.assign(static_cast<size_t>(L), 0);
            return empty;
        }
        const int64_t K = total_budget(ctx.params.budget, static_cast<int64_t>(Nv), L);
        // I[v] per layer: mean over all query heads; strength and (sample) skewness
        std::vector<double> strength(static_cast<size_t>(L)), skew(static_cast<size_t>(L)), esize(static_cast<size_t>(L));
        const EliteProbe& elite =
            ctx.probes.get(EliteProbe(ctx.layout.post_vision_start(), std::log(ctx.opt.num("air_alpha"))));
        for (int l = 0; l < L; ++l) {
            const std::vector<float>& imp = elite.importance(l);
            std::vector<double> I(Nv, 0.0);
            double es = 0.0;
            for (int h = 0; h < H; ++h) {
                for (size_t i = 0; i < Nv; ++i) I[i] += imp[static_cast<size_t>(h) * Nv + i];
                es += elite.elite_size(l)[static_cast<size_t>(h)];
            }
            double sum = 0.0;
            for (double& x : I) sum += (x /= H);
            esize[static_cast<size_t>(l)] = es / H;
            const double n = static_cast<double>(Nv), mu = sum / n;
            double var = 0.0;
            for (double x : I) var += (x - mu) * (x - mu);
            double sk = 0.0;
            if (Nv >= 3 && var > 0.0) {
                const double sd = std::sqrt(var / (n - 1.0));
                for (double x : I) sk += std::pow((x - mu) / sd, 3);
                sk *= n / ((n - 1.0) * (n - 2.0));
            }
            strength[static_cast<size_t>(l)] = std::max(sum, kEps);
            skew[static_cast<size_t>(l)] = std::max(sk, kEps);
        }
        const std::string& how = ctx.opt.str("air_norm");
        const std::vector<double> st_n = normalise(strength, how);
        std::vector<double> sk_n = normalise(skew, how);
        if (ctx.opt.flag("air_invert_skew")) {
            for (double& x : sk_n) x = 1.0 / x;
            double mean = 0.0;
            for (double x : sk_n) mean += x;
            mean /= L;
            for (double& x : sk_n) x /= mean;
        }
        const std::string& mode = ctx.opt.str("air_budget");
        const double r = ctx.params.budget;
        std::vector<double> t(static_cast<size_t>(L)), frac(static_cast<size_t>(L));
        for (int l = 0; l < L; ++l) {
            const size_t i = static_cast<size_t>(l);
            frac[i] = mode == "adaptive" ? 0.5 * (st_n[i] + sk_n[i]) * r
                      : mode == "strength" ? st_n[i] * r
                      : mode == "skew"     ? sk_n[i] * r
                                           : r;
            t[i] = frac[i] * static_cast<double>(Nv);
        }
        ScoredPolicyHooks h;
        h.k = apportion(t, K, static_cast<int64_t>(Nv));
        // score over prompt positions: I at the visual ones (mean over all heads, or a KV group's)
        h.score = [&](int layer, int group) {
            const std::vector<float>& imp = elite.importance(layer);
            const int G = H / ctx.shape.n_head_kv;
            const int h0 = group < 0 ? 0 : group * G, h1 = group < 0 ? H : (group + 1) * G;
            std::vector<double> score(static_cast<size_t>(ctx.layout.m), 0.0);
            for (size_t i = 0; i < Nv; ++i) {
                double s = 0.0;
                for (int hh = h0; hh < h1; ++hh) s += imp[static_cast<size_t>(hh) * Nv + i];
                score[static_cast<size_t>(ctx.layout.visual[i])] = s / (h1 - h0);
            }
            return score;
        };
        Plan plan = plan_by_scores(ctx, h);
        plan.diagnostics["elite_size"] = esize;
        plan.diagnostics["strength"] = strength;
        plan.diagnostics["skewness"] = skew;
        plan.diagnostics["budget_fraction"] = frac;
        return plan;
    }
};

}  // namespace

const Policy& policy_aircache() {
    static const AirCache p;
    return p;
}

}  // namespace compress
}  // namespace aircache
