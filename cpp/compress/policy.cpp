#include "compress/policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "common.h"

namespace aircache {
namespace compress {

// The registry: one line per policy file.
const Policy& policy_full();
const Policy& policy_random();
const Policy& policy_streaming();
const Policy& policy_h2o();
const Policy& policy_snapkv();
const Policy& policy_pyramidkv();
const Policy& policy_vlcache();
const Policy& policy_aircache();
const Policy& policy_mosaic();

const std::vector<const Policy*>& all_policies() {
    static const std::vector<const Policy*> v = {&policy_full(),   &policy_random(),    &policy_streaming(),
                                                 &policy_h2o(),    &policy_snapkv(),    &policy_pyramidkv(),
                                                 &policy_vlcache(), &policy_aircache(), &policy_mosaic()};
    return v;
}

static std::string policy_names() {
    std::string s;
    for (const Policy* p : all_policies()) s += (s.empty() ? "" : ", ") + std::string(p->name());
    return s;
}

const Policy& find_policy(const std::string& name) {
    for (const Policy* p : all_policies())
        if (name == p->name()) return *p;
    throw InputError("unknown KV policy '" + name + "' (valid: " + policy_names() + ")");
}

Scope scope_from_name(const std::string& s) {
    if (s == "visual") return Scope::Visual;
    if (s == "all") return Scope::All;
    throw InputError("unknown kv_scope '" + s + "' (valid: visual, all)");
}

Selection selection_from_name(const std::string& s) {
    if (s == "layer") return Selection::Layer;
    if (s == "kv_head") return Selection::KVHead;
    throw InputError("unknown kv_selection '" + s + "' (valid: layer, kv_head)");
}

const char* scope_name(Scope s) { return s == Scope::Visual ? "visual" : "all"; }
const char* selection_name(Selection s) { return s == Selection::Layer ? "layer" : "kv_head"; }

// --------------------------------------------------------------------------------------------
// options

std::string OptionSpec::describe() const {
    std::string range;
    auto num = [](double x) {
        std::ostringstream o;
        o << x;
        return o.str();
    };
    switch (kind) {
        case Float: range = std::string("float in ") + (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + (hi_open ? ")" : "]"); break;
        case Int: range = "integer >= " + num(lo) + (hi < 1e9 ? " and <= " + num(hi) : ""); break;
        case Bool: range = "true|false"; break;
        case Choice: {
            range = "one of ";
            for (size_t i = 0; i < choices.size(); ++i) range += (i ? "|" : "") + choices[i];
            break;
        }
    }
    return name + " (" + range + ", default " + def + "): " + help;
}

double ParsedOptions::num(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) throw Error("internal: option '" + name + "' not declared");
    const std::string& v = it->second;
    if (v == "true") return 1.0;
    if (v == "false") return 0.0;
    return std::stod(v);
}

const std::string& ParsedOptions::str(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) throw Error("internal: option '" + name + "' not declared");
    return it->second;
}

ParsedOptions parse_options(const Policy& p, const std::map<std::string, std::string>& raw) {
    const std::vector<OptionSpec> specs = p.options();
    auto valid = [&]() {
        std::string s;
        for (const OptionSpec& o : specs) s += "\n  " + o.describe();
        return specs.empty() ? std::string(" (this policy has no options)") : ":" + s;
    };
    ParsedOptions out;
    for (const OptionSpec& o : specs) out.values[o.name] = o.def;
    for (const auto& kv : raw) {
        const std::string& name = kv.first;
        const std::string& value = kv.second;
        auto it = std::find_if(specs.begin(), specs.end(), [&](const OptionSpec& o) { return o.name == name; });
        if (it == specs.end())
            throw InputError("unknown option '" + name + "' for KV policy '" + p.name() + "'" + valid());
        const OptionSpec& o = *it;
        std::string v = value;
        auto bad = [&]() { throw InputError("KV policy '" + std::string(p.name()) + "': bad value '" + value + "' for " + o.describe()); };
        if (o.kind == OptionSpec::Bool) {
            if (v == "1" || v == "true" || v == "True" || v == "yes") v = "true";
            else if (v == "0" || v == "false" || v == "False" || v == "no") v = "false";
            else bad();
        } else if (o.kind == OptionSpec::Choice) {
            if (std::find(o.choices.begin(), o.choices.end(), v) == o.choices.end()) bad();
        } else {
            double x;
            size_t used = 0;
            try {
                x = std::stod(v, &used);
            } catch (...) {
                bad();
            }
            if (used != v.size() || !std::isfinite(x)) bad();
            if (o.kind == OptionSpec::Int && x != std::floor(x)) bad();
            if (x < o.lo || x > o.hi || (o.lo_open && x == o.lo) || (o.hi_open && x == o.hi)) bad();
        }
        out.values[name] = v;
    }
    return out;
}

std::string describe_policies() {
    std::string s;
    for (const Policy* p : all_policies()) {
        s += std::string(p->name()) + ": " + p->description() + "\n";
        for (const OptionSpec& o : p->options()) s += "    " + o.describe() + "\n";
    }
    return s;
}

// --------------------------------------------------------------------------------------------
// budget, apportionment, selection

int64_t round_half_away(double x) { return static_cast<int64_t>(x < 0 ? -std::floor(-x + 0.5) : std::floor(x + 0.5)); }

std::vector<int32_t> candidates(const PromptLayout& layout, Scope scope) {
    if (scope == Scope::Visual) return layout.visual;
    std::vector<int32_t> all(static_cast<size_t>(layout.m));
    std::iota(all.begin(), all.end(), 0);
    return all;
}

int64_t total_budget(double r, int64_t N, int L) {
    const int64_t K = round_half_away(r * static_cast<double>(N) * L);
    return std::clamp<int64_t>(K, L, N * L);
}

std::vector<int64_t> apportion(std::vector<double> t, int64_t K, int64_t N) {
    const size_t L = t.size();
    const double n = static_cast<double>(N), k = static_cast<double>(K);
    // 1. clip to [1, N] and rescale the unclipped targets to the total, at most L times
    for (size_t it = 0; it < L; ++it) {
        std::vector<bool> clipped(L, false);
        double sum_clipped = 0.0, sum_free = 0.0;
        for (size_t l = 0; l < L; ++l) {
            if (!(t[l] > 1.0)) {
                t[l] = 1.0;
                clipped[l] = true;
            } else if (t[l] >= n) {
                t[l] = n;
                clipped[l] = true;
            }
            (clipped[l] ? sum_clipped : sum_free) += t[l];
        }
        if (std::fabs(sum_clipped + sum_free - k) < 1e-9 * std::max(1.0, k) || sum_free <= 0.0) break;
        const double f = (k - sum_clipped) / sum_free;
        for (size_t l = 0; l < L; ++l)
            if (!clipped[l]) t[l] *= f;
    }
    for (double& x : t) x = std::clamp(x, 1.0, n);
    // 2. floors, then the remainder one at a time: largest fraction first, ties to the lower layer
    std::vector<int64_t> out(L);
    int64_t sum = 0;
    for (size_t l = 0; l < L; ++l) sum += out[l] = static_cast<int64_t>(std::floor(t[l]));
    std::vector<size_t> order(L);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return (t[a] - static_cast<double>(out[a])) > (t[b] - static_cast<double>(out[b]));
    });
    for (int64_t rem = K - sum; rem > 0;) {
        bool given = false;
        for (size_t l : order) {
            if (rem == 0) break;
            if (out[l] < N) {
                ++out[l];
                --rem;
                given = true;
            }
        }
        if (!given) break;
    }
    // (a total below the sum of floors can only follow degenerate targets: take back from the
    //  smallest fractions, last layers first, never below 1)
    for (int64_t excess = std::accumulate(out.begin(), out.end(), int64_t(0)) - K; excess > 0;) {
        bool taken = false;
        for (auto it = order.rbegin(); it != order.rend() && excess > 0; ++it)
            if (out[*it] > 1) {
                --out[*it];
                --excess;
                taken = true;
            }
        if (!taken) break;
    }
    return out;
}

std::vector<int32_t> select_top(const std::vector<double>& score, const std::vector<int32_t>& cands, int64_t k,
                                const std::vector<int32_t>& protect) {
    std::vector<int32_t> out;
    if (k <= 0) return out;
    if (static_cast<int64_t>(protect.size()) >= k) {
        out.assign(protect.end() - k, protect.end());
        std::sort(out.begin(), out.end());
        return out;
    }
    out = protect;
    std::vector<int32_t> rest;
    rest.reserve(cands.size());
    for (int32_t c : cands)
        if (!std::binary_search(protect.begin(), protect.end(), c)) rest.push_back(c);
    const size_t need = std::min(rest.size(), static_cast<size_t>(k) - protect.size());
    std::partial_sort(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(need), rest.end(), [&](int32_t a, int32_t b) {
        const double sa = score[static_cast<size_t>(a)], sb = score[static_cast<size_t>(b)];
        return sa > sb || (sa == sb && a < b);
    });
    out.insert(out.end(), rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(need));
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<double> head_mean(const std::vector<float>& per_head, int64_t m, const ModelShape& s, int group) {
    const int G = s.n_head / s.n_head_kv;
    const int h0 = group < 0 ? 0 : group * G, h1 = group < 0 ? s.n_head : (group + 1) * G;
    std::vector<double> out(static_cast<size_t>(m), 0.0);
    for (int h = h0; h < h1; ++h)
        for (int64_t j = 0; j < m; ++j) out[static_cast<size_t>(j)] += per_head[static_cast<size_t>(h * m + j)];
    for (double& x : out) x /= static_cast<double>(h1 - h0);
    return out;
}

std::vector<int32_t> kept_positions(const PromptLayout& layout, Scope scope, const std::vector<int32_t>& chosen) {
    if (scope == Scope::All) return chosen;
    std::vector<int32_t> out;
    out.reserve(static_cast<size_t>(layout.m - static_cast<int64_t>(layout.visual.size()) + static_cast<int64_t>(chosen.size())));
    size_t c = 0;
    for (int32_t p = 0; p < layout.m; ++p) {
        if (!layout.is_visual[static_cast<size_t>(p)]) {
            out.push_back(p);
        } else {
            while (c < chosen.size() && chosen[c] < p) ++c;
            if (c < chosen.size() && chosen[c] == p) out.push_back(p);
        }
    }
    return out;
}

std::vector<int64_t> uniform_budgets(const PlanContext& ctx) {
    const int L = ctx.shape.n_layer;
    const int64_t N = static_cast<int64_t>(candidates(ctx.layout, ctx.params.scope).size());
    const int64_t K = total_budget(ctx.params.budget, N, L);
    return apportion(std::vector<double>(static_cast<size_t>(L), static_cast<double>(K) / L), K, N);
}

std::vector<int32_t> last_positions(int64_t m, int64_t n) {
    n = std::clamp<int64_t>(n, 0, m);
    std::vector<int32_t> out(static_cast<size_t>(n));
    std::iota(out.begin(), out.end(), static_cast<int32_t>(m - n));
    return out;
}

Plan plan_by_scores(const PlanContext& ctx, const ScoredPolicyHooks& hooks) {
    Plan plan;
    const int L = ctx.shape.n_layer;
    const std::vector<int32_t> cands = candidates(ctx.layout, ctx.params.scope);
    plan.layer_budget = hooks.k;
    plan.identity = true;
    for (int l = 0; l < L; ++l) {
        const int64_t k = hooks.k[static_cast<size_t>(l)];
        if (k < static_cast<int64_t>(cands.size())) plan.identity = false;
        const std::vector<int32_t> protect = hooks.protect ? hooks.protect(l, k) : std::vector<int32_t>{};
        if (ctx.params.selection == Selection::Layer) {
            plan.kept.push_back(kept_positions(ctx.layout, ctx.params.scope, select_top(hooks.score(l, -1), cands, k, protect)));
        } else {
            std::vector<std::vector<int32_t>> heads;
            for (int g = 0; g < ctx.shape.n_head_kv; ++g)
                heads.push_back(kept_positions(ctx.layout, ctx.params.scope, select_top(hooks.score(l, g), cands, k, protect)));
            plan.kept_heads.push_back(std::move(heads));
        }
    }
    return plan;
}

}  // namespace compress
}  // namespace aircache
