// Compiled with -ffp-contract=off (CMakeLists.txt): dequantized values are bit-identical to
// gguf-py's numpy reference, which rounds every multiply and add separately.
#include "quants.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "common.h"
#include "fp16.h"

namespace aircache {

namespace {

// Every ggml type id of the current enum (llama.cpp ggml.h, GGML_TYPE_COUNT = 43) with its block
// geometry. Q8_1 and Q8_K are activation-only types that never appear in model files.
// Q2_0 (42) is listed without geometry: a file holding it is reported as unsupported.
const TypeInfo kTypes[] = {
    {GGMLType::F32, "F32", 1, 4, true},
    {GGMLType::F16, "F16", 1, 2, true},
    {GGMLType::Q4_0, "Q4_0", 32, 18, true},
    {GGMLType::Q4_1, "Q4_1", 32, 20, true},
    {GGMLType::Q5_0, "Q5_0", 32, 22, true},
    {GGMLType::Q5_1, "Q5_1", 32, 24, true},
    {GGMLType::Q8_0, "Q8_0", 32, 34, true},
    {GGMLType::Q8_1, "Q8_1", 32, 36, false},
    {GGMLType::Q2_K, "Q2_K", 256, 84, true},
    {GGMLType::Q3_K, "Q3_K", 256, 110, true},
    {GGMLType::Q4_K, "Q4_K", 256, 144, true},
    {GGMLType::Q5_K, "Q5_K", 256, 176, true},
    {GGMLType::Q6_K, "Q6_K", 256, 210, true},
    {GGMLType::Q8_K, "Q8_K", 256, 292, false},
    {GGMLType::IQ2_XXS, "IQ2_XXS", 256, 66, false},
    {GGMLType::IQ2_XS, "IQ2_XS", 256, 74, false},
    {GGMLType::IQ3_XXS, "IQ3_XXS", 256, 98, false},
    {GGMLType::IQ1_S, "IQ1_S", 256, 50, false},
    {GGMLType::IQ4_NL, "IQ4_NL", 32, 18, false},
    {GGMLType::IQ3_S, "IQ3_S", 256, 110, false},
    {GGMLType::IQ2_S, "IQ2_S", 256, 82, false},
    {GGMLType::IQ4_XS, "IQ4_XS", 256, 136, false},
    {GGMLType::I8, "I8", 1, 1, false},
    {GGMLType::I16, "I16", 1, 2, false},
    {GGMLType::I32, "I32", 1, 4, false},
    {GGMLType::I64, "I64", 1, 8, false},
    {GGMLType::F64, "F64", 1, 8, false},
    {GGMLType::IQ1_M, "IQ1_M", 256, 56, false},
    {GGMLType::BF16, "BF16", 1, 2, true},
    {GGMLType::TQ1_0, "TQ1_0", 256, 54, false},
    {GGMLType::TQ2_0, "TQ2_0", 256, 66, false},
    {GGMLType::MXFP4, "MXFP4", 32, 17, false},
    {GGMLType::NVFP4, "NVFP4", 64, 36, false},
    {GGMLType::Q1_0, "Q1_0", 128, 18, false},
    {GGMLType::Q2_0, "Q2_0", 0, 0, false},
};

constexpr uint32_t kTypeIdCount = 43;

struct Index {
    const TypeInfo* by_id[kTypeIdCount] = {};
    Index() {
        for (const TypeInfo& t : kTypes) by_id[static_cast<uint32_t>(t.type)] = &t;
    }
};

const Index& index() {
    static const Index idx;
    return idx;
}

}  // namespace

const TypeInfo* type_info(uint32_t id) {
    if (id >= kTypeIdCount) return nullptr;
    return index().by_id[id];
}

const TypeInfo& type_info(GGMLType t) {
    const TypeInfo* ti = type_info(static_cast<uint32_t>(t));
    if (!ti) throw Error(strprintf("internal error: no type info for ggml type id %u", static_cast<unsigned>(t)));
    return *ti;
}

const TypeInfo* type_info_by_name(const std::string& name) {
    std::string up;
    for (char c : name) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    for (const TypeInfo& t : kTypes)
        if (up == t.name) return &t;
    return nullptr;
}

std::string supported_type_names() {
    std::string out;
    for (const TypeInfo& t : kTypes) {
        if (!t.supported) continue;
        if (!out.empty()) out += ", ";
        out += t.name;
    }
    return out;
}

void require_supported(GGMLType t, const std::string& what) {
    const TypeInfo* ti = type_info(static_cast<uint32_t>(t));
    if (!ti) throw FormatError(strprintf("%s has unknown ggml type id %u", what.c_str(), static_cast<unsigned>(t)));
    if (!ti->supported)
        throw UnsupportedError(strprintf("%s has type %s, which this runtime does not support (supported: %s)",
                                         what.c_str(), ti->name, supported_type_names().c_str()));
}

void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
    const TypeInfo* ti = type_info(static_cast<uint32_t>(type));
    if (!ti || !ti->supported) require_supported(type, "data");
    if (n < 0 || n % ti->block_size != 0)
        throw InputError(strprintf("cannot dequantize %lld elements of %s: not a multiple of its block size %lld",
                                   static_cast<long long>(n), ti->name, static_cast<long long>(ti->block_size)));
    const uint8_t* p = static_cast<const uint8_t*>(src);
    dispatch_block_format(type, [&](auto fmt) {
        using F = decltype(fmt);
        const int64_t nb = n / F::QK;
        for (int64_t ib = 0; ib < nb; ++ib) {
            const uint8_t* blk = p + ib * F::BYTES;
            float* y = dst + ib * F::QK;
            for (int e = 0; e < F::QK; ++e) y[e] = F::value(blk, e);
        }
    });
}

void quantize_row(GGMLType type, const float* x, void* dst, int64_t n) {
    uint8_t* out = static_cast<uint8_t*>(dst);
    switch (type) {
        case GGMLType::F32:
            std::memcpy(out, x, sizeof(float) * static_cast<size_t>(n));
            return;
        case GGMLType::F16:
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t h = f32_to_f16(x[i]);
                std::memcpy(out + 2 * i, &h, 2);
            }
            return;
        case GGMLType::Q8_0:
        case GGMLType::Q4_0:
            break;
        default:
            throw InputError(strprintf("cannot quantize to %s (KV cache types: F32, F16, Q8_0, Q4_0)", type_info(type).name));
    }
    if (n % 32 != 0)
        throw InputError(strprintf("cannot quantize %lld elements to %s: not a multiple of 32", static_cast<long long>(n),
                                   type_info(type).name));
    for (int64_t b = 0; b < n / 32; ++b) {
        const float* xb = x + 32 * b;
        if (type == GGMLType::Q8_0) {
            uint8_t* blk = out + 34 * b;
            float amax = 0.0f;
            for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
            const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            const uint16_t dh = f32_to_f16(d);
            std::memcpy(blk, &dh, 2);
            for (int j = 0; j < 32; ++j) blk[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(xb[j] * id)));
        } else {
            uint8_t* blk = out + 18 * b;
            float amax = 0.0f, mx = 0.0f;
            for (int j = 0; j < 32; ++j)
                if (amax < std::fabs(xb[j])) {
                    amax = std::fabs(xb[j]);
                    mx = xb[j];
                }
            const float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            const uint16_t dh = f32_to_f16(d);
            std::memcpy(blk, &dh, 2);
            for (int j = 0; j < 16; ++j) {
                const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(xb[j] * id + 8.5f)));
                const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(xb[j + 16] * id + 8.5f)));
                blk[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
            }
        }
    }
}

}  // namespace aircache
