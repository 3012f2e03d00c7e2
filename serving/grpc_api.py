"""TF Serving's gRPC API (port 8500) on the same servables, versions and labels as REST.

Services, from ``tensorflow-serving-api``'s own protos and stubs:

* ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata`` (field
  ``signature_def``); ``Classify``, ``Regress`` and ``MultiInference`` answer UNIMPLEMENTED
  (the models have predict signatures only, as over REST);
* ``tensorflow.serving.ModelService``: ``GetModelStatus`` (``HandleReloadConfigRequest`` is
  UNIMPLEMENTED: reload with SIGHUP, ``--file_system_poll_wait_seconds`` or the REST admin route).

Every request reads the registry's snapshot once, like a REST request, and failures carry the
canonical code a :class:`~serving.errors.ServingError` names (INVALID_ARGUMENT for bad inputs,
NOT_FOUND for an unknown model or version, FAILED_PRECONDITION for an unknown signature,
RESOURCE_EXHAUSTED over the message-size or concurrency limits), which is how TF Serving maps
its own errors onto gRPC.

Retrieval options over gRPC: TF Serving's ``PredictRequest`` has only ``model_spec``,
``inputs`` and ``output_filter``, so the retrieval model's REST options travel as extra scalar
input tensors named after them: ``k`` (int32/int64), ``group`` (int32/int64; omit it to search
the full embedding) and ``return_attention`` (bool). Example with the official stubs::

    import grpc, tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dgml_retrieval"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([open("q.jpg", "rb").read()]))
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(5))
    answer = stub.Predict(request, timeout=30)
    tf.make_ndarray(answer.outputs["ids"])  # (1, 5) ids, best first

Tensors are converted here without TensorFlow (NumPy only), with the element count checked
against the bytes actually sent, so a request cannot make the server allocate more than its
message size allows (``tf.make_ndarray`` would fill a huge declared shape with zeros).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from concurrent import futures
from typing import Any, Optional

import grpc
import numpy as np

from serving.errors import ServingError, invalid_argument, public_error
from serving.metrics import ACCESS_LOG
from serving.retrieval_servable import OPTIONS as RETRIEVAL_OPTIONS, RetrievalServable
from serving.signature_defs import input_specs
from serving.tensor_json import DEFAULT_SIGNATURE, InputSpec

LOG = logging.getLogger("serving")
DEFAULT_GRPC_PORT = 8500
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the REST body limit's default
DEFAULT_WORKERS = 8
DEFAULT_QUEUE = 32
_MAX_RANK = 16
# The REST options of a servable, sent over gRPC as extra scalar input tensors.
OPTION_DTYPES = {"k": ("int",), "group": ("int",), "return_attention": ("bool",)}

# Lazily imported: tensorflow_serving.apis pulls in TensorFlow's protos.
_protos: dict = {}


def _apis():
    if not _protos:
        from tensorflow.core.framework import tensor_pb2, types_pb2
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        _protos.update(tensor_pb2=tensor_pb2, types_pb2=types_pb2, predict_pb2=predict_pb2,
                       get_model_metadata_pb2=get_model_metadata_pb2,
                       get_model_status_pb2=get_model_status_pb2,
                       prediction_service_pb2_grpc=prediction_service_pb2_grpc,
                       model_service_pb2_grpc=model_service_pb2_grpc)
    return _protos


# ---------------------------------------------------------------- tensors <-> NumPy

# DataType enum value -> (NumPy dtype, repeated value field). Strings are object arrays of bytes.
def _dtype_table() -> dict:
    types = _apis()["types_pb2"]
    return {
        types.DT_FLOAT: (np.dtype(np.float32), "float_val"),
        types.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
        types.DT_INT32: (np.dtype(np.int32), "int_val"),
        types.DT_INT64: (np.dtype(np.int64), "int64_val"),
        types.DT_UINT8: (np.dtype(np.uint8), "int_val"),
        types.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
        types.DT_STRING: (np.dtype(object), "string_val"),
    }


def tensor_to_array(proto, name: str = "input", max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> np.ndarray:
    """A ``TensorProto`` as a NumPy array, refusing inconsistent or oversized tensors.

    Args:
        proto: a ``tensorflow.TensorProto``.
        name: the input's name, for error messages.
        max_bytes: a bound on the decoded array (a single repeated value may fill a shape, as
            TensorFlow allows, but never beyond this).

    Raises:
        ServingError: INVALID_ARGUMENT naming the problem.

    Example:
        >>> import tensorflow as tf  # doctest: +SKIP
        >>> tensor_to_array(tf.make_tensor_proto([[1.0, 2.0]]), "x").shape  # doctest: +SKIP
        (1, 2)
    """
    table = _dtype_table()
    types = _apis()["types_pb2"]
    if proto.dtype not in table:
        supported = ", ".join(types.DataType.Name(d) for d in table)
        raise invalid_argument(f"Input '{name}': dtype {types.DataType.Name(proto.dtype)} is not "
                               f"supported by this server (use one of {supported}).")
    dtype, field = table[proto.dtype]
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"Input '{name}': the tensor shape must be known (unknown_rank set).")
    if len(proto.tensor_shape.dim) > _MAX_RANK:
        raise invalid_argument(f"Input '{name}': rank {len(proto.tensor_shape.dim)} exceeds {_MAX_RANK}.")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"Input '{name}': negative dimension in shape {list(shape)}.")
    count = math.prod(shape)
    if dtype != object:  # noqa: E721 (np.dtype == object)
        if count * dtype.itemsize > max_bytes:
            raise ServingError("RESOURCE_EXHAUSTED", f"Input '{name}': shape {list(shape)} needs "
                               f"{count * dtype.itemsize} bytes, over the limit of {max_bytes}.")
        if proto.tensor_content:
            if len(proto.tensor_content) != count * dtype.itemsize:
                raise invalid_argument(
                    f"Input '{name}': tensor_content holds {len(proto.tensor_content)} bytes but "
                    f"shape {list(shape)} of {dtype.name} needs {count * dtype.itemsize}.")
            return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(
                dtype).reshape(shape)
    values = getattr(proto, field)
    if len(values) == count:
        array = np.asarray(list(values), dtype=dtype) if dtype == object else np.asarray(values, dtype)  # noqa: E721 (np.dtype == object)
        return array.reshape(shape)
    if len(values) == 1 and dtype != object:  # noqa: E721 (TensorFlow's fill-from-last-value rule)
        return np.full(shape, values[0], dtype=dtype)
    raise invalid_argument(f"Input '{name}': {len(values)} values in {field} but shape "
                           f"{list(shape)} has {count} elements.")


def array_to_tensor(array: np.ndarray):
    """A NumPy array (numeric, bool, or object/str/bytes strings) as a ``TensorProto``."""
    tensor_pb2, types = _apis()["tensor_pb2"], _apis()["types_pb2"]
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types.DT_STRING
        proto.string_val.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v)
                                for v in array.reshape(-1).tolist())
        return proto
    by_dtype = {np.dtype(d): t for t, (d, _) in _dtype_table().items() if d != object}  # noqa: E721 (np.dtype == object)
    if array.dtype not in by_dtype:
        raise ServingError("INTERNAL", f"output dtype {array.dtype} has no TensorProto mapping")
    proto.dtype = by_dtype[array.dtype]
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


def _check_input(name: str, array: np.ndarray, spec: InputSpec) -> np.ndarray:
    want = "DT_STRING" if spec.is_string else spec.dtype.name
    got = "DT_STRING" if array.dtype == object else array.dtype.name
    if want != got:
        raise invalid_argument(f"Input '{name}': expects {want} but {got} is provided.")
    if spec.shape is not None:
        if array.ndim != len(spec.shape) or any(
                w is not None and g != w for g, w in zip(array.shape, spec.shape, strict=False)):
            wanted = "[" + ", ".join("-1" if d is None else str(d) for d in spec.shape) + "]"
            raise invalid_argument(f"Input '{name}' has shape {list(array.shape)} but the signature "
                                   f"expects {wanted}.")
    return array


def _option_value(name: str, array: np.ndarray) -> Any:
    if array.size != 1 or array.ndim > 1:
        raise invalid_argument(f"Option '{name}' must be a scalar tensor (shape [] or [1]), got "
                               f"shape {list(array.shape)}.")
    kind = OPTION_DTYPES[name][0]
    value = array.reshape(()).item()
    if kind == "bool" and array.dtype != np.bool_:
        raise invalid_argument(f"Option '{name}' must be a DT_BOOL tensor, got {array.dtype.name}.")
    if kind == "int" and array.dtype.kind not in "iu":
        raise invalid_argument(f"Option '{name}' must be a DT_INT32 or DT_INT64 tensor, got "
                               f"{'DT_STRING' if array.dtype == object else array.dtype.name}.")
    return value


# ---------------------------------------------------------------- the services

def _spec_version(model_spec) -> tuple[Optional[int], Optional[str]]:
    which = model_spec.WhichOneof("version_choice")
    if which == "version":
        return int(model_spec.version.value), None
    if which == "version_label":
        return None, model_spec.version_label
    return None, None


class _Handler:
    """Shared request plumbing: the snapshot, the model call, error mapping and request ids."""

    def __init__(self, backend, max_message_bytes: int):
        # A ServingCore (admission, image checks, batching, metrics shared with REST) or a bare
        # ModelRegistry (servables called directly).
        self.core = backend if hasattr(backend, "submit") else None
        self.registry = backend.registry if self.core is not None else backend
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]

    def run(self, servable, signature_name, inputs, options, request_id, context) -> dict:
        if self.core is None:
            return servable.run(signature_name, inputs, options)
        remaining = context.time_remaining()
        # The resolved version is pinned, so a reload between resolve and run cannot switch it.
        return self.core.predict(servable.name, servable.version, None, signature_name, inputs,
                                 options, request_id=request_id, timeout=remaining).outputs

    def call(self, method: str, context, fn):
        request_id = f"{self._prefix}-g{next(self._ids)}"
        started = time.perf_counter()
        code = "OK"
        try:
            return fn(request_id)
        except Exception as error:  # internals are reduced to "internal error (request id)"
            public = public_error(error, request_id, LOG)
            code = public.code
            context.abort(getattr(grpc.StatusCode, public.code), public.message)
        finally:
            ACCESS_LOG.info("grpc %s %s %.1fms request_id=%s", method, code,
                            (time.perf_counter() - started) * 1e3, request_id)


def make_servicers(backend, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
    """The PredictionService and ModelService servicers.

    Args:
        backend: a :class:`serving.core.ServingCore` (what the server passes: the same
            admission, image checks, dynamic batching and metrics as REST), or a bare
            :class:`~serving.model_registry.ModelRegistry` (servables called directly).
        max_message_bytes: the largest request message accepted (same as the REST body limit).

    Returns:
        ``(prediction_servicer, model_servicer)``.
    """
    apis = _apis()
    handler = _Handler(backend, max_message_bytes)

    class PredictionServicer(apis["prediction_service_pb2_grpc"].PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC naming)
            return handler.call("Predict", context, lambda rid: _predict(handler, request, rid, context))

        def GetModelMetadata(self, request, context):  # noqa: N802
            return handler.call("GetModelMetadata", context, lambda rid: _model_metadata(handler, request))

        def Classify(self, request, context):  # noqa: N802
            return handler.call("Classify", context, lambda rid: _unimplemented("Classify"))

        def Regress(self, request, context):  # noqa: N802
            return handler.call("Regress", context, lambda rid: _unimplemented("Regress"))

        def MultiInference(self, request, context):  # noqa: N802
            return handler.call("MultiInference", context, lambda rid: _unimplemented("MultiInference"))

    class ModelServicer(apis["model_service_pb2_grpc"].ModelServiceServicer):
        def GetModelStatus(self, request, context):  # noqa: N802
            return handler.call("GetModelStatus", context, lambda rid: _status(handler, request))

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802
            return handler.call("HandleReloadConfigRequest", context, lambda rid: _unimplemented(
                "HandleReloadConfigRequest (reload with SIGHUP, --file_system_poll_wait_seconds "
                "or POST /v1/admin/reload)"))

    return PredictionServicer(), ModelServicer()


def _unimplemented(what: str):
    raise ServingError("UNIMPLEMENTED", f"{what} is not implemented by this server; use Predict.")


def _resolve(handler: _Handler, model_spec):
    if not model_spec.name:
        raise invalid_argument("Missing ModelSpec: set model_spec.name.")
    version, label = _spec_version(model_spec)
    return handler.registry.state.resolve(model_spec.name, version, label)


def _predict(handler: _Handler, request, request_id: str, context):
    servable = _resolve(handler, request.model_spec)
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature(signature_name)  # FAILED_PRECONDITION when unknown
    specs = input_specs(signature)
    option_names = set(RETRIEVAL_OPTIONS) if isinstance(servable, RetrievalServable) else set()
    inputs, options = {}, {}
    for name, proto in request.inputs.items():
        array = tensor_to_array(proto, name, handler.max_message_bytes)
        if name in specs:
            inputs[name] = _check_input(name, array, specs[name])
        elif name in option_names and name in OPTION_DTYPES:
            options[name] = _option_value(name, array)
        else:
            extra = f" or the options {sorted(option_names)}" if option_names else ""
            raise invalid_argument(f"Input '{name}' is not in the signature '{signature_name}'; "
                                   f"its inputs are {sorted(specs)}{extra}.")
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise invalid_argument(f"Missing input(s) {missing} of signature '{signature_name}'.")
    for name in request.output_filter:
        if name not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {name} Outputs "
                                   f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
    outputs = handler.run(servable, signature_name, inputs, options, request_id, context)
    response = _apis()["predict_pb2"].PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    wanted = set(request.output_filter) or set(outputs)
    for name in sorted(wanted & set(outputs)):
        response.outputs[name].CopyFrom(array_to_tensor(outputs[name]))
    return response


def _model_metadata(handler: _Handler, request):
    apis = _apis()
    servable = _resolve(handler, request.model_spec)
    fields = list(request.metadata_field)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != "signature_def":
            raise invalid_argument(f"Metadata field {field} is not supported")
    response = apis["get_model_metadata_pb2"].GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = apis["get_model_metadata_pb2"].SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def _status(handler: _Handler, request):
    status_pb2 = _apis()["get_model_status_pb2"]
    if not request.model_spec.name:
        raise invalid_argument("Missing ModelSpec: set model_spec.name.")
    version, label = _spec_version(request.model_spec)
    doc = handler.registry.state.status(request.model_spec.name, version, label)
    response = status_pb2.GetModelStatusResponse()
    for entry in doc["model_version_status"]:
        status = response.model_version_status.add()
        status.version = int(entry["version"])
        status.state = status_pb2.ModelVersionStatus.State.Value(entry["state"])
        status.status.error_code = 0 if entry["status"]["error_code"] == "OK" else 2
        status.status.error_message = entry["status"]["error_message"]
    return response


# ---------------------------------------------------------------- the server

class GrpcServer:
    """A started gRPC server; ``port`` is the bound port (useful with port 0).

    ``stop(grace)`` lets in-flight RPCs finish for up to ``grace`` seconds and refuses new ones.
    """

    def __init__(self, server: grpc.Server, port: int, host: str):
        self._server = server
        self.port = port
        self.host = host
        self._stopped = threading.Event()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float = 10.0) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._server.stop(grace).wait(grace + 1.0)

    def wait(self) -> None:
        self._server.wait_for_termination()


def start_grpc_server(backend, port: int = DEFAULT_GRPC_PORT, host: str = "127.0.0.1",
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      workers: int = DEFAULT_WORKERS, queue: int = DEFAULT_QUEUE) -> GrpcServer:
    """Starts TF Serving's gRPC services for ``backend`` on ``host:port``.

    Args:
        backend: the :class:`serving.core.ServingCore` the REST app uses (or a bare
            ``ModelRegistry``, see :func:`make_servicers`); reloads are seen at once, every RPC
            reads the current snapshot.
        port: 0 picks a free port (read it back from ``.port``).
        host: the interface to bind ("0.0.0.0" for all).
        max_message_bytes: the largest request (gRPC answers RESOURCE_EXHAUSTED above it),
            normally the REST ``--max_body_bytes``.
        workers: RPCs run at once.
        queue: RPCs waiting beyond ``workers``; more than ``workers + queue`` at once are
            refused at once with RESOURCE_EXHAUSTED (overload never piles up threads).

    Example:
        >>> grpc_server = start_grpc_server(registry, port=8500)  # doctest: +SKIP
        >>> grpc_server.stop(grace=10)  # doctest: +SKIP
    """
    if max_message_bytes <= 0 or workers < 1 or queue < 0:
        raise ValueError("max_message_bytes and workers must be positive and queue >= 0, got "
                         f"{max_message_bytes}, {workers}, {queue}.")
    apis = _apis()
    prediction, model = make_servicers(backend, max_message_bytes)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=workers + queue,
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)],
    )
    apis["prediction_service_pb2_grpc"].add_PredictionServiceServicer_to_server(prediction, server)
    apis["model_service_pb2_grpc"].add_ModelServiceServicer_to_server(model, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # what grpcio raises for a port it cannot bind
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port} (in use?); pass another "
                      "--grpc_port, 0 for a free one, or -1 to turn gRPC off.")
    server.start()
    LOG.info("gRPC (PredictionService, ModelService) on %s:%d", host, bound)
    return GrpcServer(server, bound, host)
