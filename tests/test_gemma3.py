"""Gemma 3 end to end against HF transformers, on a tiny random-weight Gemma3ForConditionalGeneration
(tests/hf_gemma_fixtures.py: 6 layers, one global, a sliding window of 8 positions; SigLIP tower)
converted by llama.cpp's convert_hf_to_gguf.py (tests/conftest.py `vlm_converted`):

- pixel values (stretch, Pillow bilinear) and image features equal HF's (the projection is F16 in
  every llama.cpp file: HF's copy is rounded to F16 for the comparison);
- the prompt as HF's chat template and Gemma3Processor write it (the image's "\\n\\n" wrappers, 16
  soft tokens);
- prompt + 32 teacher-forced tokens, longer than the sliding window, with the image's tokens attending
  both ways (HF's token_type_ids): logits equal HF's for one image, two images, text only, at the
  F32 / F16 cache and F16 files; greedy generation equals HF's;
- the device paths (test backend); compression of a model with sliding-window layers is refused
  until its semantics land."""

import numpy as np
import pytest
from PIL import Image

import aircache_cpp as ac
import hf_gemma_fixtures as G


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def gemma(vlm_converted, tiny_gemma3):
    hf = G.round_projection_to_f16(G.load_gemma3(str(tiny_gemma3)))
    text, mm = vlm_converted["gemma3-f32"]
    return {"hf": hf, "proc": G.load_gemma_processor(str(tiny_gemma3)), "files": vlm_converted,
            "model": ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=512)}


def test_pixel_values_and_features(gemma):
    m = gemma["model"]
    for i, (w, h) in enumerate([(64, 64), (100, 75), (30, 90)]):
        a = img(i, w, h)
        pv = G.hf_pixel_values(Image.fromarray(a))
        assert np.abs(m.pixel_values(a).reshape(pv.shape) - pv).max() <= 1e-6
        assert m.n_image_tokens(a) == m.n_image_tokens() == 16
        assert rel_err(m.encode_image(a), G.hf_image_features(gemma["hf"], pv)) <= 1e-4


def hf_chat_ids(gemma, n_images, question):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    text = gemma["proc"].tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                        add_generation_prompt=True)
    return text


CASES = {"one-image": [(100, 75)], "two-images": [(100, 75), (50, 80)], "text-only": []}


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_and_logits_equal_hf(gemma, case):
    m = gemma["model"]
    images = [img(20 + i, w, h) for i, (w, h) in enumerate(CASES[case])]
    question = "what is in the picture, and where is it?"
    text = hf_chat_ids(gemma, len(images), question)
    want_ids, tt, pv = G.hf_prompt_ids(gemma["proc"], text, [Image.fromarray(a) for a in images])
    ids = m.build_prompt(question, images)
    assert m.chat_template == "gemma3"
    assert ids == want_ids  # the template, the image wrappers, the tokenizer
    assert sum(tt) == 16 * len(images)
    ids = ids + np.random.default_rng(3).integers(10, 500, 32).tolist()
    assert len(ids) > 8 * 4  # far longer than the sliding window
    ref = G.hf_logits(gemma["hf"], ids, pv)
    for kv, tol in [("f32", 1e-4), ("f16", 5e-3)]:
        t32, m32 = gemma["files"]["gemma3-f32"]
        mm = m if kv == "f32" else ac.Model(t32, mmproj=m32,
                                            kv_type="f16", n_ctx=512)
        err = rel_err(mm.logits(ids, images=images), ref)
        print(f"gemma3 {case} KV {kv}: relative logit error {err:.2e}")
        assert err <= tol
    text16, mm16 = gemma["files"]["gemma3-f16"]
    err = rel_err(ac.Model(text16, mmproj=mm16, n_ctx=512).logits(ids, images=images), ref)
    print(f"gemma3 {case} F16 files: relative logit error {err:.2e}")
    assert err <= 2e-2


def test_bidirectional_image_and_window_matter(gemma):
    """The reference can tell: HF without token_type_ids (causal image) differs from what we compute."""
    m = gemma["model"]
    a = img(30, 100, 75)
    ids = m.build_prompt("describe it", [a]) + list(range(20, 40))
    _, _, pv = G.hf_prompt_ids(gemma["proc"], hf_chat_ids(gemma, 1, "describe it"), [Image.fromarray(a)])
    ours = m.logits(ids, images=[a])
    assert rel_err(ours, G.hf_logits(gemma["hf"], ids, pv)) <= 1e-4
    assert rel_err(ours, G.hf_logits(gemma["hf"], ids, pv, bidirectional=False)) > 1e-3


def test_greedy_generation_equals_hf(gemma):
    m = gemma["model"]
    a = img(31, 80, 60)
    ids = m.build_prompt("what shape is it?", [a])
    _, _, pv = G.hf_prompt_ids(gemma["proc"], hf_chat_ids(gemma, 1, "what shape is it?"), [Image.fromarray(a)])
    want = G.hf_greedy(gemma["hf"], ids, pv, n_new=10)
    r = m.generate(a, "what shape is it?", max_tokens=10)
    assert r.tokens == want[:len(r.tokens)] and len(r.tokens) >= 1


def test_chat_template_equals_hf(gemma):
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is here? "}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": [{"type": "text", "text": "And the colour?"}]}]
    want = gemma["proc"].tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    got = gemma["model"]._engine.render_chat(
        [(x["role"], [(c["type"] == "image", c.get("text", "")) for c in x["content"]]) for x in msgs], "", True)
    # HF's template writes <start_of_image> where the processor later puts the whole image sequence
    assert got.replace("\n\n<start_of_image><image><end_of_image>\n\n", "<start_of_image>") == want.replace(
        "<bos>", "")


def test_device_paths(gemma):
    text, mm = gemma["files"]["gemma3-f32"]
    a = img(40, 100, 75)
    ids = gemma["model"].build_prompt("what is it", [a]) + list(range(30, 50))
    want = gemma["model"].logits(ids, images=[a])
    for dev, ngl in [("test", -1), ("test", 3), ("test:decline=attention_kv+glu", -1)]:
        m = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=512, device=dev, n_gpu_layers=ngl)
        assert rel_err(m.logits(ids, images=[a]), want) <= 1e-5, (dev, ngl)


def test_compression_refused_for_now(gemma):
    m = gemma["model"]
    with pytest.raises(ac.UnsupportedError, match="sliding-window layers \\(gemma3\\) is not supported yet"):
        m.generate(img(1, 64, 64), "hi", max_tokens=1, kv_policy="aircache", kv_budget=0.1)
    assert m.generate(img(1, 64, 64), "hi", max_tokens=2, kv_policy="full").stats.n_generated >= 1
