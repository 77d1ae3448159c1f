"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL on the GPU against the CPU backend (tiny models converted by
llama.cpp's convert_hf_to_gguf.py, tests/conftest.py `qwen_converted`): every op of the path on the
device (2-D vision RoPE, window attention ranges, M-RoPE, q/k norms, DeepStack), image features
(with DeepStack's) and logits equal, the same greedy tokens and kept rows under compression, also
with part of the layers offloaded."""

import numpy as np
import pytest

import aircache_cpp as ac
import hf_qwen_fixtures as q

FAMILIES = ["qwen2vl", "qwen25vl", "qwen3vl"]


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def load(qwen_converted, fam, device, **kw):
    text, mm = qwen_converted[f"{fam}-f32"]
    p = q.PROCESSOR[fam]
    f = p["patch"] * p["merge"]
    kw.setdefault("kv_type", "f32")
    return ac.Model(text, mmproj=mm, n_ctx=1024, device=device, image_min_tokens=p["min_pixels"] // f ** 2,
                    image_max_tokens=p["max_pixels"] // f ** 2, **kw)


@pytest.mark.parametrize("fam", FAMILIES)
def test_qwen_on_the_gpu(qwen_converted, fam):
    cpu, gpu = load(qwen_converted, fam, "cpu"), load(qwen_converted, fam, "cuda")
    images = [img(1, 100, 75), img(2, 224, 168)]
    for a in images:
        e_c, d_c = cpu.encode_image(a, deepstack=True)
        e_g, d_g = gpu.encode_image(a, deepstack=True)
        assert rel(e_g, e_c) < 1e-4
        for k in range(d_c.shape[0]):
            assert rel(d_g[k], d_c[k]) < 1e-4
    prompt = "<image> and <image> what is here?"
    ids = cpu.build_prompt(prompt, images)
    assert rel(gpu.logits(ids, images=images), cpu.logits(ids, images=images)) < 1e-4
    for policy, sel in [("full", "layer"), ("aircache", "layer"), ("vlcache", "kv_head"), ("snapkv", "layer")]:
        kw = dict(max_tokens=8, kv_policy=policy, kv_budget=0.2 if policy != "full" else 1.0, kv_selection=sel)
        a, b = cpu.generate(images, prompt, **kw), gpu.generate(images, prompt, **kw)
        assert b.tokens == a.tokens, policy
        assert [np.asarray(k).tolist() for k in b.stats.kept] == [np.asarray(k).tolist() for k in a.stats.kept]
    assert [u for u in gpu._engine.ops_used if u[0] != "cuda:0"] == []  # nothing fell back to the CPU
    part = load(qwen_converted, fam, "cuda", n_gpu_layers=1)  # DeepStack crosses from the GPU to CPU layers
    assert rel(part.logits(ids, images=images), cpu.logits(ids, images=images)) < 1e-4
