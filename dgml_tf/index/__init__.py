"""Retrieval indexes over gallery embeddings: exact and ScaNN search, atomic publication.

Public API (used by the REST server)::

    from dgml_tf.index import load_index
    index = load_index(index_dir, expected_fingerprint=model_fingerprint(embedder_dir))
    indices, scores = index.search(queries, k=10)          # (Q, k) int64, (Q, k) float32
    indices, scores = index.search(queries, k=10, group=1) # group 1's slice only, exact
    index.ids, index.labels, index.paths, index.manifest, index.model_fingerprint

Modules: ``exact_index`` (brute force), ``scann_index`` (ScaNN parameters and searchers),
``manifest`` (``manifest.json``), ``publish`` (versioned directories + atomic ``CURRENT``),
``gallery`` (gallery sources, embedding them with an export, ``index_gallery``),
``retrieval_index`` (build and load), ``retrieval_savedmodel`` (top-k SavedModels for TF
Serving), ``image_store`` (the items' encoded images, optionally stored in a version for the
explorer page), ``cli`` (``python -m dgml_tf.index``).

Importing this package does not import TensorFlow; only embedding and the retrieval SavedModels do.
"""

from dgml_tf._lazy import lazy_exports

# Lazy (PEP 562): the server imports this package for ``load_index`` without TensorFlow, and
# ``python -m dgml_tf.index`` runs its CLI before anything heavy is imported.
_EXPORTS = {
    "ExactSearcher": "dgml_tf.index.exact_index",
    "exact_top_k": "dgml_tf.index.exact_index",
    "IndexFormatError": "dgml_tf.index.manifest",
    "IndexModelMismatchError": "dgml_tf.index.manifest",
    "RetrievalIndex": "dgml_tf.index.retrieval_index",
    "build_index": "dgml_tf.index.retrieval_index",
    "load_index": "dgml_tf.index.retrieval_index",
    "recall_at_k": "dgml_tf.index.retrieval_index",
    "ScannParams": "dgml_tf.index.scann_index",
    "choose_scann_params": "dgml_tf.index.scann_index",
    "GallerySource": "dgml_tf.index.gallery",
    "SavedModelEmbedder": "dgml_tf.index.gallery",
    "gallery_from_dataset": "dgml_tf.index.gallery",
    "gallery_from_folder": "dgml_tf.index.gallery",
    "index_gallery": "dgml_tf.index.gallery",
    "export_exact_retrieval_savedmodel": "dgml_tf.index.retrieval_savedmodel",
    "export_retrieval_models": "dgml_tf.index.retrieval_savedmodel",
    "export_scann_retrieval_savedmodel": "dgml_tf.index.retrieval_savedmodel",
    "run": "dgml_tf.index.cli",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
