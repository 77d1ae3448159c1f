// unicode.h — the small amount of Unicode the tokenizers need: UTF-8 decoding and encoding that
// never fails on bad bytes, general categories, the character classes of HF pre-tokenizer regexes,
// and simple case folding.
//
//   size_t pos = 0;
//   while (pos < s.size()) {
//       Utf8Char c = utf8_next(s, pos);       // c.cp, c.len; c.valid == false for a bad byte
//       if (is_letter(c.cp)) ...
//       pos += c.len;
//   }
//
// Classes follow the regex engine HF `tokenizers` uses (Oniguruma): \p{L} = general categories
// Lu Ll Lt Lm Lo, \p{N} = Nd Nl No, \s = the Unicode White_Space property. The category table is
// generated from Python's unicodedata by tools/gen_unicode_data.py (unicode_version() says which
// Unicode version); code points assigned after that version are unassigned (Cn) here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace aircache {

// Unicode general categories. The order is the generator's (tools/gen_unicode_data.py).
enum class GeneralCategory : uint8_t {
    Cn, Lu, Ll, Lt, Lm, Lo, Mn, Mc, Me, Nd, Nl, No, Pc, Pd, Ps, Pe,
    Pi, Pf, Po, Sm, Sc, Sk, So, Zs, Zl, Zp, Cc, Cf, Cs, Co,
};

// One decoded character. For a byte that does not start a valid UTF-8 sequence (a stray
// continuation byte, an overlong form, a surrogate, a value above U+10FFFF, a sequence cut short),
// valid is false, len is 1 and cp is U+FFFD: callers advance one byte and can keep the raw byte.
struct Utf8Char {
    uint32_t cp = 0;
    uint32_t len = 1;
    bool valid = false;
};

// The character starting at s[pos] (pos < s.size()).
Utf8Char utf8_next(std::string_view s, size_t pos);

// Status of a UTF-8 prefix read at s[pos]: Valid (a whole character), Incomplete (the bytes so
// far are a valid start of a character but the string ends before it does), Invalid.
enum class Utf8Status { Valid, Incomplete, Invalid };
Utf8Status utf8_check(std::string_view s, size_t pos, uint32_t* len);

// Length of the longest prefix of s made only of whole characters or invalid bytes, i.e. s minus
// a trailing Incomplete character (at most 3 bytes). Streaming decoders emit this much.
size_t utf8_complete_prefix(std::string_view s);

// s with every invalid part replaced by U+FFFD: one replacement per maximal invalid subpart (a
// lead byte plus the continuation bytes that still fit it), as Python's errors="replace" and
// Rust's from_utf8_lossy do. Valid UTF-8 comes back unchanged.
std::string utf8_sanitize(std::string_view s);

// Appends the UTF-8 encoding of cp (cp <= 0x10FFFF; surrogates are encoded as is).
void utf8_append(std::string& out, uint32_t cp);
std::string utf8_encode(uint32_t cp);

// Number of bytes of the UTF-8 sequence a lead byte announces (1 for ASCII and for bytes that
// cannot start a sequence).
inline uint32_t utf8_len_from_lead(uint8_t c) {
    if (c < 0xC0) return 1;
    if (c < 0xE0) return 2;
    if (c < 0xF0) return 3;
    if (c < 0xF8) return 4;
    return 1;
}

GeneralCategory general_category(uint32_t cp);  // Cn above U+10FFFF
const char* general_category_name(GeneralCategory c);  // "Lu", "Nd", ...
bool is_letter(uint32_t cp);      // \p{L}
bool is_number(uint32_t cp);      // \p{N}
bool is_whitespace(uint32_t cp);  // \s (White_Space: \t \n \v \f \r, space, U+0085, U+00A0, U+1680,
                                  // U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000)

// Simple case folding (U+0041 'A' -> 'a', U+017F 'ſ' -> 's'); code points without a
// single-character folding map to themselves.
uint32_t case_fold(uint32_t cp);

const char* unicode_version();  // of the generated tables, e.g. "15.1.0"

}  // namespace aircache
