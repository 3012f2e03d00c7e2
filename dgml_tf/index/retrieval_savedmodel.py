"""Top-k retrieval as SavedModels under TF Serving's layout.

``export_exact_retrieval_savedmodel`` writes ``<base>/<name>_retrieval/<version>/``: pure TF ops
(normalise, matmul against the gallery held in a ``tf.Variable``, ``top_k``), so the stock
``tensorflow/serving`` image loads it. Signatures:

- ``search_embedding``: input ``embedding`` float32 [-1, D];
- ``serving_default``: input ``image_bytes`` string [-1]; runs the embedder version the index
  was built with (its ``serving_default``, copied into this SavedModel), then searches.

Both return ``indices`` int32 [-1, k], ``scores`` float32 [-1, k] (cosine), ``labels`` int64
[-1, k] and ``ids`` string [-1, k]. ``k`` is fixed at export (``min(k, N)``).

``export_scann_retrieval_savedmodel`` writes ``<base>/<name>_retrieval_scann/<version>/`` with
the same ``search_embedding`` signature computed by ScaNN's TF ops (``scann.scann_ops``). Those
ops are custom kernels: the SavedModel loads only in a process that has imported ``scann``
(not in the stock TF Serving image), so it is marked ``requires_custom_ops: ["scann"]`` in its
``dgml_export.json`` and left out of the generated ``models.config``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from dgml_tf.export import output_names as names
from dgml_tf.export.fingerprint import model_fingerprint
from dgml_tf.export.metadata import write_export_metadata
from dgml_tf.export.tf_serving_layout import check_model_name, resolve_version, staged_version_dir
from dgml_tf.distances import l2_normalize_np
from dgml_tf.index.manifest import IndexModelMismatchError
from dgml_tf.index.retrieval_index import RetrievalIndex
from dgml_tf.index.scann_index import (
    choose_scann_params,
    configure_builder,
    leaf_sizes,
    require_scann,
    search_depths,
)

RETRIEVAL_SUFFIX = "_retrieval"
SCANN_RETRIEVAL_SUFFIX = "_retrieval_scann"


def _outputs(module, indices: tf.Tensor, scores: tf.Tensor) -> dict:
    indices = tf.cast(indices, tf.int32)
    return {
        names.INDICES: tf.identity(indices, name=names.INDICES),
        names.SCORES: tf.identity(scores, name=names.SCORES),
        names.LABELS: tf.gather(module.labels, indices, name=names.LABELS),
        names.IDS: tf.gather(module.ids, indices, name=names.IDS),
    }


class ExactRetrievalModule(tf.Module):
    """Gallery variables + top-k search (+ the embedder for the bytes signature)."""

    def __init__(self, index: RetrievalIndex, k: int, embedder=None):
        super().__init__(name="exact_retrieval")
        self.k = int(min(k, len(index)))
        self.gallery = tf.Variable(l2_normalize_np(index.embeddings), trainable=False, name="gallery")
        self.labels = tf.Variable(np.asarray(index.labels, np.int64), trainable=False, name="labels")
        self.ids = tf.Variable(np.asarray(index.ids, dtype=object).astype(bytes), trainable=False, name="ids")
        self.embedder = embedder

    def search(self, embedding: tf.Tensor) -> dict:
        queries = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-12)
        similarities = tf.matmul(queries, self.gallery, transpose_b=True)
        scores, indices = tf.math.top_k(similarities, k=self.k, sorted=True)
        return _outputs(self, indices, scores)


def _check_embedder(index: RetrievalIndex, embedder_dir: str) -> None:
    found = model_fingerprint(embedder_dir)
    if found != index.model_fingerprint:
        raise IndexModelMismatchError(
            f"Embedder {embedder_dir} has fingerprint {found}, but the index was built with "
            f"{index.model_fingerprint}; export the retrieval model with the embedder version "
            "the index was built with, or rebuild the index."
        )


def export_exact_retrieval_savedmodel(
    index: RetrievalIndex,
    base_dir: "str | os.PathLike",
    model_name: str,
    embedder_dir: Optional["str | os.PathLike"] = None,
    k: int = 10,
    version: Optional[int] = None,
) -> pathlib.Path:
    """Writes the exact top-k retrieval SavedModel to ``<base>/<model_name>_retrieval/<version>``.

    Args:
        index: a loaded :class:`RetrievalIndex`.
        base_dir: TF Serving base directory.
        model_name: the embedder's model name; the retrieval model is ``<model_name>_retrieval``.
        embedder_dir: the embedder version the index was built with; adds ``serving_default``
            on image bytes. Its fingerprint must match the index's.
        k: neighbours returned (capped at the gallery size).
        version: a new version, or None for latest + 1.

    Returns:
        The version directory.
    """
    check_model_name(model_name)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    embedder = None
    if embedder_dir is not None:
        embedder_dir = os.fspath(embedder_dir)
        _check_embedder(index, embedder_dir)
        embedder = tf.saved_model.load(embedder_dir)
    module = ExactRetrievalModule(index, k, embedder)
    dim = index.embedding_dim

    @tf.function(input_signature=[tf.TensorSpec((None, dim), tf.float32, name=names.EMBEDDING_INPUT)])
    def search_embedding(embedding):
        return module.search(embedding)

    signatures = {names.SEARCH_SIGNATURE: search_embedding}
    if embedder is not None:
        embed = embedder.signatures[names.SERVING_SIGNATURE]

        @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name=names.IMAGE_BYTES_INPUT)])
        def serving_default(image_bytes):
            embedding = embed(**{names.IMAGE_BYTES_INPUT: image_bytes})[names.EMBEDDING]
            return module.search(embedding)

        signatures[names.SERVING_SIGNATURE] = serving_default
    else:
        # TF Serving's REST predict API defaults to serving_default: make the embedding search it.
        signatures[names.SERVING_SIGNATURE] = search_embedding

    model_dir = pathlib.Path(base_dir) / f"{model_name}{RETRIEVAL_SUFFIX}"
    version = resolve_version(model_dir, version)
    with staged_version_dir(model_dir, version) as staging:
        tf.saved_model.save(module, os.fspath(staging), signatures=signatures)
        write_export_metadata(
            staging, _retrieval_export_metadata(index, module.k, embedder_dir, "exact", version))
    return model_dir / str(version)


def _retrieval_export_metadata(index, k, embedder_dir, backend, version, **more) -> dict:
    return {
        "kind": "retrieval",
        "backend": backend,
        "version": version,
        "k": k,
        "num_items": len(index),
        "embedding_dim": index.embedding_dim,
        "num_groups": index.num_groups,
        "group_dim": index.group_dim,
        "index_version_dir": os.path.abspath(index.version_dir),
        "index_model_fingerprint": index.model_fingerprint,
        "embedder_dir": os.path.abspath(embedder_dir) if embedder_dir else None,
        "output_names": list(names.RETRIEVAL_OUTPUTS),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **more,
    }


class _ScannSearcherResource(tf.saved_model.experimental.TrackableResource):
    """The ScaNN searcher as a TF resource that a SavedModel re-creates once, at load time.

    ``scann_ops`` holds a searcher in a resource handle that cannot be saved as is; its
    ``ScannState`` module holds the searcher's tensors as variables. This resource rebuilds the
    handle from those variables in ``_create_resource``, which TF saves as a function and calls
    when the SavedModel is loaded (not on every request).
    """

    def __init__(self, state):
        super().__init__()
        self.state = state
        for field in self._FIELDS:
            # Tracked as direct children, so they are saved and can be declared
            # deserialization dependencies below (TrackableResource does not auto-track).
            self._track_trackable(getattr(state, field), name=f"state_{field}")

    _FIELDS = ("dataset", "scann_config", "serialized_partitioner", "datapoint_to_token", "ah_codebook",
               "hashed_dataset", "int8_dataset", "int8_multipliers", "dp_norms")

    def _create_resource(self, variables=None):
        from scann.scann_ops.py import scann_ops

        variables = variables or [getattr(self.state, f) for f in self._FIELDS]
        return scann_ops.tensors_to_scann(*variables)

    def _deserialization_dependencies(self, children):
        # Exported and restored before this resource (so the variables hold their values).
        return {f"state_{f}": getattr(self.state, f) for f in self._FIELDS}

    def _export_to_saved_model_graph(self, object_map, tensor_map, **unused_kwargs):
        # The base class calls _create_resource in the export graph, where the eager variables
        # cannot be read; read their export-graph copies (dependencies come first) instead.
        missing = [f for f in self._FIELDS if getattr(self.state, f) not in object_map]
        if missing:
            raise RuntimeError(f"ScaNN state variables {missing} were not exported before the searcher.")
        new_obj = copy.copy(self)
        with tf.device(self._resource_device):
            new_resource = new_obj._create_resource([object_map[getattr(self.state, f)] for f in self._FIELDS])
        new_obj._resource_handle = new_resource
        object_map[self] = new_obj
        tensor_map[self.resource_handle] = new_resource
        return [self.resource_handle]


class ScannRetrievalModule(tf.Module):
    """A ``scann.scann_ops`` searcher (saved as a TF resource) + gallery labels and ids."""

    def __init__(self, index: RetrievalIndex, k: int, params):
        super().__init__(name="scann_retrieval")
        scann = require_scann()
        self.k = int(min(k, len(index)))
        # Deep enough for k (reorder >= k, leaves holding >= k points): ScaNN pads short answers.
        n = len(index)
        pre_reorder, _ = search_depths(params, self.k, None, num_points=n)
        params = dataclasses.replace(params, reorder_k=pre_reorder)
        database = tf.constant(l2_normalize_np(index.embeddings))
        builder = scann.scann_ops.builder(database, self.k, "dot_product")
        searcher = configure_builder(builder, params).build()
        state = searcher.serialize_to_module()
        sizes = leaf_sizes(state.datapoint_to_token.numpy(), params.num_leaves)
        self.pre_reorder, self.leaves = search_depths(params, self.k, sizes, num_points=n)
        self.params = params
        self.searcher = _ScannSearcherResource(state)
        self.labels = tf.Variable(np.asarray(index.labels, np.int64), trainable=False, name="labels")
        self.ids = tf.Variable(np.asarray(index.ids, dtype=object).astype(bytes), trainable=False, name="ids")

    def search(self, embedding: tf.Tensor) -> dict:
        from scann.scann_ops.py import scann_ops

        queries = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-12)
        indices, scores = scann_ops.scann_search_batched(
            self.searcher.resource_handle, queries, self.k, self.pre_reorder, self.leaves, False
        )
        # Never serve padding (NaN scores): refuse instead (does not happen at these depths).
        check = tf.debugging.assert_all_finite(
            scores, f"ScaNN answered fewer than k={self.k} neighbours; export with a larger reorder_k")
        with tf.control_dependencies([check]):
            scores = tf.identity(scores)
        return _outputs(self, indices, scores)


def export_scann_retrieval_savedmodel(
    index: RetrievalIndex,
    base_dir: "str | os.PathLike",
    model_name: str,
    k: int = 10,
    version: Optional[int] = None,
    scann_params=None,
) -> pathlib.Path:
    """Writes a ScaNN-op retrieval SavedModel to ``<base>/<model_name>_retrieval_scann/<version>``.

    Loads only in a process that imported ``scann`` (custom ops); see the module docstring.
    Uses the index's ScaNN parameters, or :func:`choose_scann_params` for an exact index.
    """
    check_model_name(model_name)
    if scann_params is None:
        stored = index.manifest.get("scann_params")
        from dgml_tf.index.scann_index import ScannParams

        scann_params = ScannParams(**stored) if stored else choose_scann_params(len(index))
    module = ScannRetrievalModule(index, k, scann_params)

    @tf.function(input_signature=[tf.TensorSpec((None, index.embedding_dim), tf.float32,
                                                name=names.EMBEDDING_INPUT)])
    def search_embedding(embedding):
        return module.search(embedding)

    model_dir = pathlib.Path(base_dir) / f"{model_name}{SCANN_RETRIEVAL_SUFFIX}"
    version = resolve_version(model_dir, version)
    with staged_version_dir(model_dir, version) as staging:
        tf.saved_model.save(
            module, os.fspath(staging),
            signatures={names.SEARCH_SIGNATURE: search_embedding, names.SERVING_SIGNATURE: search_embedding},
        )
        write_export_metadata(
            staging,
            _retrieval_export_metadata(
                index, module.k, None, "scann", version, requires_custom_ops=["scann"],
                scann_params=module.params.to_dict(),
                search_depths={"pre_reorder_num_neighbors": module.pre_reorder,
                               "leaves_to_search": module.leaves}),
        )
    return model_dir / str(version)


def export_retrieval_models(
    index: RetrievalIndex,
    base_dir: "str | os.PathLike",
    model_name: str,
    embedder_dir: "str | os.PathLike",
    k: int = 10,
    scann: bool = False,
) -> dict:
    """Writes the retrieval SavedModels of ``index`` under ``base_dir`` and refreshes its configs.

    Args:
        index: the published index.
        base_dir: the TF Serving model base directory (beside the embedder's model).
        model_name: the embedder's served name; the models are ``<name>_retrieval`` (and
            ``<name>_retrieval_scann`` with ``scann``).
        embedder_dir: the embedder version the index was built with.
        k: neighbours returned.
        scann: also write the ScaNN-op SavedModel (loads only where ``scann`` is imported).

    Returns:
        ``{"exact": version dir, "scann": version dir (with scann), "configs": {name: path}}``.

    Example:
        >>> export_retrieval_models(load_index("idx"), "exports", "dgml", "exports/dgml/1")  # doctest: +SKIP
    """
    from dgml_tf.export.serving_configs import write_serving_configs

    written = {"exact": export_exact_retrieval_savedmodel(index, base_dir, model_name,
                                                          embedder_dir=embedder_dir, k=k)}
    if scann:
        written["scann"] = export_scann_retrieval_savedmodel(index, base_dir, model_name, k=k)
    written["configs"] = write_serving_configs(base_dir)
    return written
