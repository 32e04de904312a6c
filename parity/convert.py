"""Keras <-> jaxmask conversion: architecture and weights, both directions.

Supported layers (Keras 3 and tf_keras): Input, Masking, Embedding, LSTM, GRU, SimpleRNN,
Bidirectional, Dense, Dropout, Activation, TimeDistributed(Dense), GlobalAveragePooling1D, in a
``Sequential`` model or a linear functional one (one input, one output, each layer called once on the
previous layer's output). Anything else is refused with a ``ValueError`` that names the layer.

Weights keep Keras' names and layouts in jaxmask, so conversion copies arrays unchanged. Activation
names are translated where the two libraries disagree: tf_keras' ``hard_sigmoid`` is Keras <= 2.x's
``clip(0.2 x + 0.5, 0, 1)`` (``"hard_sigmoid_legacy"`` in jaxmask), Keras 3's is ``relu6(x + 3) / 6``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxmask as jm
from jaxmask.functional.rnn import ACTIVATIONS
from parity._keras import backend_of, flavor_of, keras_module

SUPPORTED = (
    "InputLayer", "Masking", "Embedding", "LSTM", "GRU", "SimpleRNN", "Bidirectional", "Dense", "Dropout",
    "Activation", "TimeDistributed", "GlobalAveragePooling1D",
)


@dataclasses.dataclass(frozen=True)
class Binding:
    """One weight seen from both sides: its Keras name, the Keras variable and its path in
    ``nnx.state(jaxmask_model, nnx.Param)``."""

    name: str
    keras_variable: Any
    path: tuple


# ------------------------------------------------------------------------------------------ Keras -> jaxmask

_STREAMS = itertools.count()


def _new(cls, *args, **kwargs):
    """``cls(*args, rngs=..., **kwargs)`` without running its initialisers (they compile per shape and cost far
    more than the conversion; every weight is overwritten anyway): built with ``nnx.eval_shape``, then the
    abstract parameters become zeros and the dropout RNG streams distinct keys ``fold_in(key(0), i)``."""
    module = nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs))
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable) and isinstance(node.get_value(), jax.ShapeDtypeStruct):
            abstract = node.get_value()
            if jax.dtypes.issubdtype(abstract.dtype, jax.dtypes.prng_key):
                node.set_value(jax.random.fold_in(jax.random.key(0), next(_STREAMS)))
            else:
                node.set_value(jnp.asarray(np.zeros(abstract.shape, abstract.dtype)))
    return module


def from_keras(keras_model) -> jm.nn.Sequential:
    """Convert a Keras model to a jaxmask ``Sequential`` with the same architecture and weights, in eval mode.

    Args:
      keras_model: a built ``keras.Sequential`` or linear functional ``keras.Model`` (Keras 3 on any backend,
        or tf_keras) made of the layers listed in :mod:`parity.convert`.

    Returns:
      ``jm.nn.Sequential``; ``model(x) -> (outputs, output_mask)`` equals Keras' ``model(x)`` and its
      ``_keras_mask``. For a Keras 3 model on the JAX backend, recurrent layers get
      ``initial_output="initial_state"`` (that backend's leading masked outputs).

    Raises:
      ValueError: an unsupported layer (named), a non-linear graph, an unbuilt model, or a layer option
        jaxmask does not model (``stateful``, ``time_major``, non-float32 dtype policy ...).
      TypeError: ``keras_model`` is not a Keras model.

    Example::

        ours = parity.from_keras(keras_model)
        y, mask = ours(x)
    """
    model, _ = convert(keras_model)
    return model


def convert(keras_model) -> tuple[jm.nn.Sequential, list[Binding]]:
    """:func:`from_keras` plus the weight :class:`Binding` list (Keras variable order, layer by layer)."""
    flavor = flavor_of(keras_model)
    backend = backend_of(keras_model)
    layers = keras_layers(keras_model)
    converted, bindings = [], []
    for i, layer in enumerate(layers):
        ours, weights = convert_layer(layer, flavor=flavor, backend=backend)
        converted.append(ours)
        bindings += [Binding(name, var, ("layers", i) + sub) for name, var, sub in weights]
    model = jm.nn.Sequential(converted)
    model.eval()
    return model, bindings


def keras_layers(keras_model) -> list:
    """The layers of a Sequential or linear functional Keras model in call order, without InputLayer."""
    kind = type(keras_model).__name__
    if not hasattr(keras_model, "layers"):
        raise TypeError(f"`keras_model` must be a keras.Sequential or keras.Model; received {kind}.")
    if not keras_model.built:
        raise ValueError(
            f"`keras_model` ({kind} {keras_model.name!r}) is not built, so its weights do not exist yet; start it "
            "with keras.Input(shape) or call it once on a batch before converting."
        )
    layers = [layer for layer in keras_model.layers if type(layer).__name__ != "InputLayer"]
    for layer in layers:
        _check_supported(layer)
    if kind == "Sequential":
        return layers
    inputs, outputs = list(keras_model.inputs), list(keras_model.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"`keras_model` {keras_model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; parity converts "
            "linear models with one input and one output (call a return_state / initial_state layer directly and "
            "convert it with parity.convert.convert_layer)."
        )
    produced = {id(t) for layer in layers for t in _flat(layer.output)} | {id(t) for t in inputs}
    previous = inputs[0]
    for layer in layers:
        nodes = getattr(layer, "_inbound_nodes", [])
        tensors = _flat(nodes[0].input_tensors) if len(nodes) == 1 else []
        # Keras 3 lists the mask it computed for a layer among its node's inputs; any other graph tensor
        # (an initial_state Input, a skip connection) makes the model non-linear.
        linear = bool(tensors) and tensors[0] is previous and not any(id(t) in produced for t in tensors[1:])
        if not linear:
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) of {keras_model.name!r} is not called exactly once on "
                "the previous layer's output; parity converts linear chains only."
            )
        previous = layer.output
    if outputs[0] is not previous:
        raise ValueError(f"the output of {keras_model.name!r} is not the last layer's output; not a linear chain.")
    return layers


def _flat(tensors) -> list:
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def _check_supported(layer) -> None:
    kind = type(layer).__name__
    if kind not in SUPPORTED:
        raise ValueError(
            f"layer {layer.name!r} of type {kind} is not supported by parity (supported: {', '.join(SUPPORTED)})."
        )
    if kind == "TimeDistributed" and type(layer.layer).__name__ != "Dense":
        raise ValueError(
            f"layer {layer.name!r}: TimeDistributed({type(layer.layer).__name__}) is not supported; only "
            "TimeDistributed(Dense)."
        )
    if kind == "Bidirectional":
        for inner in (layer.forward_layer, layer.backward_layer):
            if type(inner).__name__ not in ("LSTM", "GRU", "SimpleRNN"):
                raise ValueError(
                    f"layer {layer.name!r}: Bidirectional({type(inner).__name__}) is not supported; wrap an LSTM, "
                    "GRU or SimpleRNN."
                )


def _numpy(variable) -> np.ndarray:
    return np.array(variable.numpy(), dtype=np.float32)


def _activation(layer, value, flavor: str, argument: str = "activation") -> str:
    """A Keras activation (config value) as a jaxmask activation name."""
    name = value if isinstance(value, str) else getattr(value, "__name__", None)
    if isinstance(value, dict):
        name = value.get("config") if value.get("class_name") == "function" else None
    if flavor == "tf_keras" and name == "hard_sigmoid":
        return "hard_sigmoid_legacy"
    if name not in ACTIVATIONS or name == "hard_sigmoid_legacy":
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}): {argument}={value!r} is not an activation jaxmask models; "
            f"use one of {sorted(k for k in ACTIVATIONS if k != 'hard_sigmoid_legacy')}."
        )
    return name


def _check_options(layer) -> None:
    policy = getattr(layer, "dtype_policy", None)
    compute = getattr(policy, "compute_dtype", "float32")
    if compute != "float32":
        raise ValueError(
            f"layer {layer.name!r} computes in {compute}; parity compares float32 models (dtype policy "
            f"{getattr(policy, 'name', policy)!r})."
        )
    for option in ("stateful", "time_major"):
        if getattr(layer, option, False):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) has {option}=True, which jaxmask does not model."
            )


def _dense_from_keras(layer, flavor):
    _check_options(layer)
    kernel = _numpy(layer.kernel)
    use_bias = layer.bias is not None
    ours = _new(jm.nn.Dense, kernel.shape[0], kernel.shape[1],
                activation=_activation(layer, layer.get_config()["activation"], flavor), use_bias=use_bias)
    weights = [("kernel", layer.kernel)] + ([("bias", layer.bias)] if use_bias else [])
    return ours, weights


def _rnn_from_keras(layer, flavor, backend):
    _check_options(layer)
    kind = type(layer).__name__
    cfg = layer.get_config()
    cell = layer.cell
    kernel = _numpy(cell.kernel)
    units = int(cfg["units"])
    kwargs = dict(
        return_sequences=bool(cfg["return_sequences"]),
        return_state=bool(cfg["return_state"]),
        go_backwards=bool(cfg["go_backwards"]),
        zero_output_for_mask=bool(layer.zero_output_for_mask),
        activation=_activation(layer, cfg["activation"], flavor),
        use_bias=bool(cfg["use_bias"]),
        dropout=float(cfg.get("dropout", 0.0)),
        recurrent_dropout=float(cfg.get("recurrent_dropout", 0.0)),
        initial_output="initial_state" if backend == "jax" else "zeros",
    )
    if kind != "SimpleRNN":
        kwargs["recurrent_activation"] = _activation(layer, cfg["recurrent_activation"], flavor, "recurrent_activation")
    if kind == "LSTM":
        kwargs["unit_forget_bias"] = bool(cfg.get("unit_forget_bias", True))
    if kind == "GRU":
        kwargs["reset_after"] = bool(cfg.get("reset_after", True))
    ours = _new(getattr(jm.nn, kind), kernel.shape[0], units, **kwargs)
    weights = [("kernel", cell.kernel), ("recurrent_kernel", cell.recurrent_kernel)]
    if kwargs["use_bias"]:
        weights.append(("bias", cell.bias))
    return ours, weights


def convert_layer(layer, *, flavor: str | None = None, backend: str | None = None):
    """Convert one Keras layer.

    Returns:
      ``(jaxmask_layer, weights)`` with ``weights`` a list of ``(keras_name, keras_variable, path)`` where
      ``path`` locates the parameter inside ``jaxmask_layer``; the parameter values are already copied.

    Raises:
      ValueError: unsupported layer type or option (the message names the layer).
    """
    flavor = flavor or flavor_of(layer)
    backend = backend or backend_of(layer)
    _check_supported(layer)
    kind = type(layer).__name__
    if kind in ("LSTM", "GRU", "SimpleRNN"):
        ours, weights = _rnn_from_keras(layer, flavor, backend)
        paths = [(f"{layer.name}/{attr}", var, (attr,)) for attr, var in weights]
    elif kind == "Bidirectional":
        fw, fw_w = _rnn_from_keras(layer.forward_layer, flavor, backend)
        bw, bw_w = _rnn_from_keras(layer.backward_layer, flavor, backend)
        ours = jm.nn.Bidirectional(fw, merge_mode=layer.merge_mode, backward_layer=bw)
        paths = [(f"{layer.name}/forward/{a}", v, ("forward_layer", a)) for a, v in fw_w]
        paths += [(f"{layer.name}/backward/{a}", v, ("backward_layer", a)) for a, v in bw_w]
    elif kind == "Dense":
        ours, weights = _dense_from_keras(layer, flavor)
        paths = [(f"{layer.name}/{attr}", var, (attr,)) for attr, var in weights]
    elif kind == "TimeDistributed":
        inner, weights = _dense_from_keras(layer.layer, flavor)
        ours = jm.nn.TimeDistributed(inner)
        paths = [(f"{layer.name}/{attr}", var, ("layer", attr)) for attr, var in weights]
    elif kind == "Embedding":
        _check_options(layer)
        table = _numpy(layer.embeddings)
        ours = _new(jm.nn.Embedding, table.shape[0], table.shape[1], mask_zero=bool(layer.mask_zero))
        paths = [(f"{layer.name}/embeddings", layer.embeddings, ("embeddings",))]
    elif kind == "Masking":
        ours, paths = jm.nn.Masking(float(layer.mask_value)), []
    elif kind == "Dropout":
        if getattr(layer, "noise_shape", None) is not None:
            raise ValueError(f"layer {layer.name!r}: Dropout(noise_shape=...) is not supported.")
        ours, paths = _new(jm.nn.Dropout, float(layer.rate)), []
    elif kind == "Activation":
        ours, paths = jm.nn.Activation(_activation(layer, layer.get_config()["activation"], flavor)), []
    else:  # GlobalAveragePooling1D
        cfg = layer.get_config()
        if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("keepdims", False):
            raise ValueError(
                f"layer {layer.name!r}: GlobalAveragePooling1D is supported with data_format='channels_last' and "
                f"keepdims=False only; received data_format={cfg.get('data_format')!r}, "
                f"keepdims={cfg.get('keepdims')!r}."
            )
        ours, paths = jm.nn.GlobalAveragePooling1D(), []
    for _, var, path in paths:
        _assign(ours, path, _numpy(var), layer)
    if hasattr(ours, "deterministic") or kind in ("Bidirectional", "TimeDistributed"):
        for module in _modules(ours):
            if hasattr(module, "deterministic"):
                module.deterministic = True
    return ours, paths


def _modules(layer):
    yield layer
    for name in ("forward_layer", "backward_layer", "layer"):
        if hasattr(layer, name):
            yield getattr(layer, name)


def _get(module, path):
    for key in path:
        module = module[key] if isinstance(key, int) else getattr(module, key)
    return module


def _assign(module, path, value, layer) -> None:
    param = _get(module, path)
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(
            f"layer {layer.name!r}: weight {'/'.join(map(str, path))} has shape {value.shape} in Keras but jaxmask "
            f"expects {tuple(param.shape)}."
        )
    param.set_value(jnp.asarray(value))


# ------------------------------------------------------------------------------------------ jaxmask -> Keras


def to_keras(model, *, flavor: str = "keras3", input_shape: tuple | None = None):
    """Build a Keras model with the architecture and weights of a jaxmask ``Sequential``.

    Args:
      model: ``jm.nn.Sequential`` of the layers listed in :mod:`parity.convert`.
      flavor: ``"keras3"`` (Keras 3 on the backend this process uses) or ``"tf_keras"``.
      input_shape: shape of one sample without the batch axis; default ``(None, F)`` (``(None,)`` of
        int32 when the first layer is an Embedding), F taken from the first layer that knows it.

    Returns:
      A built ``keras.Sequential`` (a ``keras.Model``) whose outputs equal ``model``'s in eval mode.

    Raises:
      ValueError: a layer or option Keras cannot express in this flavor (e.g. jaxmask's
        ``"hard_sigmoid_legacy"`` in Keras 3), or an input shape that cannot be inferred.
      KerasNotInstalled: the reference library is missing.
    """
    if not isinstance(model, jm.nn.Sequential):
        raise TypeError(f"`model` must be a jm.nn.Sequential; received {type(model).__name__}.")
    K = keras_module(flavor)
    layers = list(model.layers)
    if input_shape is None:
        input_shape = _infer_input_shape(layers)
    dtype = "int32" if layers and isinstance(layers[0], jm.nn.Embedding) else "float32"
    made = [_layer_to_keras(layer, K, flavor) for layer in layers]
    keras_model = K.Sequential([K.Input(tuple(input_shape), dtype=dtype)] + [k for k, _ in made])
    for keras_layer, (_, weights) in zip(keras_model.layers, made):
        if weights:
            keras_layer.set_weights(weights)
    return keras_model


def _infer_input_shape(layers) -> tuple:
    for layer in layers:
        if isinstance(layer, jm.nn.Embedding):
            return (None,)
        if isinstance(layer, jm.nn.TimeDistributed):
            layer = layer.layer
        if isinstance(layer, jm.nn.Bidirectional):
            return (None, layer.in_features)
        if hasattr(layer, "in_features"):
            return (None, layer.in_features)
        if not isinstance(layer, (jm.nn.Masking, jm.nn.Dropout, jm.nn.Activation)):
            break
    raise ValueError("cannot infer the model's input shape from its layers; pass input_shape=(T, F).")


def _keras_activation(name, flavor, where):
    if name is None:
        return "linear"
    if not isinstance(name, str):
        raise ValueError(f"{where}: a callable activation cannot be expressed in Keras; use a Keras activation name.")
    if name == "hard_sigmoid_legacy":
        if flavor == "tf_keras":
            return "hard_sigmoid"
        raise ValueError(
            f"{where}: 'hard_sigmoid_legacy' (Keras <= 2.x) has no Keras 3 equivalent; use flavor='tf_keras'."
        )
    if name == "hard_sigmoid" and flavor == "tf_keras":
        raise ValueError(f"{where}: Keras 3's 'hard_sigmoid' (relu6(x + 3) / 6) has no tf_keras equivalent.")
    return name


def _rnn_to_keras(layer, K, flavor):
    kind = type(layer).__name__
    where = f"{kind}(units={layer.units})"
    kwargs = dict(
        return_sequences=layer.return_sequences, return_state=layer.return_state, go_backwards=layer.go_backwards,
        zero_output_for_mask=layer.zero_output_for_mask, activation=_keras_activation(layer.activation, flavor, where),
        use_bias=layer.use_bias, dropout=layer.dropout, recurrent_dropout=layer.recurrent_dropout,
    )
    if kind != "SimpleRNN":
        kwargs["recurrent_activation"] = _keras_activation(layer.recurrent_activation, flavor, where)
    if kind == "LSTM":
        kwargs["unit_forget_bias"] = layer.unit_forget_bias
    if kind == "GRU":
        kwargs["reset_after"] = layer.reset_after
    weights = [np.asarray(layer.kernel[...]), np.asarray(layer.recurrent_kernel[...])]
    if layer.bias is not None:
        weights.append(np.asarray(layer.bias[...]))
    return getattr(K.layers, kind)(layer.units, **kwargs), weights


def _dense_to_keras(layer, K, flavor):
    where = f"Dense({layer.units})"
    weights = [np.asarray(layer.kernel[...])] + ([np.asarray(layer.bias[...])] if layer.bias is not None else [])
    return K.layers.Dense(
        layer.units, activation=_keras_activation(layer.activation, flavor, where), use_bias=layer.bias is not None
    ), weights


def _layer_to_keras(layer, K, flavor):
    """(unbuilt Keras layer, weights in Keras' ``set_weights`` order)."""
    if isinstance(layer, (jm.nn.LSTM, jm.nn.GRU, jm.nn.SimpleRNN)):
        return _rnn_to_keras(layer, K, flavor)
    if isinstance(layer, jm.nn.Bidirectional):
        fw, fw_w = _rnn_to_keras(layer.forward_layer, K, flavor)
        bw, bw_w = _rnn_to_keras(layer.backward_layer, K, flavor)
        return K.layers.Bidirectional(fw, merge_mode=layer.merge_mode, backward_layer=bw), fw_w + bw_w
    if isinstance(layer, jm.nn.Dense):
        return _dense_to_keras(layer, K, flavor)
    if isinstance(layer, jm.nn.TimeDistributed):
        if not isinstance(layer.layer, jm.nn.Dense):
            raise ValueError(
                f"TimeDistributed({type(layer.layer).__name__}) cannot be converted; only TimeDistributed(Dense)."
            )
        inner, weights = _dense_to_keras(layer.layer, K, flavor)
        return K.layers.TimeDistributed(inner), weights
    if isinstance(layer, jm.nn.Embedding):
        return K.layers.Embedding(layer.input_dim, layer.output_dim, mask_zero=layer.mask_zero), [
            np.asarray(layer.embeddings[...])
        ]
    if isinstance(layer, jm.nn.Masking):
        return K.layers.Masking(mask_value=layer.mask_value), []
    if isinstance(layer, jm.nn.Dropout):
        return K.layers.Dropout(layer.rate), []
    if isinstance(layer, jm.nn.Activation):
        return K.layers.Activation(_keras_activation(layer.activation, flavor, "Activation")), []
    if isinstance(layer, jm.nn.GlobalAveragePooling1D):
        return K.layers.GlobalAveragePooling1D(), []
    raise ValueError(f"layer {type(layer).__name__} cannot be converted to Keras (supported: {', '.join(SUPPORTED)}).")
