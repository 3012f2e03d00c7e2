"""Runs ``python -m serving.server`` as a real process for the serving tests.

Synchronisation is on what the server reports: its log lines (read as they are written), e.g.
the ``(ready ...)`` line that names the port it bound (``--port=0``) or uvicorn's
``Shutting down``. Timeouts here are failure bounds only, never the way a test waits.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from serving.ports import free_port  # noqa: F401  (the tests take it from here)

REPO = Path(__file__).absolute().parents[1]  # the runfiles tree under Bazel
_READY = re.compile(r" on (http://[0-9.]+:\d+) \(ready")


class ServerProcess:
    """One server process; its merged stdout/stderr is kept in memory and in ``log_path``.

    Args:
        args: flags after ``python -m serving.server`` (``--port=0`` is added).
        log_path: where the log is copied.
        env: extra environment variables.
        ready_timeout: failure bound for start-up (loading TensorFlow and the models).

    Example:
        >>> with ServerProcess(["--model_base_path=/m", "--model_name=dgml"], "/tmp/s.log") as s:  # doctest: +SKIP
        ...     http(s.url + "/v1/models/dgml")
    """

    def __init__(self, args: Sequence[str], log_path, env: Optional[dict] = None,
                 ready_timeout: float = 300.0):
        self.log_path = Path(log_path)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        full_env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--port=0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO),
            text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_for(_READY.pattern, timeout=ready_timeout)
        self.url = _READY.search(line).group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self.lines.append(None)  # EOF marker: the process closed its output
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(line for line in self.lines if line)

    def wait_for(self, pattern: str, timeout: float = 120.0, start: int = 0) -> str:
        """Blocks until a log line (from index ``start`` on) matches ``pattern``; returns it."""
        regex = re.compile(pattern)
        found: list[str] = []

        def seen() -> bool:
            for line in self.lines[start:]:
                if line is None:
                    return True
                if regex.search(line):
                    found.append(line)
                    return True
            return False

        with self._changed:
            if not self._changed.wait_for(seen, timeout=timeout) or not found:
                raise AssertionError(f"the server never logged {pattern!r}; its log:\n{self.log[-4000:]}")
        return found[0]

    def mark(self) -> int:
        """The current end of the log (a ``start`` for :meth:`wait_for`)."""
        with self._changed:
            return len(self.lines)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._reader.join(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def http(url, method="GET", body=None, headers=None, timeout=120):
    """(status, parsed JSON) for one call; ``body`` is a dict (JSON) or raw bytes."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_exchange(port: int, data: bytes, timeout: float = 60.0, shutdown_write: bool = False) -> bytes:
    """Sends raw bytes on a fresh connection and reads until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shutdown_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one raw HTTP/1.1 response with a Content-Length."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(headers.get("content-length", len(rest)))
    return status, headers, json.loads(rest[:length]) if length else {}


def read_response(sock: socket.socket) -> tuple[int, dict, dict]:
    """Reads exactly one response (with Content-Length) from a keep-alive connection."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {buffer!r}")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE).group(1))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    return parse_response(head + b"\r\n\r\n" + rest[:length])
