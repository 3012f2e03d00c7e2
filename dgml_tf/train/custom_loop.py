"""A training loop over ``strategy.run`` for strategies where ``model.fit`` fails.

On TF 2.20 / Keras 3.15, ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails ("Attempt to
convert a value (PerReplica...)") while ``strategy.run`` works. :class:`CustomLoopTrainer` runs
the model's own ``train_step`` (the same loss, gathering and gradient math as ``fit``) in
``strategy.run`` and drives Keras callbacks like ``fit`` does (``on_train_begin``,
``on_epoch_begin/end`` with logs, ``on_train_batch_begin/end``, ``model.stop_training``,
``BackupAndRestore``'s initial epoch), so the same callbacks serve both paths.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import keras
import tensorflow as tf

from dgml_tf.train.metric_model import MetricLearningModel


class CustomLoopTrainer:
    """Trains a compiled :class:`MetricLearningModel` with ``strategy.run``.

    Args:
        model: a :class:`MetricLearningModel`, built and compiled under ``strategy.scope()``.
        strategy: the ``tf.distribute.Strategy`` (any; required for multi-worker). Defaults to
            the current strategy.

    Raises:
        TypeError: if ``model`` is not a MetricLearningModel.
        ValueError: if the model is not compiled.

    Example:
        >>> strategy = strategy_from_environment()
        >>> with strategy.scope():
        ...     model = MetricLearningModel(build_embedding_model(...), MarginLoss(...))
        ...     model.compile(optimizer=build_grouped_optimizer(model, groups, 100))
        >>> history = CustomLoopTrainer(model, strategy).fit(
        ...     dataset, epochs=10, steps_per_epoch=100, callbacks=[...])
    """

    def __init__(
        self, model: MetricLearningModel, strategy: Optional[tf.distribute.Strategy] = None
    ):
        if not isinstance(model, MetricLearningModel):
            raise TypeError(
                f"CustomLoopTrainer trains a MetricLearningModel, got {type(model).__name__}."
            )
        if getattr(model, "optimizer", None) is None:
            raise ValueError(
                "Compile the model (under strategy.scope()) before creating a CustomLoopTrainer."
            )
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self._train_function = None

    def _distribute(self, dataset):
        if isinstance(dataset, tf.data.Dataset):
            return self.strategy.experimental_distribute_dataset(dataset)
        if callable(dataset):
            return self.strategy.distribute_datasets_from_function(dataset)
        return dataset  # already distributed (e.g. a tf.distribute.DistributedDataset)

    def _make_train_function(self):
        strategy = self.strategy
        model = self.model

        @tf.function
        def train_function(iterator):
            per_replica = strategy.run(model.train_step, args=(next(iterator),))
            # Every replica logs the same global-batch values; MEAN also covers per-replica ones.
            return {
                name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in per_replica.items()
            }

        return train_function

    def train_step(self, iterator) -> dict:
        """Runs one distributed step on the next batch of ``iterator``; returns float logs."""
        if self._train_function is None:
            self._train_function = self._make_train_function()
        logs = self._train_function(iterator)
        return {name: float(value) for name, value in logs.items()}

    def fit(
        self,
        dataset: Union[tf.data.Dataset, Callable, object],
        epochs: int,
        steps_per_epoch: int,
        callbacks: Optional[Sequence[keras.callbacks.Callback]] = None,
        initial_epoch: int = 0,
        verbose: int = 1,
    ) -> keras.callbacks.History:
        """Trains for ``epochs`` epochs of ``steps_per_epoch`` steps, calling ``callbacks``.

        Args:
            dataset: a ``tf.data.Dataset`` of GLOBAL batches ``(images, labels)`` (split over
                replicas by ``experimental_distribute_dataset``), a function
                ``input_context -> per-replica dataset`` (``distribute_datasets_from_function``,
                e.g. each worker feeding its own half), or an already distributed dataset.
                An iterator is kept across epochs; if it runs out, the epoch ends early and the
                next epoch starts a new one.
            epochs: index of the last epoch (exclusive), as in ``model.fit``.
            steps_per_epoch: steps per epoch (> 0).
            callbacks: Keras callbacks; a ``History`` (and a progress bar if ``verbose``) is
                added. ``BackupAndRestore`` resumes from its saved epoch.
            initial_epoch: epoch to start from.
            verbose: 0 silent, 1 progress bar, 2 one line per epoch.

        Returns:
            The ``keras.callbacks.History`` (also ``model.history``).
        """
        if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")
        model = self.model
        distributed = self._distribute(dataset)
        with self.strategy.scope():
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose != 0,
            verbose=verbose,
            epochs=epochs,
            steps=steps_per_epoch,
            model=model,
        )
        model.stop_training = False
        callback_list.on_train_begin()
        initial_epoch = getattr(model, "_initial_epoch", None) or initial_epoch
        iterator = iter(distributed)
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            logs = {}
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                try:
                    logs = self.train_step(iterator)
                except tf.errors.OutOfRangeError:
                    iterator = iter(distributed)
                    break
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            epoch_logs = dict(logs)
            callback_list.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        if epochs > initial_epoch:
            model.optimizer.finalize_variable_values(model.trainable_weights)
        callback_list.on_train_end(logs=epoch_logs)
        return model.history
