"""Optimizers of the parity suite: jaxmask's Keras-exact ones (:mod:`jaxmask.optimizers`) and the matching
Keras / tf_keras objects, by a short name (the catalogue's ``Case.optimizer``).

The Keras-exact Adam that used to live here is ``jm.optimizers.Adam``; :func:`keras_adam` and
``KerasAdamState`` remain as aliases.
"""

from __future__ import annotations

from jaxmask import optimizers as jo

OPTIMIZERS = {
    "sgd": ("SGD", {}),
    "sgd_momentum": ("SGD", {"momentum": 0.9}),
    "sgd_nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {"weight_decay": 0.05}),
    "rmsprop": ("RMSprop", {}),
    "rmsprop_centered": ("RMSprop", {"centered": True, "momentum": 0.5}),
    "adagrad": ("Adagrad", {}),
    "adadelta": ("Adadelta", {}),
    "adamax": ("Adamax", {}),
    "nadam": ("Nadam", {}),
    "lion": ("Lion", {}),
    "ftrl": ("Ftrl", {"l1_regularization_strength": 0.001, "l2_regularization_strength": 0.001}),
}
"""Short name -> (Keras class name, arguments besides ``learning_rate``)."""

KerasAdamState = jo.OptimizerState


def keras_adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
    """Keras' Adam as an optax transformation: ``jm.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon)``."""
    return jo.Adam(learning_rate, beta_1, beta_2, epsilon)


def _spec(name: str):
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {sorted(OPTIMIZERS)}; received {name!r}.")
    return OPTIMIZERS[name]


def make(name: str, learning_rate: float):
    """The jaxmask (optax) optimizer called ``name`` with Keras' update rule."""
    cls, kwargs = _spec(name)
    return getattr(jo, cls)(learning_rate=float(learning_rate), **kwargs)


def keras_optimizer(K, name: str, learning_rate: float):
    """The matching Keras optimizer from module ``K`` (keras or tf_keras)."""
    cls, kwargs = _spec(name)
    return getattr(K.optimizers, cls)(learning_rate=float(learning_rate), **kwargs)
