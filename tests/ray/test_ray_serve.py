"""aircache_cpp.serve: two replicas of aircache-server behind Ray Serve's HTTP proxy, Ray on loopback
only (no dashboard, no usage stats, 2 CPUs, a 100 MB object store). Both replicas answer, every
answer equals Model.chat's (greedy), streaming passes through the proxy, and each response names
its replica. Not part of ``python -m pytest -q tests``: CI runs it in a step of its own
(``AIRCACHE_RAY_TESTS=1 timeout 300 python -m pytest -q tests/ray``)."""

import os

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray is imported

import base64  # noqa: E402
import concurrent.futures  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import warnings  # noqa: E402

import openai  # noqa: E402
import pytest  # noqa: E402

with warnings.catch_warnings():  # Ray's own config models warn at import (Pydantic deprecations)
    warnings.simplefilter("ignore", DeprecationWarning)
    import ray
    from ray import serve

import aircache_cpp as ac  # noqa: E402
from aircache_cpp.serve import APP_NAME, REPLICA_HEADER, app_builder, build_app  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")
N_CTX = 768
REPLICAS = 2
DEPLOY_TIMEOUT = 150  # seconds for Serve to start both replicas
MAX_TOKENS = 12


def scene(i=0):
    with open(os.path.join(EXAMPLES, "scenes.json")) as f:
        s = json.load(f)[i]
    with open(os.path.join(EXAMPLES, s["image"]), "rb") as f:
        uri = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": s["question"]}]}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference():
    text, mm = ac.demo_model_paths()
    with ac.Model(text, mmproj=mm, n_ctx=N_CTX, n_batch=64, device="cpu") as m:
        yield m.chat(scene(0), max_tokens=MAX_TOKENS, temperature=0.0).text


@pytest.fixture(scope="module")
def url():
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2,
             object_store_memory=100 * 1024 * 1024)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(REPLICAS, replica_cpus=1, n_ctx=N_CTX, n_batch=64, parallel=2, queue_size=8,
                        device="cpu")
        # serve.run waits until every replica is up; a replica that cannot start would make it
        # wait for a long time, so it runs in a thread with a deadline
        done, errors = threading.Event(), []

        def deploy():
            try:
                serve.run(app, name=APP_NAME, route_prefix="/")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
            finally:
                done.set()

        threading.Thread(target=deploy, name="serve-run", daemon=True).start()
        assert done.wait(DEPLOY_TIMEOUT), f"Serve did not start in {DEPLOY_TIMEOUT} s: {serve.status()}"
        assert not errors, errors
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_both_replicas_serve(url, reference):
    st = serve.status().applications[APP_NAME]
    assert st.status == "RUNNING"
    assert st.deployments[APP_NAME].replica_states.get("RUNNING") == REPLICAS

    c = client(url)

    def ask(_):
        raw = c.chat.completions.with_raw_response.create(model="demo", messages=scene(0), max_tokens=MAX_TOKENS,
                                                          temperature=0)
        return raw.headers.get(REPLICA_HEADER), raw.parse().choices[0].message.content

    # more concurrent requests than one replica takes (max_ongoing_requests = 2 x parallel = 4)
    seen, answers = set(), []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(4):
            for replica, text in pool.map(ask, range(8)):
                assert replica, "a response without the replica header"
                seen.add(replica)
                answers.append(text)
            if len(seen) == REPLICAS:
                break
    assert len(seen) == REPLICAS, f"only {seen} answered"
    assert answers and all(a == reference for a in answers), set(answers) | {reference}


def test_streaming_through_the_proxy(url, reference):
    c = client(url)
    with c.chat.completions.with_streaming_response.create(model="demo", messages=scene(0), max_tokens=MAX_TOKENS,
                                                           temperature=0, stream=True) as raw:
        assert raw.headers.get(REPLICA_HEADER)
        text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert text == reference


def test_health_and_models(url):
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
        assert r.headers.get(REPLICA_HEADER)
    assert [m.id for m in client(url).models.list().data] == ["aircache-demo"]
    # an aircache-server error passes through with its status and OpenAI's JSON
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model="demo", messages=[], max_tokens=4)
    assert "'messages' must be a non-empty list" in str(e.value)


def test_app_builder_options():
    """serve run's key=value arguments are the module's options; a wrong one fails at once."""
    assert isinstance(app_builder({"replicas": "2", "ctx_size": "768", "threads": "1", "allow_remote_media": "true"}),
                      serve.Application)
    for bad in ({"no_such_option": "1"}, {"port": "9000"}, {"replicas": "0"}):
        with pytest.raises(ValueError):
            app_builder(bad)
