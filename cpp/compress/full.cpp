// full — keeps every position: the identity, bit-identical to running without compression.
#include "common.h"
#include "compress/policy.h"

namespace aircache {
namespace compress {
namespace {

class Full final : public Policy {
public:
    const char* name() const override { return "full"; }
    const char* description() const override { return "keeps the whole KV cache (no compression)"; }
    Plan plan(const PlanContext& ctx) const override {
        if (ctx.params.budget != 1.0)
            throw InputError(strprintf("KV policy 'full' keeps everything: kv_budget must be 1.0 (got %g)", ctx.params.budget));
        Plan p;
        p.identity = true;
        const int64_t N = static_cast<int64_t>(candidates(ctx.layout, ctx.params.scope).size());
        p.layer_budget.assign(static_cast<size_t>(ctx.shape.n_layer), N);
        return p;
    }
};

}  // namespace

const Policy& policy_full() {
    static const Full p;
    return p;
}

}  // namespace compress
}  // namespace aircache
