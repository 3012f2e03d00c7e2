"""The retrieval model: query images (or embeddings) in, top-k gallery neighbours out.

It is served next to the embedder as ``<name>_retrieval`` and speaks the same TF Serving REST
contract, with two signatures:

* ``serving_default``: input ``image_bytes`` (DT_STRING [-1]) -> ``ids``, ``labels``, ``paths``,
  ``scores`` (each [-1, k]), ``group_scores`` ([-1, k, K]: each group's cosine between the query
  and the neighbour, whatever was searched) and, when the request sets
  ``"return_attention": true``, the query's per-group ``attention`` maps [-1, K, h, w];
* ``search_embedding``: input ``embedding`` (DT_FLOAT [-1, D]) -> the same minus attention.

Request options sit beside ``signature_name`` in the body: ``"k"`` (default 5, capped at the
gallery size), ``"group"`` (search one aspect: group index 0..K-1; default all groups) and
``"return_attention"``.

The k contract: ``k`` is an integer >= 1 (anything else is a 400 naming the range). Every answer
row holds ``min(k, N)`` distinct gallery items with finite scores, best first; a ``k`` above the
gallery size N returns the whole gallery, ranked (documented since the first version, so kept),
and at ``k = N`` the set is the whole gallery whatever the backend (ScaNN searches are made deep
enough for k, short answers are recomputed exactly). ``k`` above ``max_k`` (10,000; a gallery at
most that big never hits it) or more than ``max_results`` (250,000) neighbours in one request
(queries x k) are refused with a 400 naming the limit, before any query is embedded.

``paths`` (server-side file paths) are returned only when the index was built with
``--expose_paths`` (``expose_paths`` in its manifest); otherwise every ``paths`` entry is an
empty string, so the output signature is the same either way.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from dgml_tf.export import output_names as names
from dgml_tf.distances import l2_normalize_np
from serving.embedders import Embedder
from serving.errors import failed_precondition, invalid_argument
from serving.servable import Servable
from serving.signature_defs import make_signature_def, tensor_info

DEFAULT_K = 5
MAX_K = 10_000
MAX_RESULTS = 250_000
OPTIONS = ("k", "group", "return_attention")


class RetrievalServable(Servable):
    """Embeds queries with ``embedder`` and searches ``index``.

    Args:
        name: the model name (``<embedder name>_retrieval`` by default in the server).
        embedder: where query embeddings come from; its version is this servable's version.
        index: a ``dgml_tf.index.RetrievalIndex`` built from the same embedder version.
        max_k: the largest k served (above the gallery size, k is capped at it first).
        max_results: the most neighbours (queries x k) one request may ask for.

    Example:
        >>> retrieval = RetrievalServable("dgml_retrieval", embedder, index)  # doctest: +SKIP
        >>> retrieval.run("serving_default", {"image_bytes": images}, {"k": 3})["ids"]
    """

    def __init__(self, name: str, embedder: Embedder, index, max_k: int = MAX_K,
                 max_results: int = MAX_RESULTS):
        super().__init__(name, embedder.version)
        if max_k < 1 or max_results < 1:
            raise ValueError(f"max_k ({max_k}) and max_results ({max_results}) must be >= 1.")
        self.max_k = int(max_k)
        self.max_results = int(max_results)
        if int(index.embedding_dim) != embedder.embedding_dim:
            raise ValueError(
                f"The index holds {index.embedding_dim}-d embeddings but embedder version "
                f"{embedder.version} outputs {embedder.embedding_dim}-d ones; rebuild the index "
                "with this embedder version."
            )
        self.embedder = embedder
        self.index = index
        self._ids = np.asarray([str(i) for i in index.ids], dtype=object)
        self._labels = np.asarray(index.labels, dtype=np.int64)
        # Server-side file paths leave the server only if the index was built to expose them.
        expose = bool(getattr(index, "expose_paths", False))
        self._paths = np.asarray([str(p) if expose else "" for p in index.paths], dtype=object)
        self._signature_defs = self._describe()

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        return self._signature_defs

    def _describe(self) -> dict:
        neighbours = {
            names.IDS: tensor_info(names.IDS, "DT_STRING", [-1, -1]),
            names.LABELS: tensor_info(names.LABELS, "DT_INT64", [-1, -1]),
            names.PATHS: tensor_info(names.PATHS, "DT_STRING", [-1, -1]),
            names.SCORES: tensor_info(names.SCORES, "DT_FLOAT", [-1, -1]),
            # Per-group cosine of query and neighbour: which aspect made each match.
            names.GROUP_SCORES: tensor_info(names.GROUP_SCORES, "DT_FLOAT",
                                        [-1, -1, int(self.index.num_groups)]),
        }
        image_outputs = dict(neighbours)
        if self.embedder.has_attention:
            attention = self.embedder.image_signature.outputs[names.ATTENTION]
            image_outputs[names.ATTENTION] = tensor_info(
                names.ATTENTION, "DT_FLOAT", [d.size for d in attention.tensor_shape.dim]
            )
        return {
            names.SERVING_SIGNATURE: make_signature_def(
                {names.IMAGE_BYTES_INPUT: tensor_info(names.IMAGE_BYTES_INPUT, "DT_STRING", [-1])},
                image_outputs,
            ),
            names.SEARCH_SIGNATURE: make_signature_def(
                {names.EMBEDDING_INPUT: tensor_info(names.EMBEDDING_INPUT, "DT_FLOAT",
                                                    [-1, self.embedder.embedding_dim])},
                neighbours,
            ),
        }

    def run(self, signature_name, inputs, options) -> dict[str, np.ndarray]:
        k, group, return_attention = self._options(options)
        attention = None
        if signature_name == names.SERVING_SIGNATURE:
            if return_attention and not self.embedder.has_attention:
                raise failed_precondition(
                    "return_attention: this embedder has a baseline head without attention maps."
                )
            self._check_result_size(len(inputs[names.IMAGE_BYTES_INPUT]), k)
            embedded = self.embedder.embed_images(inputs[names.IMAGE_BYTES_INPUT])
            queries = embedded[names.EMBEDDING]
            attention = embedded.get(names.ATTENTION) if return_attention else None
        else:
            if return_attention:
                raise invalid_argument(
                    "return_attention needs image queries (signature 'serving_default' with "
                    "'image_bytes'); an embedding query has no attention maps."
                )
            queries = np.asarray(inputs[names.EMBEDDING_INPUT], np.float32)
            self._check_result_size(len(queries), k)
            if not np.all(np.isfinite(queries)):
                raise invalid_argument("'embedding' holds NaN or Infinity; send finite floats.")
        indices, scores = self.index.search(np.asarray(queries, np.float32), k, group=group)
        indices = np.asarray(indices, dtype=np.int64)
        outputs = {
            names.IDS: self._ids[indices],
            names.LABELS: self._labels[indices],
            names.PATHS: self._paths[indices],
            names.SCORES: np.asarray(scores, dtype=np.float32),
            names.GROUP_SCORES: self._group_scores(np.asarray(queries, np.float32), indices),
        }
        if attention is not None:
            outputs[names.ATTENTION] = np.asarray(attention, dtype=np.float32)
        return outputs

    def _group_scores(self, queries: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """(Q, k, K) cosine of each query group slice with the same slice of each neighbour."""
        groups, dim = int(self.index.num_groups), int(self.index.group_dim)
        query_groups = l2_normalize_np(queries.reshape(len(queries), groups, dim))
        neighbour_groups = l2_normalize_np(
            np.asarray(self.index.embeddings, np.float32)[indices].reshape(*indices.shape, groups, dim))
        cosines = np.einsum("qgd,qkgd->qkg", query_groups, neighbour_groups)
        return np.clip(cosines, -1.0, 1.0).astype(np.float32)  # rounding can pass 1 by 1e-7

    def _options(self, options: Mapping[str, Any]) -> tuple[int, int | None, bool]:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise invalid_argument(
                f"Unknown request key(s) {unknown} for the retrieval model; it accepts "
                f"'signature_name', 'instances' or 'inputs', and the options {list(OPTIONS)}."
            )
        k = options.get("k", DEFAULT_K)
        gallery = len(self._ids)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise invalid_argument(
                f"'k' must be a positive integer (1 to the gallery size {gallery}; larger values "
                f"return the whole gallery), got {k!r}."
            )
        if min(k, gallery) > self.max_k:
            raise invalid_argument(
                f"'k' is {k}, above this server's limit of {self.max_k} neighbours per query; "
                f"ask for at most {self.max_k}."
            )
        group = options.get("group")
        num_groups = int(self.index.num_groups)
        if group is not None and (
            isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < num_groups
        ):
            raise invalid_argument(
                f"'group' must be an integer in [0, {num_groups - 1}] (the index has {num_groups} "
                f"groups) or null for the full embedding, got {group!r}."
            )
        return_attention = options.get("return_attention", False)
        if not isinstance(return_attention, bool):
            raise invalid_argument(f"'return_attention' must be true or false, got {return_attention!r}.")
        # A k above the gallery size returns the whole gallery, ranked (documented contract).
        return min(k, gallery), group, return_attention

    def _check_result_size(self, num_queries: int, k: int) -> None:
        if num_queries * k > self.max_results:
            raise invalid_argument(
                f"{num_queries} queries x k={k} asks for {num_queries * k} neighbours, above this "
                f"server's limit of {self.max_results} per request; send fewer queries per "
                "request or a smaller 'k'."
            )
