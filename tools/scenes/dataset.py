"""Training samples and the fixed held-out test set.

Seeds: training scenes use seeds in [0, TRAIN_SEED_LIMIT); the validation set (model selection
during training) VAL_SEED_BASE + i, the held-out test set TEST_SEED_BASE + i and the examples
EXAMPLE_SEED_BASE + i, so no test or example scene is ever a
training scene (the scene depends on nothing but its seed and SceneConfig).

    python -m scenes.dataset --testset tools/scenes/testset --examples examples   (from tools/)
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .protocols import PROTOCOLS, conversation
from .questions import QTYPES, Question, check_answer, make_question
from .scene import Scene, SceneConfig, make_scene, patch_labels, render

TRAIN_SEED_LIMIT = 1_000_000_000
VAL_SEED_BASE = 1_500_000_000     # validation during training (neither training nor test)
TEST_SEED_BASE = 2_000_000_000
EXAMPLE_SEED_BASE = 3_000_000_000
TEST_SCENES = 240           # x 5 question types = 1200 questions
TEST_CONFIG = SceneConfig()  # the full task


def is_training_seed(seed: int) -> bool:
    return 0 <= seed < TRAIN_SEED_LIMIT


def training_seeds(start_seed: int) -> Iterator[int]:
    """The training seed stream: a fixed pseudo-random permutation-like walk over [0, TRAIN_SEED_LIMIT)."""
    rng = random.Random(start_seed)
    while True:
        yield rng.randrange(TRAIN_SEED_LIMIT)


def random_questions(scene: Scene, rng: random.Random, n: int, types: Optional[List[str]] = None,
                     weights: Optional[List[float]] = None) -> List[Question]:
    """n questions of random types (distinct question texts), balanced answers where the type allows."""
    types = types or QTYPES
    out, seen = [], set()
    for _ in range(4 * n):
        if len(out) >= n:
            break
        t = rng.choices(types, weights=weights)[0] if weights else rng.choice(types)
        kw = {"target": rng.randrange(4)} if t == "count" else {}
        q = make_question(scene, t, rng, **kw)
        if q is None or q.question in seen:
            continue
        seen.add(q.question)
        out.append(q)
    return out


def training_sample(seed: int, cfg: SceneConfig, n_questions: int, types=None, weights=None, patch: int = 8):
    """(scene, image uint8 HxWx3, patch labels, questions) for a training seed."""
    assert is_training_seed(seed)
    scene = make_scene(seed, cfg)
    img, idmap = render(scene)
    labels = patch_labels(scene, idmap, patch)
    rng = random.Random(seed ^ 0x5EED)
    return scene, img, labels, random_questions(scene, rng, n_questions, types, weights)


def test_questions(scene: Scene, i: int) -> Optional[List[Question]]:
    """One question of every type for the i-th test scene (answers balanced across the set)."""
    rng = random.Random(scene.seed ^ 0xC0FFEE)
    qs = []
    for t in QTYPES:
        kw = {}
        if t == "count":
            kw = {"target": i % 4}
        elif t == "relation":
            kw = {"axis": "horizontal" if i % 2 == 0 else "vertical"}
        elif t == "exist":
            kw = {"yes": (i // 2) % 2 == 0}
        q = make_question(scene, t, rng, **kw)
        if q is None:
            return None
        if t == "count" and q.key != ["zero", "one", "two", "three"][i % 4]:
            return None
        qs.append(q)
    return qs


def heldout_scenes(n: int = TEST_SCENES, base: int = TEST_SEED_BASE) -> Iterator[Tuple[Scene, List[Question]]]:
    seed, i = base, 0
    while i < n:
        scene = make_scene(seed, TEST_CONFIG)
        qs = test_questions(scene, i)
        seed += 1
        if qs is None:
            continue
        yield scene, qs
        i += 1


def record(q: Question, image: str, scene: Scene, qid: str) -> dict:
    r = {"id": qid, "image": image, "seed": scene.seed, **q.to_dict(), "lead_in": q.lead_in}
    for p in PROTOCOLS:
        prompt, cont = conversation(q.question, q.answer, p)
        r[p] = {"prompt": prompt, "continuation": cont}
    return r


def write_set(out_dir: str, n: int, base: int, prefix: str) -> int:
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    nq = 0
    with open(os.path.join(out_dir, "questions.jsonl"), "w") as fq, \
            open(os.path.join(out_dir, "scenes.jsonl"), "w") as fs:
        for scene, qs in heldout_scenes(n, base):
            name = f"{prefix}{scene.seed}.png"
            img, _ = render(scene)
            Image.fromarray(img).save(os.path.join(out_dir, name), optimize=True)
            fs.write(json.dumps({"image": name, **scene.to_dict()}) + "\n")
            for q in qs:
                assert check_answer(scene, q), q
                fq.write(json.dumps(record(q, name, scene, f"{scene.seed}-{q.type}")) + "\n")
                nq += 1
    return nq


def load_set(path: str) -> Tuple[List[dict], dict]:
    """(question records, {image name: Scene}) of a directory written by write_set."""
    with open(os.path.join(path, "questions.jsonl")) as f:
        qs = [json.loads(l) for l in f]
    scenes = {}
    with open(os.path.join(path, "scenes.jsonl")) as f:
        for l in f:
            d = json.loads(l)
            scenes[d.pop("image")] = Scene.from_dict(d)
    return qs, scenes


def write_examples(out_dir: str, n: int = 6) -> None:
    """A few example scenes (PNG) with one question each (examples/scenes.json)."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    items = []
    for i, (scene, qs) in enumerate(heldout_scenes(n, EXAMPLE_SEED_BASE)):
        q = qs[i % len(qs)]
        name = f"scene{i}.png"
        Image.fromarray(render(scene)[0]).save(os.path.join(out_dir, name), optimize=True)
        items.append({"image": name, "type": q.type, "question": q.question, "answer": q.answer, "key": q.key})
    with open(os.path.join(out_dir, "scenes.json"), "w") as f:
        json.dump(items, f, indent=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testset", default=None, help="directory for the held-out test set")
    ap.add_argument("--n", type=int, default=TEST_SCENES, help="test scenes (5 questions each)")
    ap.add_argument("--examples", default=None, help="directory for the example scenes")
    a = ap.parse_args(argv)
    if a.testset:
        print(a.testset, write_set(a.testset, a.n, TEST_SEED_BASE, "test"), "questions")
    if a.examples:
        write_examples(a.examples)


if __name__ == "__main__":
    main()
