"""Byte-level BPE ("gpt2") tokenizer parity: aircache_cpp.Tokenizer over a GGUF written by
tools/gguf_vocab.py against HF `tokenizers` on the same tokenizer.json, trained here in three
flavours: ByteLevel(use_regex=True) -> pre `gpt-2`; Split(Llama 3 regex) + ByteLevel -> `llama-bpe`;
Split(Qwen2 regex) + ByteLevel -> `qwen2`; Digits(individual_digits=True) + ByteLevel(use_regex=True)
(SmolLM2's, SmolVLM's text) -> `smollm`."""

from __future__ import annotations

import json
import os
import random
import sys
import time
import unicodedata

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import aircache_cpp as ac
from aircache_cpp import _core
from hf_fixtures import corpus
from tokenizer_cases import HARD_CASES, fuzz_strings, parity_strings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gguf_vocab  # noqa: E402

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PATTERNS = {"gpt-2": GPT2_PATTERN, "llama-bpe": gguf_vocab.LLAMA3_PATTERN, "qwen2": gguf_vocab.QWEN2_PATTERN}
FLAVOURS = ["gpt-2", "llama-bpe", "qwen2", "smollm"]
SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>"]  # the last three: Qwen-VL's image markup
USER_TOKEN = "<think>"  # an added, non-special token: always matched, typed user-defined
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _train_text() -> list:
    rng = random.Random(3)
    lines = corpus(6000, seed=1)
    # Contractions, digit runs and chat markup in the training text give the merges something to
    # say about them.
    extra = ["IT'S it's We'Ve you'LL I'd don'T they'RE", "12 123 1234 12345 3.14 2024", "\n\n  \n\t\n"]
    return lines + [rng.choice(extra) for _ in range(500)]


def build(flavour: str, out_dir: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if flavour == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif flavour == "smollm":  # SmolLM2's tokenizer.json
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PATTERNS[flavour]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_train_text(), trainer=trainer)
    tok.add_tokens([AddedToken(USER_TOKEN, special=False)])
    if flavour == "llama-bpe":
        # Llama 3 adds <|begin_of_text|> with its post-processor and sets ignore_merges.
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    if flavour == "llama-bpe":
        j = json.load(open(path, encoding="utf-8"))
        j["model"]["ignore_merges"] = True
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        tok = Tokenizer.from_file(path)
    bos = "<|begin_of_text|>" if flavour == "llama-bpe" else "<|endoftext|>"
    cfg = {"bos_token": bos, "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return tok


class Bpe:
    def __init__(self, flavour, ref, hf_dir, path):
        self.flavour, self.ref, self.hf_dir, self.path = flavour, ref, hf_dir, path
        self.tok = ac.Tokenizer(path)


@pytest.fixture(scope="module", params=FLAVOURS)
def bpe(request, tmp_path_factory) -> Bpe:
    d = tmp_path_factory.mktemp("bpe_" + request.param)
    ref = build(request.param, str(d / "hf"))
    info = gguf_vocab.write_vocab_only(str(d / "hf"), str(d / "vocab.gguf"))
    assert info["pre"] == request.param
    return Bpe(request.param, ref, str(d / "hf"), str(d / "vocab.gguf"))


def special_strings(seed: int) -> list:
    """Chat-formatted corpus lines and special-token text in odd places."""
    rng = random.Random(seed)
    lines = corpus(150, seed=seed)
    out = []
    for i, s in enumerate(lines):
        k = i % 4
        if k == 0:
            out.append(f"<|im_start|>user\n{s}<|im_end|>\n<|im_start|>assistant\n")
        elif k == 3:  # a Qwen-VL user turn with an image (the pads as HF's processor expands them)
            out.append(f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * (i % 5 + 1)}<|vision_end|>{s}<|im_end|>\n")
        elif k == 1:
            out.append(f"<|begin_of_text|>{s}<|eot_id|>")
        else:
            j = rng.randint(0, len(s))
            out.append(s[:j] + rng.choice(SPECIALS + [USER_TOKEN]) + s[j:])
    return out + ["<|im_start|><|im_end|>", "<|endoftext|><|endoftext|>", "x<|im_end|>y", " <|im_end|> ",
                  "<|im_start", "<|im_start|", "<think><think>", "a<think>b", "<|endoftext|>\n\n"]


def _mismatches(bpe, strings, parse_special):
    bad = []
    for s in strings:
        ours = bpe.tok.encode(s, add_special=False, parse_special=parse_special)
        ref = bpe.ref.encode(s, add_special_tokens=False).ids
        if ours != ref:
            bad.append((s, ours, ref))
    return bad


# -------------------------------------------------------------------------------------------------
# The converted file
# -------------------------------------------------------------------------------------------------

def test_vocab_metadata(bpe):
    md = ac.gguf_info(bpe.path).metadata
    vocab = bpe.ref.get_vocab(with_added_tokens=True)
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == bpe.flavour
    assert len(md["tokenizer.ggml.tokens"]) == len(vocab) == bpe.tok.n_vocab
    assert all(md["tokenizer.ggml.tokens"][i] == t for t, i in vocab.items())
    merges = json.load(open(os.path.join(bpe.hf_dir, "tokenizer.json"), encoding="utf-8"))["model"]["merges"]
    assert md["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    types = md["tokenizer.ggml.token_type"]
    for s in SPECIALS:
        assert types[vocab[s]] == 3, s
    assert types[vocab[USER_TOKEN]] == 4
    assert sum(1 for t in types if t == 1) == len(vocab) - len(SPECIALS) - 1
    assert md["tokenizer.chat_template"] == CHAT_TEMPLATE
    t = bpe.tok
    assert t.model == "gpt2" and t.pre == bpe.flavour
    assert t.eos == vocab["<|endoftext|>"]
    if bpe.flavour == "llama-bpe":  # from the TemplateProcessing post-processor
        assert t.bos == vocab["<|begin_of_text|>"] and t.add_bos and md["tokenizer.ggml.add_bos_token"] is True
    else:
        assert t.bos == vocab["<|endoftext|>"] and not t.add_bos and md["tokenizer.ggml.add_bos_token"] is False
    assert not t.add_eos and not t.add_space_prefix
    for s in ["<|endoftext|>", "<|im_end|>", "<|eot_id|>"]:
        assert t.is_eog(vocab[s]), s
    assert not t.is_eog(vocab["<|im_start|>"]) and not t.is_eog(vocab["<|begin_of_text|>"])


# -------------------------------------------------------------------------------------------------
# Encoding parity
# -------------------------------------------------------------------------------------------------

def test_encode_matches_tokenizers(bpe):
    strings = parity_strings(seed=404) + special_strings(405)
    assert len(strings) >= 1000
    bad = _mismatches(bpe, strings, parse_special=True)
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {bad[:3]}"


def test_encode_without_parse_special(bpe):
    # HF's encode_special_tokens=True leaves special-token text as text; the added non-special
    # token stays atomic on both sides.
    bpe.ref.encode_special_tokens = True
    try:
        strings = special_strings(406) + HARD_CASES
        bad = _mismatches(bpe, strings, parse_special=False)
    finally:
        bpe.ref.encode_special_tokens = False
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {bad[:3]}"
    ids = bpe.tok.encode("<|im_end|>", add_special=False, parse_special=False)
    assert len(ids) > 1 and bpe.tok.find_token("<|im_end|>") not in ids
    assert bpe.tok.encode("a<think>b", add_special=False, parse_special=False)[1] == bpe.tok.find_token(USER_TOKEN)


def test_add_special(bpe):
    for s in ["hello world", "", "IT'S 123", "<|im_start|>x"]:
        ours = bpe.tok.encode(s, add_special=True, parse_special=True)
        assert ours == bpe.ref.encode(s, add_special_tokens=True).ids, s
    if bpe.flavour == "llama-bpe":
        assert bpe.tok.encode("hi", add_special=True)[0] == bpe.tok.bos


def test_targeted_pretokenizer_cases(bpe):
    """Inputs aimed at each alternative of the regexes, by flavour."""
    digits = ["".join(str((i + k) % 10) for k in range(n)) for n in range(1, 9) for i in range(3)]
    cases = digits + [
        "IT'S", "iT's", "WE'LL", "they'VE", "I'M", "you'D", "'sS", "'ſ", "x'ſx", "'llama", "'lL", "'Re", "'ve'",
        "a  \n", "a \t \n\n b", "  \n\n  x", " \r\n \r\n", "x  ", "x \t", "x\u00a0 y", "\u3000\u3000x",
        "!!!\n\n", " !!\r\n", " ?x", "a...b", "$5 $55 $555", "1a 1 a a1", "\u00bd\u2155", "x\u0301y",
        "\U0001f600\U0001f600 x", "\u5927\u5bb6\u597d", " \u5927", "x\n\ny", "\ty", " \ty", "  y", "   ",
        # spaces and contractions against digits (smollm cuts the text at every digit)
        "a  1", " 1 ", "x   12 y", "\n1\n\n2", "'1'", "it's2", "1's", "a\u00a0\u0661b", "\u00bd x\u2155",
    ]
    bad = _mismatches(bpe, cases, parse_special=True)
    assert not bad, bad[:3]


# -------------------------------------------------------------------------------------------------
# Pre-tokenizer regexes, checked directly against HF's regex engine
# -------------------------------------------------------------------------------------------------

def ref_pretokenizer(pre: str):
    """HF's pre-tokenizer splits for a flavour, without the byte mapping: the Split with its regex,
    or (smollm) Digits(individual_digits=True) and then GPT-2's regex, which is ByteLevel's."""
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated")])
    return pre_tokenizers.Split(Regex(PATTERNS[pre]), behavior="isolated")


def test_smollm_splits_every_digit():
    # HF: Digits gives "a  ", "1", "2", "x"; GPT-2's regex then splits "a  " (its spaces end the piece)
    assert _core._pretokenize("smollm", "a  12x") == ["a", "  ", "1", "2", "x"]
    assert _core._pretokenize("gpt-2", "a  12x") == ["a", " ", " 12", "x"]


def _our_assigned_code_points():
    """Every code point assigned in this Python's unicodedata whose category our tables share
    (our tables may be of another Unicode version)."""
    out = []
    for c in range(0x110000):
        cat = unicodedata.category(chr(c))
        if cat not in ("Cn", "Cs") and _core._general_category(c) == cat:
            out.append(c)
    return out


def test_unicode_tables_match_unicodedata():
    # The generated tables agree with Python's unicodedata on every code point both know.
    ours_newer = _core._unicode_version().split(".") >= unicodedata.unidata_version.split(".")
    bad = []
    for c in range(0x110000):
        py, ours = unicodedata.category(chr(c)), _core._general_category(c)
        if (py != "Cn" if ours_newer else ours != "Cn") and py != ours:
            bad.append((hex(c), py, ours))
    assert not bad, bad[:10]
    assert _core._general_category(0x41) == "Lu" and _core._general_category(0x10FFFF + 1) == "Cn"


@pytest.mark.parametrize("pre", FLAVOURS)
def test_pretokenizer_every_code_point(pre):
    # Every assigned code point in contexts where its class (letter, number, space, other)
    # decides the split.
    cps = _our_assigned_code_points()
    assert len(cps) > 100_000
    text = "".join(f"x{chr(c)}1{chr(c)} {chr(c)}'{chr(c)}\n" for c in cps)
    ref = [p for p, _ in ref_pretokenizer(pre).pre_tokenize_str(text)]
    ours = _core._pretokenize(pre, text)
    if ours != ref:
        i = next(k for k, (a, b) in enumerate(zip(ours, ref)) if a != b)
        pytest.fail(f"{pre}: first difference at piece {i}: ours {ours[i - 2:i + 3]!r}, HF {ref[i - 2:i + 3]!r}")


@pytest.mark.parametrize("pre", FLAVOURS)
def test_pretokenizer_fuzz(pre):
    split = ref_pretokenizer(pre)
    rng = random.Random(11)
    alphabet = list(" \t\n\r\u00a0\u3000'sStTmMdDlLrReEvV1234567890aZ\u00e9\u4e2d\u0661!?.-_\u0301\U0001f600\u017f")
    strings = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    for s in strings:
        ref = [p for p, _ in split.pre_tokenize_str(s)]
        assert _core._pretokenize(pre, s) == ref, repr(s)


# -------------------------------------------------------------------------------------------------
# Decoding and streaming
# -------------------------------------------------------------------------------------------------

def test_decode_inverts_encode_and_matches_tokenizers(bpe):
    strings = parity_strings(seed=505, n_corpus=600) + special_strings(506)
    bad = []
    for s in strings:
        ids = bpe.tok.encode(s, add_special=False, parse_special=True)
        if bpe.tok.decode(ids, skip_special=False) != s or bpe.tok.decode_bytes(ids, skip_special=False) != s.encode():
            bad.append(("roundtrip", s))
        if bpe.tok.decode(ids, skip_special=True) != bpe.ref.decode(ids, skip_special_tokens=True):
            bad.append(("hf skip_special", s))
        if bpe.tok.decode(ids, skip_special=False) != bpe.ref.decode(ids, skip_special_tokens=False):
            bad.append(("hf", s))
    assert not bad, f"{len(bad)} failures, e.g. {bad[:3]!r}"


def test_invalid_utf8_bytes_roundtrip(bpe):
    for raw in [b"a\xffb", b"\xc3(", b"x \xe2\x82", b"\x80\x80 x", b"ok \xed\xa0\x80", b"\xf4\x90\x80\x80'S"]:
        ids = bpe.tok.encode(raw, add_special=False)
        assert bpe.tok.decode_bytes(ids) == raw, raw
        dec = bpe.tok.stream()
        assert b"".join(dec.push_bytes(i) for i in ids) + dec.flush_bytes() == raw


def test_stream_decoder(bpe):
    t = bpe.tok
    strings = ["\U0001f468\u200d\U0001f469\u200d\U0001f467 family \U0001f999", "日本語のテキスト", "<|im_start|>ok"] + \
        special_strings(606)[:100] + fuzz_strings(200, 607)
    held = False
    for s in strings:
        ids = t.encode(s, add_special=True, parse_special=True)
        for skip in (True, False):
            dec = t.stream(skip)
            pieces = []
            for i in ids:
                p = dec.push_bytes(i)
                p.decode("utf-8")  # never a partial character
                held |= dec.pending_bytes > 0
                pieces.append(p)
            pieces.append(dec.flush_bytes())
            assert b"".join(pieces) == t.decode_bytes(ids, skip), s
    assert held  # some characters really were split across tokens


def test_token_to_piece(bpe):
    t = bpe.tok
    space_the = t.find_token("\u0120the")  # "Ġthe" = " the" in the byte-level alphabet
    assert space_the >= 0 and t.token_to_piece(space_the) == b" the"
    nl = t.find_token("\u010a")  # 'Ċ' = "\n"
    assert t.token_to_piece(nl) == b"\n"
    im_end = t.find_token("<|im_end|>")
    assert t.token_to_piece(im_end) == b"" and t.token_to_piece(im_end, special=True) == b"<|im_end|>"
    assert t.token_to_piece(t.find_token(USER_TOKEN)) == USER_TOKEN.encode()
    # each of the 256 byte-alphabet tokens decodes to its byte
    for b, ch in bytes_to_unicode().items():
        i = t.find_token(ch)
        assert i >= 0 and t.token_to_piece(i) == bytes([b]), b


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> character alphabet (an independent statement of it)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


# -------------------------------------------------------------------------------------------------
# Speed (informational)
# -------------------------------------------------------------------------------------------------

def test_encode_speed_100kb(bpe, capsys):
    text = "\n".join(corpus(4000, seed=77))[:100_000]
    t0 = time.perf_counter()
    ids = bpe.tok.encode(text, add_special=False, parse_special=True)
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = bpe.ref.encode(text, add_special_tokens=False).ids
    dt_ref = time.perf_counter() - t0
    assert ids == ref
    with capsys.disabled():
        print(f"\n[bpe {bpe.flavour}] encode 100 KB ({len(ids)} tokens): {dt * 1e3:.1f} ms "
              f"(HF tokenizers {dt_ref * 1e3:.1f} ms)")
