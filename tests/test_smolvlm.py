"""SmolVLM / SmolVLM2 end to end against HF transformers, on a tiny random-weight
SmolVLMForConditionalGeneration (tests/hf_smolvlm_fixtures.py: llama text of 2 layers, SigLIP tower,
64 px tiles of 8 px patches, pixel shuffle 2 -> 16 tokens per tile, images up to 128 px = 2 x 2 tiles
+ the global view) converted by llama.cpp's convert_hf_to_gguf.py (tests/conftest.py `vlm_converted`):

- pixel values (the LANCZOS resizes, the tiling of square, wide and tall images, the global view;
  an image that fits one tile is not split) and image features (SigLIP per tile, pixel shuffle,
  connector) equal HF's;
- the prompt ids equal the real SmolVLMProcessor's (chat template, each image's tile markers, rows,
  global view) for one and two images; prompt + 32 teacher-forced tokens: logits equal HF's at the
  F32 / F16 cache and with F16 files; greedy generation equals HF's;
- the device paths (test backend), the CLI, clear errors for bad mmproj hyperparameters;
- compression: only the <image> rows are candidates (the tile markers are text rows, always kept),
  every policy's budget is exact, kept sets equal the numpy reference from HF's eager attentions,
  decoding over the compacted cache equals a numpy decoder over HF's KV restricted to the kept rows."""

import subprocess

import gguf
import numpy as np
import pytest
import torch
from PIL import Image

import aircache_cpp as ac
import compress_reference as ref
import hf_smolvlm_fixtures as S
from gguf_fixtures import rewrite_gguf

TILE_TOKENS = S.IMAGE_SEQ_LEN  # 16


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def smol(vlm_converted, tiny_smolvlm):
    text, mm = vlm_converted["smolvlm-f32"]
    return {"hf": S.load_smolvlm(str(tiny_smolvlm)), "proc": S.load_smol_processor(str(tiny_smolvlm)),
            "files": vlm_converted, "dir": tiny_smolvlm, "model": ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024)}


def hf_chat_text(smol, n_images, question):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return smol["proc"].tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)


def hf_inputs(smol, question, images):
    """(ids, pixel_values, pixel_attention_mask) of the real SmolVLMProcessor for one user message."""
    return S.hf_prompt_ids(smol["proc"], hf_chat_text(smol, len(images), question),
                           [Image.fromarray(a) for a in images])


# ------------------------------------------------------------------------------------------------
# preprocessing and the vision tower

# (w, h) -> HF's (rows, cols): square, wide, tall, small (enlarged), large, nearly square
SIZES = [((64, 64), (2, 2)), ((200, 60), (1, 2)), ((30, 90), (2, 1)), ((20, 24), (2, 2)), ((640, 300), (1, 2)), ((640, 330), (2, 2)),
         ((301, 300), (2, 2)), ((100, 75), (2, 2))]


def test_pixel_values_and_features(smol):
    m = smol["model"]
    for i, ((w, h), (rows, cols)) in enumerate(SIZES):
        a = img(i, w, h)
        pv, mask, r, c = S.hf_pixel_values(Image.fromarray(a))
        assert (r, c) == (rows, cols), (w, h)  # the cases really tile as intended
        assert pv.shape[0] == rows * cols + 1 and mask.all()
        got = m.pixel_values(a)
        assert got.shape == (pv.shape[0] * 3 * 64, 64)
        err = float(np.abs(got.reshape(pv.shape) - pv).max())
        assert err <= 1e-6, (w, h, err)
        assert m.n_image_tokens(a) == (rows * cols + 1) * TILE_TOKENS
        feat = S.hf_image_features(smol["hf"], pv)
        ferr = rel_err(m.encode_image(a), feat)
        print(f"smolvlm {w}x{h} ({rows}x{cols} tiles + global): pixel error {err:.1e}, feature error {ferr:.2e}")
        assert ferr <= 1e-4


def test_tiles_are_in_hf_order(smol):
    """A wide image's two tiles and the global view are different pictures, in HF's order: swapping
    tiles in the reference is detected."""
    a = img(5, 200, 60)
    pv, _, _, _ = S.hf_pixel_values(Image.fromarray(a))
    got = smol["model"].pixel_values(a).reshape(pv.shape)
    assert np.abs(pv[0] - pv[1]).max() > 0.5 and np.abs(pv[1] - pv[2]).max() > 0.5
    assert np.abs(got - pv[[1, 0, 2]]).max() > 0.5


def test_unsplit_image(smol, tmp_path):
    """With HF's longest_edge equal to the tile (clip.vision.preproc_image_size = image_size) nothing is
    split: one tile, `<fake_token_around_image><global-img>` + 16 <image> + `<fake_token_around_image>`
    (llama.cpp would still make a slice and an overview)."""
    text, mm = smol["files"]["smolvlm-f32"]
    mm64 = rewrite_gguf(mm, str(tmp_path / "mm64.gguf"),
                        kv={"clip.vision.preproc_image_size": (64, gguf.GGUFValueType.UINT32)})
    m = ac.Model(text, mmproj=mm64, kv_type="f32", n_ctx=512)
    proc = S.load_smol_processor(str(smol["dir"]))
    proc.image_processor.size = {"longest_edge": 64}
    a = img(7, 100, 75)
    pv, mask, r, c = S.hf_pixel_values(Image.fromarray(a), dict(S.SMOLVLM_PROC, longest_edge=64))
    assert (r, c) == (0, 0) and pv.shape[0] == 1
    assert np.abs(m.pixel_values(a).reshape(pv.shape) - pv).max() <= 1e-6
    assert m.n_image_tokens(a) == TILE_TOKENS
    want, pv2, mask2 = S.hf_prompt_ids(proc, hf_chat_text(smol, 1, "what is it?"), [Image.fromarray(a)])
    ids = m.build_prompt("what is it?", [a])
    assert ids == want
    ids_fake = [i for i in ids if i != m.image_token_id]
    fake, glob = m.tokenize("<fake_token_around_image><global-img>", add_bos=False)
    assert ids_fake.count(fake) == 2 and ids_fake.count(glob) == 1
    ids = ids + list(range(50, 70))
    err = rel_err(m.logits(ids, images=[a]), S.hf_logits(smol["hf"], ids, pv2, mask2))
    print(f"smolvlm unsplit image: relative logit error {err:.2e}")
    assert err <= 1e-4


def test_tiles_with_a_patch_remainder(smol, smol_spm, tmp_path_factory):
    """SmolVLM2-2.2B's tiles are 384 px of 14 px patches: 27 x 27, the last 6 px left out by the strided
    conv. The same here with 68 px tiles of 8 px patches (8 x 8, 4 px left): another tiny model, its
    mmproj converted by llama.cpp, features equal HF's."""
    import llamacpp_fixtures as lf

    d = tmp_path_factory.mktemp("hf-smolvlm-68")
    hf = S.make_tiny_smolvlm(str(d), smol_spm, seed=43, vision={"image_size": 68})
    proc = dict(S.SMOLVLM_PROC, tile=68, longest_edge=136)
    S.save_smol_preprocessor(str(d), proc)
    mm = lf.convert_mmproj(d, d / "mmproj-f32.gguf", "f32")
    m = ac.Model(smol["files"]["smolvlm-f32"][0], mmproj=mm, kv_type="f32")
    for i, (w, h) in enumerate([(100, 75), (50, 140)]):
        a = img(60 + i, w, h)
        pv, _, rows, cols = S.hf_pixel_values(Image.fromarray(a), proc)
        assert pv.shape[1:] == (3, 68, 68) and rows * cols > 1
        assert np.abs(m.pixel_values(a).reshape(pv.shape) - pv).max() <= 1e-6
        err = rel_err(m.encode_image(a), S.hf_image_features(hf.eval(), pv))
        print(f"smolvlm 68 px tiles of 8 px patches, {w}x{h}: feature error {err:.2e}")
        assert err <= 1e-4


# ------------------------------------------------------------------------------------------------
# prompts and logits


CASES = {"one-image": [(100, 75)], "two-images": [(100, 75), (50, 90)], "text-only": []}


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_and_logits_equal_hf(smol, case):
    m = smol["model"]
    images = [img(20 + i, w, h) for i, (w, h) in enumerate(CASES[case])]
    question = "what is in the picture, and where is it?"
    want_ids, pv, mask = hf_inputs(smol, question, images)
    ids = m.build_prompt(question, images)
    assert m.chat_template == "smolvlm"
    assert ids == want_ids  # the template, each image's tiles with their markers, the tokenizer
    assert ids.count(m.image_token_id) == sum(m.n_image_tokens(a) for a in images)
    ids = ids + np.random.default_rng(3).integers(3, m.n_vocab, 32).tolist()
    ref_logits = S.hf_logits(smol["hf"], ids, pv, mask)
    text32, mm32 = smol["files"]["smolvlm-f32"]
    for kv, tol in [("f32", 1e-4), ("f16", 5e-3)]:
        mm = m if kv == "f32" else ac.Model(text32, mmproj=mm32, kv_type="f16", n_ctx=1024)
        err = rel_err(mm.logits(ids, images=images), ref_logits)
        print(f"smolvlm {case} KV {kv}: relative logit error {err:.2e}")
        assert err <= tol
    text16, mm16 = smol["files"]["smolvlm-f16"]
    err = rel_err(ac.Model(text16, mmproj=mm16, n_ctx=1024).logits(ids, images=images), ref_logits)
    print(f"smolvlm {case} F16 files: relative logit error {err:.2e}")
    assert err <= 2e-2


def test_order_and_markers_matter(smol):
    """The reference can tell the images' tiles apart (their features in the other image's place give
    other logits), and a changed tile marker inside an image is refused."""
    m = smol["model"]
    images = [img(22, 100, 75), img(23, 50, 90)]  # 2 x 2 tiles + global each
    ids, pv, mask = hf_inputs(smol, "describe both", images)
    assert pv.shape[0] == 10
    ours = m.logits(ids, images=images)
    assert rel_err(ours, S.hf_logits(smol["hf"], ids, pv, mask)) <= 1e-4
    assert rel_err(ours, S.hf_logits(smol["hf"], ids, np.concatenate([pv[5:], pv[:5]]))) > 1e-3
    row_1_col_2 = m.tokenize("<row_1_col_2>", add_bos=False)[0]
    at = ids.index(row_1_col_2)  # between the first image's first two tiles
    assert ids[at - 2] == ids[at + 1] == m.image_token_id
    with pytest.raises(ac.InputError, match=f"position {at} holds id 7 where the image needs {row_1_col_2}"):
        m.logits(ids[:at] + [7] + ids[at + 1:], images=images)


def test_greedy_generation_equals_hf(smol):
    m = smol["model"]
    a = img(31, 120, 70)
    ids, pv, mask = hf_inputs(smol, "what shape is it?", [a])
    want = S.hf_greedy(smol["hf"], ids, pv, mask, n_new=10, stop=[m.tokenize("<end_of_utterance>", add_bos=False)[0]])
    r = m.generate(a, "what shape is it?", max_tokens=10)
    assert r.tokens == want[:len(r.tokens)] and len(r.tokens) >= 1
    assert r.stats.n_visual == m.n_image_tokens(a)


def test_chat_template_equals_hf(smol):
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is here? "}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "image"},
                                         {"type": "text", "text": "this?"}]}]
    tok = smol["proc"].tokenizer
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    eng = smol["model"]._engine
    got = eng.render_chat([(x["role"], [(c["type"] == "image", c.get("text", "")) for c in x["content"]])
                           for x in msgs], "", True)
    assert got == want
    # a session's second turn continues without <|im_start|>, after the answer's <end_of_utterance>\n
    cont = eng.render_chat([("user", [(False, "And this?")])], "", True)
    assert cont.startswith("<|im_start|>User: ")
    # the template by name on a file without it, and chat() with an image through the processor
    a = img(32, 90, 90)
    ids = smol["model"].build_prompt("<image>", [a], chat_template="smolvlm")
    want_ids, _, _ = S.hf_prompt_ids(smol["proc"], tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}]}], tokenize=False, add_generation_prompt=True),
        [Image.fromarray(a)])
    assert ids == want_ids


def test_session_turns(smol):
    """Two turns: the second appended to the first's cache (no re-prefill) equals one HF forward over
    the whole conversation."""
    m = smol["model"]
    a = img(34, 80, 100)  # (the answers hold no <image> id: HF would take one for an image row)
    s = m.session()
    r1 = s.send([a, "what is it?"], max_tokens=4)
    r2 = s.send("and the colour?", max_tokens=4)
    ids = s.ids
    assert ids.count(m.image_token_id) == m.n_image_tokens(a)
    _, pv, mask = hf_inputs(smol, "what is it?", [a])
    want = S.hf_logits(smol["hf"], ids, pv, mask)
    n1 = r1.stats.n_prompt
    assert ids[:n1] == hf_inputs(smol, "what is it?", [a])[0]
    for j in range(len(r1.tokens)):
        assert ids[n1 + j] == r1.tokens[j] == int(np.argmax(want[n1 + j - 1])), j
    start = len(ids) - (len(r2.tokens) - 1)
    for j, t in enumerate(r2.tokens):
        assert t == int(np.argmax(want[start - 1 + j])), j


# ------------------------------------------------------------------------------------------------
# device paths, CLI, errors


def test_device_paths(smol):
    text, mm = smol["files"]["smolvlm-f32"]
    images = [img(40, 100, 75), img(41, 40, 110)]
    ids = smol["model"].build_prompt("what is it", images) + list(range(50, 70))
    want = smol["model"].logits(ids, images=images)
    for dev, ngl in [("test", -1), ("test", 1), ("test:decline=get_rows+attention+glu", -1)]:
        m = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024, device=dev, n_gpu_layers=ngl)
        assert rel_err(m.logits(ids, images=images), want) <= 1e-5, (dev, ngl)
        on_dev = {op for b, op, _ in m._engine.ops_used if b != "cpu"}
        assert "patch_embed" in on_dev  # the tower on the device
        assert ("get_rows" in on_dev) == ("get_rows" not in dev)  # the pixel shuffle there, unless declined


def test_cli(smol, tmp_path):
    text, mm = smol["files"]["smolvlm-f32"]
    a = img(70, 150, 110)
    png = tmp_path / "a.png"
    Image.fromarray(a).save(png)
    r = smol["model"].generate(a, "What is here?", max_tokens=6)
    cli = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "--image", str(png), "-p", "What is here?", "-n",
                          "6", "--kv-type", "f32", "-c", "1024", "--verbose"], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == r.text + "\n"
    assert "projector idefics3" in cli.stderr and "chat template smolvlm" in cli.stderr


def _bad(smol, tmp_path, kv=None, tensors=None):
    text, mm = smol["files"]["smolvlm-f32"]
    return text, rewrite_gguf(mm, str(tmp_path / "bad.gguf"), kv=kv, tensors=tensors)


@pytest.mark.parametrize("what,kv,tensors,match", [
    ("scale_factor not dividing the grid", {"clip.vision.projector.scale_factor": (3, gguf.GGUFValueType.UINT32)},
     None, "clip.vision.projector.scale_factor' is 3, which does not divide the 8 x 8 patch grid"),
    ("scale_factor against the connector", {"clip.vision.projector.scale_factor": (4, gguf.GGUFValueType.UINT32)},
     None, "'mm.model.fc.weight' .* takes 128 features per token, but key 'clip.vision.projector.scale_factor' = 4"),
    ("scale_factor beyond the grid", {"clip.vision.projector.scale_factor": (16, gguf.GGUFValueType.UINT32)},
     None, "clip.vision.projector.scale_factor' is 16, outside the sane range \\[1, 8\\]"),
    ("too many tiles", {"clip.vision.preproc_image_size": (4096, gguf.GGUFValueType.UINT32)},
     None, "clip.vision.preproc_image_size' is 4096: with tiles of 64 px .* up to 64 x 64 tiles \\(at most 32"),
    ("preproc_image_size too large", {"clip.vision.preproc_image_size": (70000, gguf.GGUFValueType.UINT32)},
     None, "clip.vision.preproc_image_size' is 70000, outside the sane range"),
    ("preproc_image_size zero", {"clip.vision.preproc_image_size": (0, gguf.GGUFValueType.UINT32)},
     None, "clip.vision.preproc_image_size' is 0, outside the sane range"),
    ("no connector", None, lambda n, a, t: None if n == "mm.model.fc.weight" else (n, a, t),
     "missing projector tensor 'mm.model.fc.weight'"),
    ("no scale_factor, odd connector", {"clip.vision.projector.scale_factor": None},
     lambda n, a, t: (n, a[:, :96].copy(), t) if n == "mm.model.fc.weight" else (n, a, t),
     "key 'clip.vision.projector.scale_factor' is missing and tensor 'mm.model.fc.weight'"),
])
def test_bad_mmproj_hyperparameters(smol, tmp_path, what, kv, tensors, match):
    text, mm = _bad(smol, tmp_path, kv, tensors)
    with pytest.raises(ac.FormatError, match=match):
        ac.Model(text, mmproj=mm)


def test_scale_factor_inferred_without_the_key(smol, tmp_path):
    text, mm = _bad(smol, tmp_path, {"clip.vision.projector.scale_factor": None})
    a = img(1, 100, 75)
    assert rel_err(ac.Model(text, mmproj=mm, kv_type="f32").encode_image(a), smol["model"].encode_image(a)) == 0


def test_input_errors(smol, tmp_path):
    m = smol["model"]
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.n_image_tokens()
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.build_prompt("hi", 1)
    a = img(2, 100, 75)
    ids = m.build_prompt("hi", [a])
    with pytest.raises(ac.InputError, match="image 0 needs 90 positions from 5 on, but the sequence ends at 85"):
        m.logits([i for i in ids if i != m.image_token_id][:5] + [m.image_token_id] * 80, images=[a])
    # an mmproj that writes <image> with a text model whose vocabulary lacks it
    text, mm = smol["files"]["smolvlm-f32"]
    toks = gguf.GGUFReader(text).fields["tokenizer.ggml.tokens"].contents()
    toks = [t if t != "<image>" else "<imagx>" for t in toks]
    bad = rewrite_gguf(text, str(tmp_path / "t.gguf"),
                       kv={"tokenizer.ggml.tokens": (toks, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)})
    with pytest.raises(ac.InputError, match="writes images with the token '<image>', which the vocabulary"):
        ac.Model(bad, mmproj=mm)


# ------------------------------------------------------------------------------------------------
# compression


@pytest.fixture(scope="module")
def single(smol):
    """A one-image prompt (2 x 2 tiles + global: 80 <image> rows between 15 marker rows), HF's
    attentions over it, its pixel values."""
    m = smol["model"]
    a = img(40, 110, 90)
    ids, pv, mask = hf_inputs(smol, "which shape is on the left of the red one?", [a])
    att, _ = S.hf_attentions(smol["hf"], ids, pv, mask)
    return {"ids": ids, "image": a, "P": [x.astype(np.float64) for x in att], "pv": pv, "mask": mask}


def layout_of(m, ids):
    return ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == m.image_token_id])


def plan(m, s, p: ref.Params):
    _, st = m.logits(s["ids"], images=[s["image"]], kv_policy=p.policy, kv_budget=p.budget, kv_scope=p.scope,
                     kv_selection=p.selection, kv_options=dict(p.options), return_stats=True)
    return st


def test_layout_counts_only_image_rows(smol, single):
    m, ids = smol["model"], single["ids"]
    layout = layout_of(m, ids)
    first, last = layout.visual[0], layout.visual[-1]
    markers = [i for i in range(first, last + 1) if ids[i] != m.image_token_id]
    assert len(layout.visual) == 80 and len(markers) >= 8  # markers sit between the image's rows
    L = smol["hf"].config.text_config.num_hidden_layers
    st = plan(m, single, ref.Params("random", 0.25))
    assert int(st.visual_kept.sum()) == ref.total_budget(0.25, 80, L)


def test_budget_accounting_every_policy(smol, single):
    m = smol["model"]
    layout = layout_of(m, single["ids"])
    L = smol["hf"].config.text_config.num_hidden_layers
    text_rows = set(range(layout.m)) - set(layout.visual)  # the tile markers included
    for policy in ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]:
        for r in [1e-6, 0.37]:  # the minimum (one row per layer) and a share that does not divide evenly
            for sel in ["layer", "kv_head"]:
                st = plan(m, single, ref.Params(policy, r, selection=sel))
                assert int(st.visual_kept.sum()) == ref.total_budget(r, len(layout.visual), L), (policy, r, sel)
                for kept in st.kept:
                    for rows in ([kept] if sel == "layer" else kept):
                        assert text_rows <= set(rows), (policy, r, sel)


KEPT_CASES = [ref.Params("aircache", 0.2), ref.Params("vlcache", 0.2), ref.Params("vlcache", 0.3, "all"),
              ref.Params("snapkv", 0.2, options={"snap_window": 8}), ref.Params("h2o", 0.25)]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
def test_kept_sets_match_reference(smol, single, selection):
    cfg = smol["hf"].config.text_config
    m = smol["model"]
    layout = layout_of(m, single["ids"])
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
                assert ref.explained_by_ties(ours, theirs, score, cands), (p.policy, l)


def hf_past(smol, s):
    kw = S._inputs(s["ids"], s["pv"], s["mask"])
    with torch.no_grad():
        past = smol["hf"](**kw, use_cache=True).past_key_values
    return [(layer.keys, layer.values) for layer in past.layers]


@pytest.mark.parametrize("policy,budget,selection", [("aircache", 0.15, "layer"), ("vlcache", 0.2, "kv_head"),
                                                    ("random", 0.3, "layer")])
def test_decoding_over_compacted_cache(smol, single, policy, budget, selection):
    m, ids = smol["model"], single["ids"]
    cont = [300, 17, 42, 301, 99, 5, 7, 250]
    out, st = m.logits(ids + cont, images=[single["image"]], kv_policy=policy, kv_budget=budget,
                       kv_selection=selection, n_prompt=len(ids), return_stats=True)
    assert st.kv_bytes_after < st.kv_bytes_before
    want = ref.numpy_decode(smol["hf"], hf_past(smol, single), st.kept, cont, len(ids))  # 1-D positions: indices
    err = rel_err(out[len(ids):], want)
    print(f"smolvlm {policy}/{selection}: relative logit error over the compacted cache {err:.2e}")
    assert err <= 1e-4
    # the reference can tell: the full cache, or the compacted one at the next index, differ
    full = m.logits(ids + cont, images=[single["image"]])[len(ids):]
    assert rel_err(full, want) > 1e-3
    assert rel_err(ref.numpy_decode(smol["hf"], hf_past(smol, single), st.kept, cont, len(ids) - 3), want) > 1e-3
