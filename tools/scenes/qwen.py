"""The extended task of the second demo model (Qwen2-VL): sized scenes (`sized`), conversations in
Qwen2-VL's chat format, training groups, and the held-out sets of its four protocols.

Protocols (each a held-out file in tools/scenes/testset_qwen/, its own seeds):
  single       one image, one question (the five types of `questions`), question-aware
  list         one image, "List the shapes in the top row." (the whole answer is scored)
  multi-image  2-3 images; the question names one ("In the second image, ..."), chosen where the
               other images' answers differ
  multi-turn   one image, 2-4 question/answer turns (any type); in the follow-up evaluation the
               cache is compressed after the first turn and every later turn runs over it

Text (Qwen2-VL-Instruct's chat template, default system prompt; k images first in the first user turn):
  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
  (<|vision_start|><|image_pad|><|vision_end|>) x k {q1}<|im_end|>\\n<|im_start|>assistant\\n{a1}<|im_end|>\\n
  <|im_start|>user\\n{q2}<|im_end|>\\n<|im_start|>assistant\\n{a2}<|im_end|>\\n ...
A conversation may open with the generic turn FOLLOWUP_FIRST_TURN / FOLLOWUP_REPLY (the first
model's follow-up protocol: nothing about the question is known when the cache is compressed).

Seeds: training images come from [0, TRAIN_SEED_LIMIT) (dataset.training_seeds' range); validation
items from QVAL_SEED_BASE[protocol] + SLOT * i + j, held-out items from QTEST_SEED_BASE[protocol] +
SLOT * i + j (j < SLOT: the item's images), so no held-out image is a training or validation image
and no two protocols share one. The first model's ranges (VAL 1.5e9, TEST 2.0e9, EXAMPLE 3.0e9,
a few hundred seeds each) are not touched.

The held-out files hold scene descriptions and questions only (no PNGs, to keep the repository
small): `render_sized` regenerates each image, and every scene records the sha256 of its
rendering, which `set_images` checks (a renderer or PIL change fails loudly).

    python -m scenes.qwen --testset tools/scenes/testset_qwen      (from tools/)
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .dataset import TRAIN_SEED_LIMIT, is_training_seed
from .questions import (COUNT_WORDS, KEY_WORDS, MAX_COUNT, QTYPES, Question, check_answer, make_question)
from .sized import (LINE_NAMES, ORDINALS, SizedConfig, SizedScene, check_list_answer, image_sha256, list_question,
                    make_sized_scene, multi_config, name_image, render_sized, unname_image)

QWEN_PROTOCOLS = ["single", "list", "multi-image", "multi-turn"]
ALL_QTYPES = QTYPES + ["list"]
QKEY_WORDS = {**KEY_WORDS, "list": sorted(set(KEY_WORDS["colour"]) | {"no"})}

QVAL_SEED_BASE = {"single": 1_600_000_000, "list": 1_700_000_000, "multi-image": 1_800_000_000,
                  "multi-turn": 1_900_000_000}
QTEST_SEED_BASE = {"single": 2_100_000_000, "list": 2_200_000_000, "multi-image": 2_300_000_000,
                   "multi-turn": 2_400_000_000}
QEXAMPLE_SEED_BASE = 3_100_000_000
SLOT = 4                     # seeds reserved per item (at most 3 images)
QTEST_ITEMS = {"single": 200, "list": 200, "multi-image": 200, "multi-turn": 150}   # single: x 5 questions

SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
FOLLOWUP_FIRST_TURN = "Look at the image."
FOLLOWUP_FIRST_TURN_MULTI = "Look at the images."
FOLLOWUP_REPLY = "I see the shapes."


# -------------------------------------------------------------------------------------------------
# questions
# -------------------------------------------------------------------------------------------------

def draw_question(scene: SizedScene, qtype: str, rng: random.Random, **kw) -> Optional[Question]:
    if qtype == "list":
        return list_question(scene, rng, **kw)
    return make_question(scene, qtype, rng, **kw)


def check_question(scene: SizedScene, q: Question) -> bool:
    """The answer of `q` (as for one image: unnamed) recomputed from the scene description."""
    return check_list_answer(scene, q) if q.type == "list" else check_answer(scene, q)


def answer_for(scene: SizedScene, qtype: str, question: str) -> Optional[str]:
    """The answer the question (unnamed text) has on `scene`, None where it does not apply there."""
    if qtype == "list":
        name = question[len("List the shapes in the "):-1]
        q = list_question(scene, random.Random(0), LINE_NAMES.index(name))
        return q.answer
    if qtype == "colour":
        shape = question[len("What colour is the "):-1]
        objs = scene.with_shape(shape)
        return f"The {shape} is {objs[0].colour}." if len(objs) == 1 else None
    if qtype == "shape":
        from .scene import CELL_NAMES
        cell = question[len("What shape is in the "):-len(" cell?")]
        o = scene.at_cell(CELL_NAMES.index(cell))
        return f"The {cell} cell has a {o.shape}." if o else None
    if qtype == "count":
        colour = question[len("How many "):-len(" shapes are there?")]
        n = scene.count(colour)
        return f"The number of {colour} shapes is {COUNT_WORDS[n]}." if n <= MAX_COUNT else None
    if qtype == "relation":
        body = question[len("Is the "):-1]
        horiz = " left or right of the " in body
        a, b = body.split(" left or right of the " if horiz else " above or below the ")
        A = [o for o in scene.objects if o.name == a]
        B = [o for o in scene.objects if o.name == b]
        if len(A) != 1 or len(B) != 1:
            return None
        A, B = A[0], B[0]
        if horiz:
            return None if A.col == B.col else f"The {a} is {'left' if A.col < B.col else 'right'} of the {b}."
        return None if A.row == B.row else f"The {a} is {'above' if A.row < B.row else 'below'} the {b}."
    if qtype == "exist":
        art, colour, shape = question[len("Is there "):-1].split(" ")
        return f"The answer is {'yes' if scene.has(colour, shape) else 'no'}."
    raise ValueError(qtype)


def turn_record(q: Question, image: int, n_images: int) -> dict:
    """A conversation turn: the question (named when there are several images) and its answer."""
    return {"type": q.type, "question": name_image(q.question, image) if n_images > 1 else q.question,
            "answer": q.answer, "key": q.key, "key_offset": q.key_offset, "image": image, "objects": list(q.objects)}


def check_turn(scenes: Sequence[SizedScene], t: dict) -> bool:
    idx, text = unname_image(t["question"])
    if (idx is None) != (len(scenes) == 1) or (idx is not None and idx != t["image"]):
        return False
    q = Question(t["type"], text, t["answer"], t["key"], t["key_offset"], t["objects"])
    return check_question(scenes[t["image"]], q)


def multi_image_question(scenes: Sequence[SizedScene], image: int, qtype: str, rng: random.Random,
                         tries: int = 12, **kw) -> Optional[Question]:
    """A question about scenes[image] whose answer differs on every other image (or does not apply
    there), so that only the named image answers it; the last try's question if none differs."""
    q = None
    for _ in range(tries):
        q = draw_question(scenes[image], qtype, rng, **kw)
        if q is None:
            return None
        if all(answer_for(s, qtype, q.question) != q.answer for i, s in enumerate(scenes) if i != image):
            return q
    return q


# -------------------------------------------------------------------------------------------------
# chat text and token ids
# -------------------------------------------------------------------------------------------------

def chat_text(n_images: int, turns: Sequence[dict], generic_first: bool = False) -> Tuple[str, dict]:
    """(full text, spans): spans["answers"] = per turn (answer start, end incl. <|im_end|>, key start)
    character offsets, spans["prompt_end"] = end of the first user turn and its assistant header
    (the prefill / compression boundary), spans["generic"] = (start, end) of the generic reply."""
    user1 = VISION * n_images
    s = f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{user1}"
    spans = {"answers": []}
    rest = list(turns)
    if generic_first:
        s += (FOLLOWUP_FIRST_TURN if n_images == 1 else FOLLOWUP_FIRST_TURN_MULTI) + f"{IM_END}\n{IM_START}assistant\n"
        spans["prompt_end"] = len(s)
        g0 = len(s)
        s += FOLLOWUP_REPLY + IM_END
        spans["generic"] = (g0, len(s))
        s += "\n"
        first = True
    else:
        first = False
    for k, t in enumerate(rest):
        if k > 0 or first:
            s += f"{IM_START}user\n"
        s += t["question"] + f"{IM_END}\n{IM_START}assistant\n"
        if "prompt_end" not in spans:
            spans["prompt_end"] = len(s)
        a0 = len(s)
        s += t["answer"] + IM_END
        spans["answers"].append((a0, len(s), a0 + t["key_offset"]))
        s += "\n"
    return s, spans


def messages(n_images: int, turns: Sequence[dict], generic_first: bool = False) -> List[dict]:
    """The same conversation as HF chat messages (apply_chat_template renders chat_text's text)."""
    first = [{"type": "image"} for _ in range(n_images)]
    msgs = []
    qa = [(FOLLOWUP_FIRST_TURN if n_images == 1 else FOLLOWUP_FIRST_TURN_MULTI, FOLLOWUP_REPLY)] if generic_first else []
    qa += [(t["question"], t["answer"]) for t in turns]
    for k, (q, a) in enumerate(qa):
        msgs.append({"role": "user", "content": (first if k == 0 else []) + [{"type": "text", "text": q}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return msgs


def mrope_positions(ids: Sequence[int], grids: Sequence[Tuple[int, int]], image_id: int) -> np.ndarray:
    """HF Qwen2-VL's M-RoPE positions (get_rope_index) for ids with expanded image runs; grids =
    (rows, cols) of merged tokens per image in order. int64 [3, n] (t, h, w)."""
    n = len(ids)
    pos = np.zeros((3, n), np.int64)
    cur, i, k = 0, 0, 0
    while i < n:
        if ids[i] == image_id:
            r, c = grids[k]
            rr, cc = np.divmod(np.arange(r * c), c)
            pos[0, i:i + r * c] = cur
            pos[1, i:i + r * c] = cur + rr
            pos[2, i:i + r * c] = cur + cc
            cur += max(r, c)
            i += r * c
            k += 1
        else:
            pos[:, i] = cur
            cur += 1
            i += 1
    if k != len(grids):
        raise ValueError(f"{k} image runs for {len(grids)} images")
    return pos


class QwenEncoder:
    """Token ids of conversations for the model's HF tokenizer (a fast tokenizer: character offsets
    locate answers and key words; the text is tokenized whole, as the processor does)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.im_end_id = tokenizer.convert_tokens_to_ids(IM_END)

    def key_id(self, word: str) -> int:
        i = self.tok.convert_tokens_to_ids("\u2581" + word)
        if i is None or i == self.tok.unk_token_id:
            raise ValueError(f"key word {word!r} is not a single token")
        return i

    def encode(self, grids: Sequence[Tuple[int, int]], turns: Sequence[dict], generic_first: bool = False) -> dict:
        """ids (image pads expanded to rows*cols each), pos [3, n] (M-RoPE), n_prompt (tokens up to
        the first assistant header incl.: the compression boundary), trunk (tokens up to the last
        <|vision_end|> incl.: shared by every conversation about these images), images [(start, end)],
        targets [(index predicting, target id, kind, turn)] with kind 'key' / 'answer' / 'generic'
        (turn -1 for the generic reply),
        keys [(index predicting, key id, turn)], answers [(first, last) token index per turn]."""
        text, spans = chat_text(len(grids), turns, generic_first)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        raw, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        ids, off2 = [], []
        k = 0
        for t, o in zip(raw, offs):
            if t == self.image_id:
                r, c = grids[k]
                ids += [t] * (r * c)
                off2 += [o] * (r * c)
                k += 1
            else:
                ids.append(t)
                off2.append(o)
        if k != len(grids):
            raise ValueError(f"{k} image pads for {len(grids)} images")
        starts = np.array([o[0] for o in off2])
        ends = np.array([o[1] for o in off2])

        def first_at(c):   # first token ending after character c (covers c, or starts after it)
            return int(np.nonzero(ends > c)[0][0])

        n_prompt = first_at(spans["prompt_end"])
        img_pos = [i for i, t in enumerate(ids) if t == self.image_id]
        ve = self.tok.convert_tokens_to_ids("<|vision_end|>")
        trunk = max(i for i, t in enumerate(ids) if t == ve) + 1
        images, i = [], 0
        for r, c in grids:
            s = img_pos[i]
            images.append((s, s + r * c))
            i += r * c
        targets, keys, answers = [], [], []
        if generic_first:
            g0, g1 = spans["generic"]
            a, b = first_at(g0), first_at(g1 - 1)
            for j in range(a, b + 1):
                targets.append((j - 1, ids[j], "generic", -1))
        for ti, ((a0, a1, kc), t) in enumerate(zip(spans["answers"], turns)):
            a, b = first_at(a0), first_at(a1 - 1)
            if ids[b] != self.im_end_id:
                raise ValueError(f"answer {t['answer']!r} does not end in <|im_end|>")
            kp = first_at(kc)
            kid = self.key_id(t["key"])
            if ids[kp] != kid or starts[kp] > kc:
                raise ValueError(f"the key word {t['key']!r} is not one token in {text!r}")
            answers.append((a, b))
            keys.append((kp - 1, kid, ti))
            for j in range(a, b + 1):
                targets.append((j - 1, ids[j], "key" if j == kp else "answer", ti))
        return {"ids": ids, "pos": mrope_positions(ids, grids, self.image_id), "n_prompt": n_prompt,
                "trunk": trunk, "images": images, "targets": targets, "keys": keys, "answers": answers,
                "text": text}


# -------------------------------------------------------------------------------------------------
# training groups
# -------------------------------------------------------------------------------------------------

def n_images_choice(rng: random.Random, probs=(0.6, 0.25, 0.15)) -> int:
    return rng.choices([1, 2, 3], weights=probs)[0]


def training_group(rng: random.Random, base: SizedConfig, n_questions: int, type_weights: Optional[Sequence[float]],
                   image_probs=(0.6, 0.25, 0.15), follow_up: float = 0.3, turn_probs=(0.4, 0.2, 0.2, 0.2)):
    """A training group: 1-3 images (training seeds drawn from rng) and conversations about them
    (about n_questions questions in all, split into conversations of 1-4 turns; each opens with the
    generic turn with probability follow_up). Returns (scenes, [(turns, generic_first)])."""
    k = n_images_choice(rng, image_probs)
    cfg = multi_config(k, base)
    scenes = []
    for _ in range(k):
        s = rng.randrange(TRAIN_SEED_LIMIT)
        assert is_training_seed(s)
        scenes.append(make_sized_scene(s, cfg))
    convs, left, seen = [], n_questions, set()
    while left > 0:
        n_turns = min(left, rng.choices([1, 2, 3, 4], weights=turn_probs)[0])
        turns = []
        for _ in range(4 * n_turns):
            if len(turns) >= n_turns:
                break
            t = rng.choices(ALL_QTYPES, weights=type_weights)[0] if type_weights else rng.choice(ALL_QTYPES)
            img = rng.randrange(k)
            kw = {"target": rng.randrange(4)} if t == "count" else {}
            q = multi_image_question(scenes, img, t, rng, tries=4, **kw) if k > 1 else \
                draw_question(scenes[img], t, rng, **kw)
            if q is None:
                continue
            rec = turn_record(q, img, k)
            if rec["question"] in seen:
                continue
            seen.add(rec["question"])
            turns.append(rec)
        if not turns:
            break
        convs.append((turns, rng.random() < follow_up))
        left -= len(turns)
    return scenes, convs


# -------------------------------------------------------------------------------------------------
# held-out and validation sets
# -------------------------------------------------------------------------------------------------

def _single_questions(scene: SizedScene, i: int) -> Optional[List[Question]]:
    from .dataset import test_questions
    return test_questions(scene, i)


def heldout_items(protocol: str, n: int, base: int) -> Iterator[Tuple[List[SizedScene], dict]]:
    """The protocol's items (scenes, item) from seeds base + SLOT * slot + j; a slot whose scenes
    cannot give the balanced question is skipped. single: one item per question (5 per scene)."""
    slot, i = 0, 0
    cfg = SizedConfig()
    while i < n:
        s0 = base + SLOT * slot
        slot += 1
        rng = random.Random(s0 ^ 0xC0FFEE)
        if protocol == "single":
            scene = make_sized_scene(s0, cfg)
            qs = _single_questions(scene, i)
            if qs is None:
                continue
            for q in qs:
                yield [scene], {"id": f"{s0}-{q.type}", "protocol": protocol, "images": [s0],
                                "turns": [turn_record(q, 0, 1)], "generic_first": False}
        elif protocol == "list":
            scene = make_sized_scene(s0, cfg)
            q = list_question(scene, rng, line=i % len(LINE_NAMES))
            yield [scene], {"id": f"{s0}-list", "protocol": protocol, "images": [s0],
                            "turns": [turn_record(q, 0, 1)], "generic_first": False}
        elif protocol == "multi-image":
            k = 2 + i % 2
            mc = multi_config(k, cfg)
            scenes = [make_sized_scene(s0 + j, mc) for j in range(k)]
            target = (i // 2) % k
            t = ALL_QTYPES[i % len(ALL_QTYPES)]
            kw = {}
            if t == "count":
                kw = {"target": (i // 6) % 4}
            elif t == "relation":
                kw = {"axis": "horizontal" if (i // 6) % 2 == 0 else "vertical"}
            elif t == "exist":
                kw = {"yes": (i // 6) % 2 == 0}
            elif t == "list":
                kw = {"line": (i // 6) % len(LINE_NAMES)}
            q = multi_image_question(scenes, target, t, rng, **kw)
            if q is None or (t == "count" and q.key != COUNT_WORDS[kw["target"]]):
                continue
            yield scenes, {"id": f"{s0}-multi", "protocol": protocol, "images": [s0 + j for j in range(k)],
                           "turns": [turn_record(q, target, k)], "generic_first": False}
        elif protocol == "multi-turn":
            scene = make_sized_scene(s0, cfg)
            n_turns = 2 + i % 3
            types = rng.sample(ALL_QTYPES, n_turns)
            turns, seen = [], set()
            for t in types:
                kw = {"target": rng.randrange(4)} if t == "count" else {}
                q = draw_question(scene, t, rng, **kw)
                if q is None or q.question in seen:
                    break
                seen.add(q.question)
                turns.append(turn_record(q, 0, 1))
            if len(turns) != n_turns:
                continue
            yield [scene], {"id": f"{s0}-turns", "protocol": protocol, "images": [s0], "turns": turns,
                            "generic_first": False}
        else:
            raise ValueError(f"unknown protocol {protocol!r} (valid: {QWEN_PROTOCOLS})")
        i += 1


def write_qwen_set(out_dir: str, bases: Dict[str, int] = QTEST_SEED_BASE, sizes: Dict[str, int] = QTEST_ITEMS) -> dict:
    """scenes.jsonl (every scene once, with the sha256 of its rendering) and one jsonl per protocol."""
    os.makedirs(out_dir, exist_ok=True)
    all_scenes: Dict[int, SizedScene] = {}
    counts = {}
    for p in QWEN_PROTOCOLS:
        n = 0
        with open(os.path.join(out_dir, f"{p}.jsonl"), "w") as f:
            for scenes, item in heldout_items(p, sizes[p], bases[p]):
                for t in item["turns"]:
                    assert check_turn(scenes, t), (item, t)
                for s in scenes:
                    assert not is_training_seed(s.seed)
                    all_scenes[s.seed] = s
                f.write(json.dumps(item) + "\n")
                n += 1
        counts[p] = n
    with open(os.path.join(out_dir, "scenes.jsonl"), "w") as f:
        for seed in sorted(all_scenes):
            s = all_scenes[seed]
            f.write(json.dumps({**s.to_dict(), "sha256": image_sha256(render_sized(s)[0])}) + "\n")
    counts["scenes"] = len(all_scenes)
    return counts


def load_qwen_set(path: str, protocol: str, limit: int = 0) -> Tuple[List[dict], Dict[int, SizedScene]]:
    """(items of one protocol, {seed: SizedScene} of all the set's scenes)."""
    with open(os.path.join(path, f"{protocol}.jsonl")) as f:
        items = [json.loads(l) for l in f]
    if limit:
        items = items[:limit]
    return items, load_qwen_scenes(path)


def load_qwen_scenes(path: str) -> Dict[int, SizedScene]:
    scenes = {}
    with open(os.path.join(path, "scenes.jsonl")) as f:
        for l in f:
            d = json.loads(l)
            d.pop("sha256", None)
            scenes[d["seed"]] = SizedScene.from_dict(d)
    return scenes


def scene_digests(path: str) -> Dict[int, str]:
    with open(os.path.join(path, "scenes.jsonl")) as f:
        return {d["seed"]: d["sha256"] for d in map(json.loads, f)}


def set_images(path: str, seeds: Optional[Sequence[int]] = None, out_dir: Optional[str] = None) -> Dict[int, np.ndarray]:
    """The renderings of a set's scenes (all, or `seeds`), each checked against its recorded sha256;
    with out_dir also written there as {seed}.png (for tools that read image files)."""
    scenes = load_qwen_scenes(path)
    digests = scene_digests(path)
    out = {}
    for seed in (seeds if seeds is not None else sorted(scenes)):
        img = render_sized(scenes[seed])[0]
        if image_sha256(img) != digests[seed]:
            raise RuntimeError(f"scene {seed} of {path} renders differently from when the set was written "
                               "(renderer or PIL changed)")
        out[seed] = img
        if out_dir:
            from PIL import Image
            os.makedirs(out_dir, exist_ok=True)
            Image.fromarray(img).save(os.path.join(out_dir, f"{seed}.png"))
    return out


def qwen_corpus_lines() -> List[str]:
    """Text for the second model's SentencePiece model: the first model's templates plus list
    answers, named images and the chat scaffolding."""
    import itertools

    from .protocols import corpus_lines
    from .scene import COLOUR_NAMES, SHAPES

    lines = [l for l in corpus_lines() if not l.startswith("USER:")]
    names = [f"{c} {s}" for c, s in itertools.product(COLOUR_NAMES, SHAPES)]
    rng = random.Random(0)
    from .sized import list_phrase
    for ln in LINE_NAMES:
        lines.append(f"List the shapes in the {ln}.")
        lines.append(f"The {ln} has no shapes.")
        for n in (1, 2, 3):
            for _ in range(6):
                lines.append(f"The {ln} has {list_phrase(rng.sample(names, n))}.")
    for o in ORDINALS:
        for l in ["what colour is the star?", "is there a red circle?", "how many blue shapes are there?",
                  "list the shapes in the top row.", "what shape is in the centre cell?",
                  "is the red star left or right of the blue circle?"]:
            lines.append(f"In the {o} image, {l}")
    lines += [f"system {SYSTEM_PROMPT}", "user", "assistant"] * 20
    lines += [FOLLOWUP_FIRST_TURN, FOLLOWUP_FIRST_TURN_MULTI, FOLLOWUP_REPLY] * 20
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testset", default=None, help="directory for the held-out sets")
    a = ap.parse_args(argv)
    if a.testset:
        print(a.testset, write_qwen_set(a.testset))


if __name__ == "__main__":
    main()
