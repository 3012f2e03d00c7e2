"""Tests of dgml_tf.export: TF Serving SavedModels, their signatures, versions and configs.

Expectations are computed independently of the export code: pixel outputs against the Keras
model called directly, the bytes path against a NumPy re-statement of the evaluation
preprocessing (triangle-filter resize of the shorter side, centre crop) applied to lossless PNGs
of real images, configs by parsing them with TF Serving's protobuf messages.
"""

from __future__ import annotations

import gzip
import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dgml_tf.export as dgml_export
from dgml_tf.export import output_names as names
from dgml_tf.export.serving_configs import (
    BATCHING_CONFIG, MONITORING_CONFIG, docker_compose_text, parse_labels, write_serving_configs,
)
from dgml_tf.export.serving_protos import batching_parameters_class, monitoring_config_class
from dgml_tf.export.tf_serving_layout import (
    MODELS_CONFIG, ModelVersions, VersionExistsError, model_server_config_text,
)

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, RESIZE = 32, 37


def fashion_mnist_images(count: int) -> np.ndarray:
    """The first ``count`` Fashion-MNIST test images, uint8 (count, 28, 28)."""
    path = os.path.join(FASHION_MNIST, "t10k-images-idx3-ubyte.gz")
    if not os.path.isfile(path):
        pytest.skip("Fashion-MNIST IDX files not installed (apt package dataset-fashion-mnist).")
    with gzip.open(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16)
    return data.reshape(-1, 28, 28)[:count]


def photo(height: int, width: int) -> np.ndarray:
    """A real RGB photograph (scikit-image's astronaut) at (height, width), uint8."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR))


def tiny_embedder(head: str = "attentive", seed: int = 0) -> keras.Model:
    """A tiny embedder following the DEVELOPERS.md contract, built from the package's layers.

    float32 RGB [0, 255] in; {"embedding", "group_embeddings"[, "attention"]} out. Kept tiny
    (one 8-filter conv) so exports are quick on a shared 2-core machine.
    """
    from dgml_tf.layers import AttentiveGrouping, SingleEmbeddingHead, flatten_groups

    keras.utils.set_random_seed(seed)
    images = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(
        keras.layers.Rescaling(1.0 / 255.0)(images))
    if head == "attentive":
        groups, attention = AttentiveGrouping(num_groups=3, group_dim=16, reduction=2,
                                              return_attention=True)(features)
        outputs = {"embedding": flatten_groups(groups), "group_embeddings": groups, "attention": attention}
    else:
        groups = SingleEmbeddingHead(16)(features)
        outputs = {"embedding": flatten_groups(groups), "group_embeddings": groups}
    return keras.Model(images, outputs)


def triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) resampling matrix of antialiased bilinear (triangle) resizing, half-pixel centres."""
    scale = out_size / in_size
    radius = max(1.0, 1.0 / scale)
    centres = (np.arange(out_size) + 0.5) / scale
    taps = np.arange(in_size) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / radius)
    return weights / weights.sum(axis=1, keepdims=True)


def numpy_eval_preprocess(image: np.ndarray, size: int = SIZE, resize: int = RESIZE) -> np.ndarray:
    """Shorter side -> ``resize`` (longer side floored), centre crop ``size``; float (size, size, 3)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3].astype(np.float64)
    h, w = image.shape[:2]
    short = min(h, w)
    new_h = resize if h <= w else int(np.floor(resize * h / short))
    new_w = resize if w < h else int(np.floor(resize * w / short))
    resized = np.einsum("oh,hwc->owc", triangle_weights(h, new_h), image)
    resized = np.einsum("pw,owc->opc", triangle_weights(w, new_w), resized)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size].astype(np.float32)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.backend.clear_session()
    model = tiny_embedder()
    base = tmp_path_factory.mktemp("exports")
    path = dgml_export.export_for_serving(model, base, "dgml", image_size=SIZE, resize_size=RESIZE,
                                          metadata={"note": "test"})
    return model, base, path


def test_layout_metadata_and_fingerprint(exported):
    model, base, path = exported
    assert path == base / "dgml" / "1"
    assert (path / "saved_model.pb").is_file()
    meta = json.loads((path / "assets" / names.METADATA_FILE).read_text())
    assert meta["image_size"] == [SIZE, SIZE] and meta["resize_size"] == RESIZE
    assert (meta["embedding_dim"], meta["num_groups"], meta["group_dim"]) == (48, 3, 16)
    assert meta["output_names"] == ["embedding", "group_embeddings", "attention"]
    assert meta["note"] == "test" and meta["source"].startswith("keras.Model")
    fingerprint = dgml_export.model_fingerprint(path)
    # The singleprint is four "/"-separated unsigned integers read from fingerprint.pb.
    parts = fingerprint.split("/")
    assert len(parts) == 4 and all(p.isdigit() for p in parts)
    assert meta["model_fingerprint"] == fingerprint == dgml_export.model_fingerprint(path)
    assert not [p for p in (base / "dgml").iterdir() if p.name.startswith(".tmp")]


def test_signature_names_dtypes_and_shapes(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "embed_pixels"}
    bytes_fn, pixels_fn = loaded.signatures["serving_default"], loaded.signatures["embed_pixels"]
    (bytes_spec,) = bytes_fn.structured_input_signature[1].values()
    assert list(bytes_fn.structured_input_signature[1]) == ["image_bytes"]
    assert bytes_spec.dtype == tf.string and bytes_spec.shape.as_list() == [None]
    pixels_spec = pixels_fn.structured_input_signature[1]["images"]
    assert pixels_spec.dtype == tf.float32 and pixels_spec.shape.as_list() == [None, SIZE, SIZE, 3]
    for fn in (bytes_fn, pixels_fn):
        outputs = fn.structured_outputs
        assert set(outputs) == {"embedding", "group_embeddings", "attention"}
        assert outputs["embedding"].shape.as_list() == [None, 48]
        assert outputs["group_embeddings"].shape.as_list() == [None, 3, 16]
        assert outputs["attention"].shape.as_list()[:2] == [None, 3]
        assert all(o.dtype == tf.float32 for o in outputs.values())


def test_pixel_signature_equals_keras_model(exported):
    model, _, path = exported
    gray = fashion_mnist_images(6)
    images = np.stack([numpy_eval_preprocess(g) for g in gray])
    expected = model(images, training=False)
    got = tf.saved_model.load(str(path)).signatures["embed_pixels"](images=tf.constant(images))
    for key in ("embedding", "group_embeddings", "attention"):
        np.testing.assert_allclose(got[key].numpy(), np.asarray(expected[key]), rtol=1e-5, atol=1e-6)


def test_bytes_signature_equals_model_on_numpy_preprocessing(exported):
    model, _, path = exported
    gray = fashion_mnist_images(2)
    rgba = np.concatenate([photo(30, 44), np.full((30, 44, 1), 128, np.uint8)], axis=-1)
    originals = [gray[0], gray[1], photo(30, 44), rgba, photo(80, 56)]  # upscales and a downscale
    expected_pixels = np.stack([numpy_eval_preprocess(o) for o in originals])
    expected = model(expected_pixels, training=False)
    encoded = tf.constant([png_bytes(o) for o in originals])
    got = tf.saved_model.load(str(path)).signatures["serving_default"](image_bytes=encoded)
    for key in ("embedding", "group_embeddings", "attention"):
        np.testing.assert_allclose(got[key].numpy(), np.asarray(expected[key]), rtol=1e-4, atol=1e-4)
    # Attentive grouping: each group vector is a unit vector (method.md).
    np.testing.assert_allclose(np.linalg.norm(got["group_embeddings"].numpy(), axis=-1), 1.0, atol=1e-5)


def test_versions_increment_and_are_never_overwritten(exported, tmp_path):
    model, _, _ = exported
    first = dgml_export.export_for_serving(model, tmp_path, "m", image_size=SIZE, resize_size=RESIZE, version=3)
    before = dgml_export.model_fingerprint(first)
    second = dgml_export.export_for_serving(model, tmp_path, "m", image_size=SIZE, resize_size=RESIZE)
    assert (first.name, second.name) == ("3", "4")
    other = tiny_embedder(seed=1)  # same architecture, other weights
    with pytest.raises(VersionExistsError, match="never overwritten"):
        dgml_export.export_for_serving(other, tmp_path, "m", image_size=SIZE, resize_size=RESIZE, version=3)
    assert dgml_export.model_fingerprint(first) == before
    changed = dgml_export.export_for_serving(other, tmp_path, "m", image_size=SIZE, resize_size=RESIZE)
    assert changed.name == "5"
    assert dgml_export.model_fingerprint(changed) != before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["3", "4", "5"]


def test_cli_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit, match="exactly one of --keras_model"):
        dgml_export.run(["export", f"--base_dir={tmp_path}"])
    with pytest.raises(ValueError, match="LABEL=VERSION"):
        dgml_export.run(["export", "--keras_model=m.keras", f"--base_dir={tmp_path}", "--labels=bad"])
    with pytest.raises(SystemExit, match="Run with --help"):
        dgml_export.run(["export", "--no_such_flag=1"])


def test_bad_inputs_get_clear_errors(exported, tmp_path):
    model, _, _ = exported
    with pytest.raises(ValueError, match="built for"):
        dgml_export.export_for_serving(model, tmp_path, "m", image_size=64, resize_size=80)
    with pytest.raises(ValueError, match="smaller than the crop"):
        dgml_export.export_for_serving(model, tmp_path, "m", image_size=SIZE, resize_size=20)
    with pytest.raises(ValueError, match="Invalid model_name"):
        dgml_export.export_for_serving(model, tmp_path, "../x", image_size=SIZE)
    with pytest.raises(ValueError, match="positive integer"):
        dgml_export.export_for_serving(model, tmp_path, "m", image_size=SIZE, version=0)
    with pytest.raises(ValueError, match="not a .keras file"):
        dgml_export.export_for_serving(str(tmp_path / "w.weights.h5"), tmp_path, "m", image_size=SIZE)
    with pytest.raises(FileNotFoundError, match="best.keras"):
        dgml_export.export_for_serving(str(tmp_path), tmp_path, "m", image_size=SIZE)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_cli_exports_run_dir_with_labels_and_configs(exported, tmp_path):
    model, _, _ = exported
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(run_dir / "best.keras")
    base = tmp_path / "exports"
    with pytest.raises(SystemExit) as exit_info:
        dgml_export.run(["export", f"--run_dir={run_dir}", f"--base_dir={base}", "--model_name=dgml",
                         f"--image_size={SIZE}", "--labels=stable=1"])
    assert exit_info.value.code == 0
    version = base / "dgml" / "1"
    meta = json.loads((version / "assets" / names.METADATA_FILE).read_text())
    assert meta["source"] == str(run_dir / "best.keras") and meta["resize_size"] == RESIZE
    images = np.stack([numpy_eval_preprocess(g) for g in fashion_mnist_images(3)])
    got = tf.saved_model.load(str(version)).signatures["embed_pixels"](images=tf.constant(images))
    np.testing.assert_allclose(got["embedding"].numpy(), np.asarray(model(images)["embedding"]),
                               rtol=1e-5, atol=1e-6)

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((base / MODELS_CONFIG).read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("dgml", "/models/dgml", "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 2
    assert dict(entry.version_labels) == {"stable": 1}
    batching = text_format.Parse((base / BATCHING_CONFIG).read_text(), batching_parameters_class()())
    assert batching.max_batch_size.value >= 1 and batching.num_batch_threads.value >= 1
    monitoring = text_format.Parse((base / MONITORING_CONFIG).read_text(), monitoring_config_class()())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_and_monitoring_messages_match_tf_serving_protos():
    # Field names/numbers/types as declared in tensorflow_serving's session_bundle_config.proto
    # (BatchingParameters) and config/monitoring_config.proto; a mismatch would make the server
    # reject or misread our text files.
    fields = {f.name: (f.number, f.message_type.full_name if f.message_type else f.type)
              for f in batching_parameters_class().DESCRIPTOR.fields}
    int64_value, string_value = "google.protobuf.Int64Value", "google.protobuf.StringValue"
    assert {k: v for k, v in fields.items() if k != "allowed_batch_sizes" and k != "pad_variable_length_inputs"} == {
        "max_batch_size": (1, int64_value), "batch_timeout_micros": (2, int64_value),
        "max_enqueued_batches": (3, int64_value), "num_batch_threads": (4, int64_value),
        "thread_pool_name": (5, string_value)}
    assert fields["allowed_batch_sizes"][0] == 6 and fields["pad_variable_length_inputs"][0] == 7
    assert batching_parameters_class().DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    prometheus = monitoring_config_class().DESCRIPTOR.fields_by_name["prometheus_config"].message_type
    assert [(f.name, f.number) for f in prometheus.fields] == [("enable", 1), ("path", 2)]
    from google.protobuf import text_format

    parsed = text_format.Parse("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8",
                               batching_parameters_class()())
    assert parsed.max_batch_size.value == 8 and list(parsed.allowed_batch_sizes) == [4, 8]
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: 8", batching_parameters_class()())  # a wrapper, not int


def test_label_policies_and_errors():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    def parse(models):
        return text_format.Parse(model_server_config_text(models), model_server_config_pb2.ModelServerConfig())

    within = parse([ModelVersions("a", [1, 2, 3], {"stable": 2, "canary": 3})]).model_config_list.config[0]
    assert within.model_version_policy.WhichOneof("policy_choice") == "latest"
    older = parse([ModelVersions("a", [1, 2, 3], {"stable": 1, "canary": 3})]).model_config_list.config[0]
    assert list(older.model_version_policy.specific.versions) == [1, 3]
    with pytest.raises(ValueError, match="does not exist"):
        model_server_config_text([ModelVersions("a", [1], {"stable": 7})])
    assert parse_labels("stable=3,canary=4") == {"stable": 3, "canary": 4}
    for bad in ("stable", "stable=x", "=3", "stable=0"):
        with pytest.raises(ValueError, match="LABEL=VERSION"):
            parse_labels(bad)


def test_docker_compose_serves_the_generated_files():
    import yaml

    with open(os.path.join(REPO, "serving", "docker-compose.yml"), encoding="utf-8") as f:
        text = f.read()
    assert text == docker_compose_text(), "serving/docker-compose.yml is stale: regenerate it"
    service = yaml.safe_load(text)["services"]["tf-serving"]
    assert service["image"].split(":-")[-1].rstrip("}").startswith("tensorflow/serving:")
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    assert service["volumes"][0].endswith(":/models:ro")
    command = " ".join(service["command"])
    for name in (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG):
        assert f"/models/{name}" in command
    # The checked-in templates parse like the generated ones.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    configs = os.path.join(REPO, "serving", "configs")
    with open(os.path.join(configs, MODELS_CONFIG), encoding="utf-8") as f:
        text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    with open(os.path.join(configs, BATCHING_CONFIG), encoding="utf-8") as f:
        text_format.Parse(f.read(), batching_parameters_class()())


def test_baseline_head_exports_without_attention(tmp_path):
    model = tiny_embedder("single")
    path = dgml_export.export_for_serving(model, tmp_path, "single", image_size=SIZE, resize_size=RESIZE)
    outputs = tf.saved_model.load(str(path)).signatures["serving_default"].structured_outputs
    assert set(outputs) == {"embedding", "group_embeddings"}
    meta = json.loads((path / "assets" / names.METADATA_FILE).read_text())
    assert (meta["num_groups"], meta["group_dim"], meta["attention_size"]) == (1, 16, None)
    written = write_serving_configs(tmp_path, {"single": {"stable": 1}})
    assert set(written) == {MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG}


# ---------------------------------------------------------------- the image guard of image_bytes


def png_by_hand(array: np.ndarray, bit_depth: int = 8, width=None, height=None) -> bytes:
    """A PNG written with zlib (no Pillow): gray (H, W) or RGB (H, W, 3), 8 or 16 bits.

    ``width``/``height`` override the IHDR with the rows of ``array`` repeated, streamed through
    one compressor, so a 20000 x 20000 image of zeros is a ~1 MB file.
    """
    import struct
    import zlib

    height_px = array.shape[0] if height is None else height
    width_px = array.shape[1] if width is None else width
    color_type = 2 if array.ndim == 3 else 0
    dtype = ">u2" if bit_depth == 16 else np.uint8
    compressor = zlib.compressobj(9)
    if width is None:
        parts = [compressor.compress(b"\0" + array[y].astype(dtype).tobytes()) for y in range(height_px)]
    else:  # constant rows of zeros
        row = b"\0" * (1 + width_px * (3 if color_type == 2 else 1) * bit_depth // 8)
        parts = [compressor.compress(row) for _ in range(height_px)]
    parts.append(compressor.flush())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width_px, height_px, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def embed_bytes(path, images):
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return fn(image_bytes=tf.constant(images))["embedding"].numpy()


def test_image_bytes_refuses_a_decompression_bomb_from_its_header(exported):
    _, _, path = exported
    bomb = png_by_hand(np.zeros((1, 1, 3), np.uint8), width=20000, height=20000)
    assert len(bomb) < 2_000_000  # 1.2 GB of pixels once decoded
    meta = json.loads((path / "assets" / names.METADATA_FILE).read_text())
    assert meta["max_image_pixels"] == 4096 * 4096
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"20000 x 20000 pixels.*above the limit of 16777216 pixels \(max_image_pixels\)"):
        embed_bytes(path, [bomb])
    # One bad image fails the whole call (TF Serving answers INVALID_ARGUMENT), good ones still work.
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        embed_bytes(path, [png_bytes(photo(30, 44)), bomb])


@pytest.mark.parametrize("name, make", [
    ("jpeg", lambda: encoded(Image.new("RGB", (5000, 4000)), "JPEG")),
    ("webp_lossy", lambda: encoded(Image.new("RGB", (5000, 4000)), "WEBP")),
    ("webp_lossless", lambda: encoded(Image.new("RGB", (5000, 4000)), "WEBP", lossless=True)),
    ("bmp_header", lambda: b"BM" + b"\0" * 16 + __import__("struct").pack("<ii", 5000, -4000) + b"\0" * 40),
    ("gif_frames", lambda: encoded(Image.new("RGB", (2000, 2000)), "GIF", save_all=True, append_images=[
        Image.new("RGB", (2000, 2000), (40 * i, 0, 0)) for i in range(1, 5)])),  # 5 x 4M pixels
])
def test_every_format_is_checked_before_decoding(exported, name, make):
    _, _, path = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit of 16777216 pixels"):
        embed_bytes(path, [make()])


def test_unknown_empty_and_animated_webp_are_refused_clearly(exported):
    _, _, path = exported
    for data in (b"not an image", b"", b"GIF"[:2], b"%PDF-1.4 " * 10):
        with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image format"):
            embed_bytes(path, [data])
    frames = [Image.fromarray(photo(30, 44)), Image.fromarray(255 - photo(30, 44))]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Animated WebP"):
        embed_bytes(path, [encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="no pixels"):
        embed_bytes(path, [png_by_hand(np.zeros((1, 1, 3), np.uint8), width=0, height=5)])
    import struct

    one_pixel_frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x01\x00\x00"
    many_frames = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0) + one_pixel_frame * 5000 + b"\x3b"
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 4096 blocks"):
        embed_bytes(path, [many_frames])
    truncated = png_bytes(photo(30, 44))[:60]
    with pytest.raises(tf.errors.InvalidArgumentError):
        embed_bytes(path, [truncated])


def test_odd_images_embed_like_their_8_bit_rgb_equivalent(exported):
    model, _, path = exported
    picture = photo(30, 44)
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (30, 44, 3)).astype(np.uint16)
    gray16 = rng.integers(0, 65536, (30, 44)).astype(np.uint16)
    frames = [Image.fromarray(picture), Image.fromarray(255 - picture)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    cmyk = encoded(Image.fromarray(picture).convert("CMYK"), "JPEG", quality=95)
    cases = [
        # (bytes sent, the same image as 8-bit RGB computed independently)
        (png_by_hand(np.array([[[200, 30, 90]]], np.uint8)), np.array([[[200, 30, 90]]], np.uint8)),
        (png_by_hand(wide, bit_depth=16), (wide >> 8).astype(np.uint8)),  # 16 -> 8 bits: high byte
        (png_by_hand(gray16, bit_depth=16), np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1)),
        (gif, np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))),  # the first frame
        (cmyk, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))),  # Pillow's CMYK -> RGB
    ]
    got = embed_bytes(path, [data for data, _ in cases])
    expected = np.asarray(model(np.stack([numpy_eval_preprocess(rgb) for _, rgb in cases]), training=False)["embedding"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_max_image_pixels_is_an_export_option(exported, tmp_path):
    model, _, _ = exported
    path = dgml_export.export_for_serving(model, tmp_path, "m", image_size=SIZE, resize_size=RESIZE,
                                          max_image_pixels=1000)
    assert json.loads((path / "assets" / names.METADATA_FILE).read_text())["max_image_pixels"] == 1000
    small, large = png_bytes(photo(25, 40)), png_bytes(photo(30, 44))  # 1000 and 1320 pixels
    assert embed_bytes(path, [small]).shape == (1, 48)
    with pytest.raises(tf.errors.InvalidArgumentError, match="44 x 30 pixels.*limit of 1000 pixels"):
        embed_bytes(path, [large])
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_image_pixels must be a positive integer"):
            dgml_export.export_for_serving(model, tmp_path, "m", image_size=SIZE, max_image_pixels=bad)


def rechunk_gif(gif: bytes, size: int) -> tuple:
    """The same GIF with every data sub-block chain re-split into ``size``-byte sub-blocks, and
    the positions of its image descriptors in the new bytes."""
    def table(packed):
        return 3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0

    def chain(pos):  # -> (data, position after the terminator)
        data = b""
        while gif[pos]:
            data += gif[pos + 1:pos + 1 + gif[pos]]
            pos += 1 + gif[pos]
        return data, pos + 1

    def split(data):
        return b"".join(bytes([len(data[i:i + size])]) + data[i:i + size] for i in range(0, len(data), size)) + b"\0"

    pos = 13 + table(gif[10])
    out, descriptors = gif[:pos], []
    while gif[pos] != 0x3B:
        head = 2 if gif[pos] == 0x21 else 11 + table(gif[pos + 9])
        if gif[pos] == 0x2C:
            descriptors.append(len(out))
        data, after = chain(pos + head)
        out += gif[pos:pos + head] + split(data)
        pos = after
    return out + b"\x3b", descriptors


def test_gif_block_walk_follows_any_sub_block_layout(exported):
    _, _, path = exported
    frames = [Image.fromarray(photo(30, 44)), Image.fromarray(255 - photo(30, 44))]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    small_blocks, descriptors = rechunk_gif(gif, 3)
    assert len(descriptors) == 2 and small_blocks != gif and len(small_blocks) > len(gif)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(small_blocks)).convert("RGB")),
                                  np.asarray(Image.open(io.BytesIO(gif)).convert("RGB")))
    got = embed_bytes(path, [gif, small_blocks])
    np.testing.assert_allclose(got[1], got[0], atol=1e-6)
    # The largest frame decides the canvas: a 2-frame GIF whose second frame is 3000 x 3000
    # (2 x 9M pixels) is refused, though its logical screen is 44 x 30.
    import struct

    big_frame = bytearray(small_blocks)
    big_frame[descriptors[1] + 5:descriptors[1] + 9] = struct.pack("<HH", 3000, 3000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="3000 x 3000 pixels"):
        embed_bytes(path, [bytes(big_frame)])


def test_cli_fold_flag_folds_the_batch_norms_or_keeps_them(tmp_path):
    from dgml_tf.models import build_embedding_model

    keras.utils.set_random_seed(3)
    model = build_embedding_model("small_cnn", (SIZE, SIZE, 3), head="attentive", num_groups=2,
                                  embedding_dim=8, reduction=4, freeze_batch_norm=False)
    model.save(tmp_path / "model.keras")
    images = np.stack([numpy_eval_preprocess(g) for g in fashion_mnist_images(2)])
    expected = np.asarray(model(images, training=False)["embedding"])
    for flag, version, folded in (("--fold_batch_norm", 1, 6), ("--nofold_batch_norm", 2, 0)):
        with pytest.raises(SystemExit) as exit_info:
            dgml_export.run(["export", f"--keras_model={tmp_path / 'model.keras'}",
                             f"--base_dir={tmp_path / 'exports'}", f"--image_size={SIZE}",
                             f"--version={version}", flag])
        assert exit_info.value.code == 0
        version_dir = tmp_path / "exports" / "dgml" / str(version)
        meta = json.loads((version_dir / "assets" / names.METADATA_FILE).read_text())
        assert meta["batch_norm_folded"] == folded
        loaded = tf.saved_model.load(str(version_dir))
        assert sum("moving_mean" in v.name for v in loaded.variables) == 6 - folded
        got = loaded.signatures["embed_pixels"](images=tf.constant(images))["embedding"]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
