"""End to end on the GPU against the CPU backend: a tiny random LLaVA (converted from HF, F32) gives
the same greedy tokens and the same kept positions on `cuda` as on `cpu` for every policy (both
selections, both scopes where the policy has them, F32 and F16 caches), also with part of the
layers offloaded (-ngl), in batches and in the one-prefill evaluation; image features and logits
agree; quantized random models (F16, Q8_0, Q4_K) agree within the GEMM path's F16 rounding."""

import os
import subprocess
import sys

import numpy as np
import pytest

import aircache_cpp as ac
from fixture_configs import LLAVA

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import convert_hf_to_gguf as conv  # noqa: E402
import make_random_model as mrm  # noqa: E402

SHAPE = dict(LLAVA, image_size=64, text_layers=4)  # 64 visual tokens, 4 layers, 4 query / 2 KV heads
PROMPT = "What colour is the star on the left?"


def img(seed=0, h=64, w=64):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def files(tmp_path_factory, spm_model):
    from hf_llava_fixtures import make_tiny_llava

    d = tmp_path_factory.mktemp("llava-gpu")
    make_tiny_llava(str(d / "hf"), spm_model, seed=11, **SHAPE)
    return conv.convert_llava(str(d / "hf"), str(d / "text.gguf"), str(d / "mmproj.gguf"), "f32")


def load(files, device, **kw):
    text, mm = files
    kw.setdefault("kv_type", "f32")
    return ac.Model(text, mmproj=mm, n_ctx=512, device=device, **kw)


@pytest.fixture(scope="module")
def cpu(files):
    return load(files, "cpu")


@pytest.fixture(scope="module")
def gpu(files):
    return load(files, "cuda")


def test_placement(gpu, cpu):
    assert gpu.device == "cuda:0" and gpu.n_gpu_layers == 4 and gpu._engine.vision_on_gpu
    assert cpu.device == "cpu" and cpu.n_gpu_layers == 0
    # every op of the LLaVA path (image, prefill with each statistic, compaction, decode) ran on the
    # GPU: nothing fell back to the CPU
    for policy in ("aircache", "vlcache", "h2o"):
        gpu.generate(img(1), PROMPT, max_tokens=4, kv_policy=policy, kv_budget=0.2)
    used = gpu._engine.ops_used
    assert [u for u in used if u[0] != "cuda:0"] == []
    assert {"matmul", "attention", "attention_kv", "kv_store", "kv_compact", "patch_embed", "get_rows"} <= {
        op for _, op, _ in used}


# F32 weights and cache: F32 GEMMs (cuBLAS without TF32, or the built-in kernel), the CPU's formulas:
# only summation orders differ.
def test_image_features_and_logits(gpu, cpu):
    assert rel(gpu.encode_image(img(1)), cpu.encode_image(img(1))) < 1e-4
    ids = cpu.build_prompt(PROMPT, n_images=1)
    assert rel(gpu.logits(ids, images=[img(1)]), cpu.logits(ids, images=[img(1)])) < 1e-4


POLICIES = [("full", 1.0, "visual", "layer"), ("random", 0.2, "visual", "layer"), ("streaming", 0.2, "all", "layer"),
            ("h2o", 0.2, "visual", "layer"), ("h2o", 0.3, "all", "kv_head"), ("snapkv", 0.2, "visual", "layer"),
            ("snapkv", 0.25, "all", "kv_head"), ("pyramidkv", 0.2, "visual", "layer"),
            ("vlcache", 0.2, "visual", "layer"), ("vlcache", 0.3, "all", "layer"),
            ("aircache", 0.1, "visual", "layer"), ("aircache", 0.2, "visual", "kv_head"),
            ("mosaic", 0.1, "visual", "layer"), ("mosaic", 0.2, "all", "kv_head")]


def kept_lists(stats):
    return [[np.asarray(h).tolist() for h in k] if isinstance(k, list) else np.asarray(k).tolist()
            for k in stats.kept]


@pytest.mark.parametrize("policy,budget,scope,selection", POLICIES)
def test_generate_every_policy(gpu, cpu, policy, budget, scope, selection):
    kw = dict(max_tokens=12, kv_policy=policy, kv_budget=budget, kv_scope=scope, kv_selection=selection)
    a = cpu.generate(img(2), PROMPT, **kw)
    b = gpu.generate(img(2), PROMPT, **kw)
    assert b.tokens == a.tokens
    assert kept_lists(b.stats) == kept_lists(a.stats)
    assert b.stats.kv_bytes_after == a.stats.kv_bytes_after


@pytest.mark.parametrize("policy", ["full", "snapkv", "aircache"])
def test_f16_cache(files, policy):
    kw = dict(max_tokens=10, kv_policy=policy, kv_budget=0.2 if policy != "full" else 1.0)
    a = load(files, "cpu", kv_type="f16").generate(img(3), PROMPT, **kw)
    b = load(files, "cuda", kv_type="f16").generate(img(3), PROMPT, **kw)
    assert b.tokens == a.tokens and kept_lists(b.stats) == kept_lists(a.stats)


@pytest.mark.parametrize("kw", [dict(kv_type="q8_0"), dict(kv_type_k="f16", kv_type_v="f32")])
def test_cache_types_the_gpu_refuses(files, kw):
    """The CUDA cache kernels read K and V both f16 or both f32: other caches are refused at load,
    naming the CPU; with every text layer on the CPU (-ngl 0) they load (q8_0 needs a head dimension
    that is a multiple of 32, this fixture's is 16: the mixed float pair shows it)."""
    with pytest.raises(ValueError, match="CUDA backend's cache kernels"):
        load(files, "cuda", **kw)
    if "kv_type_v" in kw:
        assert load(files, "cuda", n_gpu_layers=0, **kw).n_gpu_layers == 0


@pytest.mark.parametrize("ngl", [0, 1, 3])
def test_partial_offload(files, cpu, ngl):
    m = load(files, "cuda", n_gpu_layers=ngl)
    assert m.n_gpu_layers == ngl
    ids = cpu.build_prompt(PROMPT, n_images=1)
    assert rel(m.logits(ids, images=[img(4)]), cpu.logits(ids, images=[img(4)])) < 1e-4
    kw = dict(max_tokens=10, kv_policy="aircache", kv_budget=0.2)
    a, b = cpu.generate(img(4), PROMPT, **kw), m.generate(img(4), PROMPT, **kw)
    assert b.tokens == a.tokens and kept_lists(b.stats) == kept_lists(a.stats)


def test_batch_equals_one_by_one(gpu, cpu):
    reqs = [(img(5), PROMPT), (img(6), "Is there a red circle?"), (img(7), "Count the squares.")]
    kw = dict(max_tokens=8, kv_policy="aircache", kv_budget=0.2)
    batch = gpu.generate_batch(reqs, **kw)
    for (image, p), r in zip(reqs, batch):
        assert r.tokens == gpu.generate(image, p, **kw).tokens == cpu.generate(image, p, **kw).tokens


def test_evaluate_policies(gpu, cpu):
    ids = cpu.build_prompt(PROMPT, n_images=1)
    n_prompt = len(ids)
    ids = ids + cpu.tokenize(" The star is red.", add_bos=False)
    settings = [dict(kv_policy="full"), dict(kv_policy="aircache", kv_budget=0.1),
                dict(kv_policy="snapkv", kv_budget=0.2), dict(kv_policy="vlcache", kv_budget=0.2)]
    a = cpu.evaluate_policies(ids, [img(8)], n_prompt=n_prompt, policies=settings, hit_rate=True)
    b = gpu.evaluate_policies(ids, [img(8)], n_prompt=n_prompt, policies=settings, hit_rate=True)
    for (la, sa), (lb, sb) in zip(a, b):
        assert rel(lb, la) < 1e-4 and kept_lists(sb) == kept_lists(sa)
        assert abs(sb.hit_rate - sa.hit_rate) < 1e-9


# Quantized and F16 weights: decode matvecs use the exact dequantized weights; prefill GEMMs round
# weights and activations to F16 once (cuBLAS), so logits differ by ~1e-3 of their range after a
# few layers; 2e-2 bounds it with room. Random N(0, 0.02) weights, 256 wide (K-quant rows).
@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_k"])
def test_quantized_random_model(tmp_path, outtype):
    text, mm = mrm.make("small", str(tmp_path), outtype, seed=3)
    kw = dict(mmproj=mm, n_ctx=256)
    cpu_m, gpu_m = ac.Model(text, device="cpu", **kw), ac.Model(text, device="cuda", **kw)
    ids = cpu_m.build_prompt("hello there", n_images=1)
    image = img(9, 32, 32)
    assert rel(gpu_m.encode_image(image), cpu_m.encode_image(image)) < 2e-2
    assert rel(gpu_m.logits(ids, images=[image]), cpu_m.logits(ids, images=[image])) < 2e-2
    # decode (matvec path: no F16 rounding of activations) over a compressed cache
    seq = ids + [5, 6, 7, 8]
    la = cpu_m.logits(seq, images=[image], kv_policy="aircache", kv_budget=0.25, n_prompt=len(ids))
    lb = gpu_m.logits(seq, images=[image], kv_policy="aircache", kv_budget=0.25, n_prompt=len(ids))
    assert rel(lb, la) < 2e-2


def test_session_and_chat(gpu, cpu):
    """A conversation on the GPU: turn 1 compressed there, turn 2 appended to the compacted cache."""
    turns = [[{"type": "image", "image": img(11)}, {"type": "text", "text": PROMPT}], "And the colour of the square?"]
    out = []
    for m in (cpu, gpu):
        s = m.session(kv_policy="aircache", kv_budget=0.2)
        out.append([s.send(t, max_tokens=8).tokens for t in turns] + [s.ids])
    assert out[0] == out[1]
    msgs = [{"role": "user", "content": turns[0]}]
    assert gpu.chat(msgs, max_tokens=8).tokens == cpu.chat(msgs, max_tokens=8).tokens


def test_scheduler_on_the_gpu(gpu, cpu):
    """Continuous batching on the GPU (the worker thread drives the device): each request's tokens
    equal the CPU's generate, with prefills chunked between other requests' decode steps."""
    reqs = [(img(20 + i), PROMPT, dict(max_tokens=6 + i, kv_policy=p, kv_budget=0.3 if p != "full" else 1.0))
            for i, p in enumerate(["full", "aircache", "snapkv", "h2o", "full"])]
    want = [cpu.generate(im, q, **o).tokens for im, q, o in reqs]
    with gpu.scheduler(n_parallel=3) as s:
        got = [h.result().tokens for h in [s.submit(im, q, **o) for im, q, o in reqs]]
    assert got == want


def test_device_errors(files):
    with pytest.raises(ac.UnsupportedError, match="only"):
        load(files, "cuda:99")
    with pytest.raises(ac.InputError, match="n_gpu_layers"):
        load(files, "cuda", n_gpu_layers=-3)


def test_cli_on_gpu(files):
    text, mm = files
    image = os.path.join(os.path.dirname(text), "img.png")
    from PIL import Image

    Image.fromarray(img(10)).save(image)
    args = ["aircache-cli", "-m", text, "--mmproj", mm, "--image", image, "-p", PROMPT, "-n", "6",
            "--kv-policy", "aircache", "--kv-budget", "0.2", "--verbose"]
    env = dict(os.environ, AIRCACHE_DEVICE="auto")
    g = subprocess.run(args + ["--device", "cuda"], capture_output=True, text=True, env=env)
    c = subprocess.run(args + ["--device", "cpu"], capture_output=True, text=True, env=env)
    assert g.returncode == 0 and c.returncode == 0, g.stderr + c.stderr
    assert g.stdout == c.stdout
    assert "device cuda:0" in g.stderr and "prefill GEMMs" in g.stderr
