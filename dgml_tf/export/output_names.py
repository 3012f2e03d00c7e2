"""The names exported SavedModels promise to clients. Changing one breaks every client: don't.

Embedder SavedModel (``dgml_tf.export.export_for_serving``):
  - signature ``serving_default``: input ``image_bytes`` (DT_STRING, shape [-1]; JPEG/PNG/GIF/BMP,
    over REST ``{"b64": ...}``), preprocessing done in-graph.
  - signature ``embed_pixels``: input ``images`` (DT_FLOAT, [-1, H, W, 3], RGB in [0, 255],
    already resized and centre-cropped to the export's image size).
  - both output ``embedding`` [-1, D], ``group_embeddings`` [-1, K, d] and, for attentive heads,
    ``attention`` [-1, K, h, w].

Retrieval SavedModel (``dgml_tf.index.retrieval_savedmodel``):
  - signature ``search_embedding``: input ``embedding`` [-1, D].
  - signature ``serving_default``: input ``image_bytes`` as above.
  - both output ``indices`` (int32 [-1, k]), ``scores`` (float32 [-1, k]), ``labels``
    (int64 [-1, k]) and ``ids`` (string [-1, k]).

The served retrieval model (``serving.retrieval_servable``) has the same two signatures and
outputs ``ids``, ``labels``, ``paths`` (string [-1, k]), ``scores`` and ``group_scores``
(float32 [-1, k, K]), plus ``attention`` on request.
"""

SERVING_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "embed_pixels"
SEARCH_SIGNATURE = "search_embedding"

IMAGE_BYTES_INPUT = "image_bytes"
PIXELS_INPUT = "images"
EMBEDDING_INPUT = "embedding"

EMBEDDING = "embedding"
GROUP_EMBEDDINGS = "group_embeddings"
ATTENTION = "attention"
EMBEDDER_OUTPUTS = (EMBEDDING, GROUP_EMBEDDINGS, ATTENTION)

INDICES = "indices"
SCORES = "scores"
LABELS = "labels"
IDS = "ids"
RETRIEVAL_OUTPUTS = (INDICES, SCORES, LABELS, IDS)
PATHS = "paths"
GROUP_SCORES = "group_scores"

METADATA_FILE = "dgml_export.json"
