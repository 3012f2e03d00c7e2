"""Internals of ``dgml_tf.export``: TF Serving SavedModels, their configs, and ONNX.

Modules, one concept each:
  - ``output_names``: the stable names of the exported signatures, inputs and outputs.
  - ``preprocessing``: the in-graph evaluation preprocessing (decode, resize, centre crop).
  - ``signatures``: the ``serving_default`` and ``embed_pixels`` endpoints of an embedder.
  - ``model_source``: turns a keras.Model, a ``.keras`` file or a run directory into a model.
  - ``tf_serving_layout``: ``<base>/<name>/<version>/`` directories, written atomically.
  - ``fingerprint``: the SavedModel fingerprint as a stable string.
  - ``metadata``: ``assets/dgml_export.json`` written next to every export.
  - ``serving_protos``: TF Serving config messages missing from tensorflow-serving-api.
  - ``serving_configs``: ``models.config``, batching and monitoring configs, docker-compose.
  - ``onnx_export``: the pixel embedder as an ONNX model.
"""
