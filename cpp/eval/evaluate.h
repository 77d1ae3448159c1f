// eval/evaluate.h — research evaluation kept out of the engine: teacher-forced logits over a
// compacted cache, many compression settings scored on one prefill, and the cache hit rate.
//
//   std::vector<float> lg = logits(e, ids, images, params, n_prompt, &report);
//   auto ev = evaluate_policies(e, ids, images, n_prompt, {setting_a, setting_b}, rows, true);
#pragma once

#include <cstdint>
#include <vector>

#include "image.h"
#include "runtime/compression.h"

namespace aircache {

class Engine;

// Logits of every row of a fresh sequence ([n][n_vocab], row-major). Rows holding the image token
// take the images' embeddings in order (HF's convention). InputError when the sequence is empty,
// longer than n_ctx, holds ids outside the vocabulary, or its image rows do not match the images.
// With compression: the first n_prompt rows (all when n_prompt <= 0) are prefilled and compressed;
// the rest are fed over the compacted cache (teacher forcing). `report` (optional) receives what
// compression did.
std::vector<float> logits(Engine& e, const std::vector<int32_t>& ids, const std::vector<Image>& images,
                          const compress::CompressParams& compression = {}, int64_t n_prompt = 0,
                          CompressionReport* report = nullptr);

// One compression setting evaluated by evaluate_policies.
struct PolicyEvaluation {
    std::vector<float> logits;  // [rows][n_vocab]
    CompressionReport report;
};

// Many compression settings on one sequence with one prefill (the union of their probes):
// ids[0..n_prompt) is the prompt, the rest the continuation fed teacher-forced over each compacted
// cache. Returns, per setting, the logits of the absolute `rows` (each >= n_prompt - 1; empty:
// every continuation row and the last prompt row) and the report; with hit_rate, each report
// carries the cache hit rate (per layer the policy planned: Engine::shape()).
std::vector<PolicyEvaluation> evaluate_policies(Engine& e, const std::vector<int32_t>& ids,
                                                const std::vector<Image>& images, int64_t n_prompt,
                                                const std::vector<compress::CompressParams>& settings,
                                                const std::vector<int64_t>& rows, bool hit_rate);

}  // namespace aircache
