"""Optimizers that update float32 weights exactly as Keras 3 / tf_keras do, as optax transformations.

``optax.sgd`` already matches ``keras.optimizers.SGD`` (no momentum). ``optax.adam`` does not: it divides by
``sqrt(v_hat) + eps`` while Keras divides by ``sqrt(v) + eps`` after folding the bias corrections into the
step size, so eps is effectively scaled by ``sqrt(1 - beta_2^t)``. :func:`keras_adam` transcribes Keras'
``Adam.update_step`` (keras/src/optimizers/adam.py; same in tf_keras 2.21), operation for operation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class KerasAdamState(NamedTuple):
    count: jax.Array
    m: optax.Updates
    v: optax.Updates


def keras_adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
    """Keras' Adam (amsgrad=False, no weight decay):

    .. math:: \\alpha = lr \\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t);\\; m \\mathrel{+}= (g - m)(1 - \\beta_1);\\;
              v \\mathrel{+}= (g^2 - v)(1 - \\beta_2);\\; \\theta \\mathrel{-}= m \\alpha / (\\sqrt v + \\epsilon)

    Keras equivalent: ``keras.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon)``.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return KerasAdamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        step = count.astype(jnp.float32)
        alpha = learning_rate * jnp.sqrt(1 - jnp.power(beta_2, step)) / (1 - jnp.power(beta_1, step))
        m = jax.tree.map(lambda m, g: m + (g - m) * (1 - beta_1), state.m, grads)
        v = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - beta_2), state.v, grads)
        updates = jax.tree.map(lambda m, v: -((m * alpha) / (jnp.sqrt(v) + epsilon)), m, v)
        return updates, KerasAdamState(count, m, v)

    return optax.GradientTransformation(init, update)


def make(name: str, learning_rate: float):
    """``"sgd"`` or ``"adam"`` as an optax transformation with Keras' update rule."""
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "adam":
        return keras_adam(learning_rate)
    raise ValueError(f"`optimizer` must be 'sgd' or 'adam'; received {name!r}.")


def keras_optimizer(K, name: str, learning_rate: float):
    """The matching Keras optimizer from module ``K`` (keras or tf_keras)."""
    if name == "sgd":
        return K.optimizers.SGD(learning_rate=learning_rate)
    if name == "adam":
        return K.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"`optimizer` must be 'sgd' or 'adam'; received {name!r}.")
