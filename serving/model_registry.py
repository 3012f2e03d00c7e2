"""The set of servables being served, swapped whole and atomically on reload.

Request handlers read ``registry.state`` once and use that snapshot for the whole request, so a
reload that replaces the embedder and the index together can never pair a new embedder with an
old index inside one request. A reload builds the new snapshot completely (loading models and the
index) before the single reference assignment that publishes it; a failed reload leaves the
serving snapshot untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import Callable, Mapping, Optional

from serving.errors import invalid_argument, not_found
from serving.servable import Servable

LOG = logging.getLogger("serving")
_LABEL_PATTERN = re.compile(r"^[a-zA-Z0-9_]+$")


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """All served versions of one model and its version labels."""

    name: str
    servables: Mapping[int, Servable]
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ServingState:
    """An immutable snapshot of what is served.

    Attributes:
        models: ``{name: ServedModel}``.
        source_key: a digest of the files the snapshot was built from; a reload whose key is
            unchanged is a no-op.
    """

    models: Mapping[str, ServedModel]
    source_key: object = None

    def resolve(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        """The servable a request addresses, with TF Serving's errors for the rest."""
        if version is not None and label is not None:
            raise invalid_argument("Only one of version and label may be set in the model spec.")
        model = self.models.get(name)
        if label is not None:
            if not _LABEL_PATTERN.match(label):
                raise invalid_argument(f"Invalid version label {label!r}: labels are [a-zA-Z0-9_]+.")
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if model is None or not model.servables:
            raise not_found(f"Servable not found for request: {_request_text(name, version)}")
        if version is None:
            return model.servables[max(model.servables)]
        servable = model.servables.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: {_request_text(name, version)}")
        return servable

    def status(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> dict:
        """The ``GET /v1/models/...`` body: every served version, or the one named."""
        model = self.models.get(name)
        if model is None or not model.servables:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None or label is not None:
            try:
                versions = [self.resolve(name, version, label).version]
            except Exception as error:
                if getattr(error, "code", "") == "NOT_FOUND":
                    raise not_found(f"Could not find version {version} of model {name}") from None
                raise
        else:
            versions = sorted(model.servables, reverse=True)
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for v in versions
        ]}


def _request_text(name: str, version: Optional[int]) -> str:
    # ServableRequest::DebugString in TF Serving.
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


class ModelRegistry:
    """Holds the current :class:`ServingState` and replaces it on :meth:`reload`.

    Args:
        build_state: ``build_state(previous_state) -> ServingState`` loads everything (and may
            reuse servables from the previous snapshot); it raises to refuse a reload.
        initial_state: the first snapshot (built by the caller at start-up, so start-up errors
            surface before the port is opened).

    Example:
        >>> registry = ModelRegistry(loader.build, loader.build(None))  # doctest: +SKIP
        >>> registry.state.resolve("dgml").version
    """

    def __init__(self, build_state: Callable[[Optional[ServingState]], ServingState],
                 initial_state: ServingState):
        self._build_state = build_state
        self._state = initial_state
        self._reload_lock = threading.Lock()

    @property
    def state(self) -> ServingState:
        return self._state

    def reload(self) -> bool:
        """Rebuilds the snapshot and publishes it; True if anything changed.

        Reloads are serialised; requests keep being served from the old snapshot while the new
        one loads.
        """
        with self._reload_lock:
            previous = self._state
            new_state = self._build_state(previous)
            if new_state is previous:
                return False
            self._state = new_state  # one reference assignment: atomic for readers
            LOG.info("reloaded: %s", describe(new_state))
            return True


def describe(state: ServingState) -> str:
    return ", ".join(
        f"{name} versions {sorted(model.servables)}" for name, model in sorted(state.models.items())
    )
