"""The servable: one version of one model, as the REST layer sees it.

A servable describes itself with SignatureDef protos and runs a named signature on decoded input
arrays. Everything TF Serving-specific about requests and responses (row vs columnar, b64,
metadata JSON) lives once in this base class, so the SavedModel embedder and the retrieval model
answer alike.
"""

from __future__ import annotations

import abc
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from serving.errors import failed_precondition
from serving.signature_defs import input_specs as signature_input_specs, signature_def_map_json
from serving.tensor_json import InputSpec, PredictRequest, decode_inputs, encode_outputs


class Servable(abc.ABC):
    """Base class of everything the server serves.

    Args:
        name: the model name in URLs.
        version: the integer version in URLs and status answers.

    Subclasses provide ``signature_defs`` and ``run``. A servable is one immutable version: what
    is derived from a signature (its input specs, its image inputs) is computed once per
    servable object and signature (a reload to a new version builds a new servable, so it
    starts with nothing cached).
    """

    def __init__(self, name: str, version: int):
        self.name = name
        self.version = int(version)

    @property
    @abc.abstractmethod
    def signature_defs(self) -> Mapping[str, Any]:
        """``{signature_name: SignatureDef}`` as the metadata endpoint reports them."""

    @abc.abstractmethod
    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], options: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Runs a signature on decoded inputs; ``options`` are the request's extra keys."""

    def image_inputs(self, signature_name: str) -> tuple[str, ...]:
        """Inputs of ``signature_name`` that hold encoded images (checked from their headers by
        ``serving.image_guard`` before any model call): DT_STRING inputs named ``*image_bytes``."""
        signature = self.signature_defs.get(signature_name)
        if signature is None:
            return ()
        return self._derived(signature_name, signature)[1]

    def signature(self, signature_name: str):
        signature = self.signature_defs.get(signature_name)
        if signature is None or signature_name.startswith("__"):
            raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
        return signature

    def input_specs(self, signature_name: str) -> Mapping[str, InputSpec]:
        """``{input_name: InputSpec}`` of a served signature (read-only, computed once).

        Raises:
            ServingError: FAILED_PRECONDITION when the signature is not served (as
                :meth:`signature`).
        """
        return self._derived(signature_name, self.signature(signature_name))[0]

    def _derived(self, signature_name: str, signature) -> tuple:
        """(input specs, image input names) of ``signature``, cached on this servable.

        The cache entry remembers the SignatureDef object it was computed from and is used only
        while ``signature_defs`` still holds that very object.
        """
        cache = self.__dict__.setdefault("_signature_cache", {})
        entry = cache.get(signature_name)
        if entry is None or entry[0] is not signature:
            specs = MappingProxyType(signature_input_specs(signature))
            images = tuple(name for name, spec in specs.items()
                           if spec.is_string and name.endswith("image_bytes"))
            entry = cache[signature_name] = (signature, specs, images)
        return entry[1], entry[2]

    def predict(self, request: PredictRequest) -> dict:
        """Answers a parsed ``:predict`` request with the TF Serving response body."""
        specs = self.input_specs(request.signature_name)
        inputs = decode_inputs(request, specs)
        outputs = self.run(request.signature_name, inputs, request.options)
        return encode_outputs(outputs, request.row_format)

    def metadata(self) -> dict:
        """The ``GET .../metadata`` body."""
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": signature_def_map_json(self.signature_defs)},
        }
