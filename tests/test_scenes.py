"""The procedural scenes task (tools/scenes/) and the demo model's packed forward (tools/demo_model.py).

Fast: no training. Checks determinism, seed disjointness of the held-out set, answers against the
scene description and against the rendered pixels, key words after answer-independent lead-ins,
both protocols' texts and token ids, and that packing several questions per image equals the HF
forward of each conversation alone.
"""

import json
import os
import random
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import scenes  # noqa: E402
from scenes import (CELL_NAMES, COLOURS, KEY_WORDS, PROTOCOLS, QTYPES, SceneConfig, check_answer,  # noqa: E402
                    load_set, make_question, make_scene, patch_labels, render, training_sample)
from scenes.dataset import (EXAMPLE_SEED_BASE, TEST_SCENES, TEST_SEED_BASE, VAL_SEED_BASE,  # noqa: E402
                            is_training_seed, heldout_scenes, training_seeds)

TESTSET = os.path.join(ROOT, "tools", "scenes", "testset")
EXAMPLES = os.path.join(ROOT, "examples")


def test_deterministic_from_seed():
    for seed in (0, 1, 12345, 999_999_999):
        a, b = make_scene(seed), make_scene(seed)
        assert a.to_dict() == b.to_dict()
        ia, ma = render(a)
        ib, mb = render(b)
        assert ia.tobytes() == ib.tobytes() and ma.tobytes() == mb.tobytes()
        sa = training_sample(seed, SceneConfig(), 8)
        sb = training_sample(seed, SceneConfig(), 8)
        assert [q.to_dict() for q in sa[3]] == [q.to_dict() for q in sb[3]]
        assert sa[1].tobytes() == sb[1].tobytes()
    assert make_scene(1).to_dict() != make_scene(2).to_dict()
    s = make_scene(7)
    assert scenes.Scene.from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()


def test_scene_structure():
    for seed in range(300):
        s = make_scene(seed)
        assert 3 <= len(s.objects) <= 6
        assert len({o.cell for o in s.objects}) == len(s.objects)              # one object per cell
        assert len({(o.colour, o.shape) for o in s.objects}) == len(s.objects)  # names are unique
        for o in s.objects:
            x0, y0, x1, y1 = scenes.scene.cell_bounds(o.cell)
            h = o.size / 2
            assert x0 <= o.cx - h and o.cx + h <= x1 and y0 <= o.cy - h and o.cy + h <= y1


def test_heldout_seeds_disjoint_from_training():
    qs, sc = load_set(TESTSET)
    seeds = {q["seed"] for q in qs}
    assert len(qs) >= 1000 and len(sc) == TEST_SCENES
    assert all(s >= TEST_SEED_BASE and not is_training_seed(s) for s in seeds)
    val = {s.seed for s, _ in heldout_scenes(50, VAL_SEED_BASE)}
    ex = {s.seed for s, _ in heldout_scenes(6, EXAMPLE_SEED_BASE)}
    assert not (val & seeds) and not (ex & seeds) and not (val & ex)
    assert not any(is_training_seed(s) for s in val | ex)
    stream = training_seeds(0)
    assert all(is_training_seed(next(stream)) for _ in range(10000))
    with pytest.raises(AssertionError):
        training_sample(TEST_SEED_BASE, SceneConfig(), 1)


def test_heldout_set_matches_generator_and_answers():
    qs, sc = load_set(TESTSET)
    from PIL import Image

    regenerated = {f"test{s.seed}.png": (s, q) for s, q in heldout_scenes()}
    assert set(regenerated) == set(sc)
    for name, scene in sc.items():
        assert scene.to_dict() == regenerated[name][0].to_dict()
    for name in list(sc)[:20]:   # the PNGs on disk are the renderings
        img = np.asarray(Image.open(os.path.join(TESTSET, name)).convert("RGB"))
        assert np.array_equal(img, render(sc[name])[0])
    per_type = {}
    for r in qs:
        q = scenes.Question(r["type"], r["question"], r["answer"], r["key"], r["key_offset"], r["objects"])
        assert check_answer(sc[r["image"]], q), r
        per_type.setdefault(r["type"], []).append(r["key"])
    assert set(per_type) == set(QTYPES)
    for t, keys in per_type.items():   # every answer occurs, none dominates
        assert set(keys) == set(KEY_WORDS[t]), t
        assert max(keys.count(k) for k in set(keys)) / len(keys) < 0.6
    assert len(set(r["id"] for r in qs)) == len(qs)


def scene_questions(n_scenes: int, rng_seed: int):
    """(seed, scene, question): one question of every type the scene allows, on training scenes
    0..n_scenes-1, drawn with random.Random(rng_seed)."""
    rng = random.Random(rng_seed)
    for seed in range(n_scenes):
        s = make_scene(seed)
        for t in QTYPES:
            q = make_question(s, t, rng)
            if q is not None:
                yield seed, s, q


def test_answers_on_random_training_scenes():
    n = 0
    for seed, s, q in scene_questions(400, 0):
        assert check_answer(s, q), (seed, q)
        n += 1
        # a wrong key is rejected
        other = next(k for k in KEY_WORDS[q.type] if k != q.key)
        bad = scenes.Question(q.type, q.question, q.lead_in + other + q.answer[q.key_offset + len(q.key):],
                              other, q.key_offset, q.objects)
        assert not check_answer(s, bad)
    assert n > 1800


def _nearest_colour(rgb):
    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], rgb)))


def test_answers_against_pixels():
    checked = {t: 0 for t in QTYPES}
    rendered = None
    for seed, s, q in scene_questions(150, 1):
        if rendered != seed:
            img, idmap = render(s)
            rendered = seed
        t = q.type
        if t == "colour":
            shape = q.question[len("What colour is the "):-1]
            k = next(i for i, o in enumerate(s.objects) if o.shape == shape)
            inner = idmap == k
            # erode one pixel: anti-aliased edges mix with the background
            inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
            assert inner.sum() > 20
            assert _nearest_colour(img[inner].mean(0)) == q.key
        elif t == "shape":
            cell = CELL_NAMES.index(q.question[len("What shape is in the "):-len(" cell?")])
            ys, xs = np.nonzero(idmap == q.objects[0])
            assert scenes.scene.cell_of_point(xs.mean(), ys.mean()) == cell
            assert s.objects[q.objects[0]].shape == q.key
        elif t == "count":
            colour = q.question[len("How many "):-len(" shapes are there?")]
            # connected blobs of pixels whose colour is nearest to `colour`
            n = sum(1 for k in range(len(s.objects)) if (idmap == k).any()
                    and _nearest_colour(img[idmap == k].mean(0)) == colour)
            assert scenes.questions.COUNT_WORDS[n] == q.key
        elif t == "relation":
            a, b = q.objects
            ya, xa = np.nonzero(idmap == a)
            yb, xb = np.nonzero(idmap == b)
            if q.key == "left":
                assert xa.max() < xb.min()
            elif q.key == "right":
                assert xa.min() > xb.max()
            elif q.key == "above":
                assert ya.max() < yb.min()
            else:
                assert ya.min() > yb.max()
        checked[t] += 1
    assert all(v > 100 for v in checked.values()), checked


def test_patch_labels():
    s = make_scene(3)
    img, idmap = render(s)
    lab = patch_labels(s, idmap)
    assert lab["colour"].shape == (256,)
    assert (lab["centre"] == 1).sum() == len(s.objects)
    for o in s.objects:
        i = int(o.cy // 8) * 16 + int(o.cx // 8)
        assert lab["colour"][i] == 1 + scenes.COLOUR_NAMES.index(o.colour)
        assert lab["shape"][i] == 1 + scenes.SHAPES.index(o.shape)
    assert ((lab["colour"] > 0) == (lab["shape"] > 0)).all()


def test_key_words_after_lead_in():
    for _, _, q in scene_questions(200, 2):
        t = q.type
        assert q.key in KEY_WORDS[t]
        assert q.answer[q.key_offset:].startswith(q.key + (" " if t == "relation" else "."))
        assert q.lead_in.startswith("The ") and q.lead_in.endswith(" ") and len(q.lead_in.split()) >= 3
        # the lead-in depends on the question only: no key word of the type occurs in it
        assert not any(w in q.lead_in.split() for w in KEY_WORDS[t])
        lead = {"colour": lambda: f"The {q.question[len('What colour is the '):-1]} is ",
                "shape": lambda: f"The {q.question[len('What shape is in the '):-len(' cell?')]} cell has a ",
                "count": lambda: f"The number of {q.question[len('How many '):-len(' shapes are there?')]} shapes is ",
                "relation": lambda: f"The {q.question[7:].split(' left or right')[0].split(' above or below')[0]} is ",
                "exist": lambda: "The answer is "}[t]()
        assert q.lead_in == lead, (q.lead_in, lead)


def test_protocol_texts():
    q = "What colour is the star?"
    a = "The star is red."
    p, c = scenes.conversation(q, a, "question-aware")
    assert p == "USER: <image>\nWhat colour is the star? ASSISTANT:" and c == " The star is red.</s>"
    p, c = scenes.conversation(q, a, "follow-up")
    assert p == "USER: <image>\nLook at the image. ASSISTANT:"
    assert c == " I see the shapes.</s>USER: What colour is the star? ASSISTANT: The star is red.</s>"
    for proto in PROTOCOLS:
        p, c = scenes.conversation(q, a, proto)
        assert p.count("<image>") == 1 and (p + c).count("<image>") == 1
        assert p.startswith("USER: <image>\n") and p.endswith(" ASSISTANT:")
        # the runtime's llava template around runtime_prompt gives the same prompt text
        assert "USER: <image>\n" + scenes.runtime_prompt(q, proto) + " ASSISTANT:" == p
        assert q not in p if proto == "follow-up" else q in p
    qs, _ = load_set(TESTSET)
    for r in qs[:50]:
        for proto in PROTOCOLS:
            p, c = scenes.conversation(r["question"], r["answer"], proto)
            assert r[proto] == {"prompt": p, "continuation": c}
    with pytest.raises(ValueError):
        scenes.conversation(q, a, "nope")


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    import torch

    import demo_model as dm

    d = tmp_path_factory.mktemp("demo")
    spm = dm.build_tokenizer(str(d / "tok"))
    m = dm.make_model(spm, vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
                      text_hidden=64, text_layers=2, heads=4, kv_heads=2, intermediate=96)
    from hf_fixtures import randomize_

    randomize_(m, 0)
    dm.save_hf(m, spm, str(d / "hf"), dtype=torch.float32)
    model, tok = dm.load_hf(str(d / "hf"))
    return dm, model, tok, str(d / "hf")


def test_encoder_key_positions(tiny_demo):
    dm, _, tok, _ = tiny_demo
    enc = scenes.Encoder(tok, dm.N_IMAGE_TOKENS)
    for t in QTYPES:
        for w in KEY_WORDS[t]:
            enc.key_id(w)     # every key word is one token
    for _, _, q in scene_questions(40, 3):
        for proto in PROTOCOLS:
            e = enc.encode(q.question, q.answer, q.key, q.key_offset, proto)
            ids = e["input_ids"]
            assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
            assert ids[e["image_start"]:e["image_end"]] == [enc.image_id] * dm.N_IMAGE_TOKENS
            assert ids.count(enc.image_id) == dm.N_IMAGE_TOKENS
            assert ids[e["key_pos"]] == e["key_id"] == tok.convert_tokens_to_ids("\u2581" + q.key)
            assert e["image_end"] < e["n_prompt"] <= e["answer_start"] < e["key_pos"]
            text = tok.decode(ids[e["answer_start"]:], skip_special_tokens=True).strip()
            assert text == q.answer
            assert tok.decode(ids[e["answer_start"]:e["key_pos"]]).strip() == q.lead_in.strip()
            if proto == "question-aware":
                assert e["answer_start"] == e["n_prompt"]
            else:
                assert e["n_prompt"] < e["turn1_end"] < e["answer_start"]
                assert q.question not in tok.decode(ids[:e["n_prompt"]])


def test_processor_matches_pixel_values_and_prompt_ids(tiny_demo):
    dm, _, tok, hf = tiny_demo
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(hf)
    s = make_scene(5)
    img = render(s)[0]
    q = make_question(s, "colour", random.Random(0)) or make_question(s, "shape", random.Random(0))
    enc = scenes.Encoder(tok, dm.N_IMAGE_TOKENS)
    for proto in PROTOCOLS:
        r = proc(images=Image.fromarray(img), text=scenes.prompt_text(q.question, proto), return_tensors="pt")
        e = enc.encode(q.question, q.answer, q.key, q.key_offset, proto)
        assert r["input_ids"][0].tolist() == e["input_ids"][:e["n_prompt"]]
        assert np.array_equal(r["pixel_values"][0].numpy(), dm.pixel_values([img])[0].numpy())


def test_packed_forward_equals_hf(tiny_demo):
    import torch

    dm, model, tok, _ = tiny_demo
    packer = dm.Packer(tok)
    imgs, per = [], []
    rng = random.Random(4)
    for seed in (11, 12):
        _, img, _, qs = training_sample(seed, SceneConfig(), 5)
        imgs.append(img)
        per.append([(q.to_dict(), rng.choice(PROTOCOLS)) for q in qs])
    per[0][0] = (per[0][0][0], "follow-up")
    per[0][1] = (per[0][1][0], "question-aware")
    batch = packer.pack(per)
    pv = dm.pixel_values(imgs)
    drop = np.zeros((2, dm.N_IMAGE_TOKENS), bool)
    drop[:, np.random.default_rng(0).permutation(dm.N_IMAGE_TOKENS)[:200]] = True
    with torch.no_grad():
        emb = model.model.multi_modal_projector(dm.vision_features(model, pv))
        ref_emb = model.get_image_features(pixel_values=pv, vision_feature_layer=-1,
                                           vision_feature_select_strategy="default").pooler_output
        assert torch.allclose(torch.stack(list(ref_emb)), emb, atol=1e-5)
        logits = dm.packed_forward(model, emb, batch, batch["key_b"], batch["key_i"])
        dropped = packer.pack(per, drop=drop)
        ld = dm.packed_forward(model, emb, dropped, dropped["key_b"], dropped["key_i"])
        k = 0
        for b in range(2):
            for q, proto in per[b]:
                e = packer.enc.encode(q["question"], q["answer"], q["key"], q["key_offset"], proto)
                ids = torch.tensor([e["input_ids"]])
                ref = model(input_ids=ids, pixel_values=pv[b:b + 1]).logits[0, e["key_pos"] - 1]
                assert torch.allclose(logits[k], ref, atol=1e-4), (b, q["question"], proto)
                # dropping image tokens for the rows after the prompt changes the answer's logits
                assert not torch.allclose(ld[k], ref, atol=1e-3)
                k += 1
        assert k == len(batch["key_id"])
