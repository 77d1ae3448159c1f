#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "common.h"

namespace aircache {

void SamplerParams::validate() const {
    if (!std::isfinite(temperature) || temperature < 0.0f)
        throw InputError(strprintf("temperature must be >= 0 (got %g)", temperature));
    if (!(top_p > 0.0f) || top_p > 1.0f) throw InputError(strprintf("top_p must be in (0, 1] (got %g)", top_p));
    if (!(min_p >= 0.0f) || min_p > 1.0f) throw InputError(strprintf("min_p must be in [0, 1] (got %g)", min_p));
    if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty))
        throw InputError(strprintf("repeat_penalty must be > 0 (got %g)", repeat_penalty));
    if (repeat_last_n < -1) throw InputError(strprintf("repeat_last_n must be >= -1 (got %d)", repeat_last_n));
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) { p_.validate(); }

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int32_t Sampler::sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
    work_.assign(logits, logits + n_vocab);
    float* l = work_.data();
    if (p_.repeat_penalty != 1.0f && !history.empty()) {
        const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), static_cast<size_t>(p_.repeat_last_n));
        std::unordered_set<int32_t> seen(history.end() - static_cast<std::ptrdiff_t>(n), history.end());
        for (int32_t id : seen) {
            if (id < 0 || id >= n_vocab) continue;
            l[id] = l[id] > 0.0f ? l[id] / p_.repeat_penalty : l[id] * p_.repeat_penalty;
        }
    }
    if (p_.temperature <= 0.0f) {
        int64_t best = 0;
        for (int64_t i = 1; i < n_vocab; ++i)
            if (l[i] > l[best]) best = i;
        return static_cast<int32_t>(best);
    }
    // candidates sorted by logit, descending (ties to the lower id)
    cand_.resize(static_cast<size_t>(n_vocab));
    for (int64_t i = 0; i < n_vocab; ++i) cand_[static_cast<size_t>(i)] = {l[i], static_cast<int32_t>(i)};
    auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    size_t k = cand_.size();
    if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < k) {
        k = static_cast<size_t>(p_.top_k);
        std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k), cand_.end(), by_logit);
    } else {
        std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    cand_.resize(k);
    // probabilities at temperature 1 for top-p / min-p (as llama.cpp), then temperature
    const float mx = cand_[0].first;
    std::vector<double> pr(k);
    double sum = 0.0;
    for (size_t i = 0; i < k; ++i) sum += (pr[i] = std::exp(static_cast<double>(cand_[i].first - mx)));
    size_t keep = k;
    if (p_.top_p < 1.0f) {
        double cum = 0.0;
        for (size_t i = 0; i < k; ++i) {
            cum += pr[i] / sum;
            if (cum >= p_.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p_.min_p > 0.0f) {
        const double thr = p_.min_p * (pr[0] / sum);
        size_t m = 1;
        while (m < keep && pr[m] / sum >= thr) ++m;
        keep = m;
    }
    double tsum = 0.0;
    for (size_t i = 0; i < keep; ++i)
        tsum += (pr[i] = std::exp(static_cast<double>(cand_[i].first - mx) / p_.temperature));
    const double r = uniform() * tsum;
    double acc = 0.0;
    for (size_t i = 0; i < keep; ++i) {
        acc += pr[i];
        if (r < acc) return cand_[i].second;
    }
    return cand_[keep - 1].second;
}

}  // namespace aircache
