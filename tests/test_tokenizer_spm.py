"""SentencePiece ("llama") tokenizer parity: aircache_cpp.Tokenizer over a GGUF written by
tools/gguf_vocab.py against `sentencepiece` on the same model, trained here (LLaMA-like settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import sentencepiece as spm

import aircache_cpp as ac
from hf_fixtures import corpus, save_llama_tokenizer, train_spm
from tokenizer_cases import HARD_CASES, fuzz_strings, parity_strings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gguf_vocab  # noqa: E402

USER_SYMBOLS = ["<sep>", "<image>", "ab", "abc", "\u2581hi", "x y", "[MASK]"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


class Spm:
    """A trained model, its sentencepiece processor and our tokenizer over the converted GGUF."""

    def __init__(self, model_file: str, hf_dir: str, gguf_path: str):
        self.model_file = model_file
        self.hf_dir = hf_dir
        self.path = gguf_path
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.tok = ac.Tokenizer(gguf_path)


def _convert(hf_dir: str, out: str, cli: bool) -> None:
    if cli:  # the standalone tool
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gguf_vocab.py"), "--hf", hf_dir, "--out", out],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "model llama" in r.stdout
    else:
        gguf_vocab.write_vocab_only(hf_dir, out)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Spm:
    d = tmp_path_factory.mktemp("spm_plain")
    model = train_spm(str(d / "train"), vocab_size=512)
    save_llama_tokenizer(str(d / "hf"), model, chat_template=CHAT_TEMPLATE)
    _convert(str(d / "hf"), str(d / "vocab.gguf"), cli=True)
    return Spm(model, str(d / "hf"), str(d / "vocab.gguf"))


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Spm:
    d = tmp_path_factory.mktemp("spm_user")
    model = train_spm(str(d / "train"), vocab_size=600, seed=1, user_defined_symbols=USER_SYMBOLS)
    save_llama_tokenizer(str(d / "hf"), model)
    _convert(str(d / "hf"), str(d / "vocab.gguf"), cli=False)
    return Spm(model, str(d / "hf"), str(d / "vocab.gguf"))


@pytest.fixture(scope="module")
def nobyte(tmp_path_factory) -> Spm:
    """Without byte fallback: unknown characters become <unk> (one per run, as sentencepiece)."""
    d = tmp_path_factory.mktemp("spm_nobyte")
    prefix = str(d / "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(3000, 5)), model_prefix=prefix, vocab_size=400, model_type="bpe",
        byte_fallback=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=0.98, minloglevel=2, num_threads=1)
    save_llama_tokenizer(str(d / "hf"), prefix + ".model")
    _convert(str(d / "hf"), str(d / "vocab.gguf"), cli=False)
    return Spm(prefix + ".model", str(d / "hf"), str(d / "vocab.gguf"))


def _mismatches(tok, sp, strings):
    bad = []
    for s in strings:
        ours = tok.encode(s, add_special=False, parse_special=False)
        ref = sp.encode(s)
        if ours != ref:
            bad.append((s, ours, ref))
    return bad


def _with_user_symbols(strings, seed):
    """Corpus lines with user-defined symbols spliced in at random places."""
    import random

    rng = random.Random(seed)
    out = []
    for s in strings:
        for _ in range(rng.randint(1, 3)):
            i = rng.randint(0, len(s))
            s = s[:i] + rng.choice(USER_SYMBOLS + ["a", "b", "c", " ", "hi"]) + s[i:]
        out.append(s)
    return out


# -------------------------------------------------------------------------------------------------
# The converted file
# -------------------------------------------------------------------------------------------------

def test_vocab_metadata(plain):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    with open(plain.model_file, "rb") as f:
        proto.ParseFromString(f.read())
    with ac.GGUFFile(plain.path) as f:
        md = f.info().metadata
        types = f.info().metadata_types
    assert md["general.architecture"] == "llama"
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.pre"] == "default"
    assert md["tokenizer.ggml.tokens"] == [p.piece for p in proto.pieces]
    assert md["tokenizer.ggml.scores"] == pytest.approx([p.score for p in proto.pieces])
    assert md["tokenizer.ggml.token_type"] == [int(p.type) for p in proto.pieces]
    assert types["tokenizer.ggml.token_type"] == "ARRAY[INT32]"
    assert types["tokenizer.ggml.bos_token_id"] == "UINT32"
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"],
            md["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    assert md["tokenizer.ggml.add_bos_token"] is True and md["tokenizer.ggml.add_eos_token"] is False
    assert md["tokenizer.ggml.add_space_prefix"] is True
    assert md["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert not any(k.startswith("tokenizer.ggml.merges") for k in md)
    assert ac.gguf_info(plain.path).tensors == []

    t = plain.tok
    assert (t.model, t.n_vocab, t.bos, t.eos, t.unk) == ("llama", plain.sp.get_piece_size(), 1, 2, 0)
    assert t.add_bos and not t.add_eos and t.add_space_prefix
    assert t.chat_template == CHAT_TEMPLATE
    assert t.token_type(0) == 2 and t.token_type(1) == 3 and t.token_type(3) == 6 and t.token_type(300) == 1
    assert t.token_text(3) == "<0x00>" and t.find_token("<0x41>") == 3 + 0x41 and t.find_token("nope") == -1
    assert t.token_score(300) == pytest.approx(plain.sp.get_score(300))


def test_user_defined_types(user):
    for s in USER_SYMBOLS:
        i = user.sp.piece_to_id(s)
        assert user.tok.token_type(i) == 4, s
        assert user.tok.token_text(i) == s


# -------------------------------------------------------------------------------------------------
# Encoding parity
# -------------------------------------------------------------------------------------------------

def test_encode_matches_sentencepiece(plain):
    strings = parity_strings(seed=101)
    assert len(strings) >= 1000
    bad = _mismatches(plain.tok, plain.sp, strings)
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {bad[:3]}"


def test_encode_matches_sentencepiece_user_defined(user):
    strings = parity_strings(seed=202, n_corpus=600) + _with_user_symbols(corpus(500, seed=203), seed=204) + [
        "<sep>", "a<sep>b", "abcd", "xabcx", " <image> hi", "hi", "x y", "<sep><sep>", "ab c", "[MASK][MASK]x",
        "  <image>\n<image>  ", "abab abc abcabc", "hihi hi hi", "<sep", "sep>", "<image>\u2581hi"]
    assert len(strings) >= 1000
    bad = _mismatches(user.tok, user.sp, strings)
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {bad[:3]}"


def test_encode_matches_sentencepiece_without_byte_fallback(nobyte):
    strings = corpus(300, seed=31) + HARD_CASES + fuzz_strings(300, 32)
    bad = _mismatches(nobyte.tok, nobyte.sp, strings)
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {bad[:3]}"
    # the case the variant exists for: runs of unknown characters give one <unk>
    ids = nobyte.tok.encode("x\u2603\u2604\u2605y", add_special=False)
    assert ids.count(0) == 1 and ids == nobyte.sp.encode("x\u2603\u2604\u2605y")


def test_byte_fallback(plain):
    # characters the 512-piece model does not have are spelled with <0xNN> byte tokens
    ids = plain.tok.encode("\u20ac\U0001f999", add_special=False)
    pieces = [plain.tok.token_text(i) for i in ids]
    assert pieces[1:] == ["<0xE2>", "<0x82>", "<0xAC>", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert plain.tok.decode(ids) == "\u20ac\U0001f999"


def test_invalid_utf8_bytes_roundtrip(plain):
    # bytes input that is not UTF-8: each bad byte becomes its byte token, and decode gives it back
    for raw in [b"a\xffb", b"\xc3(", b"\xe2\x82", b"\x80\x80 x", b"ok \xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80"]:
        ids = plain.tok.encode(raw, add_special=False)
        assert plain.tok.decode_bytes(ids) == raw, raw
    assert plain.tok.encode(b"\xff", add_special=False)[1:] == [3 + 0xFF]


# -------------------------------------------------------------------------------------------------
# Decoding
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["plain", "user"])
def test_decode_inverts_encode(which, request):
    m = request.getfixturevalue(which)
    strings = parity_strings(seed=303, n_corpus=700)
    if which == "user":
        strings += _with_user_symbols(corpus(200, seed=304), seed=305)
    bad = []
    for s in strings:
        if "\u2581" in s:  # sentencepiece reads a literal '▁' as a space: not invertible by design
            continue
        ids = m.tok.encode(s, add_special=True)
        if m.tok.decode(ids) != s or m.tok.decode_bytes(ids) != s.encode():
            bad.append(s)
    assert not bad, f"{len(bad)} strings do not survive encode/decode, e.g. {bad[:3]!r}"


def test_decode_matches_sentencepiece_on_id_sequences(plain):
    # Arbitrary sequences of normal pieces (and control tokens, invisible in both) exercise the
    # leading-space rule: one '▁' of the first piece is dropped, and only that one.
    import random

    rng = random.Random(7)
    normal = [i for i in range(plain.sp.get_piece_size()) if plain.tok.token_type(i) == 1]
    space = plain.sp.piece_to_id("\u2581")
    seqs = [[space, space], [space, plain.sp.piece_to_id("\u2581x")], [1, space, space], [1, 2, space],
            [plain.sp.piece_to_id("\u2581the"), 2, plain.sp.piece_to_id("\u2581the")]]
    for _ in range(300):
        seqs.append([rng.choice(normal + [1, 2, space]) for _ in range(rng.randint(1, 12))])
    for ids in seqs:
        assert plain.tok.decode(ids) == plain.sp.decode(ids), ids


def test_token_to_piece(plain):
    t = plain.tok
    assert t.token_to_piece(t.find_token("\u2581the")) == b" the"  # no leading-space stripping here
    assert t.token_to_piece(3 + 0xE2) == b"\xe2"
    assert t.token_to_piece(1) == b"" and t.token_to_piece(1, special=True) == b"<s>"
    assert t.decode([1, t.find_token("\u2581the")], skip_special=False) == "<s> the"
    assert t.decode([1, t.find_token("\u2581the"), 2]) == "the"


# -------------------------------------------------------------------------------------------------
# Special tokens
# -------------------------------------------------------------------------------------------------

def test_add_special_bos_eos(plain, tmp_path):
    t, sp = plain.tok, plain.sp
    for s in ["hello world", "", " x", "<s>"]:
        assert t.encode(s, add_special=True) == [1] + sp.encode(s)
        assert t.encode(s, add_special=False) == sp.encode(s)
    # a file that asks for EOS too
    d = tmp_path / "hf"
    save_llama_tokenizer(str(d), plain.model_file)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(add_bos_token=False, add_eos_token=True)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    gguf_vocab.write_vocab_only(str(d), str(tmp_path / "eos.gguf"))
    t2 = ac.Tokenizer(tmp_path / "eos.gguf")
    assert not t2.add_bos and t2.add_eos
    assert t2.encode("hello", add_special=True) == sp.encode("hello") + [2]
    assert t2.encode("", add_special=True) == [2]


def test_parse_special(plain):
    t, sp = plain.tok, plain.sp
    assert t.encode("<s>", add_special=False, parse_special=True) == [1]
    assert t.encode("<s>", add_special=False, parse_special=False) == sp.encode("<s>")
    assert t.encode("<s>hello</s>", add_special=False, parse_special=True) == [1] + sp.encode("hello") + [2]
    assert t.encode("<unk>", add_special=False, parse_special=True) == [0]
    # text after a control token gets the space prefix again (llama.cpp, HF LlamaTokenizer legacy=True)
    assert t.encode("a</s>b <s> c", add_special=True, parse_special=True) == \
        [1] + sp.encode("a") + [2] + sp.encode("b ") + [1] + sp.encode(" c")
    assert t.encode("<s><s>", add_special=True, parse_special=True) == [1, 1, 1]


def test_added_tokens_and_padding(plain, tmp_path):
    """A LLaVA-style directory: <image> and <pad> added after the SentencePiece pieces (special,
    from tokenizer_config.json), a user-defined token from added_tokens.json, and the token list
    padded to the embedding rows."""
    sp = plain.sp
    n_sp = sp.get_piece_size()
    d = tmp_path / "hf"
    save_llama_tokenizer(str(d), plain.model_file)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {
        str(n_sp): {"content": "<image>", "special": True, "lstrip": False, "rstrip": False, "normalized": False},
        str(n_sp + 1): {"content": "<pad>", "special": False, "lstrip": False, "rstrip": False, "normalized": False}}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "added_tokens.json").write_text(json.dumps({"<extra>": n_sp + 2}))
    w_path = tmp_path / "v.gguf"
    import gguf

    w = gguf.GGUFWriter(str(w_path), "llama")
    info = gguf_vocab.add_vocab(w, d, vocab_size=n_sp + 8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert info == {"model": "llama", "pre": "default", "n_vocab": n_sp + 8}
    t = ac.Tokenizer(w_path)
    assert t.n_vocab == n_sp + 8
    assert (t.token_text(n_sp), t.token_type(n_sp)) == ("<image>", 3)
    assert (t.token_text(n_sp + 1), t.token_type(n_sp + 1)) == ("<pad>", 3)  # looks special: control
    assert (t.token_text(n_sp + 2), t.token_type(n_sp + 2)) == ("<extra>", 4)
    assert (t.token_text(n_sp + 7), t.token_type(n_sp + 7)) == (f"[PAD{n_sp + 7}]", 5)
    assert t.token_score(n_sp) == -1000.0
    prompt = "USER: <image>\nWhat is this? ASSISTANT:"
    assert t.encode(prompt, add_special=True, parse_special=True) == \
        [1] + sp.encode("USER: ") + [n_sp] + sp.encode("\nWhat is this? ASSISTANT:")
    assert t.encode(prompt, add_special=True, parse_special=False) == [1] + sp.encode(prompt)
    # the user-defined token is atomic even without parse_special, and no space prefix follows it
    assert t.encode("a<extra>b", add_special=False) == sp.encode("a") + [n_sp + 2] + [sp.piece_to_id("b")]
    # The space prefix encode puts after a control token stays in decoded text (llama.cpp and
    # sentencepiece drop only the first piece's); HF's slow legacy decoder would drop it too.
    ids = t.encode(prompt, add_special=True, parse_special=True)
    assert t.decode(ids) == "USER:  \nWhat is this? ASSISTANT:"
    assert t.decode(ids, skip_special=False) == "<s> USER: <image> \nWhat is this? ASSISTANT:"


def test_eog(plain):
    t = plain.tok
    assert t.is_eog(2) and not t.is_eog(1) and not t.is_eog(300) and not t.is_eog(-1) and not t.is_eog(10 ** 6)
    assert t.eog_ids == [2]
    assert t.is_control(1) and t.is_control(2) and not t.is_control(0)


# -------------------------------------------------------------------------------------------------
# Streaming
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("skip_special", [True, False])
def test_stream_decoder(plain, skip_special):
    t = plain.tok
    strings = ["\u20ac\U0001f999 ok", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family", " leading space",
               "日本語 \u0416\u0416", "a\u2603b"] + corpus(150, seed=9) + fuzz_strings(150, 10)
    saw_held_back = False
    for s in strings:
        ids = t.encode(s, add_special=True, parse_special=False)
        dec = t.stream(skip_special)
        pieces = []
        for i in ids:
            p = dec.push_bytes(i)
            p.decode("utf-8")  # never half a character
            saw_held_back |= dec.pending_bytes > 0
            pieces.append(p)
        pieces.append(dec.flush_bytes())
        assert b"".join(pieces) == t.decode_bytes(ids, skip_special), s
        # the str interface gives the same text
        dec2 = t.stream(skip_special)
        assert "".join(dec2.push(i) for i in ids) + dec2.flush() == t.decode(ids, skip_special)
    assert saw_held_back  # byte tokens of one character really were split across pushes


def test_stream_decoder_holds_partial_characters(plain):
    t = plain.tok
    ids = t.encode("\u20ac", add_special=False)  # ▁ <0xE2> <0x82> <0xAC>
    dec = t.stream()
    assert [dec.push(i) for i in ids] == ["", "", "", "\u20ac"]
    # an unfinished character at the end comes out of flush() as raw bytes
    dec = t.stream()
    assert dec.push_bytes(3 + 0xE2) == b"" and dec.flush_bytes() == b"\xe2"
    # reset() starts a fresh stream: the space prefix is dropped again
    the = t.find_token("\u2581the")
    dec = t.stream()
    assert dec.push(the) == "the" and dec.push(the) == " the"
    dec.reset()
    assert dec.push(the) == "the"


# -------------------------------------------------------------------------------------------------
# Speed (informational)
# -------------------------------------------------------------------------------------------------

def test_encode_speed_100kb(plain, capsys):
    text = "\n".join(corpus(4000, seed=77))[:100_000]
    t0 = time.perf_counter()
    ids = plain.tok.encode(text, add_special=False)
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = plain.sp.encode(text)
    dt_ref = time.perf_counter() - t0
    assert ids == ref
    with capsys.disabled():
        print(f"\n[spm] encode 100 KB ({len(ids)} tokens): {dt * 1e3:.1f} ms (sentencepiece {dt_ref * 1e3:.1f} ms)")
