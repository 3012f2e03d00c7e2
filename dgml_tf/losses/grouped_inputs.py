"""Reading (labels, embeddings) into the shape every grouped loss works on.

All metric losses of this package take integer labels ``(B,)`` or ``(B, 1)`` and embeddings
``(B, K, d)`` (K groups of d dims) or ``(B, D)``. This module turns both into int32 labels
``(B,)`` and float32 groups ``(B, K, d)``, with errors that say what was wrong,.
"""

from __future__ import annotations

from typing import Optional

from keras import ops

def standardize_labels(labels, loss_name: str):
    """Returns int32 labels of shape ``(B,)`` from ``(B,)`` or ``(B, 1)`` input."""
    labels = ops.convert_to_tensor(labels)
    rank = len(labels.shape)
    if rank == 2 and labels.shape[1] not in (1, None):
        raise ValueError(
            f"{loss_name}: labels must be integer class ids of shape (batch,) or (batch, 1); "
            f"got shape {tuple(labels.shape)}. One-hot labels are not accepted: pass "
            "argmax(one_hot, axis=-1)."
        )
    if rank not in (1, 2):
        raise ValueError(
            f"{loss_name}: labels must be integer class ids of shape (batch,) or (batch, 1); "
            f"got shape {tuple(labels.shape)}."
        )
    # Keras' Loss.__call__ has already cast labels to the loss dtype (float32): exact up to 2**24.
    return ops.cast(ops.reshape(labels, (-1,)), "int32")


def standardize_groups(embeddings, loss_name: str, num_groups: Optional[int] = None):
    """Returns float32 embeddings of shape ``(B, K, d)``.

    Args:
        embeddings: ``(B, K, d)`` group embeddings, or ``(B, D)``: one group (``num_groups``
            None), or the concatenation of ``num_groups`` equal groups (as
            ``dgml_tf.layers.flatten_groups`` makes).
        loss_name: used in error messages.
        num_groups: the expected K, or None to accept any.
    """
    embeddings = ops.cast(ops.convert_to_tensor(embeddings), "float32")
    shape = tuple(embeddings.shape)
    if len(shape) == 3:
        if shape[1] is None or shape[2] is None:
            raise ValueError(
                f"{loss_name}: the number of groups and the group size must be static; got "
                f"embeddings of shape {shape}."
            )
        if num_groups is not None and shape[1] != num_groups:
            raise ValueError(
                f"{loss_name} was configured for num_groups={num_groups} but received "
                f"embeddings with {shape[1]} groups (shape {shape}). Build the loss with "
                f"num_groups={shape[1]}."
            )
        return embeddings
    if len(shape) == 2:
        if shape[1] is None:
            raise ValueError(
                f"{loss_name}: the embedding size must be static; got shape {shape}."
            )
        groups = 1 if num_groups is None else num_groups
        if shape[1] % groups:
            raise ValueError(
                f"{loss_name}: cannot split a {shape[1]}-dim embedding into num_groups={groups} "
                "equal groups. Pass group embeddings (batch, K, d) or fix num_groups."
            )
        return ops.reshape(embeddings, (-1, groups, shape[1] // groups))
    raise ValueError(
        f"{loss_name}: embeddings must have shape (batch, K, d) or (batch, D); got shape "
        f"{shape} (rank {len(shape)})."
    )


def check_same_batch(labels, groups, loss_name: str) -> None:
    """Raises when labels and embeddings have different static batch sizes."""
    if labels.shape[0] is not None and groups.shape[0] is not None:
        if labels.shape[0] != groups.shape[0]:
            raise ValueError(
                f"{loss_name}: got {labels.shape[0]} labels for {groups.shape[0]} embeddings; "
                "labels and embeddings must have the same batch size."
            )
