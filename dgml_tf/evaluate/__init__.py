"""Retrieval evaluation of embeddings: Recall@K, MAP@R, R-precision and k-means NMI.

All metric entry points take NumPy arrays (or anything ``np.asarray`` accepts)::

    from dgml_tf.evaluate import evaluate_retrieval, recall_ks_for, format_table
    results = evaluate_retrieval(embeddings, labels, recall_ks=recall_ks_for("cub"))
    print(format_table(results))

Modules: ``neighbours`` (chunked exact top-k search, deterministic ties), ``ranking_metrics``
(per-query Recall / MAP@R / R-precision), ``clustering`` (k-means NMI), ``retrieval`` (the
metrics of one embedding), ``groups`` (per-group evaluation), ``recall_ks`` (per-dataset K
lists), ``embedding`` (a model over a dataset, one traced forward per model), ``protocol`` (a
trained run's evaluation: splits, embedding, the ``eval_<split>.json`` files;
:func:`evaluate_model`, :func:`evaluate_run`) and ``cli`` (``python -m dgml_tf.evaluate``).
:func:`format_table` lives in ``dgml_tf.results_table`` (the run summary uses it too).
"""

from dgml_tf._lazy import lazy_exports

# Lazy: ``python -m dgml_tf.evaluate`` imports this package before its CLI turns oneDNN on, and
# that must happen before TensorFlow is first imported (``neighbours`` imports it).
_EXPORTS = {
    "kmeans_nmi": "dgml_tf.evaluate.clustering",
    "evaluate_groups": "dgml_tf.evaluate.groups",
    "iter_neighbour_chunks": "dgml_tf.evaluate.neighbours",
    "nearest_neighbours": "dgml_tf.evaluate.neighbours",
    "average_precision_at_r": "dgml_tf.evaluate.ranking_metrics",
    "r_precision": "dgml_tf.evaluate.ranking_metrics",
    "recall_hits": "dgml_tf.evaluate.ranking_metrics",
    "DEFAULT_RECALL_KS": "dgml_tf.evaluate.recall_ks",
    "recall_ks_for": "dgml_tf.evaluate.recall_ks",
    "evaluate_retrieval": "dgml_tf.evaluate.retrieval",
    "evaluate_retrieval_per_class": "dgml_tf.evaluate.retrieval",
    "format_table": "dgml_tf.results_table",
    "embed_dataset": "dgml_tf.evaluate.embedding",
    "embed_records": "dgml_tf.evaluate.protocol",
    "embed_split": "dgml_tf.evaluate.protocol",
    "evaluate_embedded": "dgml_tf.evaluate.protocol",
    "evaluate_model": "dgml_tf.evaluate.protocol",
    "evaluate_per_class": "dgml_tf.evaluate.protocol",
    "evaluate_run": "dgml_tf.evaluate.protocol",
    "evaluation_config": "dgml_tf.evaluate.protocol",
    "evaluation_sets": "dgml_tf.evaluate.protocol",
    "group_embeddings_of": "dgml_tf.evaluate.protocol",
    "limit_per_class": "dgml_tf.evaluate.protocol",
    "load_run": "dgml_tf.evaluate.protocol",
    "locate_run": "dgml_tf.evaluate.protocol",
    "merged_config": "dgml_tf.evaluate.protocol",
    "write_per_class": "dgml_tf.evaluate.protocol",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
