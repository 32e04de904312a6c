"""The layer registry: one ``Entry`` per Keras layer kind, the only place a kind is described.

An entry states, once:

- ``fields``: the Keras config fields the kind may have and a validator for each (``_schema``). This *is* the
  safe loader's allow-list: a class without an entry, a field without a validator, or a value its validator
  refuses is an ``UnsafeFileError``.
- ``build(cfg, ctx)``: the jaxmask module for a checked config; ``ctx.input_shape`` is the shape of the first
  input without the batch axis (a list of shapes for a list input), with ``None`` for unknown sizes.
- ``config(layer, ctx)``: the inverse, the Keras config fields describing a jaxmask module (Keras fills the rest
  with its defaults).
- ``weights(layer)``: the module's weights in Keras order as ``Weight(path, attrs)``: ``path`` is where Keras 3
  stores it under the layer's group in a ``.weights.h5`` (``"vars/0"``, ``"cell/vars/1"``), ``attrs`` the
  attribute path of the ``nnx.Variable`` in the module. Keras' ``get_weights()`` and legacy ``.h5`` files use
  the same order.
- ``adapt_call(args, kwargs)`` (optional): turns a graph node's call as a file records it into the jaxmask call
  (tf_keras records ``rnn(x, initial_state=s)`` as ``rnn([x, *s])``).
- ``call_kwargs``: the call arguments a graph node may pass besides its inputs, ``mask`` and ``training``, with a
  validator (``None`` for a tensor argument).
- ``module``: the Keras module a file names for the class (``keras.layers``; ``keras.src.ops.numpy`` for the
  operations Keras 3 writes into functional graphs to compute masks).

Everything else is generic: ``keras_io`` (file -> model, model -> weights file) and ``parity`` (live Keras model
<-> model) walk models through these entries.

Adding a layer kind: write the jaxmask layer in ``jaxmask/nn``, add one ``register(Entry(...))`` in a module of
``jaxmask/keras_io/entries/`` (imported by its ``__init__``), and add its parity cases in ``parity/cases.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxmask.keras_io._limits import refuse


@dataclasses.dataclass(frozen=True)
class Weight:
    """One weight of a layer: its Keras 3 path under the layer's group and its attribute path in the module."""

    path: str
    attrs: tuple


@dataclasses.dataclass
class Context:
    """What an entry's ``build`` / ``config`` may need beyond the config itself.

    Attributes:
      flavor: "keras3" or "tf_keras" (which library wrote the config, or which one to describe for).
      backend: the Keras 3 backend that computes ("tensorflow" or "jax"): RNNs' leading masked outputs differ.
      where: location in the file for error messages.
      input_shape: shape of the first input without the batch axis (list of shapes for a list input).
      batch_size: the fixed batch size of the model's input, or None.
      rngs: the ``nnx.Rngs`` to build modules with (their weights are overwritten afterwards).
      build_layer: ``build_layer(serialised_layer, input_shape, where) -> module`` for wrapped layers.
      describe_layer: ``describe_layer(module) -> {"class_name", "config"}`` for wrapped layers.
      arg_shapes: shapes without the batch axis of the first call's positional arguments (after ``adapt_call``;
        None for a non-tensor argument), for layers whose weights depend on several inputs (MultiHeadAttention).
    """

    flavor: str = "keras3"
    backend: str = "tensorflow"
    where: str = "layer"
    input_shape: Any = None
    batch_size: int | None = None
    rngs: Any = None
    build_layer: Callable | None = None
    describe_layer: Callable | None = None
    arg_shapes: tuple = ()

    def activation(self, keras_name: str) -> str:
        """jaxmask's activation for a Keras name: ``hard_sigmoid`` of Keras <= 2 (tf_keras) is clip(0.2 x + 0.5)."""
        if keras_name == "hard_sigmoid" and self.flavor == "tf_keras":
            return "hard_sigmoid_legacy"
        return keras_name

    def keras_activation(self, name) -> str:
        """The Keras name of a jaxmask activation for this flavor (the inverse of ``activation``)."""
        if name is None:
            return "linear"
        if not isinstance(name, str):
            raise ValueError(f"{self.where}: a callable activation cannot be expressed in Keras; use a Keras name.")
        if name == "hard_sigmoid_legacy":
            if self.flavor == "tf_keras":
                return "hard_sigmoid"
            raise ValueError(f"{self.where}: 'hard_sigmoid_legacy' (Keras <= 2.x) has no Keras 3 equivalent; "
                             "use flavor='tf_keras'.")
        if name == "hard_sigmoid" and self.flavor == "tf_keras":
            raise ValueError(f"{self.where}: Keras 3's 'hard_sigmoid' (relu6(x + 3) / 6) has no tf_keras equivalent.")
        return name

    def feature(self, kind: str, rank: int | None = None) -> int:
        """The last input dimension (needed to build weights); refuses an unknown one or the wrong rank."""
        shape = self.input_shape
        if not isinstance(shape, tuple) or not shape:
            refuse(f"{self.where}: {kind} needs one input with a feature axis; received input shape {shape}.")
        if rank is not None and len(shape) != rank:
            refuse(f"{self.where}: {kind} receives inputs of shape [batch, {', '.join(map(str, shape))}] but "
                   f"needs rank {rank + 1}.")
        if shape[-1] is None:
            refuse(f"{self.where}: {kind} receives inputs whose last dimension is unknown; the model was never built.")
        return shape[-1]


def _no_weights(layer) -> list:
    return []


def _same_call(args, kwargs):
    return args, kwargs


@dataclasses.dataclass(frozen=True)
class Entry:
    """One layer kind; see the module docstring."""

    keras_class: str
    layer_type: type
    fields: Mapping[str, Callable]
    build: Callable[[dict, Context], Any]
    config: Callable[[Any, Context], dict]
    weights: Callable[[Any], list] = _no_weights
    call_kwargs: Mapping[str, Callable | None] = dataclasses.field(default_factory=dict)
    adapt_call: Callable = _same_call
    module: str = "keras.layers"


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    if entry.keras_class in REGISTRY:
        raise AssertionError(f"two registry entries for {entry.keras_class}")
    REGISTRY[entry.keras_class] = entry
    return entry


def entry_for(layer) -> Entry:
    """The entry of a jaxmask module (exact type).

    Raises:
      TypeError: the module's type has no Keras equivalent.
    """
    for entry in REGISTRY.values():
        if type(layer) is entry.layer_type:
            return entry
    raise TypeError(f"{type(layer).__name__} has no Keras equivalent in jaxmask's layer registry (supported: "
                    f"{', '.join(sorted(REGISTRY))}).")


def weights_of(layer) -> list[Weight]:
    return entry_for(layer).weights(layer)


def variable(layer, attrs: tuple):
    """The ``nnx.Variable`` at ``attrs`` under ``layer``."""
    obj = layer
    for a in attrs:
        obj = obj[a] if isinstance(a, int) else getattr(obj, a)
    return obj


def nested(prefix: str, attr, weights) -> list[Weight]:
    """The weights of a wrapped layer, seen from its wrapper (stored under ``prefix`` in Keras 3 files)."""
    return [Weight(f"{prefix}/{w.path}", (attr,) + w.attrs) for w in weights]
