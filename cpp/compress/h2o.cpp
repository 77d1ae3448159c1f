// h2o (Heavy-Hitter Oracle) — column sums of attention over every prompt row; uniform budget;
// in `all` scope the most recent floor(h2o_recent * k_l) positions are kept first.
#include <cmath>

#include "compress/policy.h"
#include "compress/probes/colsum.h"

namespace aircache {
namespace compress {
namespace {

class H2O final : public Policy {
public:
    const char* name() const override { return "h2o"; }
    const char* description() const override {
        return "column sums of attention over all prompt rows, head mean (uniform budget; all scope: a recent window first)";
    }
    std::vector<OptionSpec> options() const override {
        OptionSpec s;
        s.name = "h2o_recent";
        s.kind = OptionSpec::Float;
        s.def = "0.5";
        s.lo = 0;
        s.hi = 1;
        s.help = "all scope: fraction of k_l given to the most recent positions";
        return {s};
    }
    ProbeSet request(const PromptLayout&, const CompressParams&, const ParsedOptions&) const override {
        ProbeSet r;
        r.add(std::make_shared<ColsumProbe>(std::vector<int64_t>{0}));
        return r;
    }
    Plan plan(const PlanContext& ctx) const override {
        const ColsumProbe& col = ctx.probes.get(ColsumProbe({0}));
        ScoredPolicyHooks h;
        h.k = uniform_budgets(ctx);
        h.score = [&](int layer, int group) { return head_mean(col.colsum(layer, 0), ctx.layout.m, ctx.shape, group); };
        if (ctx.params.scope == Scope::All) {
            const double frac = ctx.opt.num("h2o_recent");
            h.protect = [&, frac](int, int64_t k) {
                return last_positions(ctx.layout.m, static_cast<int64_t>(std::floor(frac * static_cast<double>(k))));
            };
        }
        return plan_by_scores(ctx, h);
    }
};

}  // namespace

const Policy& policy_h2o() {
    static const H2O p;
    return p;
}

}  // namespace compress
}  // namespace aircache
