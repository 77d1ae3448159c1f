"""Questions about a scene, with short-sentence answers whose key word follows a lead-in.

Compression happens after the prompt's prefill, so the first answer token's logits come from the
full cache; every answer therefore starts with a lead-in that does not depend on the answer
("The star is", "The answer is", ...) and the key word (the one that does) comes after it, where
the logits are computed over the compacted cache.

Types (`QTYPES`):
  colour   "What colour is the star?"                         "The star is red."                   key: red
  shape    "What shape is in the top left cell?"              "The top left cell has a star."      key: star
  count    "How many red shapes are there?"                   "The number of red shapes is two."   key: two
  relation "Is the red star left or right of the blue circle?" "The red star is left of the blue circle." key: left
           "Is the red star above or below the blue circle?"   "The red star is above the blue circle."  key: above
  exist    "Is there a green triangle?"                       "The answer is yes."                 key: yes
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from .scene import CELL_NAMES, COLOUR_NAMES, SHAPES, Scene

QTYPES = ["colour", "shape", "count", "relation", "exist"]
COUNT_WORDS = ["zero", "one", "two", "three"]
MAX_COUNT = len(COUNT_WORDS) - 1
RELATION_WORDS = ["left", "right", "above", "below"]
# every answer's possible key words, per type (the classes the model chooses from)
KEY_WORDS = {"colour": list(COLOUR_NAMES), "shape": list(SHAPES), "count": list(COUNT_WORDS),
             "relation": list(RELATION_WORDS), "exist": ["yes", "no"]}


@dataclass
class Question:
    type: str
    question: str
    answer: str
    key: str                 # the key word
    key_offset: int          # character offset of the key word in `answer`
    objects: List[int] = field(default_factory=list)   # indices of the objects the answer depends on

    @property
    def lead_in(self) -> str:
        return self.answer[:self.key_offset]

    def to_dict(self) -> dict:
        return asdict(self)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _q(qtype: str, question: str, lead_in: str, key: str, tail: str, objects: List[int]) -> Question:
    return Question(qtype, question, lead_in + key + tail, key, len(lead_in), objects)


def colour_question(scene: Scene, rng: random.Random) -> Optional[Question]:
    unique = [s for s in SHAPES if len(scene.with_shape(s)) == 1]
    if not unique:
        return None
    shape = rng.choice(unique)
    o = scene.with_shape(shape)[0]
    return _q("colour", f"What colour is the {shape}?", f"The {shape} is ", o.colour, ".",
              [scene.objects.index(o)])


def shape_question(scene: Scene, rng: random.Random) -> Optional[Question]:
    k = rng.randrange(len(scene.objects))
    o = scene.objects[k]
    cell = CELL_NAMES[o.cell]
    return _q("shape", f"What shape is in the {cell} cell?", f"The {cell} cell has a ", o.shape, ".", [k])


def count_question(scene: Scene, rng: random.Random, target: Optional[int] = None) -> Optional[Question]:
    by_count = {}
    for c in COLOUR_NAMES:
        n = scene.count(c)
        if n <= MAX_COUNT:
            by_count.setdefault(n, []).append(c)
    if target is None or target not in by_count:
        target = rng.choice(sorted(by_count))
    colour = rng.choice(by_count[target])
    objs = [k for k, o in enumerate(scene.objects) if o.colour == colour]
    return _q("count", f"How many {colour} shapes are there?", f"The number of {colour} shapes is ",
              COUNT_WORDS[target], ".", objs)


def relation_question(scene: Scene, rng: random.Random, axis: Optional[str] = None) -> Optional[Question]:
    axes = [axis] if axis else rng.sample(["horizontal", "vertical"], 2)
    objs = scene.objects
    for ax in axes:
        if ax == "horizontal":
            pairs = [(a, b) for a in range(len(objs)) for b in range(len(objs)) if objs[a].col != objs[b].col]
        else:
            pairs = [(a, b) for a in range(len(objs)) for b in range(len(objs)) if objs[a].row != objs[b].row]
        if not pairs:
            continue
        a, b = rng.choice(pairs)
        A, B = objs[a], objs[b]
        if ax == "horizontal":
            rel = "left" if A.col < B.col else "right"
            q = f"Is the {A.name} left or right of the {B.name}?"
        else:
            rel = "above" if A.row < B.row else "below"
            q = f"Is the {A.name} above or below the {B.name}?"
        tail = f" of the {B.name}." if ax == "horizontal" else f" the {B.name}."
        return _q("relation", q, f"The {A.name} is ", rel, tail, [a, b])
    return None


def exist_question(scene: Scene, rng: random.Random, yes: Optional[bool] = None) -> Optional[Question]:
    if yes is None:
        yes = rng.random() < 0.5
    if yes:
        k = rng.randrange(len(scene.objects))
        colour, shape, objs = scene.objects[k].colour, scene.objects[k].shape, [k]
    else:
        absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if not scene.has(c, s)]
        present_c = {o.colour for o in scene.objects}
        present_s = {o.shape for o in scene.objects}
        near = [(c, s) for c, s in absent if c in present_c or s in present_s]   # a near miss
        colour, shape = rng.choice(near if near and rng.random() < 0.85 else absent)
        objs = [k for k, o in enumerate(scene.objects) if o.colour == colour or o.shape == shape]
    return _q("exist", f"Is there {article(colour)} {colour} {shape}?", "The answer is ", "yes" if yes else "no", ".",
              objs)


MAKERS = {"colour": colour_question, "shape": shape_question, "count": count_question,
          "relation": relation_question, "exist": exist_question}


def make_question(scene: Scene, qtype: str, rng: random.Random, **kw) -> Optional[Question]:
    return MAKERS[qtype](scene, rng, **kw)


def check_answer(scene: Scene, q: Question) -> bool:
    """Recompute the answer of `q` from the scene description alone (parsing the question)."""
    t, text = q.type, q.question
    if t == "colour":
        shape = text[len("What colour is the "):-1]
        objs = scene.with_shape(shape)
        return len(objs) == 1 and q.key == objs[0].colour and q.answer == f"The {shape} is {q.key}."
    if t == "shape":
        cell = text[len("What shape is in the "):-len(" cell?")]
        o = scene.at_cell(CELL_NAMES.index(cell))
        return o is not None and q.key == o.shape and q.answer == f"The {cell} cell has a {q.key}."
    if t == "count":
        colour = text[len("How many "):-len(" shapes are there?")]
        n = scene.count(colour)
        return n <= MAX_COUNT and q.key == COUNT_WORDS[n] and q.answer == f"The number of {colour} shapes is {q.key}."
    if t == "relation":
        body = text[len("Is the "):-1]
        horiz = " left or right of the " in body
        a, b = body.split(" left or right of the " if horiz else " above or below the ")
        A = [o for o in scene.objects if o.name == a]
        B = [o for o in scene.objects if o.name == b]
        if len(A) != 1 or len(B) != 1:
            return False
        A, B = A[0], B[0]
        if horiz:
            if A.col == B.col or A.cx == B.cx:
                return False
            rel = "left" if A.cx < B.cx else "right"
            # objects in different columns do not overlap horizontally
            sep = (A.cx + A.size / 2 < B.cx - B.size / 2) if rel == "left" else (B.cx + B.size / 2 < A.cx - A.size / 2)
            return sep and q.key == rel and q.answer == f"The {a} is {rel} of the {b}."
        if A.row == B.row:
            return False
        rel = "above" if A.cy < B.cy else "below"
        sep = (A.cy + A.size / 2 < B.cy - B.size / 2) if rel == "above" else (B.cy + B.size / 2 < A.cy - A.size / 2)
        return sep and q.key == rel and q.answer == f"The {a} is {rel} the {b}."
    if t == "exist":
        art, colour, shape = text[len("Is there "):-1].split(" ")
        if art != article(colour):
            return False
        return q.key == ("yes" if scene.has(colour, shape) else "no") and q.answer == f"The answer is {q.key}."
    return False
