"""tensorflow-similarity losses under Keras 3: the adapter that makes them build and train.

Lives with the losses (``PerGroupLoss`` wraps tensorflow-similarity losses through it);
``dgml_tf.similarity`` (the ``SimilarityModel`` integration) re-exports it. tensorflow-similarity
is an optional extra, imported lazily.
"""

from __future__ import annotations

_EXTRA_HINT = "Install the optional extra with `pip install dgml-tf[similarity]`."
_GRAPH_SAFE_FLAG = "_dgml_graph_safe_fn"


def require_tensorflow_similarity():
    """Imports and returns the ``tensorflow_similarity`` module, with a helpful error."""
    try:
        import tensorflow_similarity
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"This feature needs tensorflow-similarity (0.17.1), which is not importable "
            f"({error}). {_EXTRA_HINT}"
        ) from error
    return tensorflow_similarity


def make_tfsim_loss(loss, **kwargs):
    """Returns a tensorflow-similarity loss usable in Keras 3 ``fit`` (graph and XLA).

    - reduction ``"sum_over_batch_size"`` (a class is instantiated with it; Keras 3 rejects the
      library's default ``"auto"``);
    - ``loss.fn`` wrapped in ``tf.function`` (AutoGraph turns its Python ``if`` on tensors into
      graph ops), fed column labels ``(B, 1)`` (so those ``if`` branches have equal ranks, as
      XLA needs) and its per-anchor output reshaped to rank 1, so Keras averages it.

    Args:
        loss: a ``tensorflow_similarity.losses.MetricLoss`` instance, or such a class.
        **kwargs: constructor arguments when ``loss`` is a class (e.g. ``distance="cosine"``).

    Returns:
        The loss instance (an instance argument is modified in place and returned).

    Examples:

    >>> import tensorflow_similarity as tfsim
    >>> ms = make_tfsim_loss(tfsim.losses.MultiSimilarityLoss)
    >>> ms.reduction
    'sum_over_batch_size'
    """
    tfsim = require_tensorflow_similarity()
    import tensorflow as tf

    metric_loss = tfsim.losses.MetricLoss
    if isinstance(loss, type):
        if not issubclass(loss, metric_loss):
            raise TypeError(
                f"make_tfsim_loss expects a tensorflow_similarity.losses.MetricLoss class or "
                f"instance; got the class {loss.__name__}."
            )
        kwargs.setdefault("reduction", "sum_over_batch_size")
        loss = loss(**kwargs)
    elif kwargs:
        raise TypeError(
            "make_tfsim_loss: keyword arguments are only accepted with a loss class; got an "
            f"instance and {sorted(kwargs)}."
        )
    if not isinstance(loss, metric_loss):
        raise TypeError(
            "make_tfsim_loss expects a tensorflow_similarity.losses.MetricLoss (e.g. "
            f"tfsim.losses.MultiSimilarityLoss); got {type(loss).__name__}. Keras and dgml_tf "
            "losses need no wrapping."
        )
    if getattr(loss.fn, _GRAPH_SAFE_FLAG, False):
        return loss
    graph_fn = tf.function(loss.fn, autograph=True)

    def rank1_fn(*args, **fn_kwargs):
        if len(args) == 4:  # (query_labels, query_embeddings, key_labels, key_embeddings)
            # Column labels keep both branches of the library's `if tf.rank(labels) == 1`
            # the same rank, which XLA requires.
            args = (tf.reshape(args[0], [-1, 1]), args[1], tf.reshape(args[2], [-1, 1]), args[3])
        return tf.reshape(graph_fn(*args, **fn_kwargs), [-1])

    setattr(rank1_fn, _GRAPH_SAFE_FLAG, True)
    loss.fn = rank1_fn
    return loss
