"""Tests of dgml_tf.index and the dgml_tf.index CLI: exact and ScaNN search, manifests,
fingerprint checks, crash-safe publication, and the retrieval SavedModels.

Reference results come from NumPy (argsort of cosine similarities), never from the index code.
Embeddings are real data: PCA projections of Fashion-MNIST pixels, or a tiny exported embedder's
embeddings of Fashion-MNIST images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dgml_tf.index import (
    IndexModelMismatchError, build_index, choose_scann_params, load_index,
)
from dgml_tf.index.publish import POINTER_FILE, VERSIONS_DIR
from test_export import FASHION_MNIST, RESIZE, SIZE, fashion_mnist_images, png_bytes, tiny_embedder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINT = "1/2/3/4"


def normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top_k(queries, gallery, k):
    """Indices and cosine scores of the k most similar gallery rows, by a full argsort."""
    similarity = normalize(queries.astype(np.float64)) @ normalize(gallery.astype(np.float64)).T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


@pytest.fixture(scope="module")
def pca_embeddings():
    """(4000, 48) PCA projections of real Fashion-MNIST images (3 groups of 16 dims)."""
    pixels = fashion_mnist_images(4000).reshape(4000, -1).astype(np.float64) / 255.0
    centred = pixels - pixels.mean(axis=0)
    _, _, components = np.linalg.svd(centred[:2000], full_matrices=False)
    return (centred @ components[:48].T).astype(np.float32)


def test_exact_search_equals_numpy_argsort(pca_embeddings, tmp_path):
    gallery, queries = pca_embeddings[:600], pca_embeddings[3900:3920]
    build_index(tmp_path / "idx", gallery, FINGERPRINT, num_groups=3, backend="exact")
    index = load_index(tmp_path / "idx")
    indices, scores = index.search(queries, k=7)
    expected_indices, expected_scores = numpy_top_k(queries, gallery, 7)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    # k equal to the gallery size returns a full ranking.
    full, _ = index.search(queries[:2], k=600)
    np.testing.assert_array_equal(np.sort(full, axis=1), np.tile(np.arange(600), (2, 1)))


def test_group_search_uses_only_that_groups_normalised_slice(pca_embeddings, tmp_path):
    gallery, queries = pca_embeddings[:600], pca_embeddings[3900:3910]
    build_index(tmp_path / "idx", gallery, FINGERPRINT, num_groups=3, backend="exact")
    index = load_index(tmp_path / "idx")
    assert (index.num_groups, index.group_dim, index.embedding_dim) == (3, 16, 48)
    for group in range(3):
        columns = slice(16 * group, 16 * (group + 1))
        indices, scores = index.search(queries, k=5, group=group)
        expected_indices, expected_scores = numpy_top_k(queries[:, columns], gallery[:, columns], 5)
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    # Changing another group's dims of the queries does not change a group search.
    shuffled = queries.copy()
    shuffled[:, 32:] = shuffled[::-1, 32:]
    np.testing.assert_array_equal(index.search(shuffled, 5, group=0)[0], index.search(queries, 5, group=0)[0])


@pytest.mark.parametrize("partition", [False, True], ids=["ah_reorder", "tree_ah_reorder"])
def test_scann_recall_and_manifest(pca_embeddings, tmp_path, partition):
    # partition=False is ScaNN's guidance below 100k points; True forces the tree used above it.
    params = choose_scann_params(len(pca_embeddings), partition=partition)
    if partition:
        assert params.num_leaves == round(np.sqrt(4000))  # ScaNN's sqrt(N) guidance
    build_index(tmp_path / "idx", pca_embeddings, FINGERPRINT, num_groups=3, backend="scann",
                scann_params=params, model_dir="/exports/dgml/7", ids=[f"t10k/{i}" for i in range(4000)],
                labels=np.arange(4000) % 10)
    index = load_index(tmp_path / "idx", expected_fingerprint=FINGERPRINT)
    manifest = index.manifest
    assert manifest["backend"] == "scann" and manifest["num_items"] == 4000
    assert manifest["scann_params"]["num_leaves"] == params.num_leaves
    assert manifest["recall_at_10"]["value"] >= 0.95 and manifest["recall_at_10"]["num_queries"] == 1000
    assert manifest["model_fingerprint"] == FINGERPRINT and manifest["model_dir"] == "/exports/dgml/7"
    assert manifest["build_seconds"] > 0
    on_disk = json.loads((tmp_path / "idx" / VERSIONS_DIR / (tmp_path / "idx" / POINTER_FILE)
                          .read_text().strip() / "manifest.json").read_text())
    assert on_disk == manifest
    # Independent recall@10 with held-out queries (images not in the gallery are not possible
    # here, so use a different sample than the manifest's plus perturbed copies).
    rng = np.random.default_rng(1)
    queries = pca_embeddings[rng.choice(4000, 300, replace=False)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32) * queries.std()
    indices, scores = index.search(queries, k=10)
    expected, _ = numpy_top_k(queries, pca_embeddings, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(indices, expected)])
    assert recall >= 0.95
    # Scores of returned items are their (re-ordered, exact) cosine similarities.
    cosine = np.einsum("qd,qkd->qk", normalize(queries), normalize(pca_embeddings)[indices])
    np.testing.assert_allclose(scores, cosine, atol=1e-4)
    assert index.ids[int(indices[0, 0])] == f"t10k/{int(indices[0, 0])}"
    assert index.labels[int(indices[0, 0])] == int(indices[0, 0]) % 10


def test_auto_backend_follows_size(pca_embeddings, tmp_path):
    build_index(tmp_path / "a", pca_embeddings[:300], FINGERPRINT, num_groups=3, exact_below=1000)
    assert load_index(tmp_path / "a").manifest["backend"] == "exact"
    assert load_index(tmp_path / "a").manifest["recall_at_10"] is None
    assert choose_scann_params(50_000).num_leaves is None  # AH + reorder only below 100k
    big = choose_scann_params(250_000)
    assert big.num_leaves == 500 and big.num_leaves_to_search == 25  # sqrt(N), 5 % of leaves


def test_fingerprint_mismatch_is_refused(pca_embeddings, tmp_path):
    build_index(tmp_path / "idx", pca_embeddings[:100], FINGERPRINT, num_groups=3)
    assert load_index(tmp_path / "idx", expected_fingerprint=FINGERPRINT).model_fingerprint == FINGERPRINT
    with pytest.raises(IndexModelMismatchError, match="rebuild the index"):
        load_index(tmp_path / "idx", expected_fingerprint="9/9/9/9")


def test_bad_queries_and_inputs_get_clear_errors(pca_embeddings, tmp_path):
    build_index(tmp_path / "idx", pca_embeddings[:50], FINGERPRINT, num_groups=3)
    index = load_index(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"shape \(Q, 48\)"):
        index.search(pca_embeddings[:2, :40], k=3)
    with pytest.raises(ValueError, match="between 1 and the gallery size 50"):
        index.search(pca_embeddings[:2], k=51)
    with pytest.raises(ValueError, match="group must be"):
        index.search(pca_embeddings[:2], k=3, group=3)
    with pytest.raises(ValueError, match="divisible"):
        build_index(tmp_path / "x", pca_embeddings[:50, :47], FINGERPRINT, num_groups=3)
    with pytest.raises(ValueError, match="unique"):
        build_index(tmp_path / "x", pca_embeddings[:2], FINGERPRINT, ids=["a", "a"], num_groups=3)
    with pytest.raises(Exception, match="no published index"):
        load_index(tmp_path / "empty")


def test_crash_during_build_keeps_serving_previous_version(pca_embeddings, tmp_path, monkeypatch):
    from dgml_tf.index import retrieval_index

    build_index(tmp_path / "idx", pca_embeddings[:100], FINGERPRINT, num_groups=3)
    live_before = (tmp_path / "idx" / POINTER_FILE).read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the manifest")

    monkeypatch.setattr(retrieval_index.files, "write_manifest", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(tmp_path / "idx", pca_embeddings[100:300], "5/5/5/5", num_groups=3)
    assert (tmp_path / "idx" / POINTER_FILE).read_text() == live_before
    index = load_index(tmp_path / "idx", expected_fingerprint=FINGERPRINT)
    np.testing.assert_array_equal(index.embeddings, pca_embeddings[:100])
    assert len(list((tmp_path / "idx" / VERSIONS_DIR).iterdir())) == 1  # the staging dir is gone


def test_killed_build_process_keeps_serving_previous_version(pca_embeddings, tmp_path):
    build_index(tmp_path / "idx", pca_embeddings[:100], FINGERPRINT, num_groups=3)
    live_before = (tmp_path / "idx" / POINTER_FILE).read_text()
    np.save(tmp_path / "new.npy", pca_embeddings[100:300])
    # A separate process dies abruptly (os._exit: no cleanup runs) after writing part of a build.
    script = f"""
import os, numpy as np
from dgml_tf.index import build_index, retrieval_index
real_save = np.save
def save_then_die(path, array):
    real_save(path, array)
    os._exit(3)
retrieval_index.np.save = save_then_die
build_index({str(tmp_path / "idx")!r}, np.load({str(tmp_path / "new.npy")!r}), "5/5/5/5", num_groups=3)
"""
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": REPO},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    versions = tmp_path / "idx" / VERSIONS_DIR
    assert any(".tmp-" in p.name for p in versions.iterdir())  # the dead build's leftovers
    assert (tmp_path / "idx" / POINTER_FILE).read_text() == live_before
    np.testing.assert_array_equal(load_index(tmp_path / "idx").embeddings, pca_embeddings[:100])
    # The next build publishes and removes the dead process's staging directory.
    build_index(tmp_path / "idx", pca_embeddings[100:300], "5/5/5/5", num_groups=3)
    assert load_index(tmp_path / "idx").model_fingerprint == "5/5/5/5"
    assert not any(".tmp-" in p.name for p in versions.iterdir())


@pytest.fixture(scope="module")
def embedder_and_index(tmp_path_factory):
    """A tiny exported embedder and an index of 64 Fashion-MNIST test images built by the CLI."""
    import keras

    import dgml_tf.export as dgml_export
    import dgml_tf.index as dgml_index

    keras.backend.clear_session()
    base = tmp_path_factory.mktemp("exports")
    version_dir = dgml_export.export_for_serving(tiny_embedder(), base, "dgml", image_size=SIZE,
                                                 resize_size=RESIZE)
    index_dir = base.parent / "index"
    with pytest.raises(SystemExit) as exit_info:
        dgml_index.run(["index", f"--saved_model={version_dir}", "--dataset=fashion_mnist",
                        f"--data_root={FASHION_MNIST}", "--split=test", "--limit=64",
                        f"--index_dir={index_dir}", f"--retrieval_base_dir={base}", "--k=5",
                        "--scann_savedmodel"])
    assert exit_info.value.code == 0
    return base, version_dir, index_dir


def test_cli_index_of_dataset(embedder_and_index):
    import tensorflow as tf

    from dgml_tf.export import model_fingerprint

    base, version_dir, index_dir = embedder_and_index
    index = load_index(index_dir, expected_fingerprint=model_fingerprint(version_dir))
    assert len(index) == 64 and index.manifest["backend"] == "exact"
    assert index.ids[0].startswith("t10k/")
    # Gallery embeddings are the export's embeddings of the same images.
    rows = [int(i.split("/")[1]) for i in index.ids[:4]]
    all_test = fashion_mnist_images(max(rows) + 1)
    encoded = tf.constant([png_bytes(all_test[r]) for r in rows])
    expected = tf.saved_model.load(str(version_dir)).signatures["serving_default"](image_bytes=encoded)
    np.testing.assert_allclose(index.embeddings[:4], expected["embedding"].numpy(), atol=1e-5)
    # models.config lists the embedder and the exact retrieval model, not the ScaNN-op one.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in config.model_config_list.config] == ["dgml", "dgml_retrieval"]
    assert (base / "dgml_retrieval_scann" / "1" / "saved_model.pb").is_file()


def test_exact_retrieval_savedmodel_equals_numpy(embedder_and_index):
    import tensorflow as tf

    base, version_dir, index_dir = embedder_and_index
    index = load_index(index_dir)
    loaded = tf.saved_model.load(str(base / "dgml_retrieval" / "1"))
    assert {"serving_default", "search_embedding"} <= set(loaded.signatures)
    search = loaded.signatures["search_embedding"]
    assert search.structured_input_signature[1]["embedding"].shape.as_list() == [None, 48]
    queries = index.embeddings[:6] + 0.01
    out = search(embedding=tf.constant(queries))
    expected_indices, expected_scores = numpy_top_k(queries, index.embeddings, 5)
    np.testing.assert_array_equal(out["indices"].numpy(), expected_indices)
    np.testing.assert_allclose(out["scores"].numpy(), expected_scores, atol=1e-5)
    assert out["indices"].dtype == tf.int32 and out["labels"].dtype == tf.int64
    np.testing.assert_array_equal(out["labels"].numpy(), index.labels[expected_indices])
    assert [i.decode() for i in out["ids"].numpy()[0]] == [index.ids[j] for j in expected_indices[0]]
    # serving_default embeds image bytes with the same embedder, then searches.
    rows = [int(i.split("/")[1]) for i in index.ids[:3]]
    images = fashion_mnist_images(max(rows) + 1)
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant([png_bytes(images[r]) for r in rows]))
    np.testing.assert_array_equal(by_bytes["indices"].numpy()[:, 0], np.arange(3))  # each finds itself
    expected_indices, _ = numpy_top_k(index.embeddings[:3], index.embeddings, 5)
    np.testing.assert_array_equal(by_bytes["indices"].numpy(), expected_indices)


def test_retrieval_export_refuses_another_embedder(embedder_and_index, tmp_path):
    import dgml_tf.export as dgml_export
    from dgml_tf.index.retrieval_savedmodel import export_exact_retrieval_savedmodel

    _, _, index_dir = embedder_and_index
    other = dgml_export.export_for_serving(tiny_embedder(seed=5), tmp_path, "other", image_size=SIZE,
                                           resize_size=RESIZE)
    with pytest.raises(IndexModelMismatchError, match="fingerprint"):
        export_exact_retrieval_savedmodel(load_index(index_dir), tmp_path, "other", embedder_dir=other)


def test_scann_op_retrieval_savedmodel_loads_in_process(embedder_and_index):
    import scann  # noqa: F401  (registers the ScaNN ops the SavedModel needs)
    import tensorflow as tf

    base, _, index_dir = embedder_and_index
    index = load_index(index_dir)
    meta = json.loads((base / "dgml_retrieval_scann" / "1" / "assets" / "dgml_export.json").read_text())
    assert meta["requires_custom_ops"] == ["scann"]
    loaded = tf.saved_model.load(str(base / "dgml_retrieval_scann" / "1"))
    out = loaded.signatures["search_embedding"](embedding=tf.constant(index.embeddings[:8]))
    expected, _ = numpy_top_k(index.embeddings[:8], index.embeddings, 5)
    # 64 items, AH scoring then exact re-ordering of 100 candidates: the exact neighbours.
    for got, want in zip(out["indices"].numpy(), expected):
        assert set(got.tolist()) == set(want.tolist())
    np.testing.assert_array_equal(out["labels"].numpy(), index.labels[out["indices"].numpy()])


def test_cli_index_of_image_folder(embedder_and_index, tmp_path):
    import dgml_tf.index as dgml_index

    _, version_dir, _ = embedder_and_index
    images = fashion_mnist_images(12)
    for i, image in enumerate(images):
        folder = tmp_path / "photos" / ("shirts" if i % 2 else "shoes")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(png_bytes(image))
    with pytest.raises(SystemExit) as exit_info:
        dgml_index.run(["index", f"--saved_model={version_dir}", f"--image_folder={tmp_path / 'photos'}",
                        f"--index_dir={tmp_path / 'idx'}"])
    assert exit_info.value.code == 0
    index = load_index(tmp_path / "idx")
    assert len(index) == 12
    assert index.ids[0] == os.path.join("shirts", "01.png")
    assert set(index.labels.tolist()) == {0, 1}  # sorted class folders: shirts 0, shoes 1
    assert index.paths[0] == str(tmp_path / "photos" / "shirts" / "01.png")


def test_cli_expose_paths_is_recorded_and_off_by_default(embedder_and_index, tmp_path):
    import dgml_tf.index as dgml_index
    from serving.retrieval_servable import RetrievalServable

    _, version_dir, _ = embedder_and_index
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(fashion_mnist_images(6)):
        (folder / f"{i}.png").write_bytes(png_bytes(image))

    for flag, exposed in (([], False), (["--expose_paths"], True)):
        index_dir = tmp_path / f"idx{exposed}"
        with pytest.raises(SystemExit) as exit_info:
            dgml_index.run(["index", f"--saved_model={version_dir}", f"--image_folder={folder}",
                            f"--index_dir={index_dir}", *flag])
        assert exit_info.value.code == 0
        index = load_index(index_dir)
        assert index.manifest["expose_paths"] is exposed and index.expose_paths is exposed
        assert index.paths[0] == str(folder / "0.png")  # kept server-side either way
        servable = RetrievalServable("dgml_retrieval", _VectorEmbedder(), index)
        out = servable.run("search_embedding", {"embedding": index.embeddings[:2]}, {"k": 3})
        expected = numpy_top_k(index.embeddings[:2], index.embeddings, 3)[0]
        want = [[str(folder / f"{j}.png") if exposed else "" for j in row] for row in expected]
        assert out["paths"].tolist() == want


class _VectorEmbedder:
    """What RetrievalServable reads of an embedder, for embedding queries (no image is embedded)."""

    version, has_attention, embedding_dim = 1, False, 48


def test_retrieval_savedmodel_image_bytes_keeps_the_image_guard(embedder_and_index):
    import tensorflow as tf

    from test_export import png_by_hand

    base, _, _ = embedder_and_index
    loaded = tf.saved_model.load(str(base / "dgml_retrieval" / "1"))
    bomb = png_by_hand(np.zeros((1, 1, 3), np.uint8), width=20000, height=20000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit of 16777216 pixels"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([bomb]))
