"""Defective and unsupported tokenizer metadata: each is rejected with a typed error whose message
names the key (C++ loader), and tools/gguf_vocab.py refuses tokenizers it cannot reproduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import aircache_cpp as ac
from gguf_fixtures import ARR, BOOL, F32, I32, KV, STR, U32, RawGGUF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gguf_vocab  # noqa: E402

SPM_TOKENS = ["<unk>", "<s>", "</s>", "<0x41>", "a", "\u2581", "\u2581a"]


def spm_kvs(**replace):
    """A small valid llama vocabulary; `replace` swaps or (with None) drops keys."""
    kvs = {
        "general.architecture": KV.of("general.architecture", STR, "llama"),
        "tokenizer.ggml.model": KV.of("tokenizer.ggml.model", STR, "llama"),
        "tokenizer.ggml.tokens": KV.array("tokenizer.ggml.tokens", STR, SPM_TOKENS),
        "tokenizer.ggml.scores": KV.array("tokenizer.ggml.scores", F32, [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0]),
        "tokenizer.ggml.token_type": KV.array("tokenizer.ggml.token_type", I32, [2, 3, 3, 6, 1, 1, 1]),
        "tokenizer.ggml.bos_token_id": KV.of("tokenizer.ggml.bos_token_id", U32, 1),
        "tokenizer.ggml.eos_token_id": KV.of("tokenizer.ggml.eos_token_id", U32, 2),
    }
    for k, v in replace.items():
        k = k.replace("__", ".")
        if v is None:
            kvs.pop(k, None)
        else:
            kvs[k] = v
    return list(kvs.values())


def gpt2_alphabet():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def gpt2_kvs(**replace):
    tokens = gpt2_alphabet() + ["ab", "abc", "<|endoftext|>"]
    kvs = {
        "general.architecture": KV.of("general.architecture", STR, "llama"),
        "tokenizer.ggml.model": KV.of("tokenizer.ggml.model", STR, "gpt2"),
        "tokenizer.ggml.pre": KV.of("tokenizer.ggml.pre", STR, "gpt-2"),
        "tokenizer.ggml.tokens": KV.array("tokenizer.ggml.tokens", STR, tokens),
        "tokenizer.ggml.token_type": KV.array("tokenizer.ggml.token_type", I32, [1] * 258 + [3]),
        "tokenizer.ggml.merges": KV.array("tokenizer.ggml.merges", STR, ["a b", "ab c"]),
        "tokenizer.ggml.eos_token_id": KV.of("tokenizer.ggml.eos_token_id", U32, 258),
    }
    for k, v in replace.items():
        k = k.replace("__", ".")
        if v is None:
            kvs.pop(k, None)
        else:
            kvs[k] = v
    return list(kvs.values())


def write(tmp_path, kvs, name="t.gguf"):
    p = tmp_path / name
    p.write_bytes(RawGGUF(kvs=kvs).encode())
    return str(p)


def test_valid_fixtures_load(tmp_path):
    t = ac.Tokenizer(write(tmp_path, spm_kvs()))
    assert t.model == "llama" and t.n_vocab == 7
    assert t.encode("a a", add_special=True) == [1, 6, 6]
    assert t.encode("b", add_special=False) == [5, 0]  # no byte token for 'b': <unk>, as sentencepiece
    g = ac.Tokenizer(write(tmp_path, gpt2_kvs(), "g.gguf"))
    assert g.model == "gpt2" and g.pre == "gpt-2" and g.bos == -1 and g.eos == 258
    assert g.encode("abc ab", add_special=False) == [257, gpt2_alphabet().index("\u0120"), 256]
    assert g.decode(g.encode("héllo wörld\n", add_special=False)) == "héllo wörld\n"


SPM_CASES = [
    # (id, replacements, exception, message regex)
    ("tokens missing", {"tokenizer__ggml__tokens": None}, ac.FormatError,
     r"missing metadata key 'tokenizer\.ggml\.tokens'"),
    ("tokens wrong type", {"tokenizer__ggml__tokens": KV.array("tokenizer.ggml.tokens", I32, [1, 2, 3])},
     ac.FormatError, r"'tokenizer\.ggml\.tokens' has type ARRAY\[INT32\], expected ARRAY\[STRING\]"),
    ("tokens scalar", {"tokenizer__ggml__tokens": KV.of("tokenizer.ggml.tokens", STR, "abc")},
     ac.FormatError, r"'tokenizer\.ggml\.tokens' has type STRING, expected ARRAY\[STRING\]"),
    ("tokens empty", {"tokenizer__ggml__tokens": KV.array("tokenizer.ggml.tokens", STR, [])},
     ac.FormatError, r"tokenizer\.ggml\.tokens is empty"),
    ("scores short", {"tokenizer__ggml__scores": KV.array("tokenizer.ggml.scores", F32, [0.0] * 6)},
     ac.FormatError, r"tokenizer\.ggml\.scores has 6 entries but tokenizer\.ggml\.tokens has 7 tokens"),
    ("scores wrong type", {"tokenizer__ggml__scores": KV.array("tokenizer.ggml.scores", STR, ["x"] * 7)},
     ac.FormatError, r"'tokenizer\.ggml\.scores' has type ARRAY\[STRING\], expected an array of numbers"),
    ("types short", {"tokenizer__ggml__token_type": KV.array("tokenizer.ggml.token_type", I32, [1] * 3)},
     ac.FormatError, r"tokenizer\.ggml\.token_type has 3 entries but tokenizer\.ggml\.tokens has 7"),
    ("type value", {"tokenizer__ggml__token_type": KV.array("tokenizer.ggml.token_type", I32, [1, 1, 1, 9, 1, 1, 1])},
     ac.FormatError, r"tokenizer\.ggml\.token_type\[3\] = 9 is not a token type"),
    ("byte token text", {"tokenizer__ggml__token_type": KV.array("tokenizer.ggml.token_type", I32, [2, 3, 3, 6, 6, 1, 1])},
     ac.FormatError, r"tokenizer\.ggml\.tokens\[4\] = 'a' has type byte but is not of the form <0xNN>"),
    ("model missing", {"tokenizer__ggml__model": None}, ac.FormatError, r"missing metadata key 'tokenizer\.ggml\.model'"),
    ("model wrong type", {"tokenizer__ggml__model": KV.of("tokenizer.ggml.model", U32, 1)}, ac.FormatError,
     r"'tokenizer\.ggml\.model' has type UINT32, expected STRING"),
    ("model unknown", {"tokenizer__ggml__model": KV.of("tokenizer.ggml.model", STR, "bert")}, ac.UnsupportedError,
     r"tokenizer\.ggml\.model = 'bert' is not supported \(supported: 'llama' = SentencePiece BPE, 'gpt2'"),
    ("bos out of range", {"tokenizer__ggml__bos_token_id": KV.of("tokenizer.ggml.bos_token_id", U32, 7)},
     ac.FormatError, r"tokenizer\.ggml\.bos_token_id = 7 is out of range \(the vocabulary has 7 tokens\)"),
    ("eos out of range", {"tokenizer__ggml__eos_token_id": KV.of("tokenizer.ggml.eos_token_id", U32, 4000000000)},
     ac.FormatError, r"tokenizer\.ggml\.eos_token_id = 4000000000 is out of range"),
    ("bos wrong type", {"tokenizer__ggml__bos_token_id": KV.of("tokenizer.ggml.bos_token_id", STR, "1")},
     ac.FormatError, r"'tokenizer\.ggml\.bos_token_id' has type STRING, expected an integer"),
    ("add_bos wrong type", {"tokenizer__ggml__add_bos_token": KV.of("tokenizer.ggml.add_bos_token", U32, 1)},
     ac.FormatError, r"'tokenizer\.ggml\.add_bos_token' has type UINT32, expected BOOL"),
]


@pytest.mark.parametrize("case", SPM_CASES, ids=[c[0] for c in SPM_CASES])
def test_spm_metadata_errors(tmp_path, case):
    _, repl, exc, pattern = case
    path = write(tmp_path, spm_kvs(**repl))
    with pytest.raises(exc, match=pattern) as ei:
        ac.Tokenizer(path)
    assert path in str(ei.value)  # the file is named too


GPT2_CASES = [
    ("pre missing", {"tokenizer__ggml__pre": None}, ac.UnsupportedError,
     r"tokenizer\.ggml\.pre is missing.*'llama-bpe' \(Llama 3\), 'qwen2', 'gpt-2', 'smollm'"),
    ("pre unknown", {"tokenizer__ggml__pre": KV.of("tokenizer.ggml.pre", STR, "falcon")}, ac.UnsupportedError,
     r"tokenizer\.ggml\.pre = 'falcon' is not supported \(supported: 'llama-bpe' \(Llama 3\), 'qwen2', 'gpt-2', 'smollm'\)"),
    ("pre default", {"tokenizer__ggml__pre": KV.of("tokenizer.ggml.pre", STR, "default")}, ac.UnsupportedError,
     r"tokenizer\.ggml\.pre = 'default' is not supported"),
    ("merges missing", {"tokenizer__ggml__merges": None}, ac.FormatError,
     r"missing metadata key 'tokenizer\.ggml\.merges'"),
    ("merges wrong type", {"tokenizer__ggml__merges": KV.array("tokenizer.ggml.merges", I32, [1])}, ac.FormatError,
     r"'tokenizer\.ggml\.merges' has type ARRAY\[INT32\], expected ARRAY\[STRING\]"),
    ("merge unknown token", {"tokenizer__ggml__merges": KV.array("tokenizer.ggml.merges", STR, ["a b", "ab zz"])},
     ac.FormatError, r"tokenizer\.ggml\.merges\[1\] = 'ab zz': 'zz' is not a token"),
    ("merge result unknown", {"tokenizer__ggml__merges": KV.array("tokenizer.ggml.merges", STR, ["b c"])},
     ac.FormatError, r"tokenizer\.ggml\.merges\[0\] = 'b c': 'bc' is not a token"),
    ("merge without space", {"tokenizer__ggml__merges": KV.array("tokenizer.ggml.merges", STR, ["a b", "abc"])},
     ac.FormatError, r"tokenizer\.ggml\.merges\[1\] = 'abc' is not of the form 'left right'"),
    ("eos out of range", {"tokenizer__ggml__eos_token_id": KV.of("tokenizer.ggml.eos_token_id", U32, 259)},
     ac.FormatError, r"tokenizer\.ggml\.eos_token_id = 259 is out of range"),
]


@pytest.mark.parametrize("case", GPT2_CASES, ids=[c[0] for c in GPT2_CASES])
def test_gpt2_metadata_errors(tmp_path, case):
    _, repl, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        ac.Tokenizer(write(tmp_path, gpt2_kvs(**repl)))


def test_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError):
        ac.Tokenizer(write(tmp_path, spm_kvs(tokenizer__ggml__tokens=None)))
    with pytest.raises(ValueError):
        ac.Tokenizer(write(tmp_path, gpt2_kvs(tokenizer__ggml__pre=None), "g.gguf"))
    with pytest.raises(OSError):
        ac.Tokenizer(tmp_path / "does-not-exist.gguf")


def test_bad_ids(tmp_path):
    t = ac.Tokenizer(write(tmp_path, spm_kvs()))
    for bad in (-1, 7, 1 << 30):
        with pytest.raises(ac.InputError, match=rf"token id {bad} is out of range \(the vocabulary has 7 tokens\)"):
            t.decode([4, bad])
        with pytest.raises(ac.InputError, match="out of range"):
            t.token_to_piece(bad)
        with pytest.raises(ac.InputError, match="out of range"):
            t.token_text(bad)
        with pytest.raises(ac.InputError, match="out of range"):
            t.stream().push(bad)
    assert not t.is_eog(-1) and not t.is_eog(7)


def test_text_types(tmp_path):
    t = ac.Tokenizer(write(tmp_path, spm_kvs()))
    assert t.encode(b"a a", add_special=False) == t.encode("a a", add_special=False) == [6, 6]
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate has no UTF-8 form
        t.encode("a\ud800", add_special=False)
    with pytest.raises(TypeError, match="str or bytes"):
        t.encode(42)


# -------------------------------------------------------------------------------------------------
# tools/gguf_vocab.py refusals
# -------------------------------------------------------------------------------------------------

def _bpe_json(pre_tokenizer, normalizer=None, model_type="BPE"):
    vocab = {c: i for i, c in enumerate(gpt2_alphabet())}
    vocab["ab"] = len(vocab)
    return {"version": "1.0", "added_tokens": [], "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": model_type, "vocab": vocab, "merges": [["a", "b"]]}}


REFUSED = [
    ("whitespace", {"type": "Whitespace"}, None, "BPE", r"unsupported pre_tokenizer \(it does not end with ByteLevel\)"),
    ("other regex", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+|\w+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}, None, "BPE",
     r"unsupported pre_tokenizer \(Split pattern '\\\\s\+\|\\\\w\+'\).*supported: Split\(llama3 regex\)"),
    ("prefix space", {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}, None,
     "BPE", r"add_prefix_space=true is not implemented"),
    ("no pre", None, None, "BPE", r"unsupported pre_tokenizer \(none\)"),
    ("lowercase", {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, {"type": "Lowercase"}, "BPE",
     r"normalizer 'Lowercase' is not supported"),
    ("wordpiece", {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, None, "WordPiece",
     r"model type 'WordPiece' is not supported"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_gguf_vocab_refuses(tmp_path, case):
    import gguf

    _, pre, norm, model_type, pattern = case
    (tmp_path / "tokenizer.json").write_text(json.dumps(_bpe_json(pre, norm, model_type)))
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    with pytest.raises(ValueError, match=pattern):
        gguf_vocab.add_vocab(w, tmp_path)


def test_gguf_vocab_detects_pre():
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    for pattern, name in ((gguf_vocab.LLAMA3_PATTERN, "llama-bpe"), (gguf_vocab.QWEN2_PATTERN, "qwen2")):
        seq = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}, bl]}
        assert gguf_vocab.detect_pre({"pre_tokenizer": seq}) == name
    assert gguf_vocab.detect_pre({"pre_tokenizer": dict(bl, use_regex=True)}) == "gpt-2"


def test_gguf_vocab_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gguf_vocab.py"), "--hf", str(tmp_path),
                        "--out", str(tmp_path / "v.gguf")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "no tokenizer.model (SentencePiece) or tokenizer.json (BPE) found" in r.stderr
    assert not (tmp_path / "v.gguf").exists()


def test_gguf_vocab_accepts_nfc_with_a_warning(tmp_path, caplog):
    # Qwen2's tokenizer.json has an NFC normalizer, which llama.cpp (and this runtime) does not apply.
    import gguf

    pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(_bpe_json(pre, {"type": "NFC"})))
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    with caplog.at_level("WARNING", logger="gguf_vocab"):
        info = gguf_vocab.add_vocab(w, tmp_path)
    assert info == {"model": "gpt2", "pre": "gpt-2", "n_vocab": 257}
    assert "NFC normalizer is not applied" in caplog.text
