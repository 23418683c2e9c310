"""The admin HTTP API and dashboard of the manager, and the `/metrics` endpoint of a server.

Starlette applications served by uvicorn on the process's own event loop (`serve_http`), so
that every handler reads and commands the core between two of the driver's inputs, with no
locks. The API listens on loopback unless configured otherwise (`admin_http_host`).

Reads are open to whoever can reach the listener. Mutating endpoints (drain, undrain, handoff,
policy updates) need `Authorization: Bearer <admin token>`: without the header the answer is
401, with a wrong token (compared in constant time) or when the manager has no token configured
it is 403. Every error is a JSON object `{"error": name, "detail": text}` with a 4xx status (500,
logged, for a bug), unknown routes and methods included, and a refused request changes nothing.
A body is a JSON object of at most `BODY_BYTES_MAX` bytes; NaN, Infinity (which Python's json
would read) and nesting too deep to parse are 400, and so is any setting the policy refuses.

Each listener bounds its connections (`HTTPLimits`, from the manager's `admin_http_*` keys):
how many are open at once (503 beyond), how long a request may take to arrive (408), how long a
connection may stay idle, and how long a full write buffer may wait for a client that reads
nothing (dropped, as is an event stream nobody reads); see `forehand.ops._bounded_http`.

Endpoints (JSON unless noted):

    GET  /                                the dashboard (HTML, ES modules under /static/)
    GET  /metrics                         Prometheus text format
    GET  /api/status                      map version and servers (load, risk, parts), and the
                                          cluster peers the manager refused (last of each)
    GET  /api/servers                     the same servers, each with its sparkline history
    GET  /api/servers/{id}/drain          drain progress: parts_moved, parts_total, finished,
                                          parts_waiting (roles no other server can take yet),
                                          primaries_left (parts it still leads; null until
                                          counted), replicas_behind (replica roles kept until
                                          another replica of the part catches up)
    POST /api/servers/{id}/drain          start draining (token)
    POST /api/servers/{id}/undrain        make it ACTIVE again (token)
    GET  /api/map?limit=N                 version, servers, overrides
    GET  /api/sessions?server=ID&limit=N  sessions and where their parts live
    GET  /api/sessions/{session}          one session's placement
    POST /api/sessions/{session}/handoff  {"target": ID or null, "reason": "rebalance"} (token)
    POST /api/rebalance                   {"tolerance": 0.1, "parts_max": 10000}: hand primaries
                                          from servers above their share to those below, and
                                          fill those far below theirs; the primaries even, one
                                          commit of replica roles instead (token)
    GET  /api/history?kind=&server=&reason=&outcome=&after=&limit=   audit records
    GET  /api/replication                 replication lag per part and replica
    GET  /api/policy                      the trigger policy's settings
    PUT  /api/policy                      {"overload_threshold": 0.8, ...} (token)
    GET  /api/events                      server-sent events: snapshot, audit, handoff_started,
                                          drain
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from forehand.core.manager import REBALANCE_PARTS_MAX_DEFAULT, REBALANCE_TOLERANCE_DEFAULT
from forehand.errors import ConfigError
from forehand.ops._bounded_http import HTTPLimits, bounded_protocol
from forehand.ops.audit import AUDIT_KINDS, AUDIT_OUTCOMES, AUDIT_REASONS
from forehand.ops.hub import OpsError, OpsHub, parse_session

__all__ = [
    "ADMIN_TOKEN_ENV",
    "BODY_BYTES_MAX",
    "HTTPLimits",
    "HTTPService",
    "admin_app",
    "load_admin_token",
    "metrics_app",
    "serve_http",
]

_log = logging.getLogger("forehand.ops.http")

ADMIN_TOKEN_ENV = "FOREHAND_ADMIN_TOKEN"
"""Environment variable holding the admin token when no `admin_token_file` is configured."""
BODY_BYTES_MAX = 64 * 1024
"""Largest request body the API reads."""
STREAM_KEEPALIVE_S = 15.0
"""An idle event stream gets a comment line this often, so proxies keep it open."""
TOKEN_BYTES_MIN = 16
"""Shortest admin token accepted."""

_STATIC = resources.files("forehand.ops") / "static"


def load_admin_token(path: Path | None) -> str | None:
    """The admin token: the first line of `path`, else $FOREHAND_ADMIN_TOKEN, else None."""
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            token = lines[0].strip() if lines else ""
        except OSError as error:
            raise ConfigError(f"cannot read admin_token_file {path}: {error}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"admin_token_file {path} is not UTF-8 text: {error}") from error
    else:
        token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < TOKEN_BYTES_MIN:
        source = f"admin_token_file {path}" if path is not None else f"${ADMIN_TOKEN_ENV}"
        raise ConfigError(
            f"the admin token in {source} must be at least {TOKEN_BYTES_MIN} characters, "
            f"got {len(token)} (make one with: openssl rand -hex 32)"
        )
    return token


def _error(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler, *, token: str | None, mutating: bool) -> Handler:
    """`handler` behind the token check (when mutating) and the OpsError-to-JSON mapping."""

    async def endpoint(request: Request) -> Response:
        if mutating:
            refused = _check_token(request, token)
            if refused is not None:
                return refused
        try:
            return await handler(request)
        except OpsError as error:
            return _error(error.status, error.error, error.detail)
        except ClientDisconnect:
            # The client left (or its body came too slowly) mid-body: nobody reads the answer.
            return _error(400, "disconnected", "the client disconnected before its body came")
        except Exception as error:
            # Answered here rather than by Starlette's handler, which re-raises after answering:
            # the connection would close and the error be logged twice.
            return await _internal_error(request, error)

    return endpoint


def _check_token(request: Request, token: str | None) -> Response | None:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not presented.strip():
        return _error(
            401,
            "unauthenticated",
            "this endpoint needs an `Authorization: Bearer <admin token>` header",
            **{"WWW-Authenticate": 'Bearer realm="forehand"'},
        )
    if token is None:
        return _error(403, "forbidden", "this manager has no admin token configured")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return _error(403, "forbidden", "wrong admin token")
    return None


async def _json_body(request: Request, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """The request's JSON object; with `allowed`, a key outside it is refused (400), so that a
    misspelt option is not ignored for its default (a handoff's `taget` moved the parts
    anywhere, a rebalance's `tolerence` ran at the default tolerance)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_BYTES_MAX:
            raise OpsError(413, "body_too_large", f"the body exceeds {BODY_BYTES_MAX} bytes")
    if not body:
        return {}
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except ValueError as error:
        raise OpsError(400, "bad_json", f"the body is not JSON: {error}") from error
    except RecursionError as error:
        raise OpsError(400, "bad_json", "the body nests too deeply") from error
    if not isinstance(value, dict):
        raise OpsError(400, "bad_json", "the body must be a JSON object")
    if allowed is not None:
        unknown = sorted(key for key in value if key not in allowed)
        if unknown:
            raise OpsError(
                400,
                "unknown_key",
                f"unknown key(s) {unknown[:8]}; this endpoint takes {sorted(allowed)}",
            )
    return value


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON and which no setting means (NaN
    # passes every range check, and no answer could carry it back).
    raise ValueError(f"{name} is not a JSON number")


def _int_param(request: Request, name: str, default: int, *, low: int = 0) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise OpsError(400, "bad_parameter", f"{name} must be an integer >= {low}, got {text!r}")
    return value


class _AdminRoutes:
    """The endpoints of `admin_app`, bound to one hub."""

    def __init__(self, hub: OpsHub) -> None:
        self.hub = hub

    async def index(self, request: Request) -> Response:
        with resources.as_file(_STATIC / "index.html") as path:
            return FileResponse(path, media_type="text/html")

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> Response:
        view = self.hub.view
        return JSONResponse(
            {
                "node_id": self.hub.core.node_id,
                "map_version": self.hub.core.map_version,
                "override_count": view.override_count,
                "sampled_us": view.sampled_us,
                "servers": [asdict(server) for server in view.servers],
                "now_ms": self.hub.driver.now_us() // 1000,
                "refused": [asdict(refused) for refused in self.hub.refused.values()],
            }
        )

    async def servers(self, request: Request) -> Response:
        return JSONResponse(self.hub.view.snapshot()["servers"])

    async def drain_progress(self, request: Request) -> Response:
        return JSONResponse(asdict(self.hub.drain_progress(request.path_params["server_id"])))

    async def drain(self, request: Request) -> Response:
        progress = self.hub.drain(request.path_params["server_id"])
        return JSONResponse(asdict(progress), status_code=202)

    async def undrain(self, request: Request) -> Response:
        server_id = request.path_params["server_id"]
        self.hub.undrain(server_id)
        return JSONResponse({"server_id": server_id, "undrained": True})

    async def shard_map(self, request: Request) -> Response:
        return JSONResponse(self.hub.shard_map(limit=_int_param(request, "limit", 100, low=1)))

    async def sessions(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100, low=1)
        server = request.query_params.get("server")
        return JSONResponse(self.hub.sessions(server=server, limit=limit))

    async def session(self, request: Request) -> Response:
        text = request.path_params["session"]
        parts = self.hub.session_parts(parse_session(text))
        if not parts:
            raise OpsError(404, "unknown_session", f"no session {text} in the shard map")
        return JSONResponse({"session_id": text, "parts": parts})

    async def handoff(self, request: Request) -> Response:
        body = await _json_body(request, frozenset({"target", "reason"}))
        target = body.get("target")
        reason = body.get("reason", "rebalance")
        if target is not None and not isinstance(target, str):
            raise OpsError(400, "bad_target", "target must be a server id or null")
        if not isinstance(reason, str):
            raise OpsError(400, "bad_reason", "reason must be a reason code's name")
        queued = self.hub.handoff(request.path_params["session"], target=target, reason=reason)
        return JSONResponse({"queued": queued}, status_code=202)

    async def rebalance(self, request: Request) -> Response:
        body = await _json_body(request, frozenset({"tolerance", "parts_max"}))
        tolerance = body.get("tolerance", REBALANCE_TOLERANCE_DEFAULT)
        parts_max = body.get("parts_max", REBALANCE_PARTS_MAX_DEFAULT)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
            raise OpsError(400, "bad_tolerance", "tolerance must be a number")
        if isinstance(parts_max, bool) or not isinstance(parts_max, int):
            raise OpsError(400, "bad_parts_max", "parts_max must be an integer")
        if not 0 < parts_max < 1 << 63:
            raise OpsError(400, "bad_parts_max", "parts_max must be from 1 to 2**63 - 1")
        queued, replicas = self.hub.rebalance(tolerance=float(tolerance), parts_max=parts_max)
        return JSONResponse({"queued": queued, "replica_roles_queued": replicas}, status_code=202)

    async def history(self, request: Request) -> Response:
        params = request.query_params
        filters = (("kind", AUDIT_KINDS), ("outcome", AUDIT_OUTCOMES), ("reason", AUDIT_REASONS))
        for name, known in filters:
            value = params.get(name)
            if value is not None and value not in known:
                raise OpsError(400, f"bad_{name}", f"{name} must be one of {list(known)}")
        records = self.hub.audit.query(
            kind=params.get("kind"),
            server=params.get("server"),
            reason=params.get("reason"),
            outcome=params.get("outcome"),
            after=_int_param(request, "after", 0),
            limit=min(_int_param(request, "limit", 100, low=1), self.hub.limits.listing_max),
        )
        return JSONResponse([record.to_json() for record in records])

    async def replication(self, request: Request) -> Response:
        return JSONResponse([asdict(lag) for lag in self.hub.view.lags])

    async def policy(self, request: Request) -> Response:
        if self.hub.policy is None:
            raise OpsError(404, "no_policy", "this manager's risk policy has no settings")
        return JSONResponse(self.hub.policy.settings())

    async def update_policy(self, request: Request) -> Response:
        return JSONResponse(self.hub.update_policy(await _json_body(request)))

    async def events(self, request: Request) -> Response:
        queue = self.hub.open_stream()

        async def stream() -> AsyncIterator[str]:
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(queue.get(), STREAM_KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if message is None:
                        return
                    yield f"event: {message['type']}\ndata: {json.dumps(message['data'])}\n\n"
            finally:
                self.hub.close_stream(queue)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def admin_app(hub: OpsHub, *, token: str | None) -> Starlette:
    """The manager's admin API and dashboard over `hub` (see the module docstring)."""
    routes = _AdminRoutes(hub)

    def route(path: str, handler: Handler, method: str = "GET") -> Route:
        mutating = method != "GET"
        return Route(path, _guarded(handler, token=token, mutating=mutating), methods=[method])

    with resources.as_file(_STATIC) as static_dir:
        static = StaticFiles(directory=static_dir)
    return Starlette(
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        routes=[
            route("/", routes.index),
            route("/metrics", routes.metrics),
            route("/api/status", routes.status),
            route("/api/servers", routes.servers),
            route("/api/servers/{server_id}/drain", routes.drain_progress),
            route("/api/servers/{server_id}/drain", routes.drain, "POST"),
            route("/api/servers/{server_id}/undrain", routes.undrain, "POST"),
            route("/api/map", routes.shard_map),
            route("/api/sessions", routes.sessions),
            route("/api/sessions/{session}", routes.session),
            route("/api/sessions/{session}/handoff", routes.handoff, "POST"),
            route("/api/rebalance", routes.rebalance, "POST"),
            route("/api/history", routes.history),
            route("/api/replication", routes.replication),
            route("/api/policy", routes.policy),
            route("/api/policy", routes.update_policy, "PUT"),
            route("/api/events", routes.events),
            Mount("/static", app=static, name="static"),
        ],
    )


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed) as JSON errors."""
    assert isinstance(error, HTTPException)
    name = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return _error(error.status_code, name, str(error.detail))


async def _internal_error(request: Request, error: Exception) -> Response:
    """A bug: logged with its traceback, answered 500 as JSON."""
    _log.error("admin API failed on %s %s", request.method, request.url.path, exc_info=error)
    return _error(500, "internal", f"{type(error).__name__}: the manager logged the details")


def metrics_app(registry: CollectorRegistry) -> Starlette:
    """A server's `/metrics` endpoint."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics)])


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server on the process's loop: the process owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HTTPService:
    """An HTTP listener serving one application on the running loop."""

    def __init__(
        self, server: uvicorn.Server, task: asyncio.Task[None], sock: socket.socket
    ) -> None:
        self._server = server
        self._task = task
        self._socket = sock
        host, port = sock.getsockname()[:2]
        self.host: str = host
        """The bound host."""
        self.port: int = port
        """The bound port."""

    @property
    def url(self) -> str:
        """`http://host:port`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, let open requests finish (bounded), and wait."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._socket.close()


async def serve_http(
    app: Any, *, host: str, port: int, limits: HTTPLimits | None = None
) -> HTTPService:
    """Serve `app` on host:port (0 picks a port) until `close()`, each connection within
    `limits` (the defaults when None); ConfigError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {error}") from error
    config = uvicorn.Config(
        app,
        http=bounded_protocol(limits if limits is not None else HTTPLimits()),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    server = _EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            failure = task.exception()
            raise ConfigError(f"the HTTP server on {host}:{port} did not start: {failure!r}")
        await asyncio.sleep(0.01)
    return HTTPService(server, task, sock)
