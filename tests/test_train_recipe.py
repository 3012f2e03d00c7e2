"""The training recipe from a config (dgml_tf.train.recipe) and the loss registry behind --loss.

Expectations come from the flagfiles and the authors' CUB recipe (method.md: Adam per group,
lr 1e-5 / 1e-5 / 1e-5 / 5e-5, L2 3e-3 / 3e-3 / 1e-3 / none, x0.3 after epoch 55), not from the
recipe's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CUB_GROUPS = {  # group -> (learning rate, weight decay), method.md
    "backbone": (1e-5, 3e-3),
    "key_value": (1e-5, 3e-3),
    "queries": (1e-5, 1e-3),
    "loss": (5e-5, 0.0),
}


def _config(*argv):
    from dgml_tf import flags as dgml_flags

    return dgml_flags.training_config_from_args(list(argv))


def test_group_configs_follow_the_cub_recipe():
    from dgml_tf.train import LOSS_GROUP
    from dgml_tf.train.recipe import group_configs

    groups = group_configs(_config("--flagfile=cub.flags"))
    assert LOSS_GROUP == "loss"
    assert list(groups) == list(CUB_GROUPS)
    for name, (lr, wd) in CUB_GROUPS.items():
        assert groups[name].learning_rate == pytest.approx(lr)
        assert groups[name].weight_decay == pytest.approx(wd)
        assert groups[name].decoupled is False
        assert groups[name].schedule.boundaries_epochs == (55,)
        assert groups[name].schedule.factor == pytest.approx(0.3)
    # --lr_beta sets the loss group (the margin betas) and nothing else.
    changed = group_configs(_config("--flagfile=cub.flags", "--lr_beta=0.25"))
    assert changed["loss"].learning_rate == 0.25
    assert [changed[g].learning_rate for g in ("backbone", "key_value", "queries")] == [1e-5] * 3


def test_no_decay_epochs_means_a_constant_rate():
    from dgml_tf.train.recipe import group_configs

    groups = group_configs(_config("--flagfile=fashion_mnist.flags", "--lr_decay_epochs="))
    assert all(g.schedule is None for g in groups.values())
    assert groups["backbone"].decoupled is True  # the flagfile's --decoupled_weight_decay


@pytest.mark.parametrize("name, cls_name", [("margin", "MarginLoss"),
                                             ("binomial", "BinomialDevianceLoss"),
                                             ("contrastive", "ContrastiveLoss"),
                                             ("multisimilarity", "PerGroupLoss")])
def test_every_registered_loss_builds_and_scores_a_batch(name, cls_name):
    from dgml_tf.losses import available_losses, get_loss

    assert name in available_losses()
    loss = get_loss(name, num_classes=4, num_groups=2, margin=0.3, initial_beta=0.9, seed=1)
    assert type(loss).__name__ == cls_name
    rng = np.random.default_rng(0)
    groups = rng.normal(size=(8, 2, 5)).astype("float32")
    groups /= np.linalg.norm(groups, axis=-1, keepdims=True)
    value = float(loss(np.repeat(np.arange(4), 2), groups))
    assert np.isfinite(value) and value >= 0.0


def test_margin_loss_gets_the_margin_flags():
    from dgml_tf.train.recipe import build_embedding_loss

    config = _config("--flagfile=cub.flags", "--margin=0.35", "--beta_init=0.7")
    loss = build_embedding_loss(config, num_classes=7)
    assert loss.margin == pytest.approx(0.35)
    betas = np.asarray(loss.betas)
    assert betas.shape == (7, 3) and np.allclose(betas, 0.7)  # one beta per class and group
    assert loss.seed == config["seed"]
    # --head=single trains one embedding: one group.
    single = build_embedding_loss({**config, "head": "single", "num_groups": 1}, num_classes=7)
    assert single.num_groups == 1


def test_unknown_loss_names_the_choices():
    from dgml_tf.losses import get_loss

    with pytest.raises(ValueError, match="margin.*multisimilarity"):
        get_loss("triplet", num_groups=1)


def test_recipe_and_registry_import_without_tensorflow():
    script = ("import sys\n"
              "import dgml_tf.train.recipe, dgml_tf.losses.registry\n"
              "from dgml_tf.losses import available_losses\n"
              "print(available_losses())\n"
              "print('HEAVY', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    assert "'margin', 'binomial', 'contrastive', 'multisimilarity'" in result.stdout
