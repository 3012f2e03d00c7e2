"""A TCP port that is free now, for a server (or its gRPC side) about to be started.

The main job, ``bench/rest_latency.py`` and the tests start ``serving.server`` on such a port.
Another process may take the port between this call and the server's bind; the server then
fails to start with "address already in use" (callers wait for its ready line, never a sleep).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` (bound once to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
