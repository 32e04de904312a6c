"""Functional-graph parity cases: builders that write a Keras model the way a Keras user would.

A builder ``f(K, padding) -> (keras_model, inputs)`` takes the Keras module (``keras`` or ``tf_keras``) and a
padding pattern (``"post"``, ``"pre"`` or ``"holes"``) and returns a built model and a padded batch for it (one
array, or a list in ``keras_model.inputs`` order). ``@graph(name)`` registers it; the catalogue
(:mod:`parity.cases`) runs every registered graph under every padding it accepts on all three references,
comparing outputs, output masks, loss, gradients and a short trajectory (:func:`parity.check_model`).
Modules of this package register their builders when imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

GRAPHS: dict[str, tuple[Callable, tuple]] = {}


def graph(name: str, paddings: tuple = ("post", "pre", "holes"), references: tuple | None = None):
    """Register a graph builder under ``name`` for the given paddings (and references; None = all three)."""

    def register(fn):
        if name in GRAPHS:
            raise AssertionError(f"two graph builders named {name!r}")
        GRAPHS[name] = (fn, tuple(paddings), references)
        return fn

    return register


def _load() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load()
