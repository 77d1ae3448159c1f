"""Inconsistent models and bad arguments (issue: hardening II): a structurally valid file whose
values make no sense is a FormatError naming the key or tensor at load; NaN weights are found by
check_tensors and never decode as token 0; the Python surface turns every bad argument into an
InputError naming it; a closed Model says so; a KV cache that cannot fit is a MemoryError before it
is allocated."""

import math
import os

import numpy as np
import pytest

import aircache_cpp as ac
import gguf_fixtures as fx

VT = None


def vt():
    import gguf

    return gguf.GGUFValueType


@pytest.fixture(scope="module")
def demo_paths():
    return ac.demo_model_paths()


@pytest.fixture(scope="module")
def demo(demo_paths):
    text, mm = demo_paths
    return ac.Model(text, mmproj=mm, n_ctx=512)


def scene():
    return os.path.join(os.path.dirname(__file__), "..", "examples", "scene0.png")


@pytest.mark.parametrize("eps", [float("nan"), -1.0, 0.0, float("inf")])
def test_vision_epsilon_checked(demo_paths, tmp_path, eps):
    text, mm = demo_paths
    bad = fx.rewrite_gguf(mm, str(tmp_path / "mm.gguf"), kv={"clip.vision.attention.layer_norm_epsilon": (eps, vt().FLOAT32)})
    with pytest.raises(ac.FormatError, match="layer_norm_epsilon"):
        ac.Model(text, mmproj=bad)


@pytest.mark.parametrize("key,value,match", [
    ("clip.vision.image_mean", [float("nan"), 0.5, 0.5], r"image_mean\[0\] is nan"),
    ("clip.vision.image_std", [0.5, 0.0, 0.5], r"image_std\[1\]"),
    ("clip.vision.image_std", [0.5, 0.5], "3 values"),
    ("clip.vision.image_std", [0.5, 0.5, 1e-40], r"image_std\[2\] = \S+ normalises pixels beyond the float range"),
])
def test_image_mean_std_checked_at_load(demo_paths, tmp_path, key, value, match):
    text, mm = demo_paths
    bad = fx.rewrite_gguf(mm, str(tmp_path / "mm.gguf"), kv={key: (value, vt().ARRAY, vt().FLOAT32)})
    with pytest.raises(ac.FormatError, match=match):
        ac.Model(text, mmproj=bad)


def test_tokenizer_arrays_and_vocab_size(demo_paths, tmp_path):
    import gguf

    text, _ = demo_paths
    r = gguf.GGUFReader(text)
    scores = list(r.fields["tokenizer.ggml.scores"].contents())
    bad = fx.rewrite_gguf(text, str(tmp_path / "a.gguf"), kv={"tokenizer.ggml.scores": (scores + [0.0], vt().ARRAY, vt().FLOAT32)})
    with pytest.raises(ac.FormatError, match="scores has .* entries but"):
        ac.Model(bad)
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    bad = fx.rewrite_gguf(text, str(tmp_path / "b.gguf"), kv={"tokenizer.ggml.token_type": (types + [1, 1], vt().ARRAY, vt().INT32)})
    with pytest.raises(ac.FormatError, match="token_type has .* entries but"):
        ac.Model(bad)
    scores[3] = float("nan")
    bad = fx.rewrite_gguf(text, str(tmp_path / "c.gguf"), kv={"tokenizer.ggml.scores": (scores, vt().ARRAY, vt().FLOAT32)})
    with pytest.raises(ac.FormatError, match=r"scores\[3\] is nan"):
        ac.Model(bad)
    bad = fx.rewrite_gguf(text, str(tmp_path / "d.gguf"), kv={"llama.vocab_size": (len(types) + 7, vt().UINT32)})
    with pytest.raises(ac.FormatError, match="vocab_size"):
        ac.Model(bad)


@pytest.mark.parametrize("which,key,value,match", [
    # found by a sweep over every metadata key of the demo model: these loaded and answered garbage
    ("text", "llama.rope.freq_base", (float("inf"), "FLOAT32"), r"rope.freq_base' is inf \(must be finite"),
    ("text", "llama.block_count", (1, "UINT32"), r"tensor 'blk.1.\S+' is for layer 1 but key 'llama.block_count' is 1"),
    ("mm", "clip.vision.block_count", (1, "UINT32"), r"tensor 'v.blk.1.\S+' is for layer 1 but key 'clip.vision.block_count' is 1"),
])
def test_metadata_that_contradicts_the_file(demo_paths, tmp_path, which, key, value, match):
    text, mm = demo_paths
    v = (value[0], getattr(vt(), value[1]))
    if which == "text":
        text = fx.rewrite_gguf(text, str(tmp_path / "t.gguf"), kv={key: v})
    else:
        mm = fx.rewrite_gguf(mm, str(tmp_path / "m.gguf"), kv={key: v})
    with pytest.raises(ac.FormatError, match=match):
        ac.Model(text, mmproj=mm)


def poison(name, value, row=0):
    """A rewrite that puts `value` in tensor `name` (row `row`, first element)."""
    def f(n, a, tt):
        if n == name:
            a = np.array(a, copy=True)
            if a.dtype == np.float16 or a.dtype == np.float32:
                a.reshape(a.shape[0] if a.ndim > 1 else 1, -1)[row if a.ndim > 1 else 0, 0] = value
            return n, a, tt
        return n, a, tt
    return f


def test_norms_always_checked(demo_paths, tmp_path):
    text, mm = demo_paths
    bad = fx.rewrite_gguf(text, str(tmp_path / "t.gguf"), tensors=poison("blk.1.attn_norm.weight", np.nan))
    with pytest.raises(ac.FormatError, match=r"blk.1.attn_norm.weight' holds NaN"):
        ac.Model(bad)
    bad = fx.rewrite_gguf(mm, str(tmp_path / "m.gguf"), tensors=poison("v.blk.0.ln1.bias", np.inf))
    with pytest.raises(ac.FormatError, match=r"v.blk.0.ln1.bias' holds an infinity"):
        ac.Model(text, mmproj=bad)


def test_check_tensors_and_nan_logits(demo_paths, tmp_path, demo):
    """A NaN in a weight matrix or an inf in one embedding row: found at load with check_tensors
    (naming tensor, row and column); without it, generation stops with an error at the bad token
    instead of decoding token 0 forever."""
    text, mm = demo_paths
    bad = fx.rewrite_gguf(text, str(tmp_path / "w.gguf"), tensors=poison("blk.2.ffn_up.weight", np.nan, row=5))
    with pytest.raises(ac.FormatError, match=r"blk.2.ffn_up.weight' holds a NaN or an infinity at row 5, column 0"):
        ac.Model(bad, check_tensors=True)
    m = ac.Model(bad)
    with pytest.raises(ac.FormatError, match="NaN logits"):
        m.generate(prompt="hello", max_tokens=4)
    # one embedding row of inf: only a prompt holding that token is affected
    tok = demo.tokenize("square", add_bos=False)[0]
    bad = fx.rewrite_gguf(text, str(tmp_path / "e.gguf"), tensors=poison("token_embd.weight", np.inf, row=tok))
    m = ac.Model(bad, mmproj=mm)
    assert m.generate(prompt="hello", max_tokens=2).stats.n_generated >= 1
    with pytest.raises(ac.FormatError, match="logits"):
        m.generate(scene(), "What colour is the square?", max_tokens=4)
    with pytest.raises(ac.FormatError, match="token_embd.weight"):
        ac.Model(bad, check_tensors=True)


def test_closed_model(demo_paths):
    text, mm = demo_paths
    m = ac.Model(text, mmproj=mm, n_ctx=256)
    m.close()
    m.close()
    assert "closed" in repr(m)
    for call in (lambda: m.generate(prompt="x"), lambda: m.tokenize("x"), lambda: m.n_vocab, lambda: m.logits([1, 2]),
                 lambda: m.chat([{"role": "user", "content": "x"}]), lambda: m.session(), lambda: m.encode_image(scene())):
        with pytest.raises(ac.InputError, match="was closed"):
            call()
    with ac.Model(text, n_ctx=64) as m2:
        m2.tokenize("a")
    with pytest.raises(ac.InputError, match="was closed"):
        m2.tokenize("a")


@pytest.mark.parametrize("kw,match", [
    (dict(prompt="abc \ud800"), "prompt holds a character"),
    (dict(prompt="x", max_tokens=10**12), r"max_tokens must be in \["),
    (dict(prompt="x", repeat_last_n=10**12), r"repeat_last_n must be in \["),
    (dict(prompt="x", top_k=2.5), "top_k must be an integer"),
    (dict(prompt="x", stop=123), "stop must be a string or a list of strings"),
    (dict(prompt="x", stop=["ok", "\udcff"]), "stop holds a character"),
    (dict(prompt="x", temperature="hot"), "temperature must be a number"),
    (dict(prompt="x", kv_budget=True), "kv_budget must be a number"),
    (dict(prompt="x", kv_options={"air_alpha": "\ud800"}), "kv_options"),
    (dict(prompt="x", stream="yes"), "stream must be True or False"),
    (dict(prompt="x", seed=-1), "seed"),
    (dict(prompt=b"bytes"), "prompt must be a str"),
])
def test_generate_arguments(demo, kw, match):
    with pytest.raises(ac.InputError, match=match):
        demo.generate(**kw)


def test_image_data_uris_everywhere(demo):
    """generate takes the data: URIs chat takes; a bad one is an InputError, not a missing file."""
    import base64

    with open(scene(), "rb") as f:
        uri = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    want = demo.generate(scene(), "What colour is the square?", max_tokens=4).text
    assert demo.generate(uri, "What colour is the square?", max_tokens=4).text == want
    for bad, match in [("data:image/png;base64,!!!!", "invalid base64"), ("data:image/png;base64,", "no data"),
                       ("data:image/png,abc", "must be base64"), ("https://example.com/a.png", "not fetched")]:
        with pytest.raises(ac.InputError, match=match):
            demo.generate(bad, "x", max_tokens=1)


def test_other_arguments(demo, demo_paths):
    text, _ = demo_paths
    with pytest.raises(ac.InputError, match="text holds a character"):
        demo.tokenize("\ud800")
    with pytest.raises(ac.InputError, match="add_bos must be True or False"):
        demo.tokenize("a", add_bos="no")
    with pytest.raises(ac.InputError, match="n_prompt must be in"):
        demo.logits([1, 2, 3], n_prompt=2**70)
    with pytest.raises(ac.InputError, match="n_ctx must be in"):
        ac.Model(text, n_ctx=10**12)
    with pytest.raises(ac.InputError, match="n_batch must be an integer"):
        ac.Model(text, n_batch="big")
    with pytest.raises(ac.InputError, match="model_path must be a path"):
        ac.Model(42)
    with pytest.raises(ac.InputError, match="model_path holds a character"):
        ac.Model("model\ud800.gguf")
    with pytest.raises(ac.InputError, match="check_tensors must be True or False"):
        ac.Model(text, check_tensors=1)
    with pytest.raises(ac.InputError, match="content part 1"):
        demo.chat([{"role": "user", "content": ["ok", "\ud800"]}])
    with pytest.raises(ac.InputError, match="policies\\[0\\]"):
        demo.evaluate_policies([1, 2, 3], n_prompt=2, policies=["aircache"])
    with pytest.raises(ac.InputError, match="n_images"):
        demo.build_prompt("x", n_images=-1)


def test_kv_cache_that_cannot_fit(demo_paths, monkeypatch):
    """The KV cache is refused before allocation when it needs more than the memory available
    (AIRCACHE_MEMORY_LIMIT caps it here; MemAvailable and the cgroup limit otherwise)."""
    text, mm = demo_paths
    monkeypatch.setenv("AIRCACHE_MEMORY_LIMIT", "1M")
    with pytest.raises(MemoryError, match=r"KV cache needs 4.00 MiB on cpu .* but 1.00 MiB is available"):
        ac.Model(text, mmproj=mm, n_ctx=4096)
    m = ac.Model(text, mmproj=mm, n_ctx=256)  # 256 KiB fits
    assert m.generate(prompt="hi", max_tokens=2).stats.n_generated >= 1
    monkeypatch.setenv("AIRCACHE_MEMORY_LIMIT", "64G")
    assert ac.Model(text, n_ctx=4096).n_ctx == 4096


def test_image_that_cannot_be_encoded(demo_paths, monkeypatch):
    """An image whose vision-tower activations exceed the memory available is refused before the
    tower allocates them, with both sizes; the model still works once memory is there."""
    text, mm = demo_paths
    m = ac.Model(text, mmproj=mm, n_ctx=512)
    monkeypatch.setenv("AIRCACHE_MEMORY_LIMIT", "16K")
    with pytest.raises(MemoryError, match=r"encoding an image \(\d+ patches\) needs [\d.]+ [KM]iB of working memory "
                                          r"on cpu but 16.00 KiB is available"):
        m.generate(scene(), "What colour is the square?", max_tokens=2)
    monkeypatch.delenv("AIRCACHE_MEMORY_LIMIT")
    out = m.generate(scene(), "What colour is the square?", max_tokens=2)
    assert out.stats.n_generated >= 1
