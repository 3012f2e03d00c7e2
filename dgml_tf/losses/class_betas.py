"""The learnable margin-loss boundaries ``beta``, one per training class and group."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dgml_tf")
class ClassBetas(keras.layers.Layer):
    """Holds the ``(num_classes, num_groups)`` variable of margin-loss boundaries.

    A layer (not a bare variable) so Keras tracks it: attach it to the model being fitted and
    ``model.fit`` trains the betas with the model's optimizer::

        loss = MarginLoss(num_classes=100, num_groups=3)
        model.class_betas = loss.class_betas      # now in model.trainable_variables
        model.compile(optimizer="adam", loss={"group_embeddings": loss})

    The authors train the betas with their own learning rate (5e-5; 1e-5 for SOP) and no
    weight decay; a custom training loop gets them from ``loss.trainable_variables``. With a
    Keras optimizer that has ``weight_decay``, exclude them with
    ``optimizer.exclude_from_weight_decay(var_names=["class_betas"])``. The betas are training
    state only; inference models do not need them.

    Calling the layer returns its inputs unchanged (it has no computation of its own).

    Args:
        num_classes: number of training classes (labels must lie in ``[0, num_classes)``).
        num_groups: K.
        initial_value: starting beta (1.2 in Wu et al. and the authors' code).
        **kwargs: base layer arguments (``name``, ``trainable``).

    Examples:

    >>> betas = ClassBetas(num_classes=5, num_groups=3)
    >>> tuple(betas.betas.shape)
    (5, 3)
    """

    def __init__(self, num_classes: int, num_groups: int, initial_value: float = 1.2, **kwargs):
        kwargs.setdefault("name", "class_betas")
        super().__init__(**kwargs)
        for arg, value in (("num_classes", num_classes), ("num_groups", num_groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClassBetas: {arg} must be a positive integer; got {value!r}.")
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.initial_value = float(initial_value)
        # Created eagerly (not in build) so a loss can use the betas before any model call.
        self.betas = self.add_weight(
            name="class_betas",
            shape=(num_classes, num_groups),
            initializer=keras.initializers.Constant(self.initial_value),
            dtype="float32",
            autocast=False,
        )
        self.built = True

    def call(self, inputs):
        return inputs

    def for_labels(self, labels, group_index: int):
        """The beta of each label for one group: float32 ``(B,)``."""
        return ops.take(self.betas[:, group_index], labels, axis=0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_groups": self.num_groups,
                "initial_value": self.initial_value,
            }
        )
        return config
