// quant_blocks.h — the ggml block formats, one definition shared by the CPU and CUDA code.
//
// For each supported type, BlockFormat<T> gives the block geometry and `value(block, e)`: element
// e (0 <= e < QK) of one block, in the same order of float operations as the ggml / gguf-py
// reference dequantizers (multiply and add rounded separately). Fields are read byte by byte, so
// blocks need no alignment. Layouts: llama.cpp's ggml-common.h (docs/formats.md).
#pragma once

#include <cstdint>

#include "fp16.h"

namespace aircache {

// ggml type ids as stored in GGUF tensor infos.
enum class GGMLType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40, Q1_0 = 41, Q2_0 = 42,
};

namespace qb {

AC_HD uint32_t ld16(const uint8_t* p) { return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8); }
AC_HD uint32_t ld32(const uint8_t* p) { return ld16(p) | (ld16(p + 2) << 16); }
AC_HD float half(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(ld16(p))); }

// 6-bit (scale, min) of sub-block j (0..7) from the 12 packed bytes of Q4_K / Q5_K.
AC_HD void k4_scale_min(const uint8_t* s, int j, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

}  // namespace qb

template <GGMLType T> struct BlockFormat;

template <> struct BlockFormat<GGMLType::F32> {
    static constexpr int QK = 1, BYTES = 4;
    static AC_HD float value(const uint8_t* b, int) { return bits_to_f32(qb::ld32(b)); }
};

template <> struct BlockFormat<GGMLType::F16> {
    static constexpr int QK = 1, BYTES = 2;
    static AC_HD float value(const uint8_t* b, int) { return qb::half(b); }
};

template <> struct BlockFormat<GGMLType::BF16> {
    static constexpr int QK = 1, BYTES = 2;
    static AC_HD float value(const uint8_t* b, int) { return bf16_to_f32(static_cast<uint16_t>(qb::ld16(b))); }
};

// Q4_0: d f16 | qs[16]; element j in the low nibble of qs[j], element j+16 in the high nibble.
template <> struct BlockFormat<GGMLType::Q4_0> {
    static constexpr int QK = 32, BYTES = 18;
    static AC_HD float value(const uint8_t* b, int e) {
        const int q = (b[2 + (e & 15)] >> ((e >> 4) * 4)) & 0xF;
        return qb::half(b) * static_cast<float>(q - 8);
    }
};

// Q4_1: d f16 | m f16 | qs[16]
template <> struct BlockFormat<GGMLType::Q4_1> {
    static constexpr int QK = 32, BYTES = 20;
    static AC_HD float value(const uint8_t* b, int e) {
        const int q = (b[4 + (e & 15)] >> ((e >> 4) * 4)) & 0xF;
        return qb::half(b) * static_cast<float>(q) + qb::half(b + 2);
    }
};

// Q5_0: d f16 | qh u32 (bit e = 5th bit of element e) | qs[16]
template <> struct BlockFormat<GGMLType::Q5_0> {
    static constexpr int QK = 32, BYTES = 22;
    static AC_HD float value(const uint8_t* b, int e) {
        const uint32_t qh = qb::ld32(b + 2);
        const int q = ((b[6 + (e & 15)] >> ((e >> 4) * 4)) & 0xF) | static_cast<int>(((qh >> e) & 1u) << 4);
        return qb::half(b) * static_cast<float>(q - 16);
    }
};

// Q5_1: d f16 | m f16 | qh u32 | qs[16]
template <> struct BlockFormat<GGMLType::Q5_1> {
    static constexpr int QK = 32, BYTES = 24;
    static AC_HD float value(const uint8_t* b, int e) {
        const uint32_t qh = qb::ld32(b + 4);
        const int q = ((b[8 + (e & 15)] >> ((e >> 4) * 4)) & 0xF) | static_cast<int>(((qh >> e) & 1u) << 4);
        return qb::half(b) * static_cast<float>(q) + qb::half(b + 2);
    }
};

// Q8_0: d f16 | qs int8[32]
template <> struct BlockFormat<GGMLType::Q8_0> {
    static constexpr int QK = 32, BYTES = 34;
    static AC_HD float value(const uint8_t* b, int e) {
        return static_cast<float>(static_cast<int8_t>(b[2 + e])) * qb::half(b);
    }
};

// Q2_K: scales[16] (4-bit scale | 4-bit min) | qs[64] | d f16 | dmin f16
// e = 128h + 32j + 16s + l  ->  q = (qs[32h + 16s + l] >> 2j) & 3, sub-block e/16.
template <> struct BlockFormat<GGMLType::Q2_K> {
    static constexpr int QK = 256, BYTES = 84;
    static AC_HD float value(const uint8_t* b, int e) {
        const int h = e >> 7, j = (e >> 5) & 3, l32 = e & 31;
        const int q = (b[16 + 32 * h + l32] >> (2 * j)) & 3;
        const int sc = b[e >> 4];
        const float dl = qb::half(b + 80) * static_cast<float>(sc & 0xF);
        const float ml = qb::half(b + 82) * static_cast<float>(sc >> 4);
        return dl * static_cast<float>(q) - ml;
    }
};

// Q3_K: hmask[32] | qs[64] | scales[12] (16 six-bit signed scales, bias 32) | d f16
template <> struct BlockFormat<GGMLType::Q3_K> {
    static constexpr int QK = 256, BYTES = 110;
    static AC_HD float value(const uint8_t* b, int e) {
        const uint8_t* hmask = b;
        const uint8_t* qs = b + 32;
        const uint8_t* sc = b + 96;
        const int h = e >> 7, j = (e >> 5) & 3, l32 = e & 31, g = e >> 4;
        const int low4 = g < 8 ? (sc[g] & 0xF) : (sc[g - 8] >> 4);
        const int high2 = (sc[8 + (g & 3)] >> (2 * (g >> 2))) & 3;
        const int scale = (low4 | (high2 << 4)) - 32;
        const int ql = (qs[32 * h + l32] >> (2 * j)) & 3;
        const int hbit = (hmask[l32] >> (4 * h + j)) & 1;
        const int q = ql - (hbit ? 0 : 4);
        return (qb::half(b + 108) * static_cast<float>(scale)) * static_cast<float>(q);
    }
};

// Q4_K: d f16 | dmin f16 | scales[12] (6-bit scale and min per 32-element sub-block) | qs[128]
// e = 64p + 32s + l  ->  q = (qs[32p + l] >> 4s) & 0xF, sub-block 2p + s = e/32.
template <> struct BlockFormat<GGMLType::Q4_K> {
    static constexpr int QK = 256, BYTES = 144;
    static AC_HD float value(const uint8_t* b, int e) {
        int sc, m;
        qb::k4_scale_min(b + 4, e >> 5, sc, m);
        const int q = (b[16 + 32 * (e >> 6) + (e & 31)] >> (4 * ((e >> 5) & 1))) & 0xF;
        const float d = qb::half(b) * static_cast<float>(sc);
        const float dm = qb::half(b + 2) * static_cast<float>(m);
        return d * static_cast<float>(q) - dm;
    }
};

// Q5_K: d f16 | dmin f16 | scales[12] | qh[32] (bit k of qh[l]: 5th bit of sub-block k) | qs[128]
template <> struct BlockFormat<GGMLType::Q5_K> {
    static constexpr int QK = 256, BYTES = 176;
    static AC_HD float value(const uint8_t* b, int e) {
        int sc, m;
        const int sub = e >> 5, l = e & 31;
        qb::k4_scale_min(b + 4, sub, sc, m);
        const int q = ((b[48 + 32 * (e >> 6) + l] >> (4 * (sub & 1))) & 0xF) | (((b[16 + l] >> sub) & 1) << 4);
        const float d = qb::half(b) * static_cast<float>(sc);
        const float dm = qb::half(b + 2) * static_cast<float>(m);
        return d * static_cast<float>(q) - dm;
    }
};

// Q6_K: ql[128] | qh[64] | scales int8[16] | d f16 (last)
// e = 128h + 32k + l: low4 = (ql[64h + 32(k&1) + l] >> 4(k>>1)) & 0xF, high2 = (qh[32h + l] >> 2k) & 3
template <> struct BlockFormat<GGMLType::Q6_K> {
    static constexpr int QK = 256, BYTES = 210;
    static AC_HD float value(const uint8_t* b, int e) {
        const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const int low4 = (b[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
        const int high2 = (b[128 + 32 * h + l] >> (2 * k)) & 3;
        const int q = (low4 | (high2 << 4)) - 32;
        const float d = qb::half(b + 208) * static_cast<float>(static_cast<int8_t>(b[192 + (e >> 4)]));
        return d * static_cast<float>(q);
    }
};

// Calls f(BlockFormat<T>{}) for a supported type; returns false for any other.
template <class F> inline bool dispatch_block_format(GGMLType t, F&& f) {
    switch (t) {
        case GGMLType::F32: f(BlockFormat<GGMLType::F32>{}); return true;
        case GGMLType::F16: f(BlockFormat<GGMLType::F16>{}); return true;
        case GGMLType::BF16: f(BlockFormat<GGMLType::BF16>{}); return true;
        case GGMLType::Q4_0: f(BlockFormat<GGMLType::Q4_0>{}); return true;
        case GGMLType::Q4_1: f(BlockFormat<GGMLType::Q4_1>{}); return true;
        case GGMLType::Q5_0: f(BlockFormat<GGMLType::Q5_0>{}); return true;
        case GGMLType::Q5_1: f(BlockFormat<GGMLType::Q5_1>{}); return true;
        case GGMLType::Q8_0: f(BlockFormat<GGMLType::Q8_0>{}); return true;
        case GGMLType::Q2_K: f(BlockFormat<GGMLType::Q2_K>{}); return true;
        case GGMLType::Q3_K: f(BlockFormat<GGMLType::Q3_K>{}); return true;
        case GGMLType::Q4_K: f(BlockFormat<GGMLType::Q4_K>{}); return true;
        case GGMLType::Q5_K: f(BlockFormat<GGMLType::Q5_K>{}); return true;
        case GGMLType::Q6_K: f(BlockFormat<GGMLType::Q6_K>{}); return true;
        default: return false;
    }
}

}  // namespace aircache
