"""Retrieval evaluation of embeddings: Recall@K, MAP@R, R-precision and k-means NMI.

All entry points take NumPy arrays (or anything ``np.asarray`` accepts)::

    from dgml_tf.evaluation import evaluate_retrieval, recall_ks_for, format_table
    results = evaluate_retrieval(embeddings, labels, recall_ks=recall_ks_for("cub"))
    print(format_table(results))

Modules: ``neighbours`` (chunked exact top-k search, deterministic ties), ``ranking_metrics``
(per-query Recall / MAP@R / R-precision), ``clustering`` (k-means NMI), ``retrieval`` (the
protocol), ``groups`` (per-group evaluation), ``recall_ks`` (per-dataset K lists), ``table``.
"""

from dgml_tf.evaluation.clustering import kmeans_nmi
from dgml_tf.evaluation.groups import evaluate_groups
from dgml_tf.evaluation.neighbours import iter_neighbour_chunks, nearest_neighbours
from dgml_tf.evaluation.ranking_metrics import average_precision_at_r, r_precision, recall_hits
from dgml_tf.evaluation.recall_ks import DEFAULT_RECALL_KS, recall_ks_for
from dgml_tf.evaluation.retrieval import evaluate_retrieval, evaluate_retrieval_per_class
from dgml_tf.evaluation.table import format_table

__all__ = [
    "DEFAULT_RECALL_KS",
    "average_precision_at_r",
    "evaluate_groups",
    "evaluate_retrieval",
    "evaluate_retrieval_per_class",
    "format_table",
    "iter_neighbour_chunks",
    "kmeans_nmi",
    "nearest_neighbours",
    "r_precision",
    "recall_hits",
    "recall_ks_for",
]
