// pretokenize.h — the pre-tokenizer regexes of byte-level BPE vocabularies, hand-written.
//
//   std::vector<std::string_view> words;
//   pretokenize(PreTokenizer::Llama3, "Hello world!!\n", words);   // "Hello", " world", "!!\n"
//
// Each splitter returns exactly the matches that HF `tokenizers` (Oniguruma, leftmost match,
// ordered alternation with backtracking) finds for its pattern; the matches tile the text.
//   Gpt2   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Llama3 (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2  the Llama3 pattern with \p{N} (single digits) instead of \p{N}{1,3}
//   Smollm every \p{N} character a piece of its own (HF's Digits(individual_digits=True)), then
//          Gpt2 on each stretch between them (SmolLM / SmolLM2's Sequence[Digits, ByteLevel])
// Character classes are unicode.h's. A byte that is not valid UTF-8 counts as a character of its
// own that is neither letter, number nor space (the regex engines never see such input).
#pragma once

#include <string_view>
#include <vector>

#include "tokenizer.h"

namespace aircache {

// Appends the pieces of `text` to `out` (views into `text`). PreTokenizer::None appends `text`
// whole (when not empty).
void pretokenize(PreTokenizer kind, std::string_view text, std::vector<std::string_view>& out);

}  // namespace aircache
