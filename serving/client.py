"""A client of the REST service (stdlib only; and of any TF Serving REST endpoint), with a gRPC mode.

Library:
    >>> client = RetrievalClient("http://127.0.0.1:8501", "dgml_retrieval")  # doctest: +SKIP
    >>> client.neighbours([open("query.jpg", "rb").read()], k=5)[0][0]
    Neighbour(rank=1, id='test/17', label=3, path='...', score=0.93)

Command line:
    python -m serving.client --url http://127.0.0.1:8501 --model_name dgml_retrieval q1.jpg q2.png
    python -m serving.client --grpc 127.0.0.1:8500 --model_name dgml_retrieval q1.jpg   # gRPC

The REST client is stdlib only; :class:`GrpcRetrievalClient` (``--grpc``) needs grpcio and
tensorflow-serving-api.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence


class ServingClientError(RuntimeError):
    """A failed call: ``status`` is the HTTP status (None when the server was not reached)."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Neighbour:
    """One retrieved gallery item."""

    rank: int
    id: str
    label: int
    path: str
    score: float


class RetrievalClient:
    """Talks to one model of a TF Serving-style REST server.

    Args:
        url: server root, e.g. ``http://127.0.0.1:8501``.
        model: model name, e.g. ``dgml_retrieval`` (or the embedder ``dgml`` for :meth:`embed`).
        version: pin a version (mutually exclusive with ``label``).
        label: pin a version label such as ``stable``.
        timeout: seconds per call.
    """

    def __init__(self, url: str, model: str, version: Optional[int] = None,
                 label: Optional[str] = None, timeout: float = 60.0):
        if version is not None and label is not None:
            raise ValueError("Pass either version or label, not both.")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.model_url = f"{self.url}/v1/models/{model}"
        if version is not None:
            self.model_url += f"/versions/{int(version)}"
        elif label is not None:
            self.model_url += f"/labels/{label}"

    def status(self) -> dict:
        """The model's ``model_version_status`` answer."""
        return self._call("GET", self.model_url)

    def metadata(self) -> dict:
        """The model's signature defs (TF Serving's metadata answer)."""
        return self._call("GET", self.model_url + "/metadata")

    def predict(self, body: dict) -> dict:
        """A raw ``:predict`` call with a ready-made body."""
        return self._call("POST", self.model_url + ":predict", body)

    def neighbours(self, image_bytes_list: Sequence[bytes], k: int = 5, group: Optional[int] = None,
                   return_attention: bool = False) -> Any:
        """Top-k neighbours of each encoded image (a list of :class:`Neighbour` lists).

        With ``return_attention`` the answer is ``(neighbours, attention)``, attention being the
        query's per-group maps as nested lists (one ``[K][h][w]`` per query).
        """
        body: dict[str, Any] = {"instances": [_b64(b) for b in image_bytes_list], "k": k}
        if group is not None:
            body["group"] = group
        if return_attention:
            body["return_attention"] = True
        rows = self.predict(body)["predictions"]
        found = [
            [Neighbour(rank + 1, row["ids"][rank], int(row["labels"][rank]), row["paths"][rank],
                       float(row["scores"][rank])) for rank in range(len(row["ids"]))]
            for row in rows
        ]
        if return_attention:
            return found, [row["attention"] for row in rows]
        return found

    def embed(self, image_bytes_list: Sequence[bytes]) -> list[dict]:
        """Embedder outputs (``embedding``, ``group_embeddings``, ``attention``) per image.

        Use with the embedder model name (``RetrievalClient(url, "dgml").embed(...)``).
        """
        rows = self.predict({"instances": [_b64(b) for b in image_bytes_list]})["predictions"]
        return [row if isinstance(row, dict) else {"embedding": row} for row in rows]

    def _call(self, method: str, url: str, body: Optional[dict] = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")[:500]
            raise ServingClientError(f"{method} {url} -> HTTP {error.code}: {message}",
                                     status=error.code) from None
        except urllib.error.URLError as error:
            raise ServingClientError(
                f"cannot reach {self.url} ({error.reason}); is the server running "
                "(python -m serving.server ...) and the URL right?") from None
        except (ConnectionError, TimeoutError) as error:
            raise ServingClientError(f"connection to {self.url} failed: {error}") from None


class GrpcRetrievalClient:
    """The same calls as :class:`RetrievalClient` over TF Serving's gRPC API (port 8500).

    Needs ``grpcio`` and ``tensorflow-serving-api`` (hence TensorFlow); the REST client needs
    nothing. Retrieval options travel as extra scalar input tensors (``k``, ``group``,
    ``return_attention``), see :mod:`serving.grpc_api`.

    Args:
        target: ``host:port`` of the gRPC server, e.g. ``127.0.0.1:8500``.
        model, version, label, timeout: as for :class:`RetrievalClient`.
        max_message_bytes: the largest answer accepted.

    Example:
        >>> client = GrpcRetrievalClient("127.0.0.1:8500", "dgml_retrieval")  # doctest: +SKIP
        >>> client.neighbours([open("query.jpg", "rb").read()], k=5)[0][0]
        Neighbour(rank=1, id='test/17', label=3, path='', score=0.93)
    """

    def __init__(self, target: str, model: str, version: Optional[int] = None,
                 label: Optional[str] = None, timeout: float = 60.0,
                 max_message_bytes: int = 256 * 1024 * 1024):
        if version is not None and label is not None:
            raise ValueError("Pass either version or label, not both.")
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target, self.model, self.timeout = target, model, timeout
        self.version, self.label = version, label
        self._grpc = grpc
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _spec(self, spec) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label is not None:
            spec.version_label = self.label

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise ServingClientError(f"gRPC {self.target} -> {error.code().name}: {error.details()}",
                                     status=None) from None

    def status(self):
        """The ``GetModelStatusResponse`` proto."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return self._call(self._models.GetModelStatus, request)

    def metadata(self):
        """The ``GetModelMetadataResponse`` proto (``signature_def``)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        return self._call(self._predict.GetModelMetadata, request)

    def predict(self, inputs: dict, output_filter: Sequence[str] = ()) -> dict:
        """One ``Predict`` call: ``{name: array-like}`` in, ``{name: np.ndarray}`` out."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._spec(request.model_spec)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        answer = self._call(self._predict.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in answer.outputs.items()}

    def neighbours(self, image_bytes_list: Sequence[bytes], k: int = 5, group: Optional[int] = None,
                   return_attention: bool = False) -> Any:
        """As :meth:`RetrievalClient.neighbours` (attention as NumPy arrays)."""
        import numpy as np

        inputs: dict[str, Any] = {"image_bytes": [bytes(b) for b in image_bytes_list],
                                  "k": np.int32(k)}
        if group is not None:
            inputs["group"] = np.int32(group)
        if return_attention:
            inputs["return_attention"] = True
        out = self.predict(inputs)
        found = [
            [Neighbour(rank + 1, out["ids"][q][rank].decode("utf-8"), int(out["labels"][q][rank]),
                       out["paths"][q][rank].decode("utf-8"), float(out["scores"][q][rank]))
             for rank in range(out["ids"].shape[1])]
            for q in range(out["ids"].shape[0])
        ]
        if return_attention:
            return found, list(out["attention"])
        return found

    def embed(self, image_bytes_list: Sequence[bytes]) -> list[dict]:
        """Embedder outputs per image, as :meth:`RetrievalClient.embed` (NumPy arrays)."""
        out = self.predict({"image_bytes": [bytes(b) for b in image_bytes_list]})
        return [{name: value[i] for name, value in out.items()} for i in range(len(image_bytes_list))]


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(bytes(data)).decode("ascii")}


def format_neighbours(paths: Sequence[str], results: Sequence[Sequence[Neighbour]]) -> str:
    """Neighbours as a plain-text table, one block per query (not an evaluation table:
    ``dgml_tf.evaluate.format_table`` formats metrics; this client needs only the stdlib)."""
    lines = []
    for query, neighbours in zip(paths, results, strict=False):
        lines.append(f"query: {query}")
        lines.append(f"  {'rank':>4}  {'score':>8}  {'label':>6}  {'id':<24} path")
        for n in neighbours:
            lines.append(f"  {n.rank:>4}  {n.score:>8.4f}  {n.label:>6}  {n.id:<24} {n.path}")
    return "\n".join(lines)


_CLI_DOC = """python -m serving.client [flags] IMAGE...: query the retrieval service with images.

Example:
    python -m serving.client --url http://127.0.0.1:8501 --model_name dgml_retrieval q1.jpg
    python -m serving.client --grpc 127.0.0.1:8500 q1.jpg   # gRPC
"""


def define_flags(values) -> None:
    """The client command's flags (in the FlagValues ``values``)."""
    from absl import flags as absl_flags

    from dgml_tf.flag_parsing import define_alias

    absl_flags.DEFINE_string("url", "http://127.0.0.1:8501", "REST address of the service.",
                             flag_values=values)
    absl_flags.DEFINE_string("grpc", None, "Use TF Serving's gRPC API at HOST:PORT (e.g. "
                             "127.0.0.1:8500) instead of REST; needs tensorflow-serving-api.",
                             flag_values=values)
    absl_flags.DEFINE_string("model_name", "dgml_retrieval", "Served model to query.",
                             flag_values=values)
    define_alias("model", "model_name", values)  # the old spelling, accepted for one release
    absl_flags.DEFINE_integer("k", 5, "Neighbours per query.", flag_values=values)
    absl_flags.DEFINE_integer("group", None, "Search one group (aspect) only.",
                              flag_values=values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m serving.client [flags] IMAGE...``: prints each image's neighbours.

    Args:
        argv: flags and image files, without the program name (``sys.argv[1:]`` when None).

    Returns:
        0, 1 when the service refused or could not be reached, 2 for unreadable input.
    """
    from dgml_tf.flag_parsing import parse_flags

    remaining, args = parse_flags(["serving.client", *(sys.argv[1:] if argv is None else argv)],
                                  define_flags, _CLI_DOC)
    images = remaining[1:]
    if not images:
        print("serving.client: pass one or more image files (JPEG, PNG, GIF, BMP); --help lists "
              "the flags.", file=sys.stderr)
        return 2
    try:
        payloads = []
        for path in images:
            with open(path, "rb") as handle:
                payloads.append(handle.read())
    except OSError as error:
        print(f"serving.client: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        if args.grpc:
            client = GrpcRetrievalClient(args.grpc, args.model_name)
        else:
            client = RetrievalClient(args.url, args.model_name)
        results = client.neighbours(payloads, k=args.k, group=args.group)
    except ServingClientError as error:
        print(f"serving.client: {error}", file=sys.stderr)
        return 1
    print(format_neighbours(images, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
