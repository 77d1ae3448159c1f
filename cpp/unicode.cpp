#include "unicode.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace aircache {

namespace {

#include "unicode_data.inc"

// The pre-tokenizers classify every character; Latin-1 is by far the most common input, so its
// categories are looked up in a flat table built once from the runs.
struct Latin1Table {
    std::array<GeneralCategory, 256> cat{};
    Latin1Table() {
        size_t r = 0;
        for (uint32_t cp = 0; cp < 256; ++cp) {
            while (r + 1 < std::size(kGcRanges) && kGcRanges[r + 1].first <= cp) ++r;
            cat[cp] = static_cast<GeneralCategory>(kGcRanges[r].cat);
        }
    }
};
const Latin1Table kLatin1;

inline bool is_cont(uint8_t c) { return (c & 0xC0) == 0x80; }

}  // namespace

Utf8Status utf8_check(std::string_view s, size_t pos, uint32_t* len) {
    const size_t n = s.size() - pos;
    const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + pos;
    const uint8_t c = p[0];
    *len = 1;
    if (c < 0x80) return Utf8Status::Valid;
    // Second-byte ranges that exclude overlong forms, surrogates and values above U+10FFFF
    // (the well-formed table of Unicode ch. 3, table 3-7).
    uint32_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return Utf8Status::Invalid;  // C0, C1, F5..FF, or a continuation byte
    }
    for (uint32_t i = 1; i < need; ++i) {
        if (i >= n) return Utf8Status::Incomplete;
        const uint8_t b = p[i];
        if (i == 1 ? (b < lo || b > hi) : !is_cont(b)) return Utf8Status::Invalid;
    }
    *len = need;
    return Utf8Status::Valid;
}

Utf8Char utf8_next(std::string_view s, size_t pos) {
    Utf8Char out;
    const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + pos;
    uint32_t len;
    if (utf8_check(s, pos, &len) != Utf8Status::Valid) {
        out.cp = 0xFFFD;
        out.len = 1;
        out.valid = false;
        return out;
    }
    out.len = len;
    out.valid = true;
    switch (len) {
        case 1: out.cp = p[0]; break;
        case 2: out.cp = (uint32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F); break;
        case 3: out.cp = (uint32_t(p[0] & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F); break;
        default:
            out.cp = (uint32_t(p[0] & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) | (uint32_t(p[2] & 0x3F) << 6) |
                     (p[3] & 0x3F);
    }
    return out;
}

size_t utf8_complete_prefix(std::string_view s) {
    // Only the last three bytes can belong to an unfinished character.
    const size_t start = s.size() > 3 ? s.size() - 3 : 0;
    for (size_t i = start; i < s.size(); ++i) {
        const uint8_t c = static_cast<uint8_t>(s[i]);
        if (is_cont(c)) continue;
        uint32_t len;
        if (utf8_check(s, i, &len) == Utf8Status::Incomplete) return i;
    }
    return s.size();
}

std::string utf8_sanitize(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    while (pos < s.size()) {
        uint32_t len;
        if (utf8_check(s, pos, &len) == Utf8Status::Valid) {
            out.append(s.data() + pos, len);
            pos += len;
            continue;
        }
        size_t k = 1;  // grow while the bytes so far are still a valid beginning of a character
        while (pos + k < s.size() && k < 4 && utf8_check(s.substr(0, pos + k + 1), pos, &len) == Utf8Status::Incomplete)
            ++k;
        out += "\xEF\xBF\xBD";
        pos += k;
    }
    return out;
}

void utf8_append(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string utf8_encode(uint32_t cp) {
    std::string s;
    utf8_append(s, cp);
    return s;
}

GeneralCategory general_category(uint32_t cp) {
    if (cp < 256) return kLatin1.cat[cp];
    if (cp > 0x10FFFF) return GeneralCategory::Cn;
    // Last run whose first code point is <= cp.
    const auto* end = kGcRanges + std::size(kGcRanges);
    const auto* it = std::upper_bound(kGcRanges, end, cp, [](uint32_t v, const GcRun& r) { return v < r.first; });
    return static_cast<GeneralCategory>((it - 1)->cat);
}

const char* general_category_name(GeneralCategory c) {
    static const char* const names[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc",
                                        "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp",
                                        "Cc", "Cf", "Cs", "Co"};
    const auto i = static_cast<size_t>(c);
    return i < std::size(names) ? names[i] : "Cn";
}

bool is_letter(uint32_t cp) {
    const auto c = general_category(cp);
    return c >= GeneralCategory::Lu && c <= GeneralCategory::Lo;
}

bool is_number(uint32_t cp) {
    const auto c = general_category(cp);
    return c >= GeneralCategory::Nd && c <= GeneralCategory::No;
}

bool is_whitespace(uint32_t cp) {
    // The White_Space property (PropList.txt), stable since Unicode 6.3 removed U+180E. Python's
    // str.isspace() differs (it also counts U+001C..U+001F), so this list is written out.
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return false;
    switch (cp) {
        case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
            return true;
        default:
            return cp >= 0x2000 && cp <= 0x200A;
    }
}

uint32_t case_fold(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    const auto* end = kFoldRanges + std::size(kFoldRanges);
    const auto* it = std::upper_bound(kFoldRanges, end, cp, [](uint32_t v, const FoldRun& r) { return v < r.first; });
    if (it == kFoldRanges) return cp;
    const FoldRun& r = *(it - 1);
    if (cp > r.last || (cp - r.first) % r.stride != 0) return cp;
    return static_cast<uint32_t>(static_cast<int64_t>(cp) + r.delta);
}

const char* unicode_version() { return kUnicodeVersion; }

}  // namespace aircache
