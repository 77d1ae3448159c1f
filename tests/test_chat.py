"""Conversations: Model.chat (OpenAI-style messages through the chat template) and sessions that keep
their KV cache between turns. The reference for the template is HF's own rendering (the tiny
LLaVA's chat template, llava-1.5-hf's); a session's later turn is checked against teacher forcing
over the same compacted cache (Model.logits with n_prompt)."""

import base64
import io

import numpy as np
import pytest

import aircache_cpp as ac
from hf_llava_fixtures import small_llava_gguf


def img(seed=0, h=64, w=64):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def llava(tmp_path_factory, spm_model):
    hf, text, mm = small_llava_gguf(tmp_path_factory, spm_model, "llava-chat", seed=9)
    return {"dir": hf, "model": ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024)}


def test_chat_renders_like_hf(llava):
    """Multi-turn messages render as HF's apply_chat_template (the checkpoint's template) renders
    them, and tokenize to the ids HF's processor writes (images expanded)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(llava["dir"])
    m = llava["model"]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red star."}]},
            {"role": "user", "content": [{"type": "text", "text": "And its size?"}]}]
    hf_text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    ours = m._engine.render_chat([(r["role"], [(p["type"] == "image", p.get("text", "")) for p in r["content"]])
                                  for r in msgs], "", True)
    assert ours == hf_text
    enc = proc(images=[img(1)], text=hf_text, return_tensors="np")
    api = [{"role": "user", "content": [{"type": "image", "image": img(1)}, {"type": "text", "text": "What is this?"}]},
           msgs[1], {"role": "user", "content": "And its size?"}]
    ids = m._engine.build_chat(ac.model._messages(api)[0], [img(1)], "", True)
    assert ids == enc.input_ids[0].tolist()


def test_chat_equals_generate(llava):
    m = llava["model"]
    r1 = m.generate(img(2), "Describe the picture.", max_tokens=10, kv_policy="aircache", kv_budget=0.3)
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(img(2)).save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    for part in ({"type": "image_url", "image_url": {"url": uri}}, {"type": "image", "image": img(2)}):
        r2 = m.chat([{"role": "user", "content": [part, {"type": "text", "text": "Describe the picture."}]}],
                    max_tokens=10, kv_policy="aircache", kv_budget=0.3)
        assert r2.tokens == r1.tokens and r2.text == r1.text
        assert np.array_equal(r2.stats.kept[1], r1.stats.kept[1])
    pieces = list(m.chat([{"role": "user", "content": "Hello"}], max_tokens=6, stream=True))
    assert "".join(pieces) == m.generate(prompt="Hello", max_tokens=6).text


def test_chat_errors(llava):
    m = llava["model"]
    with pytest.raises(ac.InputError, match="role"):
        m.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(ac.InputError, match="non-empty list"):
        m.chat([])
    with pytest.raises(ac.InputError, match="part type"):
        m.chat([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ac.InputError, match="base64"):
        m.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}])
    with pytest.raises(ac.InputError, match="unknown option"):
        m.chat([{"role": "user", "content": "hi"}], max_token=3)
    with pytest.raises(ac.InputError, match="system message must come first"):
        m.chat([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}])


def fed(r):
    """Rows a turn's decoding fed: every sampled token but the last (an end-of-generation token is
    not in r.tokens; any other last token is)."""
    return len(r.tokens) - (0 if r.stats.stop_reason == "eos" else 1)


@pytest.mark.parametrize("policy,budget", [("aircache", 0.2), ("snapkv", 0.25), ("full", 1.0)])
def test_session_turn_two_equals_teacher_forcing(llava, policy, budget):
    """Turn 1 (image + question) is prefilled and compressed; turn 2 appends to the compacted cache.
    Turn 2's prompt logits equal Model.logits over the whole conversation with n_prompt = turn 1's
    prompt (its rows compressed, the answer and turn 2 teacher-forced over the compacted cache)."""
    m = llava["model"]
    s = m.session(kv_policy=policy, kv_budget=budget)
    r1 = s.send([{"type": "image", "image": img(3)}, {"type": "text", "text": "What colour is it?"}], max_tokens=6,
                prompt_logits=True)
    n1 = r1.stats.n_prompt
    assert s.compressed == (policy != "full") and s.n_turns == 1
    assert len(s.ids) == n1 + fed(r1)
    r2 = s.send("And the shape?", max_tokens=4, prompt_logits=True)
    ids = s.ids
    n2 = r2.stats.n_prompt
    start = len(ids) - fed(r2) - n2  # turn 2's prompt rows: [start, start + n2)
    ref, st = m.logits(ids[:start + n2], images=[img(3)], kv_policy=policy, kv_budget=budget, n_prompt=n1,
                       return_stats=True)
    assert r2.prompt_logits.shape == (n2, m.n_vocab)
    np.testing.assert_allclose(r2.prompt_logits, ref[start:start + n2], rtol=0, atol=2e-4 * np.abs(ref).max())
    # turn 1's logits are the compressed prefill's (its last row picked the first answer token)
    np.testing.assert_allclose(r1.prompt_logits[-1], ref[n1 - 1], rtol=0, atol=1e-5 * np.abs(ref).max())
    if policy != "full":
        assert s.compression.kv_policy == policy and s.compression.kv_bytes_after < s.compression.kv_bytes_before
        assert all(np.array_equal(a, b) for a, b in zip(s.compression.kept, st.kept))
    assert [x["role"] for x in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[3]["content"] == r2.text


def test_session_text_first_then_image(llava):
    """An image in a later turn: the conversation so far is prefilled again with it and compressed
    then (the policy sees it whole), equal to a one-shot run of the same ids."""
    m = llava["model"]
    s = m.session(kv_policy="h2o", kv_budget=0.2)
    s.send("Hello!", max_tokens=3)
    assert not s.compressed
    r = s.send([{"type": "image", "image": img(4)}, {"type": "text", "text": "What is it?"}], max_tokens=5,
               prompt_logits=True)
    assert s.compressed
    ids = s.ids
    n = len(ids) - fed(r)
    ref = m.logits(ids[:n], images=[img(4)], kv_policy="h2o", kv_budget=0.2)
    np.testing.assert_allclose(r.prompt_logits, ref[n - r.stats.n_prompt:n], rtol=0, atol=1e-5 * np.abs(ref).max())


def test_session_streaming_reset_and_errors(llava):
    m = llava["model"]
    s = m.session(kv_policy="aircache", kv_budget=0.2, system="You are terse.")
    st = s.send([{"type": "image", "image": img(5)}, {"type": "text", "text": "Hi"}], max_tokens=5, stream=True)
    text = "".join(st)
    assert st.result.text == text and s.n_turns == 1 and s.kv_bytes > 0
    with pytest.raises(ac.InputError, match="session"):
        s.send("x", kv_policy="full")
    s.reset()
    assert s.n_turns == 0 and s.ids == [] and s.kv_bytes == 0 and not s.compressed
    r = s.send("Hello", max_tokens=2)
    assert r.stats.n_prompt == len(m.tokenize(m._engine.render_chat([("system", [(False, "You are terse.")]),
                                                                       ("user", [(False, "Hello")])], "", True)))
    small = ac.Model(m.model_path, kv_type="f32", n_ctx=64)
    s2 = small.session()
    s2.send("one two three", max_tokens=2)
    n_ids = len(s2.ids)
    with pytest.raises(ac.InputError, match="context"):
        s2.send("four five six seven eight nine ten eleven twelve thirteen", max_tokens=2)
    assert s2.n_turns == 1 and len(s2.ids) == n_ids  # the refused turn left the conversation as it was
    s2.send("ok", max_tokens=1)
    assert s2.n_turns == 2


@pytest.fixture(scope="module")
def image_echo(tmp_path_factory, spm_model):
    """A tiny LLaVA whose every greedy token is the image token: the layers' outputs zeroed (the
    residual stream is the token's embedding), every embedding +1 in dimension 0, and the output
    row of the image token the only non-zero one (+10 in dimension 0), so its logit is the one
    positive. HF transformers, and this runtime, feed a generated image token as text."""
    import sys

    import torch

    from fixture_configs import LLAVA
    from hf_llava_fixtures import SMALL, make_tiny_llava

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import convert_hf_to_gguf as conv

    d = tmp_path_factory.mktemp("llava-image-echo")
    model = make_tiny_llava(str(d / "hf"), spm_model, seed=13, **dict(LLAVA, **SMALL))
    lm = model.model.language_model
    img_id = model.config.image_token_index
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        lm.embed_tokens.weight[:, 0] = 1.0
        lm.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[img_id, 0] = 10.0
    model.save_pretrained(str(d / "hf"))
    text, mm = conv.convert_llava(str(d / "hf"), str(d / "text.gguf"), str(d / "mmproj.gguf"), "f32")
    return ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024), img_id


@pytest.mark.parametrize("policy", ["full", "aircache"])
def test_session_generated_image_token_is_text(image_echo, policy):
    """An answer that ends in the image token (sampled, fed at the next turn) and answers made of it
    (fed during decoding, in the history a compressing turn prefills again) are text rows: the next
    turns work and the model keeps answering with it (before: 'the sequence holds image positions ...
    but only 0 image(s) were given')."""
    m, img_id = image_echo
    assert m.image_token_id == img_id
    s = m.session(kv_policy=policy, kv_budget=0.5)
    r1 = s.send("Say something.", max_tokens=3)          # text only: the answer is 3 image tokens
    assert r1.tokens == [img_id] * 3 and r1.stats.stop_reason == "length"
    n1 = len(s.ids)
    r2 = s.send([{"type": "image", "image": img(5)}, {"type": "text", "text": "And this?"}], max_tokens=2)
    assert r2.tokens == [img_id] * 2
    assert s.compressed == (policy != "full")
    assert s.ids[n1] == img_id                              # the fed last token of answer 1
    r3 = s.send("Once more.", max_tokens=2)                 # after an answer ending in the image token
    assert r3.tokens == [img_id] * 2 and s.n_turns == 3
