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
- the device paths (test backend);
- compression (docs/compression.md): every policy's budget counted and apportioned over the global
  layers only (also on a copy of the file with every second layer global, so three of them), the
  sliding-window layers cut to their last window - 1 positions; kept sets equal the numpy reference
  over HF's eager attentions of the global layers (image rows attending both ways); decoding over the
  compacted cache, and a second session turn, equal HF's own forward with the dropped rows masked."""

import numpy as np
import pytest
from PIL import Image

import aircache_cpp as ac
import compress_reference as ref
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


# ------------------------------------------------------------------------------------------------
# compression: the budget over the layers that hold the whole prompt; sliding-window layers keep
# their window (docs/compression.md)

WINDOW = 8
POLICIES = ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]


@pytest.fixture(scope="module")
def gemma_p2(gemma, tiny_gemma3, tmp_path_factory):
    """The same weights with every second layer global (layers 1, 3, 5): HF with that layer pattern,
    ours from a copy of the converted file that says attention.sliding_window_pattern = 2 — three
    global layers, so budgets are apportioned across layers."""
    import gguf
    from gguf_fixtures import rewrite_gguf

    text, mm = gemma["files"]["gemma3-f32"]
    dst = str(tmp_path_factory.mktemp("gemma-p2") / "text.gguf")
    rewrite_gguf(text, dst, kv={"gemma3.attention.sliding_window_pattern": (2, gguf.GGUFValueType.UINT32)})
    hf = G.round_projection_to_f16(G.load_gemma3(str(tiny_gemma3), ["sliding_attention", "full_attention"] * 3))
    return {"hf": hf, "model": ac.Model(dst, mmproj=mm, kv_type="f32", n_ctx=512), "global": [1, 3, 5]}


def one_image_case(gemma, model, hf, question="which shape is left of the red one, and why?"):
    a = img(50, 100, 75)
    ids = model.build_prompt(question, [a])
    _, _, pv = G.hf_prompt_ids(gemma["proc"], hf_chat_ids(gemma, 1, question), [Image.fromarray(a)])
    att, _ = G.hf_attentions(hf, ids, pv)
    return {"ids": ids, "image": a, "pv": pv, "P": [x.astype(np.float64) for x in att]}


@pytest.fixture(scope="module")
def cases(gemma, gemma_p2):
    return {"p6": dict(one_image_case(gemma, gemma["model"], gemma["hf"]), model=gemma["model"], hf=gemma["hf"],
                       glob=[5]),
            "p2": dict(one_image_case(gemma, gemma_p2["model"], gemma_p2["hf"]), model=gemma_p2["model"],
                       hf=gemma_p2["hf"], glob=gemma_p2["global"])}


def layout_of(m, ids):
    return ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == m.image_token_id])


def run(c, p):
    _, st = c["model"].logits(c["ids"], images=[c["image"]], kv_policy=p.policy, kv_budget=p.budget,
                              kv_scope=p.scope, kv_selection=p.selection, kv_options=dict(p.options),
                              return_stats=True)
    return st


@pytest.mark.parametrize("pattern", ["p6", "p2"])
def test_budget_accounting_every_policy(cases, pattern):
    c = cases[pattern]
    layout = layout_of(c["model"], c["ids"])
    m, glob = layout.m, c["glob"]
    assert len(layout.visual) == 16 and m > 3 * WINDOW
    window_rows = list(range(m - (WINDOW - 1), m))  # all the next position still sees
    for policy in POLICIES:
        for r in [1e-6, 0.1, 0.37]:
            for sel in ["layer", "kv_head"]:
                st = run(c, ref.Params(policy, r, selection=sel))
                assert list(np.nonzero(st.layer_window == 0)[0]) == glob
                assert all(st.layer_window[l] == WINDOW for l in range(6) if l not in glob)
                assert int(st.visual_kept[glob].sum()) == ref.total_budget(r, 16, len(glob)), (policy, r, sel)
                for l, kept in enumerate(st.kept):
                    for rows in (kept if sel == "kv_head" else [kept]):
                        if l in glob:  # every text row stays
                            assert set(range(m)) - set(layout.visual) <= set(rows)
                        else:
                            assert list(rows) == window_rows, (policy, l)
                assert np.isnan(st.diagnostics.get("strength", np.zeros(6))[[l for l in range(6) if l not in glob]]).all() \
                    or policy != "aircache"
    st = run(c, ref.Params("full", 1.0))
    assert (st.layer_window == 0).all() and all(len(k) == m for k in st.kept)


KEPT_CASES = [ref.Params("aircache", 0.2), ref.Params("vlcache", 0.2), ref.Params("vlcache", 0.3, "all"),
              ref.Params("snapkv", 0.2, options={"snap_window": 8}), ref.Params("h2o", 0.25),
              ref.Params("h2o", 0.3, "all"), ref.Params("pyramidkv", 0.3, options={"snap_window": 8})]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
@pytest.mark.parametrize("pattern", ["p6", "p2"])
def test_kept_sets_match_reference(cases, pattern, selection):
    """The numpy reference plans over HF's eager attentions of the global layers only (image rows
    attending both ways: H2O's column sums include them)."""
    c = cases[pattern]
    layout = layout_of(c["model"], c["ids"])
    P = [c["P"][l] for l in c["glob"]]
    for p in KEPT_CASES:
        p = ref.Params(p.policy, p.budget, p.scope, selection, p.options)
        want = ref.plan(P, layout, 4, 2, p)
        got = run(c, p)
        k = got.visual_kept if p.scope == "visual" else got.total_kept
        np.testing.assert_array_equal(k[c["glob"]], want["k"])
        cands = ref.candidates(layout, p.scope)
        for i, l in enumerate(c["glob"]):
            pairs = [(list(got.kept[l]), want["kept"][i], want["scores"][i])] if selection == "layer" else \
                [(list(a), b, sc) for a, b, sc in zip(got.kept[l], want["kept"][i], want["scores"][i])]
            for ours, theirs, score in pairs:
                assert ref.explained_by_ties(ours, theirs, score, cands), (p.policy, l)


def test_h2o_scores_see_the_image_both_ways(cases):
    """The reference can tell: with causal-only image rows H2O would keep another set."""
    c = cases["p2"]
    layout = layout_of(c["model"], c["ids"])
    causal = [np.tril(P) / np.tril(P).sum(-1, keepdims=True) for P in (c["P"][l] for l in c["glob"])]
    p = ref.Params("h2o", 0.25)
    got = run(c, p)
    want = ref.plan(causal, layout, 4, 2, p)
    assert any(list(got.kept[l]) != want["kept"][i] for i, l in enumerate(c["glob"]))


CONT = [300, 17, 42, 301, 99, 5, 7, 250, 31, 77]


@pytest.mark.parametrize("pattern", ["p6", "p2"])
@pytest.mark.parametrize("policy,budget,selection", [("aircache", 0.15, "layer"), ("vlcache", 0.2, "kv_head"),
                                                    ("h2o", 0.3, "layer"), ("random", 0.3, "kv_head")])
def test_decoding_over_compacted_cache(cases, pattern, policy, budget, selection):
    """Continuation logits over the compacted cache equal HF's own forward with the dropped rows masked
    in the global layers only (its sliding layers keep their window mask): cutting the sliding layers
    to their last window - 1 positions loses nothing."""
    c = cases[pattern]
    m, ids = c["model"], c["ids"]
    out, st = m.logits(ids + CONT, images=[c["image"]], kv_policy=policy, kv_budget=budget, kv_selection=selection,
                       n_prompt=len(ids), return_stats=True)
    assert st.kv_bytes_after < st.kv_bytes_before
    kept = [k if l in c["glob"] else None for l, k in enumerate(st.kept)]
    want = G.hf_logits_masked(c["hf"], ids + CONT, c["pv"], len(ids), kept)[len(ids):]
    err = rel_err(out[len(ids):], want)
    print(f"gemma3 {pattern} {policy}/{selection}: relative logit error over the compacted cache {err:.2e}")
    assert err <= 1e-4
    # the reference can tell: HF's full-cache forward differs
    assert rel_err(G.hf_logits(c["hf"], ids + CONT, c["pv"])[len(ids):], want) > 1e-3


def test_two_turn_session_over_compacted_cache(gemma, cases):
    c = cases["p2"]
    m = c["model"]
    sess = m.session(kv_policy="aircache", kv_budget=0.2)
    r1 = sess.send([c["image"], "which shape is on the left of the red one?"], max_tokens=5)
    assert sess.compressed
    n1 = r1.stats.n_prompt
    r2 = sess.send("and on the right?", max_tokens=6)
    ids = sess.ids
    _, _, pv = G.hf_prompt_ids(gemma["proc"], hf_chat_ids(gemma, 1, "which shape is on the left of the red one?"),
                               [Image.fromarray(c["image"])])
    kept = [k if l in c["glob"] else None for l, k in enumerate(sess.compression.kept)]
    want = G.hf_logits_masked(c["hf"], ids, pv, n1, kept)
    # every token generated over the compacted cache is the reference's greedy pick
    for j in range(1, len(r1.tokens)):
        assert ids[n1 + j] == r1.tokens[j] == int(np.argmax(want[n1 + j - 1]))
    start = len(ids) - (len(r2.tokens) - 1)
    for j, t in enumerate(r2.tokens):
        assert t == int(np.argmax(want[start - 1 + j])), j
    assert len(ids) - n1 > WINDOW  # the second turn runs past the first prompt's window


def test_cli_reports_the_layers(gemma, tmp_path):
    import subprocess
    text, mm = gemma["files"]["gemma3-f32"]
    path = tmp_path / "a.png"
    Image.fromarray(img(60, 90, 70)).save(path)
    r = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "--image", str(path),
                        "-p", "what is it?", "-n", "3", "--kv-policy", "snapkv", "--kv-budget", "0.25"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "kept 4.0 of 16 visual positions" in r.stderr
    assert "KV budget over the 1 layers that hold the whole prompt; the other 5 (sliding-window) layers keep the last " \
           "7 positions" in r.stderr


def test_compression_needs_a_global_layer(gemma, tmp_path):
    import gguf
    from gguf_fixtures import rewrite_gguf

    text, mm = gemma["files"]["gemma3-f32"]
    dst = rewrite_gguf(text, str(tmp_path / "t.gguf"),
                       kv={"gemma3.attention.sliding_window_pattern": (7, gguf.GGUFValueType.UINT32)})
    m = ac.Model(dst, mmproj=mm, kv_type="f32", n_ctx=512)  # 6 layers, pattern 7: no global layer
    with pytest.raises(ac.UnsupportedError, match="every layer of this gemma3 model is a sliding-window layer"):
        m.generate(img(1, 64, 64), "hi", max_tokens=1, kv_policy="aircache", kv_budget=0.1)
    assert m.generate(img(1, 64, 64), "hi", max_tokens=2, kv_policy="full").stats.n_generated >= 1


def test_evaluate_policies_and_hit_rate(cases):
    """One prefill for several settings: each equals its own run; the hit rate covers the planned
    (global) layers, against HF's attention of the first continuation token."""
    c = cases["p2"]
    m, ids = c["model"], c["ids"]
    settings = [{"kv_policy": "aircache", "kv_budget": 0.2}, {"kv_policy": "h2o", "kv_budget": 0.25},
                {"kv_policy": "random", "kv_budget": 1e-6}]
    res = m.evaluate_policies(ids + CONT, [c["image"]], n_prompt=len(ids), policies=settings, hit_rate=True)
    att, _ = G.hf_attentions(c["hf"], ids + CONT[:1], c["pv"])
    layout = layout_of(m, ids)
    for s, (lg, st) in zip(settings, res):
        one = m.logits(ids + CONT, images=[c["image"]], kv_policy=s["kv_policy"], kv_budget=s["kv_budget"],
                       n_prompt=len(ids))
        assert rel_err(lg[1:], one[len(ids):]) <= 1e-5
        assert len(st.hit_rate_per_layer) == len(c["glob"])
        for i, l in enumerate(c["glob"]):  # recall of the top-k by HF's attention of the first new row
            a = att[l][:, len(ids), :len(ids)].mean(0)
            kept = [r for r in st.kept[l] if r in set(layout.visual)]
            top = sorted(layout.visual, key=lambda r: -a[r])[:len(kept)]
            assert abs(st.hit_rate_per_layer[i] - len(set(top) & set(kept)) / len(kept)) <= 1e-6
        assert abs(st.hit_rate - np.mean(st.hit_rate_per_layer)) <= 1e-9


TEXT_ERRORS = [("gemma3.attention.sliding_window", 0, "sliding_window' is 0"),
               ("gemma3.attention.sliding_window", None, "gemma3.attention.sliding_window"),
               ("gemma3.attention.sliding_window_pattern", 0, "sliding_window_pattern' is 0"),
               ("gemma3.rope.freq_base_swa", -1.0, "freq_base_swa' is -1"),
               ("gemma3.attention.layer_norm_rms_epsilon", -1.0, "layer_norm_rms_epsilon' is -1"),
               ("gemma3.embedding_length", 32, "'token_embd.weight' has shape \\[64, \\d+\\], expected \\[32"),
               ("gemma3.feed_forward_length", 64, "'blk.0.ffn_gate.weight' has shape"),
               ("gemma3.attention.head_count", 2, "'blk.0.attn_q.weight' has shape"),
               ("gemma3.attention.head_count_kv", 1, "'blk.0.attn_k.weight' has shape"),
               ("gemma3.block_count", 7, "missing tensor 'blk.6.attn_norm.weight'")]
MMPROJ_ERRORS = [("clip.vision.embedding_length", 16, "'v.patch_embd.weight' has shape"),
                 ("clip.vision.block_count", 3, "missing tensor 'v.blk.2.ln1.weight'"),
                 ("clip.vision.image_size", 48, "'v.position_embd.weight' has shape"),
                 ("clip.vision.patch_size", 16, "'v.patch_embd.weight' has shape"),
                 ("clip.vision.attention.head_count", 3, "not a multiple of clip.vision.attention.head_count 3"),
                 ("clip.vision.attention.layer_norm_epsilon", -1.0, "layer_norm_epsilon' is -1")]


def test_hyperparameters_checked_against_the_tensors(gemma, tmp_path):
    """Each hyperparameter a loader reads, changed in a copy of the converted files: a FormatError
    naming it (or the tensor it contradicts), at load."""
    import gguf
    from gguf_fixtures import rewrite_gguf

    text, mm = gemma["files"]["gemma3-f32"]
    for i, (key, val, msg) in enumerate(TEXT_ERRORS + MMPROJ_ERRORS):
        is_text = i < len(TEXT_ERRORS)
        kind = gguf.GGUFValueType.FLOAT32 if isinstance(val, float) else gguf.GGUFValueType.UINT32
        dst = rewrite_gguf(text if is_text else mm, str(tmp_path / f"{i}.gguf"),
                           kv={key: None if val is None else (val, kind)})
        with pytest.raises(ac.FormatError, match=msg):
            ac.Model(dst if is_text else text, mmproj=mm if is_text else dst, n_ctx=256)
