"""Limits on encoded images, shared by the in-graph header check (``pipelines.decoding``), the
exported SavedModel's ``image_bytes`` signature and the REST server (``serving.limits``).

TensorFlow-free, so the server's limits module and the commands that only read flags do not load
TensorFlow for a number.
"""

# The default limit of served images: 4096 x 4096 pixels (~50 MB of RGB), far above any model
# input, far below what a decompression bomb asks for.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
