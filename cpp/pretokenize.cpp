#include "pretokenize.h"

#include <cstdint>

#include "unicode.h"

namespace aircache {

namespace {

// The text decoded once into classified characters; matchers work on character indices.
struct Chars {
    enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kCrLf = 8 };
    std::vector<uint32_t> cp;      // code point (0xFFFFFFFF for an invalid byte)
    std::vector<uint8_t> cls;      // class bits
    std::vector<size_t> offset;    // byte offset of each character, plus the end

    explicit Chars(std::string_view s) {
        cp.reserve(s.size());
        cls.reserve(s.size());
        offset.reserve(s.size() + 1);
        size_t pos = 0;
        while (pos < s.size()) {
            const Utf8Char c = utf8_next(s, pos);
            const uint32_t v = c.valid ? c.cp : 0xFFFFFFFFu;
            uint8_t k = 0;
            if (c.valid) {
                if (is_letter(v)) k |= kLetter;
                else if (is_number(v)) k |= kNumber;
                else if (is_whitespace(v)) k |= kSpace;
                if (v == '\r' || v == '\n') k |= kCrLf;
            }
            cp.push_back(v);
            cls.push_back(k);
            offset.push_back(pos);
            pos += c.len;
        }
        offset.push_back(s.size());
    }
    size_t size() const { return cp.size(); }
    bool L(size_t i) const { return cls[i] & kLetter; }
    bool N(size_t i) const { return cls[i] & kNumber; }
    bool S(size_t i) const { return cls[i] & kSpace; }
    bool CrLf(size_t i) const { return cls[i] & kCrLf; }
    bool Other(size_t i) const { return (cls[i] & (kLetter | kNumber | kSpace)) == 0; }  // [^\s\p{L}\p{N}]
};

// 's|'t|'re|'ve|'m|'ll|'d at i, case-sensitive or under simple case folding (Oniguruma's (?i)
// matches 'ſ as 's; multi-character foldings such as 'ﬆ do not match). End index or 0.
size_t contraction(const Chars& c, size_t i, bool fold) {
    const size_t n = c.size();
    if (c.cp[i] != '\'' || i + 1 >= n) return 0;
    auto at = [&](size_t k) { return fold ? case_fold(c.cp[k]) : c.cp[k]; };
    const uint32_t a = at(i + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
        const uint32_t b = at(i + 2);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    return 0;
}

// End of the maximal run of whitespace starting at i.
size_t space_run(const Chars& c, size_t i) {
    while (i < c.size() && c.S(i)) ++i;
    return i;
}

// \s+(?!\S)|\s+ at a whitespace character i of a piece ending at n: the run, minus its last
// character when a non-space follows and the run is longer than one (the lookahead backtracks by one).
size_t trailing_spaces(const Chars& c, size_t i, size_t n) {
    const size_t j = space_run(c, i);
    if (j < n && j - i >= 2) return j - 1;
    return j;
}
size_t trailing_spaces(const Chars& c, size_t i) { return trailing_spaces(c, i, c.size()); }

// GPT-2's pattern at i, on the piece of the text that ends at n (SmolLM splits digits off first:
// the regex then runs on each piece between them).
size_t match_gpt2(const Chars& c, size_t i, size_t n) {
    if (size_t e = contraction(c, i, false)) return e;
    // ` ?X+` for X = \p{L}, \p{N}, [^\s\p{L}\p{N}], in this order.
    const bool sp = c.cp[i] == ' ' && i + 1 < n;
    auto run = [&](size_t k, bool (Chars::*pred)(size_t) const) {
        while (k < n && (c.*pred)(k)) ++k;
        return k;
    };
    if (sp && c.L(i + 1)) return run(i + 1, &Chars::L);
    if (c.L(i)) return run(i, &Chars::L);
    if (sp && c.N(i + 1)) return run(i + 1, &Chars::N);
    if (c.N(i)) return run(i, &Chars::N);
    if (sp && c.Other(i + 1)) return run(i + 1, &Chars::Other);
    if (c.Other(i)) return run(i, &Chars::Other);
    return trailing_spaces(c, i, n);  // c[i] is whitespace
}

size_t match_llama3(const Chars& c, size_t i, size_t max_digits) {
    const size_t n = c.size();
    if (size_t e = contraction(c, i, true)) return e;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    size_t k = i;
    if (!c.CrLf(i) && !c.L(i) && !c.N(i) && i + 1 < n && c.L(i + 1)) k = i + 1;
    if (c.L(k)) {
        while (k < n && c.L(k)) ++k;
        return k;
    }
    // \p{N}{1,max}
    if (c.N(i)) {
        k = i;
        while (k < n && k - i < max_digits && c.N(k)) ++k;
        return k;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    k = i;
    if (c.cp[i] == ' ' && i + 1 < n && c.Other(i + 1)) k = i + 1;
    if (c.Other(k)) {
        while (k < n && c.Other(k)) ++k;
        while (k < n && c.CrLf(k)) ++k;
        return k;
    }
    // \s*[\r\n]+ : the greedy \s* gives back characters until a newline follows, so the match
    // ends right after the last \r or \n of the whitespace run.
    const size_t j = space_run(c, i);
    for (size_t p = j; p > i; --p)
        if (c.CrLf(p - 1)) return p;
    return trailing_spaces(c, i);
}

}  // namespace

void pretokenize(PreTokenizer kind, std::string_view text, std::vector<std::string_view>& out) {
    if (text.empty()) return;
    if (kind == PreTokenizer::None) {
        out.push_back(text);
        return;
    }
    const Chars c(text);
    size_t i = 0;
    size_t digit = 0;  // Smollm: the next number character (at or after where the last scan began)
    bool scanned = false;
    while (i < c.size()) {
        size_t e;
        switch (kind) {
            case PreTokenizer::Gpt2: e = match_gpt2(c, i, c.size()); break;
            case PreTokenizer::Smollm:
                // HF's Digits(individual_digits=True) (numbers = Unicode N*, Rust's char::is_numeric),
                // then ByteLevel's GPT-2 regex on each piece between them (llama.cpp's SMOLLM: \p{N},
                // then the GPT-2 regex)
                if (!scanned || digit < i) {
                    scanned = true;
                    digit = i;
                    while (digit < c.size() && !c.N(digit)) ++digit;
                }
                e = digit == i ? i + 1 : match_gpt2(c, i, digit);
                break;
            case PreTokenizer::Llama3: e = match_llama3(c, i, 3); break;
            default: e = match_llama3(c, i, 1); break;  // Qwen2
        }
        if (e <= i) e = i + 1;  // unreachable: every character is matched by some alternative
        out.push_back(text.substr(c.offset[i], c.offset[e] - c.offset[i]));
        i = e;
    }
}

}  // namespace aircache
