"""TF Serving's JSON tensor encoding: predict request bodies in, predict responses out.

The rules follow TF Serving's REST API (``tensorflow_serving/util/json_tensor.cc``):

* row format ``{"instances": [...]}``: every named input shares the batch dimension; with one
  input an instance is a bare value, with several an object keyed by input name;
* columnar format ``{"inputs": value | {name: value}}``;
* binary values travel as ``{"b64": "..."}``; outputs whose name ends in ``_bytes`` are sent back
  that way, other string outputs as UTF-8 text;
* a row request is answered with ``{"predictions": ...}``, a columnar one with
  ``{"outputs": ...}``; a single output is sent bare, several as objects keyed by output name.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any, Mapping

import numpy as np

try:  # the serving extra installs it; without it every response goes through json
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

# TF Serving's default signature is the one every export names serving_default.
from dgml_tf.export.output_names import SERVING_SIGNATURE as DEFAULT_SIGNATURE
from serving.errors import invalid_argument
from serving.limits import DEFAULT_MAX_JSON_DEPTH, parse_json_body


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """A parsed ``:predict`` body.

    Attributes:
        signature_name: the signature to run (``serving_default`` when the body names none).
        row_format: True for ``instances`` bodies (answered with ``predictions``).
        payload: the raw ``instances`` list or ``inputs`` value.
        options: every other top-level key (``k``, ``group``, ``return_attention``...), which
            servables read as request options the way ``signature_name`` is one.
    """

    signature_name: str
    row_format: bool
    payload: Any
    options: Mapping[str, Any]


def parse_predict_request(body: bytes, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH) -> PredictRequest:
    """Parses a ``:predict`` body, raising INVALID_ARGUMENT errors in TF Serving's wording.

    The body's nesting is checked before parsing (``serving.limits.parse_json_body``), so no
    body can make the parser recurse past ``max_json_depth``.
    """
    return predict_request_from_doc(parse_json_body(body, max_json_depth))


def predict_request_from_doc(doc: Any) -> PredictRequest:
    """:func:`parse_predict_request` for an already parsed JSON document."""
    if not isinstance(doc, dict):
        raise invalid_argument("JSON Value is not an object: the request body must be a JSON object.")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument("Not both 'inputs' and 'instances' can be set.")
    if not (has_instances or has_inputs):
        raise invalid_argument("Missing 'inputs' or 'instances' key.")
    signature_name = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    payload = doc["instances"] if has_instances else doc["inputs"]
    if has_instances:
        if not isinstance(payload, list):
            raise invalid_argument("Expecting 'instances' to be an list/array.")
        if not payload:
            raise invalid_argument("No values in 'instances' list: send at least one instance.")
    options = {k: v for k, v in doc.items() if k not in ("instances", "inputs", "signature_name")}
    return PredictRequest(signature_name or DEFAULT_SIGNATURE, has_instances, payload, options)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a signature input accepts: a NumPy dtype (``object`` for DT_STRING) and a shape
    whose unknown dimensions are None (``shape`` None means unknown rank)."""

    dtype: np.dtype
    shape: tuple | None

    @property
    def is_string(self) -> bool:
        return self.dtype == np.dtype(object)


def decode_inputs(request: PredictRequest, specs: Mapping[str, InputSpec]) -> dict[str, np.ndarray]:
    """Turns the request payload into one array per signature input, checked against ``specs``."""
    names = sorted(specs)
    if request.row_format:
        columns = _rows_to_columns(request.payload, names)
    else:
        columns = _columnar_inputs(request.payload, names)
    return {name: _to_array(name, value, specs[name]) for name, value in columns.items()}


def _is_binary(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _is_named(value: Any) -> bool:
    """An object keyed by input name (as opposed to a {"b64": ...} binary value)."""
    return isinstance(value, dict) and not _is_binary(value)


def _rows_to_columns(instances: list, names: list[str]) -> dict[str, list]:
    named = [_is_named(row) for row in instances]
    if any(named) and not all(named):
        raise invalid_argument("Expecting all 'instances' to be objects keyed by input name, or none.")
    if not named[0]:
        if len(names) != 1:
            raise invalid_argument(
                f"The signature has {len(names)} inputs ({', '.join(names)}): each instance must be "
                "an object keyed by input name."
            )
        return {names[0]: instances}
    columns: dict[str, list] = {name: [] for name in names}
    for i, row in enumerate(instances):
        _check_names(set(row), names, f"instance {i}")
        for name in names:
            columns[name].append(row[name])
    return columns


def _columnar_inputs(inputs: Any, names: list[str]) -> dict[str, Any]:
    if _is_named(inputs):
        _check_names(set(inputs), names, "'inputs'")
        return dict(inputs)
    if len(names) != 1:
        raise invalid_argument(
            f"The signature has {len(names)} inputs ({', '.join(names)}): 'inputs' must be an "
            "object keyed by input name."
        )
    return {names[0]: inputs}


def _check_names(given: set, names: list[str], where: str) -> None:
    missing, unknown = sorted(set(names) - given), sorted(given - set(names))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        raise invalid_argument(f"{where}: {'; '.join(parts)}. The signature's inputs are {names}.")


def _to_array(name: str, value: Any, spec: InputSpec) -> np.ndarray:
    if spec.is_string:
        ragged = invalid_argument(f"Input '{name}': ragged nested lists; every row needs the same shape.")
        try:
            array = np.asarray(_strings(name, value), dtype=object)
        except ValueError:
            raise ragged from None
        # With dtype=object NumPy may keep ragged rows as list elements instead of failing.
        if any(isinstance(v, list) for v in array.flat):
            raise ragged
    else:
        _check_numeric(name, value, spec.dtype)
        try:
            array = np.asarray(value, dtype=spec.dtype)
        except (ValueError, TypeError, OverflowError):
            raise invalid_argument(
                f"Input '{name}': values must be a rectangular (non-ragged) nested list of "
                f"{spec.dtype.name} numbers."
            ) from None
    check_shape(name, array, spec)
    return array


def check_arrays(inputs: Mapping[str, Any], specs: Mapping[str, InputSpec]) -> dict[str, np.ndarray]:
    """Checks already decoded inputs (e.g. from gRPC TensorProtos) against a signature.

    Names must match the signature's inputs exactly, string inputs must hold bytes/str, numeric
    inputs numbers of a kind the signature's dtype holds without loss (ints for ints, ints or
    floats for floats), and shapes must agree. Returns the arrays in the signature's dtypes.
    """
    _check_names(set(inputs), sorted(specs), "inputs")
    out = {}
    for name, value in inputs.items():
        spec, array = specs[name], np.asarray(value)
        if spec.is_string:
            if array.dtype.kind not in "OSU" or not all(isinstance(v, (bytes, str)) for v in array.flat):
                raise invalid_argument(f"Input '{name}' must hold strings (DT_STRING), got {array.dtype}.")
            array = np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else bytes(v),
                                 otypes=[object])(array) if array.size else array.astype(object)
        else:
            allowed = {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}.get(spec.dtype.kind, spec.dtype.kind)
            if array.dtype.kind not in allowed:
                raise invalid_argument(
                    f"Input '{name}' has dtype {array.dtype} but the signature expects {spec.dtype.name}.")
            array = array.astype(spec.dtype)
        check_shape(name, array, spec)
        out[name] = array
    return out


def check_shape(name: str, array: np.ndarray, spec: InputSpec) -> None:
    """Raises INVALID_ARGUMENT when ``array``'s rank or known dimensions differ from ``spec``."""
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise invalid_argument(
                f"Input '{name}' has rank {array.ndim} (shape {list(array.shape)}) but the signature "
                f"expects rank {len(spec.shape)} (shape {_shape_text(spec.shape)})."
            )
        for got, want in zip(array.shape, spec.shape, strict=False):
            if want is not None and got != want:
                raise invalid_argument(
                    f"Input '{name}' has shape {list(array.shape)} but the signature expects "
                    f"{_shape_text(spec.shape)}."
                )


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def _strings(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_strings(name, v) for v in value]
    if _is_binary(value):
        encoded = value["b64"]
        if not isinstance(encoded, str):
            raise invalid_argument(f"Input '{name}': the 'b64' value must be a string.")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(
                f"Input '{name}': unable to base64 decode the 'b64' value (standard alphabet with "
                "padding expected)."
            ) from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise invalid_argument(
        f"JSON Value: {json.dumps(value)[:80]} Type: {_json_type(value)} is not of expected type: "
        f"string (input '{name}'; send text or {{\"b64\": ...}} for binary)."
    )


def _check_numeric(name: str, value: Any, dtype: np.dtype) -> None:
    if isinstance(value, list):
        for item in value:
            _check_numeric(name, item, dtype)
        return
    ok = isinstance(value, bool) if dtype == np.bool_ else (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if dtype.kind in "iu" and isinstance(value, float) and not value.is_integer():
        ok = False
    if not ok:
        raise invalid_argument(
            f"JSON Value: {json.dumps(value)[:80]} Type: {_json_type(value)} is not of expected "
            f"type: {dtype.name} (input '{name}')."
        )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, dict):
        return "Object"
    if value is None:
        return "Null"
    return type(value).__name__


def encode_outputs(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    """Builds the ``predictions`` (row) or ``outputs`` (columnar) response body."""
    names = sorted(outputs)
    if not row_format:
        encoded = {name: _to_json(name, np.asarray(outputs[name])) for name in names}
        return {"outputs": encoded[names[0]] if len(names) == 1 else encoded}
    batch_sizes = {np.asarray(outputs[n]).shape[0] if np.ndim(outputs[n]) else None for n in names}
    if len(batch_sizes) != 1 or None in batch_sizes:
        raise invalid_argument(
            "Output tensors do not share one batch size, so they cannot be sent in the row "
            "('instances') format; use the columnar 'inputs' format."
        )
    columns = {name: _to_json(name, np.asarray(outputs[name])) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    size = batch_sizes.pop()
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(size)]}


def _to_json(name: str, array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        as_b64 = name.endswith("_bytes")
        return _map_nested(array.tolist(), lambda v: _string_out(v, as_b64))
    return array.tolist()


def _string_out(value: Any, as_b64: bool) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if as_b64:
        return {"b64": base64.b64encode(value).decode("ascii")}
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _map_nested(value: Any, fn) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)


def dumps(doc: Any) -> bytes:
    """JSON-encodes a response; NaN and +/-Infinity are written as TF Serving writes them.

    orjson writes the common answer (lists of ~1,000 floats) ~10x faster than ``json``, with the
    same values (both print the shortest text that reads back as the same double). Its output is
    used only when it is pure ASCII and holds no ``null``: orjson writes NaN/Infinity as
    ``null``, and ``json`` escapes non-ASCII text, so anything else (and whatever orjson
    refuses: non-str keys, ints past 64 bits, NumPy scalars) goes through ``json`` as before.

    Example:
        >>> dumps({"predictions": [[0.5, -0.0]]})
        b'{"predictions":[[0.5,-0.0]]}'
        >>> dumps({"predictions": [float("nan"), float("inf")]})
        b'{"predictions":[NaN,Infinity]}'
    """
    if orjson is not None:
        try:
            fast = orjson.dumps(doc)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            fast = None
        if fast is not None and fast.isascii() and b"null" not in fast:
            return fast
    return json.dumps(doc, allow_nan=True, separators=(",", ":")).encode("utf-8")

