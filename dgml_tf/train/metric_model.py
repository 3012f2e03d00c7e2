"""A Keras model that trains an embedding model with a metric loss (and a diversity term).

``MetricLearningModel`` wraps an embedding model (dict outputs, see DEVELOPERS.md) and an
embedding loss taking ``(labels (B,), group_embeddings (B, K, d))``. ``fit`` consumes batches of
``(images, integer labels)``; ``predict`` returns the embedding model's outputs.

Cross-replica mining. Metric losses look at pairs, so under a ``tf.distribute`` strategy with R
replicas each replica all-gathers the group embeddings and labels of the whole global batch
(``ReplicaContext.all_gather``) and evaluates the loss L on it: positives and negatives span
replicas, and every replica computes the same L.

Gradient scaling, derived from TF 2.20 / Keras 3.15 internals:

* ``all_gather``'s gradient all-reduces (SUMs) the upstream gradient over replicas, then slices
  the replica's own rows. Every replica back-propagates the same dL/dE_global, so each replica
  receives ``R * dL/dE_r`` for its own embeddings E_r.
* Keras' TF optimizer (``TFOptimizer._backend_update_step``) SUMs the per-replica gradients.
* Hence each replica differentiates ``L / R``: the model weights get
  ``sum_r (R * dL/dE_r * dE_r/dw) / R = dL/dw`` and variables used directly by the loss (the
  margin betas, identical on every replica) get ``sum_r (dL/dbeta) / R = dL/dbeta`` — the
  single-device gradient on the global batch for both. (Stopping the gradient on the other
  replicas' rows would make the weight gradient right without the 1/R but the betas' R times
  too large.) Per-replica regularisation losses (``model.losses``) are averaged over replicas,
  Keras' convention.

The loss is called through ``loss.call`` and reduced here rather than through
``Loss.__call__``, because Keras divides non-scalar reductions by R by itself; the single 1/R
above is then the only scaling. Mining randomness is keyed on ``(seed, optimizer.iterations)``
(see :mod:`dgml_tf.train.seeding`) and passed to losses whose ``call`` accepts ``seed``.

Backends. The step math (:meth:`MetricLearningModel.compute_metric_losses`) is ``keras.ops``
only; each backend gets the train step its Keras trainer expects: TensorFlow the
``GradientTape`` step above (with the tf.distribute gathering), PyTorch ``backward()``, JAX a
stateless ``jax.value_and_grad`` step. Under ``keras.distribution.DataParallel`` on JAX the step
is one SPMD program over the global batch, so the loss already sees every device's rows (the
cross-replica mining of the TF path, with no gather and no 1/R: the gradient is the global-batch
one by construction).
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import keras
from keras import ops

from dgml_tf.losses.diversity import diversity_loss
from dgml_tf.train.seeding import new_seed, step_seed


def _loss_function_of(loss):
    return loss.call if isinstance(loss, keras.losses.Loss) else loss


def _accepts_seed(loss) -> bool:
    try:
        parameters = inspect.signature(_loss_function_of(loss)).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in parameters


def _loss_variables(loss) -> list:
    """Variables a loss owns (e.g. the margin loss' betas), found without knowing its class."""
    if isinstance(loss, keras.layers.Layer):
        return list(loss.trainable_variables)
    variables = getattr(loss, "trainable_variables", None)
    if variables is None:
        variables = getattr(loss, "variables", None)
    if variables is None:
        return []
    variables = list(variables() if callable(variables) else variables)
    for variable in variables:
        if not isinstance(variable, keras.Variable):
            raise TypeError(
                f"The embedding loss owns {variable!r}, which is not a keras.Variable; create "
                "loss variables with keras.Variable(...) (or a Keras layer's add_weight) so the "
                "model can train, save and distribute them."
            )
    return variables


@keras.saving.register_keras_serializable(package="dgml_tf")
class MetricLearningModel(keras.Model):
    """Trains ``embedding_model`` with ``embedding_loss + diversity_weight * diversity_loss``.

    Args:
        embedding_model: a ``keras.Model`` whose outputs are a dict with at least
            ``"group_embeddings"`` ``(B, K, d)`` (see ``dgml_tf.models.build_embedding_model``).
        embedding_loss: a metric loss called as ``loss(labels (B,), group_embeddings (B, K, d))``
            returning a scalar (or per-example values, averaged; summed for ``reduction="sum"``).
            Keras ``Loss`` objects are evaluated through ``loss.call``. Its variables (e.g. the
            margin loss' betas; ``loss.trainable_variables``) become trainable weights of this
            model, in the ``"loss"`` parameter group. If its ``call`` accepts ``seed``, it gets a
            stateless seed (int64, shape (2,)) derived from ``(seed, optimizer.iterations)``.
        diversity_weight: lambda_div, weight of ``dgml_tf.losses.diversity_loss`` (>= 0).
        gather_across_replicas: under a strategy with several replicas, mine pairs over the
            global batch (default) instead of each replica's slice.
        seed: integer seed of the mining randomness; drawn at random (and kept in the config)
            when None.
        **kwargs: ``keras.Model`` arguments (``name``...).

    Logs ``loss`` (total), ``embedding_loss``, ``diversity_loss`` (unweighted) and the current
    learning rate(s): ``learning_rate`` or, for a grouped optimizer, ``learning_rate_<group>``.

    Example:
        >>> model = MetricLearningModel(
        ...     build_embedding_model(backbone="small_cnn", input_shape=(32, 32, 3)),
        ...     MarginLoss(num_classes=100, num_groups=3), diversity_weight=0.02, seed=0)
        >>> model.compile(optimizer=build_grouped_optimizer(model, groups, steps_per_epoch=50))
        >>> model.fit(train_dataset, epochs=2, steps_per_epoch=50)
        >>> outputs = model.predict(images)  # {"embedding", "group_embeddings", "attention"}
    """

    def __init__(
        self,
        embedding_model: keras.Model,
        embedding_loss: Callable,
        diversity_weight: float = 0.0,
        gather_across_replicas: bool = True,
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(embedding_model, keras.Model):
            raise TypeError(
                f"embedding_model must be a keras.Model, got {type(embedding_model).__name__}; "
                "build one with dgml_tf.models.build_embedding_model(...)."
            )
        outputs = getattr(embedding_model, "output", None) if embedding_model.built else None
        if outputs is not None and not (
            isinstance(outputs, dict) and "group_embeddings" in outputs
        ):
            raise ValueError(
                "embedding_model must return a dict with a 'group_embeddings' (B, K, d) output "
                "(DEVELOPERS.md contract); build it with dgml_tf.models.build_embedding_model."
            )
        if not callable(embedding_loss):
            raise TypeError(f"embedding_loss must be callable, got {embedding_loss!r}.")
        reduction = getattr(embedding_loss, "reduction", "sum_over_batch_size")
        if reduction in (None, "none"):
            raise ValueError(
                "embedding_loss has reduction='none'; a training loss must reduce to a scalar: "
                "use 'sum_over_batch_size' (mean) or 'sum'."
            )
        if not diversity_weight >= 0:
            raise ValueError(f"diversity_weight must be >= 0, got {diversity_weight}.")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {seed!r}.")

        self.embedding_model = embedding_model
        self.embedding_loss = embedding_loss
        self.diversity_weight = float(diversity_weight)
        self.gather_across_replicas = bool(gather_across_replicas)
        self.seed = new_seed() if seed is None else seed
        self._loss_takes_seed = _accepts_seed(embedding_loss)
        tracked = {id(v) for v in self.weights}
        self._loss_variables = _loss_variables(embedding_loss)
        for variable in self._loss_variables:
            if id(variable) not in tracked:
                self._track_variable(variable)
        self.embedding_loss_tracker = keras.metrics.Mean(name="embedding_loss")
        self.diversity_loss_tracker = keras.metrics.Mean(name="diversity_loss")
        if embedding_model.built:
            self.built = True

    # ----------------------------------------------------------------------------- Keras API
    def build(self, input_shape):
        if not self.embedding_model.built:
            self.embedding_model.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.embedding_model(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, weighted_metrics=None, **kwargs):
        """``keras.Model.compile`` without ``loss``/``metrics``: the loss is ``embedding_loss``.

        Raises:
            ValueError: if ``loss``, ``metrics`` or ``weighted_metrics`` is given.
        """
        if loss is not None:
            raise ValueError(
                "MetricLearningModel computes its loss from embedding_loss (and "
                "diversity_weight); do not pass `loss` to compile()."
            )
        if metrics or weighted_metrics:
            raise ValueError(
                "MetricLearningModel does not take compile() metrics: retrieval metrics need a "
                "whole split; evaluate with dgml_tf.evaluate on model.predict() outputs."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles from a saved compile config (``.keras`` loading), then builds the optimizer
        so its saved state (moments, iterations) can be restored."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        trackers = [self.embedding_loss_tracker, self.diversity_loss_tracker]
        loss_tracker = getattr(self, "_loss_tracker", None)
        return ([loss_tracker] if loss_tracker is not None else []) + trackers

    def parameter_groups(self) -> dict:
        """Trainable variables by parameter group.

        Returns:
            ``dgml_tf.models.parameter_groups(embedding_model)`` ("backbone", "key_value",
            "queries") plus ``"loss"``: the embedding loss' variables (margin betas).
        """
        from dgml_tf.models.variable_groups import parameter_groups
        from dgml_tf.train.group_names import LOSS_GROUP

        groups = {name: list(v) for name, v in parameter_groups(self.embedding_model).items()}
        if LOSS_GROUP in groups:
            raise ValueError(
                f"dgml_tf.models.parameter_groups must not define a {LOSS_GROUP!r} group.")
        groups[LOSS_GROUP] = [v for v in self._loss_variables if v.trainable]
        return groups

    # ------------------------------------------------------------------------ the step math
    def _replicas(self) -> int:
        if keras.backend.backend() != "tensorflow":
            return 1  # JAX DataParallel is SPMD over the global batch; torch runs one device
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        return context.num_replicas_in_sync if context is not None else 1

    def _gather_global_batch(self, labels, group_embeddings):
        if keras.backend.backend() != "tensorflow":
            return labels, group_embeddings  # see the module docstring (Backends)
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if (
            not self.gather_across_replicas
            or context is None
            or context.num_replicas_in_sync == 1
        ):
            return labels, group_embeddings
        # Without stop_gradient: all_gather's gradient is what makes the 1/R scaling exact.
        gathered_labels = context.all_gather(labels, axis=0)
        gathered = context.all_gather(group_embeddings, axis=0)
        # all_gather drops static shapes; losses need the static K and d.
        gathered_labels = tf.ensure_shape(gathered_labels, [None] + labels.shape[1:])
        gathered = tf.ensure_shape(gathered, [None] + group_embeddings.shape[1:])
        return gathered_labels, gathered

    def _step_counter(self):
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                return tf.constant(0, tf.int64)
            return 0
        return optimizer.iterations

    def _embedding_loss_value(self, labels, group_embeddings, seed):
        loss = self.embedding_loss
        kwargs = {"seed": seed} if self._loss_takes_seed else {}
        if isinstance(loss, keras.losses.Loss):
            values = loss.call(labels, ops.cast(group_embeddings, loss.dtype), **kwargs)
        else:
            values = loss(labels, group_embeddings, **kwargs)
        values = ops.cast(values, "float32")
        if len(values.shape) == 0:
            return values
        if getattr(loss, "reduction", None) == "sum":
            return ops.sum(values)
        return ops.mean(values)

    def compute_metric_losses(self, images, labels, training: bool = False) -> dict:
        """Forward pass and loss terms on the (global) batch; the math of train and test steps.

        Args:
            images: the replica's images ``(b, H, W, 3)``.
            labels: the replica's integer labels ``(b,)`` or ``(b, 1)``.
            training: forwarded to the embedding model.

        Returns:
            dict of float32 scalars: ``loss`` (embedding + weighted diversity + model
            regularisation losses), ``embedding_loss``, ``diversity_loss`` (unweighted), and
            ``batch_size`` (examples the loss saw, i.e. the global batch when gathering).
        """
        outputs = self(images, training=training)
        return self._losses_from_outputs(outputs, labels, lambda: self.losses)

    def _losses_from_outputs(self, outputs, labels, regularization_losses: Callable) -> dict:
        """The loss terms of :meth:`compute_metric_losses` from the model's outputs.

        ``regularization_losses()`` returns the forward pass' ``model.losses`` (JAX's stateless
        call returns them instead of storing them on the layers).
        """
        if not isinstance(outputs, dict) or "group_embeddings" not in outputs:
            raise ValueError(
                "embedding_model must return a dict with a 'group_embeddings' output."
            )
        labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
        labels, group_embeddings = self._gather_global_batch(labels, outputs["group_embeddings"])
        seed = step_seed(self.seed, self._step_counter())
        embedding_loss = self._embedding_loss_value(labels, group_embeddings, seed)
        diversity = ops.cast(diversity_loss(group_embeddings), "float32")
        total = embedding_loss + self.diversity_weight * diversity
        model_losses = regularization_losses()
        if model_losses:
            total = total + ops.cast(ops.sum(ops.stack(model_losses)), "float32")
        return {
            "loss": total,
            "embedding_loss": embedding_loss,
            "diversity_loss": diversity,
            "batch_size": ops.cast(ops.shape(labels)[0], "float32"),
        }

    def _unpack(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if labels is None:
            raise ValueError(
                "MetricLearningModel trains on batches of (images, integer labels); got batches "
                "without labels."
            )
        return images, labels

    def _update_trackers(self, losses: dict) -> None:
        weight = losses["batch_size"]
        self._loss_tracker.update_state(losses["loss"], sample_weight=weight)
        self.embedding_loss_tracker.update_state(losses["embedding_loss"], sample_weight=weight)
        self.diversity_loss_tracker.update_state(losses["diversity_loss"], sample_weight=weight)

    def _learning_rates(self) -> dict:
        optimizer = self.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
        if hasattr(optimizer, "optimizers"):  # MultiOptimizer / GroupedOptimizer
            return {
                f"learning_rate_{inner.name}": ops.cast(inner.learning_rate, "float32")
                for inner in optimizer.optimizers
            }
        return {"learning_rate": ops.cast(optimizer.learning_rate, "float32")}

    def train_step(self, *args):
        """One optimisation step; ``(data)`` on TF and torch, ``(state, data)`` on JAX."""
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_train_step(*args)
        if backend == "torch":
            return self._torch_train_step(*args)
        if backend != "tensorflow":
            raise NotImplementedError(
                f"MetricLearningModel trains on the tensorflow, jax and torch backends; "
                f"KERAS_BACKEND is {backend!r}."
            )
        return self._tf_train_step(*args)

    def test_step(self, *args):
        """One evaluation step; ``(data)`` on TF and torch, ``(state, data)`` on JAX."""
        if keras.backend.backend() == "jax":
            return self._jax_test_step(*args)
        images, labels = self._unpack(args[0])
        losses = self.compute_metric_losses(images, labels, training=False)
        self._update_trackers(losses)
        return {m.name: m.result() for m in self.metrics}

    def _tf_train_step(self, data):
        import tensorflow as tf

        images, labels = self._unpack(data)
        with tf.GradientTape() as tape:
            losses = self.compute_metric_losses(images, labels, training=True)
            # See the module docstring: 1/R makes the summed gradient the global-batch one.
            objective = losses["loss"] / ops.cast(self._replicas(), "float32")
            objective = self.optimizer.scale_loss(objective)
        learning_rates = self._learning_rates()  # the rates this step's update uses
        variables = self.trainable_variables
        gradients = tape.gradient(objective, variables)
        self.optimizer.apply(gradients, variables)
        self._update_trackers(losses)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update(learning_rates)
        return logs

    def _torch_train_step(self, data):
        import torch

        images, labels = self._unpack(data)
        self.zero_grad()
        losses = self.compute_metric_losses(images, labels, training=True)
        objective = self.optimizer.scale_loss(losses["loss"])
        learning_rates = self._learning_rates()
        objective.backward()
        variables = self.trainable_variables
        gradients = [v.value.grad for v in variables]
        with torch.no_grad():
            self.optimizer.apply(gradients, variables)
        self._update_trackers(losses)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update(learning_rates)
        return logs

    def _jax_losses(self, trainable, non_trainable, optimizer_variables, images, labels,
                    training):
        """Stateless loss terms for ``jax.value_and_grad`` (the objective first)."""
        outputs, non_trainable, model_losses = self.stateless_call(
            trainable, non_trainable, images, return_losses=True, training=training
        )
        mapping = list(zip(self.trainable_variables, trainable))
        mapping.extend(zip(self.non_trainable_variables, non_trainable))
        if optimizer_variables is not None:
            mapping.extend(zip(self.optimizer.variables, optimizer_variables))
        # The scope makes the loss' own variables (margin betas) and optimizer.iterations (the
        # step seed) read the traced values rather than the concrete ones.
        with keras.StatelessScope(state_mapping=mapping):
            losses = self._losses_from_outputs(outputs, labels, lambda: model_losses)
            objective = losses["loss"]
            learning_rates = {}
            if optimizer_variables is not None:
                objective = self.optimizer.scale_loss(objective)
                learning_rates = self._learning_rates()
        return objective, (losses, learning_rates, non_trainable)

    def _jax_update_trackers(self, metrics_variables, losses):
        with keras.StatelessScope(
            state_mapping=list(zip(self.metrics_variables, metrics_variables))
        ) as scope:
            self._update_trackers(losses)
            logs = {m.name: m.result() for m in self.metrics}
        return logs, [scope.get_current_value(v) for v in self.metrics_variables]

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        images, labels = self._unpack(data)
        grad_fn = jax.value_and_grad(self._jax_losses, has_aux=True)
        (_, (losses, learning_rates, non_trainable)), gradients = grad_fn(
            trainable, non_trainable, optimizer_variables, images, labels, True
        )
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        logs, metrics_variables = self._jax_update_trackers(metrics_variables, losses)
        logs.update(learning_rates)
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def _jax_test_step(self, state, data):
        # The step seed of a sampling loss reads optimizer.iterations as compiled (evaluation
        # state carries no optimizer variables on JAX).
        trainable, non_trainable, metrics_variables = state
        images, labels = self._unpack(data)
        _, (losses, _, non_trainable) = self._jax_losses(
            trainable, non_trainable, None, images, labels, False
        )
        logs, metrics_variables = self._jax_update_trackers(metrics_variables, losses)
        return logs, (trainable, non_trainable, metrics_variables)

    # ------------------------------------------------------------------------ serialization
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedding_model": keras.saving.serialize_keras_object(self.embedding_model),
            "embedding_loss": keras.saving.serialize_keras_object(self.embedding_loss),
            "diversity_weight": self.diversity_weight,
            "gather_across_replicas": self.gather_across_replicas,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["embedding_model"] = keras.saving.deserialize_keras_object(
            config["embedding_model"], custom_objects=custom_objects
        )
        config["embedding_loss"] = keras.saving.deserialize_keras_object(
            config["embedding_loss"], custom_objects=custom_objects
        )
        return cls(**config)
