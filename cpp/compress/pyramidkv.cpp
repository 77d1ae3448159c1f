// pyramidkv — the SnapKV score with a pyramid of budgets: lower layers keep more (a linear schedule
// from hi at layer 0 to lo at layer L-1 around the mean budget C = K / L).
#include "compress/snapkv_score.h"

namespace aircache {
namespace compress {
namespace {

class PyramidKV final : public Policy {
public:
    const char* name() const override { return "pyramidkv"; }
    const char* description() const override {
        return "the snapkv score with a linear budget schedule over layers, bottom largest";
    }
    std::vector<OptionSpec> options() const override {
        OptionSpec b;
        b.name = "pyr_beta";
        b.kind = OptionSpec::Float;
        b.def = "20";
        b.lo = 1;
        b.hi = 1e6;
        b.help = "ratio of the schedule: lo = (C - w) / beta at the top layer";
        std::vector<OptionSpec> v = {b};
        for (const OptionSpec& o : snapkv_options()) v.push_back(o);
        return v;
    }
    ProbeSet request(const PromptLayout& layout, const CompressParams&, const ParsedOptions& opt) const override {
        return snapkv_request(layout, opt);
    }
    Plan plan(const PlanContext& ctx) const override {
        const int L = ctx.shape.n_layer;
        const int64_t N = static_cast<int64_t>(candidates(ctx.layout, ctx.params.scope).size());
        const int64_t K = total_budget(ctx.params.budget, N, L);
        const double C = static_cast<double>(K) / L;
        const double w = ctx.params.scope == Scope::All ? static_cast<double>(snapkv_window(ctx.layout, ctx.opt)) : 0.0;
        const double beta = ctx.opt.num("pyr_beta");
        const double lo = (C - w) / beta, hi = 2.0 * (C - w) - lo;
        std::vector<double> t(static_cast<size_t>(L), C);
        if (L > 1 && hi <= static_cast<double>(N) - w)
            for (int l = 0; l < L; ++l) t[static_cast<size_t>(l)] = w + hi - l * (hi - lo) / (L - 1);
        ScoredPolicyHooks h;
        h.k = apportion(t, K, N);
        h.score = [&](int layer, int group) { return snapkv_score(ctx, layer, group); };
        if (ctx.params.scope == Scope::All)
            h.protect = [&](int, int64_t) { return last_positions(ctx.layout.m, snapkv_window(ctx.layout, ctx.opt)); };
        return plan_by_scores(ctx, h);
    }
};

}  // namespace

const Policy& policy_pyramidkv() {
    static const PyramidKV p;
    return p;
}

}  // namespace compress
}  // namespace aircache
