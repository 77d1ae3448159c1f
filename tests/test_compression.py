"""Visual KV compression (docs/compression.md) on a tiny random LLaVA: every policy's kept positions equal a
numpy reference of the document fed with HF transformers' eager attention probabilities; `full` and
budget 1.0 are bit-identical to no compression; decoding over the compacted cache equals a plain
numpy decoder over HF's own KV cache restricted to the kept positions; budget accounting; degenerate
prompts; errors; CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import aircache_cpp as ac
import compress_reference as ref
from fixture_configs import LLAVA

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import convert_hf_to_gguf as conv  # noqa: E402

QUESTION = "What colour is the star on the left?"


def img(seed=0, h=64, w=64):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def llava(tmp_path_factory, spm_model):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from hf_llava_fixtures import small_llava_gguf

    hf, text, mm = small_llava_gguf(tmp_path_factory, spm_model, "llava-kv", seed=7)
    hf_model = LlavaForConditionalGeneration.from_pretrained(hf, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(hf)
    model = ac.Model(text, mmproj=mm, kv_type="f32", image_mode="crop", n_ctx=512)
    return {"hf": hf_model, "proc": proc, "model": model, "text": text, "mmproj": mm}


def prompt(llava, images, text=None):
    text = text or "USER: " + "<image>\n" * len(images) + QUESTION + " ASSISTANT:"
    enc = llava["proc"](images=images, text=text, return_tensors="pt")
    return enc.input_ids[0].tolist(), enc.pixel_values


def hf_attentions(llava, ids, pixel_values):
    with torch.no_grad():
        out = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=pixel_values, output_attentions=True)
    return [a[0].double().numpy() for a in out.attentions]


def layout_of(llava, ids):
    t = llava["model"].image_token_id
    return ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == t])


@pytest.fixture(scope="module")
def single(llava):
    ids, px = prompt(llava, [img(1)])
    return ids, px, hf_attentions(llava, ids, px)


def our_plan(llava, ids, images, p: ref.Params):
    opts = {k: v for k, v in p.options.items()}
    _, stats = llava["model"].logits(ids, images=images, kv_policy=p.policy, kv_budget=p.budget, kv_scope=p.scope,
                                     kv_selection=p.selection, kv_options=opts, return_stats=True)
    return stats


CASES = [
    ref.Params("h2o", 0.2), ref.Params("h2o", 0.3, "all"), ref.Params("h2o", 0.3, "all", options={"h2o_recent": 0.2}),
    ref.Params("snapkv", 0.2), ref.Params("snapkv", 0.1, options={"snap_window": 8, "snap_kernel": 3, "snap_pool": "avg"}),
    ref.Params("snapkv", 0.3, "all", options={"snap_window": 4}),
    ref.Params("pyramidkv", 0.2), ref.Params("pyramidkv", 0.3, options={"pyr_beta": 4}),
    ref.Params("pyramidkv", 0.4, "all", options={"snap_window": 4, "pyr_beta": 5}),
    ref.Params("vlcache", 0.2), ref.Params("vlcache", 0.05, options={"vl_p": 0.1, "vl_max_queries": 5}),
    ref.Params("vlcache", 0.3, "all"), ref.Params("vlcache", 0.3, "all", options={"vl_window": 0.3, "vl_min_frac": 0.1}),
    ref.Params("aircache", 0.1), ref.Params("aircache", 0.25, options={"air_alpha": 0.5}),
    ref.Params("aircache", 0.2, options={"air_norm": "minmax", "air_invert_skew": True}),
    ref.Params("aircache", 0.2, options={"air_budget": "strength"}),
    ref.Params("aircache", 0.2, options={"air_budget": "skew", "air_alpha": 0.3}),
    ref.Params("aircache", 0.2, options={"air_budget": "uniform"}),
]


def case_id(p):
    o = ",".join(f"{k}={v}" for k, v in p.options.items())
    return f"{p.policy}-{p.budget}-{p.scope}" + (f"-{o}" if o else "")


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
@pytest.mark.parametrize("p", CASES, ids=case_id)
def test_kept_positions_match_reference(llava, single, p, selection):
    ids, _, P = single
    p = ref.Params(p.policy, p.budget, p.scope, selection, p.options)
    layout = layout_of(llava, ids)
    cfg = llava["hf"].config.text_config
    want = ref.plan(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, p)
    got = our_plan(llava, ids, [img(1)], p)
    cands = ref.candidates(layout, p.scope)
    # budgets: per layer, and the total exactly K
    k_ours = got.visual_kept if p.scope == "visual" else got.total_kept
    np.testing.assert_array_equal(k_ours, want["k"])
    assert int(np.sum(k_ours)) == want["K"]
    for l in range(len(want["k"])):
        if selection == "layer":
            pairs = [(list(got.kept[l]), want["kept"][l], want["scores"][l])]
        else:
            pairs = [(list(a), b, s) for a, b, s in zip(got.kept[l], want["kept"][l], want["scores"][l])]
        for ours, theirs, score in pairs:
            assert ours == sorted(ours)
            assert ref.explained_by_ties(ours, theirs, score, cands), (
                f"layer {l}: ours-ref {sorted(set(ours) - set(theirs))} ref-ours {sorted(set(theirs) - set(ours))}")
    for name, series in want["diagnostics"].items():
        np.testing.assert_allclose(got.diagnostics[name], series, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("policy,opts", [("vlcache", {}), ("aircache", {}), ("snapkv", {}), ("mosaic", {}),
                                         ("mosaic", {"mo_budget": "density"}), ("mosaic", {"mo_score": "elite"})])
def test_probes_do_not_depend_on_the_thread_count(llava, single, policy, opts):
    """More threads than KV heads (2 here) split each group's query heads over the threads
    (HostChunk::head_from/to): the probes' statistics, the kept rows and the logits are the same bits
    as with one thread."""
    ids, _, _ = single
    runs = []
    for n in (1, 3, 8):
        with ac.Model(llava["text"], mmproj=llava["mmproj"], kv_type="f32", image_mode="crop", n_ctx=512,
                      n_threads=n) as m:
            logits, st = m.logits(ids, images=[img(1)], kv_policy=policy, kv_budget=0.2, kv_options=opts,
                                  return_stats=True)
            runs.append((np.asarray(logits), [list(k) for k in st.kept], dict(st.diagnostics)))
    for logits, kept, diag in runs[1:]:
        assert kept == runs[0][1]
        np.testing.assert_array_equal(logits, runs[0][0])
        assert diag.keys() == runs[0][2].keys()
        for name in diag:
            np.testing.assert_array_equal(np.asarray(diag[name]), np.asarray(runs[0][2][name]), err_msg=name)


def test_full_and_budget_one_are_identity(llava, single):
    """`full` and every policy at budget 1.0 give bit-identical logits and tokens."""
    ids, _, _ = single
    m = llava["model"]
    cont = ids + [300, 301, 302, 303, 5, 6]
    # the same split (prompt prefilled, then the continuation) without compression: the kernels'
    # arithmetic depends on how many rows one forward holds (prefill gemm vs decode dots)
    base = m.logits(cont, images=[img(1)], kv_policy="full", n_prompt=len(ids))
    one_shot = m.logits(cont, images=[img(1)])
    assert np.abs(base - one_shot).max() <= 1e-4 * np.abs(one_shot).max()
    for pol in ["full", "random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache", "mosaic"]:
        for sel in ["layer", "kv_head"]:
            out, st = m.logits(cont, images=[img(1)], kv_policy=pol, kv_budget=1.0, kv_selection=sel,
                               n_prompt=len(ids), return_stats=True)
            assert np.array_equal(out, base), pol
            assert st.kv_bytes_after == st.kv_bytes_before
    g0 = m.generate(img(1), QUESTION, max_tokens=12)
    for pol in ["full", "aircache", "vlcache"]:
        assert m.generate(img(1), QUESTION, max_tokens=12, kv_policy=pol, kv_budget=1.0).tokens == g0.tokens


@pytest.mark.parametrize("policy,budget,scope,selection", [
    ("aircache", 0.1, "visual", "layer"), ("aircache", 0.2, "visual", "kv_head"), ("vlcache", 0.15, "all", "layer"),
    ("snapkv", 0.2, "visual", "kv_head"), ("streaming", 0.1, "all", "kv_head"), ("random", 0.3, "visual", "layer"),
])
def test_decoding_over_compacted_cache(llava, single, policy, budget, scope, selection):
    ids, px, _ = single
    cont = [300, 17, 42, 301, 99, 5, 7, 250]
    with torch.no_grad():
        past = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=px, use_cache=True).past_key_values
    past = [(layer.keys, layer.values) for layer in past.layers]
    out, st = llava["model"].logits(ids + cont, images=[img(1)], kv_policy=policy, kv_budget=budget, kv_scope=scope,
                                    kv_selection=selection, n_prompt=len(ids), return_stats=True)
    assert st.kv_bytes_after < st.kv_bytes_before
    want = ref.numpy_decode(llava["hf"], past, st.kept, cont, len(ids))
    got = out[len(ids):]
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"{policy}/{scope}/{selection}: relative logit error over the compacted cache {err:.2e}")
    assert err <= 1e-4
    # and the compacted cache really changes the prediction (the test can tell)
    full = llava["model"].logits(ids + cont, images=[img(1)])[len(ids):]
    assert np.abs(full - want).max() / np.abs(want).max() > 1e-3


def test_budget_accounting(llava, single):
    ids, _, _ = single
    layout = layout_of(llava, ids)
    L = llava["hf"].config.text_config.num_hidden_layers
    for policy in ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]:
        for r in [1e-6, 0.01, 0.1, 0.37, 0.5, 0.99]:
            for scope in (["visual"] if policy == "aircache" else ["visual", "all"]):
                st = our_plan(llava, ids, [img(1)], ref.Params(policy, r, scope))
                N = len(layout.visual) if scope == "visual" else layout.m
                k = st.visual_kept if scope == "visual" else st.total_kept
                assert int(k.sum()) == ref.total_budget(r, N, L), (policy, r, scope)
                assert all(1 <= x <= N for x in k)
                if r == 1e-6:
                    assert list(k) == [1] * L  # every layer keeps one
                if scope == "visual":  # every text position kept
                    for kept in st.kept:
                        assert set(range(layout.m)) - set(layout.visual) <= set(kept)
                m_bytes = st.kv_bytes_before // layout.m
                assert st.kv_bytes_after == int(st.total_kept.sum()) * m_bytes // L


def test_random_policy(llava, single):
    ids, _, _ = single
    layout = layout_of(llava, ids)
    kept = lambda seed, sel="layer": our_plan(llava, ids, [img(1)], ref.Params("random", 0.1, selection=sel,  # noqa: E731
                                                                                 options={"random_seed": seed})).kept
    a, b, c = kept(1), kept(1), kept(2)
    assert all(list(x) == list(y) for x, y in zip(a, b))  # deterministic for a seed
    assert any(list(x) != list(y) for x, y in zip(a, c))
    seen = set()
    for seed in range(40):
        for layer in kept(seed):
            seen |= set(layer) & set(layout.visual)
    assert seen == set(layout.visual)  # every candidate reachable
    heads = kept(3, "kv_head")
    assert any(list(h[0]) != list(h[1]) for h in heads)  # each KV head draws its own


def test_multi_image_prompt(llava):
    ids, px = prompt(llava, [img(1), img(2)], "USER: <image>\nleft one, and <image>\nright one. " + QUESTION + " ASSISTANT:")
    layout = layout_of(llava, ids)
    assert len(layout.visual) == 2 * llava["model"].n_image_tokens()
    P = hf_attentions(llava, ids, px)
    cfg = llava["hf"].config.text_config
    for pol in ["aircache", "vlcache", "snapkv"]:
        p = ref.Params(pol, 0.15)
        want = ref.plan(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, p)
        got = our_plan(llava, ids, [img(1), img(2)], p)
        text_between = [i for i in range(layout.visual[0], layout.visual[-1]) if i not in set(layout.visual)]
        assert text_between  # the prompt has text between the images
        for l, kept in enumerate(got.kept):
            assert set(text_between) <= set(kept)
            assert ref.explained_by_ties(list(kept), want["kept"][l], want["scores"][l], layout.visual)


def test_degenerate_prompts(llava, tmp_path, spm_model):
    m = llava["model"]
    # no text after the image: the AirCache window is {m-1}, VL-Cache's rows are {m-1}
    ids, px = prompt(llava, [img(1)], "USER: <image>")
    assert ids[-1] == m.image_token_id
    P = hf_attentions(llava, ids, px)
    cfg = llava["hf"].config.text_config
    layout = layout_of(llava, ids)
    for pol in ["aircache", "vlcache", "h2o", "snapkv"]:
        p = ref.Params(pol, 0.1)
        want = ref.plan(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, p)
        got = our_plan(llava, ids, [img(1)], p)
        for l, kept in enumerate(got.kept):
            assert ref.explained_by_ties(list(kept), want["kept"][l], want["scores"][l], layout.visual), pol
    # a prompt without an image: nothing visual to compress, the cache is left whole
    out, st = m.logits([1, 300, 301, 302], kv_policy="aircache", kv_budget=0.1, return_stats=True)
    assert st.kv_bytes_after == st.kv_bytes_before
    # one visual token per image
    from hf_llava_fixtures import make_tiny_llava

    d = tmp_path / "one"
    make_tiny_llava(str(d), spm_model, seed=8, **dict(LLAVA, image_size=8, patch=8))
    t, mm = conv.convert_llava(str(d), str(tmp_path / "t1.gguf"), str(tmp_path / "m1.gguf"), "f32")
    one = ac.Model(t, mmproj=mm, kv_type="f32")
    assert one.n_image_tokens() == 1
    for pol in ["aircache", "vlcache", "snapkv", "pyramidkv", "h2o", "streaming", "random"]:
        r = one.generate(img(3, 8, 8), QUESTION, max_tokens=3, kv_policy=pol, kv_budget=0.05)
        assert list(r.stats.visual_kept) == [1] * len(r.stats.visual_kept)


def test_errors(llava):
    m = llava["model"]
    cases = [
        (dict(kv_policy="snapkvv"), "unknown KV policy 'snapkvv' \\(valid: full, random, streaming, h2o, snapkv, pyramidkv, vlcache, aircache, mosaic\\)"),
        (dict(kv_policy="aircache", kv_budget=0), "kv_budget must be in \\(0, 1\\]"),
        (dict(kv_policy="aircache", kv_budget=1.5), "kv_budget must be in \\(0, 1\\]"),
        (dict(kv_policy="aircache", kv_budget=-0.1), "kv_budget"),
        (dict(kv_policy="aircache", kv_budget="lots"), "kv_budget must be a number"),
        (dict(kv_policy="aircache", kv_budget=0.1, kv_scope="all"), "'aircache' compresses visual KV only"),
        (dict(kv_policy="aircache", kv_budget=0.1, kv_scope="everything"), "unknown kv_scope 'everything'"),
        (dict(kv_policy="aircache", kv_budget=0.1, kv_selection="head"), "unknown kv_selection 'head'"),
        (dict(kv_policy="aircache", kv_budget=0.1, kv_options={"alpha": 0.5}),
         "unknown option 'alpha' for KV policy 'aircache':\\n  air_alpha"),
        (dict(kv_policy="aircache", kv_budget=0.1, kv_options={"air_alpha": 0}), "bad value '0' for air_alpha"),
        (dict(kv_policy="aircache", kv_budget=0.1, kv_options={"air_norm": "max"}), "bad value 'max' for air_norm"),
        (dict(kv_policy="snapkv", kv_budget=0.1, kv_options={"snap_kernel": 4}), "snap_kernel must be odd"),
        (dict(kv_policy="random", kv_budget=0.1, kv_options={"random_seed": 1.5}), "bad value '1.5' for random_seed"),
        (dict(kv_policy="full", kv_budget=0.5), "'full' keeps everything: kv_budget must be 1.0"),
    ]
    for kw, pat in cases:
        with pytest.raises(ac.InputError, match=pat):
            m.generate(img(1), QUESTION, max_tokens=1, **kw)
    names = [p["name"] for p in ac.list_policies()]
    assert names == ["full", "random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache", "mosaic"]
    air = next(p for p in ac.list_policies() if p["name"] == "aircache")
    assert {o["name"]: o["default"] for o in air["options"]} == {"air_alpha": "0.9", "air_norm": "mean",
                                                                 "air_invert_skew": "false", "air_budget": "adaptive"}


def test_generate_stats_and_cli(llava, tmp_path):
    from PIL import Image

    m = llava["model"]
    r = m.generate(img(1), QUESTION, max_tokens=8, kv_policy="aircache", kv_budget=0.1)
    s = r.stats
    n_img = m.n_image_tokens()
    assert s.kv_policy == "aircache" and s.kv_budget == 0.1 and s.kv_scope == "visual"
    assert list(s.visual_kept) and all(v >= 1 for v in s.visual_kept)
    L = len(s.visual_kept)
    assert int(s.visual_kept.sum()) == ref.total_budget(0.1, n_img, L)
    assert s.kv_bytes_after < s.kv_bytes_before and s.kv_capacity_bytes > 0
    # the memory compaction frees is given back: every layer's allocation becomes its kept rows plus
    # the answer's (max_tokens + 1), the same room the full cache keeps after its prompt
    f = m.generate(img(1), QUESTION, max_tokens=8, kv_policy="full").stats
    room = f.kv_capacity_bytes - f.kv_bytes_after
    assert room > 0 and s.kv_capacity_bytes - s.kv_bytes_after == room
    assert s.kv_capacity_bytes < 0.5 * f.kv_capacity_bytes
    assert s.importance_ms > 0 and s.compact_ms >= 0
    assert set(s.diagnostics) >= {"elite_size", "strength", "skewness"}
    d = s.to_dict()
    assert d["kv_policy"] == "aircache" and len(d["kept"]) == L
    png = tmp_path / "x.png"
    Image.fromarray(img(1)).save(png)
    cli = subprocess.run(["aircache-cli", "-m", llava["text"], "--mmproj", llava["mmproj"], "--image", str(png), "-p",
                          QUESTION, "-n", "8", "--kv-type", "f32", "--image-mode", "crop", "-c", "512",
                          "--kv-policy", "aircache", "--kv-budget", "0.1"], capture_output=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.decode() == r.text + "\n"
    err = cli.stderr.decode()
    assert "KV policy aircache, budget 0.1" in err and "visual positions" in err and "after compaction" in err
    lst = subprocess.run(["aircache-cli", "--list-policies"], capture_output=True, text=True)
    assert lst.returncode == 0 and "air_alpha (float in (0, 1], default 0.9)" in lst.stdout
    bad = subprocess.run(["aircache-cli", "-m", llava["text"], "-p", "x", "--kv-policy", "nope"], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "unknown KV policy 'nope'" in bad.stderr
    bad = subprocess.run(["aircache-cli", "-m", llava["text"], "-p", "x", "--kv-opt", "air_alpha"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr


def test_evaluate_policies_equals_separate_runs(llava, single):
    """One prefill serving many settings gives the logits of separate runs (and the same kept sets); the cache hit
    rate equals a recall computed from HF's attention of the first continuation token."""
    ids, px, _ = single
    m = llava["model"]
    cont = [300, 17, 42, 301]
    seq = ids + cont
    settings = [dict(kv_policy="full"), dict(kv_policy="aircache", kv_budget=0.1),
                dict(kv_policy="aircache", kv_budget=0.3, kv_options={"air_alpha": 0.5}),
                dict(kv_policy="vlcache", kv_budget=0.2, kv_scope="all"), dict(kv_policy="snapkv", kv_budget=0.1),
                dict(kv_policy="h2o", kv_budget=0.1, kv_selection="kv_head"),
                dict(kv_policy="vlcache", kv_budget=0.2, kv_options={"vl_p": 0.2}),  # a second prefill group
                dict(kv_policy="random", kv_budget=0.05), dict(kv_policy="streaming", kv_budget=0.05)]
    positions = [len(ids) - 1, len(ids) + 1, len(ids) + 3]
    res = m.evaluate_policies(seq, images=[img(1)], n_prompt=len(ids), policies=settings, positions=positions,
                              hit_rate=True)
    with torch.no_grad():
        att = llava["hf"](input_ids=torch.tensor([ids + cont[:1]]), pixel_values=px, output_attentions=True).attentions
    layout = layout_of(llava, ids)
    for s, (lg, st) in zip(settings, res):
        full, st2 = m.logits(seq, images=[img(1)], n_prompt=len(ids), return_stats=True, **s)
        # equal up to float summation order: a separate run computes the prompt's last row inside a
        # many-row output matmul (prefill gemm), evaluate_policies as a single row (decode dots)
        ref_rows = full[positions]
        assert np.abs(lg - ref_rows).max() <= 1e-5 * np.abs(ref_rows).max(), s
        kept2 = st2.kept
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(st.kept, kept2))
        # hit rate from HF: per layer, top-k candidates by the first continuation token's attention
        cands = ref.candidates(layout, s.get("kv_scope", "visual"))
        rates = []
        for l, a in enumerate(att):
            w = a[0, :, -1, :len(ids)].double().mean(0).numpy()
            sets = st.kept[l] if s.get("kv_selection") == "kv_head" else [st.kept[l]]
            r = 0.0
            for kept in sets:
                kc = [c for c in cands if c in set(kept)]
                top = sorted(cands, key=lambda c: -w[c])[:len(kc)]
                r += len(set(top) & set(kc)) / len(kc)
            rates.append(r / len(sets))
        np.testing.assert_allclose(st.hit_rate_per_layer, rates, atol=1e-9)
        assert st.hit_rate == pytest.approx(np.mean(rates))
    assert res[0][1].hit_rate == 1.0
