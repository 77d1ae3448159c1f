"""InternVL 2.5 / 3 end to end against HF transformers, on a tiny random-weight
InternVLForConditionalGeneration (tests/hf_internvl_fixtures.py: Qwen2 text of 2 layers, InternViT of 4
layers with layer scales, 64 px tiles of 8 px patches, pixel shuffle 0.5 -> 16 tokens per tile, 1..6 tiles
+ a thumbnail) written in OpenGVLab's original layout and converted by llama.cpp's convert_hf_to_gguf.py
(tests/conftest.py `internvl_converted`):

- pixel values (the tile grid chosen by aspect ratio for wide, tall, small, square and tie cases, the
  bicubic stretch, the thumbnail) and the token count per image equal HF's GotOcr2ImageProcessor's (as
  InternVLProcessor runs it); the tile limits are read from the mmproj; image features (InternViT per
  tile, class token dropped, pixel shuffle, projector) equal HF's, also for an InternViT-6B-style tower
  (RMSNorm, q/k norms, no QKV bias);
- the prompt ids equal the real InternVLProcessor's (InternVL's chat template with its system message,
  each image as <img> + <IMG_CONTEXT> x 16 per tile + </img>) for one and two images and text only;
  prompt + 32 teacher-forced tokens: logits equal HF's with F32 files at the F32 / F16 cache and with
  F16 files; greedy generation and a two-turn session equal HF's;
- the device paths (test backend), the CLI, FormatErrors naming every hyperparameter the loaders read
  when it contradicts the tensors, InternLM2-based checkpoints refused by name;
- compression: only the <IMG_CONTEXT> rows are candidates (<img> and </img> are text rows), every
  policy's budget is exact, kept sets equal the numpy reference from HF's eager attentions, decoding
  over the compacted cache equals a numpy decoder over HF's KV restricted to the kept rows."""

import subprocess

import gguf
import numpy as np
import pytest
from PIL import Image

import aircache_cpp as ac
import compress_reference as ref
import hf_internvl_fixtures as F
from gguf_fixtures import rewrite_gguf

TILE_TOKENS = F.TILE_TOKENS  # 16


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def ivl(internvl_converted, tiny_internvl):
    text, mm = internvl_converted["internvl-f32"]
    return {"hf": F.load_internvl(tiny_internvl), "proc": F.load_internvl_processor(tiny_internvl),
            "files": internvl_converted, "dir": tiny_internvl,
            "model": ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024)}


def hf_chat_text(ivl, n_images, question, system=None):
    """InternVL's chat template (the checkpoint's, string content) with one "<IMG_CONTEXT>\\n" per image
    before the question (InternVLProcessor expands each)."""
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": "<IMG_CONTEXT>\n" * n_images + question}]
    return ivl["proc"].tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def hf_inputs(ivl, question, images):
    """(ids, pixel_values) of the real InternVLProcessor for one user message."""
    return F.hf_prompt_ids(ivl["proc"], hf_chat_text(ivl, len(images), question), [Image.fromarray(a) for a in images])


# ------------------------------------------------------------------------------------------------
# preprocessing and the vision tower

# (w, h) -> HF's grid (columns, rows): wide, tall, small (enlarged), square, large, the widest grid of
# the limit, and aspect-ratio ties (1x1 against 2x2 for a square: 2x2 once the area passes half of its
# 4 tiles, 8192 px^2; 301x300 ties too)
SIZES = [((100, 75), (3, 2)), ((200, 60), (3, 1)), ((30, 90), (1, 3)), ((20, 24), (1, 1)), ((64, 64), (1, 1)),
         ((640, 300), (2, 1)), ((1000, 40), (6, 1)), ((90, 180), (1, 2)), ((90, 90), (1, 1)), ((91, 91), (2, 2)),
         ((301, 300), (2, 2))]


def test_converted_files(ivl):
    """What llama.cpp's converter wrote from the original-layout checkpoint (the facts the loaders rely
    on): text arch qwen2 without rope.dimension_count or add_space_prefix, InternVL's chat template;
    projector internvl with the tile limits, scale factor and GELU flag; F32 files all F32, the F16
    mmproj's position table kept F32."""
    text, mm = ivl["files"]["internvl-f32"]
    t, v = gguf.GGUFReader(text), gguf.GGUFReader(mm)
    tf, vf = t.fields, v.fields
    assert tf["general.architecture"].contents() == "qwen2" and "qwen2.rope.dimension_count" not in tf
    assert "tokenizer.ggml.add_space_prefix" not in tf and F.INTERNVL_SYSTEM in tf["tokenizer.chat_template"].contents()
    assert "blk.0.attn_q.bias" in {x.name for x in t.tensors} and "output.weight" in {x.name for x in t.tensors}
    assert vf["clip.projector_type"].contents() == "internvl" and vf["clip.use_gelu"].contents() is True
    assert [vf[k].contents() for k in ("clip.vision.projector.scale_factor", "clip.vision.preproc_min_tiles",
                                       "clip.vision.preproc_max_tiles")] == [2, 1, 6]
    names = {x.name for x in v.tensors}
    assert {"v.class_embd", "v.blk.3.ls2.weight", "mm.model.mlp.3.weight", "v.blk.0.attn_q.bias"} <= names
    assert {x.tensor_type.name for x in list(t.tensors) + list(v.tensors)} == {"F32"}
    v16 = gguf.GGUFReader(ivl["files"]["internvl-f16"][1])
    types = {x.name: x.tensor_type.name for x in v16.tensors}
    assert types["v.position_embd.weight"] == "F32" and types["v.blk.0.attn_q.weight"] == "F16"


def test_pixel_values_tokens_and_features(ivl):
    m = ivl["model"]
    for i, ((w, h), grid) in enumerate(SIZES):
        a = img(i, w, h)
        assert F.hf_grid(w, h) == grid, (w, h)  # the cases really tile as intended
        pv = F.hf_pixel_values(Image.fromarray(a))
        n = grid[0] * grid[1]
        assert pv.shape == (n + 1 if n > 1 else 1, 3, 64, 64)
        got = m.pixel_values(a)
        assert got.shape == (pv.shape[0] * 3 * 64, 64)
        err = float(np.abs(got.reshape(pv.shape) - pv).max())
        assert err <= 1e-6, (w, h, err)
        # HF's count (the processor's, without its <img> </img>)
        want_tokens = ivl["proc"]._get_num_multimodal_tokens(image_sizes=[(h, w)])["num_image_tokens"][0] - 2
        assert m.n_image_tokens(a) == want_tokens == pv.shape[0] * TILE_TOKENS
        feat = F.hf_image_features(ivl["hf"], pv)
        ferr = rel_err(m.encode_image(a), feat)
        print(f"internvl {w}x{h} ({grid[0]}x{grid[1]} tiles{' + thumbnail' if n > 1 else ''}): pixel error "
              f"{err:.1e}, {want_tokens} tokens, feature error {ferr:.2e}")
        assert ferr <= 1e-4


def test_token_counts_many_sizes(ivl):
    """The grid rule (closest aspect ratio, ties to more tiles while the image covers more than half of
    them) on many sizes, against HF's get_number_of_image_patches."""
    m = ivl["model"]
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 400, size=(150, 2))]
    sizes += [(64 * c, 64 * r) for c in range(1, 7) for r in range(1, 7)] + [(96, 32), (32, 96), (97, 32), (95, 32)]
    for w, h in sizes:
        want = ivl["proc"].image_processor.get_number_of_image_patches(h, w, {"crop_to_patches": True})
        assert m.n_image_tokens(np.zeros((h, w, 3), np.uint8)) == want * TILE_TOKENS, (w, h)


def test_tiles_are_in_hf_order(ivl):
    """A wide image's tiles and the thumbnail are different pictures, in HF's order: swapping tiles in
    the reference is detected."""
    a = img(5, 200, 60)
    pv = F.hf_pixel_values(Image.fromarray(a))
    got = ivl["model"].pixel_values(a).reshape(pv.shape)
    assert np.abs(pv[0] - pv[1]).max() > 0.5 and np.abs(pv[2] - pv[3]).max() > 0.5
    assert np.abs(got - pv[[1, 0, 2, 3]]).max() > 0.5


def test_tile_limits_from_the_mmproj(ivl, tmp_path):
    """clip.vision.preproc_min_tiles / preproc_max_tiles (the checkpoint's min/max_dynamic_patch) drive the
    grid: changed in a copy of the mmproj, the pixels and counts follow HF's processor with the same limits;
    without the keys, llama.cpp's defaults 1 and 12."""
    text, mm = ivl["files"]["internvl-f32"]
    for mn, mx in [(2, 4), (1, 12), (None, None)]:
        kv = {"clip.vision.preproc_min_tiles": None if mn is None else (mn, gguf.GGUFValueType.UINT32),
              "clip.vision.preproc_max_tiles": None if mx is None else (mx, gguf.GGUFValueType.UINT32)}
        m = ac.Model(text, mmproj=rewrite_gguf(mm, str(tmp_path / f"mm{mn}.gguf"), kv=kv), kv_type="f32")
        proc = dict(F.INTERNVL_PROC, min_patches=mn or 1, max_patches=mx or 12)
        for i, (w, h) in enumerate([(100, 75), (1000, 40), (30, 30)]):
            a = img(80 + i, w, h)
            pv = F.hf_pixel_values(Image.fromarray(a), proc)
            assert m.n_image_tokens(a) == pv.shape[0] * TILE_TOKENS, (mn, mx, w, h)
            assert np.abs(m.pixel_values(a).reshape(pv.shape) - pv).max() <= 1e-6
    assert F.hf_grid(1000, 40, dict(F.INTERNVL_PROC, max_patches=12)) == (12, 1)  # the limit mattered


def test_rmsnorm_tower(ivl, internvl_spm, tmp_path_factory):
    """InternViT-6B's kind of tower (InternVL2.5-26B and larger): RMSNorm norms (no biases in the file),
    q/k RMSNorm over the width, no QKV bias: another tiny model, its mmproj converted by llama.cpp,
    features equal HF's."""
    import llamacpp_fixtures as lf

    d = tmp_path_factory.mktemp("hf-internvl-rms")
    hf = F.make_tiny_internvl(str(d), internvl_spm, seed=53, vision=F.INTERNVL_VISION_RMS)
    mm = lf.convert_mmproj(d / "orig", d / "mmproj-f32.gguf", "f32")
    names = [t.name for t in gguf.GGUFReader(mm).tensors]
    assert "v.blk.0.attn_q_norm.weight" in names and "v.blk.0.ln1.bias" not in names
    assert "v.blk.0.attn_q.bias" not in names
    m = ac.Model(ivl["files"]["internvl-f32"][0], mmproj=mm, kv_type="f32")
    for i, (w, h) in enumerate([(100, 75), (40, 40)]):
        a = img(60 + i, w, h)
        pv = F.hf_pixel_values(Image.fromarray(a))
        err = rel_err(m.encode_image(a), F.hf_image_features(hf, pv))
        print(f"internvl RMSNorm tower {w}x{h}: feature error {err:.2e}")
        assert err <= 1e-4


# ------------------------------------------------------------------------------------------------
# prompts and logits


CASES = {"one-image": [(100, 75)], "two-images": [(100, 75), (50, 90)], "text-only": []}


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_and_logits_equal_hf(ivl, case):
    m = ivl["model"]
    images = [img(20 + i, w, h) for i, (w, h) in enumerate(CASES[case])]
    question = "what is in the picture, and where is it?"
    want_ids, pv = hf_inputs(ivl, question, images)
    ids = m.build_prompt(question, images)
    assert m.chat_template == "internvl"  # recognised from the file's template
    assert ids == want_ids  # the template, each image's <img> ... </img>, the tokenizer
    assert ids.count(m.image_token_id) == sum(m.n_image_tokens(a) for a in images)
    ids = ids + np.random.default_rng(3).integers(13, m.n_vocab, 32).tolist()
    ref_logits = F.hf_logits(ivl["hf"], ids, pv)
    text32, mm32 = ivl["files"]["internvl-f32"]
    for kv, tol in [("f32", 1e-4), ("f16", 5e-3)]:
        mm = m if kv == "f32" else ac.Model(text32, mmproj=mm32, kv_type="f16", n_ctx=1024)
        err = rel_err(mm.logits(ids, images=images), ref_logits)
        print(f"internvl {case} KV {kv}: relative logit error {err:.2e}")
        assert err <= tol
    text16, mm16 = ivl["files"]["internvl-f16"]
    err = rel_err(ac.Model(text16, mmproj=mm16, n_ctx=1024).logits(ids, images=images), ref_logits)
    print(f"internvl {case} F16 files: relative logit error {err:.2e}")
    assert err <= 2e-2


def test_image_order_and_run_length_matter(ivl):
    """The reference can tell the images apart (their tiles swapped give other logits), and a run of
    context tokens of the wrong length is refused."""
    m = ivl["model"]
    images = [img(22, 100, 75), img(23, 50, 90)]  # 3 x 2 + thumbnail, 1 x 2 + thumbnail
    ids, pv = hf_inputs(ivl, "describe both", images)
    assert pv.shape[0] == 10
    ours = m.logits(ids, images=images)
    assert rel_err(ours, F.hf_logits(ivl["hf"], ids, pv)) <= 1e-4
    assert rel_err(ours, F.hf_logits(ivl["hf"], ids, np.concatenate([pv[7:], pv[:7]]))) > 1e-3
    first = ids.index(m.image_token_id)
    assert ids[first - 1] == m.tokenize("<img>", add_bos=False)[0]
    with pytest.raises(ac.InputError, match="holds 159 image positions .* need 160"):
        m.logits(ids[:first] + ids[first + 1:], images=images)


def test_greedy_generation_equals_hf(ivl):
    m = ivl["model"]
    a = img(31, 120, 70)
    ids, pv = hf_inputs(ivl, "what shape is it?", [a])
    want = F.hf_greedy(ivl["hf"], ids, pv, n_new=10, stop=[m.tokenize("<|im_end|>", add_bos=False)[0]])
    r = m.generate(a, "what shape is it?", max_tokens=10)
    assert r.tokens == want[:len(r.tokens)] and len(r.tokens) >= 1
    assert r.stats.n_visual == m.n_image_tokens(a)


def test_chat_template_equals_hf(ivl):
    eng = ivl["model"]._engine
    tok = ivl["proc"].tokenizer

    def ours(msgs):
        return eng.render_chat([(x["role"], [(c["type"] == "image", c.get("text", "")) for c in x["content"]])
                                for x in msgs], "", True).replace("<image>", "<IMG_CONTEXT>")

    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is here?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
             {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "image"},
                                          {"type": "text", "text": "this?"}]}]
    # the checkpoint's template (string content; each image as the processor's "<IMG_CONTEXT>\n"), with
    # its default system message
    flat = [{"role": x["role"], "content": "".join("<IMG_CONTEXT>\n" if c["type"] == "image" else c["text"]
                                                   for c in x["content"])} for x in parts]
    want = tok.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    assert want.startswith("<|im_start|>system\n" + F.INTERNVL_SYSTEM + "<|im_end|>\n")
    assert ours(parts) == want
    # the transformers-format checkpoints' template (parts) with a system message given
    sys_parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + parts
    want_hf = tok.apply_chat_template(sys_parts, chat_template=F.INTERNVL_HF_CHAT_TEMPLATE, tokenize=False,
                                      add_generation_prompt=True)
    assert ours(sys_parts) == want_hf
    # the template by name, and chat() with an image part, through the processor
    a = img(32, 90, 90)
    want_ids, _ = F.hf_prompt_ids(ivl["proc"], hf_chat_text(ivl, 1, "hi"), [Image.fromarray(a)])
    assert ivl["model"].build_prompt("hi", [a], chat_template="internvl") == want_ids
    assert ivl["model"].build_prompt("hi", [a], chat_template="chatml") != want_ids
    r = ivl["model"].chat([{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "hi"}]}],
                          max_tokens=2)
    assert r.stats.n_prompt == len(want_ids)


def test_session_turns(ivl):
    """Two turns: the second appended to the first's cache (no re-prefill) equals one HF forward over the
    whole conversation."""
    m = ivl["model"]
    a = img(34, 80, 100)
    s = m.session()
    r1 = s.send([a, "what is it?"], max_tokens=4)
    r2 = s.send("and the colour?", max_tokens=4)
    ids = s.ids
    assert ids.count(m.image_token_id) == m.n_image_tokens(a)
    first, pv = hf_inputs(ivl, "what is it?", [a])
    want = F.hf_logits(ivl["hf"], ids, pv)
    n1 = r1.stats.n_prompt
    assert ids[:n1] == first
    for j in range(len(r1.tokens)):
        assert ids[n1 + j] == r1.tokens[j] == int(np.argmax(want[n1 + j - 1])), j
    start = len(ids) - (len(r2.tokens) - 1)
    for j, t in enumerate(r2.tokens):
        assert t == int(np.argmax(want[start - 1 + j])), j


# ------------------------------------------------------------------------------------------------
# device paths, CLI, errors


def test_device_paths(ivl):
    text, mm = ivl["files"]["internvl-f32"]
    images = [img(40, 100, 75), img(41, 40, 110)]
    ids = ivl["model"].build_prompt("what is it", images) + list(range(50, 70))
    want = ivl["model"].logits(ids, images=images)
    for dev, ngl in [("test", -1), ("test", 1), ("test:decline=get_rows+attention+mul", -1)]:
        m = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024, device=dev, n_gpu_layers=ngl)
        assert rel_err(m.logits(ids, images=images), want) <= 1e-5, (dev, ngl)
        on_dev = {op for b, op, _ in m._engine.ops_used if b != "cpu"}
        assert "patch_embed" in on_dev  # the tower on the device
        assert ("get_rows" in on_dev) == ("get_rows" not in dev)  # the pixel shuffle there, unless declined
        assert ("mul" in on_dev) == ("mul" not in dev)  # the layer scales


def test_cli(ivl, tmp_path):
    text, mm = ivl["files"]["internvl-f32"]
    a = img(70, 150, 110)
    png = tmp_path / "a.png"
    Image.fromarray(a).save(png)
    r = ivl["model"].generate(a, "What is here?", max_tokens=6)
    cli = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "--image", str(png), "-p", "What is here?", "-n",
                          "6", "--kv-type", "f32", "-c", "1024", "--verbose"], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == r.text + "\n"
    assert "projector internvl" in cli.stderr and "chat template internvl" in cli.stderr and "qwen2" in cli.stderr


U32, F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
TEXT_ERRORS = [("qwen2.embedding_length", (32, U32), "'token_embd.weight' has shape \\[64, \\d+\\], expected \\[32"),
               ("qwen2.feed_forward_length", (64, U32), "'blk.0.ffn_gate.weight' has shape"),
               ("qwen2.attention.head_count", (2, U32), "'blk.0.attn_k.weight' has shape"),  # head_dim 32
               ("qwen2.attention.head_count", (3, U32), "head_count 3 is not a multiple of .*head_count_kv 2"),
               ("qwen2.attention.head_count_kv", (1, U32), "'blk.0.attn_k.weight' has shape"),
               ("qwen2.block_count", (3, U32), "missing tensor 'blk.2.attn_norm.weight'"),
               ("qwen2.block_count", (1, U32), "qwen2.block_count"),
               ("qwen2.attention.layer_norm_rms_epsilon", (-1.0, F32), "layer_norm_rms_epsilon' is -1"),
               ("qwen2.rope.freq_base", (0.5, F32), "qwen2.rope.freq_base' is 0.5"),
               ("qwen2.context_length", (0, U32), "qwen2.context_length' is 0")]
MMPROJ_ERRORS = [
    ("clip.vision.embedding_length", (16, U32), "'v.patch_embd.weight' has shape"),
    ("clip.vision.block_count", (5, U32), "key 'clip.vision.block_count' is 5 but the file has no layer 4"),
    ("clip.vision.block_count", (3, U32), "'v.blk.3.* is for layer 3 but key 'clip.vision.block_count' is 3"),
    ("clip.vision.image_size", (72, U32), "'v.position_embd.weight' has shape .* clip.vision.image_size 72"),
    ("clip.vision.patch_size", (16, U32), "'v.patch_embd.weight' has shape"),
    ("clip.vision.attention.head_count", (3, U32), "not a multiple of clip.vision.attention.head_count 3"),
    ("clip.vision.attention.layer_norm_epsilon", (-1.0, F32), "layer_norm_epsilon' is -1"),
    ("clip.vision.projector.scale_factor", (3, U32), "scale_factor' is 3, which does not divide the 8 x 8 patch grid"),
    ("clip.vision.projector.scale_factor", (4, U32),
     "'mm.model.mlp.0.weight' .* takes 128 features per token, but key 'clip.vision.projector.scale_factor' = 4"),
    ("clip.vision.projector.scale_factor", (16, U32), "scale_factor' is 16, outside the sane range \\[1, 8\\]"),
    ("clip.vision.preproc_max_tiles", (0, U32), "preproc_max_tiles' is 0, outside the sane range"),
    ("clip.vision.preproc_max_tiles", (100000, U32), "preproc_max_tiles' is 100000, outside the sane range"),
    ("clip.vision.preproc_min_tiles", (7, U32), "preproc_min_tiles' is 7, more than 'clip.vision.preproc_max_tiles'"),
    ("clip.vision.projection_dim", (32, U32), "projection_dim' is 32 but tensor 'mm.model.mlp.1.weight' projects to 64"),
    ("clip.use_gelu", None, "neither clip.use_gelu nor clip.use_silu"),
]


def test_hyperparameters_checked_against_the_tensors(ivl, tmp_path):
    """Each hyperparameter the qwen2 and internvl loaders read, changed in a copy of the converted files:
    a FormatError naming it (or the tensor it contradicts), at load."""
    text, mm = ivl["files"]["internvl-f32"]
    for i, (key, val, msg) in enumerate(TEXT_ERRORS + MMPROJ_ERRORS):
        is_text = i < len(TEXT_ERRORS)
        dst = rewrite_gguf(text if is_text else mm, str(tmp_path / f"{i}.gguf"), kv={key: val})
        with pytest.raises(ac.FormatError, match=msg):
            ac.Model(dst if is_text else text, mmproj=mm if is_text else dst, n_ctx=256)


def drop(name):
    return lambda n, a, t: None if n == name else (n, a, t)


@pytest.mark.parametrize("what,tensors,match", [
    ("no projector", drop("mm.model.mlp.3.weight"), "missing tensor 'mm.model.mlp.3.weight'"),
    ("no projector norm", drop("mm.model.mlp.0.weight"), "missing projector tensor 'mm.model.mlp.0.weight'"),
    ("no layer scale", drop("v.blk.2.ls1.weight"), "missing tensor 'v.blk.2.ls1.weight'"),
    ("no class embedding", drop("v.class_embd"), "missing tensor 'v.class_embd'"),
    ("LayerNorm in one layer only", drop("v.blk.1.ln2.bias"),
     "'v.blk.1.ln2.bias' is missing, but layer 0 has norm biases"),
    ("QKV bias in one layer only", drop("v.blk.3.attn_v.bias"), "'v.blk.3.attn_v.bias' is missing, but layer 0 has Q/K/V"),
    ("projector width", lambda n, a, t: (n, a[:48].copy(), t) if n == "mm.model.mlp.3.weight" else (n, a, t),
     "'mm.model.mlp.3.weight' has shape"),
])
def test_bad_mmproj_tensors(ivl, tmp_path, what, tensors, match):
    text, mm = ivl["files"]["internvl-f32"]
    with pytest.raises(ac.FormatError, match=match):
        ac.Model(text, mmproj=rewrite_gguf(mm, str(tmp_path / "bad.gguf"), tensors=tensors))


def test_scale_factor_inferred_without_the_key(ivl, tmp_path):
    text, mm = ivl["files"]["internvl-f32"]
    mm2 = rewrite_gguf(mm, str(tmp_path / "mm.gguf"), kv={"clip.vision.projector.scale_factor": None})
    a = img(1, 100, 75)
    assert rel_err(ac.Model(text, mmproj=mm2, kv_type="f32").encode_image(a), ivl["model"].encode_image(a)) == 0


def test_internlm2_is_refused_by_name(ivl, tmp_path):
    text, _ = ivl["files"]["internvl-f32"]
    bad = rewrite_gguf(text, str(tmp_path / "t.gguf"),
                       kv={"general.architecture": ("internlm2", gguf.GGUFValueType.STRING)})
    with pytest.raises(ac.UnsupportedError, match="'internlm2' .*InternVL2.*not supported.*qwen2"):
        ac.Model(bad)


def test_input_errors(ivl, tmp_path):
    m = ivl["model"]
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.n_image_tokens()
    with pytest.raises(ac.InputError, match="depends on its size"):
        m.build_prompt("hi", 1)
    text, mm = ivl["files"]["internvl-f32"]
    toks = gguf.GGUFReader(text).fields["tokenizer.ggml.tokens"].contents()
    toks = [t if t != "<IMG_CONTEXT>" else "<IMG_CONTEXX>" for t in toks]
    bad = rewrite_gguf(text, str(tmp_path / "t.gguf"),
                       kv={"tokenizer.ggml.tokens": (toks, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)})
    with pytest.raises(ac.InputError, match="writes images with the token '<IMG_CONTEXT>', which the vocabulary"):
        ac.Model(bad, mmproj=mm)


# ------------------------------------------------------------------------------------------------
# compression


@pytest.fixture(scope="module")
def single(ivl):
    """A one-image prompt (3 x 2 tiles + the thumbnail: 112 <IMG_CONTEXT> rows between <img> and
    </img>), HF's attentions over it, its pixel values."""
    a = img(40, 110, 80)
    ids, pv = hf_inputs(ivl, "which shape is on the left of the red one?", [a])
    att, _ = F.hf_attentions(ivl["hf"], ids, pv)
    return {"ids": ids, "image": a, "P": [x.astype(np.float64) for x in att], "pv": pv}


def layout_of(m, ids):
    return ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == m.image_token_id])


def plan(m, s, p: ref.Params):
    _, st = m.logits(s["ids"], images=[s["image"]], kv_policy=p.policy, kv_budget=p.budget, kv_scope=p.scope,
                     kv_selection=p.selection, kv_options=dict(p.options), return_stats=True)
    return st


def test_layout_counts_only_context_rows(ivl, single):
    m, ids = ivl["model"], single["ids"]
    layout = layout_of(m, ids)
    first, last = layout.visual[0], layout.visual[-1]
    assert last - first + 1 == len(layout.visual) == 112  # one run: the tiles' and the thumbnail's tokens
    assert ids[first - 1] == m.tokenize("<img>", add_bos=False)[0]
    assert ids[last + 1] == m.tokenize("</img>", add_bos=False)[0]
    L = ivl["hf"].config.text_config.num_hidden_layers
    st = plan(m, single, ref.Params("random", 0.25))
    assert int(st.visual_kept.sum()) == ref.total_budget(0.25, 112, L)


def test_budget_accounting_every_policy(ivl, single):
    m = ivl["model"]
    layout = layout_of(m, single["ids"])
    L = ivl["hf"].config.text_config.num_hidden_layers
    text_rows = set(range(layout.m)) - set(layout.visual)  # <img> and </img> included
    for policy in ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]:
        for r in [1e-6, 0.1, 0.37]:
            for sel in ["layer", "kv_head"]:
                st = plan(m, single, ref.Params(policy, r, selection=sel))
                assert int(st.visual_kept.sum()) == ref.total_budget(r, len(layout.visual), L), (policy, r, sel)
                for kept in st.kept:
                    for rows in ([kept] if sel == "layer" else kept):
                        assert text_rows <= set(rows), (policy, r, sel)


KEPT_CASES = [ref.Params("aircache", 0.2), ref.Params("vlcache", 0.2), ref.Params("vlcache", 0.3, "all"),
              ref.Params("snapkv", 0.2, options={"snap_window": 8}), ref.Params("pyramidkv", 0.2),
              ref.Params("h2o", 0.25)]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
def test_kept_sets_match_reference(ivl, single, selection):
    cfg = ivl["hf"].config.text_config
    m = ivl["model"]
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


@pytest.mark.parametrize("policy,budget,selection", [("aircache", 0.15, "layer"), ("vlcache", 0.2, "kv_head"),
                                                    ("random", 0.3, "layer")])
def test_decoding_over_compacted_cache(ivl, single, policy, budget, selection):
    m, ids = ivl["model"], single["ids"]
    cont = [300, 17, 42, 301, 99, 55, 7, 250]  # (no <IMG_CONTEXT>, id 5: it would be an image row)
    out, st = m.logits(ids + cont, images=[single["image"]], kv_policy=policy, kv_budget=budget,
                       kv_selection=selection, n_prompt=len(ids), return_stats=True)
    assert st.kv_bytes_after < st.kv_bytes_before
    past = F.hf_past(ivl["hf"], ids, single["pv"])
    want = ref.numpy_decode(ivl["hf"], past, st.kept, cont, len(ids))  # 1-D positions: indices
    err = rel_err(out[len(ids):], want)
    print(f"internvl {policy}/{selection}: relative logit error over the compacted cache {err:.2e}")
    assert err <= 1e-4
    # the reference can tell: the full cache, or the compacted one at another position, differ
    full = m.logits(ids + cont, images=[single["image"]])[len(ids):]
    assert rel_err(full, want) > 1e-3
    assert rel_err(ref.numpy_decode(ivl["hf"], past, st.kept, cont, len(ids) - 3), want) > 1e-3
