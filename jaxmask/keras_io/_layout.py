"""The architecture as plain data (``LayerSpec``), where each weight lives in a Keras file (``Slot``), and the
two-way mapping between specs and jaxmask layers.

Keras 3 (``.keras`` / ``.weights.h5``, ``keras/src/saving/saving_lib.py``) stores the variables of the i-th
layer of ``model.layers`` under ``layers/<snake_case(class name)>[_<n>]/.../vars/<k>``: the name comes from the
class, numbered per class in layer order (``dense``, ``dense_1``), never from ``layer.name``. A recurrent
layer keeps its variables in ``cell/vars``, Bidirectional in ``forward_layer/cell/vars`` and
``backward_layer/cell/vars``, TimeDistributed in ``layer/vars``. Variable order: kernel, recurrent_kernel,
bias (RNN cells); kernel, bias (Dense); embeddings (Embedding). Legacy ``.h5`` files list the same weights in
the same order per layer (``weight_names`` attribute), forward before backward for Bidirectional.
"""

from __future__ import annotations

import dataclasses
import re

from flax import nnx

from jaxmask import nn

RNN_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
_RNN_TYPES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.SimpleRNN}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer as data: its Keras/jaxmask class name, Keras name, constructor arguments (without ``rngs``)
    and nested layers (Bidirectional: forward, backward; TimeDistributed: the wrapped Dense)."""

    kind: str
    name: str
    args: dict
    inner: tuple = ()


@dataclasses.dataclass(frozen=True)
class Slot:
    """One weight: Keras 3 location ``<layer path>/<sub>/vars/<index>``, its shape, and the attribute path of
    the ``nnx.Param`` in the jaxmask layer (e.g. ``("forward_layer", "kernel")``)."""

    sub: str
    index: int
    shape: tuple
    attrs: tuple


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: ``"SimpleRNN"`` -> ``"simple_rnn"``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def keras3_paths(specs) -> list[str]:
    """``layers/<snake>[_n]`` for each layer, numbered per class as Keras' ``_save_container_state`` does."""
    used: dict[str, int] = {}
    paths = []
    for spec in specs:
        base = snake_case(spec.kind)
        if base in used:
            used[base] += 1
            paths.append(f"layers/{base}_{used[base]}")
        else:
            used[base] = 0
            paths.append(f"layers/{base}")
    return paths


def slots(spec: LayerSpec) -> list[Slot]:
    """The weights of ``spec`` in Keras order."""
    a = spec.args
    if spec.kind == "Dense":
        out = [Slot("", 0, (a["in_features"], a["units"]), ("kernel",))]
        return out + ([Slot("", 1, (a["units"],), ("bias",))] if a["use_bias"] else [])
    if spec.kind == "Embedding":
        return [Slot("", 0, (a["input_dim"], a["output_dim"]), ("embeddings",))]
    if spec.kind in RNN_GATES:
        g = RNN_GATES[spec.kind] * a["units"]
        out = [Slot("cell", 0, (a["in_features"], g), ("kernel",)),
               Slot("cell", 1, (a["units"], g), ("recurrent_kernel",))]
        if a["use_bias"]:
            shape = (2, g) if spec.kind == "GRU" and a["reset_after"] else (g,)
            out.append(Slot("cell", 2, shape, ("bias",)))
        return out
    wrapped = {"Bidirectional": ("forward_layer", "backward_layer"), "TimeDistributed": ("layer",)}.get(spec.kind, ())
    out = []
    for attr, inner in zip(wrapped, spec.inner):
        for s in slots(inner):
            out.append(Slot(f"{attr}/{s.sub}" if s.sub else attr, s.index, s.shape, (attr,) + s.attrs))
    return out


def build(spec: LayerSpec, rngs: nnx.Rngs):
    """A fresh jaxmask layer for ``spec`` (weights are overwritten afterwards)."""
    a = spec.args
    if spec.kind == "Masking":
        return nn.Masking(a["mask_value"])
    if spec.kind == "Embedding":
        return nn.Embedding(a["input_dim"], a["output_dim"], mask_zero=a["mask_zero"], rngs=rngs)
    if spec.kind == "Dense":
        return nn.Dense(a["in_features"], a["units"], activation=a["activation"], use_bias=a["use_bias"], rngs=rngs)
    if spec.kind == "Dropout":
        return nn.Dropout(a["rate"], rngs=rngs)
    if spec.kind == "Activation":
        return nn.Activation(a["activation"])
    if spec.kind == "GlobalAveragePooling1D":
        return nn.GlobalAveragePooling1D()
    if spec.kind == "TimeDistributed":
        return nn.TimeDistributed(build(spec.inner[0], rngs))
    if spec.kind in RNN_GATES:
        args = dict(a)
        return _RNN_TYPES[spec.kind](args.pop("in_features"), args.pop("units"), rngs=rngs, **args)
    if spec.kind == "Bidirectional":
        fw, bw = (build(s, rngs) for s in spec.inner)
        return nn.Bidirectional(fw, merge_mode=a["merge_mode"], backward_layer=bw)
    raise AssertionError(f"no builder for {spec.kind}")


def describe(layer, where: str = "model.layers") -> LayerSpec:
    """The spec of an existing jaxmask layer (the inverse of ``build``).

    Raises:
      TypeError: the layer has no Keras file equivalent.
    """
    kind = type(layer).__name__
    if isinstance(layer, nn.Dense):
        args = {"in_features": layer.in_features, "units": layer.units, "activation": layer.activation,
                "use_bias": layer.bias is not None}
        return LayerSpec("Dense", "", args)
    if isinstance(layer, nn.Embedding):
        args = {"input_dim": layer.input_dim, "output_dim": layer.output_dim, "mask_zero": layer.mask_zero}
        return LayerSpec("Embedding", "", args)
    if isinstance(layer, (nn.LSTM, nn.GRU, nn.SimpleRNN)):
        kind = next(k for k, t in _RNN_TYPES.items() if isinstance(layer, t))
        return LayerSpec(kind, "", layer.config())
    if isinstance(layer, nn.Bidirectional):
        inner = (describe(layer.forward_layer, f"{where}.forward_layer"),
                 describe(layer.backward_layer, f"{where}.backward_layer"))
        return LayerSpec("Bidirectional", "", {"merge_mode": layer.merge_mode}, inner)
    if isinstance(layer, nn.TimeDistributed):
        inner = describe(layer.layer, f"{where}.layer")
        if inner.kind != "Dense":
            raise TypeError(f"{where}: keras_io supports TimeDistributed(Dense) only; received "
                            f"TimeDistributed({type(layer.layer).__name__}).")
        return LayerSpec("TimeDistributed", "", {}, (inner,))
    if isinstance(layer, nn.Masking):
        return LayerSpec("Masking", "", {"mask_value": layer.mask_value})
    if isinstance(layer, nn.Dropout):
        return LayerSpec("Dropout", "", {"rate": layer.rate})
    if isinstance(layer, nn.Activation):
        return LayerSpec("Activation", "", {"activation": layer.activation})
    if isinstance(layer, nn.GlobalAveragePooling1D):
        return LayerSpec("GlobalAveragePooling1D", "", {})
    raise TypeError(
        f"{where} is a {kind}, which has no Keras file equivalent; keras_io supports Masking, Embedding, Dense, "
        "Dropout, Activation, GlobalAveragePooling1D, TimeDistributed(Dense), LSTM, GRU, SimpleRNN, Bidirectional."
    )


def describe_model(model) -> list[LayerSpec]:
    """Specs of the layers of a jaxmask ``Sequential``.

    Raises:
      TypeError: ``model`` is not a ``jm.nn.Sequential`` or holds a layer with no Keras equivalent.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"`model` must be a jm.nn.Sequential; received {type(model).__name__}. Wrap single layers: "
            "jm.nn.Sequential([layer])."
        )
    return [describe(layer, f"model.layers[{i}]") for i, layer in enumerate(model.layers)]


def param(layer, attrs: tuple) -> nnx.Param:
    """The ``nnx.Param`` at ``attrs`` under ``layer``."""
    obj = layer
    for a in attrs:
        obj = getattr(obj, a)
    return obj
