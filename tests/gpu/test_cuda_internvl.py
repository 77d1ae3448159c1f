"""InternVL 2.5 / 3 on the GPU against the CPU backend (the tiny model converted by llama.cpp's
convert_hf_to_gguf.py from the original layout, tests/conftest.py `internvl_converted`): InternViT per
tile (class token, layer scales: the `mul` op), the pixel shuffle (a row gather), the LayerNorm + MLP
projector, the Qwen2 decoder (Q/K/V biases, NeoX RoPE) — image features and logits equal, the same greedy
tokens and kept rows under compression, also with part of the layers offloaded and with F16 files."""

import numpy as np

import aircache_cpp as ac


def img(seed, w, h):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_internvl_on_the_gpu(internvl_converted):
    text, mm = internvl_converted["internvl-f32"]
    cpu = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024, device="cpu")
    gpu = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024, device="cuda")
    images = [img(1, 100, 75), img(2, 200, 60)]  # 3 x 2 and 3 x 1 tiles, each + the thumbnail
    for a in images:
        assert rel(gpu.encode_image(a), cpu.encode_image(a)) < 1e-4
    prompt = "what is in the two pictures, and where?"
    ids = cpu.build_prompt(prompt, images) + list(range(50, 82))
    assert rel(gpu.logits(ids, images=images), cpu.logits(ids, images=images)) < 1e-4
    for policy, sel in [("full", "layer"), ("aircache", "layer"), ("vlcache", "kv_head"), ("h2o", "layer"),
                        ("snapkv", "layer")]:
        kw = dict(max_tokens=8, kv_policy=policy, kv_budget=0.2 if policy != "full" else 1.0, kv_selection=sel)
        a, b = cpu.generate(images, prompt, **kw), gpu.generate(images, prompt, **kw)
        assert b.tokens == a.tokens, policy
        assert [np.asarray(k).tolist() for k in b.stats.kept] == [np.asarray(k).tolist() for k in a.stats.kept]
    assert [u for u in gpu._engine.ops_used if u[0] != "cuda:0"] == []  # nothing fell back to the CPU
    part = ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=1024, device="cuda", n_gpu_layers=1)
    assert rel(part.logits(ids, images=images), cpu.logits(ids, images=images)) < 1e-4
    f16 = ac.Model(*internvl_converted["internvl-f16"], n_ctx=1024, device="cuda")
    ref16 = ac.Model(*internvl_converted["internvl-f16"], n_ctx=1024, device="cpu")
    assert rel(f16.logits(ids, images=images), ref16.logits(ids, images=images)) < 5e-3
