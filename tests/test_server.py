"""aircache-server against the official OpenAI client, on 127.0.0.1, with the bundled demo model:
answers equal Model.chat's, streaming, concurrency without lost or mixed answers, disconnects free
their slot, every bad request gets its status and OpenAI's error JSON, and the server keeps
serving; the API key; /v1/models, /health, /metrics."""

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import uvicorn

import aircache_cpp as ac
from aircache_cpp.server import ServerConfig, _State, create_app

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
N_CTX = 768


def scenes():
    with open(os.path.join(EXAMPLES, "scenes.json")) as f:
        return [(os.path.join(EXAMPLES, s["image"]), s["question"]) for s in json.load(f)]


def data_uri(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def messages(img, q):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(img)}},
                                         {"type": "text", "text": q}]}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, **kw):
        self.cfg = ServerConfig(n_ctx=N_CTX, n_batch=64, **kw)
        self.state = _State(self.cfg)
        self.state.load()
        assert self.state.error is None, self.state.error
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.srv = uvicorn.Server(uvicorn.Config(create_app(self.cfg, self.state, load=False), host="127.0.0.1",
                                                 port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.srv.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.srv.started:
                break
            time.sleep(0.05)
        assert self.srv.started

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def raw(self, method, path, body=None, headers=None, data=None):
        """(status, parsed JSON or text) of a request made by hand."""
        if data is None and body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metrics(self):
        return self.state.sched.metrics()

    def stop(self):
        self.srv.should_exit = True
        self.thread.join(30)
        self.state.sched.close()


@pytest.fixture(scope="module")
def server():
    s = Running(parallel=4, queue_size=64)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference():
    text, mm = ac.demo_model_paths()
    with ac.Model(text, mmproj=mm, n_ctx=N_CTX, n_batch=64) as m:
        yield m


def test_chat_equals_model_chat(server, reference):
    c = server.client()
    for i, (img, q) in enumerate(scenes()[:3]):
        kv = dict(kv_policy="aircache", kv_budget=0.3) if i == 1 else {}
        want = reference.chat(messages(img, q), max_tokens=16, temperature=0.0, **kv)
        r = c.chat.completions.create(model="demo", messages=messages(img, q), max_tokens=16, temperature=0,
                                      extra_body=kv)
        assert r.choices[0].message.content == want.text
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason == ("length" if want.stats.stop_reason == "length" else "stop")
        assert r.usage.prompt_tokens == want.stats.n_prompt
        assert r.usage.completion_tokens == len(want.tokens)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_streaming(server, reference):
    img, q = scenes()[2]
    want = reference.chat(messages(img, q), max_tokens=16, temperature=0.0)
    c = server.client()
    stream = c.chat.completions.create(model="demo", messages=messages(img, q), max_tokens=16, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == want.text
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens == len(want.tokens)


def test_completions_and_models(server, reference):
    c = server.client()
    r = c.completions.create(model="demo", prompt="USER: Hello ASSISTANT:", max_tokens=5, temperature=0)
    want = reference.generate(prompt="USER: Hello ASSISTANT:", max_tokens=5, chat_template="none")
    assert r.choices[0].text == want.text
    ms = c.models.list()
    assert [m.id for m in ms.data] == ["aircache-demo"]


def test_sixteen_clients(server, reference):
    """16 concurrent clients x 5 requests: each answer equals the request alone; none lost or mixed."""
    sc = scenes()
    want = {i: reference.chat(messages(*sc[i]), max_tokens=10, temperature=0.0).text for i in range(len(sc))}
    results, errors = {}, []

    def client(k):
        c = server.client()
        try:
            for j in range(5):
                i = (k + j) % len(sc)
                if (k + j) % 2:
                    s = c.chat.completions.create(model="demo", messages=messages(*sc[i]), max_tokens=10,
                                                  temperature=0, stream=True)
                    text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
                else:
                    text = c.chat.completions.create(model="demo", messages=messages(*sc[i]), max_tokens=10,
                                                     temperature=0).choices[0].message.content
                results[(k, j)] = (i, text)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    before = server.metrics()["requests_finished"]
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert len(results) == 80
    for i, text in results.values():
        assert text == want[i]
    assert server.metrics()["requests_finished"] - before == 80


def test_disconnect_frees_the_slot(server):
    """A client that goes away mid-stream: its request is cancelled and its slot freed."""
    before = server.metrics()["requests_cancelled"]
    body = {"model": "demo", "prompt": "a b c d e f g h", "max_tokens": N_CTX - 32, "temperature": 1.5, "seed": 3,
            "stream": True}
    req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    r = urllib.request.urlopen(req, timeout=60)
    first = r.readline()
    assert first.startswith(b"data: ")
    r.close()  # gone
    for _ in range(400):  # the request would run ~700 tokens (no end token at this temperature)
        m = server.metrics()
        if m["requests_cancelled"] > before and m["slots_busy"] == 0:
            break
        time.sleep(0.025)
    m = server.metrics()
    assert m["requests_cancelled"] == before + 1
    assert m["slots_busy"] == 0


def test_bad_requests(server, tmp_path):
    img, q = scenes()[0]
    ok = {"model": "demo", "messages": messages(img, q), "max_tokens": 4, "temperature": 0}
    cases = [
        (dict(data=b"{not json"), 400, "not valid JSON"),
        (dict(body=[1, 2]), 400, "JSON object"),
        (dict(body={"model": "demo"}), 400, "messages"),
        (dict(body={**ok, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}]}), 400, "invalid base64"),
        (dict(body={**ok, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"nope").decode()}},
            {"type": "text", "text": "x"}]}]}), 400, "PNG or JPEG"),
        (dict(body={**ok, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(img)}}] * 9}]}), 400, "too many images"),
        (dict(body={**ok, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}), 400, "file://"),
        (dict(body={**ok, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}), 400, "http"),
        (dict(body={**ok, "max_tokens": 10 ** 6}), 400, "exceeds the context"),
        (dict(body={**ok, "max_tokens": 0}), 400, "max_tokens"),
        (dict(body={**ok, "n": 2}), 400, "'n'"),
        (dict(body={**ok, "tools": [{"type": "function"}]}), 400, "'tools'"),
        (dict(body={**ok, "logprobs": True}), 400, "'logprobs'"),
        (dict(body={**ok, "temperature": "hot"}), 400, "temperature"),
        (dict(body={**ok, "kv_policy": "bogus"}), 400, "unknown KV policy"),
        (dict(body={**ok, "kv_policy": "aircache", "kv_budget": 2}), 400, "kv_budget"),
        (dict(body={**ok, "messages": [{"role": "tool", "content": "x"}]}), 400, "role"),
        (dict(body={**ok, "messages": [{"role": "user", "content": "word " * 2000}]}), 400, "context"),
    ]
    for kw, status, match in cases:
        st, body = server.raw("POST", "/v1/chat/completions", **kw)
        assert st == status, (kw.get("body", kw.get("data")), st, body)
        assert set(body) == {"error"} and match in body["error"]["message"], (match, body)
        assert body["error"]["type"] == "invalid_request_error"
    st, body = server.raw("POST", "/v1/completions", body={"prompt": ["a", "b"]})
    assert st == 400 and "prompt" in body["error"]["message"]
    st, body = server.raw("GET", "/v1/nothing")
    assert st == 404 and "error" in body
    # unknown fields are ignored, as OpenAI clients expect; the server still answers
    st, body = server.raw("POST", "/v1/chat/completions", body={**ok, "user": "x", "some_future_field": 1})
    assert st == 200 and body["choices"][0]["message"]["content"]


def test_health_and_metrics(server):
    st, body = server.raw("GET", "/health")
    assert st == 200 and body == {"status": "ok"}
    st, text = server.raw("GET", "/metrics")
    assert st == 200
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["aircache_requests_finished_total"] >= 1
    assert samples["aircache_n_parallel"] == 4
    assert 'aircache_time_to_first_token_seconds_bucket{le="+Inf"}' in samples
    assert samples["aircache_time_to_first_token_seconds_count"] == \
        samples['aircache_time_to_first_token_seconds_bucket{le="+Inf"}']


def test_api_key_and_queue_full():
    s = Running(parallel=1, queue_size=0, api_key="sekrit")
    try:
        img, q = scenes()[0]
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").chat.completions.create(model="demo", messages=messages(img, q), max_tokens=2)
        st, body = s.raw("POST", "/v1/chat/completions", body={"messages": messages(img, q)})
        assert st == 401 and body["error"]["code"] == "invalid_api_key"
        st, _ = s.raw("GET", "/health")
        assert st == 200
        ok = s.client("sekrit").chat.completions.create(model="demo", messages=messages(img, q), max_tokens=3,
                                                         temperature=0)
        assert ok.choices[0].message.content
        # one slot, no queue: a second request while the first runs is a 429
        hdr = {"Authorization": "Bearer sekrit"}
        body = {"messages": messages(img, q), "max_tokens": 8, "temperature": 0}
        statuses = []

        def one():
            statuses.append(s.raw("POST", "/v1/chat/completions", body=body, headers=hdr)[0])

        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert 429 in statuses and 200 in statuses, statuses
        assert set(statuses) <= {200, 429}
        assert s.metrics()["requests_rejected"] >= 1
    finally:
        s.stop()


def test_block_typed_cache_slots():
    """-ctk q8_0 -ctv q4_0: the slots' caches take the block types, and answers equal Model.chat's
    with the same cache types (the metrics' allocation per slot is the block sizes' share)."""
    s = Running(parallel=2, queue_size=4, kv_type_k="q8_0", kv_type_v="q4_0")
    try:
        assert s.state.model.kv_type == "q8_0/q4_0"
        text, mm = ac.demo_model_paths()
        with ac.Model(text, mmproj=mm, n_ctx=N_CTX, n_batch=64, kv_type_k="q8_0", kv_type_v="q4_0") as ref:
            for i, (img, q) in enumerate(scenes()[:2]):
                kv = dict(kv_policy="mosaic", kv_budget=0.1) if i else {}
                want = ref.chat(messages(img, q), max_tokens=16, temperature=0.0, **kv)
                r = s.client().chat.completions.create(model="demo", messages=messages(img, q), max_tokens=16,
                                                       temperature=0, extra_body=kv)
                assert r.choices[0].message.content == want.text
    finally:
        s.stop()
    p = subprocess.run([sys.executable, "-m", "aircache_cpp.server", "--help"], capture_output=True, text=True)
    assert "-ctk" in p.stdout and "--cache-type-v" in p.stdout and "q8_0" in p.stdout


def test_loading_answers_503():
    cfg = ServerConfig(n_ctx=N_CTX)
    st = _State(cfg)
    from fastapi.testclient import TestClient

    with TestClient(create_app(cfg, st, load=False)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"


def test_cli_bad_model_exits_with_one_line(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF nonsense")
    p = subprocess.run([sys.executable, "-m", "aircache_cpp.server", "-m", str(bad), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("aircache-server: ")
    p = subprocess.run([sys.executable, "-m", "aircache_cpp.server", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--kv-policy" in p.stdout and "--api-key" in p.stdout


def test_media_rules(tmp_path):
    """file:// only under --media-path, http(s) only with --allow-remote-media and within its size
    limit (a local HTTP server on 127.0.0.1 stands for the remote one)."""
    import functools
    import http.server
    import shutil

    img, q = scenes()[0]
    shutil.copy(img, tmp_path / "a.png")
    (tmp_path / "inside").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    web = f"http://127.0.0.1:{httpd.server_address[1]}"
    s = Running(parallel=1, media_path=str(tmp_path / "inside"), allow_remote_media=True, remote_max_bytes=100_000)
    try:
        shutil.copy(img, tmp_path / "inside" / "b.png")

        def ask(url):
            return s.raw("POST", "/v1/chat/completions", body={"max_tokens": 4, "temperature": 0, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": q}]}]})

        want = ask(data_uri(img))[1]["choices"][0]["message"]["content"]
        st, body = ask(f"file://{tmp_path}/inside/b.png")
        assert st == 200 and body["choices"][0]["message"]["content"] == want
        st, body = ask(f"file://{tmp_path}/inside/../a.png")
        assert st == 400 and "--media-path" in body["error"]["message"]
        st, body = ask(f"file://{tmp_path}/inside/missing.png")
        assert st == 400 and "cannot read" in body["error"]["message"]
        st, body = ask(f"{web}/a.png")
        assert st == 200 and body["choices"][0]["message"]["content"] == want
        st, body = ask(f"{web}/nothing.png")
        assert st == 400 and "cannot fetch" in body["error"]["message"]
        (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"\0" * 200_000)
        st, body = ask(f"{web}/big.png")
        assert st == 400 and "larger than" in body["error"]["message"]
    finally:
        s.stop()
        httpd.shutdown()
