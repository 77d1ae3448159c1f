"""LLaVA-NeXT (1.6) end to end against HF transformers, on a tiny random-weight
LlavaNextForConditionalGeneration (tests/hf_llava_next_fixtures.py: Mistral text of 2 layers, CLIP tower
of 3 layers with 48 px tiles of 8 px patches, llava-1.6's grid pinpoints scaled to 48 px) converted by
llama.cpp's own legacy route (tools/llamacpp_fixtures.py convert_llava_next: the language model exported
and converted by convert_hf_to_gguf.py, the image encoder by llava_surgery_v2.py +
convert_image_encoder_to_gguf.py, which writes the projector matrices and the patch embedding as F16
even for F32 files: the HF reference has those weights rounded to F16 where F32 files are compared):

- pixel values (best grid, resize + black pad, tiles, the stretched base image) and the number of image
  tokens per image equal HF's for wide, tall, small (the orientation tie), square and large images;
- the packed image features (base first, the unpadded rows each followed by the learned newline);
- prompt ids equal LlavaNextProcessor's (llava-1.6-mistral's chat template); prompt + 32 teacher-forced
  tokens: logits equal HF's with F32 files (F32 / F16 cache) and F16 files, one image, two, text only;
  greedy generation; the chat templates; device paths (test backend); the CLI; hyperparameter errors;
- compression: the candidates are the image's feature rows only (the newline rows are text, kept in
  `visual` scope), exact budgets for every policy, kept sets equal the numpy reference from HF's eager
  attentions, decoding over the compacted cache equals a numpy decoder over HF's KV."""

import copy
import subprocess

import gguf
import numpy as np
import pytest
import torch
from PIL import Image

import aircache_cpp as ac
import compress_reference as ref
import hf_llava_next_fixtures as N
from gguf_fixtures import rewrite_gguf

QUESTION = "what is in the picture, and where is it?"


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def f16_rounded(model):
    """HF's model with the weights the legacy image-encoder converter always writes as F16 (the 2-D
    projector matrices, the 4-D patch embedding) rounded to F16."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.weight",
                              "patch_embedding.weight")):
                p.copy_(p.half().float())
    return m


@pytest.fixture(scope="module")
def nxt(llava_next_converted, tiny_llava_next):
    hf = N.load_llava_next(str(tiny_llava_next))
    files = {"f32": llava_next_converted["llava-next-f32"], "f16": llava_next_converted["llava-next-f16"]}
    text, mm = files["f32"]
    return {"hf": hf, "hf16": f16_rounded(hf), "proc": N.load_processor(str(tiny_llava_next)), "dir": tiny_llava_next,
            "files": files, "model": ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024)}


def hf_chat_text(nxt, n_images, question=QUESTION):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return nxt["proc"].tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                     add_generation_prompt=True)


def hf_inputs(nxt, images, question=QUESTION):
    return N.hf_prompt_ids(nxt["proc"], hf_chat_text(nxt, len(images), question), [Image.fromarray(a) for a in images])


# ------------------------------------------------------------------------------------------------
# preprocessing, token counts, features

# (w, h) -> HF's grid (rows, cols); llama.cpp's count differs for each (no unpadding, no newlines, no
# tiles at all for images up to one tile a side)
SIZES = {"square": ((100, 100), (2, 2)), "wide": ((150, 50), (1, 3)), "tall": ((50, 140), (3, 1)),
         "small": ((30, 20), (1, 2)), "small-tall (orientation tie)": ((20, 30), (1, 2)),
         "landscape": ((130, 90), (2, 2)), "large": ((333, 251), (2, 2)), "one tile": ((48, 48), (1, 2)),
         # slivers keep no pixel in any grid: HF takes the least wasteful one and unpads to no feature row
         # (only the base image) or to rows of newlines only
         "wide sliver": ((400, 1), (1, 2)), "tall sliver": ((1, 400), (1, 2))}


def test_pixel_values_token_counts_and_features(nxt):
    m, hf16 = nxt["model"], nxt["hf16"]
    for i, (name, ((w, h), (rows, cols))) in enumerate(SIZES.items()):
        a = img(i, w, h)
        pv, size = N.hf_pixel_values(nxt["dir"], Image.fromarray(a))
        assert pv.shape[0] == rows * cols + 1, name  # the case really tiles as intended
        got = m.pixel_values(a)
        assert got.shape == (pv.shape[0] * 3 * N.TILE, N.TILE)
        err = float(np.abs(got.reshape(pv.shape) - pv).max())
        assert err <= 1e-6, (name, err)
        ids, _, _ = hf_inputs(nxt, [a])
        n_hf = ids.count(m.image_token_id)
        assert m.n_image_tokens(a) == n_hf, name
        feat = N.hf_image_features(hf16, pv[None], np.array([size]))[0]
        assert feat.shape[0] == n_hf
        ours = m.encode_image(a)
        ferr = rel_err(ours, feat)
        print(f"llava-next {name} {w}x{h} ({rows}x{cols} tiles + base): {n_hf} tokens, pixel error {err:.1e}, "
              f"feature error {ferr:.2e}")
        assert ferr <= 1e-4


def test_packing_layout(nxt):
    """The base image's 36 rows first, then each kept row of the unpadded map ended by the newline
    (exactly the file's image_newline), as many rows as HF unpads to: a 130x90 image fills the 2x2
    grid's width, its 12-row feature map keeps int(round(90 * 12 / 130)) = 8 -> rows 2..9 (8 rows of 12
    features + newline)."""
    m, hf = nxt["model"], nxt["hf"]
    a = img(3, 130, 90)
    e = m.encode_image(a)
    side = N.SIDE
    assert e.shape[0] == side * side + 8 * (12 + 1)
    nl = hf.model.image_newline.detach().numpy()
    rows = e[side * side:].reshape(8, 13, -1)
    assert np.array_equal(rows[:, 12], np.broadcast_to(nl, (8, nl.size)))  # F32 in the file: exact
    assert not np.isclose(rows[:, :12], nl).all(-1).any()
    # the reference can tell the base image from the tiles, and the tiles' order
    pv, size = N.hf_pixel_values(nxt["dir"], Image.fromarray(a))
    swapped = pv[[0, 2, 1, 3, 4]]
    assert rel_err(e, N.hf_image_features(nxt["hf16"], swapped[None], np.array([size]))[0]) > 1e-2


def test_features_without_the_feature_layer_key(nxt, tmp_path):
    """Without clip.vision.feature_layer (older legacy files) the tower runs the stored layers (n - 1):
    the same hidden state, the same features."""
    text, mm = nxt["files"]["f32"]
    path = rewrite_gguf(mm, str(tmp_path / "nofl.gguf"), kv={"clip.vision.feature_layer": None})
    a = img(4, 120, 70)
    assert np.array_equal(ac.Model(text, mmproj=path).encode_image(a), nxt["model"].encode_image(a))


def test_what_the_converter_writes(nxt):
    """llama.cpp's legacy route as the fixture ran it: the anyres keys from the vit config, HF's (height,
    width) pinpoints flat in their order, the feature layer (n - 1 layers stored), the newline F32 under
    the surgery script's name, the projector matrices and patch embedding F16 even in the F32 file; the
    language model (exported on its own) as arch llama with llava-1.6-mistral's template."""
    text, mm = nxt["files"]["f32"]
    md = ac.gguf_info(mm).metadata
    assert list(md["clip.vision.image_grid_pinpoints"]) == [x for p in N.PINPOINTS for x in p]
    assert md["clip.vision.mm_patch_merge_type"] == "spatial_unpad" and md["clip.vision.image_aspect_ratio"] == "anyres"
    assert list(md["clip.vision.feature_layer"]) == [2] and md["clip.vision.block_count"] == 2
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(mm).tensors}
    assert types["model.image_newline"] == "F32" and types["v.class_embd"] == "F32"
    assert types["mm.0.weight"] == types["mm.2.weight"] == types["v.patch_embd.weight"] == "F16"
    assert "v.image_newline" not in types
    tmd = ac.gguf_info(text).metadata
    assert tmd["general.architecture"] == "llama" and "[INST]" in tmd["tokenizer.chat_template"]
    assert "output.weight" in {t.name for t in gguf.GGUFReader(text).tensors}  # untied: the lm_head came along


# ------------------------------------------------------------------------------------------------
# prompts and logits

CASES = {"one-image": [(130, 90)], "two-images": [(150, 50), (40, 60)], "text-only": []}


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_and_logits_equal_hf(nxt, case):
    m = nxt["model"]
    images = [img(20 + i, w, h) for i, (w, h) in enumerate(CASES[case])]
    want_ids, pv, sizes = hf_inputs(nxt, images)
    ids = m.build_prompt(QUESTION, images)
    assert m.chat_template == "llava-next-mistral"  # from the file's "[INST]" template
    assert ids == want_ids
    assert ids.count(m.image_token_id) == sum(m.n_image_tokens(a) for a in images)
    ids = ids + np.random.default_rng(3).integers(3, m.image_token_id, 32).tolist()
    want = N.hf_logits(nxt["hf16"], ids, pv, sizes)
    text32, mm32 = nxt["files"]["f32"]
    for kv, tol in [("f32", 1e-4), ("f16", 5e-3)]:
        mm = m if kv == "f32" else ac.Model(text32, mmproj=mm32, kv_type="f16", n_ctx=1024)
        err = rel_err(mm.logits(ids, images=images), want)
        print(f"llava-next {case} F32 files, KV {kv}: relative logit error {err:.2e}")
        assert err <= tol
    text16, mm16 = nxt["files"]["f16"]
    err = rel_err(ac.Model(text16, mmproj=mm16, n_ctx=1024).logits(ids, images=images),
                  N.hf_logits(nxt["hf"], ids, pv, sizes))
    print(f"llava-next {case} F16 files: relative logit error {err:.2e} (vs HF's F32 weights)")
    assert err <= 2e-2


def test_greedy_generation_equals_hf(nxt):
    m = nxt["model"]
    a = img(31, 120, 90)
    ids, pv, sizes = hf_inputs(nxt, [a], "what shape is it?")
    want = N.hf_greedy(nxt["hf16"], ids, pv, sizes, n_new=10, stop=[2])
    r = m.generate(a, "what shape is it?", max_tokens=10)
    assert r.tokens == want[:len(r.tokens)] and len(r.tokens) >= 1
    assert r.stats.n_images == 1 and r.stats.n_prompt == len(ids)
    # the statistics count the image's feature rows as visual, not its newline rows: 120x90 fills the
    # 2x2 grid's width, its 12 x 12 feature map keeps 10 rows (int(round(90 * 12 / 120)) = 9, (12 - 9) // 2
    # = 1 row off each side)
    assert m.n_image_tokens(a) == 36 + 10 * 13 and r.stats.n_visual == 36 + 10 * 12


def test_chat_templates_equal_hf(nxt):
    tok = nxt["proc"].tokenizer
    eng = nxt["model"]._engine
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is here? "}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]}]
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ours = [(x["role"], [(c["type"] == "image", c.get("text", "")) for c in x["content"]]) for x in msgs]
    assert eng.render_chat(ours, "", True) == want
    # Vicuna: llava-v1.6-vicuna-hf's template is LLaVA-1.5's (`llava`); `vicuna-v1` is it with LLaVA's
    # default system message first, as the model cards write the prompt
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    sys_msg = [{"role": "system", "content": [{"type": "text", "text": system}]}]
    vic = copy.copy(tok)
    vic.chat_template = N.VICUNA_CHAT_TEMPLATE  # llava-v1.6-vicuna-7b-hf's own
    assert eng.render_chat([("user", [(True, ""), (False, "What is it?")])], "vicuna-v1", True) == \
        vic.apply_chat_template(sys_msg + conv, tokenize=False, add_generation_prompt=True)
    assert eng.render_chat([("user", [(True, ""), (False, "What is it?")])], "llava", True) == \
        vic.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    m = nxt["model"]
    a = img(32, 60, 60)
    want, _, _ = N.hf_prompt_ids(nxt["proc"], vic.apply_chat_template(sys_msg + conv, tokenize=False,
                                                                      add_generation_prompt=True), [Image.fromarray(a)])
    assert m.build_prompt("What is it?", [a], chat_template="vicuna-v1") == want
    with pytest.raises(ac.InputError, match="llava-next-mistral, vicuna-v1"):
        m.build_prompt("hi", chat_template="nope")


def test_session_turns(nxt):
    """Two turns: the second appended to the first's cache equals one HF forward over the whole
    conversation (llava-1.6-mistral's "</s> " closes the first answer)."""
    m = nxt["model"]
    a = img(34, 80, 100)
    s = m.session()
    r1 = s.send([a, "what is it?"], max_tokens=4)
    s.send("and the colour?", max_tokens=4)
    ids = s.ids
    first, pv, sizes = hf_inputs(nxt, [a], "what is it?")
    n1 = r1.stats.n_prompt
    assert ids[:n1] == first and ids[n1:n1 + len(r1.tokens)] == r1.tokens
    # the answer closed by "</s> " (its EOS token, then " [INST]...")
    rest = ids[n1 + len(r1.tokens):]
    assert rest[0] == 2 and m.detokenize(rest[1:]).startswith(" [INST] and the colour? [/INST]")
    err = rel_err(m.logits(ids, images=[a]), N.hf_logits(nxt["hf16"], ids, pv, sizes))
    print(f"llava-next session of two turns: relative logit error {err:.2e}")
    assert err <= 1e-4


# ------------------------------------------------------------------------------------------------
# device paths, CLI, errors


def test_device_paths(nxt):
    text, mm = nxt["files"]["f32"]
    images = [img(40, 100, 75), img(41, 40, 110)]
    ids = nxt["model"].build_prompt("what is it", images) + list(range(50, 70))
    want = nxt["model"].logits(ids, images=images)
    for dev, ngl in [("test", -1), ("test", 1), ("test:decline=attention+glu", -1)]:
        m = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024, device=dev, n_gpu_layers=ngl)
        assert rel_err(m.logits(ids, images=images), want) <= 1e-5, (dev, ngl)
        on_dev = {op for b, op, _ in m._engine.ops_used if b != "cpu"}
        # the tower on the device (the legacy converter's F16 patch embedding may run on the CPU)
        assert "layer_norm" in on_dev and ("attention" in on_dev) == ("attention" not in dev)


def test_cli(nxt, tmp_path):
    text, mm = nxt["files"]["f32"]
    a = img(70, 150, 110)
    png = tmp_path / "a.png"
    Image.fromarray(a).save(png)
    r = nxt["model"].generate(a, "What is here?", max_tokens=6)
    cli = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "--image", str(png), "-p", "What is here?", "-n",
                          "6", "--kv-type", "f32", "-c", "1024", "--verbose"], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == r.text + "\n"
    assert "projector mlp" in cli.stderr and "anyres" in cli.stderr and "chat template llava-next-mistral" in cli.stderr


def _i32(v):
    return (v, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)


def _str(v):
    return (v, gguf.GGUFValueType.STRING)


PIN = "clip.vision.image_grid_pinpoints"


@pytest.mark.parametrize("what,kv,tensors,err,match", [
    ("odd pinpoint count", {PIN: _i32([48, 96, 96])}, None, ac.FormatError,
     f"key '{PIN}' has 3 values: expected \\(height, width\\) pairs"),
    ("pinpoint not a tile multiple", {PIN: _i32([48, 96, 50, 48])}, None, ac.FormatError,
     f"key '{PIN}' lists \\(50, 48\\): pinpoints are positive multiples of the 48 px tile"),
    ("zero pinpoint", {PIN: _i32([0, 48])}, None, ac.FormatError, f"key '{PIN}' lists \\(0, 48\\)"),
    ("too many tiles", {PIN: _i32([48 * 9, 48 * 8])}, None, ac.FormatError,
     f"key '{PIN}' lists \\(432, 384\\): 9 x 8 tiles of 48 px \\(at most 64"),
    ("pinpoints not integers", {PIN: ([48.0, 96.0], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)}, None,
     ac.FormatError, PIN),
    ("flat merge", {"clip.vision.mm_patch_merge_type": _str("flat")}, None, ac.UnsupportedError,
     "key 'clip.vision.mm_patch_merge_type' is 'flat'; only 'spatial_unpad'"),
    ("anyres_max", {"clip.vision.image_aspect_ratio": _str("anyres_max_9")}, None, ac.UnsupportedError,
     "key 'clip.vision.image_aspect_ratio' is 'anyres_max_9'; only 'anyres'"),
    ("projector type", {"clip.vision.mm_projector_type": _str("mlp3x_gelu")}, None, ac.UnsupportedError,
     "key 'clip.vision.mm_projector_type' is 'mlp3x_gelu'"),
    ("no newline", None, lambda n, a, t: None if n == "model.image_newline" else (n, a, t), ac.FormatError,
     "no image newline tensor \\('model.image_newline' or 'v.image_newline'\\)"),
    ("newline of the wrong width", None,
     lambda n, a, t: (n, a[:32].copy(), t) if n == "model.image_newline" else (n, a, t), ac.FormatError,
     "tensor 'model.image_newline' has shape \\[32\\], expected 64 elements"),
    ("newline not finite", None,
     lambda n, a, t: (n, np.where(np.arange(a.size) == 5, np.inf, a).astype(a.dtype), t)
     if n == "model.image_newline" else (n, a, t), ac.FormatError, "model.image_newline"),
    ("no class token", None, lambda n, a, t: None if n == "v.class_embd" else (n, a[1:].copy(), t)
     if n == "v.position_embd.weight" else (n, a, t), ac.FormatError, "tower has a class token .* no 'v.class_embd'"),
    ("feature layer beyond the tower", {"clip.vision.feature_layer": _i32([5])}, None, ac.FormatError,
     "clip.vision.feature_layer lists hidden state 5; the file stores 2 layers"),
])
def test_bad_mmproj_hyperparameters(nxt, tmp_path, what, kv, tensors, err, match):
    text, mm = nxt["files"]["f32"]
    bad = rewrite_gguf(mm, str(tmp_path / "bad.gguf"), kv=kv, tensors=tensors)
    with pytest.raises(err, match=match):
        ac.Model(text, mmproj=bad)


def test_newline_under_the_new_name(nxt, tmp_path):
    """Newer converters name the newline 'v.image_newline' (gguf-py's V_ENC_EMBD_IMGNL): the same model."""
    text, mm = nxt["files"]["f32"]
    path = rewrite_gguf(mm, str(tmp_path / "v.gguf"),
                        tensors=lambda n, a, t: ("v.image_newline" if n == "model.image_newline" else n, a, t))
    a = img(5, 90, 100)
    assert np.array_equal(ac.Model(text, mmproj=path).encode_image(a), nxt["model"].encode_image(a))


def test_input_errors(nxt):
    m = nxt["model"]
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.n_image_tokens()
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.build_prompt("hi", 1)
    a = img(2, 100, 75)
    ids = m.build_prompt("hi", [a])
    with pytest.raises(ac.InputError, match="image positions"):
        m.logits(ids[:-3] + [m.image_token_id] * 3, images=[a])


# ------------------------------------------------------------------------------------------------
# compression


@pytest.fixture(scope="module")
def single(nxt):
    """A one-image prompt (130x90: 36 base rows + 8 rows of 12 features and a newline), HF's
    attentions over it (the F16-rounded reference, as the F32 files hold it)."""
    a = img(40, 130, 90)
    ids, pv, sizes = hf_inputs(nxt, [a], "which shape is on the left of the red one?")
    att, _ = N.hf_attentions(nxt["hf16"], ids, pv, sizes)
    return {"ids": ids, "image": a, "P": [x.astype(np.float64) for x in att], "pv": pv, "sizes": sizes}


def layout_of(m, s):
    """The reference's layout: the image's rows minus its newline rows (the last of every 13 after the
    36 base rows)."""
    ids = s["ids"]
    first = ids.index(m.image_token_id)
    n = ids.count(m.image_token_id)
    side2 = N.SIDE * N.SIDE
    newline = {first + side2 + 12 + 13 * k for k in range((n - side2) // 13)}
    return ref.Layout(m=len(ids), visual=[i for i in range(first, first + n) if i not in newline])


def plan(m, s, p: ref.Params):
    _, st = m.logits(s["ids"], images=[s["image"]], kv_policy=p.policy, kv_budget=p.budget, kv_scope=p.scope,
                     kv_selection=p.selection, kv_options=dict(p.options), return_stats=True)
    return st


def test_layout_counts_only_feature_rows(nxt, single):
    m = nxt["model"]
    layout = layout_of(m, single)
    assert single["ids"].count(m.image_token_id) == 140 and len(layout.visual) == 36 + 8 * 12
    L = nxt["hf"].config.text_config.num_hidden_layers
    st = plan(m, single, ref.Params("random", 0.25))
    assert int(st.visual_kept.sum()) == ref.total_budget(0.25, 132, L)
    newline_rows = set(i for i, x in enumerate(single["ids"]) if x == m.image_token_id) - set(layout.visual)
    for kept in st.kept:
        assert newline_rows <= set(kept)  # text: always kept in visual scope


def test_budget_accounting_every_policy(nxt, single):
    m = nxt["model"]
    layout = layout_of(m, single)
    L = nxt["hf"].config.text_config.num_hidden_layers
    text_rows = set(range(layout.m)) - set(layout.visual)  # the newline rows included
    for policy in ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]:
        for r in [1e-6, 0.1, 0.37]:
            for sel in ["layer", "kv_head"]:
                st = plan(m, single, ref.Params(policy, r, selection=sel))
                assert int(st.visual_kept.sum()) == ref.total_budget(r, len(layout.visual), L), (policy, r, sel)
                for kept in st.kept:
                    for rows in ([kept] if sel == "layer" else kept):
                        assert text_rows <= set(rows), (policy, r, sel)


KEPT_CASES = [ref.Params("aircache", 0.2), ref.Params("vlcache", 0.2), ref.Params("vlcache", 0.3, "all"),
              ref.Params("snapkv", 0.2, options={"snap_window": 8}), ref.Params("pyramidkv", 0.3),
              ref.Params("h2o", 0.25), ref.Params("h2o", 0.3, "all")]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
def test_kept_sets_match_reference(nxt, single, selection):
    cfg = nxt["hf"].config.text_config
    m = nxt["model"]
    layout = layout_of(m, single)
    for p in KEPT_CASES:
        p = ref.Params(p.policy, p.budget, p.scope, selection, p.options)
        want = ref.plan(single["P"], layout, cfg.num_attention_heads, cfg.num_key_value_heads, p)
        got = plan(m, single, p)
        k = got.visual_kept if p.scope == "visual" else got.total_kept
        np.testing.assert_array_equal(k, want["k"])
        cands = ref.candidates(layout, p.scope)
        for l in range(len(want["k"])):
            pairs = [(list(got.kept[l]), want["kept"][l], want["scores"][l])] if selection == "layer" else \
                [(list(a), b, sc) for a, b, sc in zip(got.kept[l], want["kept"][l], want["scores"][l])]
            for ours, theirs, score in pairs:
                assert ref.explained_by_ties(ours, theirs, score, cands), (p.policy, p.scope, l)


@pytest.mark.parametrize("policy,budget,selection", [("aircache", 0.15, "layer"), ("vlcache", 0.2, "kv_head"),
                                                    ("snapkv", 0.25, "layer")])
def test_decoding_over_compacted_cache(nxt, single, policy, budget, selection):
    m, ids = nxt["model"], single["ids"]
    cont = [300, 17, 42, 301, 99, 5, 7, 250]
    out, st = m.logits(ids + cont, images=[single["image"]], kv_policy=policy, kv_budget=budget,
                       kv_selection=selection, n_prompt=len(ids), return_stats=True)
    assert st.kv_bytes_after < st.kv_bytes_before
    past = N.hf_past(nxt["hf16"], ids, single["pv"], single["sizes"])
    want = ref.numpy_decode(nxt["hf16"], past, st.kept, cont, len(ids))  # 1-D positions: the indices
    err = rel_err(out[len(ids):], want)
    print(f"llava-next {policy}/{selection}: relative logit error over the compacted cache {err:.2e}")
    assert err <= 1e-4
    full = m.logits(ids + cont, images=[single["image"]])[len(ids):]
    assert rel_err(full, want) > 1e-3  # the reference can tell
