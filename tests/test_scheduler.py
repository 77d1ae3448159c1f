"""Continuous batching (Model.scheduler): requests join and leave between decode steps, each with its
own cache, policy and sampling; results equal the same request run alone; the queue is bounded;
cancellation frees the slot; errors stay with their request. The bundled demo model."""

import json
import os
import threading
import time

import numpy as np
import pytest

import aircache_cpp as ac

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")


def scenes():
    with open(os.path.join(EXAMPLES, "scenes.json")) as f:
        return [(os.path.join(EXAMPLES, s["image"]), s["question"]) for s in json.load(f)]


@pytest.fixture(scope="module")
def model():
    text, mm = ac.demo_model_paths()
    # a small n_batch: each prompt (~600 rows) prefills in many chunks, interleaved with the
    # other requests' decode steps
    return ac.Model(text, mmproj=mm, n_ctx=768, n_batch=64)


POLICIES = [dict(kv_policy="full"), dict(kv_policy="aircache", kv_budget=0.2), dict(kv_policy="snapkv", kv_budget=0.3),
            dict(kv_policy="h2o", kv_budget=0.5), dict(kv_policy="random", kv_budget=0.25),
            dict(kv_policy="vlcache", kv_budget=0.1)]


def requests():
    out = []
    for i, (img, q) in enumerate(scenes()):
        opts = dict(POLICIES[i % len(POLICIES)], max_tokens=4 + 3 * i)
        if i % 3 == 2:
            opts.update(temperature=0.8, seed=100 + i)  # sampled: the same seed gives the same tokens
        out.append((img, q, opts))
    out.append((None, "Say something.", dict(max_tokens=5)))  # text only
    return out


def test_results_equal_requests_run_alone(model):
    reqs = requests()
    alone = [model.generate(img, q, **o) if img else model.generate(prompt=q, **o) for img, q, o in reqs]
    with model.scheduler(n_parallel=3, queue_size=16) as s:
        handles = [s.submit(img, q, **o) if img else s.submit(prompt=q, **o) for img, q, o in reqs]
        got = [h.result() for h in handles]
        m = s.metrics()
        # idle slots hold no KV memory (each layer one row): less than any one request's cache
        deadline = time.monotonic() + 10
        while (idle := s.metrics())["kv_bytes_in_use"] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert idle["kv_bytes_in_use"] == 0
    assert 0 < idle["kv_capacity_bytes"] < min(a.stats.kv_capacity_bytes for a in alone)
    for a, g, (img, q, o) in zip(alone, got, reqs):
        assert g.tokens == a.tokens, (q, o)
        assert g.text == a.text
        assert g.stats.stop_reason == a.stats.stop_reason
        assert len(g.stats.kept) == len(a.stats.kept)  # the same compression decisions
        assert all(np.array_equal(x, y) for x, y in zip(g.stats.kept, a.stats.kept))
    assert m["requests_finished"] == len(reqs) and m["requests_failed"] == 0
    assert m["prompt_tokens"] == sum(a.stats.n_prompt for a in alone)
    assert m["generated_tokens"] == sum(a.stats.n_generated for a in alone)
    assert m["prefill_chunks"] > len(reqs)  # chunked
    assert m["time_to_first_token_seconds"]["count"] == len(reqs)
    assert m["kv_bytes_after_compaction"] < m["kv_bytes_before_compaction"]
    assert m["slots_busy"] == 0 and m["queue_depth"] == 0


def test_chat_and_streaming(model):
    img, q = scenes()[1]
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}}, {"type": "text", "text": q}]}]
    want = model.chat(msgs, max_tokens=12, kv_policy="aircache", kv_budget=0.3)
    with model.scheduler(n_parallel=2) as s:
        r = s.submit_chat(msgs, max_tokens=12, kv_policy="aircache", kv_budget=0.3)
        pieces = list(r)
        res = r.result()
    assert "".join(pieces) == res.text == want.text
    assert res.tokens == want.tokens


def test_many_clients(model):
    """16 threads x 3 requests each on 4 slots: every answer is its own, none lost or mixed."""
    reqs = requests()
    alone = {}
    for i, (img, q, o) in enumerate(reqs):
        o = dict(o, max_tokens=6)
        alone[i] = (model.generate(img, q, **o) if img else model.generate(prompt=q, **o)).text
    results, errors = {}, []
    with model.scheduler(n_parallel=4, queue_size=64) as s:
        def client(c):
            try:
                for k in range(3):
                    i = (c + k) % len(reqs)
                    img, q, o = reqs[i]
                    o = dict(o, max_tokens=6)
                    h = s.submit(img, q, **o) if img else s.submit(prompt=q, **o)
                    results[(c, k)] = (i, "".join(h))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        m = s.metrics()
    assert not errors
    assert len(results) == 48
    for (i, text) in results.values():
        assert text == alone[i]
    assert m["requests_finished"] == 48


def test_queue_bound_and_rejection(model):
    img, q = scenes()[0]
    with model.scheduler(n_parallel=1, queue_size=0) as s:
        a = s.submit(img, q, max_tokens=8)
        with pytest.raises(ac.QueueFull, match="queue is full"):
            s.submit(img, q, max_tokens=8)
        assert a.result().text
        assert s.metrics()["requests_rejected"] == 1
        # the slot is free again
        assert s.submit(img, q, max_tokens=3).result().stats.n_generated >= 1
    with model.scheduler(n_parallel=1, queue_size=2) as s:
        hs = [s.submit(img, q, max_tokens=8) for _ in range(3)]
        with pytest.raises(ac.QueueFull):
            s.submit(img, q, max_tokens=8)
        assert len({h.result().text for h in hs}) == 1


def test_cancel(model):
    img, q = scenes()[0]
    with model.scheduler(n_parallel=1, queue_size=8) as s:
        running = s.submit(img, q, max_tokens=8)
        queued = [s.submit(img, q, max_tokens=8) for _ in range(3)]
        for h in queued:
            h.cancel()
        for h in queued:
            r = h.result()
            assert r.stats.stop_reason == "cancelled" and r.tokens == []
        assert running.result().stats.stop_reason in ("eos", "length")
        # cancelling the running request frees its slot at the next step
        r = s.submit(img, q, max_tokens=8)
        r.cancel()
        assert r.result().stats.stop_reason in ("cancelled", "eos", "length")
        after = s.submit(img, q, max_tokens=4).result()
        assert after.stats.n_generated >= 1
        m = s.metrics()
        assert m["requests_cancelled"] >= 3 and m["slots_busy"] <= 1


def test_close_cancels_and_gives_the_model_back(model):
    img, q = scenes()[0]
    s = model.scheduler(n_parallel=1, queue_size=8)
    with pytest.raises(ac.InputError, match="Scheduler is running"):
        model.generate(img, q, max_tokens=2)
    hs = [s.submit(img, q, max_tokens=8) for _ in range(4)]
    s.close()
    for h in hs:
        assert h.result().stats.stop_reason in ("cancelled", "eos", "length")
    assert any(h.result().stats.stop_reason == "cancelled" for h in hs)
    with pytest.raises(ac.InputError, match="closed"):
        s.submit(img, q)
    assert model.generate(img, q, max_tokens=2).stats.n_generated >= 1


def test_bad_requests_stay_with_their_request(model):
    img, q = scenes()[0]
    with model.scheduler(n_parallel=2) as s:
        good = s.submit(img, q, max_tokens=6)
        with pytest.raises(ac.InputError, match="longer than the context"):
            s.submit(img, "word " * 2000)
        with pytest.raises(ac.InputError, match="kv_budget"):
            s.submit(img, q, kv_policy="aircache", kv_budget=0.0)
        with pytest.raises(ac.InputError, match="unknown option"):
            s.submit(img, q, bogus=1)
        with pytest.raises(ac.InputError, match="n_parallel"):
            model.scheduler(n_parallel=0)
        assert good.result().text == model_text(img, q)


def model_text(img, q):
    text, mm = ac.demo_model_paths()
    with ac.Model(text, mmproj=mm, n_ctx=768) as m:
        return m.generate(img, q, max_tokens=6).text


def test_on_a_device():
    """The scheduler on the test backend (device memory reached only through upload/download, as a
    GPU's) gives what generate gives there (tests/gpu runs the same on CUDA)."""
    text, mm = ac.demo_model_paths()
    reqs = requests()[:4]
    with ac.Model(text, mmproj=mm, n_ctx=768, n_batch=64, device="test") as m:
        alone = [m.generate(img, q, **o) for img, q, o in reqs]
        with m.scheduler(n_parallel=2) as s:
            got = [h.result() for h in [s.submit(img, q, **o) for img, q, o in reqs]]
    for a, g in zip(alone, got):
        assert g.tokens == a.tokens
