"""Decoding, transforms and the train/eval tf.data pipelines on tiny fixture images."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import fixtures_datasets as fx
from pipelines import image_check, load_dataset
from pipelines.decoding import decode_rgb, decode_rgb_window
from pipelines.image_pipeline import (
    build_train_pipeline,
    decode_to_array,
    make_eval_dataset,
    make_train_dataset,
)
from pipelines.records import Record
from pipelines.transforms import eval_transform, resize_shorter_side, train_transform

GOOD_KINDS = ("rgb_jpeg", "rgb_png", "cmyk_jpeg", "rgba_png", "palette_png", "gray_jpeg")


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_decoding_gives_rgb_equal_to_pillow_conversion(kind):
    data = fx.encode(kind, height=12, width=16, seed=3)
    import io

    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = decode_rgb(tf.constant(data)).numpy()
    assert decoded.shape == (12, 16, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_window_decoding_equals_pillow_image_sliced(kind):
    import io

    data = fx.encode(kind, height=40, width=56, seed=4)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    window = tf.Variable([0, 0, 1, 1], dtype=tf.int32)
    decode = tf.function(lambda: decode_rgb_window(tf.constant(data), lambda shape: window.value()))
    # windows inside, touching each edge, odd offsets (chroma blocks cut in half), whole image
    for top, left, height, width in [(9, 17, 22, 30), (1, 3, 5, 7), (0, 0, 40, 56),
                                     (21, 33, 19, 23), (0, 41, 13, 15), (30, 0, 10, 9)]:
        window.assign([top, left, height, width])
        np.testing.assert_array_equal(
            decode().numpy(), full[top:top + height, left:left + width], err_msg=str(window.numpy())
        )


def test_train_pipeline_from_files_matches_the_same_images_in_memory(tmp_path):
    # Same seeds, same sampling: decoding only the JPEG crop window must not change the pixels.
    records, arrays = [], []
    for i, kind in enumerate(["rgb_jpeg", "cmyk_jpeg", "gray_jpeg", "rgb_png"]):
        path = fx.write_image(str(tmp_path / f"{i}.img"), kind, height=30, width=40, seed=i)
        records.append(Record(path, i % 2))
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
    in_memory = [Record(i, r.label) for i, r in enumerate(records)]
    from_files = make_train_dataset(records, batch_classes=2, image_size=16, seed=9)
    from_arrays = make_train_dataset(in_memory, np.stack(arrays), batch_classes=2, image_size=16, seed=9)
    for (x1, y1), (x2, y2) in zip(from_files.take(2), from_arrays.take(2)):
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        np.testing.assert_allclose(x1.numpy(), x2.numpy(), atol=1e-3)


def test_resize_shorter_side_keeps_aspect_and_upscales_tiny_images():
    assert resize_shorter_side(tf.zeros([375, 500, 3], tf.uint8), 256).shape == (256, 341, 3)
    assert resize_shorter_side(tf.zeros([500, 375, 3], tf.uint8), 256).shape == (341, 256, 3)
    tiny = resize_shorter_side(tf.fill([5, 7, 3], tf.constant(200, tf.uint8)), 32)
    assert tiny.shape == (32, 44, 3)
    np.testing.assert_allclose(tiny.numpy(), 200.0, atol=1e-3)  # a flat image stays flat
    assert eval_transform(tf.zeros([375, 500, 3], tf.uint8), 224, 256).shape == (224, 224, 3)
    with pytest.raises(ValueError, match="resize_size"):
        eval_transform(tf.zeros([8, 8, 3], tf.uint8), 32, 28)


def test_eval_pipeline_takes_the_centre_crop(tmp_path):
    pixels = fx.pattern(40, 60, seed=1)
    path = str(tmp_path / "wide.png")
    Image.fromarray(pixels).save(path)
    # resize_size equals the shorter side, so the resize is the identity and the crop is exact
    images, labels = next(iter(make_eval_dataset([Record(path, 4)], image_size=20, resize_size=40)))
    assert images.dtype == tf.float32 and labels.numpy().tolist() == [4]
    np.testing.assert_allclose(images.numpy()[0], pixels[10:30, 20:40].astype(np.float32), atol=1e-3)


def test_train_transform_crops_and_flips_only():
    image = tf.constant(fx.pattern(16, 16, seed=2))
    mirrored = image.numpy()[:, ::-1].astype(np.float32)
    outcomes = set()
    for n in range(12):
        out = train_transform(image, 16, tf.constant([0, n], tf.int64), scale=(1.0, 1.0),
                              ratio=(1.0, 1.0)).numpy()
        if np.allclose(out, image.numpy(), atol=1e-3):
            outcomes.add("same")
        else:
            np.testing.assert_allclose(out, mirrored, atol=1e-3)
            outcomes.add("flipped")
    assert outcomes == {"same", "flipped"}


def _broken_cub(tmp_path):
    # fixtures_datasets assigns kinds[image_id % 6]: image ids 3, 9, 15 are truncated JPEGs and
    # ids 5, 11 are text files named .jpg; 10 of the 15 images decode.
    kinds = ("rgb_jpeg", "cmyk_jpeg", "rgba_png", "truncated_jpeg", "gray_jpeg", "text_jpg")
    fx.build_cub(str(tmp_path), {1: 3, 2: 3, 3: 3, 4: 3, 5: 3}, kinds=kinds)
    return load_dataset("cub", str(tmp_path), val_classes=0)


def test_unreadable_files_are_skipped_reported_once_and_never_break_batches(tmp_path, caplog, monkeypatch):
    splits = _broken_cub(tmp_path)
    broken = {r.source for i, r in enumerate(splits.train, start=1) if i % 6 in (3, 5)}
    cache = str(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="pipelines.image_check"):
        pipe = build_train_pipeline(splits, batch_classes=4, images_per_class=2, image_size=24,
                                    seed=0, cache_dir=cache)
    assert {s.path for s in pipe.skipped} == broken
    reasons = {os.path.basename(s.path): s.reason for s in pipe.skipped}
    assert any("Unknown image file format" in r for r in reasons.values())
    assert any("jpeg" in r.lower() for r in reasons.values())
    assert len(pipe.records) == 15 - len(broken)
    report = json.load(open(os.path.join(cache, "image_check.json")))
    assert set(report["skipped"]) == broken

    valid_labels = {r.label for r in pipe.records}
    for images, labels in pipe.dataset.take(10):
        assert images.shape == (8, 24, 24, 3) and images.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
        pairs = labels.numpy().reshape(4, 2)
        assert np.all(pairs[:, 0] == pairs[:, 1]) and len(set(pairs[:, 0])) == 4
        assert set(pairs[:, 0]) <= valid_labels

    # A second run reuses the cached verdicts (no decoding) and does not log again.
    def fail(path):
        raise AssertionError(f"{path} decoded again despite the cache")

    monkeypatch.setattr(image_check, "_decode_error", fail)
    with caplog.at_level(logging.WARNING, logger="pipelines.image_check"):
        again = build_train_pipeline(splits, batch_classes=4, image_size=24, cache_dir=cache)
    assert {s.path for s in again.skipped} == broken
    warnings = [r for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(warnings) == 1 and all(os.path.basename(p) in warnings[0].getMessage() for p in broken)


def test_eval_pipeline_drops_unreadable_files_keeping_labels_aligned(tmp_path):
    splits = _broken_cub(tmp_path)
    dataset = make_eval_dataset(splits.train, image_size=16, resize_size=20, batch_size=4)
    labels = np.concatenate([y.numpy() for _, y in dataset])
    expected = [r.label for i, r in enumerate(splits.train, start=1) if i % 6 not in (3, 5)]
    assert labels.tolist() == expected


def test_in_memory_grayscale_train_and_eval(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    records = [Record(i, i % 3) for i in range(12)]
    images, labels = next(iter(make_train_dataset(records, arrays, batch_classes=3, image_size=32)))
    assert images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # gray -> equal channels
    images, labels = next(iter(make_eval_dataset(records, arrays, image_size=28, resize_size=28,
                                                 batch_size=12)))
    np.testing.assert_allclose(images.numpy()[..., 1], arrays[..., 0].astype(np.float32), atol=1e-3)
    assert labels.numpy().tolist() == [i % 3 for i in range(12)]


def test_same_seed_same_images_different_seed_different_images():
    arrays = np.random.default_rng(1).integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    records = [Record(i, i // 2) for i in range(8)]

    def first_batches(seed):
        ds = make_train_dataset(records, arrays, batch_classes=2, image_size=16, seed=seed)
        return [x.numpy() for x, _ in ds.take(2)]

    a, b, c = first_batches(4), first_batches(4), first_batches(5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_mirrored_strategy_replicas_receive_whole_classes(mirrored_strategy):
    strategy = mirrored_strategy
    arrays = np.zeros((30, 8, 8, 1), np.uint8)
    records = [Record(i, i % 6) for i in range(30)]
    pipe = build_train_pipeline(records, arrays, batch_classes=4, images_per_class=2,
                                image_size=8, seed=2, strategy=strategy)
    iterator = iter(pipe.dataset)
    for _ in range(5):
        _, labels = next(iterator)
        per_replica = strategy.experimental_local_results(labels)
        assert len(per_replica) == 2
        for replica_labels in per_replica:
            values, counts = np.unique(replica_labels.numpy(), return_counts=True)
            assert len(values) == 2 and counts.tolist() == [2, 2]
    with pytest.raises(ValueError, match="divisible"):
        build_train_pipeline(records, arrays, batch_classes=3, image_size=8, strategy=strategy)


def test_decode_to_array_caches_small_sets(tmp_path):
    splits = _broken_cub(tmp_path)
    records, arrays, skipped = decode_to_array(splits.train, size=20)
    assert arrays.shape == (len(records), 20, 20, 3) and arrays.dtype == np.uint8
    assert len(records) + len(skipped) == 15 and all(isinstance(r.source, int) for r in records)
    first = Image.open(splits.train[0].source).convert("RGB")  # 16x12 rgb jpeg
    reference = eval_transform(tf.constant(np.asarray(first)), 20, 20).numpy()
    np.testing.assert_allclose(arrays[0], np.round(reference), atol=1)
    pipe = build_train_pipeline(splits, batch_classes=2, image_size=16, cache_decoded=20)
    images, _ = next(iter(pipe.dataset))
    assert images.shape == (4, 16, 16, 3) and len(pipe.skipped) == len(skipped)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="arrays"):
        make_eval_dataset([Record(0, 1)])
    with pytest.raises(ValueError, match="mix"):
        make_eval_dataset([Record(0, 1), Record("a.jpg", 1)], np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        make_eval_dataset([])
    path = fx.write_image(str(tmp_path / "bad.jpg"), "text_jpg")
    with pytest.raises(ValueError, match="failed to decode"):
        make_eval_dataset([Record(path, 0)])


def test_flip_false_never_mirrors_while_the_default_does():
    # Full-image "crops" (scale and ratio fixed at 1): the only change left is the flip.
    arrays = np.random.default_rng(2).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    records = [Record(i, i // 2) for i in range(4)]

    def mirrored_count(flip):
        ds = make_train_dataset(records, arrays, batch_classes=2, image_size=12, seed=0,
                                scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=flip)
        mirrored = 0
        for images, _ in ds.take(10):
            for image in images.numpy():
                originals = arrays.astype(np.float32)
                same = any(np.allclose(image, a, atol=1e-3) for a in originals)
                flipped = any(np.allclose(image, a[:, ::-1], atol=1e-3) for a in originals)
                assert same or flipped
                mirrored += int(flipped and not same)
        return mirrored

    assert mirrored_count(False) == 0
    assert mirrored_count(True) > 0  # 40 draws of a fair coin
