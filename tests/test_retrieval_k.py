"""Correct neighbours for every k: exact and ScaNN indexes, through the index API, the retrieval
servable (the REST model) and the ScaNN-op retrieval SavedModel; held-out recall@10 in the
manifest; server-side paths only with ``expose_paths``.

References are NumPy brute force over the same unit vectors, never the index code. The gallery
(2,500 points, 40 clusters on the 30-d sphere) is large enough that ScaNN's default reorder depth
(100) pads answers for k > 100, which the first test shows on the raw searcher.
"""

from __future__ import annotations

import numpy as np
import pytest

from dgml_tf.index import build_index, choose_scann_params, load_index
from serving.embedders import Embedder
from serving.errors import ServingError
from serving.retrieval_servable import RetrievalServable
from serving.signature_defs import make_signature_def, tensor_info

N, D, GROUPS = 2500, 30, 3
KS = (1, 10, 100, 101, 500, N)
FINGERPRINT = "k/k/k/k"
MIN_RECALL = {"exact": 1.0, "scann_ah": 0.95, "scann_tree": 0.9}


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, D))
    gallery = unit(centres[rng.integers(0, 40, N)] + 0.5 * rng.standard_normal((N, D)))
    # Queries drawn like the gallery but not in it.
    queries = unit(centres[rng.integers(0, 40, 24)] + 0.5 * rng.standard_normal((24, D)))
    similarity = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-similarity, axis=1, kind="stable")
    return gallery, queries, similarity, order


@pytest.fixture(scope="module")
def indexes(data, tmp_path_factory):
    gallery = data[0]
    root = tmp_path_factory.mktemp("indexes")
    paths = [f"/srv/gallery/{i}.png" for i in range(N)]
    built = {}
    for name, backend, params in [
        ("exact", "exact", None),
        ("scann_ah", "scann", choose_scann_params(N)),
        ("scann_tree", "scann", choose_scann_params(N, partition=True)),
    ]:
        build_index(root / name, gallery, FINGERPRINT, ids=[f"item/{i}" for i in range(N)],
                    labels=np.arange(N) % 7, paths=paths, num_groups=GROUPS, backend=backend,
                    scann_params=params)
        built[name] = load_index(root / name)
    return built


def check_rows(indices, scores, similarity, order, k, min_recall):
    """k distinct in-range ids, finite descending scores equal to their cosine, recall vs numpy."""
    indices, scores = np.asarray(indices), np.asarray(scores)
    assert indices.shape == scores.shape == (similarity.shape[0], k)
    for row, row_scores in zip(indices, scores):  # noqa: B007 (scores checked below)
        assert len(set(row.tolist())) == k
        assert row.min() >= 0 and row.max() < N
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, np.take_along_axis(similarity, indices, axis=1), atol=1e-4)
    recall = np.mean([len(set(a.tolist()) & set(e[:k].tolist())) / k for a, e in zip(indices, order)])
    assert recall >= min_recall, (k, recall)
    if k == N:
        np.testing.assert_array_equal(np.sort(indices, axis=1), np.tile(np.arange(N), (len(indices), 1)))
    return recall


def test_raw_scann_pads_beyond_its_reorder_depth(indexes, data):
    # What the index guards against: the stored searcher, searched naively, repeats ids with NaN.
    searcher = indexes["scann_ah"]._scann
    indices, scores = searcher.search_batched(data[1], final_num_neighbors=500)
    assert len(set(indices[0].tolist())) < 500 and np.isnan(scores).any()


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("name", ["exact", "scann_ah", "scann_tree"])
def test_index_search_returns_k_distinct_sorted_neighbours(indexes, data, name, k):
    _, queries, similarity, order = data
    indices, scores = indexes[name].search(queries, k)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    check_rows(indices, scores, similarity, order, k, MIN_RECALL[name])
    if name == "exact" and k < N:
        np.testing.assert_array_equal(indices, order[:, :k])


class VectorEmbedder(Embedder):
    """The embedder side of the servable; only its embedding size matters for embedding queries."""

    version = 1

    @property
    def image_signature(self):
        return make_signature_def(
            {"image_bytes": tensor_info("image_bytes", "DT_STRING", [-1])},
            {"embedding": tensor_info("embedding", "DT_FLOAT", [-1, D])},
        )

    def embed_images(self, image_bytes):
        raise AssertionError("embedding queries never embed images")


def search(servable, queries, **options):
    return servable.run("search_embedding", {"embedding": queries}, options)


@pytest.mark.parametrize("name", ["exact", "scann_ah", "scann_tree"])
def test_servable_returns_k_distinct_sorted_neighbours(indexes, data, name):
    _, queries, similarity, order = data
    servable = RetrievalServable("m_retrieval", VectorEmbedder(), indexes[name])
    for k in KS:
        out = search(servable, queries, k=k)
        indices = np.vectorize(lambda s: int(s.split("/")[1]))(out["ids"])
        check_rows(indices, out["scores"], similarity, order, k, MIN_RECALL[name])
        np.testing.assert_array_equal(out["labels"], indices % 7)
    # Above the gallery size: the whole gallery, ranked (the documented cap).
    out = search(servable, queries[:2], k=N + 100)
    assert out["ids"].shape == (2, N) and len(set(out["ids"][0].tolist())) == N


def test_servable_refuses_bad_k_and_group_with_the_limit(indexes, data):
    servable = RetrievalServable("m_retrieval", VectorEmbedder(), indexes["scann_ah"], max_k=1000,
                                 max_results=5000)
    queries = data[1][:3]
    for k in (0, -1, 2.5, "10", True, None, [3]):
        with pytest.raises(ServingError) as error:
            search(servable, queries, k=k)
        assert error.value.code == "INVALID_ARGUMENT" and error.value.http_status == 400
        assert f"gallery size {N}" in error.value.message
    with pytest.raises(ServingError, match="limit of 1000") as error:
        search(servable, queries, k=1001)
    assert error.value.http_status == 400
    assert search(servable, queries, k=1000)["ids"].shape == (3, 1000)
    with pytest.raises(ServingError, match="limit of 5000 per request"):
        search(servable, data[1][:6], k=1000)
    for group in (-1, GROUPS, 1.0, "0"):
        with pytest.raises(ServingError, match=r"\[0, 2\]"):
            search(servable, queries, k=3, group=group)
    with pytest.raises(ServingError, match="NaN or Infinity"):
        search(servable, np.full((1, D), np.nan, np.float32), k=3)


def test_group_search_for_every_k_equals_numpy(indexes, data):
    gallery, queries = data[0], data[1][:5]
    d = D // GROUPS
    for group in range(GROUPS):
        sl = slice(group * d, (group + 1) * d)
        similarity = unit(queries[:, sl]).astype(np.float64) @ unit(gallery[:, sl]).astype(np.float64).T
        order = np.argsort(-similarity, axis=1, kind="stable")
        for k in (1, 101, N):
            indices, scores = indexes["scann_tree"].search(queries, k, group=group)
            check_rows(indices, scores, similarity, order, k, 1.0)


def test_manifest_recall_uses_held_out_queries(indexes, data):
    gallery, queries, similarity, order = data
    for name in ("scann_ah", "scann_tree"):
        recall = indexes[name].manifest["recall_at_10"]
        assert recall["queries"] == "held_out" and recall["k"] == 10
        assert recall["num_queries"] == 625 and recall["gallery_items"] == N - 625
        # Queries in the gallery would find themselves: the held-out figure is an honest one,
        # close to the recall of fresh queries against the served index.
        found = indexes[name].search(queries, 10)[0]
        fresh = np.mean([len(set(a.tolist()) & set(e[:10].tolist())) / 10 for a, e in zip(found, order)])
        assert 0.0 < recall["value"] <= 1.0 and abs(recall["value"] - fresh) < 0.1
    assert indexes["exact"].manifest["recall_at_10"] is None


def test_paths_only_with_expose_paths(indexes, data, tmp_path):
    queries = data[1][:2]
    hidden = RetrievalServable("m_retrieval", VectorEmbedder(), indexes["exact"])
    assert indexes["exact"].manifest["expose_paths"] is False
    out = search(hidden, queries, k=4)
    assert out["paths"].shape == (2, 4) and set(out["paths"].ravel().tolist()) == {""}
    assert "paths" in hidden.signature_defs["search_embedding"].outputs  # same signature

    build_index(tmp_path / "exposed", data[0][:50], FINGERPRINT, paths=[f"/srv/{i}.png" for i in range(50)],
                num_groups=GROUPS, backend="exact", expose_paths=True)
    exposed_index = load_index(tmp_path / "exposed")
    assert exposed_index.manifest["expose_paths"] is True
    out = search(RetrievalServable("m_retrieval", VectorEmbedder(), exposed_index), queries, k=4)
    expected = np.argsort(-(queries @ data[0][:50].T), axis=1, kind="stable")[:, :4]
    assert out["paths"].tolist() == [[f"/srv/{i}.png" for i in row] for row in expected]


@pytest.mark.parametrize("k", [101, 500, N])
def test_scann_op_savedmodel_returns_k_distinct_neighbours(indexes, data, tmp_path, k):
    import tensorflow as tf

    from dgml_tf.index.retrieval_savedmodel import export_scann_retrieval_savedmodel

    _, queries, similarity, order = data
    path = export_scann_retrieval_savedmodel(indexes["scann_tree"], tmp_path, "m", k=k)
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["search_embedding"](embedding=tf.constant(queries))
    indices = out["indices"].numpy().astype(np.int64)
    check_rows(indices, out["scores"].numpy(), similarity, order, k, MIN_RECALL["scann_tree"])
    assert [i.decode() for i in out["ids"].numpy()[0]] == [f"item/{i}" for i in indices[0]]


def test_index_refuses_bad_k_and_non_finite_queries(indexes, data):
    queries = data[1][:2]
    for name in ("exact", "scann_ah"):
        for k in (0, N + 1, 2.5, True):
            with pytest.raises(ValueError, match=f"between 1 and the gallery size {N}"):
                indexes[name].search(queries, k)
        with pytest.raises(ValueError, match="NaN or Inf"):
            indexes[name].search(np.full((1, D), np.inf, np.float32), 3)
