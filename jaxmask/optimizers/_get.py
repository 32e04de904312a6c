"""``jm.optimizers.get``: Keras' ``keras.optimizers.get`` for optax transformations."""

from __future__ import annotations

import optax

from jaxmask.optimizers._base import Optimizer
from jaxmask.optimizers._optimizers import ALL

_NOT_HERE = {"adafactor": "optax.adafactor", "lamb": "optax.lamb", "muon": "optax.contrib.muon"}


def _by_name(name: str):
    cls = ALL.get(name.lower())
    if cls is None:
        hint = f" ({_NOT_HERE[name.lower()]} is the optax one)" if name.lower() in _NOT_HERE else ""
        raise ValueError(
            f"Unknown optimizer name {name!r}{hint}; Keras' names available here are {sorted(ALL)}, or pass an optax "
            "GradientTransformation."
        )
    return cls


def get(identifier) -> optax.GradientTransformation:
    """An optax transformation from what Keras' ``compile(optimizer=...)`` accepts.

    * a Keras name, case-insensitive (``"adam"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"``, ``"adadelta"``,
      ``"adamax"``, ``"nadam"``, ``"lion"``, ``"ftrl"``, ``"adamw"``): that optimizer with Keras' defaults;
    * a config dict ``{"class_name": "Adam", "config": {...}}`` (``keras.optimizers.serialize`` output);
    * a Keras or tf_keras optimizer object (anything with ``get_config()`` whose class name is one of the above):
      the jaxmask optimizer with the same configuration (its state is not copied);
    * a ``jm.optimizers`` optimizer or any ``optax.GradientTransformation``: returned unchanged.

    Args:
      identifier: one of the above.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: an unknown name. TypeError: anything else.

    Keras equivalent: ``keras.optimizers.get``.
    """
    if isinstance(identifier, optax.GradientTransformation):
        return identifier
    if isinstance(identifier, str):
        return _by_name(identifier)()
    if isinstance(identifier, dict) and "class_name" in identifier:
        return _by_name(str(identifier["class_name"])).from_config(identifier.get("config", {}))
    get_config = getattr(identifier, "get_config", None)
    if callable(get_config) and type(identifier).__name__.lower() in ALL:
        return ALL[type(identifier).__name__.lower()].from_config(_keras_config(identifier))
    raise TypeError(
        "`optimizer` must be an optax GradientTransformation (e.g. jm.optimizers.Adam() or optax.adam(1e-3)), a Keras "
        f"optimizer name such as 'adam', or a Keras optimizer config; received {type(identifier).__name__}."
    )


def _keras_config(optimizer) -> dict:
    """A Keras optimizer's config with a schedule turned into its serialised dict."""
    config = dict(optimizer.get_config())
    lr = getattr(optimizer, "_learning_rate", None)
    if hasattr(lr, "get_config") and not isinstance(config.get("learning_rate"), dict):
        config["learning_rate"] = {"class_name": type(lr).__name__, "config": lr.get_config()}
    if isinstance(config.get("learning_rate"), dict):
        inner = config["learning_rate"]
        config["learning_rate"] = {"class_name": inner.get("class_name"), "config": inner.get("config", {})}
    return config


__all__ = ["get", "Optimizer"]
