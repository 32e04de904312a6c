"""Shared data and models of the training tests: the seed's task in miniature."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

import jaxmask as jm


def running_sum_data(n, t_max=16, features=3, t_min=3, seed=0):
    """Post-padded sequences whose per-step label is ``cumsum(x[:, 0]) > 0`` (depends on history).

    Returns x [n, t_max, F] (float32, zero padding, feature 1 has mean 3 so a plain scaler would move the
    padding), y [n, t_max, 1], mask bool [n, t_max], lengths [n].
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t_min, t_max + 1, n)
    x = np.zeros((n, t_max, features), np.float32)
    y = np.zeros((n, t_max, 1), np.float32)
    for i, length in enumerate(lengths):
        steps = rng.normal(size=(length, features)).astype(np.float32)
        steps[:, 1] += 3.0
        x[i, :length] = steps
        y[i, :length, 0] = np.cumsum(steps[:, 0]) > 0
    mask = np.arange(t_max)[None, :] < lengths[:, None]
    return x, y, mask, lengths


def seed_model(features=3, units=16, dropout=0.5, seed=0):
    """Masking -> LSTM(units, return_sequences=True) -> Dropout -> Dense(1, sigmoid): the seed's architecture."""
    rngs = nnx.Rngs(seed)
    return jm.nn.Sequential(
        [
            jm.nn.Masking(0.0),
            jm.nn.LSTM(features, units, return_sequences=True, rngs=rngs),
            jm.nn.Dropout(dropout, rngs=rngs),
            jm.nn.Dense(units, 1, activation="sigmoid", rngs=rngs),
        ]
    )


def params_of(model_or_trainer):
    """Host copies of the parameters as a flat {path: array} dict."""
    state = model_or_trainer.state.params if isinstance(model_or_trainer, jm.Trainer) else nnx.state(model_or_trainer, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def majority_baseline(y, mask):
    valid = y[..., 0][mask]
    p = valid.mean()
    return max(p, 1 - p)


def flat_host_arrays(tree, prefix="s"):
    """``{f"{prefix}.{i}": host NumPy copy of leaf i}`` (for np.savez of a final training state in the workers)."""
    return {f"{prefix}.{i}": np.asarray(jax.device_get(leaf)) for i, leaf in enumerate(jax.tree_util.tree_leaves(tree))}
