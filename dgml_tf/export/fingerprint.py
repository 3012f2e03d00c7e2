"""A stable identity for one exported model version: its SavedModel fingerprint.

TensorFlow writes ``fingerprint.pb`` with every SavedModel (hashes of the graph, signatures,
object graph and checkpoint). Two exports of the same weights by the same code agree on it; a
retrained or re-built model does not, which is what an index needs to refuse stale embeddings.
"""

from __future__ import annotations

import os

import tensorflow as tf

from dgml_tf.export.tf_serving_layout import SAVED_MODEL_FILE


def model_fingerprint(saved_model_dir: "str | os.PathLike") -> str:
    """Returns the SavedModel fingerprint of ``saved_model_dir`` as a string.

    The string is TensorFlow's "singleprint":
    ``<graph_def_program_hash>/<signature_def_hash>/<saved_object_graph_hash>/<checkpoint_hash>``.

    Args:
        saved_model_dir: a SavedModel directory (one TF Serving version directory).

    Returns:
        The fingerprint string.

    Raises:
        FileNotFoundError: the directory is not a SavedModel or has no ``fingerprint.pb``.

    Example:
        >>> model_fingerprint("exports/dgml/1")  # doctest: +SKIP
        '1289.../5857.../1177.../2854...'
    """
    path = os.fspath(saved_model_dir)
    if not os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(
            f"{path!r} is not a SavedModel directory (no saved_model.pb). Pass one version "
            "directory of an export, e.g. <base_dir>/<model_name>/<version>."
        )
    if not os.path.isfile(os.path.join(path, "fingerprint.pb")):
        raise FileNotFoundError(
            f"{path!r} has no fingerprint.pb (written since TF 2.12). Re-export the model with "
            "dgml_tf.export to get one."
        )
    return tf.saved_model.experimental.read_fingerprint(path).singleprint()
