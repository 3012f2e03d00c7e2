"""The retrieval index: build (embeddings -> published index version) and load (-> searcher).

Similarity is cosine: full embeddings are L2-normalised before indexing (for attentive grouping,
a concatenation of K unit vectors, this only divides by sqrt(K)), and a per-group search
normalises that group's d-dim slice of both queries and gallery.

Every search returns exactly k distinct items with finite scores, best first, for any k from 1
to the gallery size: ScaNN searches are made deep enough for k
(:func:`dgml_tf.index.scann_index.search_depths`) and any row ScaNN still answers short
(padding) is recomputed exactly, never returned.

ScaNN's recall@10 in the manifest is measured with held-out queries: a random sample of the
gallery (a quarter at most) is left out of a second searcher built with the same parameters on
the rest, and that searcher's answers for the held-out items are compared with exact search over
the same rest. Queries are never points of the searched gallery (which would score themselves
first and inflate recall).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import tempfile
import time
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

from dgml_tf.index import manifest as files
from dgml_tf.distances import l2_normalize_np
from dgml_tf.index.exact_index import ExactSearcher, exact_top_k
from dgml_tf.index.image_store import IMAGES_FILE, OFFSETS_FILE, ImageStore, write_image_store
from dgml_tf.index.manifest import IndexFormatError, IndexModelMismatchError, read_manifest
from dgml_tf.index.publish import current_version_dir, staged_index_version
from dgml_tf.index.scann_index import (
    BRUTE_FORCE_BELOW,
    ScannParams,
    build_scann_searcher,
    choose_scann_params,
    leaf_sizes_from_dir,
    load_scann_searcher,
    save_scann_searcher,
    scann_search,
    valid_rows,
)

LOG = logging.getLogger(__name__)

RECALL_K = 10
RECALL_QUERIES = 1000
BACKENDS = ("auto", "scann", "exact")


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of ``exact`` (Q, k) found in the same row of ``approximate``."""
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact, strict=False)]
    return float(np.sum(hits) / exact.size)


class RetrievalIndex:
    """A loaded index: gallery metadata, embeddings and a searcher.

    Attributes:
        ids: list of item ids (str).
        labels: int64 (N,) class labels.
        paths: list of image paths ("" for in-memory images), server-side data: serve them only
            when ``expose_paths`` is True.
        expose_paths: the index was built with ``expose_paths=True`` (``--expose_paths``):
            clients may see the gallery's file paths. False for indexes built before the flag.
        images: an :class:`~dgml_tf.index.image_store.ImageStore` of the items' encoded
            images when built with ``images=`` (``--store_images``), else None.
        manifest: the version's ``manifest.json`` as a dict.
        embedding_dim, num_groups, group_dim: D, K, d.
        model_fingerprint: SavedModel fingerprint of the embedder that made the embeddings.
        embeddings: raw (N, D) float32 embeddings as produced by the model.
        version_dir: the loaded version directory.
    """

    def __init__(self, version_dir: str, manifest: Dict[str, Any]):
        self.version_dir = version_dir
        self.manifest = manifest
        self.embedding_dim = int(manifest["embedding_dim"])
        self.num_groups = int(manifest["num_groups"])
        self.group_dim = int(manifest["group_dim"])
        self.model_fingerprint = str(manifest["model_fingerprint"])
        self.backend = manifest["backend"]
        try:
            self.embeddings = np.load(os.path.join(version_dir, files.EMBEDDINGS_FILE))
            self.labels = np.load(os.path.join(version_dir, files.LABELS_FILE))
            with open(os.path.join(version_dir, files.IDS_FILE), encoding="utf-8") as f:
                self.ids = json.load(f)
            with open(os.path.join(version_dir, files.PATHS_FILE), encoding="utf-8") as f:
                self.paths = json.load(f)
        except FileNotFoundError as error:
            raise IndexFormatError(f"Index version {version_dir} is incomplete: {error}") from error
        n = self.embeddings.shape[0]
        if not (len(self.ids) == len(self.paths) == self.labels.shape[0] == n == manifest["num_items"]):
            raise IndexFormatError(f"Index version {version_dir}: item counts disagree; rebuild it.")
        self._normalized = l2_normalize_np(self.embeddings)
        self._exact = ExactSearcher(self._normalized)
        self._group_cache: Dict[int, np.ndarray] = {}
        self.expose_paths = bool(manifest.get("expose_paths", False))
        # The gallery's encoded images when built with images= (else None).
        self.images = None
        if manifest.get("images"):
            try:
                self.images = ImageStore(version_dir, n)
            except (OSError, ValueError) as error:
                raise IndexFormatError(f"Index version {version_dir}: unreadable images: {error}") from error
        self._scann = None
        self._scann_params = None
        self._leaf_sizes = None
        if self.backend == "scann":
            scann_dir = os.path.join(version_dir, files.SCANN_DIR)
            self._scann = load_scann_searcher(scann_dir)
            self._scann_params = ScannParams(**(manifest.get("scann_params") or {}))
            self._leaf_sizes = leaf_sizes_from_dir(scann_dir, self._scann_params.num_leaves)

    def __len__(self) -> int:
        return len(self.ids)

    def _check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embedding_dim:
            raise ValueError(
                f"queries must have shape (Q, {self.embedding_dim}) (the index's embedding dim), "
                f"got {queries.shape}. Embed queries with the model version the index was built "
                f"with (fingerprint {self.model_fingerprint})."
            )
        if not np.all(np.isfinite(queries)):
            raise ValueError("queries contain NaN or Inf; embed them again (check the model).")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self):
            raise ValueError(f"k must be an integer between 1 and the gallery size {len(self)}, got {k!r}.")
        return queries

    def group_embeddings(self, group: int) -> np.ndarray:
        """Normalised (N, d) slice of group ``group`` of the gallery."""
        if group not in self._group_cache:
            start = group * self.group_dim
            self._group_cache[group] = l2_normalize_np(self.embeddings[:, start : start + self.group_dim])
        return self._group_cache[group]

    def search(self, queries: np.ndarray, k: int, group: Optional[int] = None) -> tuple:
        """The ``k`` most similar gallery items of each query, best first.

        Args:
            queries: (Q, D) embeddings from the same model version.
            k: number of neighbours (1..N).
            group: None searches full embeddings (ScaNN when the index has it, else exact);
                ``g`` searches group g's d-dim slice only, exactly, on normalised slices.

        Returns:
            ``(indices int64 (Q, k), scores float32 (Q, k))``; scores are cosine similarities.
        """
        queries = self._check_queries(queries, k)
        if group is not None:
            if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group < self.num_groups:
                raise ValueError(f"group must be an integer in 0..{self.num_groups - 1} or None, got {group!r}.")
            start = int(group) * self.group_dim
            return exact_top_k(
                l2_normalize_np(queries[:, start : start + self.group_dim]), self.group_embeddings(int(group)), k
            )
        normalized = l2_normalize_np(queries)
        if self._scann is None:
            return self._exact.search(normalized, k)
        indices, scores = scann_search(self._scann, normalized, int(k), self._scann_params,
                                       self._leaf_sizes, num_points=len(self))
        bad = ~valid_rows(indices, scores, len(self))
        if np.any(bad):
            # Should not happen with search_depths; a short (padded) answer is never returned.
            LOG.warning("ScaNN answered %d of %d queries with fewer than k=%d distinct neighbours; "
                        "searching those exactly", int(bad.sum()), len(bad), k)
            indices[bad], scores[bad] = self._exact.search(normalized[bad], k)
        return indices, scores

    def search_exact(self, queries: np.ndarray, k: int) -> tuple:
        """Exact search over full embeddings, whatever the backend."""
        return self._exact.search(l2_normalize_np(self._check_queries(queries, k)), k)


def _resolve_version_dir(index_dir: "str | os.PathLike") -> str:
    index_dir = os.fspath(index_dir)
    if os.path.isfile(os.path.join(index_dir, files.MANIFEST_FILE)):
        return index_dir  # a version directory itself
    version = current_version_dir(index_dir)
    if version is None:
        raise IndexFormatError(
            f"{index_dir!r} holds no published index (no CURRENT pointer, no manifest.json). "
            "Build one with `python -m dgml_tf.index --index_dir=...`."
        )
    return os.fspath(version)


def load_index(index_dir: "str | os.PathLike", expected_fingerprint: Optional[str] = None) -> RetrievalIndex:
    """Loads the live version of an index directory.

    Args:
        index_dir: an index directory (its ``CURRENT`` version is loaded) or one version dir.
        expected_fingerprint: the fingerprint of the embedder version that will embed queries
            (``dgml_tf.export.model_fingerprint(version_dir)``); a different one is refused.

    Raises:
        IndexModelMismatchError: the index was built by another model version.
        IndexFormatError: nothing published, or files missing.

    Example:
        >>> index = load_index("indexes/fmnist", model_fingerprint("exports/dgml/3"))  # doctest: +SKIP
        >>> indices, scores = index.search(query_embeddings, k=10)  # doctest: +SKIP
    """
    version_dir = _resolve_version_dir(index_dir)
    manifest = read_manifest(version_dir)
    if expected_fingerprint is not None and manifest["model_fingerprint"] != expected_fingerprint:
        raise IndexModelMismatchError(
            f"The index at {version_dir} was built with embeddings of model fingerprint "
            f"{manifest['model_fingerprint']} (from {manifest.get('model_dir')}), but the model "
            f"in use has fingerprint {expected_fingerprint}. Embeddings of different model "
            "versions are not comparable: rebuild the index with this model "
            "(`python -m dgml_tf.index --saved_model=<this version dir> ...`) or serve the "
            "model version the index was built with."
        )
    return RetrievalIndex(version_dir, manifest)


def _params_for(params: ScannParams, num_points: int) -> ScannParams:
    """``params`` shrunk to fit ``num_points`` (the measurement searcher has fewer points)."""
    if params.num_leaves is None:
        return params
    num_leaves = min(params.num_leaves, num_points)
    return dataclasses.replace(
        params, num_leaves=num_leaves,
        num_leaves_to_search=min(params.num_leaves_to_search, num_leaves),
        training_sample_size=max(num_leaves, min(params.training_sample_size, num_points)),
    )


def held_out_recall(normalized: np.ndarray, params: ScannParams, recall_queries: int = RECALL_QUERIES,
                    seed: int = 0, k: int = RECALL_K) -> Optional[Dict[str, Any]]:
    """ScaNN's recall@k with queries held out of the searched gallery.

    ``min(recall_queries, N // 4)`` random rows of ``normalized`` are left out; a searcher with
    ``params`` is built on the others and searched (as served: :func:`scann_search`) with the
    held-out rows; its answers are compared with exact search over the same others. Padded
    (short) answers count as misses.

    Returns:
        ``{"value", "num_queries", "k", "queries": "held_out", "gallery_items"}``, or None when
        the gallery is too small to hold anything out (N < 4).

    Example:
        >>> held_out_recall(l2_normalize_np(np.random.rand(4000, 16)), choose_scann_params(4000))["num_queries"]  # doctest: +SKIP
        1000
    """
    n = normalized.shape[0]
    held = min(int(recall_queries), n // 4)
    if held < 1 or n - held < 2:
        return None
    sample = np.random.default_rng(seed).choice(n, size=held, replace=False)
    rest_mask = np.ones(n, bool)
    rest_mask[sample] = False
    rest, queries = normalized[rest_mask], normalized[sample]
    measured = _params_for(params, rest.shape[0])
    k = min(k, rest.shape[0])
    searcher = build_scann_searcher(rest, measured, num_neighbors=k)
    sizes = None
    if measured.num_leaves is not None:
        with tempfile.TemporaryDirectory(prefix="dgml-recall-") as scratch:
            save_scann_searcher(searcher, scratch)
            sizes = leaf_sizes_from_dir(scratch, measured.num_leaves)
    approx, _ = scann_search(searcher, queries, k, measured, sizes, num_points=rest.shape[0])
    exact, _ = exact_top_k(queries, rest, k)
    return {"value": recall_at_k(approx, exact), "num_queries": int(held), "k": int(k),
            "queries": "held_out", "gallery_items": int(rest.shape[0])}


def build_index(
    index_dir: "str | os.PathLike",
    embeddings: np.ndarray,
    model_fingerprint: str,
    ids: Optional[Sequence[str]] = None,
    labels: Optional[Sequence[int]] = None,
    paths: Optional[Sequence[str]] = None,
    num_groups: int = 1,
    backend: str = "auto",
    exact_below: int = BRUTE_FORCE_BELOW,
    scann_params: Optional[ScannParams] = None,
    recall_queries: int = RECALL_QUERIES,
    model_dir: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    expose_paths: bool = False,
    images: Optional[Iterable[bytes]] = None,
) -> str:
    """Builds an index version from embeddings and publishes it atomically.

    Args:
        index_dir: the index directory (created if needed).
        embeddings: (N, D) float32 embeddings as produced by the model (K groups of d dims).
        model_fingerprint: fingerprint of the embedder SavedModel that produced them.
        ids, labels, paths: per-item metadata (defaults: "0".."N-1", -1, "").
        num_groups: K; D must be divisible by K.
        backend: "exact", "scann", or "auto" (exact below ``exact_below`` items, else ScaNN).
        exact_below: gallery size under which "auto" uses exact search (ScaNN's guidance: 20k).
        scann_params: ScaNN parameters; default :func:`choose_scann_params` for N.
        recall_queries: gallery items (random sample, at most a quarter of N) held out of a
            measurement searcher built with the same parameters, then used as its queries to
            measure ScaNN's recall@10 against exact search (module docstring).
        model_dir: the embedder version directory, recorded in the manifest.
        extra: more JSON-serialisable manifest entries.
        seed: seeds the recall sample.
        expose_paths: let the retrieval model return ``paths`` to clients (recorded in the
            manifest); by default they stay server-side and clients get empty strings.
        images: each item's encoded image, in item order (an iterable, streamed), stored in the
            version (:mod:`dgml_tf.index.image_store`) so a server can show neighbours.

    Returns:
        The published version directory.
    """
    started = time.perf_counter()
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array, got shape {embeddings.shape}.")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or Inf; check the model before indexing.")
    n, dim = embeddings.shape
    if num_groups < 1 or dim % num_groups:
        raise ValueError(f"embedding dim {dim} is not divisible by num_groups={num_groups}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if not model_fingerprint:
        raise ValueError("model_fingerprint is required (dgml_tf.export.model_fingerprint(version_dir)).")
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    labels = np.asarray(labels if labels is not None else np.full(n, -1), np.int64)
    paths = [str(p) for p in (paths if paths is not None else [""] * n)]
    if not (len(ids) == labels.shape[0] == len(paths) == n):
        raise ValueError(f"ids ({len(ids)}), labels ({labels.shape[0]}), paths ({len(paths)}) and "
                         f"embeddings ({n}) must have the same length.")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique.")
    if backend == "auto":
        backend = "exact" if n < exact_below else "scann"

    normalized = l2_normalize_np(embeddings)
    recall = None
    searcher = None
    if backend == "scann":
        params = scann_params or choose_scann_params(n)
        params.validate(n)
        searcher = build_scann_searcher(normalized, params, num_neighbors=RECALL_K)
        recall = held_out_recall(normalized, params, recall_queries, seed)

    with staged_index_version(index_dir) as staging:
        np.save(os.path.join(staging, files.EMBEDDINGS_FILE), embeddings)
        np.save(os.path.join(staging, files.LABELS_FILE), labels)
        with open(os.path.join(staging, files.IDS_FILE), "w", encoding="utf-8") as f:
            json.dump(ids, f)
        with open(os.path.join(staging, files.PATHS_FILE), "w", encoding="utf-8") as f:
            json.dump(paths, f)
        if searcher is not None:
            save_scann_searcher(searcher, os.path.join(staging, files.SCANN_DIR))
        stored = images is not None
        if stored and write_image_store(staging, images) != n:
            raise ValueError(f"images: got a different number of images than the {n} items.")
        files.write_manifest(
            staging,
            {
                "format_version": files.FORMAT_VERSION,
                "num_items": n,
                "embedding_dim": dim,
                "num_groups": num_groups,
                "group_dim": dim // num_groups,
                "model_fingerprint": model_fingerprint,
                "model_dir": model_dir,
                "backend": backend,
                "scann_params": params.to_dict() if searcher is not None else None,
                "similarity": "cosine",
                "recall_at_10": recall,
                "expose_paths": bool(expose_paths),
                "images": stored,
                "build_seconds": round(time.perf_counter() - started, 3),
                "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "files": [files.EMBEDDINGS_FILE, files.LABELS_FILE, files.IDS_FILE, files.PATHS_FILE]
                + ([files.SCANN_DIR] if searcher is not None else [])
                + ([IMAGES_FILE, OFFSETS_FILE] if stored else []),
                "extra": extra or {},
            },
        )
        version_dir = staging.name
    return os.path.join(os.fspath(index_dir), "versions", version_dir.split(".tmp-")[0])
