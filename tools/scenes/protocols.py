"""The two conversation protocols, as text (LLaVA-1.5's "USER: <image>\\n... ASSISTANT:" template,
the runtime's default) and as token ids for a tokenizer.

question-aware: the prompt (prefilled, then compressed) holds the image and the question; the
    answer is generated (teacher-forced) over the compacted cache.
        prompt:        "USER: <image>\\n{question} ASSISTANT:"
        continuation:  " {answer}</s>"
follow-up: the prompt holds the image and a generic first turn; after compression the fixed
    assistant reply and the question come as a second turn.
        prompt:        "USER: <image>\\nLook at the image. ASSISTANT:"
        continuation:  " I see the shapes.</s>USER: {question} ASSISTANT: {answer}</s>"

`encode()` tokenizes the whole conversation at once (so ids equal a single tokenization of the
full text) and returns where the prompt ends (`n_prompt`: the prefill/compression boundary), where
the scored answer starts, and the key word's token position.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

IMAGE_TOKEN = "<image>"
EOS_TEXT = "</s>"
FOLLOWUP_FIRST_TURN = "Look at the image."
FOLLOWUP_REPLY = "I see the shapes."
PROTOCOLS = ["question-aware", "follow-up"]


def user_turn(text: str, image: bool) -> str:
    return "USER: " + (IMAGE_TOKEN + "\n" if image else "") + text + " ASSISTANT:"


def prompt_text(question: str, protocol: str) -> str:
    """The prompt (what is prefilled before compression); the runtime's `build_prompt(p, 1)` with
    p = the question (question-aware) or FOLLOWUP_FIRST_TURN (follow-up) makes the same text."""
    if protocol == "question-aware":
        return user_turn(question, True)
    if protocol == "follow-up":
        return user_turn(FOLLOWUP_FIRST_TURN, True)
    raise ValueError(f"unknown protocol {protocol!r} (valid: {PROTOCOLS})")


def runtime_prompt(question: str, protocol: str) -> str:
    """The `prompt` argument of the runtime's generate()/build_prompt() for this protocol."""
    return question if protocol == "question-aware" else FOLLOWUP_FIRST_TURN


def continuation_text(question: str, answer: str, protocol: str) -> str:
    if protocol == "question-aware":
        return " " + answer + EOS_TEXT
    if protocol == "follow-up":
        return " " + FOLLOWUP_REPLY + EOS_TEXT + user_turn(question, False) + " " + answer + EOS_TEXT
    raise ValueError(f"unknown protocol {protocol!r} (valid: {PROTOCOLS})")


def conversation(question: str, answer: str, protocol: str) -> Tuple[str, str]:
    """(prompt, continuation): the full text is their concatenation."""
    return prompt_text(question, protocol), continuation_text(question, answer, protocol)


class Encoder:
    """Token ids of conversations for a HF tokenizer with an `<image>` token (cached by text)."""

    def __init__(self, tokenizer, n_image_tokens: int):
        self.tok = tokenizer
        self.n_image = n_image_tokens
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self._cache: Dict[str, List[int]] = {}

    def ids(self, text: str) -> List[int]:
        """BOS + tokens of `text` (one `<image>` id per marker, not expanded)."""
        r = self._cache.get(text)
        if r is None:
            r = list(self.tok(text, add_special_tokens=True)["input_ids"])
            if len(self._cache) < 200000:
                self._cache[text] = r
        return r

    def key_id(self, word: str) -> int:
        i = self.tok.convert_tokens_to_ids("\u2581" + word)
        if i is None or i == self.tok.unk_token_id:
            raise ValueError(f"key word {word!r} is not a single token")
        return i

    def _prefix_len(self, full: List[int], text: str) -> int:
        p = self.ids(text)
        if full[:len(p)] != p:
            raise ValueError(f"tokenization of {text!r} is not a prefix of the conversation's")
        return len(p)

    def encode(self, question: str, answer: str, key: str, key_offset: int, protocol: str) -> dict:
        """input_ids (image run expanded to n_image_tokens ids), n_prompt, image_start, answer_start
        (first answer token; loss from here to the end), key_pos (index of the key token) and key_id,
        and for follow-up turn1_end (end of the fixed first reply, incl. its </s>)."""
        prompt, cont = conversation(question, answer, protocol)
        full_text = prompt + cont
        full = self.ids(full_text)
        n_prompt = self._prefix_len(full, prompt)
        ans_text = full_text[:len(full_text) - len(answer + EOS_TEXT)].rstrip(" ")
        answer_start = self._prefix_len(full, ans_text)
        lead = full_text[:len(full_text) - len(answer + EOS_TEXT) + key_offset].rstrip(" ")
        key_pos = self._prefix_len(full, lead)
        kid = self.key_id(key)
        if full[key_pos] != kid:
            raise ValueError(f"the key word {key!r} is not one token after its lead-in in {full_text!r}")
        turn1_end = None
        if protocol == "follow-up":
            turn1_end = self._prefix_len(full, prompt + " " + FOLLOWUP_REPLY + EOS_TEXT)
        img = full.index(self.image_id)
        if full.count(self.image_id) != 1:
            raise ValueError("expected one image marker")
        shift = self.n_image - 1
        ids = full[:img] + [self.image_id] * self.n_image + full[img + 1:]
        out = {"input_ids": ids, "n_prompt": n_prompt + shift, "image_start": img,
               "image_end": img + self.n_image, "answer_start": answer_start + shift,
               "key_pos": key_pos + shift, "key_id": kid}
        if turn1_end is not None:
            out["turn1_end"] = turn1_end + shift
        return out


def corpus_lines() -> List[str]:
    """Text for training the task's SentencePiece model: every template with every word."""
    import itertools

    from .questions import COUNT_WORDS, article
    from .scene import CELL_NAMES, COLOUR_NAMES, SHAPES

    lines = []
    names = [f"{c} {s}" for c, s in itertools.product(COLOUR_NAMES, SHAPES)]
    for s in SHAPES:
        for c in COLOUR_NAMES:
            lines += [f"What colour is the {s}?", f"The {s} is {c}.", f"Is there {article(c)} {c} {s}?"]
    for cell in CELL_NAMES:
        for s in SHAPES:
            lines += [f"What shape is in the {cell} cell?", f"The {cell} cell has a {s}."]
    for c in COLOUR_NAMES:
        for w in COUNT_WORDS:
            lines += [f"How many {c} shapes are there?", f"The number of {c} shapes is {w}."]
    for i, a in enumerate(names):
        for b in names[i % 7::7]:
            lines += [f"Is the {a} left or right of the {b}?", f"The {a} is left of the {b}.",
                      f"The {a} is right of the {b}.", f"Is the {a} above or below the {b}?",
                      f"The {a} is above the {b}.", f"The {a} is below the {b}."]
    lines += ["The answer is yes.", "The answer is no."] * 20
    lines += [f"USER: {FOLLOWUP_FIRST_TURN} ASSISTANT: {FOLLOWUP_REPLY}"] * 50
    lines += [f"USER: {l} ASSISTANT:" for l in lines[:200]]
    return lines
