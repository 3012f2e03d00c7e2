"""NumPy re-statements and closed forms of the layer, losses and miner (method.md).

One home for the independent expectations: the TF test files (tests/test_layers.py,
tests/test_losses.py, tests/test_miners.py) and the per-backend checks
(tests/backend_checks/check_parity.py) both assert against these. NumPy only: no Keras, no TF.
"""

import numpy as np

def reference_attentive_grouping(x, key_kernel, value_kernel, queries, projection_kernel=None,
                                  normalize=True):
    """NumPy re-statement of method.md: keys, values, softmax over positions, weighted sum."""
    batch, height, width, channels = x.shape
    positions = x.reshape(batch, height * width, channels).astype(np.float64)
    keys = positions @ key_kernel  # (B, N, k)
    values = positions @ value_kernel  # (B, N, d)
    logits = np.einsum("gk,bnk->bgn", queries, keys)
    logits -= logits.max(axis=-1, keepdims=True)
    attention = np.exp(logits)
    attention /= attention.sum(axis=-1, keepdims=True)
    groups = np.einsum("bgn,bnd->bgd", attention, values)
    if projection_kernel is not None:
        groups = groups @ projection_kernel
    if normalize:
        groups /= np.linalg.norm(groups, axis=-1, keepdims=True)
    return groups, attention.reshape(batch, -1, height, width)


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_diversity(groups, beta1=2.0, beta2=0.5, scale=25.0):
    unit = np_unit(np.asarray(groups, np.float64))
    k = unit.shape[1]
    total = 0.0
    for i in range(k):
        for j in range(i + 1, k):
            cos = (unit[:, i] * unit[:, j]).sum(-1)
            total += np_softplus(beta1 * scale * (cos - beta2)).mean()
    return total / (k - 1)


def np_pairs(labels):
    labels = np.asarray(labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j:
                yield i, j, labels[i] == labels[j]


def np_binomial_deviance(labels, x, alpha=2.0, beta=0.5, cost=25.0):
    unit = np_unit(np.asarray(x, np.float64))
    pos, neg = [], []
    for i, j, same in np_pairs(labels):
        s = unit[i] @ unit[j]
        (pos if same else neg).append(
            np_softplus(-alpha * (s - beta)) if same else np_softplus(alpha * cost * (s - beta))
        )
    return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


def np_contrastive(labels, x, margin=1.0):
    unit = np_unit(np.asarray(x, np.float64))
    pos, neg = [], []
    for i, j, same in np_pairs(labels):
        d = np.linalg.norm(unit[i] - unit[j])
        (pos if same else neg).append(0.5 * d**2 if same else 0.5 * max(0.0, margin - d) ** 2)
    return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


def groups_with_pairwise_cosine_half(batch=2):
    u1 = [1.0, 0.0, 0.0]
    u2 = [0.5, np.sqrt(3) / 2, 0.0]
    u3 = [0.5, np.sqrt(3) / 6, np.sqrt(2.0 / 3.0)]
    return np.tile(np.array([u1, u2, u3], np.float32)[None], (batch, 1, 1))


def forced_margin_batch(angle_degrees):
    """Class 0: (cos a, +-sin a); class 1: (-1, 0) twice. Every anchor's positive is its
    classmate and both candidate negatives lie at the same distance, so mining is forced."""
    a = np.radians(angle_degrees)
    x = np.array([[np.cos(a), np.sin(a)], [np.cos(a), -np.sin(a)], [-1, 0], [-1, 0]], np.float32)
    d_ap = np.array([2 * np.sin(a), 2 * np.sin(a), 0.0, 0.0])
    d_an = np.full(4, np.sqrt(2 + 2 * np.cos(a)))
    return x, np.array([0, 0, 1, 1]), d_ap, d_an


def np_margin(d_ap, d_an, beta, margin=0.2):
    pos = np.maximum(d_ap - beta + margin, 0.0)
    neg = np.maximum(beta - d_an + margin, 0.0)
    active = ((pos > 0) | (neg > 0)).sum()
    return (pos + neg).sum() / active if active else (pos + neg).sum()


def point_at_distance(distance, axis, dim):
    """A unit vector at chord distance ``distance`` from e0, rotated towards e_axis."""
    angle = 2.0 * np.arcsin(distance / 2.0)
    point = np.zeros(dim)
    point[0], point[axis] = np.cos(angle), np.sin(angle)
    return point


def closed_form_probabilities(distances, dim, lower_cutoff=0.5):
    d = np.maximum(np.asarray(distances, np.float64), lower_cutoff)
    weights = d ** (2.0 - dim) * (1.0 - d**2 / 4.0) ** (-(dim - 3.0) / 2.0)
    return weights / weights.sum()
