"""The backend architecture on a tiny random LLaVA: one forward per model over the op table, run on
the CPU and on the test backend (host memory behind the device interface: placement, transfers,
device KV caches and the CPU fallback, without a GPU). A backend that declines an op makes the model
run that op on the CPU with logits equal to the pure CPU run; partial offload (n_gpu_layers) too;
the CUDA backend declares every op and weight type the LLaVA path uses; positions are kept apart
from indices (kept_pos); n_image_tokens(image)."""

import subprocess

import numpy as np
import pytest

import aircache_cpp as ac
from aircache_cpp import _core
from fixture_configs import LLAVA
from hf_llava_fixtures import SMALL, small_llava_gguf

QUESTION = "What colour is the star on the left?"


def img(seed=0, h=64, w=64):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, spm_model):
    return small_llava_gguf(tmp_path_factory, spm_model, "llava-arch", seed=5)[1:]


def load(files, device="cpu", **kw):
    text, mm = files
    kw.setdefault("kv_type", "f32")
    return ac.Model(text, mmproj=mm, n_ctx=512, device=device, **kw)


@pytest.fixture(scope="module")
def cpu(files):
    return load(files)


@pytest.fixture(scope="module")
def ids(cpu):
    return cpu.build_prompt(QUESTION, [img(1)]) + [300, 301, 302, 5, 6]


def run(m, ids, **kv):
    n_prompt = len(ids) - 5
    lg, st = m.logits(ids, images=[img(1)], n_prompt=n_prompt, return_stats=True, **kv)
    return lg, st


# every op the LLaVA path dispatches, declined one at a time
LLAVA_OPS = ["matmul", "add", "rms_norm", "layer_norm", "rope", "attention", "attention_kv", "kv_store", "kv_compact",
             "activation", "glu", "get_rows", "patch_embed"]


@pytest.mark.parametrize("declined", ["none"] + LLAVA_OPS)
def test_declined_op_runs_on_the_cpu_with_the_same_logits(files, cpu, ids, declined):
    """The test backend runs the CPU's kernels on memory of its own: with one op declined, that op
    takes the dispatcher's fallback (host copies in, the CPU op, outputs back); logits, kept rows
    and image features are bit-identical to the pure CPU run."""
    dev = "test" if declined == "none" else f"test:decline={declined}"
    m = load(files, dev)
    assert m.device == dev and m.n_gpu_layers == 4 and m._engine.vision_on_gpu
    kv = dict(kv_policy="aircache", kv_budget=0.3) if declined != "kv_compact" else dict(kv_policy="h2o", kv_budget=0.3)
    a, sa = run(cpu, ids, **kv)
    b, sb = run(m, ids, **kv)
    assert np.array_equal(a, b)
    assert all(np.array_equal(x, y) for x, y in zip(sa.kept, sb.kept))
    assert np.array_equal(cpu.encode_image(img(2)), m.encode_image(img(2)))
    g = dict(max_tokens=6, kv_policy="vlcache", kv_budget=0.3)
    assert m.generate(img(3), QUESTION, **g).tokens == cpu.generate(img(3), QUESTION, **g).tokens
    used = m._engine.ops_used
    if declined == "none":
        assert all(be == dev for be, _, _ in used)  # everything ran on the device
    else:  # the declined op ran on the CPU, nothing else did
        assert {op for be, op, _ in used if be == "cpu"} == {declined}


@pytest.mark.parametrize("ngl", [0, 1, 3])
def test_partial_offload(files, cpu, ids, ngl):
    """The first ngl layers on the (test) device, the rest and the output on the CPU."""
    m = load(files, "test", n_gpu_layers=ngl)
    assert m.n_gpu_layers == ngl
    for kv in (dict(kv_policy="full"), dict(kv_policy="snapkv", kv_budget=0.2, kv_selection="kv_head")):
        assert np.array_equal(run(cpu, ids, **kv)[0], run(m, ids, **kv)[0])
    r1 = cpu.generate(img(3), QUESTION, max_tokens=12, kv_policy="vlcache", kv_budget=0.2)
    r2 = m.generate(img(3), QUESTION, max_tokens=12, kv_policy="vlcache", kv_budget=0.2)
    assert r1.tokens == r2.tokens


def test_batches_and_evaluation_on_the_test_device(files, cpu, ids):
    m = load(files, "test:decline=attention_kv", n_gpu_layers=2)
    reqs = [(img(4), QUESTION), (None, "Hello there"), (img(5), "Describe it.")]
    one = [cpu.generate(i, p, max_tokens=8, kv_policy="aircache", kv_budget=0.2).tokens for i, p in reqs]
    batch = [r.tokens for r in m.generate_batch(reqs, max_tokens=8, kv_policy="aircache", kv_budget=0.2)]
    assert batch == one
    settings = [{"kv_policy": "aircache", "kv_budget": 0.2}, {"kv_policy": "vlcache", "kv_budget": 0.2},
                {"kv_policy": "vlcache", "kv_budget": 0.2, "kv_options": {"vl_p": 0.1}}]
    n_prompt = len(ids) - 5
    a = cpu.evaluate_policies(ids, [img(1)], n_prompt=n_prompt, policies=settings, hit_rate=True)
    b = m.evaluate_policies(ids, [img(1)], n_prompt=n_prompt, policies=settings, hit_rate=True)
    for (la, sa), (lb, sb) in zip(a, b):
        assert np.array_equal(la, lb) and sa.hit_rate == sb.hit_rate


def test_cuda_backend_declares_the_llava_path(cpu, ids):
    """Every (op, type) the LLaVA-1.5 path dispatched on the CPU, and matmul for every weight type
    users' files hold, is declared by the CUDA backend (so a CUDA backend that declines everything
    cannot pass). Needs a build with CUDA (CI builds with it)."""
    if not ac.build_info()["cuda"]:
        pytest.skip("this build has no CUDA backend (CI builds with CUDA: there this test runs)")
    run(cpu, ids, kv_policy="aircache", kv_budget=0.2)
    run(cpu, ids, kv_policy="snapkv", kv_budget=0.2)
    cpu.generate(img(1), QUESTION, max_tokens=4)
    used = cpu._engine.ops_used
    ops = {op for _, op, _ in used}
    assert {"matmul", "attention", "attention_kv", "kv_store", "kv_compact", "patch_embed", "rope"} <= ops
    missing = [(op, t) for _, op, t in used if not _core._cuda_supports(op, t)]
    assert not missing, missing
    for t in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        assert _core._cuda_supports("matmul", t), t
    assert not _core._cuda_supports("matmul", "IQ4_NL")
    for f16 in ("F16", "F32"):
        assert _core._cuda_supports("attention_kv", f16) and _core._cuda_supports("kv_store", f16)


def test_n_image_tokens(cpu):
    n = (SMALL["image_size"] // LLAVA["patch"]) ** 2
    assert cpu.n_image_tokens() == n
    assert cpu.n_image_tokens(img(0, 100, 37)) == n  # LLaVA-1.5: every image the same
    assert cpu.build_prompt("hi", [img(0, 30, 90)]).count(cpu.image_token_id) == n
    text = ac.Model(files_text(cpu))
    with pytest.raises(ac.InputError, match="mmproj"):
        text.n_image_tokens()


def files_text(m):
    return m.model_path


def test_image_run_must_match_its_image(cpu, ids):
    bad = list(ids)
    bad.remove(cpu.image_token_id)  # one image row short
    with pytest.raises(ac.InputError, match="image"):
        cpu.logits(bad, images=[img(1)])


def test_kept_positions(cpu, ids):
    """kept are row indices, kept_pos the positions RoPE saw: with LLaVA's 1-D RoPE the original
    index of each kept row (n_pos_axes = 1)."""
    _, st = run(cpu, ids, kv_policy="aircache", kv_budget=0.2)
    for k, p in zip(st.kept, st.kept_pos):
        assert p.shape == (len(k), 1) and np.array_equal(p[:, 0], k)
    _, st = run(cpu, ids, kv_policy="h2o", kv_budget=0.2, kv_selection="kv_head")
    for layer_k, layer_p in zip(st.kept, st.kept_pos):
        for k, p in zip(layer_k, layer_p):
            assert np.array_equal(p[:, 0], k)


def test_bench_kv_opt_and_shared_flags(files):
    """aircache-bench takes the CLI's engine and KV flags (one parser): --kv-opt reaches the policy."""
    text, mm = files
    base = ["aircache-bench", "-m", text, "--mmproj", mm, "-n", "2", "-r", "1", "-o", "json", "--kv-policy", "aircache",
            "--kv-budget", "0.2", "--device", "test:decline=glu", "-ngl", "2"]
    r = subprocess.run(base + ["--kv-opt", "air_alpha=0.5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert '"policy": "aircache"' in r.stdout and "test:decline=glu (ngl 2)" in r.stdout
    r = subprocess.run(base + ["--kv-opt", "air_alpha=7"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "air_alpha" in r.stderr and r.stderr.count("\n") == 1
    for prog in ("aircache-bench", "aircache-cli"):
        r = subprocess.run([prog, "-m", text, "--no-such-flag"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "unknown option '--no-such-flag'" in r.stderr
