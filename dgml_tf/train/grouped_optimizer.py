"""An optimizer that updates named parameter groups with their own inner optimizers.

Keras 3 optimizers have one learning rate for all variables. The reference trains the backbone,
the key/value projections, the group queries and the margin-loss betas with different learning
rates and weight decays (PyTorch parameter groups). :class:`GroupedOptimizer` reproduces that on
top of ``keras.optimizers.MultiOptimizer``: each group is an inner optimizer named after the
group, and each trainable variable is routed to its group's optimizer by its variable path.

Because it is a Keras optimizer, it works with ``model.fit``, under ``MirroredStrategy`` (every
inner optimizer all-reduces its own gradients), and its state (every inner optimizer's
iterations and moments) is saved and restored with ``model.save_weights``, ``.keras`` files and
``BackupAndRestore``. Keras callbacks that know ``MultiOptimizer`` (TensorBoard,
ReduceLROnPlateau, LearningRateScheduler) log ``learning_rate_<group>``.

:class:`CoupledWeightDecayAdam` is Adam with L2 weight decay added to the gradient, as PyTorch's
``Adam(weight_decay=...)`` used by the reference (Keras' ``weight_decay`` is the decoupled,
AdamW-style form).
"""

from __future__ import annotations

from typing import Mapping, Optional

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dgml_tf")
class CoupledWeightDecayAdam(keras.optimizers.Adam):
    """Adam with coupled (L2) weight decay: ``g <- g + l2 * w`` before the Adam moments.

    This is PyTorch's ``torch.optim.Adam(weight_decay=l2)``; the decay is scaled by Adam's
    per-coordinate step size, unlike AdamW's decoupled ``w <- w - lr * wd * w``. Under
    ``tf.distribute`` the term is added after the cross-replica gradient sum, so it is counted once.

    Args:
        learning_rate: float or ``keras.optimizers.schedules.LearningRateSchedule``.
        l2: coefficient of the L2 term added to the gradient (0 disables it).
        **kwargs: the other ``keras.optimizers.Adam`` arguments (``beta_1``, ``beta_2``,
            ``epsilon``, ``name``...). ``weight_decay`` is rejected: it is the decoupled form.

    Example:
        >>> opt = CoupledWeightDecayAdam(learning_rate=1e-5, l2=3e-3, epsilon=1e-8)
    """

    def __init__(self, learning_rate=0.001, l2: float = 0.0, **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "CoupledWeightDecayAdam takes `l2` (coupled weight decay); `weight_decay` is "
                "Keras' decoupled decay: use keras.optimizers.AdamW for that."
            )
        kwargs.pop("weight_decay", None)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}.")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config


@keras.saving.register_keras_serializable(package="dgml_tf")
class GroupedOptimizer(keras.optimizers.MultiOptimizer):
    """Routes every trainable variable to the inner optimizer of its parameter group.

    Args:
        optimizers: mapping group name -> ``keras.optimizers.Optimizer``. Each inner optimizer is
            renamed to its group name (so logs read ``learning_rate_backbone``...). Groups may
            have no variables (e.g. "queries" for a baseline head).
        variable_groups: mapping variable path (``variable.path``) -> group name. Usually set by
            :func:`dgml_tf.train.build_grouped_optimizer` or :meth:`assign`.
        name: optimizer name.

    Raises:
        ValueError: on an empty or non-optimizer ``optimizers``, a group name in
            ``variable_groups`` without an optimizer, and (at build time) a trainable variable
            that belongs to no group.

    Example:
        >>> opt = GroupedOptimizer(
        ...     {"backbone": keras.optimizers.Adam(1e-5), "queries": keras.optimizers.Adam(1e-4)})
        >>> opt.assign({"backbone": backbone_vars, "queries": query_vars})
        >>> model.compile(optimizer=opt)
    """

    def __init__(
        self,
        optimizers: Mapping[str, keras.optimizers.Optimizer],
        variable_groups: Optional[Mapping[str, str]] = None,
        name: Optional[str] = None,
        loss_scale_factor=None,
    ):
        if not optimizers:
            raise ValueError("GroupedOptimizer needs at least one group: optimizers={}.")
        for group, optimizer in optimizers.items():
            if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
                optimizer, (keras.optimizers.MultiOptimizer, keras.optimizers.LossScaleOptimizer)
            ):
                raise ValueError(
                    f"optimizers[{group!r}] must be a plain keras Optimizer (Adam, AdamW, ...), "
                    f"got {optimizer!r}."
                )
        super().__init__(self._optimizer_for, loss_scale_factor=loss_scale_factor, name=name)
        self._groups = dict(optimizers)
        for group, optimizer in self._groups.items():
            optimizer.name = group
        self._variable_groups = {}
        # A fixed, complete order (not the order variables are met) keeps `variables` stable.
        self._inner_optimizers = list(self._groups.values())
        for optimizer in self._inner_optimizers:
            optimizer.loss_scale_factor = loss_scale_factor
        if variable_groups:
            self._set_variable_groups(dict(variable_groups))

    @property
    def groups(self) -> dict:
        """Mapping group name -> inner optimizer."""
        return dict(self._groups)

    @property
    def variable_groups(self) -> dict:
        """Mapping variable path -> group name."""
        return dict(self._variable_groups)

    def assign(self, groups: Mapping[str, list]) -> None:
        """Assigns variables to groups before the optimizer is built.

        Args:
            groups: mapping group name -> list of variables of that group.

        Raises:
            ValueError: if already built, if a group has variables but no optimizer, if a
                variable is in two groups, or if two variables share a path.
        """
        if self.built:
            raise ValueError(
                "GroupedOptimizer is already built; assign groups before the first step "
                "(or create a new optimizer)."
            )
        mapping = {}
        owners = {}
        for group, variables in groups.items():
            for variable in variables:
                path = variable.path
                if path in mapping and owners[path] is not variable:
                    raise ValueError(
                        f"Two variables share the path {path!r}; give their layers unique names "
                        "so each variable can be routed to its parameter group."
                    )
                if path in mapping and mapping[path] != group:
                    raise ValueError(
                        f"Variable {path!r} is in two parameter groups: {mapping[path]!r} and "
                        f"{group!r}."
                    )
                mapping[path] = group
                owners[path] = variable
        self._set_variable_groups(mapping)

    def _set_variable_groups(self, mapping: dict) -> None:
        unknown = sorted(set(mapping.values()) - set(self._groups))
        if unknown:
            raise ValueError(
                f"Parameter group(s) {unknown} have variables but no optimizer; configure them "
                f"(configured groups: {sorted(self._groups)})."
            )
        self._variable_groups = mapping

    def _optimizer_for(self, variable):
        group = self._variable_groups.get(variable.path)
        if group is None:
            raise ValueError(
                f"Trainable variable {variable.path!r} belongs to no parameter group "
                f"(known groups: {sorted(self._groups)}). Assign it with "
                "GroupedOptimizer.assign(...) or build_grouped_optimizer(...)."
            )
        return self._groups[group]

    def learning_rates(self) -> dict:
        """Current learning rate of every group (a scalar tensor each), keyed by group name."""
        return {group: opt.learning_rate for group, opt in self._groups.items()}

    def get_config(self):
        return {
            "name": self.name,
            "loss_scale_factor": self.loss_scale_factor,
            "optimizers": {
                group: keras.saving.serialize_keras_object(opt)
                for group, opt in self._groups.items()
            },
            "variable_groups": dict(self._variable_groups),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizers"] = {
            group: keras.saving.deserialize_keras_object(opt, custom_objects=custom_objects)
            for group, opt in config["optimizers"].items()
        }
        return cls(**config)
