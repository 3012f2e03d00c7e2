"""Compatibility name: the REST transport lives in :mod:`serving.http_app` (ASGI app on uvicorn),
the transport-neutral serving core in :mod:`serving.core`."""

from serving.http_app import HttpConfig, RestApp  # noqa: F401
from serving.limits import DEFAULT_MAX_BODY_BYTES  # noqa: F401
