// fp16.h — half-precision and bfloat16 conversions, usable from host C++ and CUDA device code.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define AC_HD __host__ __device__ __forceinline__
#else
#define AC_HD inline
#endif

namespace aircache {

AC_HD float bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
#endif
}

AC_HD uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
#endif
}

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities; NaN payloads kept).
AC_HD float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: man * 2^-24 is exact in binary32
        const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
    return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// binary32 -> IEEE binary16, round to nearest even (overflow to infinity; NaN stays NaN, quiet).
// Must not be compiled with -ffast-math: the subnormal path relies on the addition's rounding.
AC_HD uint16_t f32_to_f16(float f) {
    const uint32_t x = f32_to_bits(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u)  // Inf or NaN
        return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? (0x200u | ((a >> 13) & 0x3ffu)) : 0u));
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
    if (a < 0x38800000u) {
        // below 2^-14: f16 subnormal or zero. Adding 0.5f puts the f16 subnormal grid (2^-24) at the
        // last mantissa bit of the sum, so the float addition itself rounds to nearest even.
        const float magic = 0.5f;
        const uint32_t r = f32_to_bits(bits_to_f32(a) + magic) - f32_to_bits(magic);
        return static_cast<uint16_t>(sign | r);
    }
    const uint32_t odd = (a >> 13) & 1u;
    a += 0xc8000fffu + odd;  // rebias exponent (127 -> 15) and round to nearest even
    return static_cast<uint16_t>(sign | (a >> 13));
}

// bfloat16 -> binary32: the 16 bits are the high half.
AC_HD float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

}  // namespace aircache
