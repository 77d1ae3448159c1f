#include "eval/evaluate.h"

#include <algorithm>
#include <memory>

#include "common.h"
#include "compress/probes/colsum.h"
#include "runtime/engine.h"
#include "runtime/prompt.h"

namespace aircache {

namespace {

Prompt encoded_prompt(Engine& e, const std::vector<int32_t>& ids, std::vector<Image> images) {
    const std::vector<int64_t> counts =
        images.empty() ? std::vector<int64_t>{} : e.image_token_counts(images, e.text_rows(ids));
    check_sequence(e, ids, counts);
    std::vector<MediaItem> media;
    for (const Image& img : images) media.push_back(e.encode_image(img));
    return make_prompt(e, ids, std::move(media));
}

}  // namespace

std::vector<float> logits(Engine& e, const std::vector<int32_t>& ids, const std::vector<Image>& images,
                          const compress::CompressParams& compression, int64_t n_prompt, CompressionReport* report) {
    check_compression(e, compression);
    const Prompt p = encoded_prompt(e, ids, images);
    const int64_t n = p.size(), V = e.config().n_vocab;
    if (n_prompt <= 0 || n_prompt > n) n_prompt = n;
    std::vector<float> out(static_cast<size_t>(n * V));
    KVCache& kv = e.kv();
    CompressionReport rep = prefill_compressed(e, p, n_prompt, compression, kv, out.data(), true);
    if (n_prompt < n) e.feed(p, n_prompt, n, kv, out.data() + n_prompt * V, true);
    if (report) *report = std::move(rep);
    return out;
}

std::vector<PolicyEvaluation> evaluate_policies(Engine& e, const std::vector<int32_t>& ids,
                                                const std::vector<Image>& images, int64_t n_prompt,
                                                const std::vector<compress::CompressParams>& settings,
                                                const std::vector<int64_t>& rows_in, bool hit_rate) {
    const int64_t n = static_cast<int64_t>(ids.size()), V = e.config().n_vocab;
    for (const compress::CompressParams& s : settings) check_compression(e, s);
    const Prompt p = encoded_prompt(e, ids, images);
    if (n_prompt < 1 || n_prompt > n) throw InputError(strprintf("n_prompt must be in [1, %lld]", static_cast<long long>(n)));
    std::vector<int64_t> rows = rows_in;
    if (rows.empty())
        for (int64_t r = n_prompt - 1; r < n; ++r) rows.push_back(r);
    for (int64_t r : rows)
        if (r < n_prompt - 1 || r >= n)
            throw InputError(strprintf("row %lld is outside [n_prompt - 1, n) = [%lld, %lld)", static_cast<long long>(r),
                                       static_cast<long long>(n_prompt - 1), static_cast<long long>(n)));
    if (hit_rate && n_prompt == n) throw InputError("the cache hit rate needs at least one continuation token");
    const compress::PromptLayout layout = p.layout(n_prompt);

    // one prefill: the union of every setting's probes
    compress::ProbeSet all;
    for (const compress::CompressParams& s : settings) {
        const compress::Policy& pol = compress::find_policy(s.policy);
        all.merge(pol.request(layout, s, compress::parse_options(pol, s.options)));
    }
    std::unique_ptr<compress::StatsCollector> stats;
    if (!all.empty()) stats = std::make_unique<compress::StatsCollector>(all, layout, e.shape(), e.config().head_dim);
    KVCache& kv = e.kv();
    std::vector<float> last(static_cast<size_t>(V)), cont(static_cast<size_t>(std::max<int64_t>(n - n_prompt, 1) * V));
    kv.clear();
    e.feed(p, 0, n_prompt, kv, last.data(), false, stats.get());
    std::unique_ptr<KVCache> snapshot = e.new_cache();
    snapshot->restore(kv);

    std::vector<std::vector<double>> ref_attention;  // [layer][prompt row]: head-mean, full cache
    const compress::ModelShape sh = e.shape();
    if (hit_rate) {
        // the first continuation token's attention over the full prompt cache
        compress::PromptLayout one = layout;
        one.m = n_prompt + 1;
        one.is_visual.push_back(0);
        if (!one.key_end.empty()) one.key_end.push_back(static_cast<int32_t>(n_prompt + 1));
        compress::ProbeSet req;
        auto col = std::make_shared<compress::ColsumProbe>(std::vector<int64_t>{n_prompt});
        req.add(col);
        compress::StatsCollector first(req, one, sh, e.config().head_dim);
        e.feed(p, n_prompt, n_prompt + 1, kv, cont.data(), false, &first);
        for (int l = 0; l < sh.n_layer; ++l) {
            std::vector<double> a = compress::head_mean(col->colsum(l, n_prompt), n_prompt + 1, sh, -1);
            a.resize(static_cast<size_t>(n_prompt));
            ref_attention.push_back(std::move(a));
        }
    }
    std::vector<PolicyEvaluation> out(settings.size());
    for (size_t i = 0; i < settings.size(); ++i) {
        kv.restore(*snapshot);
        PolicyEvaluation& ev = out[i];
        ev.report = compress_prefilled(e, layout, settings[i], all, kv);
        if (stats) ev.report.importance_ms += stats->elapsed_ms();
        if (n > n_prompt) e.feed(p, n_prompt, n, kv, cont.data(), true);
        ev.logits.resize(rows.size() * static_cast<size_t>(V));
        for (size_t k = 0; k < rows.size(); ++k) {
            const float* src = rows[k] == n_prompt - 1 ? last.data() : cont.data() + (rows[k] - n_prompt) * V;
            std::copy(src, src + V, ev.logits.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(V)));
        }
        if (hit_rate) {
            const std::vector<int32_t> cands = compress::candidates(layout, settings[i].scope);
            double sum = 0.0;
            for (size_t l = 0; l < ref_attention.size(); ++l) {
                // kept candidates (per KV head: averaged over the heads) of the layers the policy planned
                const size_t ml = static_cast<size_t>(sh.model_layer(static_cast<int>(l)));
                const std::vector<std::vector<int32_t>> sets =
                    ev.report.kept_heads.empty() ? std::vector<std::vector<int32_t>>{ev.report.kept[ml]} : ev.report.kept_heads[ml];
                double layer_rate = 0.0;
                for (const std::vector<int32_t>& kept : sets) {
                    std::vector<int32_t> kc;
                    for (int32_t c : cands)
                        if (std::binary_search(kept.begin(), kept.end(), c)) kc.push_back(c);
                    std::vector<int32_t> order = cands;
                    const std::vector<double>& a = ref_attention[l];
                    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return a[x] > a[y]; });
                    size_t hits = 0;
                    for (size_t t = 0; t < kc.size(); ++t) hits += std::binary_search(kc.begin(), kc.end(), order[t]);
                    layer_rate += kc.empty() ? 1.0 : static_cast<double>(hits) / static_cast<double>(kc.size());
                }
                layer_rate /= static_cast<double>(sets.size());
                ev.report.hit_rate_per_layer.push_back(layer_rate);
                sum += layer_rate;
            }
            ev.report.hit_rate = sum / static_cast<double>(ref_attention.size());
        }
    }
    return out;
}

}  // namespace aircache
