// tokenizer_bpe.cpp — byte-level BPE ("gpt2" vocabularies): pre-tokenize, map every byte to its
// alphabet token, merge the adjacent pair with the lowest merge rank (leftmost on ties) until no
// pair has a merge. The reference is HF `tokenizers` (BPE model, ByteLevel pre-tokenizer).
#include <queue>

#include "pretokenize.h"
#include "tokenizer.h"
#include "unicode.h"

namespace aircache {

namespace {

struct Sym {
    int32_t id;  // token id; -1 for a byte whose alphabet character is not a token
    int prev, next;
};

struct Pair {
    int32_t rank;
    int left, right;
    int32_t left_id, right_id;  // what the pair was made of (stale entries no longer match)
    int32_t merged;
};

// Lowest rank first; ties go to the leftmost pair.
struct PairOrder {
    bool operator()(const Pair& a, const Pair& b) const {
        return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
};

}  // namespace

void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
    std::vector<std::string_view> words;
    pretokenize(pre_type_, text, words);
    for (std::string_view w : words) bpe_word(w, out);
}

void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (word.size() == 1) {  // the common case of a single byte needs no merging
        const int32_t id = byte_token_[static_cast<uint8_t>(word[0])];
        if (id >= 0) out.push_back(id);
        else if (unk_ >= 0) out.push_back(unk_);
        return;
    }
    if (ignore_merges_) {
        // Llama 3 (ignore_merges in its tokenizer.json): a pre-token that is itself a token is
        // emitted whole, even where the merges would segment it differently.
        std::string mapped;
        mapped.reserve(word.size() * 2);
        for (char c : word) utf8_append(mapped, gpt2_byte_to_cp(static_cast<uint8_t>(c)));
        const int32_t id = find_token(mapped);
        if (id >= 0) {
            out.push_back(id);
            return;
        }
    }

    std::vector<Sym> sym(word.size());
    for (size_t i = 0; i < word.size(); ++i)
        sym[i] = {byte_token_[static_cast<uint8_t>(word[i])], static_cast<int>(i) - 1,
                  i + 1 < word.size() ? static_cast<int>(i) + 1 : -1};

    std::priority_queue<Pair, std::vector<Pair>, PairOrder> agenda;
    auto try_add = [&](int left, int right) {
        if (left < 0 || right < 0) return;
        const int32_t a = sym[left].id, b = sym[right].id;
        if (a < 0 || b < 0) return;
        auto it = merges_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
        if (it == merges_.end()) return;
        agenda.push({it->second.first, left, right, a, b, it->second.second});
    };
    for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);

    while (!agenda.empty()) {
        const Pair p = agenda.top();
        agenda.pop();
        Sym& l = sym[p.left];
        if (l.id != p.left_id || l.next != p.right || sym[p.right].id != p.right_id) continue;  // stale
        Sym& r = sym[p.right];
        l.id = p.merged;
        l.next = r.next;
        if (r.next >= 0) sym[r.next].prev = p.left;
        r.id = -2;  // dead
        try_add(l.prev, p.left);
        try_add(p.left, l.next);
    }

    // A byte with no alphabet token (an incomplete vocabulary) is dropped, as HF tokenizers and
    // llama.cpp do, or becomes the unknown token when the file names one.
    for (int i = 0; i != -1; i = sym[i].next) {
        if (sym[i].id >= 0) out.push_back(sym[i].id);
        else if (unk_ >= 0) out.push_back(unk_);
    }
}

}  // namespace aircache
