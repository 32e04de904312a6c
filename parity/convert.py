"""Keras <-> jaxmask conversion: architecture and weights, both directions, through jaxmask's layer registry.

A live Keras model is converted the way a file is loaded: its config (``model.to_json()``, the same JSON a
``.keras`` / ``.h5`` file holds) goes through ``jaxmask.keras_io``'s registry walker, and its weights come from
each layer's ``weights`` (Keras order, the order of every registry entry's ``weights``). Supported: the layers
in ``jaxmask.keras_io.SUPPORTED``, in a ``Sequential`` model or any functional graph (several inputs and outputs,
shared layers, nested models, RNN state wiring, stateful RNNs). Anything else is refused with a ``ValueError``
that names the layer and the field.

The other way, ``to_keras`` describes each jaxmask layer with its registry entry's ``config`` and replays the
graph on ``keras.Input``\\ s. Activation names are translated where the two libraries disagree: tf_keras'
``hard_sigmoid`` is Keras <= 2.x's ``clip(0.2 x + 0.5, 0, 1)`` (``"hard_sigmoid_legacy"`` in jaxmask), Keras 3's
is ``relu6(x + 3) / 6``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from flax import nnx

import jaxmask as jm
from jaxmask.errors import UnsafeFileError
from jaxmask.keras_io import _graph
from jaxmask.keras_io._limits import Limits
from jaxmask.keras_io._registry import REGISTRY, Context, entry_for, variable, weights_of
from jaxmask.nn._model import _Ref
from parity._keras import backend_of, flavor_of, keras_module

SUPPORTED = jm.keras_io.SUPPORTED
_LIMITS = Limits(max_params=2**31, max_layers=100_000, max_config_bytes=2**30, max_json_containers=10**8)


@dataclasses.dataclass(frozen=True)
class Binding:
    """One trainable weight seen from both sides: its Keras name, the Keras variable and its path in
    ``nnx.state(jaxmask_model, nnx.Param)``."""

    name: str
    keras_variable: Any
    path: tuple


# ------------------------------------------------------------------------------------------ Keras -> jaxmask


def from_keras(keras_model):
    """Convert a Keras model to a jaxmask model with the same architecture and weights, in eval mode.

    Args:
      keras_model: a built ``keras.Sequential`` or functional ``keras.Model`` (Keras 3 on any backend, or
        tf_keras) made of the layers in ``jaxmask.keras_io.SUPPORTED``.

    Returns:
      ``jm.nn.Sequential`` for a Sequential model, ``jm.nn.Model`` for a functional one; ``model(x) ->
      (outputs, output_masks)`` equals Keras' ``model(x)`` and its ``_keras_mask``. For a Keras 3 model on the JAX
      backend, recurrent layers get ``initial_output="initial_state"`` (that backend's leading masked outputs).

    Raises:
      ValueError: an unsupported layer or option (the message names the layer and the field), or an unbuilt
        model.
      TypeError: ``keras_model`` is not a Keras model.

    Example::

        ours = parity.from_keras(keras_model)
        y, mask = ours(x)
    """
    model, _ = convert(keras_model)
    return model


def convert(keras_model):
    """:func:`from_keras` plus the trainable weights' :class:`Binding` list (Keras order, layer by layer)."""
    kind = type(keras_model).__name__
    if not hasattr(keras_model, "layers") or not hasattr(keras_model, "to_json"):
        raise TypeError(f"`keras_model` must be a keras.Sequential or keras.Model; received {kind}.")
    if not keras_model.built:
        raise ValueError(
            f"`keras_model` ({kind} {keras_model.name!r}) is not built, so its weights do not exist yet; start it "
            "with keras.Input(shape) or call it once on a batch before converting."
        )
    flavor, backend = flavor_of(keras_model), backend_of(keras_model)
    cfg = json.loads(keras_model.to_json())
    try:
        built = _graph.build_model(cfg, flavor=flavor, backend=backend, limits=_LIMITS, what=keras_model.name)
    except UnsafeFileError as e:
        raise ValueError(f"{keras_model.name!r} cannot be converted: {e}") from None
    arrays = [[] for _ in built.layers]
    variables = [None] * len(built.layers)
    for top_name, slots in _graph.group_by_top(built):
        keras_vars = list(keras_model.get_layer(top_name).weights)
        if len(keras_vars) != len(slots):
            raise ValueError(f"layer {top_name!r} has {len(keras_vars)} weights in Keras; jaxmask expects "
                             f"{len(slots)}.")
        for (index, _), var in zip(slots, keras_vars):
            arrays[index].append(np.asarray(var.numpy()))
            variables[index] = (variables[index] or []) + [var]
    _graph.fill(built, arrays)
    model = _graph.finish(built.model)
    paths = _module_paths(model)
    bindings = []
    for (name, _, module), keras_vars in zip(_graph.layers_of(model), variables):
        for w, var in zip(weights_of(module), keras_vars or []):
            if var.trainable and isinstance(variable(module, w.attrs), nnx.Param):
                bindings.append(Binding(_var_name(var, keras_model.name), var, paths[id(module)] + tuple(w.attrs)))
    return model, bindings


def _var_name(var, prefix: str = "") -> str:
    """Keras' name of a variable (``dense/kernel``), without the model's own name in front."""
    name = getattr(var, "path", None) or var.name
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + "/") else name


def _module_paths(model) -> dict:
    return {id(node): tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}


def convert_layer(layer, *, flavor: str | None = None, backend: str | None = None):
    """Convert one built Keras layer.

    Returns:
      ``(jaxmask_layer, weights)`` with ``weights`` a list of ``(keras_name, keras_variable, path)`` for the
      trainable weights, ``path`` locating the parameter inside ``jaxmask_layer``; the values are already copied.

    Raises:
      ValueError: unsupported layer type or option (the message names the layer).
    """
    flavor = flavor or flavor_of(layer)
    backend = backend or backend_of(layer)
    K = keras_module(flavor)
    serialised = json.loads(json.dumps(K.layers.serialize(layer), default=_jsonable))
    entry_json = {k: v for k, v in serialised.items() if k in ("module", "class_name", "config", "registered_name")}
    replay = _graph.Replay(flavor, backend, _LIMITS)
    shape = _built_input_shape(layer)
    try:
        entry, cfg = _graph.check_layer(entry_json, layer.name)
        if not hasattr(entry, "build"):
            raise UnsafeFileError(f"{layer.name}: {type(layer).__name__} is not a layer jaxmask converts.")
        ours = replay.layer(entry, cfg, layer.name, jm.nn.Input(None, batch_shape=shape))
    except UnsafeFileError as e:
        raise ValueError(f"layer {layer.name!r} cannot be converted: {e}") from None
    keras_vars = list(layer.weights)
    slots = weights_of(ours)
    _graph.fill(_graph.Built(ours, [(layer.name, "", ours)], []), [[np.asarray(v.numpy()) for v in keras_vars]])
    ours = _graph.finish(ours)
    weights = [(_var_name(v), v, tuple(w.attrs)) for w, v in zip(slots, keras_vars)
               if v.trainable and isinstance(variable(ours, w.attrs), nnx.Param)]
    return ours, weights


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"unexpected {type(value).__name__} in a Keras config")


def _built_input_shape(layer) -> tuple:
    for attr in ("_build_shapes_dict", "_build_input_shape"):
        shape = getattr(layer, attr, None)
        if isinstance(shape, dict) and shape:  # Keras 3: {"sequences_shape": ..., "initial_state_shape": ...}
            shape = next(iter(shape.values()))
        if shape is not None and not isinstance(shape, dict):
            return tuple(None if d is None else int(d) for d in shape)
    raise ValueError(f"layer {layer.name!r} is not built; call it on a batch first.")


# ------------------------------------------------------------------------------------------ jaxmask -> Keras


def to_keras(model, *, flavor: str = "keras3", input_shape: tuple | None = None):
    """Build a Keras model with the architecture and weights of a jaxmask ``Sequential`` or ``Model``.

    Args:
      model: ``jm.nn.Sequential`` or ``jm.nn.Model`` of the layers in ``jaxmask.keras_io.SUPPORTED``.
      flavor: ``"keras3"`` (Keras 3 on the backend this process uses) or ``"tf_keras"``.
      input_shape: for a Sequential, the shape of one sample without the batch axis; default ``(None, F)``
        (``(None,)`` of int32 when the first layer is an Embedding), F taken from the first layer that knows it.

    Returns:
      A built ``keras.Sequential`` (for a Sequential) or functional ``keras.Model`` (for a Model) whose outputs
      equal ``model``'s in eval mode.

    Raises:
      ValueError: a layer or option Keras cannot express in this flavor (e.g. jaxmask's
        ``"hard_sigmoid_legacy"`` in Keras 3), or an input shape that cannot be inferred.
      TypeError: ``model`` is not a Sequential / Model.
      KerasNotInstalled: the reference library is missing.
    """
    K = keras_module(flavor)
    builder = _KerasBuilder(K, flavor)
    if isinstance(model, jm.nn.Sequential):
        layers = list(model.layers)
        shape = tuple(input_shape) if input_shape is not None else _infer_input_shape(layers)
        batch = next((getattr(layer, "batch_size", None) for layer in _flat_layers(layers)
                      if getattr(layer, "stateful", False)), None)
        dtype = "int32" if layers and isinstance(layers[0], jm.nn.Embedding) else "float32"
        keras_model = K.Sequential([K.Input(shape, dtype=dtype, batch_size=batch)]
                                   + [builder.layer(layer) for layer in layers])
    elif isinstance(model, jm.nn.Model):
        keras_model = builder.functional(model)
    else:
        raise TypeError(f"`model` must be a jm.nn.Sequential or jm.nn.Model; received {type(model).__name__}.")
    for ours, theirs in builder.pairs:
        values = [np.asarray(variable(ours, w.attrs)[...], np.float32) for w in weights_of(ours)]
        if values:
            theirs.set_weights(values)
    return keras_model


def _flat_layers(layers):
    for layer in layers:
        yield layer
        for attr in ("forward_layer", "layer"):
            if hasattr(layer, attr):
                yield getattr(layer, attr)


class _KerasBuilder:
    """Keras layers and models for jaxmask ones; ``pairs`` records (jaxmask layer, Keras layer) for the weights."""

    def __init__(self, K, flavor):
        self.K, self.flavor, self.pairs = K, flavor, []

    def layer(self, layer):
        K = self.K
        if isinstance(layer, jm.nn.Sequential):
            return K.Sequential([self.layer(x) for x in layer.layers], name=getattr(layer, "name", None))
        if isinstance(layer, jm.nn.Model):
            return self.functional(layer)
        entry = entry_for(layer)
        where = getattr(layer, "name", None) or entry.keras_class
        cfg = entry.config(layer, _describe_context(self.flavor, where))
        if getattr(layer, "name", None):
            cfg["name"] = layer.name
        made = getattr(K.layers, entry.keras_class).from_config(cfg)
        self.pairs.append((layer, made))
        return made

    def functional(self, model):
        K, graph = self.K, model.graph
        values, inputs, made = {}, [], {}
        for i, (name, shape, dtype) in enumerate(graph.inputs):
            t = K.Input(batch_shape=tuple(shape), dtype=dtype, name=name)
            values[("input", i, 0)] = t
            inputs.append(t)
        for n, step in enumerate(graph.steps):
            layer = model.layers[step.layer]
            leaves = [values[tuple(r)] if isinstance(r, _Ref) else r for r in step.leaves]
            args, kwargs = jax.tree.unflatten(step.treedef, leaves)
            mask = kwargs.get("mask")  # an explicit mask tensor (Softmax(x, mask=m)); Keras computes the others
            kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
            if isinstance(layer, jm.nn.Op):
                out = self._op(layer, args)
            else:
                if step.layer not in made:
                    made[step.layer] = self.layer(layer)
                if mask is not None and _takes_mask(made[step.layer]):
                    kwargs["mask"] = mask
                out = made[step.layer](*args, **kwargs)
            for j, v in enumerate(jax.tree.leaves(out, is_leaf=lambda v: not isinstance(v, (list, tuple)))):
                values[("node", n, j)] = v
        outputs = [values[tuple(r)] for r in graph.outputs]
        return K.Model(inputs[0] if model.single_input else inputs,
                       outputs[0] if model.single_output else outputs, name=model.name)

    def _op(self, op, args):
        if self.flavor == "tf_keras":
            raise ValueError(f"the graph operation {op.op!r} has no tf_keras layer; convert with flavor='keras3'.")
        K = self.K
        out = getattr(K.ops, "convert_to_tensor" if op.op == "identity" else op.op)(*args, **dict(op.options))
        return K.ops.cast(out, op.dtype) if op.dtype is not None else out


def _takes_mask(keras_layer) -> bool:
    """Whether the Keras layer's ``call`` has a ``mask`` argument (Keras 3 / tf_keras)."""
    spec = getattr(keras_layer, "_call_spec", None)
    if hasattr(spec, "expects_mask_arg"):
        return bool(spec.expects_mask_arg)
    return bool(getattr(keras_layer, "_call_has_mask_arg", False))


def _describe_context(flavor, where) -> Context:
    ctx = Context(flavor=flavor, where=where)

    def describe(inner):
        entry = entry_for(inner)
        out = {"class_name": entry.keras_class,
               "config": entry.config(inner, dataclasses.replace(ctx, where=f"{where}.{entry.keras_class}"))}
        return out | ({"module": "keras.layers", "registered_name": None} if flavor == "keras3" else {})

    ctx.describe_layer = describe
    return ctx


def _infer_input_shape(layers) -> tuple:
    for layer in layers:
        if isinstance(layer, jm.nn.Embedding):
            return (None,)
        if isinstance(layer, jm.nn.TimeDistributed):
            layer = layer.layer
        if hasattr(layer, "in_features"):
            return (None, layer.in_features)
        if not isinstance(layer, (jm.nn.Masking, jm.nn.Dropout, jm.nn.Activation)):
            break
    raise ValueError("cannot infer the model's input shape from its layers; pass input_shape=(T, F).")


__all__ = ["Binding", "REGISTRY", "SUPPORTED", "convert", "convert_layer", "from_keras", "to_keras"]
