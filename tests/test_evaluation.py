"""Tests of dgml_tf.evaluate against independent brute-force NumPy re-statements.

The brute force below builds the full similarity matrix in float64, ranks each row with
np.lexsort (score descending, then index ascending) and computes every metric with plain loops
from its textbook definition.
"""

import sys

import numpy as np
import pytest

from dgml_tf import evaluate as evaluation
from dgml_tf.evaluate import (
    average_precision_at_r,
    evaluate_groups,
    evaluate_retrieval,
    evaluate_retrieval_per_class,
    format_table,
    kmeans_nmi,
    nearest_neighbours,
    r_precision,
    recall_ks_for,
)


# ---------------------------------------------------------------- independent brute force
def brute_rankings(queries, gallery, metric, exclude_self):
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        sim = q @ g.T
    else:
        sim = -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    rankings = []
    for i in range(len(q)):
        order = np.lexsort((np.arange(len(g)), -sim[i]))  # last key is primary
        if exclude_self:
            order = order[order != i]
        rankings.append(order)
    return rankings


def brute_metrics(queries, q_labels, gallery, g_labels, ks, metric="cosine", exclude_self=False):
    rankings = brute_rankings(queries, gallery, metric, exclude_self)
    out = {f"recall@{k}": 0.0 for k in ks}
    aps, rps = [], []
    for i, order in enumerate(rankings):
        rel = [g_labels[j] == q_labels[i] for j in order]
        for k in ks:
            out[f"recall@{k}"] += float(any(rel[:k])) / len(rankings)
        r = sum(rel)
        if r == 0:
            continue
        found, total = 0, 0.0
        for rank in range(r):
            if rel[rank]:
                found += 1
                total += found / (rank + 1)
        aps.append(total / r)
        rps.append(sum(rel[:r]) / r)
    out["map@r"] = float(np.mean(aps))
    out["r_precision"] = float(np.mean(rps))
    out["num_queries_without_relevant"] = len(rankings) - len(aps)
    return out


def random_set(n, dim, num_classes, seed, singletons=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes + singletons, dim))
    labels = np.concatenate([rng.integers(0, num_classes, n - singletons),
                             num_classes + np.arange(singletons)])
    x = centres[labels] + 0.9 * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def assert_matches(result, expected):
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


# ---------------------------------------------------------------- per class
@pytest.mark.parametrize("chunk_size", [5, 1000])
def test_per_class_rows_match_brute_force_on_each_class_queries(chunk_size):
    """Each row is the brute-force metric of that class's queries against the whole gallery
    (self-retrieval), including singleton classes whose MAP@R is undefined."""
    x, y = random_set(47, 5, 6, seed=3, singletons=2)
    ks = (1, 4)
    rows = evaluate_retrieval_per_class(x, y, recall_ks=ks, chunk_size=chunk_size)
    assert list(rows) == sorted(set(y.tolist()))
    rankings = brute_rankings(x, x, "cosine", exclude_self=True)
    for label, row in rows.items():
        mine = np.flatnonzero(y == label)
        hits = [[any(y[j] == label for j in rankings[i][:k]) for k in ks] for i in mine]
        assert row["num_queries"] == len(mine)
        for col, k in enumerate(ks):
            assert row[f"recall@{k}"] == pytest.approx(np.mean([h[col] for h in hits]))
        if len(mine) == 1:
            assert row["num_queries_without_relevant"] == 1 and np.isnan(row["map@r"])
            continue
        r = len(mine) - 1
        aps = [sum((np.cumsum(rel) / np.arange(1, r + 1))[rel]) / r
               for rel in (np.array([y[j] == label for j in rankings[i][:r]]) for i in mine)]
        assert row["map@r"] == pytest.approx(np.mean(aps), abs=1e-12)


def test_per_class_rows_average_to_the_overall_metrics_query_vs_gallery():
    x, y = random_set(60, 4, 5, seed=4)
    gallery, g_labels, queries, q_labels = x[20:], y[20:], x[:20], y[:20]
    overall = evaluate_retrieval(gallery, g_labels, queries, q_labels, recall_ks=(1, 8),
                                 compute_nmi=False)
    rows = evaluate_retrieval_per_class(gallery, g_labels, queries, q_labels, recall_ks=(1, 8))
    counts = np.array([row["num_queries"] for row in rows.values()])
    assert counts.sum() == 20
    for key in ("recall@1", "recall@8", "map@r", "r_precision"):
        weighted = sum(row[key] * n for row, n in zip(rows.values(), counts)) / counts.sum()
        assert weighted == pytest.approx(overall[key], abs=1e-12), key


def test_per_class_hand_made():
    # Item 3 (class 1) sits next to class 0: its query finds item 1 first and misses; item 2's
    # nearest is item 3 (a hit); both class-0 queries find each other first.
    x = np.array([[1., 0.], [.9, .1], [0., 1.], [.7, .3]])
    rows = evaluate_retrieval_per_class(x, [0, 0, 1, 1], recall_ks=(1,))
    assert rows[0]["recall@1"] == 1.0 and rows[0]["map@r"] == 1.0
    assert rows[1]["recall@1"] == 0.5 and rows[1]["map@r"] == 0.5
    lines = format_table(rows, row_header="class").splitlines()
    assert lines[0].startswith("| class | recall@1 | map@r |")
    assert lines[3].startswith("| 1 | 50.00")


# ---------------------------------------------------------------- self-retrieval
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk_size", [7, 53, 1000])
def test_self_retrieval_matches_brute_force(metric, chunk_size):
    x, y = random_set(53, 6, 9, seed=1, singletons=3)
    ks = (1, 2, 4, 8, 16)
    result = evaluate_retrieval(x, y, recall_ks=ks, compute_nmi=False, metric=metric,
                                chunk_size=chunk_size)
    expected = brute_metrics(x, y, x, y, ks, metric=metric, exclude_self=True)
    assert_matches(result, expected)
    assert result["num_queries"] == 53
    assert result["num_queries_without_relevant"] == 3


def test_query_vs_gallery_matches_brute_force():
    x, y = random_set(70, 5, 8, seed=2)
    queries, q_labels = x[:25], y[:25].copy()
    gallery, g_labels = x[25:], y[25:]
    q_labels[0] = 99  # a query whose class is absent from the gallery
    ks = (1, 10, 20, 30, 40, 50)
    result = evaluate_retrieval(gallery, g_labels, queries, q_labels, recall_ks=ks,
                                compute_nmi=False, chunk_size=4)
    expected = brute_metrics(queries, q_labels, gallery, g_labels, ks, exclude_self=False)
    assert_matches(result, expected)
    assert result["num_queries"] == 25
    assert result["num_queries_without_relevant"] == 1


def test_query_identical_to_a_gallery_item_is_not_excluded():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = evaluate_retrieval(gallery, [0, 1], gallery[:1], [0], recall_ks=(1,),
                                compute_nmi=False)
    # In self-retrieval the identical item would be removed; in query-vs-gallery it is a hit.
    assert result["recall@1"] == 1.0
    assert result["map@r"] == 1.0


def test_recall_k_beyond_gallery_size_uses_whole_gallery():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [0.2, -1.0]])
    y = np.array([0, 1, 0, 2])
    result = evaluate_retrieval(x, y, recall_ks=(1, 100), compute_nmi=False)
    # item 3 (class 2) has no partner, all others have one somewhere in the 3 candidates.
    assert result["recall@100"] == pytest.approx(2 / 4)


# ---------------------------------------------------------------- ties
def test_exact_ties_are_broken_by_lower_index_for_every_chunk_size():
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(6, 4)).astype(np.float32)
    x = base[rng.integers(0, 6, size=31)]  # many exact duplicates -> exact ties
    x[np.all(x == 0, axis=1)] = 1.0
    expected = np.stack([r[:10] for r in brute_rankings(x, x, "euclidean", True)])
    for chunk_size in (1, 5, 31):
        indices, _ = nearest_neighbours(x, k=10, metric="euclidean", chunk_size=chunk_size)
        np.testing.assert_array_equal(indices, expected)


def test_tie_order_hand_made():
    gallery = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    indices, scores = nearest_neighbours([[1.0, 0.0]], gallery, k=4)
    assert indices.tolist() == [[1, 3, 0, 2]]
    np.testing.assert_allclose(scores, [[1.0, 1.0, 0.0, 0.0]], atol=1e-6)


def test_tie_at_recall_cutoff_counts_the_lower_index():
    # The query x[0] is equidistant from gallery items 0 (other class) and 1 (same class).
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    y = np.array([0, 1, 0, 2])
    result = evaluate_retrieval(x[1:], y[1:], x[:1], y[:1], recall_ks=(1, 2),
                                compute_nmi=False)
    assert result["recall@1"] == 0.0 and result["recall@2"] == 1.0
    # Same items, the same-class one first in the gallery: now it wins the tie.
    result_swapped = evaluate_retrieval(x[[2, 1, 3]], y[[2, 1, 3]], x[:1], y[:1],
                                        recall_ks=(1, 2), compute_nmi=False)
    assert result_swapped["recall@1"] == 1.0


# ---------------------------------------------------------------- metric options
def test_cosine_and_euclidean_rank_unit_vectors_identically():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos_idx, _ = nearest_neighbours(x, k=39, metric="cosine")
    euc_idx, _ = nearest_neighbours(x, k=39, metric="euclidean")
    np.testing.assert_array_equal(cos_idx, euc_idx)


def test_cosine_is_scale_invariant_and_euclidean_is_not():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 3))
    scaled = x * rng.uniform(0.1, 10.0, size=(20, 1))
    np.testing.assert_array_equal(nearest_neighbours(x, k=5)[0], nearest_neighbours(scaled, k=5)[0])
    assert not np.array_equal(nearest_neighbours(x, k=5, metric="euclidean")[0],
                              nearest_neighbours(scaled, k=5, metric="euclidean")[0])


def test_score_blocks_never_exceed_chunk_rows(monkeypatch):
    from dgml_tf.evaluate import neighbours

    shapes = []
    original = neighbours.similarity_scores

    def recording(q, g, metric, sq=None):
        shapes.append((int(q.shape[0]), int(g.shape[0])))
        return original(q, g, metric, sq)

    monkeypatch.setattr(neighbours, "similarity_scores", recording)
    x, y = random_set(50, 4, 5, seed=6)
    evaluate_retrieval(x, y, compute_nmi=False, chunk_size=8)
    assert max(rows for rows, _ in shapes) == 8
    assert sum(rows for rows, _ in shapes) == 50


# ---------------------------------------------------------------- MAP@R / R-precision
def test_map_at_r_musgrave_example():
    relevant = np.zeros((1, 10), bool)
    relevant[0, [0, 2]] = True  # relevant at ranks 1 and 3, R = 10
    assert average_precision_at_r(relevant, [10])[0] == pytest.approx((1 + 2 / 3) / 10)
    assert r_precision(relevant, [10])[0] == pytest.approx(2 / 10)


def test_map_at_r_ignores_hits_beyond_r():
    relevant = np.array([[False, True, True, True]])
    assert average_precision_at_r(relevant, [2])[0] == pytest.approx((1 / 2) / 2)
    assert r_precision(relevant, [2])[0] == pytest.approx(1 / 2)


def test_map_at_r_rejects_too_few_neighbours():
    with pytest.raises(ValueError, match="exceeds"):
        average_precision_at_r(np.ones((1, 3), bool), [5])


# ---------------------------------------------------------------- NMI
def test_nmi_of_perfect_clustering_is_one():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(5), 8)
    x = np.eye(5)[labels] * 10 + 0.01 * rng.normal(size=(40, 5))
    assert kmeans_nmi(x, labels, n_init=3, seed=0) == pytest.approx(1.0)
    result = evaluate_retrieval(x, labels, recall_ks=(1,), nmi_n_init=3)
    assert result["nmi"] == pytest.approx(1.0)


def test_nmi_of_unrelated_labels_is_low():
    rng = np.random.default_rng(8)
    x = np.eye(4)[np.repeat(np.arange(4), 25)] * 10 + 0.01 * rng.normal(size=(100, 4))
    labels = rng.permutation(np.repeat(np.arange(4), 25))
    assert kmeans_nmi(x, labels) < 0.2


def test_nmi_without_sklearn_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(ImportError, match=r"dgml-tf\[evaluation\]"):
        kmeans_nmi(np.eye(3), [0, 1, 2])


# ---------------------------------------------------------------- groups
def test_evaluate_groups_matches_brute_force_per_group_and_concatenation():
    rng = np.random.default_rng(9)
    labels = np.repeat(np.arange(6), 4)
    informative = np.eye(6)[labels] * 3 + 0.3 * rng.normal(size=(24, 6))
    noise = rng.normal(size=(24, 6))
    groups = np.stack([informative, noise], axis=1)
    groups /= np.linalg.norm(groups, axis=2, keepdims=True)  # unit group vectors, as the model
    results = evaluate_groups(groups, labels, recall_ks=(1, 2), compute_nmi=False, chunk_size=5)
    assert sorted(results) == ["concatenated", "group_0", "group_1"]
    assert results["group_0"]["recall@1"] == 1.0
    for name, x in (("concatenated", groups.reshape(24, -1)), ("group_0", groups[:, 0]),
                    ("group_1", groups[:, 1])):
        assert_matches(results[name], brute_metrics(x, labels, x, labels, (1, 2),
                                                    exclude_self=True))


def test_evaluate_groups_query_vs_gallery():
    rng = np.random.default_rng(10)
    gallery = rng.normal(size=(12, 3, 4))
    queries = rng.normal(size=(5, 3, 4))
    g_labels, q_labels = np.repeat(np.arange(4), 3), np.array([0, 1, 2, 3, 0])
    results = evaluate_groups(gallery, g_labels, queries, q_labels, recall_ks=(1, 3),
                              compute_nmi=False)
    expected = brute_metrics(queries[:, 2], q_labels, gallery[:, 2], g_labels, (1, 3))
    assert_matches(results["group_2"], expected)


def test_evaluate_groups_rejects_flat_embeddings():
    with pytest.raises(ValueError, match="num_groups"):
        evaluate_groups(np.zeros((4, 6)), [0, 0, 1, 1])


# ---------------------------------------------------------------- K lists, table, errors
def test_recall_ks_for_benchmarks():
    assert recall_ks_for("cub") == (1, 2, 4, 8)
    assert recall_ks_for("CUB-200-2011") == (1, 2, 4, 8)
    assert recall_ks_for("cars196") == (1, 2, 4, 8)
    assert recall_ks_for("sop") == (1, 10, 100, 1000)
    assert recall_ks_for("inshop") == (1, 10, 20, 30, 40, 50)
    assert recall_ks_for("glyphs") == (1, 2, 4, 8)


def test_format_table_flat_and_nested():
    flat = format_table({"nmi": 0.5, "recall@10": 0.25, "recall@2": 0.125, "num_queries": 8})
    lines = flat.splitlines()
    assert lines[0] == "| recall@2 | recall@10 | nmi | num_queries |"
    assert lines[2] == "| 12.50 | 25.00 | 50.00 | 8 |"
    nested = format_table({"concatenated": {"recall@1": 1.0}, "group_0": {"recall@1": 0.5}})
    assert nested.splitlines()[2:] == ["| concatenated | 100.00 |", "| group_0 | 50.00 |"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embeddings=np.zeros((3, 2, 2)), labels=[0, 1, 2]), "2-D"),
        (dict(embeddings=np.ones((3, 2)), labels=[0, 1]), "one label per embedding"),
        (dict(embeddings=np.ones((3, 2)), labels=[0.5, 1, 2]), "integer"),
        (dict(embeddings=np.array([[np.nan, 1], [1, 1]]), labels=[0, 1]), "NaN"),
        (dict(embeddings=np.array([[0.0, 0], [1, 1]]), labels=[0, 1]), "all-zero"),
        (dict(embeddings=np.ones((3, 2)), labels=[0, 1, 2], metric="dot"), "Unknown metric"),
        (dict(embeddings=np.ones((3, 2)), labels=[0, 1, 2], recall_ks=(0,)), "positive"),
        (dict(embeddings=np.ones((3, 2)), labels=[0, 1, 2], chunk_size=0), "chunk_size"),
        (dict(embeddings=np.ones((3, 2)), labels=[0, 1, 2], query_embeddings=np.ones((1, 2))),
         "query_labels"),
        (dict(embeddings=np.ones((3, 2)), labels=[0, 1, 2], query_embeddings=np.ones((1, 3)),
              query_labels=[0]), "dimension"),
        (dict(embeddings=np.ones((1, 2)), labels=[0]), "at least 2 items"),
    ],
)
def test_bad_inputs_get_clear_errors(kwargs, message):
    kwargs.setdefault("compute_nmi", False)
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(**kwargs)


def test_public_api_is_exported():
    for name in evaluation.__all__:
        assert hasattr(evaluation, name)
