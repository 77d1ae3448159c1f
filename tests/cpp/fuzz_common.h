// fuzz_common.h — what the libFuzzer targets share: small vocabularies written into a GGUFWriter
// (a sentencepiece-style "llama" one and byte-level "gpt2" ones), a reader of fuzz bytes, and the
// errors a target accepts as a clean refusal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "gguf_writer.h"
#include "tokenizer.h"

namespace aircache::fuzz {

// Consumes the fuzz input front to back; past the end everything reads as zero.
struct Bytes {
    const uint8_t* p;
    size_t n, i = 0;
    Bytes(const uint8_t* data, size_t size) : p(data), n(size) {}
    bool empty() const { return i >= n; }
    uint8_t u8() { return i < n ? p[i++] : 0; }
    uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
    uint32_t u32() { return static_cast<uint32_t>(u16() | (uint32_t(u16()) << 16)); }
    float f32() {
        const uint32_t b = u32();
        float f;
        std::memcpy(&f, &b, 4);
        return f;
    }
    std::string rest() {
        std::string s(reinterpret_cast<const char*>(p + (i < n ? i : n)), i < n ? n - i : 0);
        i = n;
        return s;
    }
    // A string of up to `max` bytes, length first.
    std::string str(size_t max) {
        size_t len = u8() % (max + 1);
        if (len > n - (i < n ? i : n)) len = n - (i < n ? i : n);
        std::string s(reinterpret_cast<const char*>(p + i), len);
        i += len;
        return s;
    }
};

inline std::string utf8(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

// A sentencepiece-style vocabulary of exactly n_tokens (>= 400): <unk> <s> </s>, the 256 byte
// tokens, printable ASCII, "▁" and "▁x" pieces, letter pairs, and "<image>" (user-defined) last.
inline void add_spm_vocab(GGUFWriter& w, int n_tokens) {
    const std::string sp = "\xE2\x96\x81";  // ▁
    std::vector<std::string> tok = {"<unk>", "<s>", "</s>"};
    std::vector<int32_t> type = {2, 3, 3};
    for (int b = 0; b < 256; ++b) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        tok.push_back(buf);
        type.push_back(6);
    }
    std::vector<std::string> pieces;
    for (char c = '!'; c <= '~'; ++c) pieces.push_back(std::string(1, c));
    pieces.push_back(sp);
    for (char c = 'a'; c <= 'z'; ++c) pieces.push_back(sp + c);
    const char* freq = "etaoinshrdlucmfw";
    for (const char* a = freq; *a; ++a)
        for (const char* b = freq; *b; ++b) pieces.push_back(std::string{*a, *b});
    pieces.push_back(sp + "the");
    pieces.push_back(sp + sp);
    for (const std::string& p : pieces) {
        if (static_cast<int>(tok.size()) >= n_tokens - 1) break;
        tok.push_back(p);
        type.push_back(1);
    }
    while (static_cast<int>(tok.size()) < n_tokens - 1) {
        tok.push_back("<unused" + std::to_string(tok.size()) + ">");
        type.push_back(5);
    }
    tok.push_back("<image>");
    type.push_back(4);
    std::vector<float> scores(tok.size());
    for (size_t i = 0; i < tok.size(); ++i) scores[i] = type[i] == 1 ? -static_cast<float>(i) : 0.0f;
    w.add_str("tokenizer.ggml.model", "llama");
    w.add_str_array("tokenizer.ggml.tokens", tok);
    w.add_f32_array("tokenizer.ggml.scores", scores);
    w.add_i32_array("tokenizer.ggml.token_type", type);
    w.add_u32("tokenizer.ggml.bos_token_id", 1);
    w.add_u32("tokenizer.ggml.eos_token_id", 2);
    w.add_u32("tokenizer.ggml.unknown_token_id", 0);
}

// A byte-level BPE vocabulary: GPT-2's 256-character alphabet, merges of common pairs, and
// special tokens (three control, one user-defined). `pre`: "gpt-2", "llama-bpe" or "qwen2".
inline void add_gpt2_vocab(GGUFWriter& w, const std::string& pre) {
    std::vector<std::string> tok;
    std::vector<int32_t> type;
    for (int b = 0; b < 256; ++b) {
        tok.push_back(utf8(gpt2_byte_to_cp(static_cast<uint8_t>(b))));
        type.push_back(1);
    }
    const std::string G = utf8(gpt2_byte_to_cp(' ')), N = utf8(gpt2_byte_to_cp('\n'));
    const std::vector<std::pair<std::string, std::string>> pairs = {
        {G, "t"}, {"h", "e"}, {G + "t", "he"}, {"i", "n"}, {"e", "r"}, {"a", "n"}, {G, "a"}, {"r", "e"},
        {"o", "n"}, {G, "s"}, {"a", "t"}, {"e", "n"}, {"n", "d"}, {G, "w"}, {"e", "s"}, {G, "o"},
        {G, G}, {G + G, G + G}, {N, N}, {"1", "2"}, {"12", "3"}, {"in", "g"}, {G, "i"}, {G + "i", "s"},
        {"Ã", "©"}, {"Ã©", "t"}};
    std::vector<std::string> merges;
    for (const auto& [a, b] : pairs) {
        merges.push_back(a + " " + b);
        tok.push_back(a + b);
        type.push_back(1);
    }
    for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
        tok.push_back(s);
        type.push_back(3);
    }
    tok.push_back("<tool>");
    type.push_back(4);
    w.add_str("tokenizer.ggml.model", "gpt2");
    w.add_str("tokenizer.ggml.pre", pre);
    w.add_str_array("tokenizer.ggml.tokens", tok);
    w.add_i32_array("tokenizer.ggml.token_type", type);
    w.add_str_array("tokenizer.ggml.merges", merges);
    w.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tok.size() - 4));
    w.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tok.size() - 2));
}

}  // namespace aircache::fuzz
