"""The `mosaic` policy (cpp/compress/mosaic.cpp, docs/compression.md "Mosaic") on a tiny random LLaVA:
kept sets equal an independent numpy reference written from the document and fed with HF
transformers' eager attention probabilities (compress_reference.py's statistics: VL-Cache's column
sums and density, AirCache's elite importance), per layer and per KV head, both scopes, every
option; exact budget accounting (K in total, k_l per layer, the coverage reserve's size, one
coverage row per stratum); decoding over the compacted cache equals a numpy decoder over HF's KV;
option errors."""

import math

import numpy as np
import pytest
import torch

import aircache_cpp as ac
import compress_reference as ref

QUESTION = "What colour is the star on the left?"
MOSAIC = {"mo_cover": 1.0, "mo_pick": "score", "mo_score": "colsum", "mo_budget": "pyramid", "mo_p": 0.01,
          "mo_min_frac": 0.01, "mo_alpha": 0.9, "mo_window": 0.1, "mo_grid": 0.0, "mo_beta": 8.0, "mo_layer_mix": 1.0}


def img(seed=0, h=64, w=64):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def llava(tmp_path_factory, spm_model):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from hf_llava_fixtures import small_llava_gguf

    hf, text, mm = small_llava_gguf(tmp_path_factory, spm_model, "llava-mosaic", seed=7)
    hf_model = LlavaForConditionalGeneration.from_pretrained(hf, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(hf)
    model = ac.Model(text, mmproj=mm, kv_type="f32", image_mode="crop", n_ctx=512)
    return {"hf": hf_model, "proc": proc, "model": model}


@pytest.fixture(scope="module")
def single(llava):
    text = "USER: <image>\n" + QUESTION + " ASSISTANT:"
    enc = llava["proc"](images=[img(1)], text=text, return_tensors="pt")
    ids, px = enc.input_ids[0].tolist(), enc.pixel_values
    with torch.no_grad():
        out = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=px, output_attentions=True)
    P = [a[0].double().numpy() for a in out.attentions]
    t = llava["model"].image_token_id
    return ids, px, P, ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == t])


def round_half_away(x):
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def mosaic_reference(P, layout, H, Hkv, budget, scope="visual", selection="layer", options=None):
    """docs/compression.md, "Mosaic", restated in numpy: the attention score and density budgets
    are compress_reference's VL-Cache / AirCache statistics; the split into a scored part and a
    stratified coverage reserve is written here."""
    o = dict(MOSAIC, **(options or {}))
    L, m = len(P), layout.m
    cands = ref.candidates(layout, scope)
    N = len(cands)
    K = ref.total_budget(budget, N, L)
    vl = ref.plan(P, layout, H, Hkv, ref.Params("vlcache", budget, scope, selection,
                                                 {"vl_p": o["mo_p"], "vl_min_frac": o["mo_min_frac"]}))
    if o["mo_score"] == "colsum":
        scores = vl["scores"]
    else:
        scores = ref.plan(P, layout, H, Hkv, ref.Params("aircache", budget, scope, selection,
                                                         {"air_alpha": o["mo_alpha"], "air_budget": "uniform"}))["scores"]
    t = np.full(L, K / L)
    if o["mo_budget"] == "pyramid" and L > 1:
        C = K / L
        lo = C / o["mo_beta"]
        hi = 2 * C - lo
        if hi <= N:
            t = np.array([hi - l * (hi - lo) / (L - 1) for l in range(L)])
    k = vl["k"] if o["mo_budget"] == "density" else ref.apportion(t, K, N)
    # per (layer, group): the score normalised over the candidates, blended with its mean over layers
    per_group = [[scores[l]] if selection == "layer" else scores[l] for l in range(L)]
    if o["mo_layer_mix"] > 0:
        norm = [[s / s[cands].sum() if s[cands].sum() > 0 else s for s in per_group[l]] for l in range(L)]
        lam = o["mo_layer_mix"]
        per_group = [[(1 - lam) * norm[l][g] + lam * np.mean([norm[ll][g] for ll in range(L)], axis=0)
                      for g in range(len(norm[l]))] for l in range(L)]

    def centre(stratum, taken):
        mid = (len(stratum) - 1) // 2
        order = sorted(range(len(stratum)), key=lambda j: (abs(j - mid), j))
        return next((stratum[j] for j in order if stratum[j] not in taken), None)

    kept, n_cover, n_grid = [], [], []
    for l in range(L):
        per = []
        for g, s in enumerate(per_group[l]):
            kl = int(k[l])
            prot = list(range(m - int(math.floor(o["mo_window"] * kl)), m)) if scope == "all" else []
            if len(prot) >= kl:
                per.append(ref.kept_positions(layout, scope, sorted(prot[len(prot) - kl:])))
                if g == 0:
                    n_cover.append(0)
                    n_grid.append(0)
                continue
            avail = kl - len(prot)
            kg = min(avail, round_half_away(o["mo_grid"] * kl))
            kc = min(avail - kg, round_half_away(o["mo_cover"] * kl))
            ka = avail - kg - kc
            taken = set(prot)
            grid = []
            for i in range(kg):
                c = centre(cands[i * N // kg:(i + 1) * N // kg], taken)
                if c is not None:
                    grid.append(c)
                    taken.add(c)
            att = sorted((c for c in cands if c not in taken), key=lambda c: (-s[c], c))[:ka]
            taken |= set(att)
            cover = []
            for i in range(kc):
                stratum = cands[i * N // kc:(i + 1) * N // kc]
                free = [c for c in stratum if c not in taken]
                if not free:
                    continue
                c = max(free, key=lambda c: (s[c], -c)) if o["mo_pick"] == "score" else centre(stratum, taken)
                cover.append(c)
                taken.add(c)
            chosen = prot + grid + att + cover
            rest = sorted((c for c in cands if c not in taken), key=lambda c: (-s[c], c))
            chosen += rest[:kl - len(chosen)]
            per.append(ref.kept_positions(layout, scope, sorted(chosen)))
            if g == 0:
                n_cover.append(len(cover))
                n_grid.append(len(grid))
        kept.append(per[0] if selection == "layer" else per)
    return {"k": np.asarray(k), "K": K, "kept": kept, "n_cover": n_cover, "n_grid": n_grid}


CASES = [
    (0.1, "visual", {}), (0.25, "visual", {"mo_cover": 0.3}), (0.2, "visual", {"mo_pick": "center"}),
    (0.15, "visual", {"mo_score": "elite", "mo_alpha": 0.5}), (0.2, "visual", {"mo_budget": "density", "mo_p": 0.05}),
    (0.1, "visual", {"mo_cover": 1.0}), (0.1, "visual", {"mo_cover": 0.0}),
    (0.3, "all", {}), (0.2, "all", {"mo_window": 0.4, "mo_pick": "center", "mo_budget": "density"}),
    (0.1, "visual", {"mo_cover": 0.75, "mo_grid": 0.25, "mo_layer_mix": 1.0}),
    (0.2, "visual", {"mo_cover": 0.4, "mo_grid": 0.3, "mo_layer_mix": 0.5, "mo_budget": "pyramid", "mo_beta": 4}),
    (0.05, "visual", {"mo_cover": 1.0, "mo_layer_mix": 0.7, "mo_score": "elite"}),
    (0.25, "all", {"mo_grid": 0.5, "mo_layer_mix": 1.0, "mo_budget": "pyramid"}),
]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
@pytest.mark.parametrize("budget,scope,options", CASES,
                         ids=[f"{b}-{s}-" + ",".join(f"{k}={v}" for k, v in o.items()) for b, s, o in CASES])
def test_kept_sets_match_reference(llava, single, budget, scope, options, selection):
    ids, _, P, layout = single
    cfg = llava["hf"].config.text_config
    want = mosaic_reference(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, budget, scope, selection,
                            options)
    _, st = llava["model"].logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=budget, kv_scope=scope,
                                  kv_selection=selection, kv_options=options, return_stats=True)
    k = st.visual_kept if scope == "visual" else st.total_kept
    np.testing.assert_array_equal(k, want["k"])
    assert int(np.sum(k)) == want["K"]
    for l in range(len(want["k"])):
        if selection == "layer":
            assert list(st.kept[l]) == want["kept"][l], f"layer {l}"
        else:
            for g, (a, b) in enumerate(zip(st.kept[l], want["kept"][l])):
                assert list(a) == b, f"layer {l} KV head {g}"
    np.testing.assert_array_equal(st.diagnostics["coverage_rows"], want["n_cover"])
    np.testing.assert_array_equal(st.diagnostics["grid_rows"], want["n_grid"])


def test_budget_accounting(llava, single):
    """Every budget: K in total, 1 <= k_l <= N, text kept in visual scope, the coverage reserve
    round(mo_cover * k_l) rows (fewer only when the scored rows fill a stratum)."""
    ids, _, _, layout = single
    L = llava["hf"].config.text_config.num_hidden_layers
    for r in [1e-6, 0.01, 0.1, 0.37, 0.99]:
        for scope in ["visual", "all"]:
            for cover in [0.0, 0.5, 1.0]:
                _, st = llava["model"].logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=r, kv_scope=scope,
                                              kv_options={"mo_cover": cover}, return_stats=True)
                N = len(layout.visual) if scope == "visual" else layout.m
                k = st.visual_kept if scope == "visual" else st.total_kept
                assert int(k.sum()) == ref.total_budget(r, N, L), (r, scope, cover)
                assert all(1 <= x <= N for x in k)
                if scope == "visual":
                    for kept in st.kept:
                        assert set(range(layout.m)) - set(layout.visual) <= set(kept)
                        assert len(kept) == len(set(kept))
                    for l in range(L):
                        kl = int(k[l])
                        kc = min(kl, round_half_away(cover * kl))
                        got = st.diagnostics["coverage_rows"][l]
                        # a stratum the scored part filled gives its row back to the scores
                        assert got == kc if kc == 0 or kl - kc < N // kc else got <= kc
                m_bytes = st.kv_bytes_before // layout.m
                assert st.kv_bytes_after == int(st.total_kept.sum()) * m_bytes // L


def test_coverage_spreads_over_the_image(llava, single):
    """With the reserve only, kept visual rows fall one per stratum of the image's raster order."""
    ids, _, _, layout = single
    _, st = llava["model"].logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=0.1,
                                  kv_options={"mo_cover": 1.0, "mo_pick": "center"}, return_stats=True)
    V = layout.visual
    for l, kept in enumerate(st.kept):
        vis = [V.index(p) for p in kept if p in set(V)]
        kc = len(vis)
        assert [i * len(V) // kc <= v < (i + 1) * len(V) // kc for i, v in enumerate(vis)] == [True] * kc


def test_decoding_over_compacted_cache(llava, single):
    ids, px, _, _ = single
    cont = [300, 17, 42, 301, 99, 5, 7, 250]
    with torch.no_grad():
        past = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=px, use_cache=True).past_key_values
    past = [(layer.keys, layer.values) for layer in past.layers]
    for sel in ["layer", "kv_head"]:
        out, st = llava["model"].logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.15,
                                        kv_selection=sel, n_prompt=len(ids), return_stats=True)
        want = ref.numpy_decode(llava["hf"], past, st.kept, cont, len(ids))
        err = np.abs(out[len(ids):] - want).max() / np.abs(want).max()
        assert err <= 1e-4, (sel, err)


def test_options_and_errors(llava, single):
    ids, _, _, _ = single
    names = {p["name"]: p for p in ac.list_policies()}
    assert "mosaic" in names
    m = llava["model"]
    with pytest.raises(ac.InputError, match="mo_cover"):
        m.logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options={"mo_cover": 1.5})
    with pytest.raises(ac.InputError, match="mo_pick"):
        m.logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options={"mo_pick": "edge"})
    with pytest.raises(ac.InputError, match="visual"):
        m.logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_scope="all",
                 kv_options={"mo_score": "elite"})
    # budget 1.0 keeps everything, bit-identical
    base = m.logits(ids + [300, 5], images=[img(1)], n_prompt=len(ids))
    out = m.logits(ids + [300, 5], images=[img(1)], kv_policy="mosaic", kv_budget=1.0, n_prompt=len(ids))
    assert np.array_equal(out, base)
    # a prompt without an image: nothing to compress in visual scope
    r = m.generate(prompt="hello", max_tokens=3, kv_policy="mosaic", kv_budget=0.1)
    assert r.stats.n_visual == 0
