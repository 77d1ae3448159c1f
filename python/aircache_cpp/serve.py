"""aircache-server scaled out with Ray Serve: N replicas of the same OpenAI-compatible app (each
replica loads its own model and runs its own C++ scheduler) behind Ray Serve's HTTP proxy, which
spreads the requests over them. Needs ``pip install "aircache-cpp[ray]"``.

On one machine (starts a local Ray instance; Ctrl-C stops it)::

    python -m aircache_cpp.serve --replicas 2 --host 127.0.0.1 --port 8000 -m model.gguf --mmproj mmproj.gguf --parallel 4

On a Ray cluster (``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the others,
the same aircache-cpp install and model paths on every node), the one command, on the head node::

    python -m aircache_cpp.serve --address auto --replicas 4 --replica-cpus 8 --host 0.0.0.0 --port 8000 -m /models/model.gguf --mmproj /models/mmproj.gguf

or, with Ray's own CLI (Serve's HTTP host and port are then ``serve start``'s ``--http-host`` and
``--http-port``)::

    serve run aircache_cpp.serve:app_builder replicas=4 replica_cpus=8 model=/models/model.gguf mmproj=/models/mmproj.gguf

The options are aircache-server's (``-m``, ``--mmproj``, ``--parallel``, ``-c``, ``--kv-policy``,
``--api-key``, ...; for ``serve run`` as ``key=value``) plus ``--replicas`` (default 1),
``--replica-cpus`` (CPUs Ray reserves per replica; default ``--threads``, else 1; a replica runs
that many threads unless ``--threads`` says otherwise), ``--replica-gpus`` (default 0; 1 with
``--device cuda``), ``--max-ongoing-requests`` (requests Serve hands one replica at a time,
default 2 x ``--parallel``; the rest wait in Serve's queue for whichever replica frees first) and
``--address`` (the Ray cluster; default: Ray's, i.e. ``$RAY_ADDRESS``, else a running local
cluster, else a new local instance). Every response carries an ``X-Aircache-Replica`` header
naming the replica that answered. The endpoints, request extensions and errors are
aircache-server's (:mod:`aircache_cpp.server`): this module adds no endpoint logic.
"""

import argparse
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

try:
    import ray
    from ray import serve
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError('aircache_cpp.serve needs Ray Serve: pip install "aircache-cpp[ray]"') from e

from .server import ServerConfig, _State, _parser as _server_parser, create_app

REPLICA_HEADER = "X-Aircache-Replica"
APP_NAME = "aircache"

# This replica's app and id. Every Serve replica is a process of its own (a Ray actor), so one
# module global per process is one per replica; the deployment's constructor sets it through
# _set_replica (Ray ships the deployment class by value, with its own copy of the globals it names;
# a module-level function travels by reference and sets this module's).
_replica: Optional[tuple] = None


def _set_replica(app, rid: str) -> None:
    global _replica
    _replica = (app, rid.encode("latin-1", "replace"))


class _ReplicaApp:
    """The ASGI app handed to ``serve.ingress``: forwards every request (and the lifespan events) to
    this replica's aircache-server app and adds the ``X-Aircache-Replica`` header to its responses.
    (An object, not a function: Serve would call a function as an app builder.)"""

    async def __call__(self, scope, receive, send):
        if _replica is None:  # pragma: no cover - the constructor always runs first
            raise RuntimeError("the aircache replica is not initialised")
        app, rid = _replica
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (REPLICA_HEADER.lower().encode(), rid)]
            await send(message)

        await app(scope, receive, send_with_id)


@serve.deployment(name=APP_NAME)
@serve.ingress(_ReplicaApp())
class AircacheReplica:
    """One replica: loads the model and its scheduler in the constructor (Serve routes to a replica
    once its constructor has returned; a load failure fails the replica with the reason)."""

    def __init__(self, options: Dict[str, Any]):
        cfg = ServerConfig(**options)
        self._state = _State(cfg)
        self._state.load()
        if self._state.error:
            raise RuntimeError(f"aircache replica: the model failed to load: {self._state.error}")
        _set_replica(create_app(cfg, self._state, load=False), str(serve.get_replica_context().replica_tag))

    def __del__(self):
        st = getattr(self, "_state", None)
        if st is not None and st.sched is not None:
            st.sched.close()
            st.sched = None


def build_app(replicas: int = 1, *, replica_cpus: Optional[float] = None, replica_gpus: float = 0,
              max_ongoing_requests: Optional[int] = None, **server_options) -> "serve.Application":
    """The Serve application: ``replicas`` copies of aircache-server's app. ``server_options`` are
    :class:`~aircache_cpp.server.ServerConfig`'s (``model_path=None``: the bundled demo model).
    Run it with ``serve.run(build_app(...), name="aircache", route_prefix="/")``."""
    if int(replicas) < 1:
        raise ValueError(f"replicas must be at least 1 (got {replicas})")
    opts = dict(server_options)
    for k in ("model_path", "mmproj", "media_path"):  # replicas run elsewhere (another cwd, node)
        if opts.get(k):
            opts[k] = os.path.abspath(opts[k])
    if replica_cpus is None:
        replica_cpus = opts.get("n_threads") or 1
    if not opts.get("n_threads") and replica_cpus >= 1:
        opts["n_threads"] = int(replica_cpus)
    cfg = ServerConfig(**opts)  # unknown options fail here, not in every replica
    if max_ongoing_requests is None:
        max_ongoing_requests = cfg.parallel + min(cfg.queue_size, cfg.parallel)
    actor = {"num_cpus": replica_cpus}
    if replica_gpus:
        actor["num_gpus"] = replica_gpus
    return AircacheReplica.options(num_replicas=int(replicas), ray_actor_options=actor,
                                   max_ongoing_requests=int(max_ongoing_requests)).bind(opts)


def _parser() -> argparse.ArgumentParser:
    p = _server_parser()
    p.prog = "python -m aircache_cpp.serve"
    p.description = "aircache-server's OpenAI-compatible app, N replicas behind Ray Serve's HTTP proxy"
    for a in p._actions:
        if a.dest == "threads":
            a.help = "CPU threads per replica (default: --replica-cpus)"
        elif a.dest == "port":
            a.help = "port of Serve's HTTP proxy (default 8080)"
        elif a.dest == "host":
            a.help = "address Serve's HTTP proxy listens on (default 127.0.0.1; 0.0.0.0 for a cluster)"
    p.add_argument("--replicas", type=int, default=1, help="replicas, each with its own model (default 1)")
    p.add_argument("--replica-cpus", type=float, default=None,
                   help="CPUs reserved per replica (default: --threads, else 1)")
    p.add_argument("--replica-gpus", type=float, default=0, help="GPUs reserved per replica (default 0)")
    p.add_argument("--max-ongoing-requests", type=int, default=None,
                   help="requests one replica holds at a time (default 2 x --parallel)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address, e.g. auto (default: $RAY_ADDRESS, a running local cluster, or a new one)")
    return p


def _app_from_args(args: argparse.Namespace) -> "serve.Application":
    return build_app(args.replicas, replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                     max_ongoing_requests=args.max_ongoing_requests, model_path=args.model, mmproj=args.mmproj,
                     n_ctx=args.ctx_size, parallel=args.parallel, queue_size=args.queue_size,
                     n_threads=args.threads, n_batch=args.batch_size, kv_policy=args.kv_policy,
                     kv_budget=args.kv_budget, api_key=args.api_key, media_path=args.media_path,
                     allow_remote_media=args.allow_remote_media, max_images=args.max_images,
                     device=args.device, model_name=args.alias, kv_type=args.kv_type,
                     kv_type_k=args.cache_type_k, kv_type_v=args.cache_type_v)


def app_builder(args: Dict[str, str]) -> "serve.Application":
    """For ``serve run aircache_cpp.serve:app_builder key=value ...``: the keys are this module's
    command-line options (``replicas=4``, ``model=...``, ``ctx_size=2048``, ``allow_remote_media=true``)."""
    p = _parser()
    flags = {a.dest: a for a in p._actions}
    argv: List[str] = []
    for key, value in args.items():
        dest = key.replace("-", "_")
        if dest in ("host", "port"):
            raise ValueError(f"'{key}' is Serve's: start Serve with `serve start --http-host ... --http-port ...`")
        action = flags.get(dest)
        if action is None or not action.option_strings:
            raise ValueError(f"unknown option '{key}' (see python -m aircache_cpp.serve --help)")
        opt = max(action.option_strings, key=len)
        if action.nargs == 0:  # a flag
            if str(value).lower() in ("1", "true", "yes", "on"):
                argv.append(opt)
        else:
            argv += [opt, str(value)]
    return _app_from_args(p.parse_args(argv))


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if not (0 < args.port < 65536):
        print(f"aircache serve: error: --port {args.port} is not a port", file=sys.stderr)
        return 2
    try:
        app = _app_from_args(args)
    except (TypeError, ValueError) as e:
        print(f"aircache serve: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ray.init(address=args.address, log_to_driver=True)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"aircache serve: {args.replicas} replica(s) on http://{args.host}:{args.port}/v1 (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # noqa: BLE001 - a deployment that cannot start: say why
        print(f"aircache serve: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    # run the deployment of aircache_cpp.serve, not of __main__: Ray ships the classes and functions
    # of __main__ by value, and the replicas' copies would not share this module's globals
    from aircache_cpp.serve import main as _main

    sys.exit(_main())
