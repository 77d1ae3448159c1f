// tokenizer.h — text <-> token ids for the vocabularies llama.cpp stores in GGUF files
// (`tokenizer.ggml.*` keys, docs/formats.md).
//
//   auto f = GGUFFile::open("model.gguf");
//   auto tok = Tokenizer::from_gguf(*f);          // copies what it needs; f may be closed after
//   std::vector<int32_t> ids = tok->encode("USER: hi\nASSISTANT:", /*add_special=*/true,
//                                          /*parse_special=*/true);
//   std::string text = tok->decode(ids);          // control tokens skipped
//   StreamDecoder sd(*tok);                       // while generating:
//   std::string piece = sd.push(next_id);         //   only whole UTF-8 characters
//
// Supported models (`tokenizer.ggml.model`):
//   "llama"  SentencePiece BPE over token scores with byte fallback (<0xNN> tokens) and a space
//            prefix, producing the ids `sentencepiece` produces for the same model (see below).
//   "gpt2"   byte-level BPE over `tokenizer.ggml.merges` (rank = index), after a pre-tokenizer
//            regex chosen by `tokenizer.ggml.pre`: "llama-bpe" (Llama 3), "qwen2", "gpt-2",
//            producing the ids HF `tokenizers` produces.
// Anything else is an UnsupportedError that lists these.
//
// Special tokens. The texts of CONTROL and UNKNOWN tokens become those tokens only when
// parse_special is set; USER_DEFINED tokens are always atomic. Matching is leftmost-longest
// (HF tokenizers' added-token matcher; llama.cpp instead cuts the longest token text out first,
// which differs only for overlapping token texts).
//   llama: user-defined tokens are matched inside the text as sentencepiece does (frozen symbols,
//          no extra space prefix after them); after a control token, the following text gets the
//          space prefix again (llama.cpp, and HF LlamaTokenizer with legacy=True).
//   gpt2:  text between special tokens is pre-tokenized separately.
// Tokens whose text is an end-of-generation marker (<|im_end|>, <|eot_id|>, <|endoftext|>, ...)
// are EOG and typed CONTROL, as llama.cpp does.
//
// Errors: from_gguf throws FormatError naming the key for missing, mistyped or inconsistent
// metadata (token count vs scores/types lengths, merges naming unknown tokens, special ids out of
// range, absurd sizes) and UnsupportedError for an unsupported model or pre-tokenizer. encode never
// throws on text: invalid UTF-8 bytes are tokenized as single bytes (byte tokens, so decode gives
// them back). decode/token_to_piece throw InputError for an id outside [0, n_vocab).
// A Tokenizer is immutable after from_gguf and safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace aircache {

class GGUFFile;

enum class TokenType : int32_t {
    Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
};

// Pre-tokenizer of a gpt2 vocabulary (`tokenizer.ggml.pre`).
enum class PreTokenizer { None, Gpt2, Llama3, Qwen2, Smollm };

class Tokenizer {
public:
    // Limits on what a file may ask for (the largest real vocabularies have ~260k tokens).
    static constexpr uint64_t kMaxTokens = uint64_t(1) << 24;
    static constexpr uint64_t kMaxMerges = uint64_t(1) << 24;
    static constexpr size_t kMaxTokenBytes = size_t(1) << 16;

    static std::unique_ptr<Tokenizer> from_gguf(const GGUFFile& f);

    // Token ids of `text` (UTF-8). add_special: prepend BOS / append EOS when the file says
    // (add_bos / add_eos). parse_special: control-token texts in `text` become those tokens.
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

    // The text of `ids`: the exact inverse of encode for text without special tokens. Control,
    // unknown and unused tokens are dropped when skip_special, else rendered as their text.
    // llama: the '▁' that starts the first text piece (the space prefix) is dropped, as
    // sentencepiece does; a rendered control token counts as text, and the prefix encode puts
    // after a control token is kept (sentencepiece and llama.cpp; HF's slow legacy decoder drops
    // it). Byte tokens are assembled into raw bytes; the result is valid UTF-8 whenever the ids
    // came from encode of valid UTF-8.
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const;

    // The raw bytes this token contributes to decoded text, without the leading-space rule.
    // Control/unknown/unused tokens give "" unless `special`.
    std::string token_to_piece(int32_t id, bool special = false) const;

    int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
    int32_t bos() const { return bos_; }  // -1 when none
    int32_t eos() const { return eos_; }
    int32_t eot() const { return eot_; }
    int32_t eom() const { return eom_; }
    int32_t unk() const { return unk_; }
    int32_t pad() const { return pad_; }
    bool add_bos() const { return add_bos_; }
    bool add_eos() const { return add_eos_; }
    bool add_space_prefix() const { return add_space_prefix_; }

    bool is_eog(int32_t id) const;      // eos, eot, eom and the EOG texts (docs/formats.md)
    bool is_control(int32_t id) const;  // type Control (EOG tokens included)
    const std::vector<int32_t>& eog_ids() const { return eog_ids_; }  // sorted

    // Throw InputError for an id outside [0, n_vocab).
    const std::string& token_text(int32_t id) const;
    TokenType token_type(int32_t id) const;
    float token_score(int32_t id) const;

    int32_t find_token(std::string_view text) const;  // -1 when absent
    const std::string& model() const { return model_; }  // "llama" | "gpt2"
    const std::string& pre() const { return pre_; }      // tokenizer.ggml.pre ("" when absent)
    PreTokenizer pre_tokenizer() const { return pre_type_; }
    const std::string& chat_template() const { return chat_template_; }  // "" when absent

    // Appends the decoded bytes of one token to `out`, keeping the leading-space state between
    // calls (what decode() and StreamDecoder share). `strip_pending` starts true.
    void append_piece(int32_t id, bool skip_special, bool& strip_pending, std::string& out) const;

private:
    Tokenizer() = default;

    struct Token {
        std::string text;
        float score = 0.0f;
        TokenType type = TokenType::Normal;
    };
    // A cut of the input: a special token or a run of ordinary text.
    struct Fragment {
        int32_t token;  // -1 for text
        size_t begin, len;
    };
    // Token texts matched atomically in the text: per first byte, ids by decreasing length.
    struct TokenMatcher {
        std::vector<std::vector<int32_t>> by_first_byte;  // 256 buckets (empty when unused)
        bool empty() const { return by_first_byte.empty(); }
        // Id of the longest token text starting at text[pos], or -1.
        int32_t match(const std::vector<Token>& tokens, std::string_view text, size_t pos) const;
    };

    void load(const GGUFFile& f);
    void load_special_ids(const GGUFFile& f);
    void load_merges(const GGUFFile& f);
    void build_tables(const GGUFFile& f);
    void check_id(int32_t id) const;

    void partition(std::string_view text, bool parse_special, std::vector<Fragment>& out) const;
    void encode_spm(std::string_view text, std::vector<int32_t>& out) const;   // tokenizer_spm.cpp
    void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;   // tokenizer_bpe.cpp
    void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
    void spm_byte_fallback(std::string_view piece, bool& prev_unk, std::vector<int32_t>& out) const;

    std::string model_, pre_, chat_template_;
    PreTokenizer pre_type_ = PreTokenizer::None;
    std::vector<Token> tokens_;
    std::unordered_map<std::string_view, int32_t> token_to_id_;  // views into tokens_ (first id wins)
    // llama: the pieces sentencepiece may merge into (normal, user-defined, unused, undefined).
    std::unordered_map<std::string_view, int32_t> merge_vocab_;
    // gpt2: (left id << 32 | right id) -> (rank, merged id).
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
    int32_t byte_token_[256];           // llama: <0xNN> (or the 1-byte text); gpt2: the byte's alphabet char
    bool has_byte_tokens_ = false;      // llama: byte fallback available
    std::vector<std::string> pieces_;   // rendered bytes of each token (what token_to_piece(special) gives)
    std::vector<uint8_t> hidden_;       // 1 for tokens dropped by skip_special
    std::vector<uint8_t> eog_;
    std::vector<int32_t> eog_ids_;
    TokenMatcher special_matcher_;      // control + unknown (+ user-defined for gpt2)
    TokenMatcher user_matcher_;         // user-defined only (gpt2: always parsed; llama: inline)

    int32_t bos_ = -1, eos_ = -1, eot_ = -1, eom_ = -1, unk_ = -1, pad_ = -1;
    bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
    bool ignore_merges_ = false;  // llama-bpe: a pre-token that is a whole token is not merged
};

// GPT-2's byte-level alphabet: the code point that stands for byte b in gpt2 token texts, and
// back (-1 for a code point outside the alphabet).
uint32_t gpt2_byte_to_cp(uint8_t b);
int gpt2_cp_to_byte(uint32_t cp);

// Incremental detokenizer for generation: push ids one at a time and get back only complete
// UTF-8 characters (bytes of a character split across byte tokens are held back until it is
// complete; a byte that can never become valid is passed through). The first piece drops the
// space prefix exactly as decode() does, so the concatenation of every push() plus flush() equals
// decode(all ids, skip_special). The Tokenizer must outlive the decoder.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& t, bool skip_special = true) : tok_(t), skip_special_(skip_special) {}
    std::string push(int32_t id);
    std::string flush();  // whatever is held back (the bytes of an unfinished character)
    void reset();         // start a new stream (the next piece is a first piece again)
    size_t pending_bytes() const { return buf_.size(); }

private:
    const Tokenizer& tok_;
    bool skip_special_;
    bool strip_pending_ = true;
    std::string buf_;
};

}  // namespace aircache
