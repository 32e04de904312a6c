"""``Model``: a functional DAG of ``jm.nn`` layers with Keras' mask propagation at every node (see ``_graph`` for
how nodes are recorded)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask._checks import check_mask
from jaxmask.nn._core import Layer
from jaxmask.nn._graph import _is_symbol, _symbols


class _Ref(NamedTuple):
    """A value in a model: ``("input", i, 0)`` or ``("node", node_index, output_index)``."""

    kind: str
    index: int
    output: int


@dataclasses.dataclass(frozen=True)
class _Step:
    """One node of a ``Model`` as static data: which layer, its argument tree with ``_Ref`` leaves."""

    layer: int
    treedef: Any
    leaves: tuple
    n_outputs: int
    ignore_mask: bool = False


@dataclasses.dataclass(frozen=True)
class _Graph:
    inputs: tuple  # ((name, batch_shape, dtype name), ...)
    steps: tuple
    outputs: tuple  # _Ref per model output
    output_names: tuple


def _call_signature(layer):
    fn = type(layer).__call__
    fn = getattr(fn, "__wrapped__", fn)
    return inspect.signature(fn).parameters


class Model(Layer):
    """A functional model: a DAG of ``jm.nn`` layers from ``inputs`` to ``outputs``, with Keras' masks.

    Args:
      inputs: a ``KerasTensor`` from ``jm.nn.Input``, or a list of them (the call order of the model's inputs).
      outputs: a ``KerasTensor`` or a list of them.
      name: the model's name.
      layers: optional; the model's layers in the order Keras lists them (``keras_model.layers`` without
        InputLayer), which fixes the weight paths of ``keras_io.save_weights``. Default: first-call order.

    Call: ``model(x, mask=None) -> (outputs, output_masks)``; ``x`` is one array, a list in input order or a dict
    keyed by input name, ``mask`` the same structure (None entries allowed) to override the masks the graph
    computes for the inputs. Outputs and masks are arrays for one output and lists for several. A layer used by
    several nodes shares its weights. Layers that are ``Sequential`` or ``Model`` nest.

    Keras equivalent: ``keras.Model(inputs, outputs)`` with ``model(x)`` and ``output._keras_mask``.

    Raises:
      ValueError: an output does not depend only on ``inputs`` (the message names the missing input), or an
        input is listed twice.
    """

    returns_mask = True

    def __init__(self, inputs, outputs, *, name: str | None = None, layers=None):
        self.single_input = _is_symbol(inputs)
        self.single_output = _is_symbol(outputs)
        inputs = [inputs] if self.single_input else list(inputs)
        outputs = [outputs] if self.single_output else list(outputs)
        for what, group in (("inputs", inputs), ("outputs", outputs)):
            if not group or not all(_is_symbol(s) for s in group):
                raise TypeError(f"`{what}` must be a KerasTensor (from jm.nn.Input or a layer call) or a non-empty "
                                f"list of them; received {[type(s).__name__ for s in group]}.")
        for i, s in enumerate(inputs):
            if s.node is not None:
                raise ValueError(f"`inputs[{i}]` is the output of {type(s.node.layer).__name__}, not a jm.nn.Input.")
        if len({id(s) for s in inputs}) != len(inputs):
            raise ValueError("`inputs` lists the same Input twice.")
        input_index = {id(s): i for i, s in enumerate(inputs)}
        order, seen = [], set()

        def visit(symbol, path):  # iterative DFS would be longer; depth is bounded by the loader's node limit
            node = symbol.node
            if node is None:
                if id(symbol) not in input_index:
                    raise ValueError(f"output depends on an Input {symbol.name or symbol.shape!r} that is not in "
                                     f"`inputs` (graph disconnected; via {' <- '.join(path[-4:])}).")
                return
            if id(node) in seen:
                return
            seen.add(id(node))
            for s in _symbols((node.args, node.kwargs)):
                visit(s, path + [type(node.layer).__name__])
            order.append(node)

        for s in outputs:
            visit(s, [])
        unique = []
        for node in order:
            if not any(node.layer is u for u in unique):
                unique.append(node.layer)
        if layers is not None:
            layers = list(layers)
            if {id(x) for x in layers} != {id(x) for x in unique} or len(layers) != len(unique):
                raise ValueError("`layers` must list exactly the layers the graph calls, each once.")
            unique = layers
        layer_index = {id(x): i for i, x in enumerate(unique)}
        node_index = {id(n): i for i, n in enumerate(order)}

        def ref(symbol):
            if symbol.node is None:
                return _Ref("input", input_index[id(symbol)], 0)
            return _Ref("node", node_index[id(symbol.node)], symbol.index)

        steps = []
        for node in order:
            leaves, treedef = jax.tree.flatten((node.args, node.kwargs), is_leaf=_is_symbol)
            steps.append(_Step(layer_index[id(node.layer)], treedef,
                               tuple(ref(v) if _is_symbol(v) else v for v in leaves), len(node.outputs),
                               node.ignore_mask))
        names = _output_names(outputs, unique)
        self.layers = nnx.List(unique)
        self.name = name
        self.graph = _Graph(tuple((s.name or f"input_{i}", s.shape, s.dtype.name) for i, s in enumerate(inputs)),
                            tuple(steps), tuple(ref(s) for s in outputs), names)

    @property
    def input_names(self) -> list[str]:
        return [name for name, _, _ in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.output_names)

    def reset_states(self) -> None:
        """Zero the carried state of every stateful layer (Keras' ``model.reset_states()``)."""
        for layer in self.layers:
            if hasattr(layer, "reset_states") and getattr(layer, "stateful", True):
                layer.reset_states()

    def compute_output_mask(self, x, mask=None):
        return self(x, mask)[1]

    def _inputs(self, x, what: str):
        names = self.input_names
        n = len(names)
        if isinstance(x, dict):
            if set(x) != set(names):
                raise ValueError(f"`{what}` is a dict with keys {sorted(x)}; the model's inputs are {names}.")
            return [x[k] for k in names]
        if isinstance(x, (list, tuple)) and not (n == 1 and what == "x" and _looks_like_data(x)):
            if len(x) != n:
                raise ValueError(f"the model has {n} inputs {names}; `{what}` holds {len(x)} entries.")
            return list(x)
        if n != 1:
            raise ValueError(f"the model has {n} inputs {names}; pass `{what}` as a list in that order or a dict "
                             f"keyed by name; received one {type(x).__name__}.")
        return [x]

    def __call__(self, x, mask=None):
        values = {}
        masks = {}
        xs = self._inputs(x, "x")
        ms = [None] * len(xs) if mask is None else self._inputs(mask, "mask")
        for i, ((name, shape, dtype), v, m) in enumerate(zip(self.graph.inputs, xs, ms)):
            v = _check_input(v, name, shape, dtype)
            values[("input", i, 0)] = v
            masks[("input", i, 0)] = None if m is None else check_mask(m, v.shape[:2], f"mask[{name!r}]")
        for n, step in enumerate(self.graph.steps):
            layer = self.layers[step.layer]
            args, kwargs = jax.tree.unflatten(step.treedef, [values[r] if isinstance(r, _Ref) else r
                                                             for r in step.leaves])
            arg_masks, kwargs = _masks_for(layer, step, masks, kwargs)
            x0 = args[0] if args else kwargs.get(next(iter(_call_signature(layer)), ""))
            if getattr(layer, "returns_mask", False):
                out, out_masks = layer(*args, mask=arg_masks, **kwargs)
                flat_out, flat_masks = [out], [out_masks]
            else:
                out_mask = layer.compute_output_mask(x0, arg_masks)
                out = layer(*args, mask=None if step.ignore_mask else arg_masks, **kwargs)
                flat_out = jax.tree.leaves(out)
                if isinstance(out_mask, (list, tuple)) and len(out_mask) == len(flat_out):
                    flat_masks = list(out_mask)
                else:
                    flat_masks = [out_mask] + [None] * (len(flat_out) - 1)
            for j, (v, m) in enumerate(zip(flat_out, flat_masks)):
                values[("node", n, j)] = v
                masks[("node", n, j)] = m
        outs = [values[tuple(r)] for r in self.graph.outputs]
        out_masks = [masks[tuple(r)] for r in self.graph.outputs]
        if self.single_output:
            return outs[0], out_masks[0]
        return outs, out_masks


def _looks_like_data(x) -> bool:
    """A list that is one input's data (nested numbers) rather than a list of inputs."""
    return bool(x) and not any(hasattr(v, "shape") for v in x)


def _check_input(v, name, shape, dtype):
    if not hasattr(v, "shape"):
        try:
            v = np.asarray(v)
        except ValueError:
            raise ValueError(f"input {name!r} is a ragged list; pad it first with jm.pad_sequences.") from None
    if v.ndim != len(shape) or any(d is not None and d != e for d, e in zip(shape, v.shape)):
        layout = "[" + ", ".join("B" if i == 0 and d is None else ("?" if d is None else str(d))
                                 for i, d in enumerate(shape)) + "]"
        raise ValueError(f"input {name!r} must have shape {layout}; received shape {tuple(v.shape)}.")
    if np.dtype(v.dtype).kind not in "biuf":
        raise TypeError(f"input {name!r} must hold numbers ({dtype}); received dtype {v.dtype}.")
    return jnp.asarray(v, dtype)  # Keras converts every input to its Input's dtype


def _masks_for(layer, step, masks, kwargs):
    """The mask of the first argument and ``k_mask`` keywords, from the masks of the node's input tensors."""
    args_refs, kwargs_refs = jax.tree.unflatten(step.treedef, list(step.leaves))
    params = _call_signature(layer)

    def mask_of(tree):
        if isinstance(tree, _Ref):
            return masks[tuple(tree)]
        if isinstance(tree, (list, tuple)) and tree and all(isinstance(t, _Ref) for t in tree):
            return [masks[tuple(t)] for t in tree]
        return None

    kwargs = dict(kwargs)
    explicit = kwargs.pop("mask", None)
    first = args_refs[0] if args_refs else None
    arg_mask = mask_of(first) if first is not None else None
    if "mask" in kwargs_refs:
        arg_mask = explicit
    names = [p for p in params if p != "self"]
    for k, tree in [*zip(names[1:], args_refs[1:]), *kwargs_refs.items()]:  # Keras: `<arg>_mask` per tensor arg
        key = f"{k}_mask"
        if k != "mask" and key in params and key not in kwargs:
            m = mask_of(tree)
            if m is not None:
                kwargs[key] = m
    return arg_mask, kwargs


def _output_names(outputs, layers) -> tuple:
    names, used = [], set()
    for i, s in enumerate(outputs):
        base = getattr(s.node.layer, "name", None) if s.node is not None else s.name
        base = base or f"output_{i}"
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names.append(name)
    return tuple(names)


