"""Functional models: ``Input`` symbols, symbolic layer calls, and ``Model``, a DAG of layers with Keras' mask
propagation at every node.

Building works as in Keras: ``Input`` returns a symbolic tensor, calling any ``jm.nn`` layer on symbolic tensors
records a node (the output shapes come from ``nnx.eval_shape`` of the real call, so there is no second shape
logic to keep in step), and ``Model(inputs, outputs)`` walks the recorded nodes back from the outputs::

    tokens = jm.nn.Input((None,), dtype="int32", name="tokens")
    x = jm.nn.Embedding(1000, 32, mask_zero=True, rngs=rngs)(tokens)
    x = jm.nn.Bidirectional(jm.nn.LSTM(32, 16, rngs=rngs))(x)
    model = jm.nn.Model(tokens, jm.nn.Dense(32, 1, activation="sigmoid", rngs=rngs)(x))
    y, mask = model(token_ids)

At call time every node receives the masks of its inputs, as Keras' ``Layer.__call__`` fills them in: the mask
of the first positional argument (a list of masks for a list of tensors) goes to ``mask=``, and the mask of a
tensor passed as keyword ``k`` goes to ``k_mask=`` when the layer's call takes that argument (Keras' rule for
``MultiHeadAttention``'s ``value_mask``/``key_mask``). The node's output masks are the layer's
``compute_output_mask``. A node may also carry an explicit mask tensor (``layer(x, mask=m)``); it wins.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


_PLACEHOLDERS = (13, 17)  # stand-ins for unknown dimensions; a dimension that follows them stays unknown


class KerasTensor:
    """A symbolic tensor: the output of ``Input`` or of a layer called on symbolic tensors.

    Attributes:
      shape: the shape with the batch axis first; ``None`` for unknown sizes.
      dtype: a NumPy dtype.
      node: the ``_Node`` that produced it (``None`` for an input); ``index`` is its position among the node's
        flattened outputs (Keras' ``keras_history`` tensor index).
      name: the input's name (inputs only).
    """

    def __init__(self, shape, dtype, node=None, index=0, name=None):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.node = node
        self.index = index
        self.name = name

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape} dtype={self.dtype.name}" + (f" name={self.name!r}>" if self.name else ">")


def Input(shape, dtype="float32", *, name: str | None = None, batch_size: int | None = None,
          batch_shape=None) -> KerasTensor:
    """A symbolic model input of ``shape`` (without the batch axis; ``None`` for unknown sizes).

    Keras equivalent: ``keras.Input(shape, batch_size=None, dtype=None, name=None, batch_shape=None)``.
    """
    if batch_shape is None:
        if isinstance(shape, int):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"`shape` must be a tuple of ints or None (without the batch axis); received {shape!r}.")
        batch_shape = (batch_size,) + tuple(shape)
    for d in batch_shape:
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1):
            raise ValueError(f"`shape` must hold positive ints or None; received {tuple(batch_shape)!r}.")
    try:
        dtype = np.dtype(jnp.dtype(dtype))
    except TypeError:
        raise TypeError(f"`dtype` of Input {name!r} must be a numeric dtype; received {dtype!r}.") from None
    return KerasTensor(batch_shape, dtype, name=name)


@dataclasses.dataclass(eq=False)
class _Node:
    """One recorded call: ``layer(*args, **kwargs)`` with ``KerasTensor`` leaves, and its flat outputs."""

    layer: Any
    args: tuple
    kwargs: dict
    outputs: tuple = ()
    treedef: Any = None
    ignore_mask: bool = False  # Keras 3: an RNN given initial_state in a graph runs unmasked


def _is_symbol(v) -> bool:
    return isinstance(v, KerasTensor)


def _symbols(tree) -> list:
    return [v for v in jax.tree.leaves(tree, is_leaf=_is_symbol) if _is_symbol(v)]


def has_symbols(args, kwargs) -> bool:
    return bool(_symbols((args, kwargs)))


def _abstract(tree, fill: int):
    def one(v):
        if not _is_symbol(v):
            return v
        return jax.ShapeDtypeStruct(tuple(fill if d is None else d for d in v.shape), v.dtype)
    return jax.tree.map(one, tree, is_leaf=_is_symbol)


def symbolic_call(layer, call, args, kwargs):
    """Record ``layer(*args, **kwargs)`` on symbolic tensors; return symbolic outputs of the same structure.

    The real call runs under ``nnx.eval_shape`` with unknown sizes set to a stand-in. The batch axis stays the
    batch axis (unknown if the inputs' is); when another input size is unknown the call runs a second time with a
    different stand-in, and an output size that changes with it is unknown (``None``).
    """
    symbols = _symbols((args, kwargs))
    batch_unknown = any(s.shape and s.shape[0] is None for s in symbols)
    other_unknown = any(d is None for s in symbols for d in s.shape[1:])
    runs = []
    for fill in _PLACEHOLDERS[: 2 if other_unknown else 1]:
        a, k = _abstract((args, kwargs), fill)
        try:
            out = nnx.eval_shape(*_static_call(call, layer, (a, k)))
        except (ValueError, TypeError) as e:
            raise type(e)(f"{type(layer).__name__} called on {_describe(args)}: {e}") from None
        if getattr(layer, "returns_mask", False):
            out = out[0]
        runs.append(out)
    leaves, treedef = jax.tree.flatten(runs[0])
    other = jax.tree.leaves(runs[-1])
    node = _Node(layer, args, kwargs, treedef=treedef)
    outputs = []
    for i, (x, y) in enumerate(zip(leaves, other)):
        shape = [d if d == e else None for d, e in zip(x.shape, y.shape)]
        if batch_unknown and shape:
            shape[0] = None
        outputs.append(KerasTensor(shape, x.dtype, node, i))
    node.outputs = tuple(outputs)
    return jax.tree.unflatten(treedef, outputs)


def _static_call(call, layer, tree):
    """``(fn, layer, arrays)`` for ``nnx.eval_shape``: only the abstract tensors of ``tree`` are traced; Python values
    (flags such as ``use_causal_mask``) stay static, as they are in an eager call."""
    leaves, treedef = jax.tree.flatten(tree)
    where = [i for i, v in enumerate(leaves) if isinstance(v, jax.ShapeDtypeStruct)]

    def fn(m, arrays):
        full = list(leaves)
        for i, x in zip(where, arrays):
            full[i] = x
        a, k = jax.tree.unflatten(treedef, full)
        return call(m, *a, **k)

    return fn, layer, [leaves[i] for i in where]


def _describe(args) -> str:
    return ", ".join(f"shape {s.shape} {s.dtype.name}" for s in _symbols(args)) or "no tensors"


def symbolic(call):
    """Decorator for ``Layer.__call__``: calls on ``KerasTensor`` arguments record a graph node instead."""

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        if has_symbols(args, kwargs):
            return symbolic_call(self, call, args, kwargs)
        return call(self, *args, **kwargs)

    return wrapper
