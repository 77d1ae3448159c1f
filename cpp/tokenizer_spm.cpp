// tokenizer_spm.cpp — sentencepiece BPE ("llama" vocabularies): merge adjacent symbols by the
// highest score, then byte fallback. The reference is `sentencepiece` (bpe_model.cc) on the same
// model; where llama.cpp's SPM session differs, this follows sentencepiece and says so.
#include <queue>
#include <unordered_map>

#include "tokenizer.h"
#include "unicode.h"

namespace aircache {

namespace {

struct Symbol {
    size_t begin = 0, len = 0;  // bytes of the escaped text; len 0 once merged into its left neighbour
    int prev = -1, next = -1;
    bool frozen = false;        // a user-defined piece: never merged with a neighbour
};

struct Bigram {
    float score;
    int left, right;
    size_t size;  // bytes of the merged piece (stale entries no longer add up to it)
};

// Highest score first; ties go to the leftmost pair.
struct BigramOrder {
    bool operator()(const Bigram& a, const Bigram& b) const {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};

}  // namespace

// `text` is already escaped (' ' -> '▁') and carries its space prefix.
void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;

    // 1. Initial symbols: user-defined pieces matched longest-first at each position (the
    //    sentencepiece prefix matcher; llama.cpp instead cuts them out before adding the space
    //    prefix, which puts an extra '▁' after them), otherwise single UTF-8 characters. An
    //    invalid byte is a symbol of its own and ends up as a byte token.
    std::vector<Symbol> sym;
    sym.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        Symbol s;
        s.begin = pos;
        const int32_t ud = user_matcher_.empty() ? -1 : user_matcher_.match(tokens_, text, pos);
        if (ud >= 0) {
            s.len = tokens_[ud].text.size();
            s.frozen = true;
        } else {
            uint32_t len;
            s.len = utf8_check(text, pos, &len) == Utf8Status::Valid ? len : 1;
        }
        s.prev = static_cast<int>(sym.size()) - 1;
        s.next = static_cast<int>(sym.size()) + 1;
        pos += s.len;
        sym.push_back(s);
    }
    sym.back().next = -1;

    // 2. Merge. `rev` remembers how unused pieces were formed: sentencepiece never outputs an
    //    unused piece but splits it back into the two pieces it was merged from.
    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> agenda;
    std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev;
    auto piece = [&](int i) { return text.substr(sym[i].begin, sym[i].len); };
    auto try_add = [&](int left, int right) {
        if (left < 0 || right < 0 || sym[left].frozen || sym[right].frozen) return;
        const std::string_view p = text.substr(sym[left].begin, sym[left].len + sym[right].len);
        auto it = merge_vocab_.find(p);
        if (it == merge_vocab_.end()) return;
        agenda.push({tokens_[it->second].score, left, right, p.size()});
        if (tokens_[it->second].type == TokenType::Unused) rev[p] = {piece(left), piece(right)};
    };
    for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);

    while (!agenda.empty()) {
        const Bigram b = agenda.top();
        agenda.pop();
        Symbol& l = sym[b.left];
        Symbol& r = sym[b.right];
        if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
        l.len += r.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) sym[r.next].prev = b.left;
        try_add(l.prev, b.left);
        try_add(b.left, l.next);
    }

    // 3. Output, with resegmentation of unused pieces and byte fallback for unknown ones.
    bool prev_unk = false;
    auto emit = [&](auto&& self, std::string_view p) -> void {
        auto it = merge_vocab_.find(p);
        if (it == merge_vocab_.end()) {
            spm_byte_fallback(p, prev_unk, out);
            return;
        }
        if (tokens_[it->second].type == TokenType::Unused) {
            auto r = rev.find(p);
            if (r != rev.end()) {
                self(self, r->second.first);
                self(self, r->second.second);
                return;
            }
        }
        out.push_back(it->second);
        prev_unk = false;
    };
    for (int i = 0; i != -1; i = sym[i].next) emit(emit, piece(i));
}

void Tokenizer::spm_byte_fallback(std::string_view p, bool& prev_unk, std::vector<int32_t>& out) const {
    if (has_byte_tokens_) {
        for (char c : p) {
            const int32_t id = byte_token_[static_cast<uint8_t>(c)];
            if (id >= 0) out.push_back(id);
            else if (unk_ >= 0) out.push_back(unk_);
        }
        prev_unk = false;
        return;
    }
    // Without byte pieces, sentencepiece emits the unknown token, one for a run of unknown pieces.
    if (!prev_unk && unk_ >= 0) out.push_back(unk_);
    prev_unk = true;
}

}  // namespace aircache
