// libFuzzer target for the tokenizers: arbitrary bytes through each vocabulary kind (sentencepiece
// "llama" with byte fallback; byte-level "gpt2" with the gpt-2, llama-bpe and qwen2 pre-tokenizers).
// The first input byte picks the vocabulary and the flags; the rest is the text. Checked on every
// input:
//   - encode never throws on text, and every id is inside the vocabulary;
//   - decode(encode(text)) == text when no special-token text is parsed (parse_special off), for
//     any bytes with gpt2 vocabularies and for text without the '▁' symbol with llama ones
//     (sentencepiece maps spaces to '▁', so a '▁' in the text decodes as a space);
//   - pushing the ids through StreamDecoder one by one gives the same text as decode;
//   - encode with parse_special and every token_to_piece stay inside their buffers (ASan).
//
//   ./fuzz_tokenizer -max_total_time=60 CORPUS_DIR
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "gguf.h"
#include "random_model.h"
#include "tokenizer.h"

using namespace aircache;

namespace {

struct Vocab {
    std::shared_ptr<const GGUFFile> file;
    std::unique_ptr<Tokenizer> tok;
};

std::vector<Vocab> make_vocabs() {
    std::vector<Vocab> out;
    for (int k = 0; k < 4; ++k) {
        GGUFWriter w;
        w.add_str("general.architecture", "llama");
        if (k == 0) fuzz::add_spm_vocab(w, 512);
        else fuzz::add_gpt2_vocab(w, k == 1 ? "gpt-2" : k == 2 ? "llama-bpe" : "qwen2");
        Vocab v;
        v.file = gguf_from_bytes(w.bytes(), "vocab" + std::to_string(k) + ".gguf");
        v.tok = Tokenizer::from_gguf(*v.file);
        out.push_back(std::move(v));
    }
    return out;
}

[[noreturn]] void fail(const char* what, const std::string& text, const std::string& got) {
    std::fprintf(stderr, "fuzz_tokenizer: %s\n  text (%zu bytes): ", what, text.size());
    for (unsigned char c : text) std::fprintf(stderr, "%02x", c);
    std::fprintf(stderr, "\n  got  (%zu bytes): ", got.size());
    for (unsigned char c : got) std::fprintf(stderr, "%02x", c);
    std::fprintf(stderr, "\n");
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::vector<Vocab> vocabs = make_vocabs();
    if (size == 0) return 0;
    const uint8_t mode = data[0];
    const Tokenizer& tok = *vocabs[mode % vocabs.size()].tok;
    const bool spm = tok.model() == "llama";
    const bool add_special = mode & 0x10;
    const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);

    const std::vector<int32_t> ids = tok.encode(text, add_special, false);
    for (int32_t id : ids)
        if (id < 0 || id >= tok.n_vocab()) fail("id outside the vocabulary", text, std::to_string(id));
    const std::string back = tok.decode(ids, true);
    const bool has_sp = text.find("\xE2\x96\x81") != std::string::npos;
    if (!(spm && has_sp) && back != text) fail("decode(encode(text)) != text", text, back);

    StreamDecoder sd(tok, true);
    std::string streamed;
    for (int32_t id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    if (streamed != back) fail("StreamDecoder text != decode", text, streamed);

    const std::vector<int32_t> special = tok.encode(text, add_special, true);
    for (int32_t id : special) {
        if (id < 0 || id >= tok.n_vocab()) fail("id outside the vocabulary (parse_special)", text, std::to_string(id));
        (void)tok.token_to_piece(id, true);
    }
    (void)tok.decode(special, false);
    return 0;
}
