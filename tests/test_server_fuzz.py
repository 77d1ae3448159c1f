"""The server's request handling under arbitrary bodies (hypothesis): every request gets a 200 or a
4xx with OpenAI's error JSON, never a 5xx, a hang or a dead server."""

import base64
import json
import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from test_server import Running, scenes

HERE = os.path.dirname(os.path.abspath(__file__))

_server = None


def server():
    global _server
    if _server is None:
        _server = Running(parallel=2, queue_size=16)
    return _server


def teardown_module(_module):
    if _server is not None:
        _server.stop()


def _png_uri():
    with open(scenes()[0][0], "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


PNG = _png_uri()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
                      max_leaves=8)
urls = st.one_of(st.just(PNG), st.just("data:image/png;base64,"), st.just("data:image/png;base64,@@@"),
                 st.just("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()),
                 st.just("file:///etc/passwd"), st.just("http://127.0.0.1:1/x.png"), st.text(max_size=30))
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=40), values)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.one_of(
        st.fixed_dictionaries({"url": urls}), urls, values)}),
    st.dictionaries(st.sampled_from(["type", "text", "image_url", "image"]), values, max_size=3),
    values)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"]),
                           "content": st.one_of(st.text(max_size=60), st.lists(parts, max_size=3), values)}),
    values)
known = {
    "messages": st.one_of(st.lists(message, max_size=4), values),
    "prompt": st.one_of(st.text(max_size=60), st.lists(st.text(max_size=10), max_size=2), values),
    "max_tokens": st.one_of(st.integers(-3, 6), values),
    "temperature": st.one_of(st.floats(-1, 3), st.floats(allow_nan=True), values),
    "top_p": st.one_of(st.floats(-1, 2), values), "top_k": st.one_of(st.integers(-5, 100), values),
    "seed": st.one_of(st.integers(-5, 2**65), values), "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5)), values),
    "stream": st.one_of(st.booleans(), values), "n": st.one_of(st.integers(0, 3), values),
    "kv_policy": st.one_of(st.sampled_from(["full", "aircache", "snapkv", "bogus"]), values),
    "kv_budget": st.one_of(st.floats(-0.5, 1.5), values), "kv_options": values,
    "stream_options": values, "logprobs": values, "tools": values, "model": values,
}
ok_message = st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(
    st.text(max_size=40), st.lists(st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}),
        st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": st.just(PNG)})})),
        min_size=1, max_size=2))})
ok_body = st.fixed_dictionaries({
    "messages": st.lists(ok_message, min_size=1, max_size=2), "prompt": st.text(max_size=40),
    "max_tokens": st.integers(1, 6)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0.1, 1), "top_k": st.integers(0, 50),
              "seed": st.integers(0, 2**63), "stop": st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=2),
              "stream": st.booleans(), "kv_policy": st.sampled_from(["aircache", "snapkv", "h2o", "random"]),
              "kv_budget": st.floats(0.05, 1.0), "stream_options": st.just({"include_usage": True}),
              "user": st.text(max_size=5)})


@st.composite
def mutated(draw):
    """A valid request with 0-2 fields replaced by anything (or removed)."""
    b = draw(ok_body)
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.sampled_from(sorted(known)))
        if draw(st.booleans()):
            b[k] = draw(known[k])
        else:
            b.pop(k, None)
    b.setdefault("max_tokens", 4)
    if not isinstance(b["max_tokens"], int) or isinstance(b["max_tokens"], bool) or b["max_tokens"] > 6:
        b["max_tokens"] = 4 if draw(st.booleans()) else b["max_tokens"]
    return b


bodies = st.one_of(mutated(), mutated(), values)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_any_body_gets_a_clean_answer(body, path):
    s = server()
    try:
        data = json.dumps(body).encode()
    except (ValueError, TypeError):
        data = b"\xff not json"
    status, out = s.raw("POST", path, data=data)
    event(f"{path} {status}")
    assert status in (200, 400, 429), (status, out)
    if status != 200:
        assert isinstance(out, dict) and set(out) == {"error"} and isinstance(out["error"]["message"], str), out
    elif isinstance(out, dict):
        assert out["choices"] and "usage" in out
    else:  # a stream
        assert out.startswith("data: ") and out.rstrip().endswith("data: [DONE]"), out[-200:]


def test_still_serving_after_the_fuzz():
    s = server()
    st_, body = s.raw("GET", "/health")
    assert st_ == 200
    img, q = scenes()[0]
    status, out = s.raw("POST", "/v1/chat/completions", body={
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}},
                                                  {"type": "text", "text": q}]}],
        "max_tokens": 8, "temperature": 0})
    assert status == 200 and out["choices"][0]["message"]["content"]
    m = s.metrics()
    assert m["slots_busy"] == 0 and m["queue_depth"] == 0
