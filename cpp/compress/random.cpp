// random — k_l candidates drawn uniformly without replacement (a floor for every scored policy).
#include <algorithm>
#include <random>

#include "compress/policy.h"

namespace aircache {
namespace compress {
namespace {

class Random final : public Policy {
public:
    const char* name() const override { return "random"; }
    const char* description() const override {
        return "keeps k_l candidates drawn uniformly without replacement (uniform budget; deterministic for a seed)";
    }
    std::vector<OptionSpec> options() const override {
        OptionSpec s;
        s.name = "random_seed";
        s.kind = OptionSpec::Int;
        s.def = "0";
        s.lo = 0;
        s.hi = 9.0e15;
        s.help = "seed of the draw (each layer and KV head draws from its own stream)";
        return {s};
    }
    Plan plan(const PlanContext& ctx) const override {
        const std::vector<int32_t> cands = candidates(ctx.layout, ctx.params.scope);
        const uint64_t seed = static_cast<uint64_t>(ctx.opt.integer("random_seed"));
        ScoredPolicyHooks h;
        h.k = uniform_budgets(ctx);
        // random scores: a seeded permutation rank per (layer, head); the top k are a uniform draw
        h.score = [&](int layer, int group) {
            std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(layer) * 1000003ull +
                                static_cast<uint64_t>(group + 1));
            std::vector<double> score(static_cast<size_t>(ctx.layout.m), 0.0);
            for (int32_t c : cands) score[static_cast<size_t>(c)] = static_cast<double>(rng() >> 11);
            return score;
        };
        return plan_by_scores(ctx, h);
    }
};

}  // namespace

const Policy& policy_random() {
    static const Random p;
    return p;
}

}  // namespace compress
}  // namespace aircache
