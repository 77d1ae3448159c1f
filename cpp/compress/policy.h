// compress/policy.h — visual KV-cache compression: the policy interface and what all policies share.
//
// Compression happens once, right after prefill (docs/compression.md). A policy is a small
// class: it says which statistics it needs from the prefill's attention (request()), and turns
// them into a plan (plan()): the prompt positions each layer keeps (one set per layer, or one per
// KV head), and optionally rows to merge into the kept ones (Plan::merges). The engine never switches
// on policy names: it asks the registry.
//
//   const Policy& p = find_policy("aircache");
//   ParsedOptions opt = parse_options(p, {{"air_alpha", "0.8"}});
//   ProbeSet req = p.request(layout, params, opt);       // -> the importance pass during prefill
//   Plan plan = p.plan(PlanContext{layout, shape, params, opt, req, keys, keys_any_thread, key_view, &pool});
//
// Budget (shared): candidates are the visual positions (scope `visual`) or all prompt positions
// (`all`); N of them; total kept K = clamp(round(r·N·L), L, N·L) (round: half away from zero);
// per-layer targets are apportioned to integers exactly as docs/compression.md says (apportion()).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compress/layout.h"
#include "compress/probe.h"
#include "quant_blocks.h"
#include "threadpool.h"

namespace aircache {
namespace compress {

enum class Scope { Visual, All };
enum class Selection { Layer, KVHead };
Scope scope_from_name(const std::string& s);          // "visual" | "all" (InputError otherwise)
Selection selection_from_name(const std::string& s);  // "layer" | "kv_head"
const char* scope_name(Scope s);
const char* selection_name(Selection s);

// One option of a policy: name, kind, default, valid range.
struct OptionSpec {
    enum Kind { Float, Int, Bool, Choice };
    std::string name;
    Kind kind = Float;
    std::string def;                  // default, as text
    double lo = 0, hi = 0;            // inclusive range for Float/Int
    bool lo_open = false, hi_open = false;  // exclusive bounds
    std::vector<std::string> choices; // for Choice
    std::string help;
    std::string describe() const;     // "air_alpha (float in (0, 1], default 0.9): ..."
};

class ParsedOptions {
public:
    double num(const std::string& name) const;
    int64_t integer(const std::string& name) const { return static_cast<int64_t>(num(name)); }
    bool flag(const std::string& name) const { return num(name) != 0.0; }
    const std::string& str(const std::string& name) const;
    std::map<std::string, std::string> values;  // every option of the policy, defaults filled in
};

struct CompressParams {
    std::string policy = "full";
    double budget = 1.0;
    Scope scope = Scope::Visual;
    Selection selection = Selection::Layer;
    std::map<std::string, std::string> options;  // name -> value text
};

// A merged row (Plan::merges): kept row `dst` of one layer and KV head takes the weighted mean of its
// own key and value and those of rows `src` (rows the plan drops):
//   K'[dst] = (w_dst K[dst] + sum_i w[i] K[src[i]]) / (w_dst + sum_i w[i]), V' likewise,
// computed from the prefilled rows before compaction (src rows never see another merge's result).
// The merged row keeps dst's position (keys are stored after RoPE: a merged key is a mean of keys
// rotated at their own positions, placed at dst's). Weights >= 0; a zero total keeps the row as is.
// `bias` (finite; 0: none) is added to the merged row's scaled score for every later query (the
// cache stores it beside the row: KVCache::set_bias), e.g. ln(1 + src.size()) so the row takes the
// attention share of the rows it stands for.
struct RowMerge {
    int32_t dst = 0;
    double w_dst = 1.0;
    std::vector<int32_t> src;
    std::vector<double> w;  // one per src
    double bias = 0.0;
};

// The result: kept prompt positions (ascending) per layer, or per layer and KV head.
struct Plan {
    bool identity = true;  // keep everything: nothing to compact
    std::vector<std::vector<int32_t>> kept;                      // [layer] (Selection::Layer)
    std::vector<std::vector<std::vector<int32_t>>> kept_heads;   // [layer][kv head] (Selection::KVHead)
    std::vector<int64_t> layer_budget;                           // k_l: candidates kept per layer
    std::map<std::string, std::vector<double>> diagnostics;      // the policy's own, per layer
    // Optional merges into kept rows, applied before compaction: [layer][kv head] (empty: none; a
    // layer's list may be empty). Every dst must be kept by that layer and head; src rows < m.
    std::vector<std::vector<std::vector<RowMerge>>> merges;
    bool merge_keys = true;    // false: the kept keys stay as they are
    bool merge_values = true;  // false: the kept values stay as they are (with neither: only the biases)
};

struct PlanContext {
    const PromptLayout& layout;
    ModelShape shape;
    const CompressParams& params;
    const ParsedOptions& opt;
    const ProbeSet& probes;  // what the importance pass collected (possibly merged over policies)
    // The prefilled keys (after RoPE, as floats, [m][head_dim]) of planned layer `layer` and KV head
    // `kv_head` into `out` (resized, its memory reused), for a policy that reads them (merging by key
    // similarity); null where unavailable.
    std::function<void(int layer, int kv_head, std::vector<float>& out)> keys;
    // `keys` may be called from the pool's threads at once (every planned layer's cache is on the host).
    bool keys_any_thread = false;
    // The same keys in place, without a copy, where the cache is on the host as F32 or F16 rows (row r
    // at data + r * row_bytes); data null elsewhere (then `keys`). Readable from any thread.
    struct KeyView {
        const uint8_t* data = nullptr;
        size_t row_bytes = 0;
        GGMLType type = GGMLType::F32;
    };
    std::function<KeyView(int layer, int kv_head)> key_view;
    // The engine's threads, for a policy's host work that splits (null: one thread).
    ThreadPool* pool = nullptr;
};

class Policy {
public:
    virtual ~Policy() = default;
    virtual const char* name() const = 0;
    virtual const char* description() const = 0;
    virtual std::vector<OptionSpec> options() const { return {}; }
    // InputError when the policy cannot work in this scope (AirCache: visual only).
    virtual void check_scope(Scope) const {}
    // The probes the policy reads in plan() (empty: none, e.g. random).
    virtual ProbeSet request(const PromptLayout&, const CompressParams&, const ParsedOptions&) const { return {}; }
    virtual Plan plan(const PlanContext& ctx) const = 0;
};

// --- registry ---
const std::vector<const Policy*>& all_policies();
const Policy& find_policy(const std::string& name);  // InputError listing the valid names
// Option values checked against the policy's specs: an unknown name or a value out of range is an
// InputError listing the valid options. Defaults fill the rest.
ParsedOptions parse_options(const Policy& p, const std::map<std::string, std::string>& raw);
// Every policy with its options and defaults, one block per policy (aircache-cli --list-policies).
std::string describe_policies();

// --- shared machinery (docs/compression.md, "Common frame") ---
int64_t round_half_away(double x);
// Candidates of the scope: visual positions, or every prompt position.
std::vector<int32_t> candidates(const PromptLayout& layout, Scope scope);
// K = clamp(round(r·N·L), L, N·L).
int64_t total_budget(double r, int64_t N, int L);
// Real per-layer targets -> integers summing to K, each in [1, N] (docs/compression.md, Apportionment).
std::vector<int64_t> apportion(std::vector<double> targets, int64_t K, int64_t N);
// The k positions of largest score among `cands` (scores indexed by prompt position), ties to the
// lower position, after the `protect`ed positions (kept first; if they alone reach k, the last k of
// them); ascending.
std::vector<int32_t> select_top(const std::vector<double>& score, const std::vector<int32_t>& cands, int64_t k,
                                const std::vector<int32_t>& protect = {});
// Per-head vectors [H][m] averaged over all heads (group < 0) or over the query heads of KV head
// `group` (GQA groups of n_head / n_head_kv).
std::vector<double> head_mean(const std::vector<float>& per_head, int64_t m, const ModelShape& s, int group);
// A candidate set per layer (or per layer and KV head) -> the kept prompt positions: in visual scope
// every text position is kept too.
std::vector<int32_t> kept_positions(const PromptLayout& layout, Scope scope, const std::vector<int32_t>& chosen);

// The common driver for scored policies: per layer budget k_l, a score over prompt positions for a
// layer (and KV head group, -1 for the whole layer), and the protected positions for (layer, k_l).
struct ScoredPolicyHooks {
    std::vector<int64_t> k;  // per-layer candidate budgets
    std::function<std::vector<double>(int layer, int group)> score;
    std::function<std::vector<int32_t>(int layer, int64_t k)> protect;  // may be empty
};
Plan plan_by_scores(const PlanContext& ctx, const ScoredPolicyHooks& hooks);

// Uniform per-layer budgets (t_l = K / L, apportioned).
std::vector<int64_t> uniform_budgets(const PlanContext& ctx);

// The last `n` prompt positions (recent windows), ascending.
std::vector<int32_t> last_positions(int64_t m, int64_t n);

}  // namespace compress
}  // namespace aircache
