// tokenizer.cpp — loading a GGUF vocabulary, special-token partitioning, detokenization.
// The merge algorithms are in tokenizer_spm.cpp (llama) and tokenizer_bpe.cpp (gpt2); the
// pre-tokenizer regexes in pretokenize.cpp.
#include "tokenizer.h"

#include <cmath>

#include <algorithm>
#include <array>
#include <cstring>

#include "common.h"
#include "gguf.h"
#include "unicode.h"

namespace aircache {

namespace {

constexpr const char* kSpaceSymbol = "\xE2\x96\x81";  // U+2581 '▁', sentencepiece's space

// Texts llama.cpp treats as end of generation (and forces to CONTROL), docs/formats.md, "Tokenizer".
const char* const kEogTexts[] = {
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", ("<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"),  // <｜end▁of▁sentence｜>
    "<end_of_utterance>",
};

std::string q(std::string_view s) { return "'" + printable(s) + "'"; }

// "<0xAB>" -> 0xAB, or -1.
int parse_byte_token(std::string_view t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; ++i) {
        const char c = t[i];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

}  // namespace

// GPT-2's byte <-> unicode alphabet: printable Latin-1 bytes stand for themselves, the other 68
// bytes are mapped in increasing order to U+0100, U+0101, ... so that every byte is a visible char.
uint32_t gpt2_byte_to_cp(uint8_t b) {
    static const auto table = [] {
        std::array<uint32_t, 256> t{};
        uint32_t n = 0;
        for (uint32_t c = 0; c < 256; ++c) {
            const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
            t[c] = printable ? c : 256 + n++;
        }
        return t;
    }();
    return table[b];
}

int gpt2_cp_to_byte(uint32_t cp) {
    static const auto table = [] {
        std::array<int16_t, 512> t;
        t.fill(-1);
        for (uint32_t b = 0; b < 256; ++b) t[gpt2_byte_to_cp(static_cast<uint8_t>(b))] = static_cast<int16_t>(b);
        return t;
    }();
    return cp < table.size() ? table[cp] : -1;
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GGUFFile& f) {
    std::unique_ptr<Tokenizer> t(new Tokenizer());
    t->load(f);
    return t;
}

void Tokenizer::load(const GGUFFile& f) {
    model_ = f.get_str("tokenizer.ggml.model");
    if (model_ != "llama" && model_ != "gpt2")
        throw UnsupportedError(f.path() + ": tokenizer.ggml.model = " + q(model_) +
                               " is not supported (supported: 'llama' = SentencePiece BPE, 'gpt2' = byte-level BPE)");
    const bool spm = model_ == "llama";

    if (f.has("tokenizer.ggml.pre")) pre_ = f.get_str("tokenizer.ggml.pre");
    if (!spm) {
        const char* supported = "supported: 'llama-bpe' (Llama 3), 'qwen2', 'gpt-2', 'smollm'";
        if (!f.has("tokenizer.ggml.pre"))
            throw UnsupportedError(f.path() + ": tokenizer.ggml.pre is missing; a gpt2 vocabulary needs its "
                                   "pre-tokenizer named (" + supported + ")");
        if (pre_ == "llama-bpe") {
            pre_type_ = PreTokenizer::Llama3;
            ignore_merges_ = true;  // Llama 3's tokenizer.json sets ignore_merges
        } else if (pre_ == "qwen2") {
            pre_type_ = PreTokenizer::Qwen2;
        } else if (pre_ == "gpt-2") {
            pre_type_ = PreTokenizer::Gpt2;
        } else if (pre_ == "smollm") {  // SmolLM / SmolLM2 (SmolVLM's text): digits one by one, then GPT-2's
            pre_type_ = PreTokenizer::Smollm;
        } else {
            throw UnsupportedError(f.path() + ": tokenizer.ggml.pre = " + q(pre_) + " is not supported (" +
                                   supported + ")");
        }
    }

    // Tokens, scores, types: lengths and sizes are checked before anything is allocated.
    const char* kTokens = "tokenizer.ggml.tokens";
    const GGUFValue* tv = f.find(kTokens);
    if (!tv || !tv->is_array() || tv->elem != GGUFType::STRING)
        (void)f.get_str_array(kTokens);  // throws: missing, or the stored type and the expected one
    const uint64_t n = tv->count;
    if (n == 0) f.fail(std::string(kTokens) + " is empty");
    if (n > kMaxTokens)
        f.fail(strprintf("%s has %llu tokens, more than the %llu this runtime accepts", kTokens,
                         static_cast<unsigned long long>(n), static_cast<unsigned long long>(kMaxTokens)));
    auto check_len = [&](const char* key) {
        if (!f.has(key)) return false;
        const uint64_t m = f.get_array_len(key);
        if (m != n)
            f.fail(strprintf("%s has %llu entries but %s has %llu tokens (one entry per token)", key,
                             static_cast<unsigned long long>(m), kTokens, static_cast<unsigned long long>(n)));
        return true;
    };
    const bool has_scores = check_len("tokenizer.ggml.scores");
    const bool has_types = check_len("tokenizer.ggml.token_type");

    tokens_.resize(static_cast<size_t>(n));
    {
        const std::vector<std::string_view>& texts = tv->strings;
        for (size_t i = 0; i < n; ++i) {
            if (texts[i].size() > kMaxTokenBytes)
                f.fail(strprintf("%s[%zu] is %zu bytes long (at most %zu accepted)", kTokens, i, texts[i].size(),
                                 kMaxTokenBytes));
            tokens_[i].text.assign(texts[i]);
        }
    }
    if (has_scores) {
        const std::vector<float> s = f.get_f32_array("tokenizer.ggml.scores");
        for (size_t i = 0; i < n; ++i) {
            if (!std::isfinite(s[i]))
                f.fail(strprintf("tokenizer.ggml.scores[%zu] is %g (scores must be finite)", i, s[i]));
            tokens_[i].score = s[i];
        }
    }
    if (has_types) {
        const std::vector<int64_t> ty = f.get_int_array("tokenizer.ggml.token_type");
        for (size_t i = 0; i < n; ++i) {
            if (ty[i] < 0 || ty[i] > 6)
                f.fail(strprintf("tokenizer.ggml.token_type[%zu] = %lld is not a token type (0..6: undefined, normal, "
                                 "unknown, control, user-defined, unused, byte)", i, static_cast<long long>(ty[i])));
            tokens_[i].type = static_cast<TokenType>(ty[i]);
        }
    }

    // The token -> id map keeps views into tokens_, which no longer changes size.
    token_to_id_.reserve(tokens_.size());
    for (size_t i = 0; i < tokens_.size(); ++i)
        token_to_id_.emplace(std::string_view(tokens_[i].text), static_cast<int32_t>(i));

    add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", spm || pre_type_ == PreTokenizer::Llama3);
    add_eos_ = f.get_bool("tokenizer.ggml.add_eos_token", false);
    // The space prefix is a sentencepiece convention; byte-level vocabularies encode spaces
    // themselves, and llama.cpp's BPE tokenizer ignores the key.
    add_space_prefix_ = spm && f.get_bool("tokenizer.ggml.add_space_prefix", true);
    chat_template_ = f.get_str("tokenizer.chat_template", "");

    load_special_ids(f);
    if (!spm) load_merges(f);
    build_tables(f);
}

void Tokenizer::load_special_ids(const GGUFFile& f) {
    const bool spm = model_ == "llama";
    const int32_t nv = n_vocab();
    auto id_key = [&](const char* key, int32_t def) -> int32_t {
        if (!f.has(key)) return def < nv ? def : -1;
        const int64_t v = f.get_i64(key);
        if (v < 0 || v >= nv)
            f.fail(strprintf("%s = %lld is out of range (the vocabulary has %d tokens)", key, static_cast<long long>(v),
                             nv));
        return static_cast<int32_t>(v);
    };
    // Defaults are llama.cpp's for sentencepiece files; gpt2 files always name their ids, so none
    // is assumed (llama.cpp's placeholder 11 would point at an arbitrary token).
    bos_ = id_key("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
    eos_ = id_key("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
    unk_ = id_key("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
    pad_ = id_key("tokenizer.ggml.padding_token_id", -1);
    eot_ = id_key("tokenizer.ggml.eot_token_id", -1);
    eom_ = id_key("tokenizer.ggml.eom_token_id", -1);

    eog_.assign(tokens_.size(), 0);
    for (int32_t id : {eos_, eot_, eom_})
        if (id >= 0) eog_[id] = 1;
    for (const char* t : kEogTexts) {
        auto it = token_to_id_.find(t);
        if (it == token_to_id_.end()) continue;
        eog_[it->second] = 1;
        tokens_[it->second].type = TokenType::Control;  // llama.cpp forces EOG tokens to CONTROL
    }
    for (size_t i = 0; i < eog_.size(); ++i)
        if (eog_[i]) eog_ids_.push_back(static_cast<int32_t>(i));
}

void Tokenizer::load_merges(const GGUFFile& f) {
    const char* kMerges = "tokenizer.ggml.merges";
    const uint64_t n = f.get_array_len(kMerges);
    if (n > kMaxMerges)
        f.fail(strprintf("%s has %llu entries, more than the %llu this runtime accepts", kMerges,
                         static_cast<unsigned long long>(n), static_cast<unsigned long long>(kMaxMerges)));
    const std::vector<std::string_view> merges = f.get_str_array(kMerges);
    merges_.reserve(merges.size());
    std::string joined;
    for (size_t i = 0; i < merges.size(); ++i) {
        const std::string_view m = merges[i];
        // "left right", split at the first space after the first byte (a token may start with
        // a space byte in principle; the byte-level alphabet has no spaces).
        const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string_view::npos;
        if (sp == std::string_view::npos)
            f.fail(strprintf("%s[%zu] = %s is not of the form 'left right'", kMerges, i, q(m).c_str()));
        const std::string_view left = m.substr(0, sp), right = m.substr(sp + 1);
        joined.assign(left).append(right);
        const auto l = token_to_id_.find(left), r = token_to_id_.find(right), j = token_to_id_.find(joined);
        const std::string_view missing = l == token_to_id_.end() ? left : r == token_to_id_.end() ? right
                                       : j == token_to_id_.end() ? std::string_view(joined) : std::string_view();
        if (l == token_to_id_.end() || r == token_to_id_.end() || j == token_to_id_.end())
            f.fail(strprintf("%s[%zu] = %s: %s is not a token of tokenizer.ggml.tokens", kMerges, i, q(m).c_str(),
                             q(missing).c_str()));
        const uint64_t key = (uint64_t(uint32_t(l->second)) << 32) | uint32_t(r->second);
        merges_.emplace(key, std::make_pair(static_cast<int32_t>(i), j->second));  // first (lowest rank) wins
    }
}

void Tokenizer::build_tables(const GGUFFile& f) {
    const bool spm = model_ == "llama";
    const size_t n = tokens_.size();
    pieces_.resize(n);
    hidden_.assign(n, 0);
    std::fill(std::begin(byte_token_), std::end(byte_token_), -1);

    for (size_t i = 0; i < n; ++i) {
        const Token& t = tokens_[i];
        const TokenType ty = t.type;
        std::string& piece = pieces_[i];
        if (ty == TokenType::Control || ty == TokenType::Unknown || ty == TokenType::Unused) {
            hidden_[i] = 1;
            piece = t.text;
            continue;
        }
        if (spm) {
            if (ty == TokenType::Byte) {
                const int b = parse_byte_token(t.text);
                if (b < 0)
                    f.fail(strprintf("tokenizer.ggml.tokens[%zu] = %s has type byte but is not of the form <0xNN>",
                                     i, q(t.text).c_str()));
                piece.assign(1, static_cast<char>(b));
            } else {
                // Normal, user-defined, undefined: '▁' stands for a space (sentencepiece's decoder
                // does this for user-defined pieces too).
                piece.reserve(t.text.size());
                for (size_t p = 0; p < t.text.size();) {
                    if (t.text.compare(p, 3, kSpaceSymbol) == 0) {
                        piece += ' ';
                        p += 3;
                    } else {
                        piece += t.text[p++];
                    }
                }
            }
        } else if (ty == TokenType::UserDefined) {
            piece = t.text;  // added tokens are stored as plain text, not in the byte alphabet
        } else {
            // Through the inverse byte alphabet; a text with a character outside it is kept as is
            // (what HF's ByteLevel decoder does).
            bool ok = true;
            for (size_t p = 0; p < t.text.size() && ok;) {
                const Utf8Char c = utf8_next(t.text, p);
                const int b = c.valid ? gpt2_cp_to_byte(c.cp) : -1;
                if (b < 0) ok = false;
                else piece += static_cast<char>(b);
                p += c.len;
            }
            if (!ok) piece = t.text;
        }
    }

    if (spm) {
        // sentencepiece merges only into its "normal" pieces: normal, user-defined and unused
        // (control, unknown and byte pieces are reserved and never produced by merging; llama.cpp
        // would merge into any token text, which differs when e.g. "<s>" is reachable by merges).
        merge_vocab_.reserve(n);
        for (size_t i = 0; i < n; ++i) {
            const TokenType ty = tokens_[i].type;
            if (ty == TokenType::Normal || ty == TokenType::UserDefined || ty == TokenType::Unused ||
                ty == TokenType::Undefined)
                merge_vocab_.emplace(std::string_view(tokens_[i].text), static_cast<int32_t>(i));
        }
        for (int b = 0; b < 256; ++b) {
            auto it = token_to_id_.find(strprintf("<0x%02X>", b));
            if (it != token_to_id_.end()) {
                byte_token_[b] = it->second;
                has_byte_tokens_ = true;
            }
        }
        // llama.cpp's fallback when a <0xNN> token is missing: a token whose text is that byte.
        if (has_byte_tokens_)
            for (int b = 0; b < 128; ++b)
                if (byte_token_[b] < 0) {
                    auto it = token_to_id_.find(std::string(1, static_cast<char>(b)));
                    if (it != token_to_id_.end()) byte_token_[b] = it->second;
                }
    } else {
        for (int b = 0; b < 256; ++b) {
            auto it = token_to_id_.find(utf8_encode(gpt2_byte_to_cp(static_cast<uint8_t>(b))));
            if (it != token_to_id_.end()) byte_token_[b] = it->second;
        }
    }

    // Atomic token texts. For llama, user-defined pieces are matched inside the sentencepiece
    // session instead (user_matcher_), so that no space prefix follows them.
    auto build = [&](TokenMatcher& m, auto pred) {
        std::vector<int32_t> ids;
        for (size_t i = 0; i < n; ++i)
            if (!tokens_[i].text.empty() && pred(tokens_[i].type)) ids.push_back(static_cast<int32_t>(i));
        if (ids.empty()) return;
        std::stable_sort(ids.begin(), ids.end(),
                         [&](int32_t a, int32_t b) { return tokens_[a].text.size() > tokens_[b].text.size(); });
        m.by_first_byte.assign(256, {});
        for (int32_t id : ids) m.by_first_byte[static_cast<uint8_t>(tokens_[id].text[0])].push_back(id);
    };
    build(user_matcher_, [](TokenType t) { return t == TokenType::UserDefined; });
    build(special_matcher_, [spm](TokenType t) {
        return t == TokenType::Control || t == TokenType::Unknown || (!spm && t == TokenType::UserDefined);
    });
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

int32_t Tokenizer::TokenMatcher::match(const std::vector<Token>& tokens, std::string_view text, size_t pos) const {
    for (int32_t id : by_first_byte[static_cast<uint8_t>(text[pos])]) {
        const std::string& t = tokens[id].text;
        if (text.size() - pos >= t.size() && std::memcmp(text.data() + pos, t.data(), t.size()) == 0) return id;
    }
    return -1;
}

void Tokenizer::partition(std::string_view text, bool parse_special, std::vector<Fragment>& out) const {
    const TokenMatcher* m = parse_special ? &special_matcher_ : (model_ == "gpt2" ? &user_matcher_ : nullptr);
    if (!m || m->empty()) {
        if (!text.empty()) out.push_back({-1, 0, text.size()});
        return;
    }
    // Leftmost-longest, like HF tokenizers' added-token matcher. Token texts start with an ASCII
    // or lead byte, so a match never starts inside a character.
    size_t start = 0;
    for (size_t pos = 0; pos < text.size();) {
        const int32_t id = m->match(tokens_, text, pos);
        if (id < 0) {
            ++pos;
            continue;
        }
        if (pos > start) out.push_back({-1, start, pos - start});
        out.push_back({id, pos, tokens_[id].text.size()});
        pos += tokens_[id].text.size();
        start = pos;
    }
    if (start < text.size()) out.push_back({-1, start, text.size() - start});
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
    std::vector<Fragment> frags;
    partition(text, parse_special, frags);
    if (model_ == "llama") {
        // The space prefix goes before the first text and before text that follows a special
        // token (llama.cpp; HF LlamaTokenizer legacy=True). Then ' ' -> '▁'.
        bool prev_special = true;
        std::string escaped;
        for (const Fragment& fr : frags) {
            if (fr.token >= 0) {
                out.push_back(fr.token);
                prev_special = true;
                continue;
            }
            escaped.clear();
            if (add_space_prefix_ && prev_special) escaped += kSpaceSymbol;
            for (char c : text.substr(fr.begin, fr.len)) {
                if (c == ' ') escaped += kSpaceSymbol;
                else escaped += c;
            }
            encode_spm(escaped, out);
            prev_special = false;
        }
    } else {
        for (const Fragment& fr : frags) {
            if (fr.token >= 0) out.push_back(fr.token);
            else encode_bpe(text.substr(fr.begin, fr.len), out);
        }
    }
    if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding and lookups
// ---------------------------------------------------------------------------------------------

void Tokenizer::check_id(int32_t id) const {
    if (id < 0 || id >= n_vocab())
        throw InputError(strprintf("token id %d is out of range (the vocabulary has %d tokens)", id, n_vocab()));
}

void Tokenizer::append_piece(int32_t id, bool skip_special, bool& strip_pending, std::string& out) const {
    check_id(id);
    const std::string& piece = pieces_[id];
    if (hidden_[id]) {
        if (skip_special) return;  // invisible: the space prefix is still to come (sentencepiece)
        out += piece;
        strip_pending = false;
        return;
    }
    // sentencepiece drops the '▁' that starts the first piece (the dummy prefix it added), and
    // only that one: byte pieces and pieces without '▁' end the chance.
    if (strip_pending && add_space_prefix_ && tokens_[id].type != TokenType::Byte &&
        tokens_[id].text.compare(0, 3, kSpaceSymbol) == 0)
        out.append(piece, 1, std::string::npos);
    else
        out += piece;
    strip_pending = false;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    std::string out;
    bool strip = true;
    for (int32_t id : ids) append_piece(id, skip_special, strip, out);
    return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool special) const {
    check_id(id);
    if (hidden_[id] && !special) return {};
    return pieces_[id];
}

bool Tokenizer::is_eog(int32_t id) const { return id >= 0 && id < n_vocab() && eog_[id]; }

bool Tokenizer::is_control(int32_t id) const {
    return id >= 0 && id < n_vocab() && tokens_[id].type == TokenType::Control;
}

const std::string& Tokenizer::token_text(int32_t id) const {
    check_id(id);
    return tokens_[id].text;
}

TokenType Tokenizer::token_type(int32_t id) const {
    check_id(id);
    return tokens_[id].type;
}

float Tokenizer::token_score(int32_t id) const {
    check_id(id);
    return tokens_[id].score;
}

int32_t Tokenizer::find_token(std::string_view text) const {
    auto it = token_to_id_.find(text);
    return it == token_to_id_.end() ? -1 : it->second;
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder
// ---------------------------------------------------------------------------------------------

std::string StreamDecoder::push(int32_t id) {
    tok_.append_piece(id, skip_special_, strip_pending_, buf_);
    const size_t n = utf8_complete_prefix(buf_);
    std::string out = buf_.substr(0, n);
    buf_.erase(0, n);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out;
    out.swap(buf_);
    return out;
}

void StreamDecoder::reset() {
    buf_.clear();
    strip_pending_ = true;
}

}  // namespace aircache
