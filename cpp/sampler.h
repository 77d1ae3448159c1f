// sampler.h — next-token selection from logits.
//
// Chain (llama.cpp's order): repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
// temperature <= 0 is greedy (argmax after the penalty; ties to the lower id). The RNG is a
// 64-bit Mersenne Twister with a portable uniform conversion, so a seed gives the same tokens on
// every platform.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace aircache {

struct SamplerParams {
    float temperature = 0.0f;  // <= 0: greedy
    int top_k = 40;            // <= 0: all
    float top_p = 0.95f;       // >= 1: off
    float min_p = 0.05f;       // <= 0: off
    float repeat_penalty = 1.0f;  // 1: off (logit / p if positive, * p if negative, for recent tokens)
    int repeat_last_n = 64;       // how many recent tokens the penalty looks at (-1: all)
    uint64_t seed = 0;

    void validate() const;  // InputError naming the bad parameter
};

class Sampler {
public:
    explicit Sampler(const SamplerParams& p);
    // `history`: the sequence so far (prompt + generated), for the repetition penalty.
    int32_t sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);

private:
    double uniform();  // [0, 1)
    SamplerParams p_;
    std::mt19937_64 rng_;
    std::vector<std::pair<float, int32_t>> cand_;
    std::vector<float> work_;
};

}  // namespace aircache
