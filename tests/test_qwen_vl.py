"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL end to end against HF transformers, on tiny random-weight
models (tests/hf_qwen_fixtures.py) converted by llama.cpp's own convert_hf_to_gguf.py (text, then
--mmproj; tests/conftest.py `qwen_converted`):

- pixel values (dynamic resolution: smart_resize within the tiny processor's limits, passed as
  image_min_tokens / image_max_tokens) and image features (DeepStack's too) equal HF's;
- prompt + 32 teacher-forced tokens: logits equal HF's (M-RoPE positions, window attention,
  DeepStack) for one image, two images of different sizes, and text only; at the F32 / F16 cache,
  F16 and Q8_0 files; greedy generation equals HF's;
- compression: kept sets of AirCache / VL-Cache / SnapKV / H2O equal the numpy reference fed with
  HF's eager attentions, every policy's budget is exact, decoding over the compacted cache (and a
  two-turn session over it) equals a numpy decoder over HF's KV restricted to the kept rows at HF's
  next M-RoPE position;
- the chat template as HF renders it; errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import aircache_cpp as ac
import compress_reference as ref
import hf_qwen_fixtures as q

FAMILIES = ["qwen2vl", "qwen25vl", "qwen3vl"]


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def limits(fam):
    p = q.PROCESSOR[fam]
    f = p["patch"] * p["merge"]
    return dict(image_min_tokens=p["min_pixels"] // f ** 2, image_max_tokens=p["max_pixels"] // f ** 2)


def load(path_pair, fam, **kw):
    text, mm = path_pair
    return ac.Model(text, mmproj=mm, **limits(fam), **kw)


@pytest.fixture(scope="module")
def fams(qwen_converted, tiny_qwen2vl, tiny_qwen25vl, tiny_qwen3vl):
    dirs = {"qwen2vl": tiny_qwen2vl, "qwen25vl": tiny_qwen25vl, "qwen3vl": tiny_qwen3vl}
    out = {}
    for fam in FAMILIES:
        pair = qwen_converted[f"{fam}-f32"]
        out[fam] = {"hf": q.load_qwen(dirs[fam]), "model": load(pair, fam, kv_type="f32", n_ctx=1024), "files": pair,
                    "proc": q.PROCESSOR[fam]}
    return out


def hf_inputs(f, images):
    pvs, grids = [], []
    for a in images:
        pv, thw = q.hf_pixel_values(f["proc"], Image.fromarray(a))
        pvs.append(pv)
        grids.append(thw)
    return pvs, grids


# ------------------------------------------------------------------------------------------------
# preprocessing and the vision tower


@pytest.mark.parametrize("fam", FAMILIES)
def test_pixel_values_equal_hf(fams, fam):
    f = fams[fam]
    m = f["model"]
    # a square image, a non-square one smart_resize changes, one the minimum enlarges, one the maximum shrinks
    for i, (w, h) in enumerate([(112, 112), (100, 75), (20, 30), (900, 500)]):
        a = img(i, w, h)
        want, thw = q.hf_pixel_values(f["proc"], Image.fromarray(a))
        got = m.pixel_values(a)
        assert got.shape == want.shape, (w, h)
        assert np.abs(got - want).max() <= 1e-6
        assert m.n_image_tokens(a) == q.n_image_tokens(thw)


@pytest.mark.parametrize("fam", FAMILIES)
def test_image_features_equal_hf(fams, fam):
    f = fams[fam]
    for i, (w, h) in enumerate([(100, 75), (224, 168), (300, 90)]):  # 224x168: several Qwen2.5 windows
        a = img(10 + i, w, h)
        pv, thw = q.hf_pixel_values(f["proc"], Image.fromarray(a))
        main, deep = q.hf_image_features(f["hf"], pv, thw)
        got, got_deep = f["model"].encode_image(a, deepstack=True)
        assert got.shape == main.shape
        assert rel_err(got, main) <= 1e-4
        assert got_deep.shape[0] == len(deep) == (2 if fam == "qwen3vl" else 0)
        for k, d in enumerate(deep):
            assert rel_err(got_deep[k], d) <= 1e-4


# ------------------------------------------------------------------------------------------------
# logits


CASES = {"one-image": [(100, 75)], "two-images": [(100, 75), (224, 168)], "text-only": []}


def case_ids(m, images, seed):
    marks = " and ".join("<image>" for _ in images)
    ids = m.build_prompt(f"{marks} what is in the picture?" if images else "what is a picture?", images)
    cont = np.random.default_rng(seed).integers(10, m.n_vocab, 32).tolist()
    return ids + cont


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fam", FAMILIES)
def test_logits_equal_hf(fams, fam, case):
    f = fams[fam]
    images = [img(20 + i, w, h) for i, (w, h) in enumerate(CASES[case])]
    ids = case_ids(f["model"], images, 5)
    pvs, grids = hf_inputs(f, images)
    ref_logits, _, _ = q.hf_logits(f["hf"], ids, pvs, grids)
    for kv, tol in [("f32", 1e-4), ("f16", 5e-3)]:
        m = f["model"] if kv == "f32" else load(f["files"], fam, kv_type="f16", n_ctx=1024)
        err = rel_err(m.logits(ids, images=images), ref_logits)
        print(f"{fam} {case} KV {kv}: relative logit error {err:.2e}")
        assert err <= tol


@pytest.mark.parametrize("name,tol", [("qwen25vl-f16", 2e-2), ("qwen25vl-q8_0", 6e-2)])
def test_quantized_files(fams, qwen_converted, name, tol):
    f = fams["qwen25vl"]
    m = load(qwen_converted[name], "qwen25vl", kv_type="f16", n_ctx=1024)
    for case, sizes in CASES.items():
        images = [img(20 + i, w, h) for i, (w, h) in enumerate(sizes)]
        ids = case_ids(m, images, 5)
        pvs, grids = hf_inputs(f, images)
        ref_logits, _, _ = q.hf_logits(f["hf"], ids, pvs, grids)
        err = rel_err(m.logits(ids, images=images), ref_logits)
        print(f"{name} {case}: relative logit error {err:.2e} (limit {tol:.0e})")
        assert err <= tol


@pytest.mark.parametrize("fam", FAMILIES)
def test_greedy_generation_equals_hf(fams, fam):
    """Decoding continues at HF's positions (one past the largest, after an image's grid)."""
    f = fams[fam]
    m = f["model"]
    images = [img(30, 120, 90), img(31, 64, 64)]
    ids = m.build_prompt("<image> then <image> describe", images)
    pvs, grids = hf_inputs(f, images)
    want = q.hf_greedy(f["hf"], ids, pvs, grids, n_new=8)
    r = m.generate(images, "<image> then <image> describe", max_tokens=8)
    assert r.tokens == want[:len(r.tokens)]
    assert len(r.tokens) == 8 or r.tokens[-1] == 5  # stopped at <|im_end|>


# ------------------------------------------------------------------------------------------------
# compression


@pytest.fixture(scope="module")
def single(fams):
    """Per family: a one-image prompt, HF's attentions over it, its pixel values."""
    out = {}
    for fam, f in fams.items():
        a = img(40, 224, 168)
        ids = f["model"].build_prompt("<image> which shape is on the left of the red one?", [a])
        pvs, grids = hf_inputs(f, [a])
        att, _, pos = q.hf_attentions(f["hf"], ids, pvs, grids)
        out[fam] = {"ids": ids, "image": a, "P": [x.astype(np.float64) for x in att], "pvs": pvs, "grids": grids,
                    "pos": pos}
    return out


def layout_of(m, ids):
    return ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == m.image_token_id])


def plan(m, s, p: ref.Params):
    _, st = m.logits(s["ids"], images=[s["image"]], kv_policy=p.policy, kv_budget=p.budget, kv_scope=p.scope,
                     kv_selection=p.selection, kv_options=dict(p.options), return_stats=True)
    return st


KEPT_CASES = [ref.Params("aircache", 0.2), ref.Params("vlcache", 0.2), ref.Params("vlcache", 0.3, "all"),
              ref.Params("snapkv", 0.2, options={"snap_window": 8}), ref.Params("h2o", 0.25)]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
@pytest.mark.parametrize("fam", FAMILIES)
def test_kept_sets_match_reference(fams, single, fam, selection):
    f, s = fams[fam], single[fam]
    cfg = f["hf"].config.text_config
    layout = layout_of(f["model"], s["ids"])
    assert len(layout.visual) == q.n_image_tokens(s["grids"][0])
    for p in KEPT_CASES:
        p = ref.Params(p.policy, p.budget, p.scope, selection, p.options)
        want = ref.plan(s["P"], layout, cfg.num_attention_heads, cfg.num_key_value_heads, p)
        got = plan(f["model"], s, p)
        k = got.visual_kept if p.scope == "visual" else got.total_kept
        np.testing.assert_array_equal(k, want["k"])
        cands = ref.candidates(layout, p.scope)
        for l in range(len(want["k"])):
            pairs = [(list(got.kept[l]), want["kept"][l], want["scores"][l])] if selection == "layer" else \
                [(list(a), b, sc) for a, b, sc in zip(got.kept[l], want["kept"][l], want["scores"][l])]
            for ours, theirs, score in pairs:
                assert ref.explained_by_ties(ours, theirs, score, cands), (p.policy, l)


@pytest.mark.parametrize("fam", FAMILIES)
def test_budget_accounting_every_policy(fams, single, fam):
    f, s = fams[fam], single[fam]
    layout = layout_of(f["model"], s["ids"])
    L = f["hf"].config.text_config.num_hidden_layers
    for policy in ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]:
        for r in [1e-6, 0.1, 0.37]:
            for sel in ["layer", "kv_head"]:
                st = plan(f["model"], s, ref.Params(policy, r, selection=sel))
                assert int(st.visual_kept.sum()) == ref.total_budget(r, len(layout.visual), L), (policy, r)
                for kept in st.kept:  # every text row stays
                    rows = kept if sel == "layer" else kept[0]
                    assert set(range(layout.m)) - set(layout.visual) <= set(rows)


def hf_past(f, s):
    kw = q._mm_inputs(f["hf"], s["ids"], s["pvs"], s["grids"])
    f["hf"].model.rope_deltas = None
    with torch.no_grad():
        past = f["hf"](**kw, use_cache=True).past_key_values
    return [(layer.keys, layer.values) for layer in past.layers]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("policy,budget,selection", [("aircache", 0.15, "layer"), ("vlcache", 0.2, "kv_head"),
                                                    ("random", 0.3, "layer")])
def test_decoding_over_compacted_cache(fams, single, fam, policy, budget, selection):
    f, s = fams[fam], single[fam]
    m, ids = f["model"], s["ids"]
    cont = [300, 17, 42, 301, 99, 5, 7, 250]
    out, st = m.logits(ids + cont, images=[s["image"]], kv_policy=policy, kv_budget=budget, kv_selection=selection,
                       n_prompt=len(ids), return_stats=True)
    assert st.kv_bytes_after < st.kv_bytes_before
    pos0 = int(s["pos"].max()) + 1  # HF's next position: one past the largest (M-RoPE), not len(ids)
    assert pos0 < len(ids)
    want = ref.numpy_decode(f["hf"], hf_past(f, s), st.kept, cont, pos0)
    err = rel_err(out[len(ids):], want)
    print(f"{fam} {policy}/{selection}: relative logit error over the compacted cache {err:.2e}")
    assert err <= 1e-4
    # the reference can tell: the full cache, or the compacted one at index positions, differ
    full = m.logits(ids + cont, images=[s["image"]])[len(ids):]
    assert rel_err(full, want) > 1e-3
    assert rel_err(ref.numpy_decode(f["hf"], hf_past(f, s), st.kept, cont, len(ids)), want) > 1e-3


@pytest.mark.parametrize("fam", FAMILIES)
def test_two_turn_session_over_compacted_cache(fams, single, fam):
    f, s = fams[fam], single[fam]
    m = f["model"]
    sess = m.session(kv_policy="aircache", kv_budget=0.2)
    r1 = sess.send([s["image"], "which shape is on the left of the red one?"], max_tokens=5)
    assert sess.compressed
    n1 = r1.stats.n_prompt
    r2 = sess.send("and on the right?", max_tokens=6)
    ids = sess.ids
    turn1 = dict(s, ids=ids[:n1])  # the session's first prompt (its own rendering of the message)
    assert turn1["ids"].count(m.image_token_id) == q.n_image_tokens(s["grids"][0])
    pos, _ = q.hf_positions(f["hf"], turn1["ids"], s["grids"])
    kept = sess.compression.kept
    want = ref.numpy_decode(f["hf"], hf_past(f, turn1), kept, ids[n1:], int(pos.max()) + 1)  # row j: ids[n1+j+1]
    # every token generated over the compacted cache is the reference's greedy pick
    for j in range(1, len(r1.tokens)):
        assert ids[n1 + j] == r1.tokens[j] == int(np.argmax(want[j - 1]))
    start = len(ids) - (len(r2.tokens) - 1)
    for j, t in enumerate(r2.tokens):
        assert t == int(np.argmax(want[start - 1 - n1 + j])), j


# ------------------------------------------------------------------------------------------------
# templates, limits, errors


def test_chat_template_equals_hf(fams, tiny_qwen2vl):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen2vl))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is here?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "image"},
                                         {"type": "text", "text": "here?"}]}]
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    m = fams["qwen2vl"]["model"]
    assert m.chat_template == "qwen2-vl"  # detected from the file's template
    got = m._engine.render_chat([(x["role"], [(c["type"] == "image", c.get("text", "")) for c in x["content"]])
                                 for x in msgs], "", True)
    assert got.replace("<image>", "<|image_pad|>") == want
    # one image and a prompt without markers: the image first, as HF's template writes [image, text]
    a = img(1, 56, 56)
    ids = m.build_prompt("What is here?", [a])
    text = m.detokenize(ids, skip_special=False)
    assert "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" in text.replace(" \n", "\n").replace("> ", ">")
    assert ids.count(m.image_token_id) == m.n_image_tokens(a)
    vs = ids.index(m.image_token_id)
    assert m.detokenize([ids[vs - 1]], skip_special=False).strip() == "<|vision_start|>"
    q3 = fams["qwen3vl"]["model"]
    assert "You are a helpful assistant" not in q3._engine.render_chat([("user", [(False, "hi")])], "qwen3-vl", True)


def test_token_limits_and_fitting_to_the_context(fams):
    f = fams["qwen2vl"]
    text, mm = f["files"]
    a = img(50, 560, 420)  # 15 x 20 merged tokens at the default limits
    big = ac.Model(text, mmproj=mm, kv_type="f32")
    assert big.n_image_tokens(a) == 300
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    small = ac.Model(text, mmproj=mm, kv_type="f32", image_max_tokens=40)
    h, w = smart_resize(420, 560, 28, 3136, 40 * 28 * 28)  # HF's size for that limit
    assert small.n_image_tokens(a) == (h // 28) * (w // 28) <= 40
    assert ac.Model(text, mmproj=mm, image_min_tokens=64).n_image_tokens(img(1, 20, 30)) >= 64
    # a prompt that does not fit n_ctx: the image is downscaled as a lower image_max_tokens would
    tight = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=128)
    ids = tight.build_prompt("<image> what?", [a])
    assert len(ids) <= 128
    n_img = ids.count(tight.image_token_id)
    assert 0 < n_img < 300
    r = tight.generate(a, "<image> what?", max_tokens=4)
    assert r.stats.n_visual == n_img and r.stats.n_prompt == len(ids)
    # the same image the smaller limit would give
    text_rows = len(ids) - n_img
    capped = ac.Model(text, mmproj=mm, image_max_tokens=(128 - text_rows) * 1)
    assert capped.n_image_tokens(a) == n_img
    # a prompt whose text alone does not fit: an InputError naming the numbers
    with pytest.raises(ac.InputError, match=r"does not fit the context: its text takes \d+ of the 40 positions"):
        ac.Model(text, mmproj=mm, n_ctx=40).generate(a, "<image> " + "word " * 60, max_tokens=1)
    with pytest.raises(ac.InputError, match="image_min_tokens \\(50\\) is above image_max_tokens \\(10\\)"):
        ac.Model(text, mmproj=mm, image_min_tokens=50, image_max_tokens=10)
    with pytest.raises(ac.InputError, match="image_max_tokens must be in"):
        ac.Model(text, mmproj=mm, image_max_tokens=-1)


def test_errors(fams, qwen_converted, converted, gguf_writer):
    text2, mm2 = qwen_converted["qwen2vl-f32"]
    text3, mm3 = qwen_converted["qwen3vl-f32"]
    llava_text, llava_mm = converted[1]["llava-f32"]
    # a qwen2vl text model with the mmproj of another projector, and the other way round
    with pytest.raises(ac.InputError, match="projector mlp.*1-axis positions.*qwen2vl.*3-axis RoPE.*wrong mmproj"):
        ac.Model(text2, mmproj=llava_mm)
    with pytest.raises(ac.InputError, match="qwen2vl_merger.*3-axis positions.*llama.*1-axis"):
        ac.Model(llava_text, mmproj=mm2)
    # Qwen3-VL's DeepStack features without a Qwen3-VL text model, and the reverse
    with pytest.raises(ac.InputError, match="0 DeepStack feature sets but the text model .* takes 2"):
        ac.Model(text3, mmproj=mm2)
    with pytest.raises(ac.InputError, match="2 DeepStack feature sets but the text model .* takes 0"):
        ac.Model(text2, mmproj=mm3)
    # the mixture-of-experts Qwen3-VL

    def moe(w):
        w.add_uint32("qwen3vlmoe.block_count", 1)
        w.add_uint32("qwen3vlmoe.embedding_length", 8)

    with pytest.raises(ac.UnsupportedError, match="'qwen3vlmoe' \\(the mixture-of-experts Qwen3-VL\\) is not supported"):
        ac.Model(gguf_writer(moe, arch="qwen3vlmoe"))
    # a dynamic-resolution model has no default image size
    m = fams["qwen2vl"]["model"]
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.n_image_tokens()
    with pytest.raises(ac.InputError, match="aspect ratio"):
        m.generate(img(1, 3, 900), "<image> hi", max_tokens=1)


@pytest.mark.parametrize("fam", FAMILIES)
def test_device_paths(fams, fam):
    """The device paths without a GPU: the test backend (its own memory, reached only by
    upload/download) runs the tower and the decoder — all layers, part of them (DeepStack crossing
    from device to CPU layers), and with ops declined to the CPU — computing what the CPU does."""
    f = fams[fam]
    images = [img(60, 100, 75), img(61, 224, 168)]
    ids = case_ids(f["model"], images, 6)
    want = f["model"].logits(ids, images=images)
    want_c, st_c = f["model"].logits(ids, images=images, kv_policy="aircache", kv_budget=0.2, n_prompt=len(ids) - 32,
                                     return_stats=True)
    for dev, ngl in [("test", -1), ("test", 1), ("test:decline=rope+attention+glu", -1)]:
        m = load(f["files"], fam, kv_type="f32", n_ctx=1024, device=dev, n_gpu_layers=ngl)
        assert rel_err(m.logits(ids, images=images), want) <= 1e-5, (dev, ngl)
        got, st = m.logits(ids, images=images, kv_policy="aircache", kv_budget=0.2, n_prompt=len(ids) - 32,
                           return_stats=True)
        assert rel_err(got, want_c) <= 1e-5, (dev, ngl)
        assert all(list(a) == list(b) for a, b in zip(st.kept, st_c.kept))


def test_cli(fams, tmp_path):
    import subprocess

    f = fams["qwen25vl"]
    text, mm = f["files"]
    a = img(70, 150, 110)
    png = tmp_path / "a.png"
    Image.fromarray(a).save(png)
    lim = limits("qwen25vl")
    r = f["model"].generate(a, "What is here?", max_tokens=6)
    cli = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "--image", str(png), "-p", "What is here?", "-n",
                          "6", "--kv-type", "f32", "-c", "1024", "--image-min-tokens", str(lim["image_min_tokens"]),
                          "--image-max-tokens", str(lim["image_max_tokens"]), "--verbose"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == r.text + "\n"
    assert "projector qwen2.5vl_merger" in cli.stderr
    bad = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "-p", "x", "--image-max-tokens", "many"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--image-max-tokens" in bad.stderr


def test_image_that_cannot_be_encoded(fams, monkeypatch):
    """The tower's working memory grows with the image (dynamic resolution): an image whose
    activations exceed the memory available is refused before the tower allocates, naming its grid."""
    m = fams["qwen3vl"]["model"]
    a = img(80, 500, 380)
    monkeypatch.setenv("AIRCACHE_MEMORY_LIMIT", "16K")
    with pytest.raises(MemoryError, match=r"encoding an image \(\d+x\d+ patches, \d+ tokens\) needs [\d.]+ [KM]iB of "
                                          r"working memory on cpu but [\d.]+ KiB is available"):
        m.generate(a, "What is here?", max_tokens=2)
    monkeypatch.delenv("AIRCACHE_MEMORY_LIMIT")
    assert m.generate(a, "What is here?", max_tokens=2).stats.n_generated >= 1
