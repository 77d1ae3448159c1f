// snapkv — attention of the last snap_window prompt rows, pooled over positions; uniform budget; in
// `all` scope the window positions are kept first.
#include "compress/snapkv_score.h"

namespace aircache {
namespace compress {
namespace {

class SnapKV final : public Policy {
public:
    const char* name() const override { return "snapkv"; }
    const char* description() const override {
        return "column sums of the last snap_window rows' attention, pooled over positions (uniform budget; "
               "all scope: the window first)";
    }
    std::vector<OptionSpec> options() const override { return snapkv_options(); }
    ProbeSet request(const PromptLayout& layout, const CompressParams&, const ParsedOptions& opt) const override {
        return snapkv_request(layout, opt);
    }
    Plan plan(const PlanContext& ctx) const override {
        ScoredPolicyHooks h;
        h.k = uniform_budgets(ctx);
        h.score = [&](int layer, int group) { return snapkv_score(ctx, layer, group); };
        if (ctx.params.scope == Scope::All)
            h.protect = [&](int, int64_t) { return last_positions(ctx.layout.m, snapkv_window(ctx.layout, ctx.opt)); };
        return plan_by_scores(ctx, h);
    }
};

}  // namespace

const Policy& policy_snapkv() {
    static const SnapKV p;
    return p;
}

}  // namespace compress
}  // namespace aircache
