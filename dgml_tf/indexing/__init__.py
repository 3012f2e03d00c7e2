"""Retrieval indexes over gallery embeddings: exact and ScaNN search, atomic publication.

Public API (used by the REST server)::

    from dgml_tf.indexing import load_index
    index = load_index(index_dir, expected_fingerprint=model_fingerprint(embedder_dir))
    indices, scores = index.search(queries, k=10)          # (Q, k) int64, (Q, k) float32
    indices, scores = index.search(queries, k=10, group=1) # group 1's slice only, exact
    index.ids, index.labels, index.paths, index.manifest, index.model_fingerprint

Modules: ``exact_index`` (brute force), ``scann_index`` (ScaNN parameters and searchers),
``manifest`` (``manifest.json``), ``publish`` (versioned directories + atomic ``CURRENT``),
``gallery`` (gallery sources and embedding them with an export), ``retrieval_index`` (build and
load), ``retrieval_savedmodel`` (top-k SavedModels for TF Serving), ``image_store`` (the items'
encoded images, optionally stored in a version for the explorer page).

Importing this package does not import TensorFlow; only embedding and the retrieval SavedModels do.
"""

from dgml_tf.indexing.exact_index import ExactSearcher, exact_top_k, l2_normalize
from dgml_tf.indexing.manifest import IndexFormatError, IndexModelMismatchError
from dgml_tf.indexing.retrieval_index import RetrievalIndex, build_index, load_index, recall_at_k
from dgml_tf.indexing.scann_index import ScannParams, choose_scann_params

__all__ = [
    "ExactSearcher",
    "IndexFormatError",
    "IndexModelMismatchError",
    "RetrievalIndex",
    "ScannParams",
    "build_index",
    "choose_scann_params",
    "exact_top_k",
    "l2_normalize",
    "load_index",
    "recall_at_k",
]
