"""The REST transport: TF Serving's routes as an ASGI app, and the hardened HTTP/1.1 protocol.

Routes (paths case-insensitive, as TF Serving's):

* ``GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata]``, ``POST ...:predict``,
  ``...:classify`` / ``...:regress`` (answered as TF Serving answers them for predict-only
  models); any other path under ``/v1/`` is a 400 ``Malformed request`` (TF Serving's
  InvalidArgument), paths elsewhere a 404.
* ``POST /v1/admin/reload``: 403 unless the server has an admin token; then it needs
  ``Authorization: Bearer <token>`` (401 otherwise, compared in constant time).
* ``GET /monitoring/prometheus/metrics`` (``serving.metrics``), ``GET /healthz``,
  ``GET /explorer`` (redirect) and ``/explorer/...`` static files when ``serving/explorer/``
  exists.

Every answer is JSON ``{"error": ...}`` on failure, carries ``X-Request-Id`` (the client's, when
it sent a sane one, else a fresh one), and is logged once (method, path, status, duration,
request id, model; never bodies). 5xx answers other than the overload 503 say only
``internal error (request id ...)``; the detail is in the log.

Bodies are read incrementally and refused with 413 as soon as they pass ``max_body_bytes``
(before reading at all when Content-Length already says so), and must arrive within
``body_timeout_s`` (else 408). :class:`GuardedH11Protocol` adds what uvicorn's h11 protocol
lacks: a header timeout, JSON answers (not plain text) for requests h11 itself refuses
(malformed or negative Content-Length, oversized headers), a connection cap answered with a
503 JSON, and a bounded "lingering close", so a client still uploading an over-limit body reads
our 413 instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import re
import socket
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.core import ServingCore
from serving.errors import ServingError, invalid_argument, public_error
from serving.gallery_api import gallery_route
from serving.limits import parse_json_body
from serving.metrics import ACCESS_LOG, CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.model_registry import describe
from serving.tensor_json import DEFAULT_SIGNATURE, dumps, encode_outputs, predict_request_from_doc

LOG = logging.getLogger("serving")
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
METRICS_PATH = "/monitoring/prometheus/metrics"
EXPLORER_DIR = Path(__file__).resolve().parent / "explorer"
# Bodies at least this large are parsed off the event loop.
_PARSE_OFF_LOOP_BYTES = 256 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+))?"
    r"(?:/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?"
    r"(?::(?P<method>[A-Za-z]+))?/?$",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """Transport settings of the REST app.

    Attributes:
        max_body_bytes: larger bodies get 413.
        body_timeout_s: the whole body must arrive within this (else 408).
        admin_token: enables ``POST /v1/admin/reload`` (None: the endpoint answers 403).
        explorer_dir: static files served under ``/explorer/`` when the directory exists.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout_s: float = 30.0
    admin_token: Optional[str] = None
    explorer_dir: Path = EXPLORER_DIR


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class _Answer(Exception):
    """A finished response raised from deep inside a handler."""

    def __init__(self, status: int, doc: dict, headers: Optional[dict] = None, close: bool = False):
        super().__init__(status)
        self.status, self.doc, self.headers, self.close = status, doc, dict(headers or {}), close


class RestApp:
    """The ASGI application; see the module docstring.

    Args:
        core: the transport-neutral serving core.
        config: body limits, admin token, explorer directory.
    """

    def __init__(self, core: ServingCore, config: HttpConfig = HttpConfig()):
        self.core = core
        self.config = config
        self._explorer = None
        if Path(config.explorer_dir).is_dir():
            from starlette.staticfiles import StaticFiles

            self._explorer = StaticFiles(directory=str(config.explorer_dir), html=True)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not served
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        method, path = scope["method"], scope["path"]
        info = {"route": "other", "model": "-"}
        status = 500
        try:
            try:
                if self._explorer is not None and (path.lower() == "/explorer"
                                                   or path.lower().startswith("/explorer/")):
                    status = await self._static(scope, receive, send, request_id, info)
                    return
                status, doc, extra, close = 200, await self._route(
                    scope, headers, receive, request_id, info), {}, False
            except _Answer as answer:
                status, doc, extra, close = answer.status, answer.doc, answer.headers, answer.close
            except ServingError as error:
                error = public_error(error, request_id, LOG)
                status, doc, extra, close = error.http_status, {"error": error.message}, {}, False
            except _ClientGone:
                status = 499  # nginx's "client closed request": nothing is sent
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a real fault: detail to the log, not to the client
                error = public_error(error, request_id, LOG)
                status, doc, extra, close = 500, {"error": error.message}, {}, False
            if isinstance(doc, bytes):  # metrics text
                payload, content_type = doc, METRICS_CONTENT_TYPE
            else:
                payload, content_type = dumps(doc), "application/json"
            response_headers = [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(payload)).encode()),
                                (b"x-request-id", request_id.encode())]
            response_headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
            if close:
                response_headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": payload})
        finally:
            seconds = time.perf_counter() - started
            self.core.metrics.observe_http(method, info["route"], status, seconds)
            if ACCESS_LOG.isEnabledFor(logging.INFO):  # (spares _printable when it is off)
                ACCESS_LOG.info("%s %s HTTP/%s %d %.1fms request_id=%s model=%s",
                                method, _printable(path), scope.get("http_version", "1.1"),
                                status, seconds * 1e3, request_id, info["model"])

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _static(self, scope, receive, send, request_id: str, info: dict) -> int:
        info["route"] = "explorer"
        status = [200]

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = dict(message, headers=list(message.get("headers", []))
                               + [(b"x-request-id", request_id.encode())])
            await send(message)

        if scope["path"].lower() in ("/explorer", "/explorer/") and scope["path"] != "/explorer/":
            from starlette.responses import RedirectResponse

            await RedirectResponse("/explorer/", status_code=307)(scope, receive, send_tagged)
        else:
            from starlette.exceptions import HTTPException

            sub = dict(scope, path=scope["path"][len("/explorer"):] or "/", root_path="/explorer")
            try:
                await self._explorer(sub, receive, send_tagged)
            except HTTPException as error:  # raised before anything is sent: answer as JSON
                raise _Answer(error.status_code, {"error": f"{error.detail}: {_printable(scope['path'])}"},
                              headers=dict(error.headers or {})) from None
        return status[0]

    # ------------------------------------------------------------------ routing

    async def _route(self, scope, headers: dict, receive, request_id: str, info: dict) -> Any:
        verb, path = scope["method"], scope["path"]
        lower = path.lower()
        if lower == "/healthz" and verb == "GET":
            info["route"] = "healthz"
            state = self.core.state
            return {"status": "ready", "models": {
                name: sorted(map(str, model.servables)) for name, model in state.models.items()}}
        if lower == METRICS_PATH and verb == "GET":
            info["route"] = "metrics"
            return self.core.metrics.render()
        if lower == "/v1/admin/reload":
            info["route"] = "reload"
            if verb != "POST":
                raise invalid_argument(f"Malformed request: {verb} {_printable(path)}")
            return await self._reload(scope, headers, receive)
        if not lower.startswith("/v1/"):
            raise ServingError("NOT_FOUND", f"Not found: {_printable(path)}; the API is under /v1/ "
                               f"(TF Serving's REST API), metrics at {METRICS_PATH}.")
        if lower.startswith("/v1/gallery/") and verb == "GET":  # the explorer's gallery (issue 17)
            info["route"] = "gallery"
            return await asyncio.get_running_loop().run_in_executor(
                None, gallery_route, self.core.state, path, scope.get("query_string", b""))
        match = _MODEL_PATH.match(path)
        if match is None or verb not in ("GET", "POST"):
            raise _malformed(verb, path)
        name, label, method = match["name"], match["label"], (match["method"] or "").lower()
        version = _version(match["version"])
        if verb == "GET":
            if method:
                raise _malformed(verb, path)
            if match["metadata"]:
                info["route"] = "metadata"
                servable = self.core.resolve(name, version, label)
                info["model"] = f"{servable.name}/{servable.version}"
                return servable.metadata()
            info["route"] = "status"
            info["model"] = name if name in self.core.state.models else "unknown"
            return self.core.model_status(name, version, label)
        if match["metadata"] or method not in ("predict", "classify", "regress"):
            raise _malformed(verb, path)
        info["route"] = method
        body = await self._read_body(headers, receive)
        doc = await self._parse(body)
        servable = self.core.resolve(name, version, label)
        info["model"] = f"{servable.name}/{servable.version}"
        if method != "predict":
            raise _classify_or_regress_error(servable, method, doc)
        request = predict_request_from_doc(doc)
        prediction = await asyncio.wrap_future(
            self.core.submit_request(name, version, label, request, request_id))
        info["model"] = f"{prediction.model}/{prediction.version}"
        return encode_outputs(prediction.outputs, request.row_format)

    async def _parse(self, body: bytes) -> Any:
        depth = self.core.config.limits.max_json_depth
        if len(body) < _PARSE_OFF_LOOP_BYTES:
            return parse_json_body(body, depth)
        return await asyncio.get_running_loop().run_in_executor(None, parse_json_body, body, depth)

    async def _reload(self, scope, headers: dict, receive) -> dict:
        token = self.config.admin_token
        if not token:
            raise ServingError(
                "PERMISSION_DENIED",
                "The admin API is disabled on this server: start it with --admin_token (or the "
                "DGML_SERVING_ADMIN_TOKEN environment variable) to enable POST /v1/admin/reload, "
                "or reload with SIGHUP / --file_system_poll_wait_seconds.")
        given = headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode("utf-8", "replace"), token.encode("utf-8")):
            raise _Answer(401, {"error": "Unauthenticated: POST /v1/admin/reload needs "
                                         "'Authorization: Bearer <admin token>'."},
                          headers={"WWW-Authenticate": 'Bearer realm="dgml-serving admin"'})
        await self._read_body(headers, receive)  # any body is read (bounded) and ignored
        reloaded = await asyncio.get_running_loop().run_in_executor(None, self.core.reload)
        return {"reloaded": reloaded, "models": describe(self.core.state)}

    async def _read_body(self, headers: dict, receive) -> bytes:
        """The request body, read incrementally and refused once past the limit."""
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(f"Request body of {int(declared)} bytes exceeds", limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise _Answer(408, {"error": f"The request body did not arrive within "
                                             f"{self.config.body_timeout_s:g} s (--body_timeout_seconds)."},
                              close=True) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large("The request body exceeds", limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _malformed(verb: str, path: str) -> ServingError:
    return invalid_argument(f"Malformed request: {verb} {_printable(path)}")


def _too_large(what: str, limit: int) -> _Answer:
    return _Answer(413, {"error": f"{what} the server's limit of {limit} bytes (--max_body_bytes); "
                                  "send fewer or smaller images per request."}, close=True)


def _printable(text: str, limit: int = 256) -> str:
    """``text`` safe for one log line / error message: control characters escaped, truncated."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _version(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    if not text.isdigit():
        raise invalid_argument(f"Version {text!r} is not a non-negative integer.")
    return int(text)


def _classify_or_regress_error(servable, method: str, doc: Any) -> ServingError:
    """What TF Serving answers for Classify/Regress on a predict-only model."""
    if not isinstance(doc, dict):
        return invalid_argument("JSON Value is not an object: the request body must be a JSON object.")
    signature_name = doc.get("signature_name", DEFAULT_SIGNATURE) or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        return invalid_argument("'signature_name' key must be a string value.")
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        return invalid_argument(f"No signature was found with the name: {signature_name}")
    wanted = CLASSIFY_METHOD if method == "classify" else REGRESS_METHOD
    if signature.method_name != wanted:
        kind = "classification" if method == "classify" else "regression"
        return invalid_argument(
            f"Expected {kind} signature method_name to be {wanted}. Was: {signature.method_name}"
        )
    return ServingError("UNIMPLEMENTED", f"{method.capitalize()} is not implemented by this server; "
                        "use :predict.")


# ---------------------------------------------------------------------- the HTTP/1.1 protocol


class _RecordingConnection(h11.Connection):
    """An h11 connection that remembers why it refused the peer's bytes."""

    last_error: Optional[h11.RemoteProtocolError] = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.last_error = error
            raise


class _LingeringTransport:
    """Wraps the socket transport so that closing while the client still sends becomes a
    bounded "lingering close": FIN after our answer, then discard what arrives until the client
    closes, ``linger_bytes`` are read or ``linger_s`` pass. Without it the kernel answers the
    unread upload with a reset and the client never reads our 413."""

    def __init__(self, transport, protocol: "GuardedH11Protocol"):
        self._transport = transport
        self._protocol = protocol
        self.lingering = False
        self.drained = 0
        self._timer = None

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            self._transport.close() if not self.lingering else None
            return
        if self._protocol.peer_may_be_sending() and self._transport.can_write_eof():
            self.linger()
        else:
            self._transport.close()

    def linger(self) -> None:
        self.lingering = True
        self._transport.resume_reading()
        self._transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(
            self._protocol.linger_s, self.abort_linger)

    def abort_linger(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guards listed in the module docstring.

    Configure through :func:`protocol_class` (uvicorn instantiates the class itself).
    """

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    linger_s: float = 10.0
    linger_bytes: int = 256 * 1024 * 1024
    max_body_bytes: int = 16 * 1024 * 1024

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conn = _RecordingConnection(h11.SERVER, self.conn._max_incomplete_event_size)
        self._header_timer: Optional[asyncio.TimerHandle] = None

    def peer_may_be_sending(self) -> bool:
        return self.conn.their_state in (h11.SEND_BODY, h11.ERROR)

    def connection_made(self, transport) -> None:
        # Headers and body leave in separate writes: without TCP_NODELAY, Nagle holds the body
        # until the client's delayed ACK (~40 ms on Linux) on every keep-alive response.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        wrapped = _LingeringTransport(transport, self)
        over = len(self.connections) >= self.max_connections
        super().connection_made(wrapped)
        if over:
            self.logger.warning("connection cap (%d, --max_connections) reached: 503",
                                self.max_connections)
            self._raw_answer(503, "The server has too many open connections "
                                  "(--max_connections); retry with backoff.")
            return
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        if isinstance(self.transport, _LingeringTransport) and self.transport._timer is not None:
            self.transport._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport.lingering:
            transport.drained += len(data)
            if transport.drained > self.linger_bytes:
                transport.abort_linger()
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not transport.is_closing():
            if self._header_timer is None:
                self._arm_header_timer()  # part of a request's head arrived: it must complete
        else:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cancel_header_timer()  # idle keep-alive is uvicorn's --timeout_keep_alive

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
            self._error_answer(408, f"The request headers did not arrive within "
                                    f"{self.header_timeout_s:g} s (--header_timeout_seconds).")
        else:  # nothing sent at all: just close
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        error = self.conn.last_error
        text = _printable(str(error) if error is not None else msg, 200)
        status = getattr(error, "error_status_hint", 400) or 400
        if "content-length" in text.lower():
            status = 413
            text = (f"Invalid Content-Length header ({text}): the body length must be a "
                    f"non-negative integer of at most {self.max_body_bytes} bytes (--max_body_bytes).")
        elif status == 431:
            text = "Request headers too large (at most 16 KiB of request line and headers)."
        elif status == 501:
            text = f"Not implemented: {text} (only chunked transfer encoding is supported)."
        else:
            text = f"Malformed HTTP request: {text}."
        self._error_answer(status, text)

    def _error_answer(self, status: int, text: str) -> None:
        payload = json.dumps({"error": text}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   (b"connection", b"close"), (b"x-request-id", uuid.uuid4().hex.encode())]
        try:
            self.transport.write(self.conn.send(h11.Response(
                status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode())))
            self.transport.write(self.conn.send(h11.Data(data=payload)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 cannot frame an answer now: write it raw
            self._raw_answer(status, text)
            return
        ACCESS_LOG.info("- - - %d 0.0ms request_id=- model=- (%s)", status, text[:120])
        self.transport.close()

    def _raw_answer(self, status: int, text: str) -> None:
        payload = json.dumps({"error": text}).encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + payload)
        if self.transport._transport.can_write_eof() and not self.transport.lingering:
            self.transport.linger()
        else:
            self.transport.close()


def protocol_class(header_timeout_s: float = 10.0, max_connections: int = 1000,
                   linger_s: float = 10.0, linger_bytes: int = 256 * 1024 * 1024,
                   max_body_bytes: int = 16 * 1024 * 1024) -> type:
    """A :class:`GuardedH11Protocol` subclass with these settings (for ``uvicorn.Config(http=...)``)."""
    return type("ConfiguredH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": float(header_timeout_s), "max_connections": int(max_connections),
        "linger_s": float(linger_s), "linger_bytes": int(linger_bytes),
        "max_body_bytes": int(max_body_bytes)})
