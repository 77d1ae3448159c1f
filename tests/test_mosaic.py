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
MIN_COS_DEFAULT = 0.7
MOSAIC = {"mo_cover": 1.0, "mo_pick": "score", "mo_score": "colsum", "mo_budget": "pyramid", "mo_p": 0.01,
          "mo_min_frac": 0.01, "mo_alpha": 0.9, "mo_window": 0.1, "mo_grid": 0.0, "mo_beta": 8.0, "mo_layer_mix": 1.0,
          "mo_merge": "nearest", "mo_merge_rows": 1, "mo_cover_multi": 0.25, "mo_merge_weight": "score",
          "mo_merge_keys": True, "mo_merge_values": True, "mo_merge_min_cos": MIN_COS_DEFAULT, "mo_merge_bias": True}


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
    return {"hf": hf_model, "proc": proc, "model": model, "files": (text, mm)}


def hf_prompt(llava, text, images):
    """(ids, pixel values, HF eager attention per layer, layout) of a prompt through the HF model."""
    enc = llava["proc"](images=images, text=text, return_tensors="pt")
    ids, px = enc.input_ids[0].tolist(), enc.pixel_values
    with torch.no_grad():
        out = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=px, output_attentions=True)
    P = [a[0].double().numpy() for a in out.attentions]
    t = llava["model"].image_token_id
    return ids, px, P, ref.Layout(m=len(ids), visual=[i for i, x in enumerate(ids) if x == t])


@pytest.fixture(scope="module")
def single(llava):
    return hf_prompt(llava, "USER: <image>\n" + QUESTION + " ASSISTANT:", [img(1)])


@pytest.fixture(scope="module")
def two(llava):
    """Two images and a question naming one (mosaic's mo_cover_multi applies)."""
    text = "USER: <image>\n<image>\nIn the second image, " + QUESTION[0].lower() + QUESTION[1:] + " ASSISTANT:"
    return hf_prompt(llava, text, [img(1), img(2)])


def round_half_away(x):
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def mosaic_reference(P, layout, H, Hkv, budget, scope="visual", selection="layer", options=None):
    """docs/compression.md, "Mosaic", restated in numpy: the attention score and density budgets
    are compress_reference's VL-Cache / AirCache statistics; the split into a scored part and a
    stratified coverage reserve is written here."""
    o = dict(MOSAIC, **(options or {}))
    L, m = len(P), layout.m
    # several images (here each image is one run of consecutive visual rows): mo_cover_multi is the coverage share
    n_images = (1 + sum(b != a + 1 for a, b in zip(layout.visual, layout.visual[1:]))) if layout.visual else 0
    cover_share = o["mo_cover_multi"] if n_images > 1 else o["mo_cover"]
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

    kept, n_cover, n_grid, summaries = [], [], [], {}
    for l in range(L):
        per = []
        for g, s in enumerate(per_group[l]):
            kl = int(k[l])
            prot = list(range(m - int(math.floor(o["mo_window"] * kl)), m)) if scope == "all" else []
            if len(prot) >= kl:
                per.append(ref.kept_positions(layout, scope, sorted(prot[len(prot) - kl:])))
                summaries.setdefault(l, []).append([])
                if g == 0:
                    n_cover.append(0)
                    n_grid.append(0)
                continue
            avail = kl - len(prot)
            ns = min(int(o["mo_merge_rows"]), max(0, avail - 1)) if o["mo_merge"] == "summary" else 0
            avail -= ns
            kg = min(avail, round_half_away(o["mo_grid"] * kl))
            kc = min(avail - kg, round_half_away(cover_share * kl))
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
            # summary rows: the free candidates (raster order) in ns equal strata, each kept through its
            # best-scored row (ties to the lower), which carries the stratum's mean
            free = [c for c in cands if c not in taken]
            summ = []
            for i in range(ns):
                stratum = free[i * len(free) // ns:(i + 1) * len(free) // ns]
                if stratum:
                    holder = max(stratum, key=lambda c: (s[c], -c))
                    summ.append((holder, [c for c in stratum if c != holder]))
                    taken.add(holder)
            summaries.setdefault(l, []).append(summ)
            chosen = prot + grid + att + cover + [h for h, _ in summ]
            rest = sorted((c for c in cands if c not in taken), key=lambda c: (-s[c], c))
            chosen += rest[:kl - len(chosen)]
            per.append(ref.kept_positions(layout, scope, sorted(chosen)))
            if g == 0:
                n_cover.append(len(cover))
                n_grid.append(len(grid))
        kept.append(per[0] if selection == "layer" else per)
    return {"k": np.asarray(k), "K": K, "kept": kept, "n_cover": n_cover, "n_grid": n_grid, "score": per_group,
            "summaries": summaries}


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


TWO_CASES = [(0.1, "visual", {}), (0.2, "visual", {"mo_cover_multi": 0.6, "mo_cover": 0.9}),
             (0.15, "visual", {"mo_cover_multi": 1.0}), (0.2, "all", {"mo_cover_multi": 0.5})]


@pytest.mark.parametrize("selection", ["layer", "kv_head"])
@pytest.mark.parametrize("budget,scope,options", TWO_CASES,
                         ids=[f"{b}-{s}-" + ",".join(f"{k}={v}" for k, v in o.items()) for b, s, o in TWO_CASES])
def test_two_images_match_reference(llava, two, budget, scope, options, selection):
    """Two images: the coverage share is mo_cover_multi (default 0.25), the kept sets as the reference's."""
    ids, _, P, layout = two
    runs = 1 + sum(b != a + 1 for a, b in zip(layout.visual, layout.visual[1:]))
    assert runs == 2
    cfg = llava["hf"].config.text_config
    want = mosaic_reference(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, budget, scope, selection,
                            options)
    _, st = llava["model"].logits(ids, images=[img(1), img(2)], kv_policy="mosaic", kv_budget=budget, kv_scope=scope,
                                  kv_selection=selection, kv_options=options, return_stats=True)
    k = st.visual_kept if scope == "visual" else st.total_kept
    np.testing.assert_array_equal(k, want["k"])
    for l in range(len(want["k"])):
        got = [list(st.kept[l])] if selection == "layer" else [list(x) for x in st.kept[l]]
        exp = [want["kept"][l]] if selection == "layer" else want["kept"][l]
        assert got == exp, f"layer {l}"
    np.testing.assert_array_equal(st.diagnostics["coverage_rows"], want["n_cover"])
    share = dict(MOSAIC, **options)["mo_cover_multi"]
    if scope == "visual":  # the reserve is round(mo_cover_multi * k_l) rows (or fewer when strata are full)
        assert all(c <= round_half_away(share * kl) for c, kl in zip(st.diagnostics["coverage_rows"], k))
        assert any(c == round_half_away(share * kl) for c, kl in zip(st.diagnostics["coverage_rows"], k))


def test_budget_accounting(llava, single):
    """Every budget: K in total, 1 <= k_l <= N, text kept in visual scope, the coverage reserve
    round(mo_cover * k_l) rows (fewer only when the scored rows fill a stratum)."""
    ids, _, _, layout = single
    L = llava["hf"].config.text_config.num_hidden_layers
    for r in [1e-6, 0.01, 0.1, 0.37, 0.99]:
        for scope in ["visual", "all"]:
            for cover in [0.0, 0.5, 1.0]:
                _, st = llava["model"].logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=r, kv_scope=scope,
                                              kv_options={"mo_cover": cover, "mo_merge": "none"}, return_stats=True)
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
                                        kv_selection=sel, n_prompt=len(ids), return_stats=True,
                                        kv_options={"mo_merge": "none"})  # the kept rows as prefilled
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


def merged_past(past, want, layout, selection, merge, weight="score", keys=True, min_cos=-1.0, values=True):
    """docs/compression.md, "Merging dropped rows", restated over HF's prompt KV (post-RoPE keys): per
    layer and KV head, each kept row's K and V become the weighted mean of itself and the dropped
    candidates merged into it (nearest: the kept candidate of largest key cosine, ties to the lower
    row; summary: its stratum's holder); weights the mosaic score of the layer (or KV group) or 1.
    Also returns the merged rows' log-count biases, [layer][kv head] {row: ln(1 + rows merged into it)}."""
    V = layout.visual
    out, n_merged, bias = [], [], []
    for l, (k_t, v_t) in enumerate(past):
        K, Vv = k_t[0].double().numpy().copy(), v_t[0].double().numpy().copy()
        K0, V0 = K.copy(), Vv.copy()
        n_merged.append(0)
        bias.append([{} for _ in range(K.shape[0])])
        for g in range(K.shape[0]):
            kept = want["kept"][l] if selection == "layer" else want["kept"][l][g]
            s = want["score"][l][0 if selection == "layer" else g]
            w = (lambda r: 1.0) if weight == "count" else (lambda r: max(0.0, float(s[r])))
            if merge == "nearest":
                keptc = [c for c in V if c in set(kept)]
                unit = K0[g] / np.maximum(np.linalg.norm(K0[g], axis=1, keepdims=True), 1e-300)
                groups = {}
                for d in (c for c in V if c not in set(kept)):
                    cos = unit[keptc] @ unit[d]
                    if cos.max() >= min_cos:
                        groups.setdefault(keptc[int(np.argmax(cos))], []).append(d)
                groups = list(groups.items())
            else:
                groups = want["summaries"][l][0 if selection == "layer" else g]
            for dst, src in groups:
                if not src:
                    continue
                ws = np.array([w(dst)] + [w(r) for r in src])
                rows = [dst] + list(src)
                bias[l][g][dst] = math.log(1 + len(src))
                if ws.sum() <= 0:
                    continue
                if keys:
                    K[g, dst] = ws @ K0[g, rows] / ws.sum()
                if values:
                    Vv[g, dst] = ws @ V0[g, rows] / ws.sum()
                if g == 0:
                    n_merged[l] += len(src)
        out.append((torch.from_numpy(K)[None], torch.from_numpy(Vv)[None]))
    return out, n_merged, bias


MERGE_CASES = [
    ("layer", {}),  # the defaults: nearest, cosine >= MIN_COS_DEFAULT, keys and values, the log-count bias
    ("kv_head", {}),
    ("layer", {"mo_merge_min_cos": -1, "mo_merge_bias": False}),
    ("kv_head", {"mo_merge_weight": "count", "mo_merge_keys": False, "mo_merge_min_cos": -1, "mo_merge_bias": False}),
    ("layer", {"mo_merge_min_cos": 0.3, "mo_merge_bias": False}),
    ("layer", {"mo_merge": "summary", "mo_merge_rows": 3, "mo_merge_bias": False}),
    ("kv_head", {"mo_merge": "summary", "mo_merge_rows": 2, "mo_merge_weight": "count", "mo_merge_bias": False}),
    # the bias alone, with count-weighted values, on summary rows
    ("layer", {"mo_merge_keys": False, "mo_merge_values": False, "mo_merge_min_cos": 0.3}),
    ("kv_head", {"mo_merge_keys": False, "mo_merge_weight": "count", "mo_merge_min_cos": -1}),
    ("layer", {"mo_merge": "summary", "mo_merge_rows": 3}),
]


@pytest.mark.parametrize("selection,options", MERGE_CASES,
                         ids=[f"{s}-" + ",".join(f"{k}={v}" for k, v in o.items()) for s, o in MERGE_CASES])
def test_merged_rows_are_the_weighted_means(llava, single, selection, options):
    """mo_merge: the kept sets are the reference's (the plain mosaic's for nearest; for summary the
    budget's k_l with mo_merge_rows of them holding strata of the dropped rows), positions are the
    kept rows' own, and decoding over the compacted cache equals a numpy decoder over HF's KV whose
    kept rows were replaced by the specified weighted means."""
    ids, px, P, layout = single
    cfg = llava["hf"].config.text_config
    budget = 0.15
    cont = [300, 17, 42, 301, 99]
    o = dict(MOSAIC, **options)
    want = mosaic_reference(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, budget, "visual", selection,
                            options)
    out, st = llava["model"].logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=budget,
                                    kv_selection=selection, kv_options=options, n_prompt=len(ids), return_stats=True)
    np.testing.assert_array_equal(st.visual_kept, want["k"])
    assert int(np.sum(st.visual_kept)) == want["K"]
    for l in range(len(want["k"])):
        got = [list(st.kept[l])] if selection == "layer" else [list(x) for x in st.kept[l]]
        exp = [want["kept"][l]] if selection == "layer" else want["kept"][l]
        assert got == exp, f"layer {l}"
        pos = [st.kept_pos[l]] if selection == "layer" else st.kept_pos[l]
        for kp, k in zip(pos, got):  # a merged row keeps its own position (LLaVA: 1-D, the row index)
            assert list(np.asarray(kp)[:, 0]) == k
    if o["mo_merge"] == "nearest":
        _, plain = llava["model"].logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=budget,
                                         kv_selection=selection, return_stats=True, kv_options={"mo_merge": "none"})
        assert [np.asarray(a).tolist() for a in plain.kept] == [np.asarray(a).tolist() for a in st.kept]
    with torch.no_grad():
        past = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=px, use_cache=True).past_key_values
    past = [(layer.keys, layer.values) for layer in past.layers]
    mp, n_merged, bias = merged_past(past, want, layout, selection, o["mo_merge"], o["mo_merge_weight"],
                                     o["mo_merge_keys"], o["mo_merge_min_cos"], o["mo_merge_values"])
    np.testing.assert_array_equal(st.diagnostics["merged_rows"], n_merged)
    assert sum(n_merged) > 0
    # KV bytes: the kept rows, and 4 bytes per row and KV head of each layer holding biases
    row_bytes = st.kv_bytes_before // (layout.m * len(st.total_kept))
    bias_bytes = sum(4 * cfg.num_key_value_heads * int(st.total_kept[l]) for l in range(len(bias))
                     if o["mo_merge_bias"] and any(bias[l]))
    assert st.kv_bytes_after == int(np.sum(st.total_kept)) * row_bytes + bias_bytes
    kept = st.kept if selection == "layer" else [[list(x) for x in layer] for layer in st.kept]
    ref_out = ref.numpy_decode(llava["hf"], mp, kept, cont, len(ids),
                               bias=bias if o["mo_merge_bias"] else None)
    err = np.abs(out[len(ids):] - ref_out).max() / np.abs(ref_out).max()
    assert err <= 1e-4, err
    # and the merge changed something: the dropped rows' decoder differs by more than that
    plain_out = ref.numpy_decode(llava["hf"], past, kept, cont, len(ids))
    assert np.abs(out[len(ids):] - plain_out).max() / np.abs(plain_out).max() > 1e-3


def test_merge_on_a_device_backend(llava, single):
    """The merge reads and writes the cache through the backend interface: the test backend (device
    memory reached by upload / download) gives the CPU's logits."""
    ids, _, _, _ = single
    m = llava["model"]
    text, mm = llava["files"]
    cont = [300, 17, 42]
    opts = {"mo_merge": "nearest", "mo_merge_min_cos": -1, "mo_merge_bias": False}
    a = m.logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options=opts, n_prompt=len(ids))
    with ac.Model(text, mmproj=mm, kv_type="f32", image_mode="crop", n_ctx=512,
                  device="test") as dev:
        b = dev.logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options=opts,
                       n_prompt=len(ids))
        plain = dev.logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, n_prompt=len(ids),
                           kv_options={"mo_merge": "none"})
    np.testing.assert_array_equal(a, b)
    assert np.abs(b - plain)[len(ids):].max() > 1e-3 * np.abs(plain[len(ids):]).max()  # the merge was written


BIAS = {"mo_merge": "nearest", "mo_merge_keys": False, "mo_merge_values": False, "mo_merge_bias": True,
        "mo_merge_min_cos": -1}


def test_merge_bias_in_a_later_prefill(llava, single):
    """The biases stay with the compacted cache: a 20-token continuation fed at once (the prefill
    path of the attention, not the decode one) equals the numpy decoder with the biases, and differs
    from the same kept set without them."""
    ids, px, P, layout = single
    cfg = llava["hf"].config.text_config
    cont = [300, 17, 42, 301, 99, 5, 7, 250, 11, 12, 13, 14, 300, 301, 17, 42, 99, 5, 7, 250]
    out, st = llava["model"].logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.15,
                                    kv_options=BIAS, n_prompt=len(ids), return_stats=True)
    want = mosaic_reference(P, layout, cfg.num_attention_heads, cfg.num_key_value_heads, 0.15, "visual", "layer", BIAS)
    with torch.no_grad():
        past = llava["hf"](input_ids=torch.tensor([ids]), pixel_values=px, use_cache=True).past_key_values
    past = [(layer.keys, layer.values) for layer in past.layers]
    _, _, bias = merged_past(past, want, layout, "layer", "nearest", keys=False, values=False)
    ref_out = ref.numpy_decode(llava["hf"], past, st.kept, cont, len(ids), bias=bias)
    err = np.abs(out[len(ids):] - ref_out).max() / np.abs(ref_out).max()
    assert err <= 1e-4, err
    plain = ref.numpy_decode(llava["hf"], past, st.kept, cont, len(ids))
    assert np.abs(out[len(ids):] - plain).max() / np.abs(plain).max() > 1e-3


def test_merge_bias_on_a_device_backend_and_in_a_batch(llava, single):
    """On the test backend (the biases uploaded beside the cache) the CPU's logits; in a batch of
    two, each sequence's single-sequence answer."""
    ids, _, _, _ = single
    m = llava["model"]
    text, mm = llava["files"]
    cont = [300, 17, 42]
    a = m.logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options=BIAS, n_prompt=len(ids))
    with ac.Model(text, mmproj=mm, kv_type="f32", image_mode="crop", n_ctx=512, device="test") as dev:
        b = dev.logits(ids + cont, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options=BIAS,
                       n_prompt=len(ids))
    np.testing.assert_array_equal(a, b)
    opts = dict(max_tokens=6, kv_policy="mosaic", kv_budget=0.1, kv_options=BIAS)
    one = [m.generate(img(i), "What is this?", **opts) for i in (1, 2)]
    both = m.generate_batch([(img(1), "What is this?"), (img(2), "What is this?")], **opts)
    assert [r.tokens for r in both] == [r.tokens for r in one]


def test_merge_options(llava, single):
    ids, _, _, _ = single
    m = llava["model"]
    with pytest.raises(ac.InputError, match="mo_merge"):
        m.logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options={"mo_merge": "mean"})
    with pytest.raises(ac.InputError, match="mo_merge_rows"):
        m.logits(ids, images=[img(1)], kv_policy="mosaic", kv_budget=0.1, kv_options={"mo_merge_rows": 0})
    # budget 1.0 keeps (and merges) nothing: bit-identical to no compression
    base = m.logits(ids + [300, 5], images=[img(1)], n_prompt=len(ids))
    out = m.logits(ids + [300, 5], images=[img(1)], kv_policy="mosaic", kv_budget=1.0, n_prompt=len(ids),
                   kv_options={"mo_merge": "nearest"})
    assert np.array_equal(out, base)
