"""Tests of the ONNX export: checker-valid, and numerically equal to TensorFlow on real images."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import dgml_tf.export as dgml_export
from test_export import RESIZE, SIZE, fashion_mnist_images, numpy_eval_preprocess, photo, tiny_embedder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = tiny_embedder()
    base = tmp_path_factory.mktemp("exports")
    return model, dgml_export.export_for_serving(model, base, "dgml", image_size=SIZE, resize_size=RESIZE)


def real_images() -> np.ndarray:
    """Preprocessed real images: Fashion-MNIST garments and a photograph, float32 [0, 255]."""
    originals = list(fashion_mnist_images(5)) + [photo(48, 40)]
    return np.stack([numpy_eval_preprocess(o) for o in originals])


def test_onnx_from_saved_model_matches_tensorflow(saved_model, tmp_path):
    import onnx

    _, version_dir = saved_model
    path = dgml_export.export_onnx(version_dir, tmp_path / "dgml.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert {o.name for o in proto.graph.output} == {"embedding", "group_embeddings", "attention"}

    images = real_images()
    expected = tf.saved_model.load(str(version_dir)).signatures["embed_pixels"](images=tf.constant(images))
    got = dgml_export.run_onnx(path, images)
    for key in ("embedding", "group_embeddings", "attention"):
        assert got[key].shape == tuple(expected[key].shape)
        np.testing.assert_allclose(got[key], expected[key].numpy(), atol=1e-4, rtol=0)
    # A batch size not seen before: the batch axis is dynamic in the ONNX graph.
    np.testing.assert_allclose(dgml_export.run_onnx(path, images[:1])["embedding"],
                               expected["embedding"].numpy()[:1], atol=1e-4, rtol=0)


def test_onnx_from_keras_model_matches_keras(saved_model, tmp_path):
    model, _ = saved_model
    path = dgml_export.export_onnx(model, tmp_path / "keras.onnx")
    images = real_images()
    got = dgml_export.run_onnx(path, images)
    expected = model(images, training=False)
    np.testing.assert_allclose(got["embedding"], np.asarray(expected["embedding"]), atol=1e-4, rtol=0)


def test_onnx_errors(saved_model, tmp_path):
    _, version_dir = saved_model
    with pytest.raises(ValueError, match=r"\.onnx"):
        dgml_export.export_onnx(version_dir, tmp_path / "model.bin")

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def f(self, x):
            return {"y": x}

    plain = Plain()
    tf.saved_model.save(plain, str(tmp_path / "plain"), signatures={"other": plain.f})
    with pytest.raises(ValueError, match="embed_pixels"):
        dgml_export.export_onnx(tmp_path / "plain", tmp_path / "x.onnx")
