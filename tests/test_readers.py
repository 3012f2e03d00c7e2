"""Dataset readers: counts, splits, class-disjoint validation, skip reports, clear errors.

Fixture trees are written in each dataset's real archive layout (tests/fixtures_datasets.py);
expected counts come from the fixture parameters, not from the readers.
"""

import os

import numpy as np
import pytest

import fixtures_datasets as fx
from pipelines import (
    DatasetLayoutError,
    UnknownDatasetError,
    available_datasets,
    carve_validation,
    load_dataset,
)
from pipelines.records import Record

CUB_CLASSES = {1: 3, 2: 2, 100: 4, 101: 3, 150: 2, 200: 1}


def _labels(records):
    return {r.label for r in records}


# ---------------------------------------------------------------- CUB-200-2011
def test_cub_splits_by_class_id_and_accepts_both_root_levels(tmp_path):
    folder = fx.build_cub(str(tmp_path), CUB_CLASSES)
    for root in (str(tmp_path), folder):
        splits = load_dataset("cub", root, val_classes=0)
        assert len(splits.train) == 3 + 2 + 4 and len(splits.test) == 3 + 2 + 1
        assert _labels(splits.train) == {0, 1, 99}  # class ids minus one
        assert _labels(splits.test) == {100, 149, 199}
        assert splits.val == [] and splits.skipped == []
        assert all(os.path.isfile(r.source) for r in splits.train + splits.test)
    assert splits.class_names[0] == "Bird 1"


def test_cub_listed_but_missing_file_is_skipped_with_reason(tmp_path):
    missing = "002.Bird_2/Bird_2_0001.jpg"
    fx.build_cub(str(tmp_path), CUB_CLASSES, missing=[missing])
    splits = load_dataset("cub", str(tmp_path), val_classes=0)
    assert len(splits.train) == 8
    assert [os.path.relpath(s.path, str(tmp_path)) for s in splits.skipped] == [
        os.path.join("CUB_200_2011", "images", missing)
    ]
    assert "missing" in splits.skipped[0].reason


def test_cub_wrong_root_and_missing_index_name_the_expected_file(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"images\.txt") as info:
        load_dataset("cub", str(tmp_path))
    assert "image_class_labels.txt" in str(info.value)  # the layout is shown
    with pytest.raises(DatasetLayoutError, match="not a directory"):
        load_dataset("cub", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetLayoutError, match="no root"):
        load_dataset("cub")
    folder = fx.build_cub(str(tmp_path), CUB_CLASSES)
    os.remove(os.path.join(folder, "image_class_labels.txt"))
    with pytest.raises(DatasetLayoutError, match=r"image_class_labels\.txt.* is missing"):
        load_dataset("cub", folder)


def test_cub_malformed_index_row_is_reported_with_its_line(tmp_path):
    folder = fx.build_cub(str(tmp_path), CUB_CLASSES)
    with open(os.path.join(folder, "images.txt"), "a") as handle:
        handle.write("onlyonefield\n")
    with pytest.raises(DatasetLayoutError, match="line 16 has 1 fields"):
        load_dataset("cub", folder)


# ---------------------------------------------------------------- Cars196
def test_cars196_splits_first_98_classes_ignoring_archive_test_flag(tmp_path):
    fx.build_cars196(str(tmp_path), {1: 3, 50: 2, 98: 2, 99: 1, 196: 4}, missing=["car_ims/000002.jpg"])
    splits = load_dataset("cars196", str(tmp_path), val_classes=0)
    assert len(splits.train) == 3 + 2 + 2 - 1 and len(splits.test) == 1 + 4
    assert _labels(splits.train) == {0, 49, 97} and _labels(splits.test) == {98, 195}
    assert [os.path.basename(s.path) for s in splits.skipped] == ["000002.jpg"]
    assert splits.class_names[195] == "Car model 196"


def test_cars196_not_a_mat_file_is_a_layout_error(tmp_path):
    (tmp_path / "cars_annos.mat").write_text("not matlab")
    with pytest.raises(DatasetLayoutError, match="cars_annos.mat"):
        load_dataset("cars196", str(tmp_path))


# ---------------------------------------------------------------- Stanford Online Products
def test_sop_reads_train_and_test_tables(tmp_path):
    fx.build_sop(str(tmp_path), {1: 2, 2: 3, 3: 2}, {4: 2, 5: 4}, missing=["bicycle_final/5_0.JPG"])
    splits = load_dataset("sop", str(tmp_path), val_classes=1, seed=3)
    assert len(splits.train) + len(splits.val) == 7
    assert len(splits.test) == 5
    assert _labels(splits.test) == {3, 4}
    assert len(_labels(splits.val)) == 1 and not _labels(splits.val) & _labels(splits.train)
    assert [os.path.basename(s.path) for s in splits.skipped] == ["5_0.JPG"]


def test_sop_wrong_header_is_a_layout_error(tmp_path):
    folder = fx.build_sop(str(tmp_path), {1: 2}, {2: 2})
    with open(os.path.join(folder, "Ebay_test.txt"), "w") as handle:
        handle.write("a b c d\n1 2 1 bicycle_final/2_0.JPG\n")
    with pytest.raises(DatasetLayoutError, match="header"):
        load_dataset("sop", str(tmp_path))


# ---------------------------------------------------------------- In-Shop
def test_inshop_train_query_gallery(tmp_path):
    fx.build_inshop(
        str(tmp_path),
        {"id_00000001": 3, "id_00000004": 2, "id_00000007": 2},
        {"id_00000002": (2, 3), "id_00000005": (1, 1)},
    )
    splits = load_dataset("inshop", str(tmp_path), val_classes=0)
    assert len(splits.train) == 7 and len(splits.query) == 3 and len(splits.gallery) == 4
    assert splits.test == splits.query + splits.gallery
    assert _labels(splits.query) == _labels(splits.gallery)
    assert not _labels(splits.train) & _labels(splits.query)
    assert len(_labels(splits.train)) == 3
    by_label = {splits.class_names[r.label] for r in splits.query}
    assert by_label == {"id_00000002", "id_00000005"}


def test_inshop_missing_or_headerless_partition_file_is_a_layout_error(tmp_path):
    (tmp_path / "img").mkdir()
    with pytest.raises(DatasetLayoutError, match="list_eval_partition.txt"):
        load_dataset("inshop", str(tmp_path))
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text("img/a.jpg id_1 train\n")
    with pytest.raises(DatasetLayoutError, match="header"):
        load_dataset("inshop", str(tmp_path))


def test_all_listed_files_missing_is_an_error_not_an_empty_dataset(tmp_path):
    fx.build_sop(str(tmp_path), {1: 2}, {2: 2}, missing=["bicycle_final/1_0.JPG", "bicycle_final/1_1.JPG",
                                                         "bicycle_final/2_0.JPG", "bicycle_final/2_1.JPG"])
    with pytest.raises(ValueError, match="no usable records.*4 files skipped.*missing on disk"):
        load_dataset("sop", str(tmp_path))


# ---------------------------------------------------------------- validation split, registry
def test_carve_validation_is_class_disjoint_seeded_and_sized():
    records = [Record(i, i % 20) for i in range(200)]
    train, val = carve_validation(records, 0.25, seed=7)
    assert len(_labels(val)) == 5 and len(_labels(train)) == 15
    assert not _labels(train) & _labels(val)
    assert sorted(r.source for r in train + val) == list(range(200))
    assert carve_validation(records, 0.25, seed=7) == (train, val)
    assert _labels(carve_validation(records, 0.25, seed=8)[1]) != _labels(val)
    assert len(_labels(carve_validation(records, 3, seed=0)[1])) == 3
    assert carve_validation(records, 0, seed=0)[1] == []
    assert len(_labels(carve_validation(records, 0.01, seed=0)[1])) == 1  # at least one class
    with pytest.raises(ValueError, match="at least one must stay"):
        carve_validation(records, 20)
    with pytest.raises(ValueError, match="fraction"):
        carve_validation(records, 1.5)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("imagenet")
    for name in ("cub", "cars196", "sop", "inshop", "fashion_mnist", "glyphs"):
        assert name in str(info.value)
        assert name in available_datasets()


def test_registered_reader_gets_root_seed_options_and_its_own_val_is_kept():
    from pipelines import register_dataset
    from pipelines.records import DatasetSplits
    from pipelines.registry import _READERS

    calls = []

    def reader(root=None, seed=0, **options):
        calls.append((root, seed, options))
        train = [Record(i, i % 4) for i in range(8)]
        val = [Record(100, 9)] if options.get("own_val") else []
        return DatasetSplits("toy", train=train, val=val, test=[Record(50, 7)])

    register_dataset("toy", reader)
    try:
        splits = load_dataset("toy", "/data/toy", val_classes=2, seed=5, size=3)
        assert calls[-1] == ("/data/toy", 5, {"size": 3})
        assert len(_labels(splits.val)) == 2 and len(_labels(splits.train)) == 2
        kept = load_dataset("toy", val_classes=2, own_val=True)
        assert _labels(kept.val) == {9} and len(kept.train) == 8
    finally:
        _READERS.pop("toy")


# ---------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_reader_on_small_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    train_labels = np.arange(30, dtype=np.uint8) % 10
    test_images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    test_labels = (np.arange(20, dtype=np.uint8) * 3) % 10
    fx.write_idx(str(tmp_path / "train-images-idx3-ubyte"), train_images)
    fx.write_idx(str(tmp_path / "train-labels-idx1-ubyte"), train_labels)
    fx.write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), test_images)
    fx.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), test_labels)
    splits = load_dataset("fashion_mnist", str(tmp_path), val_classes=0)
    assert len(splits.train) == 15 and len(splits.test) == 10
    for record in splits.train:
        row = int(record.item_id.split("/")[1])
        assert record.item_id.startswith("train/") and record.label == train_labels[row] < 5
        np.testing.assert_array_equal(splits.arrays[record.source, ..., 0], train_images[row])
    for record in splits.test:
        row = int(record.item_id.split("/")[1])
        assert record.item_id.startswith("t10k/") and record.label == test_labels[row] >= 5
        np.testing.assert_array_equal(splits.arrays[record.source, ..., 0], test_images[row])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DatasetLayoutError, match="truncated"):
        load_dataset("fashion_mnist", str(tmp_path))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _recall_at_1_and_map_at_r(vectors: np.ndarray, labels: np.ndarray):
    """Cosine retrieval of each vector against all others (the query left out): means."""
    hits_at_1, average_precisions = _hits_and_average_precisions(vectors, labels)
    return hits_at_1.mean(), float(np.mean(average_precisions))


def _hits_and_average_precisions(vectors: np.ndarray, labels: np.ndarray):
    """Per query: top-1 hit and AP@R of cosine retrieval against all other vectors."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    hits_at_1 = labels[np.argmax(sims, axis=1)] == labels
    class_sizes = np.bincount(labels)
    average_precisions = np.zeros(len(labels))
    for r in np.unique(class_sizes[labels] - 1):  # queries sharing R are done together
        rows = np.flatnonzero(class_sizes[labels] - 1 == r)
        top = np.argpartition(-sims[rows], r, axis=1)[:, :r]
        order = np.argsort(-np.take_along_axis(sims[rows], top, axis=1), axis=1, kind="stable")
        relevant = labels[np.take_along_axis(top, order, axis=1)] == labels[rows, None]
        precision_at = np.cumsum(relevant, axis=1) / np.arange(1, r + 1)
        average_precisions[rows] = np.sum(precision_at * relevant, axis=1) / r
    return hits_at_1, average_precisions


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR),
    reason=f"{FASHION_MNIST_DIR} absent: install the Debian package dataset-fashion-mnist",
)
def test_fashion_mnist_counts_and_raw_pixel_baseline():
    splits = load_dataset("fashion_mnist", val_classes=1, seed=0)
    assert len(splits.test) == 5000 and _labels(splits.test) == {5, 6, 7, 8, 9}
    assert len(splits.train) + len(splits.val) == 30000 and len(splits.val) == 6000
    assert _labels(splits.train) | _labels(splits.val) == {0, 1, 2, 3, 4}
    assert not _labels(splits.train) & _labels(splits.val)
    labels = np.asarray([r.label for r in splits.test])
    pixels = splits.arrays[[r.source for r in splits.test]].reshape(5000, -1).astype(np.float32)
    recall_at_1, map_at_r = _recall_at_1_and_map_at_r(pixels, labels)
    assert recall_at_1 == pytest.approx(0.908, abs=0.0015)
    assert map_at_r == pytest.approx(0.471, abs=0.0015)


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR),
    reason=f"{FASHION_MNIST_DIR} absent: install the Debian package dataset-fashion-mnist",
)
def test_fashion_mnist_raw_pixel_baseline_per_class():
    """evaluate_retrieval_per_class on raw pixels against the NumPy computation above, and the
    README's finding: raw pixels rank Shirt well (MAP@R ~0.71) and Sandal hardly at all (~0.05)."""
    from dgml_tf.evaluate import evaluate_retrieval_per_class

    splits = load_dataset("fashion_mnist", val_classes=0, seed=0)
    labels = np.asarray([r.label for r in splits.test])
    pixels = splits.arrays[[r.source for r in splits.test]].reshape(5000, -1).astype(np.float32)
    rows = evaluate_retrieval_per_class(pixels, labels, recall_ks=(1,))
    hits, average_precisions = _hits_and_average_precisions(pixels, labels)
    assert sorted(rows) == [5, 6, 7, 8, 9]
    for label, row in rows.items():
        mine = labels == label
        assert row["num_queries"] == mine.sum() == 1000
        assert row["recall@1"] == pytest.approx(hits[mine].mean(), abs=1e-9)
        assert row["map@r"] == pytest.approx(average_precisions[mine].mean(), abs=1e-6)
    assert rows[5]["map@r"] == pytest.approx(0.048, abs=0.002)  # Sandal
    assert rows[6]["map@r"] == pytest.approx(0.708, abs=0.002)  # Shirt
