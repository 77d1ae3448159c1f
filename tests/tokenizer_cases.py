"""Strings for tokenizer parity tests (shared by test_tokenizer_spm.py and test_tokenizer_bpe.py).

- `HARD_CASES`: hand-picked inputs that break tokenizers: whitespace runs and placement, tabs,
  newlines (\\n, \\r\\n, \\r), digit runs of 1-8 digits, contractions in mixed case, literal
  special-token text, unicode from many scripts, combining marks, emoji with ZWJ and skin tones,
  characters that need byte fallback, control characters, non-ASCII whitespace.
- `fuzz_strings(n, seed)`: random strings mixing ASCII, whitespace, apostrophes, digits and code
  points drawn from every assigned Unicode character of this Python's unicodedata.
- `parity_strings(seed)`: >= 1,000 strings: corpus lines, HARD_CASES and fuzz strings.
"""

from __future__ import annotations

import random
import unicodedata
from typing import List

from hf_fixtures import corpus

HARD_CASES: List[str] = [
    # empty and whitespace
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", " \n \n", "\t\t\n",
    "   leading", "trailing   ", "  both  ", "a  b   c    d", "a\tb\t\tc", "\ttab first", "tab last\t",
    "line1\nline2\r\nline3\rline4", "x \n\n y", "  \t \n  z", "a   \n", "a \t \n\n b", "   \n   ",
    "end with newline\n", "end with spaces and newline   \n", "\n\n\nthree newlines", "word\n\n\n\n",
    # non-ASCII whitespace and invisible characters
    "x\u00a0y", "x\u2003y", "x\u3000y", "a\u2028b", "a\u2029b", "a\u0085b", "a\u1680b", "a\u202fb",
    "a\u205fb", "a\u180eb", "a\u200bb", "\ufeffBOM", "a\x1cb\x1dc\x1ed\x1fe", "\u2000\u2001\u200a",
    "x\u00a0\u00a0\ny",
    # digits
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "3.14159", "1,000,000",
    "v1.2.3", "2024-01-02", "a1b22c333d4444", "0x7fff", "1e-10", "\u0663\u0664\u0665", "\u2460\u2461",
    "\u00bd \u00be", "\u216b \u2167", "\uff11\uff12\uff13", "\U0001d7d8\U0001d7d9", "x\u00b2+y\u00b3",
    # contractions, apostrophes
    "IT'S", "it's", "It'S", "We'Ve", "you'LL", "I'd", "I'D", "'s", "'S", "don'T", "they'RE", "'m",
    "'\u017f", "x'\u017fy", "''", "'re'", "o'clock", "rock 'n' roll", "'''", "' s", "'\u1e97",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    # literal special-token text
    "<s>", "</s>", "<unk>", "<s>hello</s>", "a<unk>b", "<<s>>", "<s> </s>", "< s >",
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|><|im_end|>", "text<|endoftext|>more", "<|im_start", "im_end|>", "<think>", "a<think>b</think>",
    # scripts
    "über naïve café", "ß ẞ ss", "Ωmega αβγ", "привет мир", "日本語のテキスト", "中文字符测试", "한국어 텍스트",
    "مرحبا بالعالم", "שלום עולם", "สวัสดีครับ", "नमस्ते दुनिया", "ﬁ ﬂ ﬃ", "e\u0301 a\u0300 n\u0303",
    "A\u030a \u00c5", "Ǆ ǅ ǆ", "İstanbul ı", "Straße", "ΣΑΣ σας", "ʼapostrophe", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U00020000\U0002a6d6",
    "ᚠᚢᚦ", "ꙮ", "Ⅻ", "ǰ", "ŉ",
    # emoji
    "😀", "🚀🚀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "❤️", "🇯🇵🇺🇸", "👩🏾\u200d💻", "🧑\u200d🔬",
    "a😀b", " 😀 ", "😀😀😀😀😀", "🦙 llama", "☕️", "#️⃣", "1️⃣", "\U000e0067\U000e0062",
    # byte fallback material and control characters
    "€", "Ж", "ℵ", "∑∫√", "\x00", "\x01\x02\x03", "\x7f", "a\x00b", "\u0080\u0081\u009f", "\ue000\uf8ff",
    "\U000f0000", "\ufffd", "\uffff", "\u0378",
    # longer and repeated
    "a" * 300, " " * 200, "!" * 100, "ab" * 150, "1" * 60, "\n" * 50, "😀" * 40, "ab " * 100,
    "Hello, World! How're you doing today? I'm fine... thanks!!!",
    "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
    "https://example.com/a?b=c&d=e#frag", '{"key": [1, 2, 3], "nested": {"a": null}}',
    "$100.00 + 5% = ?", "C++ && C# || F#", "email@example.com", "~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./",
    "------======= ......!!!!!!?????? ```````\"\"\"\"",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!??????",
]


def _assigned_code_points() -> List[int]:
    return [c for c in range(0x110000)
            if unicodedata.category(chr(c)) not in ("Cn", "Cs")]


_POOL: List[int] = []


def fuzz_strings(n: int, seed: int) -> List[str]:
    """n random strings (1-40 characters) mixing ASCII letters, digits, whitespace, apostrophes,
    punctuation and arbitrary assigned Unicode characters."""
    global _POOL
    if not _POOL:
        _POOL = _assigned_code_points()
    rng = random.Random(seed)
    simple = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + \
        [" ", " ", " ", "  ", "\t", "\n", "\r\n", "'", "'s", "'LL", ".", ",", "!", "?", "-", "\u00a0"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(simple))
            elif r < 0.55:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 8))))
            else:
                parts.append(chr(rng.choice(_POOL)))
        out.append("".join(parts))
    return out


def parity_strings(seed: int, n_corpus: int = 1000, n_fuzz: int = 300) -> List[str]:
    """Corpus lines (another seed than the training text), HARD_CASES and fuzz strings."""
    return corpus(n_corpus, seed=seed) + HARD_CASES + fuzz_strings(n_fuzz, seed)
