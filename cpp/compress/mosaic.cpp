// mosaic — this project's own policy (docs/compression.md, "Mosaic"): each layer keeps the best-scored
// row of every one of k_l equal strata of the image, scored by the layers' consensus, with budgets
// falling from the bottom layer up.
//
// Evidence (docs/background.md, docs/quality.md): on the demo model the attention-scored policies
// keep object patches and drop the background positions the answer needs to stay on its template,
// while sets spread over the image (random) keep answers whole but lose the key word at low budgets.
// Mosaic keeps both. Per layer l and budget k_l (round(mo_grid·k_l) + round(mo_cover·k_l) + the rest):
//   grid      the centre row of each of kg equal strata of the candidates (raster order within an
//             image, images in prompt order): input-independent positions (default share 0);
//   scored    the rows of largest score among the rest (default: none);
//   coverage  one row per each of kc equal strata: its best-scored row not kept yet (`mo_pick=center`:
//             the free row nearest its centre) (default: all of k_l).
// Several images in the prompt: `mo_cover_multi` (default 0.25) replaces `mo_cover`: the question
// usually names one image and the scored part follows it (docs/compression.md, "Several images").
// Score: VL-Cache's column sums of the post-vision rows' attention (or AirCache's elite importance,
// `mo_score=elite`), head mean (or a KV group's), normalised over the candidates and blended with
// its mean over the layers (`mo_layer_mix`, default 1: one consensus score for every layer). Layer
// budgets: PyramidKV's linear decrease (`mo_beta`, default 8), uniform, or VL-Cache's density ones.
// Every ingredient is an option: the ablation in docs/compression.md is a table of them. Probes:
// ColsumProbe (+ DensityProbe) or EliteProbe, which VL-Cache / AirCache already request (one prefill
// serves them together; nothing new in the engine or on the CUDA side).
// Merging (`mo_merge`, default nearest): instead of dropping them, the dropped candidates are averaged
// into kept rows (Plan::merges; the engine computes the weighted means on any backend before
// compaction): `nearest` into the kept candidate of the same layer and KV head whose key is the most
// similar by cosine, if that cosine is at least `mo_merge_min_cos` (default 0.7; LOOK-M's direction;
// keys from PlanContext::key_view or ::keys), `summary` into a few rows of k_l that each carry the mean of an equal
// stratum of the dropped rows. A merged row keeps its own position; with `mo_merge_bias` (default on)
// its scores get ln(1 + rows merged into it), the cache's logit bias, so it takes the attention share
// of the rows it stands for (ToMe's proportional attention; docs/compression.md, "Merging dropped rows").
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "common.h"
#include "compress/policy.h"
#include "compress/probes/colsum.h"
#include "compress/probes/density.h"
#include "compress/probes/elite.h"
#include "cpu/dot.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"

namespace aircache {
namespace compress {
namespace {

constexpr double kBoost = 1e12;  // added to the scores of the rows the plan picks (scores are <= m)
constexpr int64_t kMaxNR = 32;   // the widest GEMM panel (cpu/gemm.h)

OptionSpec float_opt(const char* name, const char* def, double lo, double hi, bool lo_open, bool hi_open,
                     const char* help) {
    OptionSpec o;
    o.name = name;
    o.kind = OptionSpec::Float;
    o.def = def;
    o.lo = lo;
    o.hi = hi;
    o.lo_open = lo_open;
    o.hi_open = hi_open;
    o.help = help;
    return o;
}

OptionSpec choice_opt(const char* name, const char* def, std::vector<std::string> choices, const char* help) {
    OptionSpec o;
    o.name = name;
    o.kind = OptionSpec::Choice;
    o.def = def;
    o.choices = std::move(choices);
    o.help = help;
    return o;
}

OptionSpec bool_opt(const char* name, const char* def, const char* help) {
    OptionSpec o;
    o.name = name;
    o.kind = OptionSpec::Bool;
    o.def = def;
    o.help = help;
    return o;
}

OptionSpec int_opt(const char* name, const char* def, double lo, double hi, const char* help) {
    OptionSpec o;
    o.name = name;
    o.kind = OptionSpec::Int;
    o.def = def;
    o.lo = lo;
    o.hi = hi;
    o.help = help;
    return o;
}

class Mosaic final : public Policy {
public:
    const char* name() const override { return "mosaic"; }
    const char* description() const override {
        return "the best-scored row of each stratum of the image (the layers' consensus score), budgets falling "
               "with depth; dropped rows merged into the most similar kept row, which keeps their attention share";
    }
    std::vector<OptionSpec> options() const override {
        return {
            float_opt("mo_cover", "1", 0, 1, false, false,
                      "share of each layer's budget kept as coverage: one row per equal stratum of the candidates "
                      "(raster order), spread over the whole image"),
            float_opt("mo_cover_multi", "0.25", 0, 1, false, false,
                      "mo_cover when the prompt holds several images: the question usually "
                      "names one of them, and the attention-scored part follows it where equal strata would not"),
            choice_opt("mo_pick", "score", {"score", "center"},
                       "the coverage row of a stratum: its best-scored row not kept yet, or the row nearest its centre"),
            choice_opt("mo_score", "colsum", {"colsum", "elite"},
                       "attention score: column sums of the post-vision rows (VL-Cache) or the elite-window "
                       "importance (AirCache; visual scope)"),
            choice_opt("mo_budget", "pyramid", {"uniform", "density", "pyramid"},
                       "layer budgets: uniform, VL-Cache's from the post-vision rows' attention density, or "
                       "PyramidKV's linear decrease from the bottom layer"),
            float_opt("mo_p", "0.01", 0, 1, true, true, "density budgets: entries below mo_p times the row maximum are sparse"),
            float_opt("mo_min_frac", "0.01", 0, 1, false, false, "density budgets: lower clip of a layer's fraction"),
            float_opt("mo_alpha", "0.9", 0, 1, true, false,
                      "elite score: text rows whose attention from the last row is >= alpha times the largest"),
            float_opt("mo_window", "0.1", 0, 1, false, false,
                      "all scope: fraction of k_l given to the most recent prompt positions"),
            float_opt("mo_grid", "0", 0, 1, false, false,
                      "share of each layer's budget kept as a fixed grid: the centre row of each of that many equal "
                      "strata (input-independent, placed first)"),
            float_opt("mo_beta", "8", 1, 1e9, false, false,
                      "pyramid budgets: the top layer's share is 1/beta of the bottom one's (PyramidKV's)"),
            float_opt("mo_layer_mix", "1", 0, 1, false, false,
                      "blend of each layer's score (normalised over the candidates) with their mean over the layers: "
                      "0 = the layer's own, 1 = the layers' consensus"),
            choice_opt("mo_merge", "nearest", {"none", "nearest", "summary"},
                       "dropped candidates: gone (none); each averaged into the kept candidate of the same layer and KV "
                       "head whose key is the most similar by cosine (nearest); or mo_merge_rows rows of k_l that each "
                       "carry the mean of an equal stratum of the dropped candidates (summary)"),
            choice_opt("mo_merge_weight", "score", {"score", "count"},
                       "merge weights: each row's attention score (the mosaic score), or 1 per row"),
            bool_opt("mo_merge_keys", "true", "merge keys and values (true) or values only, the kept keys unchanged (false)"),
            bool_opt("mo_merge_values", "true",
                     "merge the values (true) or keep the kept values unchanged (false; with mo_merge_keys=false too, "
                     "a merge changes only the row's bias)"),
            bool_opt("mo_merge_bias", "true",
                     "a merged row's scores get ln(1 + the rows merged into it), so it takes the attention share of the "
                     "rows it stands for (ToMe's proportional attention)"),
            float_opt("mo_merge_min_cos", "0.7", -1, 1, false, false,
                      "nearest merging: a dropped row merges only if its key's cosine with the nearest kept key is at "
                      "least this (-1: every dropped row)"),
            int_opt("mo_merge_rows", "1", 1, 1e9, "summary merging: summary rows per layer (taken from k_l)"),
            float_opt("mo_merge_reach", "0", 0, 1e9, false, false,
                      "nearest merging: compare a dropped row only with the kept candidates within reach * N / k "
                      "candidate positions of it (raster order; k the layer's kept candidates); 0: with all of them"),
        };
    }
    // The post-vision rows (empty: {m-1}).
    static int64_t rows_from(const PromptLayout& layout) {
        return std::min<int64_t>(layout.post_vision_start(), layout.m - 1);
    }
    ProbeSet request(const PromptLayout& layout, const CompressParams& params, const ParsedOptions& opt) const override {
        ProbeSet r;
        const int64_t p0 = rows_from(layout);
        if (opt.str("mo_score") == "elite") {
            if (params.scope != Scope::Visual)
                throw InputError("KV policy 'mosaic': mo_score=elite scores visual rows only: kv_scope must be 'visual'");
            if (!layout.visual.empty())
                r.add(std::make_shared<EliteProbe>(layout.post_vision_start(), std::log(opt.num("mo_alpha"))));
        } else {
            r.add(std::make_shared<ColsumProbe>(std::vector<int64_t>{p0}));
        }
        if (opt.str("mo_budget") == "density") r.add(std::make_shared<DensityProbe>(p0, std::log(opt.num("mo_p"))));
        return r;
    }

    Plan plan(const PlanContext& ctx) const override {
        const int L = ctx.shape.n_layer, H = ctx.shape.n_head;
        const std::vector<int32_t> cands = candidates(ctx.layout, ctx.params.scope);
        const int64_t N = static_cast<int64_t>(cands.size());
        if (N == 0) {  // nothing to compress (visual scope, no image)
            Plan empty;
            empty.layer_budget.assign(static_cast<size_t>(L), 0);
            return empty;
        }
        const int64_t K = total_budget(ctx.params.budget, N, L);
        const int64_t p0 = rows_from(ctx.layout);
        const bool elite = ctx.opt.str("mo_score") == "elite";

        // layer budgets
        std::vector<double> t(static_cast<size_t>(L), static_cast<double>(K) / L), dens(static_cast<size_t>(L), NAN);
        if (ctx.opt.str("mo_budget") == "density") {
            const DensityProbe& den = ctx.probes.get(DensityProbe(p0, std::log(ctx.opt.num("mo_p"))));
            double dsum = 0.0;
            for (int l = 0; l < L; ++l) {
                double gamma = 0.0;
                for (int h = 0; h < H; ++h) gamma += den.count(l)[static_cast<size_t>(h)] / den.total();
                dsum += dens[static_cast<size_t>(l)] = 1.0 - gamma / H;
            }
            const double r = ctx.params.budget, min_frac = ctx.opt.num("mo_min_frac");
            for (int l = 0; l < L; ++l) {
                const double beta = dsum > 0.0 ? dens[static_cast<size_t>(l)] / dsum * r * L : r;
                t[static_cast<size_t>(l)] = std::clamp(beta, min_frac, 1.0) * static_cast<double>(N);
            }
        }
        if (ctx.opt.str("mo_budget") == "pyramid" && L > 1) {
            const double C = static_cast<double>(K) / L, lo = C / ctx.opt.num("mo_beta"), hi = 2.0 * C - lo;
            if (hi <= static_cast<double>(N))
                for (int l = 0; l < L; ++l) t[static_cast<size_t>(l)] = hi - l * (hi - lo) / (L - 1);
        }
        ScoredPolicyHooks h;
        h.k = apportion(t, K, N);

        // attention score over prompt rows for (layer, KV group or -1)
        const ColsumProbe* col = elite ? nullptr : &ctx.probes.get(ColsumProbe({p0}));
        const EliteProbe* eli =
            elite ? &ctx.probes.get(EliteProbe(ctx.layout.post_vision_start(), std::log(ctx.opt.num("mo_alpha")))) : nullptr;
        auto own_score = [&](int layer, int group) {
            if (!elite) return head_mean(col->colsum(layer, p0), ctx.layout.m, ctx.shape, group);
            const std::vector<float>& imp = eli->importance(layer);
            const size_t Nv = ctx.layout.visual.size();
            const int G = H / ctx.shape.n_head_kv;
            const int h0 = group < 0 ? 0 : group * G, h1 = group < 0 ? H : (group + 1) * G;
            std::vector<double> s(static_cast<size_t>(ctx.layout.m), 0.0);
            for (size_t i = 0; i < Nv; ++i) {
                double x = 0.0;
                for (int hh = h0; hh < h1; ++hh) x += imp[static_cast<size_t>(hh) * Nv + i];
                s[static_cast<size_t>(ctx.layout.visual[i])] = x / (h1 - h0);
            }
            return s;
        };
        // normalised over the candidates (sum 1), blended with the mean over the layers; each
        // (layer, group) computed once ([layer][group + 1])
        std::vector<std::vector<std::vector<double>>> norm_memo(
            static_cast<size_t>(L), std::vector<std::vector<double>>(static_cast<size_t>(ctx.shape.n_head_kv + 1)));
        auto normalised = [&](int layer, int group) -> const std::vector<double>& {
            std::vector<double>& s = norm_memo[static_cast<size_t>(layer)][static_cast<size_t>(group + 1)];
            if (!s.empty()) return s;
            s = own_score(layer, group);
            double sum = 0.0;
            for (int32_t c : cands) sum += s[static_cast<size_t>(c)];
            if (sum > 0.0)
                for (double& x : s) x /= sum;
            return s;
        };
        const double mix = ctx.opt.num("mo_layer_mix");
        // the layers' mean of the normalised scores, once per group (index group + 1)
        std::vector<std::vector<double>> layer_mean(static_cast<size_t>(ctx.shape.n_head_kv + 1));
        auto base_score = [&](int layer, int group) {
            if (mix == 0.0) return own_score(layer, group);
            std::vector<double>& mean = layer_mean[static_cast<size_t>(group + 1)];
            if (mean.empty()) {
                mean.assign(static_cast<size_t>(ctx.layout.m), 0.0);
                for (int l = 0; l < L; ++l) {
                    const std::vector<double>& o = normalised(l, group);
                    for (size_t j = 0; j < mean.size(); ++j) mean[j] += o[j] / L;
                }
            }
            std::vector<double> s = normalised(layer, group);
            for (size_t j = 0; j < s.size(); ++j) s[j] = (1.0 - mix) * s[j] + mix * mean[j];
            return s;
        };
        std::vector<int32_t> no_protect;
        auto protect = [&](int64_t k) {
            if (ctx.params.scope != Scope::All) return no_protect;
            return last_positions(ctx.layout.m, static_cast<int64_t>(std::floor(ctx.opt.num("mo_window") * static_cast<double>(k))));
        };
        h.protect = [&](int, int64_t k) { return protect(k); };

        // several images in the prompt: mo_cover_multi instead of mo_cover
        const double cover = ctx.opt.num(ctx.layout.n_images > 1 ? "mo_cover_multi" : "mo_cover"), grid = ctx.opt.num("mo_grid");
        const bool center = ctx.opt.str("mo_pick") == "center";
        const std::string merge = ctx.opt.str("mo_merge");
        const int64_t summary_rows = merge == "summary" ? ctx.opt.integer("mo_merge_rows") : 0;
        // summary merging: [layer][group + 1] -> (holder row, the dropped rows of its stratum)
        std::vector<std::vector<std::vector<std::pair<int32_t, std::vector<int32_t>>>>> summaries(
            static_cast<size_t>(L), std::vector<std::vector<std::pair<int32_t, std::vector<int32_t>>>>(
                                        static_cast<size_t>(ctx.shape.n_head_kv + 1)));
        std::vector<double> n_cover(static_cast<size_t>(L), 0.0), n_grid(static_cast<size_t>(L), 0.0);
        // The plan as a score: the scored rows and the coverage rows get kBoost, so select_top (after
        // the protected rows) keeps exactly them; when a stratum has nothing left, the k_l are filled
        // by score.
        h.score = [&](int layer, int group) {
            std::vector<double> s = base_score(layer, group);
            const int64_t k = h.k[static_cast<size_t>(layer)];
            const std::vector<int32_t> prot = protect(k);
            const int64_t avail0 = std::max<int64_t>(0, k - static_cast<int64_t>(prot.size()));
            // summary merging: mo_merge_rows of the k_l hold the merged dropped rows (one mosaic row stays)
            const int64_t ns = std::min<int64_t>(summary_rows, std::max<int64_t>(0, avail0 - 1));
            const int64_t avail = avail0 - ns;
            const int64_t kg = std::min<int64_t>(avail, round_half_away(grid * static_cast<double>(k)));
            const int64_t kc = std::min<int64_t>(avail - kg, round_half_away(cover * static_cast<double>(k)));
            const int64_t ka = avail - kg - kc;
            std::vector<uint8_t> taken(static_cast<size_t>(ctx.layout.m), 0);
            for (int32_t p : prot) taken[static_cast<size_t>(p)] = 1;
            // the grid: the centre row of each of kg equal strata (then outwards, lower first)
            auto centre_of = [&](int64_t a, int64_t b) {
                const int64_t mid = (a + b - 1) / 2;
                for (int64_t d = 0; d < b - a; ++d)
                    for (int64_t j : {mid - d, mid + d})
                        if (j >= a && j < b && !taken[static_cast<size_t>(cands[static_cast<size_t>(j)])])
                            return cands[static_cast<size_t>(j)];
                return int32_t(-1);
            };
            std::vector<int32_t> gridrows;
            for (int64_t i = 0; i < kg; ++i) {
                const int32_t c = centre_of(i * N / kg, (i + 1) * N / kg);
                if (c >= 0) {
                    taken[static_cast<size_t>(c)] = 1;
                    gridrows.push_back(c);
                }
            }
            std::vector<int32_t> open;
            open.reserve(cands.size());
            for (int32_t c : cands)
                if (!taken[static_cast<size_t>(c)]) open.push_back(c);
            // the scored part: the ka free candidates of largest score (ties to the lower row)
            const std::vector<int32_t> att = select_top(s, open, ka);
            for (int32_t p : att) taken[static_cast<size_t>(p)] = 1;
            std::vector<int32_t> picks = att;
            picks.insert(picks.end(), gridrows.begin(), gridrows.end());
            // the coverage reserve: kc equal strata of the candidates, one row each
            for (int64_t i = 0; i < kc; ++i) {
                const int64_t a = i * N / kc, b = (i + 1) * N / kc;  // stratum cands[a, b)
                int32_t best = -1;
                if (center) {
                    best = centre_of(a, b);  // the lower middle; then outwards, lower first
                } else {
                    for (int64_t j = a; j < b; ++j) {
                        const int32_t c = cands[static_cast<size_t>(j)];
                        if (!taken[static_cast<size_t>(c)] && (best < 0 || s[static_cast<size_t>(c)] > s[static_cast<size_t>(best)]))
                            best = c;
                    }
                }
                if (best >= 0) {
                    taken[static_cast<size_t>(best)] = 1;
                    picks.push_back(best);
                }
            }
            if (group <= 0) n_cover[static_cast<size_t>(layer)] = static_cast<double>(picks.size() - att.size() - gridrows.size());
            if (group <= 0) n_grid[static_cast<size_t>(layer)] = static_cast<double>(gridrows.size());
            // the summary rows: the free candidates (raster order) cut into ns equal strata; each
            // stratum's best-scored row (ties to the lower) is kept and carries the stratum's mean
            if (ns > 0) {
                std::vector<int32_t> rest;
                for (int32_t c : cands)
                    if (!taken[static_cast<size_t>(c)]) rest.push_back(c);
                auto& out = summaries[static_cast<size_t>(layer)][static_cast<size_t>(group + 1)];
                out.clear();
                const int64_t R = static_cast<int64_t>(rest.size());
                for (int64_t i = 0; i < ns; ++i) {
                    const int64_t a = i * R / ns, b = (i + 1) * R / ns;
                    if (a >= b) continue;
                    int32_t best = rest[static_cast<size_t>(a)];
                    for (int64_t j = a + 1; j < b; ++j)
                        if (s[static_cast<size_t>(rest[static_cast<size_t>(j)])] > s[static_cast<size_t>(best)])
                            best = rest[static_cast<size_t>(j)];
                    std::vector<int32_t> members;
                    for (int64_t j = a; j < b; ++j)
                        if (rest[static_cast<size_t>(j)] != best) members.push_back(rest[static_cast<size_t>(j)]);
                    taken[static_cast<size_t>(best)] = 1;
                    picks.push_back(best);
                    out.emplace_back(best, std::move(members));
                }
            }
            for (int32_t p : picks) s[static_cast<size_t>(p)] += kBoost;
            return s;
        };
        Plan plan = plan_by_scores(ctx, h);
        plan.diagnostics["coverage_rows"] = n_cover;
        plan.diagnostics["grid_rows"] = n_grid;
        if (merge != "none" && !plan.identity) {
            std::vector<double> merged(static_cast<size_t>(L), 0.0);
            add_merges(ctx, cands, plan, summaries, base_score, merged);
            plan.diagnostics["merged_rows"] = merged;
        }
        if (ctx.opt.str("mo_budget") == "density") plan.diagnostics["density"] = dens;
        return plan;
    }

private:
    // Plan::merges from the kept sets (docs/compression.md, "Merging dropped rows"): per layer and KV
    // head, every dropped candidate goes into one kept candidate (nearest: the most similar key by
    // cosine, ties to the lower row; summary: its stratum's holder), weighted by the mosaic score
    // (of the layer in `layer` selection, of the KV head's group in `kv_head`) or by 1.
    template <class Summaries, class Score>
    static void add_merges(const PlanContext& ctx, const std::vector<int32_t>& cands, Plan& plan, const Summaries& summaries,
                           Score&& base_score, std::vector<double>& merged) {
        const int L = ctx.shape.n_layer, Hkv = ctx.shape.n_head_kv;
        const bool by_layer = ctx.params.selection == Selection::Layer;
        const bool nearest = ctx.opt.str("mo_merge") == "nearest", count = ctx.opt.str("mo_merge_weight") == "count";
        const double min_cos = ctx.opt.num("mo_merge_min_cos");
        if (nearest && !ctx.keys)
            throw UnsupportedError("KV policy 'mosaic': mo_merge=nearest needs the prefilled keys, which this engine does not give");
        plan.merge_keys = ctx.opt.flag("mo_merge_keys");
        plan.merge_values = ctx.opt.flag("mo_merge_values");
        const bool bias = ctx.opt.flag("mo_merge_bias");
        const double reach = ctx.opt.num("mo_merge_reach");
        std::vector<int64_t> cand_index(static_cast<size_t>(ctx.layout.m), -1);  // row -> its index among cands
        for (size_t i = 0; i < cands.size(); ++i) cand_index[static_cast<size_t>(cands[i])] = static_cast<int64_t>(i);
        plan.merges.assign(static_cast<size_t>(L), std::vector<std::vector<RowMerge>>(static_cast<size_t>(Hkv)));
        const int64_t m = ctx.layout.m;
        // serially: the weights (base_score fills a lazily computed cache)
        std::vector<std::vector<double>> layer_ws(static_cast<size_t>(L));
        std::vector<std::vector<std::vector<double>>> head_ws(static_cast<size_t>(L),
                                                              std::vector<std::vector<double>>(static_cast<size_t>(Hkv)));
        for (int l = 0; l < L; ++l) {
            if (by_layer && !count) layer_ws[static_cast<size_t>(l)] = base_score(l, -1);
            for (int hh = 0; hh < Hkv && !by_layer && !count; ++hh)
                head_ws[static_cast<size_t>(l)][static_cast<size_t>(hh)] = base_score(l, hh);
        }
        auto read_keys = [&](int l, int hh, std::vector<float>& K) {
            ctx.keys(l, hh, K);
            if (K.empty() || K.size() % static_cast<size_t>(m) != 0)
                throw Error("internal: mosaic's merging got keys of another shape than the prompt's rows");
        };
        // a head's keys: rows `row_bytes` apart, F32 or F16 (a view into the cache, or a float copy)
        struct KeyRows {
            const uint8_t* data = nullptr;
            size_t row_bytes = 0;
            GGMLType type = GGMLType::F32;
        };
        auto rows_of = [](const std::vector<float>& K, int64_t D) {
            KeyRows k;
            k.data = reinterpret_cast<const uint8_t*>(K.data());
            k.row_bytes = static_cast<size_t>(D) * sizeof(float);
            return k;
        };
        // one layer and KV head (each writes only its own plan.merges[l][hh] and, KV head 0, merged[l]);
        // K: its keys (nearest; else unused)
        auto one_head = [&](int l, int hh, const KeyRows& K) {
            const std::vector<double>& layer_w = layer_ws[static_cast<size_t>(l)];
            const std::vector<int32_t>& kept = by_layer ? plan.kept[static_cast<size_t>(l)]
                                                        : plan.kept_heads[static_cast<size_t>(l)][static_cast<size_t>(hh)];
            std::vector<uint8_t> is_kept(static_cast<size_t>(m), 0);
            for (int32_t r : kept) is_kept[static_cast<size_t>(r)] = 1;
            const std::vector<double>& w = by_layer ? layer_w : head_ws[static_cast<size_t>(l)][static_cast<size_t>(hh)];
            auto weight = [&](int32_t r) { return count ? 1.0 : std::max(0.0, w[static_cast<size_t>(r)]); };
            // dst row -> its sources
            std::vector<std::pair<int32_t, std::vector<int32_t>>> groups;
            if (nearest) {
                std::vector<int32_t> keptc, dropped;
                for (int32_t c : cands) (is_kept[static_cast<size_t>(c)] ? keptc : dropped).push_back(c);
                if (keptc.empty() || dropped.empty()) return;
                const int64_t D = static_cast<int64_t>(K.row_bytes / (K.type == GGMLType::F16 ? 2 : 4));
                auto unit = [&](int32_t r, float* u) {  // the row's key, normalised (zero stays zero)
                    const uint8_t* src = K.data + static_cast<size_t>(r) * K.row_bytes;
                    const float* x = reinterpret_cast<const float*>(src);
                    if (K.type == GGMLType::F16) {  // converted into u first (exact)
                        cpu::kernels().f16_to_f32(reinterpret_cast<const uint16_t*>(src), u, D);
                        x = u;
                    }
                    const float n2 = cpu::dot_f32(x, x, D);
                    const float inv = n2 > 0.0f ? 1.0f / std::sqrt(n2) : 0.0f;
                    for (int64_t d = 0; d < D; ++d) u[d] = x[d] * inv;
                };
                if (reach > 0.0) {  // local: the kept candidates within R positions (both sorted by index)
                    const int64_t nk = static_cast<int64_t>(keptc.size());
                    const double R = reach * static_cast<double>(cands.size()) / static_cast<double>(nk);
                    std::vector<float> kn(static_cast<size_t>(nk * D)), u(static_cast<size_t>(D));
                    for (int64_t i = 0; i < nk; ++i) unit(keptc[static_cast<size_t>(i)], kn.data() + i * D);
                    std::vector<std::vector<int32_t>> srcs(static_cast<size_t>(nk));
                    auto at = [&](int32_t r) { return static_cast<double>(cand_index[static_cast<size_t>(r)]); };
                    int64_t lo = 0;
                    for (int32_t d : dropped) {
                        const double cd = at(d);
                        while (lo < nk && at(keptc[static_cast<size_t>(lo)]) < cd - R) ++lo;
                        unit(d, u.data());
                        int64_t best = -1;
                        float bc = 0.0f;
                        for (int64_t i = lo; i < nk && at(keptc[static_cast<size_t>(i)]) <= cd + R; ++i) {
                            const float c = cpu::dot_f32(u.data(), kn.data() + i * D, D);
                            if (best < 0 || c > bc) {  // ties to the lower row
                                bc = c;
                                best = i;
                            }
                        }
                        if (best >= 0 && static_cast<double>(bc) >= min_cos)
                            srcs[static_cast<size_t>(best)].push_back(d);
                    }
                    for (size_t i = 0; i < keptc.size(); ++i)
                        if (!srcs[i].empty()) groups.emplace_back(keptc[i], std::move(srcs[i]));
                } else {
                    // every kept unit key's products with the keys of the prompt's rows from the first to
                    // the last dropped one, as one GEMM (the kernels' register-tiled micro-kernel and
                    // packer, cpu/gemm.h): those rows packed into zero-padded panels of NR, the kept unit
                    // keys swept MR at a time; each block of products goes straight into the running
                    // maximum over the kept rows (a vector loop over the rows, ties to the lower kept
                    // row); a dropped row's cosine = its product / its norm
                    const cpu::GemmKernel& g = cpu::gemm_kernel();
                    const int64_t nk = static_cast<int64_t>(keptc.size()), nd = static_cast<int64_t>(dropped.size());
                    const int64_t r0 = dropped.front(), nr = dropped.back() + 1 - r0;
                    const int64_t NR = g.nr, n_p = (nr + NR - 1) / NR, ldc = n_p * NR;
                    if (NR > kMaxNR) throw Error("internal: a GEMM kernel's panels are wider than mosaic's norms expect");
                    thread_local std::vector<float> panels, A, bc, cs;  // (reused: no fresh pages per head)
                    thread_local std::vector<int32_t> bi;
                    panels.resize(static_cast<size_t>(n_p * D * NR));
                    A.resize(static_cast<size_t>(nk * D));
                    for (int64_t p = 0; p < n_p; ++p)  // (F16 rows converted by the packer: exact)
                        g.pack(K.data + static_cast<size_t>(r0 + p * NR) * K.row_bytes, K.row_bytes, K.type, 0, D,
                               static_cast<int>(std::min<int64_t>(NR, nr - p * NR)), panels.data() + p * D * NR);
                    for (int64_t i = 0; i < nk; ++i) unit(keptc[static_cast<size_t>(i)], A.data() + i * D);
                    bc.resize(static_cast<size_t>(ldc));
                    cs.resize(static_cast<size_t>(g.mr * ldc));
                    bi.assign(static_cast<size_t>(ldc), 0);
                    for (int64_t i0 = 0; i0 < nk; i0 += g.mr) {
                        const int mr = static_cast<int>(std::min<int64_t>(g.mr, nk - i0));
                        for (int64_t p = 0; p < n_p; ++p)
                            g.tile(A.data() + i0 * D, D, panels.data() + p * D * NR, D, cs.data() + p * NR, ldc, mr,
                                   static_cast<int>(NR), false);
                        if (i0 == 0) std::copy(cs.begin(), cs.begin() + ldc, bc.begin());  // kept row 0
                        const int t0 = i0 == 0 ? 1 : 0;
                        g.col_max(cs.data() + t0 * ldc, ldc, mr - t0, static_cast<int32_t>(i0 + t0), ldc, bc.data(),
                                  bi.data());
                    }
                    // the rows' squared norms from the panels, across each panel's NR rows at once, in
                    // cpu/dot.h's order (eight partial sums over d mod 8, their tree, then the tail)
                    thread_local std::vector<float> n2s;
                    n2s.resize(static_cast<size_t>(ldc));
                    const int64_t D8 = D & ~int64_t(7);
                    for (int64_t p = 0; p < n_p; ++p) {
                        const float* pp = panels.data() + p * D * NR;
                        float acc[8][kMaxNR] = {};
                        for (int64_t d0 = 0; d0 < D8; d0 += 8)
                            for (int c = 0; c < 8; ++c) {
                                const float* x = pp + (d0 + c) * NR;
                                for (int64_t jj = 0; jj < NR; ++jj) acc[c][jj] += x[jj] * x[jj];
                            }
                        for (int64_t jj = 0; jj < NR; ++jj) {
                            float r = ((acc[0][jj] + acc[1][jj]) + (acc[2][jj] + acc[3][jj])) +
                                      ((acc[4][jj] + acc[5][jj]) + (acc[6][jj] + acc[7][jj]));
                            for (int64_t d = D8; d < D; ++d) r += pp[d * NR + jj] * pp[d * NR + jj];
                            n2s[static_cast<size_t>(p * NR + jj)] = r;
                        }
                    }
                    // whether each dropped row merges into its nearest kept key
                    std::vector<int32_t> to(static_cast<size_t>(nd), -1), n_to(static_cast<size_t>(nk), 0);
                    for (int64_t j = 0; j < nd; ++j) {
                        const int64_t r = dropped[static_cast<size_t>(j)];
                        const float n2 = n2s[static_cast<size_t>(r - r0)];
                        const float b = bc[static_cast<size_t>(r - r0)];
                        const double cosv = n2 > 0.0f ? static_cast<double>(b) / std::sqrt(static_cast<double>(n2)) : 0.0;
                        if (cosv >= min_cos) {
                            to[static_cast<size_t>(j)] = bi[static_cast<size_t>(r - r0)];
                            ++n_to[static_cast<size_t>(bi[static_cast<size_t>(r - r0)])];
                        }
                    }
                    for (auto* v : {&panels, &A, &bc, &cs, &n2s}) trim_scratch(*v);
                    trim_scratch(bi);
                    for (int64_t i = 0; i < nk; ++i)
                        if (n_to[static_cast<size_t>(i)]) {
                            groups.emplace_back(keptc[static_cast<size_t>(i)], std::vector<int32_t>());
                            groups.back().second.reserve(static_cast<size_t>(n_to[static_cast<size_t>(i)]));
                            n_to[static_cast<size_t>(i)] = static_cast<int32_t>(groups.size() - 1);  // now: its group
                        }
                    for (int64_t j = 0; j < nd; ++j)
                        if (to[static_cast<size_t>(j)] >= 0)
                            groups[static_cast<size_t>(n_to[static_cast<size_t>(to[static_cast<size_t>(j)])])].second.push_back(
                                dropped[static_cast<size_t>(j)]);
                }
            } else {
                groups = summaries[static_cast<size_t>(l)][static_cast<size_t>(by_layer ? 0 : hh + 1)];
            }
            std::vector<RowMerge>& out = plan.merges[static_cast<size_t>(l)][static_cast<size_t>(hh)];
            for (auto& g : groups) {
                if (!is_kept[static_cast<size_t>(g.first)]) continue;  // (cannot happen: holders are kept)
                RowMerge rm;
                rm.dst = g.first;
                rm.w_dst = weight(g.first);
                rm.src.reserve(g.second.size());
                rm.w.reserve(g.second.size());
                for (int32_t r : g.second)
                    if (!is_kept[static_cast<size_t>(r)]) {  // a row filled in by score after all stays itself
                        rm.src.push_back(r);
                        rm.w.push_back(weight(r));
                    }
                if (rm.src.empty()) continue;  // (the next group)
                if (bias) rm.bias = std::log(1.0 + static_cast<double>(rm.src.size()));
                if (hh == 0) merged[static_cast<size_t>(l)] += static_cast<double>(rm.src.size());
                out.push_back(std::move(rm));
            }
        };
        if (!nearest || ctx.keys_any_thread) {  // every layer and KV head on the engine's threads
            auto task = [&](int64_t t) {
                const int l = static_cast<int>(t / Hkv), hh = static_cast<int>(t % Hkv);
                if (!nearest) return one_head(l, hh, KeyRows());
                const PlanContext::KeyView v = ctx.key_view ? ctx.key_view(l, hh) : PlanContext::KeyView();
                if (v.data) {  // the cache's rows in place
                    KeyRows k;
                    k.data = v.data;
                    k.row_bytes = v.row_bytes;
                    k.type = v.type;
                    return one_head(l, hh, k);
                }
                thread_local std::vector<float> K;  // (a head's keys: reused, not allocated or zeroed per head)
                read_keys(l, hh, K);
                one_head(l, hh, rows_of(K, static_cast<int64_t>(K.size()) / m));
                trim_scratch(K);
            };
            const int64_t n = static_cast<int64_t>(L) * Hkv;
            if (!ctx.pool || ctx.pool->size() <= 1) {
                for (int64_t t = 0; t < n; ++t) task(t);
                return;
            }
            // handed out one at a time, the largest first (the layers' budgets differ: a static split
            // would leave a thread with the bottom layers' searches)
            std::vector<int64_t> order(static_cast<size_t>(n)), cost(static_cast<size_t>(L));
            for (int l = 0; l < L; ++l) {
                const int64_t k = static_cast<int64_t>(by_layer ? plan.kept[static_cast<size_t>(l)].size()
                                                               : plan.kept_heads[static_cast<size_t>(l)][0].size());
                cost[static_cast<size_t>(l)] = k * std::max<int64_t>(1, static_cast<int64_t>(cands.size()) - k);
            }
            std::iota(order.begin(), order.end(), int64_t(0));
            std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
                return cost[static_cast<size_t>(a / Hkv)] > cost[static_cast<size_t>(b / Hkv)];
            });
            ctx.pool->for_each(n, [&](int64_t i) { task(order[static_cast<size_t>(i)]); });
            return;
        }
        for (int l = 0; l < L; ++l) {  // the keys read on this thread (a device's cache), a layer at a time
            std::vector<std::vector<float>> keys(static_cast<size_t>(Hkv));
            for (int hh = 0; hh < Hkv; ++hh) read_keys(l, hh, keys[static_cast<size_t>(hh)]);
            auto head = [&](int hh) {
                const std::vector<float>& K = keys[static_cast<size_t>(hh)];
                one_head(l, hh, rows_of(K, static_cast<int64_t>(K.size()) / m));
            };
            if (ctx.pool && Hkv > 1)
                ctx.pool->parallel_for(Hkv, [&](int64_t h0, int64_t h1) {
                    for (int64_t hh = h0; hh < h1; ++hh) head(static_cast<int>(hh));
                });
            else
                for (int hh = 0; hh < Hkv; ++hh) head(hh);
        }
    }
};

}  // namespace

const Policy& policy_mosaic() {
    static const Mosaic p;
    return p;
}

}  // namespace compress
}  // namespace aircache
