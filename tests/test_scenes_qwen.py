"""The second demo model's task (tools/scenes/sized.py, tools/scenes/qwen.py) and its trainer
(tools/train_qwen_demo.py). Fast (< 20 s): generator determinism, seed disjointness of the held-out
sets, image token counts under Qwen2-VL's smart_resize, list answers, questions naming one of several
images, the chat text against HF's template, M-RoPE positions and the packed forward against HF's
Qwen2-VL forward, and that the trainer runs from scratch and resumes bit-exactly (a tiny config).
"""

import json
import os
import random
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from scenes import dataset  # noqa: E402
from scenes.qwen import (ALL_QTYPES, QKEY_WORDS, QTEST_ITEMS, QTEST_SEED_BASE, QVAL_SEED_BASE,  # noqa: E402
                         QWEN_PROTOCOLS, SLOT, answer_for, chat_text, check_turn, heldout_items, load_qwen_set,
                         messages, mrope_positions, scene_digests, set_images, training_group)
from scenes.sized import (LINE_NAMES, MERGED_PX, SizedConfig, SizedScene, cell_bounds,  # noqa: E402
                          check_list_answer, image_sha256, list_phrase, list_question, make_sized_scene, name_image, qwen_patch_order,
                          render_sized, sized_patch_labels, unname_image)

TESTSET = os.path.join(ROOT, "tools", "scenes", "testset_qwen")
TINY = {"text_hidden": 32, "text_layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64, "rope_theta": 20.0,
        "mrope_section": [2, 3, 3], "vision_hidden": 16, "vision_layers": 3, "vision_heads": 2, "vision_mlp_ratio": 4}


def test_sized_scenes_deterministic_and_in_range():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    import train_qwen_demo as tq

    counts = set()
    for seed in (0, 1, 77, 123456, 999_999_999):
        a, b = make_sized_scene(seed), make_sized_scene(seed)
        assert a.to_dict() == b.to_dict()
        ia, ma = render_sized(a)
        ib, mb = render_sized(b)
        assert ia.tobytes() == ib.tobytes() and ma.tobytes() == mb.tobytes()
        assert ia.shape == (a.height, a.width, 3)
        assert SizedScene.from_dict(json.loads(json.dumps(a.to_dict()))).to_dict() == a.to_dict()
    for seed in range(300):
        s = make_sized_scene(seed)
        assert 224 <= s.width <= 448 and 224 <= s.height <= 448 and s.width % 28 == 0 and s.height % 28 == 0
        # HF's smart_resize keeps every generated image as it is: no resampling, 64..256 merged tokens
        assert smart_resize(s.height, s.width, 28, tq.PROC["min_pixels"], tq.PROC["max_pixels"]) == (s.height, s.width)
        assert 64 <= s.n_tokens <= 256
        counts.add(s.n_tokens)
        assert len({o.cell for o in s.objects}) == len(s.objects)
        for o in s.objects:
            assert 28 <= o.size <= 48
    assert min(counts) <= 80 and max(counts) >= 224 and len(counts) > 20
    # training groups: a function of the random stream alone
    g1 = training_group(random.Random(5), SizedConfig(), 10, None)
    g2 = training_group(random.Random(5), SizedConfig(), 10, None)
    assert [s.to_dict() for s in g1[0]] == [s.to_dict() for s in g2[0]] and g1[1] == g2[1]
    assert sum(len(t) for t, _ in g1[1]) == 10
    # several images are smaller (fewer tokens in all)
    for seed in range(40):
        sc, convs = training_group(random.Random(seed), SizedConfig(), 6, None, image_probs=(0, 0, 1))
        assert len(sc) == 3 and all(max(s.width, s.height) <= 308 for s in sc)
        assert all(dataset.is_training_seed(s.seed) for s in sc)


def test_heldout_sets_seeds_and_contents():
    seeds = {}
    for p in QWEN_PROTOCOLS:
        items, scenes = load_qwen_set(TESTSET, p)
        n = QTEST_ITEMS[p] * (5 if p == "single" else 1)
        assert len(items) == n and len({it["id"] for it in items}) == n
        regen = list(heldout_items(p, QTEST_ITEMS[p], QTEST_SEED_BASE[p]))
        assert [it for _, it in regen] == items          # the files are what the generator writes
        for sc, it in regen:
            assert [s.to_dict() for s in sc] == [scenes[s].to_dict() for s in it["images"]]
        for it in items:
            sc = [scenes[s] for s in it["images"]]
            for t in it["turns"]:
                assert check_turn(sc, t), it
            seeds.setdefault(p, set()).update(it["images"])
    allseeds = set().union(*seeds.values())
    assert len(allseeds) == sum(len(v) for v in seeds.values())        # no image in two protocols
    assert not any(dataset.is_training_seed(s) for s in allseeds)
    for p, base in QTEST_SEED_BASE.items():
        assert all(base <= s < base + SLOT * 10 * QTEST_ITEMS[p] for s in seeds[p])
    val = {s for p in QWEN_PROTOCOLS for sc, it in heldout_items(p, 30, QVAL_SEED_BASE[p]) for s in it["images"]}
    assert not (val & allseeds) and not any(dataset.is_training_seed(s) for s in val)
    # the first model's sets (a few hundred seeds above 1.5e9, 2.0e9, 3.0e9) are untouched
    first = {dataset.VAL_SEED_BASE, dataset.TEST_SEED_BASE, dataset.EXAMPLE_SEED_BASE}
    assert all(abs(s - b) > 10_000_000 for s in allseeds | val for b in first)
    # the renderings are the recorded ones (a sample; every scene is checked by set_images)
    digests = scene_digests(TESTSET)
    some = sorted(digests)[::60]
    imgs = set_images(TESTSET, some)
    assert all(image_sha256(imgs[s]) == digests[s] for s in some)


def test_list_answers():
    assert list_phrase([]) == "no shapes"
    assert list_phrase(["red circle"]) == "a red circle"
    assert list_phrase(["red circle", "blue star"]) == "a red circle and a blue star"
    assert list_phrase(["red circle", "orange star", "blue cross"]) == "a red circle, an orange star and a blue cross"
    rng = random.Random(0)
    n = 0
    for seed in range(200):
        s = make_sized_scene(seed)
        for line in range(len(LINE_NAMES)):
            q = list_question(s, rng, line)
            assert q.question == f"List the shapes in the {LINE_NAMES[line]}."
            assert check_list_answer(s, q)
            objs = [s.objects[k] for k in q.objects]
            if line < 3:
                assert all(o.row == line for o in objs) and [o.col for o in objs] == sorted(o.col for o in objs)
            else:
                assert all(o.col == line - 3 for o in objs) and [o.row for o in objs] == sorted(o.row for o in objs)
            assert q.answer.startswith(f"The {LINE_NAMES[line]} has ") and q.answer.endswith(".")
            assert q.key in QKEY_WORDS["list"] and q.answer[q.key_offset:].startswith(q.key)
            assert q.answer == f"The {LINE_NAMES[line]} has {list_phrase([o.name for o in objs])}."
            n += 1
            if objs:   # a wrong order is rejected
                bad = type(q)(q.type, q.question, q.answer.replace(objs[0].name, "x y"), q.key, q.key_offset, q.objects)
                assert not check_list_answer(s, bad)
    items, _ = load_qwen_set(TESTSET, "list")
    keys = [it["turns"][0]["key"] for it in items]
    assert "no" in keys and max(keys.count(k) for k in set(keys)) / len(keys) < 0.3
    assert sum(" and " in it["turns"][0]["answer"] for it in items) > 40


def test_multi_image_questions_name_one_image():
    assert name_image("What colour is the star?", 1) == "In the second image, what colour is the star?"
    assert unname_image("In the third image, is there a red star?") == (2, "Is there a red star?")
    items, scenes = load_qwen_set(TESTSET, "multi-image")
    differs, n_img = 0, {2: 0, 3: 0}
    types = set()
    for it in items:
        sc = [scenes[s] for s in it["images"]]
        n_img[len(sc)] += 1
        (t,) = it["turns"]
        idx, text = unname_image(t["question"])
        assert idx == t["image"] and 0 <= idx < len(sc) and check_turn(sc, t)
        others = [answer_for(s, t["type"], text) for i, s in enumerate(sc) if i != idx]
        differs += all(o != t["answer"] for o in others)
        types.add(t["type"])
        # a question that named another image would be checked against that image's scene
        wrong = dict(t, image=(idx + 1) % len(sc))
        assert not check_turn(sc, wrong)
    assert types == set(ALL_QTYPES) and n_img[2] > 50 and n_img[3] > 50
    assert len({it["turns"][0]["image"] for it in items}) == 3
    assert differs / len(items) > 0.9


def test_patch_order_and_labels():
    assert qwen_patch_order(4, 4).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    s = make_sized_scene(11)
    img, idmap = render_sized(s)
    lab = sized_patch_labels(s, idmap, qwen_order=False)
    cols = s.width // 14
    assert lab["colour"].shape == ((s.height // 14) * cols,) and (lab["centre"] == 1).sum() == len(s.objects)
    for o in s.objects:
        i = int(o.cy // 14) * cols + int(o.cx // 14)
        assert lab["shape"][i] == 1 + ["circle", "square", "triangle", "star", "cross"].index(o.shape)
    for r in range(s.height // 14):
        for c in range(cols):
            cell = lab["cell"][r * cols + c]
            x0, y0, x1, y1 = cell_bounds(cell, s.width, s.height)
            assert x0 <= c * 14 + 7 < x1 and y0 <= r * 14 + 7 < y1
    q = sized_patch_labels(s, idmap)
    order = qwen_patch_order(s.height // 14, cols)
    assert (q["shape"] == lab["shape"][order]).all() and (q["cell"] == lab["cell"][order]).all()


def test_object_tokens_cover_the_objects():
    import train_qwen_demo as tq

    for seed in range(20):
        s = make_sized_scene(seed)
        _, idmap = render_sized(s)
        rows, cols = s.height // MERGED_PX, s.width // MERGED_PX
        blocks = idmap.reshape(rows, MERGED_PX, cols, MERGED_PX).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
        for k in range(len(s.objects)):
            drawn = set(np.nonzero((blocks == k).any(1))[0].tolist())
            box = set(tq.object_tokens(s, [k]))
            assert drawn and drawn <= box and len(box) <= len(drawn) + 2 * (rows + cols), (seed, k)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2-VL (the trainer's make_model) with the trainer's tokenizer."""
    import torch
    from transformers import AutoTokenizer

    import train_qwen_demo as tq

    d = tmp_path_factory.mktemp("qwen_tok")
    spm = tq.build_tokenizer(str(d))
    tq.save_tokenizer_files(str(d / "hf"), spm)
    tok = AutoTokenizer.from_pretrained(str(d / "hf"))
    model = tq.make_model(spm, seed=1, **TINY).eval()
    with torch.no_grad():   # random, not small, weights so that mistakes show
        for p in model.parameters():
            p.normal_(0, 0.3)
    return {"dir": d, "spm": spm, "tok": tok, "model": model}


def test_chat_text_and_tokens(tiny):
    from scenes.qwen import QwenEncoder

    tok = tiny["tok"]
    items, _ = load_qwen_set(TESTSET, "multi-turn", limit=3)
    for it in items:
        for generic in (False, True):
            for k in (1, 2):
                text, spans = chat_text(k, it["turns"], generic)
                assert text == tok.apply_chat_template(messages(k, it["turns"], generic), tokenize=False)
                assert text[spans["prompt_end"] - len("<|im_start|>assistant\n"):].startswith("<|im_start|>assistant\n")
    enc = QwenEncoder(tok)
    for w in sorted(set(sum(QKEY_WORDS.values(), []))):
        enc.key_id(w)   # every key word is one token
    e = enc.encode([(8, 9)], items[0]["turns"], True)
    assert len(e["keys"]) == len(items[0]["turns"]) == len(e["answers"])
    for (i, kid, ti), (a, b) in zip(e["keys"], e["answers"]):
        assert e["ids"][i + 1] == kid and a <= i + 1 <= b and e["ids"][b] == enc.im_end_id
    assert e["ids"][e["images"][0][0] - 1] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert e["images"][0][1] - e["images"][0][0] == 72 and e["trunk"] == e["images"][0][1] + 1


def test_positions_and_packed_forward_equal_hf(tiny):
    import torch

    import train_qwen_demo as tq

    model, tok = tiny["model"], tiny["tok"]
    proc = tq.ImageProcessor()
    packer = tq.QwenPacker(tok)
    scenes = [make_sized_scene(3, SizedConfig(max_side=252)), make_sized_scene(4, SizedConfig(max_side=252))]
    rng = random.Random(3)
    from scenes.qwen import multi_image_question, turn_record

    def turns(n):
        out = []
        for j in range(n):
            img = rng.randrange(2)
            out.append(turn_record(multi_image_question(scenes, img, ALL_QTYPES[(j + n) % 6], rng), img, 2))
        return out

    convs = [(turns(2), True), (turns(1), False), (turns(3), False)]
    pv, grid, _ = tq.images_and_labels(scenes, proc, False)
    assert [tuple(g) for g in grid.tolist()] == [(1, s.height // 14, s.width // 14) for s in scenes]
    with torch.no_grad():
        _, emb = tq.vision_forward(model, pv, grid)
        batch = packer.pack([(scenes, convs)])
        probe = {"heads": [(1, 0), (1, 1)], "b": batch["key_b"], "i": batch["key_i"]}
        hid, _ = tq.packed_forward(model, emb, batch, batch["tgt_b"], batch["tgt_i"], attn_probe=probe)
        packed = model.lm_head(hid)
    grids = [(s.height // MERGED_PX, s.width // MERGED_PX) for s in scenes]
    n = n_key = 0
    for turns_, generic in convs:
        e = packer.enc.encode(grids, turns_, generic)
        ids = torch.tensor([e["ids"]])
        mm = (ids == model.config.image_token_id).int()
        pos, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
        assert (pos[:, 0].numpy() == mrope_positions(e["ids"], grids, packer.image_id)).all()
        model.model.rope_deltas = None
        with torch.no_grad():
            ref = model(input_ids=ids, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm).logits[0]
        for i, t, kind, ti in e["targets"]:
            err = (packed[n] - ref[i]).abs().max().item()
            assert err < 1e-4 * max(1.0, ref[i].abs().max().item()), (n, i, err)
            assert batch["tgt_id"][n].item() == t
            n += 1
        # the attention probe (--attn-weight's) = HF's eager attention weights at the key rows: the
        # shared trunk position by position, the conversation's own part in sum
        model.set_attn_implementation("eager")
        model.model.rope_deltas = None
        with torch.no_grad():
            att = model(input_ids=ids, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm,
                        output_attentions=True).attentions[1][0]
        model.set_attn_implementation("sdpa")
        T = e["trunk"]
        for i, kid, ti in e["keys"]:
            k = n_key
            n_key += 1
            assert batch["key_id"][k].item() == kid
            for h in (0, 1):
                p = probe[(1, h)][k]
                assert abs(p.sum().item() - 1) < 1e-5
                assert (p[:T] - att[h, i, :T]).abs().max().item() < 1e-5
                assert abs(p[T:].sum().item() - att[h, i, T:].sum().item()) < 1e-5
    assert n == len(batch["tgt_id"]) and n_key == len(batch["key_id"])


def test_list_rows_name_the_listed_objects(tiny):
    import train_qwen_demo as tq
    from scenes.qwen import turn_record

    packer = tq.QwenPacker(tiny["tok"])
    n_rows = 0
    for seed in range(30):
        sc = make_sized_scene(seed)
        q = list_question(sc, random.Random(seed), allow_empty=False)
        if q is None:
            continue
        turns = [turn_record(q, 0, 1)]
        batch = packer.pack([([sc], [(turns, seed % 2 == 0)])])
        ids = batch["ids"][0]
        names = []
        for b, i, obj in zip(batch["list_b"].tolist(), batch["list_i"].tolist(), batch["list_obj"]):
            word = packer.enc.tok.convert_ids_to_tokens(int(ids[i + 1]))[1:]   # the word row i predicts
            names.append((word, obj))
        want = [(w, k) for k in q.objects for w in (sc.objects[k].colour, sc.objects[k].shape)]
        assert names == want, (seed, names, want)
        n_rows += len(names)
    assert n_rows > 40


def test_trainer_runs_and_resumes_bit_exactly(tmp_path, tiny):
    import shutil

    import torch

    import train_qwen_demo as tq

    common = ["--stage", "qa", "--steps", "3", "--warmup", "2", "--decay-steps", "2", "--batch", "1", "--questions", "3",
              "--min-side", "224", "--max-side", "224", "--image-probs", "0.5,0.5,0", "--threads", "1", "--val", "",
              "--hf-out", "", "--log-every", "1", "--sizes", json.dumps(TINY), "--vit-lr", "1e-3",
              "--merge-weight", "1", "--attn-weight", "0.5", "--attn-heads", "1:0,0:1", "--attn-list"]
    for d in ("a", "b", "c"):   # the same tokenizer, not retrained
        os.makedirs(tmp_path / d / "tokenizer")
        shutil.copy(tiny["spm"], tmp_path / d / "tokenizer" / "spm.model")
    tq.main(common + ["--ckpt-dir", str(tmp_path / "a")])
    tq.main(common + ["--ckpt-dir", str(tmp_path / "b"), "--stop-at", "1", "--small-out", str(tmp_path / "small.pt")])
    one = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert one["step"] == 1
    tq.main(["--resume", str(tmp_path / "b" / "last.pt"), "--ckpt-dir", str(tmp_path / "b"), "--threads", "1"])
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    assert not torch.equal(a["model"]["lm_head.weight"], one["model"]["lm_head.weight"])   # it trained
    for part in ("model", "heads", "scene_heads", "merged_heads"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for i, s in a["opt"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["opt"]["state"][i][k]), (i, k)
    # the compact checkpoint resumes too (float16 weights: close, not exact)
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    assert small["small"] and small["step"] == 1
    assert all(v.dtype == torch.float16 for v in small["model"].values() if v.is_floating_point())
    tq.main(["--resume", str(tmp_path / "small.pt"), "--ckpt-dir", str(tmp_path / "c"), "--threads", "1"])
    c = torch.load(tmp_path / "c" / "last.pt", weights_only=False)
    assert c["step"] == 3
    k = "lm_head.weight"
    assert (c["model"][k] - a["model"][k]).abs().max() < 1e-2
