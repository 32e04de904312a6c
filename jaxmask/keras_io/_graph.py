"""Keras model configs as jaxmask models: a generic walker over the registry (``_registry``).

A config (``config.json`` of a ``.keras`` archive, ``model_config`` of a legacy ``.h5``, ``model.to_json()`` of a
live model) is read as pure data. Every layer entry is checked against its registry entry before any graph or
shape reasoning; then the graph is replayed on ``jm.nn.Input`` symbols exactly as a user would build it, each
layer built (abstractly, without running initialisers) on the shapes its first call receives. Sequential configs
give ``jm.nn.Sequential``, functional ones ``jm.nn.Model``.

Both config dialects are read: Keras 3 (nodes ``{"args": [...], "kwargs": {...}}`` with ``__keras_tensor__``
references) and tf_keras / Keras 2 (nodes ``[[name, node_index, tensor_index, kwargs], ...]``).

Keras 3 writes the mask computations of a graph as operations (``NotEqual``, ``Any``, ``LogicalOr``...) and
passes their results as explicit ``mask=`` arguments; those operations are registry entries too (module
``keras.src.ops.*``). Keras 3 also runs a recurrent layer that receives ``initial_state`` from other tensors of a
functional graph without its input's mask (tf_keras applies it); the replay reproduces whichever library wrote
the config.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io import entries as _entries  # noqa: F401  (registers every entry)
from jaxmask.keras_io._limits import Limits, refuse
from jaxmask.keras_io._registry import REGISTRY, Context, variable, weights_of
from jaxmask.nn._core import abstract_init
from jaxmask.nn._graph import KerasTensor

_ENTRY_KEYS = {"module", "class_name", "config", "registered_name", "build_config", "name", "inbound_nodes",
               "shared_object_id", "compile_config"}
_INPUT_FIELDS = {"sparse": s.one_of(False), "ragged": s.one_of(False), "optional": s.one_of(False),
                 "input_tensor": s.NONE, "dtype": s.input_dtype}
_MAX_NODES_PER_LAYER = 64


@dataclasses.dataclass
class Built:
    """A model built from a config: the module and its layers as Keras lists them.

    Attributes:
      model: ``jm.nn.Sequential`` or ``jm.nn.Model``.
      layers: ``(keras_name, keras3_path, module)`` for every layer with a registry entry, in Keras' order (nested
        models included, recursively flattened) — the order of weights files and of ``get_weights()``.
      top: ``(keras_name, module)`` of the top-level layers, in Keras' order.
    """

    model: object
    layers: list
    top: list


def check_layer(entry_json, where: str, ops_allowed: bool = False):
    """Check one serialised layer against the registry; return ``(registry entry, checked config)``.

    A container (Sequential / Functional) returns ``(None, config)``.
    """
    if not isinstance(entry_json, dict):
        refuse(f"{where} must be a serialised layer object; received {type(entry_json).__name__}.")
    cls = entry_json.get("class_name")
    if s.member(cls, s.WHY_REFUSED):
        refuse(f"{where}: class {cls!r} is refused: {s.WHY_REFUSED[cls]}.")
    extra = set(entry_json) - _ENTRY_KEYS
    if extra:
        refuse(f"{where}: unexpected keys {sorted(extra)} in the layer entry.")
    if entry_json.get("registered_name") not in (None, cls):
        refuse(f"{where}: layer {cls!r:.80} registered as {entry_json.get('registered_name')!r:.80} is a custom "
               "object.")
    cfg = entry_json.get("config")
    if not isinstance(cfg, dict):
        refuse(f"{where}.config must be an object; received {type(cfg).__name__}.")
    if s.member(cls, s.MODEL_CLASSES):
        return None, cfg
    if cls == "InputLayer":
        entry, fields, module = "InputLayer", _INPUT_FIELDS, "keras.layers"
    elif s.member(cls, REGISTRY):
        entry = REGISTRY[cls]
        twin = f"{entry_json.get('module')}.{cls}"  # an operation named like a layer: keras.src.ops.numpy.Concatenate
        if entry_json.get("module") != entry.module and s.member(twin, REGISTRY):
            entry = REGISTRY[twin]
        fields, module = entry.fields, entry.module
        if entry.module != "keras.layers" and not ops_allowed:
            refuse(f"{where}: the operation {cls} can only appear inside a functional graph.")
    else:
        refuse(f"{where}: layer class {cls!r:.80} is not in the allow-list "
               f"{sorted(k for k, e in REGISTRY.items() if e.module == 'keras.layers')}.")
    if entry_json.get("module") not in (None, module):
        refuse(f"{where}: {cls!r} from module {entry_json.get('module')!r:.80}; expected Keras' own {module!r}.")
    fields = s.COMMON | fields
    out = {}
    for key, value in cfg.items():
        if key not in fields:
            if value is None:
                continue
            refuse(f"{where}.config: field {key!r:.80} of {cls} is not understood by jaxmask (value {value!r:.80}).")
        check = fields[key]
        out[key] = value if check is None else check(value, f"{where}.config.{key}")
    return entry, out


def _check_all(layers_json, where: str, limits: Limits, depth: int = 0) -> None:
    """Every class and field of a (possibly nested) layers list (``where.config.layers``), before anything is
    built."""
    if not isinstance(layers_json, list):
        refuse(f"{where}.config.layers must be a list of layers.")
    if len(layers_json) > limits.max_layers:
        refuse(f"{where}.config.layers: {len(layers_json)} layers, over the limit of {limits.max_layers}.")
    for i, e in enumerate(layers_json):
        at = _at(where, i, e)
        entry, cfg = check_layer(e, at, ops_allowed=True)
        if entry is None:
            if depth >= 8:
                refuse(f"{at}: models nested deeper than 8 levels.")
            _check_all(cfg.get("layers"), at, limits, depth + 1)


class Replay:
    """Builds jaxmask modules for serialised layers, remembering each one's Keras name and weight path."""

    def __init__(self, flavor: str, backend: str, limits: Limits):
        self.flavor, self.backend, self.limits = flavor, backend, limits

    def context(self, where, input_shape, batch_size=None) -> Context:
        return Context(flavor=self.flavor, backend=self.backend, where=where, input_shape=input_shape,
                       batch_size=batch_size, build_layer=self._build_inner)

    def _build_inner(self, entry_json, input_shape, where):
        entry, cfg = check_layer(entry_json, where)
        if entry is None or entry == "InputLayer":
            refuse(f"{where}: a wrapper must wrap a layer; received {entry_json.get('class_name')!r:.80}.")
        return self._make(entry, cfg, self.context(where, input_shape, self._batch))

    def _make(self, entry, cfg, ctx):
        with abstract_init():
            module = entry.build(cfg, dataclasses.replace(ctx, rngs=nnx.Rngs(0)))
        if "name" in cfg:
            module.name = cfg["name"]
        return module

    _batch = None

    def layer(self, entry, cfg, where, first, args=()):
        """Build a layer for its first call, whose first argument is ``first`` (a symbol or a list of them) and
        whose positional arguments are ``args``."""
        if isinstance(first, (list, tuple)) and first and all(isinstance(v, KerasTensor) for v in first):
            shape, batch = [v.shape[1:] for v in first], first[0].shape[0]
        elif isinstance(first, KerasTensor):
            shape, batch = first.shape[1:], first.shape[0]
        else:
            shape, batch = None, None
        self._batch = batch
        ctx = self.context(where, shape, batch)
        ctx.arg_shapes = tuple(v.shape[1:] if isinstance(v, KerasTensor) else None for v in args)
        return self._make(entry, cfg, ctx)

    # ------------------------------------------------------------------------------------------- models

    def model(self, cfg_json, where: str, depth: int = 0):
        """``(module, layers)`` for a Sequential or functional config; ``layers`` as in ``Built.top``."""
        cls = cfg_json.get("class_name")
        inner = cfg_json.get("config")
        if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
            refuse(f"{where}.config must be an object with a 'layers' list.")
        extra = set(inner) - {"name", "trainable", "dtype", "layers", "input_layers", "output_layers",
                              "build_input_shape"}
        if any(inner[k] is not None for k in extra):
            refuse(f"{where}.config: unexpected keys {sorted(extra)}.")
        if cls == "Sequential" or ("input_layers" not in inner and "output_layers" not in inner):
            return self._sequential(cfg_json, inner, where, depth)
        return self._functional(inner, where, depth)

    def _sub(self, entry_json, where, args, kwargs, depth):
        """``(module, args, kwargs)``: a layer or nested model built for its first call, and the call as jaxmask
        takes it (``Entry.adapt_call``)."""
        entry, cfg = check_layer(entry_json, where, ops_allowed=True)
        if entry is None:
            module, _ = self.model(entry_json, where, depth + 1)
            module.name = cfg.get("name")
            return module, args, kwargs
        if entry == "InputLayer":
            refuse(f"{where}: an InputLayer cannot be called.")
        args, kwargs = entry.adapt_call(tuple(args), dict(kwargs))
        for key in kwargs:
            if key not in entry.call_kwargs:
                refuse(f"{where}: call argument {key!r:.80} of {entry.keras_class} is not supported.")
        return self.layer(entry, cfg, where, args[0] if args else None, args), args, kwargs

    def _sequential(self, cfg_json, inner, where, depth):
        layers_json = list(enumerate(inner["layers"]))
        batch_shape = None
        if layers_json and isinstance(layers_json[0][1], dict) and layers_json[0][1].get("class_name") == "InputLayer":
            i, e = layers_json.pop(0)
            _, f = check_layer(e, f"{where}.config.layers[{i}]")
            batch_shape = f.get("batch_shape") or f.get("batch_input_shape")
            dtype = f.get("dtype") or "float32"
            if batch_shape is None:
                refuse(f"{where}.config.layers[{i}]: the InputLayer has no batch_shape.")
        else:
            dtype = "float32"
            first = layers_json[0][1].get("config") if layers_json and isinstance(layers_json[0][1], dict) else None
            candidates = [(first or {}).get("batch_shape"), (first or {}).get("batch_input_shape"),
                          inner.get("build_input_shape"), (cfg_json.get("build_config") or {}).get("input_shape")
                          if isinstance(cfg_json.get("build_config"), dict) else None]
            batch_shape = next((c for c in candidates if c is not None), None)
            if batch_shape is None:
                refuse(f"{where}: the input shape is unknown (the model was never built, so it has no weights).")
            batch_shape = s.shape(batch_shape, f"{where}.build_input_shape")
            if first is not None and layers_json[0][1].get("class_name") == "Embedding":
                dtype = "int32"
        for j, e in layers_json:
            if isinstance(e, dict) and e.get("class_name") == "InputLayer":
                refuse(f"{where}.config.layers[{j}]: an InputLayer in the middle of a Sequential model.")
        x = nn.Input(None, dtype, batch_shape=tuple(batch_shape))
        modules, top = [], []
        for j, e in layers_json:
            module, _, _ = self._sub(e, _at(where, j, e), (x,), {}, depth)
            if getattr(module, "return_state", False):
                refuse(f"{where}.config.layers[{j}]: return_state=True inside a Sequential model.")
            x = module(x)
            modules.append(module)
            top.append((getattr(module, "name", None), module))
        return nn.Sequential(modules), top

    def _functional(self, inner, where, depth):
        entries = {}
        n_nodes = 0
        for i, e in enumerate(inner["layers"]):
            at = _at(where, i, e)
            if not isinstance(e, dict):
                refuse(f"{at} must be an object.")
            name = e.get("name", (e.get("config") or {}).get("name") if isinstance(e.get("config"), dict) else None)
            if not isinstance(name, str) or name in entries:
                refuse(f"{at}: missing or repeated layer name {name!r:.80}.")
            nodes = e.get("inbound_nodes", [])
            if not isinstance(nodes, list) or len(nodes) > _MAX_NODES_PER_LAYER:
                refuse(f"{at}.inbound_nodes must be a list of at most {_MAX_NODES_PER_LAYER} calls.")
            n_nodes += len(nodes)
            entries[name] = (at, e, nodes)
        if n_nodes > 4 * self.limits.max_layers:
            refuse(f"{where}: {n_nodes} layer calls, over the limit of {4 * self.limits.max_layers}.")
        _check_references(entries)
        produced = {}  # (layer name, node index) -> flat tuple of output symbols
        inputs = []
        for ref_json in _ref_list(inner.get("input_layers"), f"{where}.config.input_layers"):
            name, node, index = _ref(ref_json, f"{where}.config.input_layers")
            if name not in entries or entries[name][1].get("class_name") != "InputLayer" or (node, index) != (0, 0):
                refuse(f"{where}.config.input_layers: {name!r:.80} is not an InputLayer of the model.")
            at, e, _ = entries[name]
            _, f = check_layer(e, at)
            shape = f.get("batch_shape") or f.get("batch_input_shape")
            if shape is None:
                refuse(f"{at}: the InputLayer has no batch_shape.")
            symbol = nn.Input(None, f.get("dtype") or "float32", name=name, batch_shape=s.shape(shape, at))
            produced[(name, 0)] = (symbol,)
            inputs.append(symbol)
        for name, (at, e, _) in entries.items():
            if e.get("class_name") == "InputLayer" and (name, 0) not in produced:
                refuse(f"{at}: InputLayer {name!r:.80} is not among the model's input_layers.")
        modules = {}
        pending = [(name, k) for name, (_, e, nodes) in entries.items() if e.get("class_name") != "InputLayer"
                   for k in range(len(nodes))]
        while pending:
            progress = []
            for name, k in pending:
                at, e, nodes = entries[name]
                call = self._node(nodes[k], f"{at}.inbound_nodes[{k}]", produced, entries)
                if call is None:
                    continue
                args, kwargs, explicit_mask = call
                if name in modules:
                    module = modules[name]
                    entry = REGISTRY.get(e.get("class_name"))
                    if entry is not None:
                        args, kwargs = entry.adapt_call(tuple(args), dict(kwargs))
                else:
                    module, args, kwargs = self._sub(e, at, args, kwargs, depth)
                    modules[name] = module
                out = self._call(module, at, args, kwargs, explicit_mask)
                produced[(name, k)] = tuple(jax.tree.leaves(out, is_leaf=lambda v: isinstance(v, KerasTensor)))
                progress.append((name, k))
            if not progress:
                name, k = pending[0]
                refuse(f"{entries[name][0]}.inbound_nodes[{k}]: its inputs are never computed (a cycle, or a "
                       "reference to a missing layer or call).")
            pending = [p for p in pending if p not in progress]
        outputs = []
        for ref_json in _ref_list(inner.get("output_layers"), f"{where}.config.output_layers"):
            name, node, index = _ref(ref_json, f"{where}.config.output_layers")
            outputs.append(_lookup(produced, name, node, index, f"{where}.config.output_layers"))
        order = [name for name in entries if name in modules]
        top = [(name, modules[name]) for name in order if not _is_op(modules[name])]
        layers = _unique([modules[name] for name in order])
        # Keras 3 writes one reference for one tensor and a list for a list; tf_keras always writes a list and
        # returns a single tensor for a list of one.
        single_in = _is_single_ref(inner.get("input_layers")) or self.flavor == "tf_keras"
        single_out = _is_single_ref(inner.get("output_layers")) or self.flavor == "tf_keras"
        try:
            model = nn.Model(inputs[0] if single_in and len(inputs) == 1 else inputs,
                             outputs[0] if single_out and len(outputs) == 1 else outputs,
                             name=inner.get("name"), layers=layers)
        except ValueError as e:
            refuse(f"{where}: {e}")
        return model, top

    def _call(self, module, where, args, kwargs, explicit_mask):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if explicit_mask is not None:
            kwargs["mask"] = explicit_mask
        try:
            out = module(*args, **kwargs)
        except (ValueError, TypeError) as e:
            refuse(f"{where}: {e}")
        if self.flavor == "keras3" and "initial_state" in kwargs and isinstance(module, (nn.LSTM, nn.GRU,
                                                                                          nn.SimpleRNN,
                                                                                          nn.Bidirectional)):
            leaf = jax.tree.leaves(out, is_leaf=lambda v: isinstance(v, KerasTensor))[0]
            leaf.node.ignore_mask = True
        return out

    def _node(self, node, where, produced, entries):
        """``(args, kwargs, explicit mask)`` of one call with symbols in place of references, or None if an input
        is not computed yet."""
        missing = []

        def resolve(v, at):
            r = _tensor_ref(v, at)
            if r is not None:
                name, k, index = r
                if name not in entries:
                    refuse(f"{at}: reference to {name!r:.80}, which is not a layer of the model.")
                if (name, k) not in produced:
                    missing.append(r)
                    return None
                return _lookup(produced, name, k, index, at)
            if isinstance(v, list):
                return [resolve(x, f"{at}[{i}]") for i, x in enumerate(v)]
            if isinstance(v, dict):
                refuse(f"{at}: unexpected object {v!r:.80} among the call arguments.")
            if isinstance(v, str) and len(v) > 64:
                refuse(f"{at}: call argument string too long.")
            return v

        if isinstance(node, dict):  # Keras 3
            if set(node) - {"args", "kwargs"} or not isinstance(node.get("args", []), list) \
                    or not isinstance(node.get("kwargs", {}), dict):
                refuse(f"{where}: malformed node {node!r:.120}.")
            args = resolve(node.get("args", []), f"{where}.args")
            kwargs = {k: resolve(v, f"{where}.kwargs.{k}") for k, v in node.get("kwargs", {}).items()}
        elif isinstance(node, list) and node and all(isinstance(x, list) for x in node):  # tf_keras
            tensors = []
            kwargs = {}
            for i, x in enumerate(node):
                if len(x) not in (3, 4) or not isinstance(x[0], str):
                    refuse(f"{where}[{i}]: malformed tensor reference {x!r:.80}.")
                tensors.append(resolve(x[:3], f"{where}[{i}]"))
                if len(x) == 4:
                    if not isinstance(x[3], dict):
                        refuse(f"{where}[{i}]: malformed call arguments {x[3]!r:.80}.")
                    if i == 0:
                        kwargs = {k: resolve(v, f"{where}[{i}].{k}") for k, v in x[3].items()}
            args = [tensors[0] if len(tensors) == 1 else tensors]
        else:
            refuse(f"{where}: malformed node {node!r:.120}.")
        if missing:
            return None
        kwargs.pop("training", None)
        explicit = kwargs.pop("mask", None)
        return args, kwargs, explicit


def _node_refs(node, where):
    """Every tensor reference ``(layer, node, index)`` in one serialised call (either dialect)."""
    out, stack = [], [(node, where)]
    while stack:
        v, at = stack.pop()
        r = _tensor_ref(v, at)
        if r is not None:
            out.append(r)
        elif isinstance(v, list):
            stack.extend((x, at) for x in v)
        elif isinstance(v, dict):
            stack.extend((x, at) for x in v.values())
    return out


def _check_references(entries) -> None:
    """Before anything is built: every reference names a layer and a call it makes, and the calls form no cycle."""
    deps = {}
    for name, (at, e, nodes) in entries.items():
        for k, node in enumerate(nodes):
            refs = _node_refs(node, f"{at}.inbound_nodes[{k}]")
            for layer, call, _ in refs:
                if layer not in entries:
                    refuse(f"{at}.inbound_nodes[{k}]: reference to {layer!r:.80}, which is not a layer of the model.")
                made = max(1, len(entries[layer][2]))
                if call >= made:
                    refuse(f"{at}.inbound_nodes[{k}]: reference to call {call} of {layer!r:.80}, which the model "
                           f"never makes (it is called {made} time(s)).")
            deps[(name, k)] = {(layer, call) for layer, call, _ in refs}
    state = {}
    for start in deps:  # iterative DFS: a call reached again while still open closes a cycle
        if start in state:
            continue
        stack = [(start, iter(deps[start]))]
        state[start] = "open"
        while stack:
            key, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[key] = "done"
                stack.pop()
            elif child in deps:
                if state.get(child) == "open":
                    refuse(f"{entries[key[0]][0]}.inbound_nodes[{key[1]}]: its inputs are never computed (a cycle "
                           f"through {child[0]!r:.80}).")
                if child not in state:
                    state[child] = "open"
                    stack.append((child, iter(deps[child])))


def _at(where: str, i: int, e) -> str:
    """``where.config.layers[i]``, with the layer's name when it has a printable one."""
    cfg = e.get("config") if isinstance(e, dict) else None
    name = cfg.get("name") if isinstance(cfg, dict) else None
    named = f" ({name!r:.60})" if isinstance(name, str) else ""
    return f"{where}.config.layers[{i}]{named}"


def _is_op(module) -> bool:
    return isinstance(module, nn.Op)


def _unique(modules) -> list:
    out = []
    for m in modules:
        if not any(m is u for u in out):
            out.append(m)
    return out


def _is_single_ref(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and isinstance(v[0], str)


def _ref_list(v, where):
    if _is_single_ref(v):
        return [v]
    if not isinstance(v, list) or not v or len(v) > 1024:
        refuse(f"{where} must list tensor references; received {v!r:.80}.")
    return v


def _ref(x, where):
    r = _tensor_ref(x, where)
    if r is None:
        refuse(f"{where}: malformed tensor reference {x!r:.120}.")
    return r


def _tensor_ref(x, where):
    """``(layer, node_index, tensor_index)`` of a tensor reference in either dialect, or None for other values."""
    if isinstance(x, dict) and x.get("class_name") == "__keras_tensor__":
        cfg = x.get("config")
        hist = cfg.get("keras_history") if isinstance(cfg, dict) else None
    elif isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in x[1:]):
        hist = x
    else:
        return None
    if (not isinstance(hist, list) or len(hist) != 3 or not isinstance(hist[0], str)
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 0 for h in hist[1:])):
        refuse(f"{where}: malformed tensor reference {x!r:.120}.")
    return hist[0], hist[1], hist[2]


def _lookup(produced, name, node, index, where):
    if (name, node) not in produced:
        refuse(f"{where}: reference to call {node} of {name!r:.80}, which the model never makes.")
    outs = produced[(name, node)]
    if index >= len(outs):
        refuse(f"{where}: reference to output {index} of {name!r:.80}, which has {len(outs)} outputs.")
    return outs[index]


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------


def build_model(cfg, *, flavor: str, backend: str, limits: Limits, what: str) -> Built:
    """The jaxmask model described by ``cfg`` (parsed JSON), with abstract weights (fill them, then ``finish``)."""
    s.scan_objects(cfg, what)
    if not isinstance(cfg, dict):
        refuse(f"{what} must be a JSON object; received {type(cfg).__name__}.")
    cls = cfg.get("class_name")
    if not s.member(cls, s.MODEL_CLASSES):
        why = s.WHY_REFUSED.get(cls, "") if isinstance(cls, str) else ""
        refuse(f"{what}: the model class {cls!r:.80} is not Sequential or a functional Model"
               + (f" ({why})" if why else "") + ".")
    extra = set(cfg) - {"module", "class_name", "config", "registered_name", "build_config", "compile_config",
                        "keras_version", "backend", "shared_object_id"}
    if extra:
        refuse(f"{what}: unexpected top-level keys {sorted(extra)}.")
    inner = cfg.get("config")
    if not isinstance(inner, dict):
        refuse(f"{what}.config must be an object with a 'layers' list.")
    _check_all(inner.get("layers"), what, limits)
    replay = Replay(flavor, backend, limits)
    model, top = replay.model(cfg, what)
    layers = list(_with_paths(top, "layers"))
    total = sum(math.prod(variable(m, w.attrs).shape) for _, _, m in layers for w in weights_of(m))
    if total > limits.max_params:
        refuse(f"{what}: the architecture declares {total} weights, over the limit of {limits.max_params}.")
    return Built(model, layers, top)


def _with_paths(top, prefix):
    """``(keras_name, keras3_path, module)`` for ``top`` and nested models, paths numbered per class as Keras'
    ``saving_lib`` does (``layers/dense``, ``layers/dense_1``; a nested model's layers under its own path)."""
    used = {}
    for name, module in top:
        base = snake_case(_keras_class(module))
        used[base] = used.get(base, -1) + 1
        path = f"{prefix}/{base}" + (f"_{used[base]}" if used[base] else "")
        if isinstance(module, (nn.Sequential, nn.Model)):
            yield from _with_paths(top_of(module), f"{path}/layers")
        else:
            yield name, path, module


def _keras_class(module) -> str:
    if isinstance(module, nn.Sequential):
        return "Sequential"
    if isinstance(module, nn.Model):
        return "Functional"
    return next(k for k, e in REGISTRY.items() if type(module) is e.layer_type)


def top_of(model):
    layers = model.layers
    return [(getattr(m, "name", None), m) for m in layers if not _is_op(m)]


def layers_of(model) -> list:
    """``(keras_name, keras3_path, module)`` of a jaxmask model's layers with Keras equivalents, in Keras' order.

    Raises:
      TypeError: ``model`` is not a Sequential / Model, or holds a layer without a registry entry.
    """
    if not isinstance(model, (nn.Sequential, nn.Model)):
        raise TypeError(f"`model` must be a jm.nn.Sequential or jm.nn.Model; received {type(model).__name__}. Wrap "
                        "single layers: jm.nn.Sequential([layer]).")
    out = list(_with_paths(top_of(model), "layers"))
    for _, path, module in out:
        weights_of(module)  # raises TypeError for a layer without an entry
    return out


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: ``"SimpleRNN"`` -> ``"simple_rnn"``."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def finish(model):
    """Give a model built abstractly (``build_model``) concrete RNG streams and counters; every other variable
    must have been filled from the weights. Returns the concrete model in eval mode."""
    graphdef, state = nnx.split(model)
    variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    keys = [v for v in variables if isinstance(v, nnx.RngKey)]
    for v, key in zip(keys, jax.random.split(jax.random.key(0), len(keys)) if keys else ()):
        v.set_value(key)
    for v in variables:
        value = v.get_value()
        if isinstance(v, nnx.RngCount):
            v.set_value(jnp.zeros((), jnp.uint32))
        elif isinstance(value, jax.ShapeDtypeStruct):
            if isinstance(v, nn.RNNState):
                v.set_value(jnp.zeros(value.shape, value.dtype))
            else:
                raise AssertionError(f"{type(v).__name__} of shape {value.shape} was not loaded")
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def fill(built: Built, arrays_by_layer) -> None:
    """Set each layer's weights (``arrays_by_layer[i]`` for ``built.layers[i]``, Keras order) after checking
    every shape."""
    for (name, path, module), values in zip(built.layers, arrays_by_layer):
        slots = weights_of(module)
        if len(values) != len(slots):
            refuse(f"layer {name!r:.80} ({path}): {len(values)} weights given, {len(slots)} expected.")
        for w, value in zip(slots, values):
            v = variable(module, w.attrs)
            if tuple(np.shape(value)) != tuple(v.shape):
                refuse(f"layer {name!r:.80} ({path}): weight {'.'.join(map(str, w.attrs))} has shape "
                       f"{tuple(np.shape(value))}; the architecture needs {tuple(v.shape)}.")
            v.set_value(jnp.asarray(value, v.dtype))


def group_by_top(built: Built) -> list:
    """``(top-level name, [(index into built.layers, Weight), ...])`` per top-level layer: the unit of legacy
    ``.h5`` files and of ``get_weights()`` (a nested model lists all of its layers' weights)."""
    out, i = [], 0
    for name, module in built.top:
        n = len(list(_with_paths([(name, module)], "x")))
        out.append((name, [(j, w) for j in range(i, i + n) for w in weights_of(built.layers[j][2])]))
        i += n
    return out
