// bind_tokenizer — _core.Tokenizer and _core.StreamDecoder over cpp/tokenizer.h. Argument
// conversion only; the GIL is released while encoding and decoding.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "gguf.h"
#include "pretokenize.h"
#include "tokenizer.h"
#include "unicode.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

nb::str utf8_str(std::string_view s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
    if (!o) throw nb::python_error();
    return nb::steal<nb::str>(o);
}

nb::bytes to_bytes(const std::string& s) { return nb::bytes(s.data(), s.size()); }

// The UTF-8 bytes of a str (UnicodeEncodeError for lone surrogates) or the contents of a bytes
// object, as a view that stays valid while `o` is alive (str caches its UTF-8 form).
std::string_view text_view(nb::handle o) {
    if (PyUnicode_Check(o.ptr())) {
        Py_ssize_t n = 0;
        const char* p = PyUnicode_AsUTF8AndSize(o.ptr(), &n);
        if (!p) throw nb::python_error();
        return {p, static_cast<size_t>(n)};
    }
    if (PyBytes_Check(o.ptr())) return {PyBytes_AS_STRING(o.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(o.ptr()))};
    throw nb::type_error("text must be str or bytes");
}

struct PyTokenizer {
    std::shared_ptr<const Tokenizer> tok;
    std::string path;

    explicit PyTokenizer(const std::string& p) : path(p) {
        nb::gil_scoped_release nogil;
        std::unique_ptr<GGUFFile> f = GGUFFile::open(p);
        tok = Tokenizer::from_gguf(*f);  // the vocabulary is copied; the file is closed again
    }
};

// Keeps its tokenizer alive (the C++ decoder holds a reference).
struct PyStreamDecoder {
    std::shared_ptr<const Tokenizer> tok;
    StreamDecoder dec;
    PyStreamDecoder(const PyTokenizer& t, bool skip_special) : tok(t.tok), dec(*tok, skip_special) {}
};

}  // namespace

void aircache_bind_tokenizer(nb::module_& m) {
    nb::class_<PyTokenizer>(m, "Tokenizer",
                            "The tokenizer of a GGUF file (tokenizer.ggml.* metadata): llama (SentencePiece) or "
                            "gpt2 (byte-level BPE).")
        .def(nb::init<const std::string&>(), nb::arg("path"))
        .def("encode", [](const PyTokenizer& s, nb::handle obj, bool add_special, bool parse_special) {
            const std::string_view text = text_view(obj);
            std::vector<int32_t> ids;
            {
                nb::gil_scoped_release nogil;
                ids = s.tok->encode(text, add_special, parse_special);
            }
            return ids;
        }, nb::arg("text"), nb::arg("add_special") = true, nb::arg("parse_special") = false,
           nb::sig("def encode(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) "
                   "-> list[int]"),
           "Token ids of `text` (str, or UTF-8 bytes: invalid bytes become byte tokens). add_special: BOS/EOS as the file says; parse_special: control-token text "
           "becomes those tokens.")
        .def("decode", [](const PyTokenizer& s, const std::vector<int32_t>& ids, bool skip_special) {
            std::string text;
            {
                nb::gil_scoped_release nogil;
                text = s.tok->decode(ids, skip_special);
            }
            return utf8_str(text);
        }, nb::arg("ids"), nb::arg("skip_special") = true,
           "Text of `ids` (invalid UTF-8, only possible from arbitrary ids, becomes U+FFFD).")
        .def("decode_bytes", [](const PyTokenizer& s, const std::vector<int32_t>& ids, bool skip_special) {
            std::string text;
            {
                nb::gil_scoped_release nogil;
                text = s.tok->decode(ids, skip_special);
            }
            return to_bytes(text);
        }, nb::arg("ids"), nb::arg("skip_special") = true, "decode() as raw bytes.")
        .def("token_to_piece", [](const PyTokenizer& s, int32_t id, bool special) {
            return to_bytes(s.tok->token_to_piece(id, special));
        }, nb::arg("id"), nb::arg("special") = false, "The bytes this token contributes to decoded text.")
        .def("token_text", [](const PyTokenizer& s, int32_t id) { return utf8_str(s.tok->token_text(id)); },
             nb::arg("id"), "The token's text as stored in the file.")
        .def("token_type", [](const PyTokenizer& s, int32_t id) { return static_cast<int>(s.tok->token_type(id)); },
             nb::arg("id"), "0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.")
        .def("token_score", [](const PyTokenizer& s, int32_t id) { return s.tok->token_score(id); }, nb::arg("id"))
        .def("find_token", [](const PyTokenizer& s, const std::string& text) { return s.tok->find_token(text); },
             nb::arg("text"), "Id of the token with exactly this text, or -1.")
        .def("is_eog", [](const PyTokenizer& s, int32_t id) { return s.tok->is_eog(id); }, nb::arg("id"))
        .def("is_control", [](const PyTokenizer& s, int32_t id) { return s.tok->is_control(id); }, nb::arg("id"))
        .def_prop_ro("path", [](const PyTokenizer& s) { return s.path; })
        .def_prop_ro("n_vocab", [](const PyTokenizer& s) { return s.tok->n_vocab(); })
        .def_prop_ro("bos", [](const PyTokenizer& s) { return s.tok->bos(); })
        .def_prop_ro("eos", [](const PyTokenizer& s) { return s.tok->eos(); })
        .def_prop_ro("eot", [](const PyTokenizer& s) { return s.tok->eot(); })
        .def_prop_ro("eom", [](const PyTokenizer& s) { return s.tok->eom(); })
        .def_prop_ro("unk", [](const PyTokenizer& s) { return s.tok->unk(); })
        .def_prop_ro("pad", [](const PyTokenizer& s) { return s.tok->pad(); })
        .def_prop_ro("add_bos", [](const PyTokenizer& s) { return s.tok->add_bos(); })
        .def_prop_ro("add_eos", [](const PyTokenizer& s) { return s.tok->add_eos(); })
        .def_prop_ro("add_space_prefix", [](const PyTokenizer& s) { return s.tok->add_space_prefix(); })
        .def_prop_ro("model", [](const PyTokenizer& s) { return s.tok->model(); })
        .def_prop_ro("pre", [](const PyTokenizer& s) { return s.tok->pre(); })
        .def_prop_ro("chat_template", [](const PyTokenizer& s) { return utf8_str(s.tok->chat_template()); })
        .def_prop_ro("eog_ids", [](const PyTokenizer& s) { return s.tok->eog_ids(); });

    nb::class_<PyStreamDecoder>(m, "StreamDecoder",
                                "Incremental detokenizer: push ids, get back only whole UTF-8 characters.")
        .def(nb::init<const PyTokenizer&, bool>(), nb::arg("tokenizer"), nb::arg("skip_special") = true)
        .def("push", [](PyStreamDecoder& s, int32_t id) { return utf8_str(s.dec.push(id)); }, nb::arg("id"))
        .def("push_bytes", [](PyStreamDecoder& s, int32_t id) { return to_bytes(s.dec.push(id)); }, nb::arg("id"))
        .def("flush", [](PyStreamDecoder& s) { return utf8_str(s.dec.flush()); })
        .def("flush_bytes", [](PyStreamDecoder& s) { return to_bytes(s.dec.flush()); })
        .def("reset", [](PyStreamDecoder& s) { s.dec.reset(); })
        .def_prop_ro("pending_bytes", [](const PyStreamDecoder& s) { return s.dec.pending_bytes(); });

    // Test hook: the pre-tokenizer alone, to compare it with HF's regex on any text.
    m.def("_pretokenize", [](const std::string& pre, const std::string& text) {
        PreTokenizer kind;
        if (pre == "gpt-2") kind = PreTokenizer::Gpt2;
        else if (pre == "llama-bpe") kind = PreTokenizer::Llama3;
        else if (pre == "qwen2") kind = PreTokenizer::Qwen2;
        else if (pre == "smollm") kind = PreTokenizer::Smollm;
        else throw InputError("unknown pre-tokenizer '" + pre + "' (gpt-2, llama-bpe, qwen2, smollm)");
        std::vector<std::string_view> pieces;
        {
            nb::gil_scoped_release nogil;
            pretokenize(kind, text, pieces);
        }
        nb::list out;
        for (std::string_view p : pieces) out.append(utf8_str(p));
        return out;
    }, nb::arg("pre"), nb::arg("text"), "The pieces the pre-tokenizer `pre` cuts `text` into (testing aid).");
    m.def("_unicode_version", &unicode_version, "Unicode version of the tokenizer's character tables.");
    m.def("_general_category", [](uint32_t cp) { return general_category_name(general_category(cp)); },
          nb::arg("cp"), "General category of a code point in the tokenizer's tables (testing aid).");
}
