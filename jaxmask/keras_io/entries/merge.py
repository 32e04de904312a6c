"""Registry entries: the merge layers (Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum, Dot) and the
operations Keras 3 writes into functional graphs to compute a Concatenate's mask (``ExpandDims``, ``ZerosLike``,
``OnesLike`` and the ``Concatenate`` operation of ``keras.src.ops.numpy``, which shares the layer's class name).

Keras 3 and tf_keras merge masks differently (see ``jaxmask.nn._merge``): a loaded layer follows the library that
wrote the file (``semantics=ctx.flavor``), and ``to_keras`` refuses to describe a layer for the other library.
"""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, register

_AXIS = s.integer(-8, 8)


def _unwrap(v):
    if isinstance(v, dict) and v.get("class_name") == "__tuple__":
        return v["config"].get("value") if isinstance(v.get("config"), dict) else None
    return v


def _concat_axis(v, where):
    v = _AXIS(v, where)
    if v == 0:
        s.refuse(f"{where}: Concatenate along the batch axis (axis=0) is not supported.")
    return v


def _dot_axes(v, where):
    """Dot's ``axes``: an int or a pair of ints, never the batch axis 0."""
    v = _unwrap(v)
    if isinstance(v, list) and len(v) != 2:
        s.refuse(f"{where} must be an int or a pair of ints; received {v!r:.80}.")
    items = v if isinstance(v, list) else [v]
    for a in items:
        if _AXIS(a, where) == 0:
            s.refuse(f"{where}: Dot over the batch axis (0) is not possible; received {v!r:.80}.")
    return tuple(items) if isinstance(v, list) else v


def semantics_for(layer, ctx) -> None:
    """Refuse to describe a layer for the other Keras: its mask rules would silently change."""
    if layer.semantics != ctx.flavor:
        raise ValueError(f"{ctx.where}: this {type(layer).__name__} follows {layer.semantics}'s mask rules, which "
                         f"{ctx.flavor} does not have; build it with semantics={ctx.flavor!r} or convert with "
                         f"flavor={layer.semantics!r}.")


def _merge_config(layer, ctx):
    semantics_for(layer, ctx)
    return {}


def _merge_inputs(kind, ctx, n=None):
    shapes = ctx.input_shape
    if not isinstance(shapes, list) or not shapes or (n is not None and len(shapes) != n):
        want = f"a list of {n}" if n else "a list of"
        s.refuse(f"{ctx.where}: {kind} is called on {want} tensors; received input shape {shapes!r:.80}.")


def _build_merge(kind):
    def build(cfg, ctx):
        _merge_inputs(kind, ctx, 2 if kind == "Subtract" else None)
        return getattr(nn, kind)(semantics=ctx.flavor)
    return build


for _kind in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
    register(Entry(_kind, getattr(nn, _kind), fields={}, build=_build_merge(_kind), config=_merge_config))


def _build_concatenate(cfg, ctx):
    _merge_inputs("Concatenate", ctx)
    return nn.Concatenate(cfg.get("axis", -1), semantics=ctx.flavor)


def _concatenate_config(layer, ctx):
    semantics_for(layer, ctx)
    return {"axis": layer.axis}


register(Entry("Concatenate", nn.Concatenate, fields={"axis": _concat_axis}, build=_build_concatenate,
               config=_concatenate_config))


def _build_dot(cfg, ctx):
    _merge_inputs("Dot", ctx, 2)
    if "axes" not in cfg:
        s.refuse(f"{ctx.where}: Dot needs `axes`.")
    return nn.Dot(cfg["axes"], normalize=cfg.get("normalize", False), semantics=ctx.flavor)


def _dot_config(layer, ctx):
    semantics_for(layer, ctx)
    return {"axes": list(layer.axes) if isinstance(layer.axes, tuple) else layer.axes, "normalize": layer.normalize}


register(Entry("Dot", nn.Dot, fields={"axes": _dot_axes, "normalize": s.boolean}, build=_build_dot,
               config=_dot_config))

# The graph operations of Concatenate's mask (Keras 3 records them when a later layer takes the mask).
_OPS = "keras.src.ops.numpy"
register(Entry("ExpandDims", nn.Op, fields={"axis": _AXIS},
               build=lambda cfg, ctx: nn.Op("expand_dims", axis=cfg["axis"]),
               config=lambda layer, ctx: dict(layer.options), module=_OPS))
for _cls, _op in (("ZerosLike", "zeros_like"), ("OnesLike", "ones_like")):
    register(Entry(_cls, nn.Op, fields={"dtype": s.input_dtype},
                   build=lambda cfg, ctx, op=_op: nn.Op(op, dtype=cfg.get("dtype")),
                   config=lambda layer, ctx: {"dtype": layer.dtype}, module=_OPS))
register(Entry(f"{_OPS}.Concatenate", nn.Op, fields={"axis": _AXIS},
               build=lambda cfg, ctx: nn.Op("concatenate", axis=cfg.get("axis", 0)),
               config=lambda layer, ctx: dict(layer.options), module=_OPS))
