"""Export an embedder for serving: TF Serving SavedModels, their configs, and ONNX.

Library::

    from dgml_tf.export import export_for_serving, model_fingerprint, export_onnx
    version_dir = export_for_serving(model, "exports", "dgml", image_size=(224, 224))
    model_fingerprint(version_dir)         # identity of this exact version

Modules, one concept each:
  - ``output_names``: the stable names of the exported signatures, inputs and outputs.
  - ``preprocessing``: the in-graph evaluation preprocessing (decode, resize, centre crop).
  - ``signatures``: the ``serving_default`` and ``embed_pixels`` endpoints of an embedder.
  - ``model_source``: turns a keras.Model, a ``.keras`` file or a run directory into a model.
  - ``savedmodel``: ``export_for_serving``, one version of an embedder (and the CLI's recipe).
  - ``tf_serving_layout``: ``<base>/<name>/<version>/`` directories (listing, writing them
    atomically) and ``models.config`` (parsing and writing), shared with ``serving``.
  - ``fingerprint``: the SavedModel fingerprint as a stable string.
  - ``metadata``: ``assets/dgml_export.json`` written next to every export.
  - ``serving_protos``: TF Serving config messages missing from tensorflow-serving-api.
  - ``serving_configs``: batching and monitoring configs, docker-compose, and writing them all.
  - ``onnx_export``: the pixel embedder as an ONNX model.
  - ``cli``: ``python -m dgml_tf.export``.

Importing this package imports neither Keras nor TensorFlow (names load on first use).
"""

from dgml_tf._lazy import lazy_exports

# Lazy (PEP 562): serving imports ``output_names`` / ``tf_serving_layout`` from here without
# paying for Keras, and CLIs decide oneDNN before TensorFlow is first imported.
_EXPORTS = {
    "export_for_serving": "dgml_tf.export.savedmodel",
    "export_and_write_configs": "dgml_tf.export.savedmodel",
    "ExportResult": "dgml_tf.export.savedmodel",
    "model_fingerprint": "dgml_tf.export.fingerprint",
    "export_onnx": "dgml_tf.export.onnx_export",
    "run_onnx": "dgml_tf.export.onnx_export",
    "read_export_metadata": "dgml_tf.export.metadata",
    "write_export_metadata": "dgml_tf.export.metadata",
    "write_serving_configs": "dgml_tf.export.serving_configs",
    "parse_labels": "dgml_tf.export.serving_configs",
    "VersionExistsError": "dgml_tf.export.tf_serving_layout",
    "run": "dgml_tf.export.cli",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
