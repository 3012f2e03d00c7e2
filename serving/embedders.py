"""Where the retrieval model gets query embeddings: a local SavedModel or a remote TF Serving.

Both speak the exported embedder's ``serving_default`` signature (input ``image_bytes``, outputs
``embedding``, ``group_embeddings`` and, for attentive heads, ``attention``), so the retrieval
model is written once against :class:`Embedder`.
"""

from __future__ import annotations

import abc
import base64
import json
import urllib.error
import urllib.request
from typing import Any, Mapping

import numpy as np

from dgml_tf.export import output_names as names
from serving.errors import ServingError
from serving.saved_model_servable import SavedModelServable
from serving.signature_defs import signature_def_map_from_json

_CODE_BY_HTTP_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
                        429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
                        504: "DEADLINE_EXCEEDED"}


class Embedder(abc.ABC):
    """Embeds encoded images. ``version`` is the embedder version the vectors come from."""

    version: int

    @property
    @abc.abstractmethod
    def image_signature(self):
        """The embedder's ``serving_default`` SignatureDef (describes output shapes)."""

    @abc.abstractmethod
    def embed_images(self, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        """``image_bytes`` (N,) object array -> ``{"embedding": (N, D), ...}``."""

    @property
    def embedding_dim(self) -> int:
        return int(self.image_signature.outputs[names.EMBEDDING].tensor_shape.dim[-1].size)

    @property
    def has_attention(self) -> bool:
        return names.ATTENTION in self.image_signature.outputs


class LocalEmbedder(Embedder):
    """Runs a loaded :class:`SavedModelServable` in process.

    Args:
        servable: the embedder version to run.
    """

    def __init__(self, servable: SavedModelServable):
        self.servable = servable
        self.version = servable.version

    @property
    def image_signature(self):
        return self.servable.signature(names.SERVING_SIGNATURE)

    def embed_images(self, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        return self.servable.run(names.SERVING_SIGNATURE, {names.IMAGE_BYTES_INPUT: image_bytes}, {})


class RemoteEmbedder(Embedder):
    """Gets embeddings from TF Serving's REST API (or this server) at ``model_url``.

    Args:
        model_url: ``http://host:8501/v1/models/<name>`` (optionally ``/versions/<v>``).
        timeout: seconds per HTTP call.

    The remote version and signature are read once, at construction, so a mismatch with the
    index is found at start-up rather than on the first query.
    """

    def __init__(self, model_url: str, timeout: float = 30.0):
        self.model_url = model_url.rstrip("/")
        self.timeout = timeout
        metadata = self._call("GET", self.model_url + "/metadata")
        self.version = int(metadata["model_spec"]["version"])
        self._signatures = signature_def_map_from_json(metadata["metadata"]["signature_def"])
        if names.SERVING_SIGNATURE not in self._signatures:
            raise ValueError(
                f"The embedder at {self.model_url} has no '{names.SERVING_SIGNATURE}' signature; "
                "point --embedder_url at a model exported by dgml_tf.export.export_for_serving."
            )

    @property
    def image_signature(self):
        return self._signatures[names.SERVING_SIGNATURE]

    def embed_images(self, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        instances = [{"b64": base64.b64encode(bytes(b)).decode("ascii")} for b in image_bytes]
        body = json.dumps({"instances": instances}).encode("utf-8")
        answer = self._call("POST", self.model_url + ":predict", body)
        rows = answer["predictions"]
        if rows and not isinstance(rows[0], dict):  # a single-output model answers bare values
            rows = [{names.EMBEDDING: row} for row in rows]
        return {key: np.asarray([row[key] for row in rows], dtype=np.float32) for key in rows[0]}

    def _call(self, method: str, url: str, body: bytes | None = None) -> Mapping[str, Any]:
        request = urllib.request.Request(url, data=body, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            message = _error_message(error)
            code = _CODE_BY_HTTP_STATUS.get(error.code, "INTERNAL")
            raise ServingError(code, f"embedder at {self.model_url}: {message}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ServingError(
                "UNAVAILABLE", f"embedder at {self.model_url} is unreachable: {error}"
            ) from None


def _error_message(error: urllib.error.HTTPError) -> str:
    raw = error.read()
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:500] or f"HTTP {error.code}"
