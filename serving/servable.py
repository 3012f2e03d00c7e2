"""The servable: one version of one model, as the REST layer sees it.

A servable describes itself with SignatureDef protos and runs a named signature on decoded input
arrays. Everything TF Serving-specific about requests and responses (row vs columnar, b64,
metadata JSON) lives once in this base class, so the SavedModel embedder and the retrieval model
answer alike.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

import numpy as np

from serving.errors import failed_precondition
from serving.signature_defs import input_specs, signature_def_map_json
from serving.tensor_json import PredictRequest, decode_inputs, encode_outputs


class Servable(abc.ABC):
    """Base class of everything the server serves.

    Args:
        name: the model name in URLs.
        version: the integer version in URLs and status answers.

    Subclasses provide ``signature_defs`` and ``run``.
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
        return tuple(name for name, spec in input_specs(signature).items()
                     if spec.is_string and name.endswith("image_bytes"))

    def signature(self, signature_name: str):
        signature = self.signature_defs.get(signature_name)
        if signature is None or signature_name.startswith("__"):
            raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
        return signature

    def predict(self, request: PredictRequest) -> dict:
        """Answers a parsed ``:predict`` request with the TF Serving response body."""
        specs = input_specs(self.signature(request.signature_name))
        inputs = decode_inputs(request, specs)
        outputs = self.run(request.signature_name, inputs, request.options)
        return encode_outputs(outputs, request.row_format)

    def metadata(self) -> dict:
        """The ``GET .../metadata`` body."""
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": signature_def_map_json(self.signature_defs)},
        }
