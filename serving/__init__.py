"""The REST retrieval service on TF Serving's REST contract, and its client.

Modules, one concept each:
  - ``ports``: a free TCP port for a server about to start (main job, bench, tests).
  - ``errors``: failures with TF Serving's canonical codes and their HTTP statuses.
  - ``tensor_json``: TF Serving's JSON tensor encoding (row / columnar, b64).
  - ``signature_defs``: SignatureDef protos and the metadata JSON.
  - ``servable``: base class of a served model version; ``saved_model_servable``: a SavedModel.
  - ``embedders``: query embeddings from a local SavedModel or a remote TF Serving.
  - ``retrieval_servable``: the ``<name>_retrieval`` model (top-k neighbours from the index).
  - ``state_loader``: loading the versions ``models.config`` (parsed, with the version
    policies, by ``dgml_tf.export.tf_serving_layout``, shared with exporting) selects and pairing
    the index with its embedder version; ``model_registry``: atomic snapshots.
  - Signature, input and output names come from ``dgml_tf.export.output_names``.
  - ``core``: the transport-neutral serving core (admission, checks, batching, metrics), with
    ``limits``, ``image_guard``, ``batching`` and ``metrics``; ``http_app``: the REST routes and
    the hardened HTTP/1.1 protocol on uvicorn; ``server``: ``python -m serving.server``.
  - ``grpc_api``: TF Serving's gRPC PredictionService / ModelService on the same servables.
  - ``gallery_api``: the gallery routes of the explorer page (``explorer/``, ``GET /explorer``).
  - ``client``: ``RetrievalClient`` and ``python -m serving.client`` (stdlib only), and
    ``GrpcRetrievalClient`` (``--grpc``).
  - ``synthetic_gallery``: encoded images of known classes and a tiny exported embedder + index,
    for smoke tests and ``bench/rest_latency.py``.

The server needs the ``serving`` extra (``pip install dgml-tf[serving]``: scann,
tensorflow-serving-api); the client needs nothing beyond the standard library.
"""
