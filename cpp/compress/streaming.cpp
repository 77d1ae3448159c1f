// streaming (StreamingLLM) — the first `stream_sinks` candidates (attention sinks) plus the most
// recent ones; no score. In visual scope the candidates are the visual positions.
#include <algorithm>

#include "compress/policy.h"

namespace aircache {
namespace compress {
namespace {

class Streaming final : public Policy {
public:
    const char* name() const override { return "streaming"; }
    const char* description() const override {
        return "keeps the first stream_sinks candidates and the most recent k_l - sinks (uniform budget; no score)";
    }
    std::vector<OptionSpec> options() const override {
        OptionSpec s;
        s.name = "stream_sinks";
        s.kind = OptionSpec::Int;
        s.def = "4";
        s.lo = 0;
        s.hi = 1e9;
        s.help = "candidates kept from the start (k_l <= sinks keeps the first k_l)";
        return {s};
    }
    Plan plan(const PlanContext& ctx) const override {
        const std::vector<int32_t> cands = candidates(ctx.layout, ctx.params.scope);
        const int64_t sinks = ctx.opt.integer("stream_sinks"), N = static_cast<int64_t>(cands.size());
        ScoredPolicyHooks h;
        h.k = uniform_budgets(ctx);
        // a score that ranks the sinks first, then recency: the top k_l are sinks + the last k_l - sinks
        h.score = [&](int layer, int) {
            const int64_t k = h.k[static_cast<size_t>(layer)];
            std::vector<double> score(static_cast<size_t>(ctx.layout.m), 0.0);
            for (int64_t i = 0; i < N; ++i) {
                const bool sink = i < std::min(sinks, k);
                score[static_cast<size_t>(cands[static_cast<size_t>(i)])] = sink ? 2.0 * N + static_cast<double>(N - i)
                                                                                 : static_cast<double>(i);
            }
            return score;
        };
        return plan_by_scores(ctx, h);
    }
};

}  // namespace

const Policy& policy_streaming() {
    static const Streaming p;
    return p;
}

}  // namespace compress
}  // namespace aircache
