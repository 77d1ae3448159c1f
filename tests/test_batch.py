"""Batched generation: sequences decoded together (one forward pass per step over all unfinished
sequences, each on its own compacted cache) give exactly what each gives alone."""

import os
import sys

import numpy as np
import pytest

import aircache_cpp as ac
from fixture_configs import LLAVA

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import convert_hf_to_gguf as conv  # noqa: E402


@pytest.fixture(scope="module")
def llava(tmp_path_factory, spm_model):
    from hf_llava_fixtures import make_tiny_llava

    d = tmp_path_factory.mktemp("llava-batch")
    make_tiny_llava(str(d / "hf"), spm_model, seed=11, **dict(LLAVA, image_size=48, text_layers=3))
    text, mm = conv.convert_llava(str(d / "hf"), str(d / "text.gguf"), str(d / "mmproj.gguf"), "f32")
    return ac.Model(text, mmproj=mm, kv_type="f32", n_ctx=400)


def img(seed, h=48, w=48):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


REQUESTS = [(img(1), "What colour is the star?"), (None, "hello world the cat"), (img(2, 30, 60), "How many?"),
            ([img(3), img(4)], "Compare <image> with <image> please."), (img(5), "Is there a green square on the left side?")]


def nested(x):
    """Kept sets (arrays, or lists of arrays per KV head) as plain lists."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    return [nested(v) for v in x]


def one_by_one(m, requests, **kw):
    return [m.generate(image, prompt, **kw) for image, prompt in requests]


@pytest.mark.parametrize("kw", [
    dict(max_tokens=20),
    dict(max_tokens=20, kv_policy="aircache", kv_budget=0.1),
    dict(max_tokens=16, kv_policy="vlcache", kv_budget=0.2, kv_scope="all", kv_selection="kv_head"),
    dict(max_tokens=12, temperature=0.9, seed=5, top_k=50),
])
def test_batch_equals_one_by_one(llava, kw):
    batch = llava.generate_batch(REQUESTS, **kw)
    alone = one_by_one(llava, REQUESTS, **kw)
    assert len(batch) == len(REQUESTS)
    for b, a in zip(batch, alone):
        assert b.tokens == a.tokens and b.text == a.text
        assert b.stats.n_prompt == a.stats.n_prompt and b.stats.n_visual == a.stats.n_visual
        assert b.stats.kv_bytes_after == a.stats.kv_bytes_after
        assert nested(b.stats.kept) == nested(a.stats.kept)
        assert b.stats.batch_size == len(REQUESTS) and b.stats.batch_decode_tokens_per_s > 0


def test_sequences_end_at_different_times(llava):
    """A stop string ends one sequence early; max_tokens 0 ends one at once; the others go on."""
    free = llava.generate(REQUESTS[0][0], REQUESTS[0][1], max_tokens=24).text
    stop = free[3:6]
    reqs = REQUESTS[:3]
    batch = llava.generate_batch(reqs, max_tokens=24, stop=[stop])
    alone = one_by_one(llava, reqs, max_tokens=24, stop=[stop])
    assert [r.text for r in batch] == [r.text for r in alone]
    assert batch[0].stats.stop_reason == "stop" and batch[0].text == free[:free.find(stop)]
    zero = llava.generate_batch(reqs, max_tokens=0)
    assert all(r.tokens == [] and r.stats.stop_reason == "length" for r in zero)


def test_batch_errors(llava):
    with pytest.raises(ac.InputError, match="at least one"):
        llava.generate_batch([])
    with pytest.raises(ac.InputError, match="request 1 must be an \\(image, prompt\\) pair"):
        llava.generate_batch([(None, "a"), "b"])
    with pytest.raises(ac.InputError, match="kv_budget"):
        llava.generate_batch([(None, "a")], kv_policy="aircache", kv_budget=2)


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_large_batches_equal_one_by_one(tmp_path_factory, spm_model, outtype):
    """Nine and eighteen sequences (more activation rows per decode step than one kernel call takes,
    and more than a prefill-sized forward) with F16 / Q8_0 weights and an F16 cache: still exactly
    the single-sequence tokens."""
    from hf_llava_fixtures import make_tiny_llava

    d = tmp_path_factory.mktemp(f"llava-batch-{outtype}")
    make_tiny_llava(str(d / "hf"), spm_model, seed=12, **dict(LLAVA, image_size=48, text_layers=2))
    text, mm = conv.convert_llava(str(d / "hf"), str(d / "text.gguf"), str(d / "mmproj.gguf"), outtype)
    m = ac.Model(text, mmproj=mm, kv_type="f16", n_ctx=400)
    nine = REQUESTS + [(img(6), "What shape is red?"), (None, "one two three"), (img(7), "Where is it?"),
                       (img(8, 40, 48), "Describe the scene.")]
    eighteen = nine + [(img(20 + i), f"Question {i}?") for i in range(9)]
    alone = one_by_one(m, eighteen, max_tokens=10)
    for requests in (nine, eighteen):
        batch = m.generate_batch(requests, max_tokens=10)
        assert [b.tokens for b in batch] == [a.tokens for a in alone[:len(requests)]]
    kw = dict(max_tokens=10, kv_policy="aircache", kv_budget=0.2)
    assert [b.tokens for b in m.generate_batch(nine, **kw)] == [a.tokens for a in one_by_one(m, nine, **kw)]
