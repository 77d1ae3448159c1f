// cpu/dot.h — the plain float dot product with a fixed summation order (eight accumulators): the
// norms' sums of squares and the importance probes' logits, whatever SIMD table is in use.
#pragma once

#include <cstdint>

namespace aircache {
namespace cpu {

inline float dot_f32(const float* a, const float* b, int64_t n) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; ++i) r += a[i] * b[i];
    return r;
}

}  // namespace cpu
}  // namespace aircache
