"""aircache-server: an OpenAI-compatible HTTP server over :meth:`Model.scheduler` (continuous
batching; every request with its own compressed KV cache).

    aircache-server -m model.gguf --mmproj mmproj.gguf --parallel 4 -c 4096 --kv-policy aircache --kv-budget 0.2

Endpoints: ``POST /v1/chat/completions`` (text and ``image_url`` parts; streaming as server-sent
events), ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``
(Prometheus). Request extensions: ``kv_policy``, ``kv_budget``, ``kv_options``, ``top_k``,
``min_p``, ``repeat_penalty``. Errors use OpenAI's JSON (``{"error": {"message", "type", "param",
"code"}}``): 400 for a bad request, 401 without the API key, 404, 429 when the queue is full, 503
while the model loads. The model logic is the C++ scheduler's; this module only speaks HTTP.
Needs ``pip install "aircache-cpp[server]"`` (FastAPI + uvicorn).
"""


import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Tuple

from . import _core
from .image import _data_uri_bytes
from .model import InputError, Model

QueueFull = _core.QueueFull

# OpenAI request fields this server does not implement: a request that uses them gets a 400 naming
# the field (a default value is accepted).
_UNSUPPORTED = {
    "n": 1, "tools": None, "tool_choice": None, "functions": None, "function_call": None, "logprobs": False,
    "top_logprobs": None, "logit_bias": None, "response_format": None, "audio": None, "modalities": None,
    "prediction": None, "best_of": 1, "echo": False, "suffix": None, "parallel_tool_calls": None,
    "presence_penalty": 0, "frequency_penalty": 0,
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type_: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                              429: "rate_limit_exceeded", 503: "service_unavailable"}.get(status, "server_error")

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ServerConfig:
    def __init__(self, model_path: Optional[str] = None, mmproj: Optional[str] = None, n_ctx: int = 4096,
                 parallel: int = 4, queue_size: int = 64, n_threads: Optional[int] = None, n_batch: int = 512,
                 kv_policy: str = "full", kv_budget: float = 1.0, api_key: Optional[str] = None,
                 media_path: Optional[str] = None, allow_remote_media: bool = False,
                 remote_max_bytes: int = 20 << 20, remote_timeout: float = 10.0, max_images: int = 8,
                 device: str = "auto", model_name: Optional[str] = None, kv_type: str = "f16",
                 kv_type_k: Optional[str] = None, kv_type_v: Optional[str] = None, demo: str = "llava"):
        self.model_path, self.mmproj, self.n_ctx, self.parallel = model_path, mmproj, n_ctx, parallel
        self.queue_size, self.n_threads, self.n_batch = queue_size, n_threads, n_batch
        self.kv_policy, self.kv_budget, self.api_key = kv_policy, kv_budget, api_key
        self.media_path = os.path.realpath(media_path) if media_path else None
        self.allow_remote_media, self.remote_max_bytes, self.remote_timeout = allow_remote_media, remote_max_bytes, remote_timeout
        self.max_images, self.device = max_images, device
        self.kv_type, self.kv_type_k, self.kv_type_v = kv_type, kv_type_k, kv_type_v
        self.demo = demo  # the bundled demo model served without model_path: "llava" or "qwen2vl"
        self.model_name = model_name or (os.path.basename(model_path) if model_path else
                                         "aircache-demo" + ("" if demo == "llava" else "-" + demo))


class _State:
    """The loaded model and its scheduler (loaded in a thread: the server answers 503 until then)."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.model: Optional[Model] = None
        self.sched = None
        self.error: Optional[str] = None
        self.started = time.time()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=cfg.parallel + cfg.queue_size + 8,
                                                          thread_name_prefix="aircache-wait")

    def load(self) -> None:
        try:
            from ._demo import demo_model_paths

            cfg = self.cfg
            text, mm = (cfg.model_path, cfg.mmproj) if cfg.model_path else demo_model_paths(cfg.demo)
            kw = dict(mmproj=mm, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, device=cfg.device, kv_type=cfg.kv_type,
                      kv_type_k=cfg.kv_type_k, kv_type_v=cfg.kv_type_v)
            if cfg.n_threads:
                kw["n_threads"] = cfg.n_threads
            self.model = Model(text, **kw)
            self.sched = self.model.scheduler(n_parallel=cfg.parallel, queue_size=cfg.queue_size)
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            self.error = f"{type(e).__name__}: {e}"

    def ready(self):
        if self.error:
            raise HTTPError(503, f"the model failed to load: {self.error}", code="model_load_failed")
        if self.sched is None:
            raise HTTPError(503, "the model is loading", code="loading")
        return self.sched


# --- request parsing --------------------------------------------------------------------------------

def _field(body: Dict[str, Any], name: str, types, default=None):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise HTTPError(400, f"'{name}' must be {_type_names(types)}, not a boolean", param=name)
    if not isinstance(v, types):
        raise HTTPError(400, f"'{name}' must be {_type_names(types)} (got {type(v).__name__})", param=name)
    return v


def _type_names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in ts))


def _options(body: Dict[str, Any], cfg: ServerConfig, chat: bool) -> Dict[str, Any]:
    for name, default in _UNSUPPORTED.items():
        if name in body and body[name] is not None and body[name] != default:
            raise HTTPError(400, f"'{name}' is not supported by this server" +
                            (f" (only {default!r})" if default is not None else ""), param=name, code="unsupported")
    num = (int, float)
    o: Dict[str, Any] = {}
    mt = _field(body, "max_completion_tokens", int) if chat else None
    mt = mt if mt is not None else _field(body, "max_tokens", int)
    if mt is not None:
        if mt < 1:
            raise HTTPError(400, f"'max_tokens' must be at least 1 (got {mt})", param="max_tokens")
        o["max_tokens"] = mt
    else:
        o["max_tokens"] = -1  # until end-of-generation or the context's end
    for name, key in (("temperature", "temperature"), ("top_p", "top_p"), ("min_p", "min_p"),
                      ("repeat_penalty", "repeat_penalty")):
        v = _field(body, name, num)
        if v is not None:
            o[key] = float(v)
    o.setdefault("temperature", 1.0)  # OpenAI's default
    for name in ("top_k", "seed"):
        v = _field(body, name, int)
        if v is not None:
            o[name] = v
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
            raise HTTPError(400, "'stop' must be a non-empty string or a list of up to 16 of them", param="stop")
        o["stop"] = stop
    # the server's --kv-policy/--kv-budget unless the request names its own (a policy named
    # without a budget takes the server's budget, "full" 1.0)
    o["kv_policy"] = _field(body, "kv_policy", str, cfg.kv_policy)
    budget = _field(body, "kv_budget", num)
    o["kv_budget"] = float(budget) if budget is not None else 1.0 if o["kv_policy"] == "full" else cfg.kv_budget
    kv_options = _field(body, "kv_options", dict)
    if kv_options is not None:
        o["kv_options"] = kv_options
    return o


def _image_bytes(url: str, cfg: ServerConfig) -> bytes:
    if url.startswith("data:"):
        try:
            return _data_uri_bytes(url)
        except InputError as e:
            raise HTTPError(400, str(e), param="image_url") from None
    if url.startswith("file://"):
        if not cfg.media_path:
            raise HTTPError(400, "file:// image URLs are refused (start the server with --media-path DIR)",
                            param="image_url")
        path = os.path.realpath(urllib.parse.unquote(url[len("file://"):]))
        if os.path.commonpath([path, cfg.media_path]) != cfg.media_path:
            raise HTTPError(400, "file:// image URLs must be under --media-path", param="image_url")
        try:
            with open(path, "rb") as f:
                raw = f.read(cfg.remote_max_bytes + 1)
        except OSError as e:
            raise HTTPError(400, f"cannot read the image file: {e.strerror}", param="image_url") from None
        if len(raw) > cfg.remote_max_bytes:
            raise HTTPError(400, f"the image file is larger than {cfg.remote_max_bytes} bytes", param="image_url")
        return raw
    if url.startswith(("http://", "https://")):
        if not cfg.allow_remote_media:
            raise HTTPError(400, "http(s) image URLs are refused (start the server with --allow-remote-media)",
                            param="image_url")
        try:
            with urllib.request.urlopen(url, timeout=cfg.remote_timeout) as r:  # noqa: S310 - opted in
                raw = r.read(cfg.remote_max_bytes + 1)
        except Exception as e:  # noqa: BLE001 - any fetch failure is the client's URL
            raise HTTPError(400, f"cannot fetch the image URL: {e}", param="image_url") from None
        if len(raw) > cfg.remote_max_bytes:
            raise HTTPError(400, f"the image at the URL is larger than {cfg.remote_max_bytes} bytes", param="image_url")
        return raw
    raise HTTPError(400, "image_url must be a data: URL (or file:// with --media-path, http(s) with "
                         "--allow-remote-media)", param="image_url")


def _messages(body: Dict[str, Any], cfg: ServerConfig) -> List[Dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise HTTPError(400, "'messages' must be a non-empty list", param="messages")
    out, n_images = [], 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise HTTPError(400, f"messages[{i}] must be an object", param="messages")
        role, content = m.get("role"), m.get("content")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise HTTPError(400, f"messages[{i}].role {role!r} is not supported (system, developer, user, assistant)",
                            param="messages")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise HTTPError(400, f"messages[{i}].content must be a string or a list of parts", param="messages")
        parts = []
        for j, p in enumerate(content):
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                parts.append({"type": "text", "text": p["text"]})
            elif kind == "image_url":
                iu = p.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu if isinstance(iu, str) else None
                if not isinstance(url, str):
                    raise HTTPError(400, f"messages[{i}].content[{j}]: an image_url part needs {{'url': ...}}",
                                    param="messages")
                n_images += 1
                if n_images > cfg.max_images:
                    raise HTTPError(400, f"too many images (at most {cfg.max_images} per request)", param="messages")
                parts.append({"type": "image", "image": _image_bytes(url, cfg)})
            else:
                raise HTTPError(400, f"messages[{i}].content[{j}]: unsupported part (text and image_url parts)",
                                param="messages")
        out.append({"role": role, "content": parts})
    return out


def _finish_reason(stop_reason: str) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}.get(stop_reason, "stop")


# --- Prometheus text ---------------------------------------------------------------------------

def prometheus(m: Dict[str, Any], model_name: str) -> str:
    lines = []

    def metric(name, kind, help_, value, labels=""):
        lines.append(f"# HELP aircache_{name} {help_}")
        lines.append(f"# TYPE aircache_{name} {kind}")
        lines.append(f"aircache_{name}{labels} {value}")

    counters = [("requests_submitted", "requests accepted"), ("requests_finished", "requests completed"),
                ("requests_failed", "requests that ended with an error"),
                ("requests_cancelled", "requests cancelled (client gone or stopped)"),
                ("requests_rejected", "requests refused: queue full"), ("prompt_tokens", "prompt positions prefilled"),
                ("generated_tokens", "tokens generated"), ("decode_steps", "batched decode steps"),
                ("prefill_chunks", "prefill chunks run")]
    for k, h in counters:
        metric(f"{k}_total", "counter", h, m[k])
    gauges = [("queue_depth", "requests waiting for a slot"), ("slots_busy", "slots holding a request"),
              ("n_parallel", "slots"), ("kv_bytes_in_use", "KV-cache bytes the slots hold now"),
              ("kv_capacity_bytes", "KV-cache bytes allocated for all slots")]
    for k, h in gauges:
        metric(k, "gauge", h, m[k])
    metric("kv_bytes_before_compaction_total", "counter", "prompt KV bytes before compression (compressed requests)",
           m["kv_bytes_before_compaction"])
    metric("kv_bytes_after_compaction_total", "counter", "prompt KV bytes after compression (compressed requests)",
           m["kv_bytes_after_compaction"])
    for k, h in (("time_to_first_token_seconds", "submission to first token"),
                 ("time_per_output_token_seconds", "mean time between tokens per request"),
                 ("request_duration_seconds", "submission to end"), ("queue_wait_seconds", "time in the queue")):
        hist = m[k]
        lines.append(f"# HELP aircache_{k} {h}")
        lines.append(f"# TYPE aircache_{k} histogram")
        cum = 0
        for b, c in zip(list(hist["bounds"]) + ["+Inf"], hist["counts"]):
            cum += c
            lines.append(f'aircache_{k}_bucket{{le="{b}"}} {cum}')
        lines.append(f"aircache_{k}_sum {hist['sum']}")
        lines.append(f"aircache_{k}_count {hist['count']}")
    lines.append(f'aircache_model_info{{model="{model_name}"}} 1')
    return "\n".join(lines) + "\n"


# --- the app -----------------------------------------------------------------------------------

def create_app(cfg: ServerConfig, state: Optional[_State] = None, load: bool = True):
    """The FastAPI application (tests and embedders call this; ``main`` runs it with uvicorn)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("aircache-server needs FastAPI and uvicorn: pip install 'aircache-cpp[server]'") from e

    st = state or _State(cfg)
    app = FastAPI(title="aircache-server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.aircache = st
    if load and st.sched is None and st.error is None:
        threading.Thread(target=st.load, name="aircache-load", daemon=True).start()

    @app.exception_handler(HTTPError)
    async def _http_error(_req, e: HTTPError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(_req, e):
        return JSONResponse(HTTPError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_req, e):  # the server survives whatever a request does
        return JSONResponse(HTTPError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    def check_key(request) -> None:
        if cfg.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {cfg.api_key}":
            raise HTTPError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")

    async def json_body(request) -> Dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return body

    def submit(sched, build):
        try:
            return build()
        except QueueFull as e:
            raise HTTPError(429, str(e), code="queue_full") from None
        except HTTPError:
            raise
        except (_core.InputError, _core.FormatError, _core.UnsupportedError) as e:
            raise HTTPError(400, str(e)) from None
        except OSError as e:
            raise HTTPError(400, f"cannot read an image: {e}") from None

    async def respond(request, req, kind: str, created: int, rid: str, stream: bool, include_usage: bool):
        loop = asyncio.get_running_loop()
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def chunk(delta: Optional[str], finish: Optional[str], first: bool = False, usage=None):
            if kind == "chat":
                d = {} if delta is None else {"content": delta}
                if first:
                    d = {"role": "assistant", "content": ""}
                choice = {"index": 0, "delta": d, "finish_reason": finish}
                c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": cfg.model_name,
                     "choices": [choice] if usage is None else []}
            else:
                c = {"id": rid, "object": "text_completion", "created": created, "model": cfg.model_name,
                     "choices": [{"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}]
                     if usage is None else []}
            if usage is not None:
                c["usage"] = usage
            return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

        def usage_of(res):
            return {"prompt_tokens": res.stats.n_prompt, "completion_tokens": len(res.tokens),
                    "total_tokens": res.stats.n_prompt + len(res.tokens)}

        if not stream:
            try:
                res = await loop.run_in_executor(st.pool, req.result)
            except (_core.InputError, _core.FormatError, _core.UnsupportedError) as e:
                raise HTTPError(400, str(e)) from None
            finally:
                if not req.done:
                    req.cancel()
            fin = _finish_reason(res.stats.stop_reason)
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": res.text}, "finish_reason": fin,
                          "logprobs": None}
            else:
                choice = {"index": 0, "text": res.text, "finish_reason": fin, "logprobs": None}
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": cfg.model_name,
                                 "choices": [choice], "usage": usage_of(res),
                                 "aircache": {"kv_policy": res.stats.kv_policy, "kv_budget": res.stats.kv_budget,
                                              "kv_bytes_before": res.stats.kv_bytes_before,
                                              "kv_bytes_after": res.stats.kv_bytes_after}})

        core = req._core

        async def events():
            try:
                if kind == "chat":
                    yield chunk(None, None, first=True)
                while True:
                    try:
                        piece = await loop.run_in_executor(st.pool, core.next, 0.25)
                    except (_core.InputError, _core.FormatError, _core.UnsupportedError) as e:
                        err = HTTPError(400, str(e)).body()
                        yield f"data: {json.dumps(err)}\n\n"
                        break
                    if piece is None:
                        res = req.result()
                        yield chunk(None, _finish_reason(res.stats.stop_reason))
                        if include_usage:
                            yield chunk(None, None, usage=usage_of(res))
                        break
                    if piece:
                        yield chunk(piece, None)
                    elif await request.is_disconnected():
                        break
                yield "data: [DONE]\n\n"
            finally:
                if not req.done:
                    req.cancel()  # the client went away: its slot is freed at the next step

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        sched = st.ready()
        body = await json_body(request)
        stream = bool(_field(body, "stream", bool, False))
        so = _field(body, "stream_options", dict, {}) or {}
        opts = _options(body, cfg, chat=True)
        loop = asyncio.get_running_loop()
        # image fetching and decoding off the event loop
        msgs = await loop.run_in_executor(st.pool, _messages, body, cfg)
        req = await loop.run_in_executor(
            st.pool, lambda: submit(sched, lambda: sched.submit_chat(msgs, strict_max_tokens=True, **opts)))
        return await respond(request, req, "chat", int(time.time()), f"chatcmpl-{uuid.uuid4().hex}", stream,
                             bool(so.get("include_usage")))

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request)
        sched = st.ready()
        body = await json_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise HTTPError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
        stream = bool(_field(body, "stream", bool, False))
        so = _field(body, "stream_options", dict, {}) or {}
        opts = _options(body, cfg, chat=False)
        req = await asyncio.get_running_loop().run_in_executor(st.pool, lambda: submit(
            sched, lambda: sched.submit(prompt=prompt, chat_template="none", strict_max_tokens=True, **opts)))
        return await respond(request, req, "text", int(time.time()), f"cmpl-{uuid.uuid4().hex}", stream,
                             bool(so.get("include_usage")))

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": int(st.started),
                                            "owned_by": "aircache.cpp"}]}

    @app.get("/health")
    async def health():
        if st.error:
            return JSONResponse({"status": "error", "error": st.error}, status_code=503)
        if st.sched is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request):
        check_key(request)
        sched = st.ready()
        return PlainTextResponse(prometheus(sched.metrics(), cfg.model_name),
                                 media_type="text/plain; version=0.0.4")

    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aircache-server",
                                description="OpenAI-compatible server with continuous batching over compressed KV caches")
    p.add_argument("-m", "--model", help="text model GGUF (default: the bundled demo model)")
    p.add_argument("--mmproj", help="vision projector GGUF")
    p.add_argument("--demo", choices=("llava", "qwen2vl"), default=None,
                   help="the bundled demo model served without -m: llava (default) or qwen2vl")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--parallel", "-np", type=int, default=4, help="slots: requests decoded together (default 4)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context per slot, in positions (default 4096)")
    p.add_argument("--queue-size", type=int, default=64, help="requests waiting for a slot; beyond: 429 (default 64)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="prompt positions per forward pass (default 512)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--kv-type", default="f16", help="KV cache storage: f16 (default), f32, q8_0, q4_0 (CPU only)")
    p.add_argument("-ctk", "--cache-type-k", help="the keys' KV cache type alone (default: --kv-type)")
    p.add_argument("-ctv", "--cache-type-v", help="the values' KV cache type alone (default: --kv-type)")
    p.add_argument("--kv-policy", default="full", help="default KV policy of requests without one (default full)")
    p.add_argument("--kv-budget", type=float, default=1.0, help="default KV budget in (0, 1] (default 1.0)")
    p.add_argument("--api-key", default=os.environ.get("AIRCACHE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $AIRCACHE_API_KEY; none: open)")
    p.add_argument("--media-path", help="directory file:// image URLs may read from (default: file:// refused)")
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image URLs (size and time limited)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--alias", help="model name reported by /v1/models (default: the file name)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("aircache-server: needs FastAPI and uvicorn: pip install 'aircache-cpp[server]'", file=sys.stderr)
        return 1
    if args.demo and args.model:
        print("aircache-server: error: --demo and -m exclude each other", file=sys.stderr)
        return 2
    if not (0 < args.port < 65536):
        print(f"aircache-server: error: --port {args.port} is not a port", file=sys.stderr)
        return 2
    cfg = ServerConfig(args.model, args.mmproj, args.ctx_size, args.parallel, args.queue_size, args.threads,
                       args.batch_size, args.kv_policy, args.kv_budget, args.api_key, args.media_path,
                       args.allow_remote_media, max_images=args.max_images, device=args.device, model_name=args.alias,
                       kv_type=args.kv_type, kv_type_k=args.cache_type_k, kv_type_v=args.cache_type_v,
                       demo=args.demo or "llava")
    st = _State(cfg)
    app = create_app(cfg, st, load=False)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))

    def load() -> None:  # while it runs the server answers 503; a failure stops it
        st.load()
        if st.error:
            server.should_exit = True
        else:
            print(f"aircache-server: {cfg.model_name} on http://{args.host}:{args.port} ({args.parallel} slots, "
                  f"context {args.ctx_size} each)", file=sys.stderr, flush=True)

    threading.Thread(target=load, name="aircache-load", daemon=True).start()
    server.run()
    if st.sched is not None:
        st.sched.close()
    if st.error:
        print(f"aircache-server: {st.error}", file=sys.stderr)
        return 1
    if not server.started:
        print(f"aircache-server: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
