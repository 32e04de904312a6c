"""Registry entries: LayerNormalization, BatchNormalization, UnitNormalization."""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, Weight, register


def _axis_value(v, where):
    """Keras writes ``axis`` as an int (Keras 3 BatchNormalization, UnitNormalization) or a list of ints
    (LayerNormalization; tf_keras positive, Keras 3 negative)."""
    items = v if isinstance(v, list) else [v]
    if not 1 <= len(items) <= 8 or any(isinstance(a, bool) or not isinstance(a, int) or not -8 <= a <= 8
                                       for a in items):
        s.refuse(f"{where} must be an axis or a list of at most 8 axes in [-8, 8]; received {v!r:.80}.")
    return v


def _epsilon(v, where):
    v = s.number(v, where)
    if not 0.0 <= v <= 1e3:
        s.refuse(f"{where} must be a number in [0, 1000]; received {v!r}.")
    return v


def _momentum(v, where):
    v = s.number(v, where)
    if not 0.0 <= v <= 1.0:
        s.refuse(f"{where} must be a number in [0, 1]; received {v!r}.")
    return v


def _negative_axes(axis, ctx, kind: str) -> tuple:
    """``axis`` as negative axes of the input (batch included), each with a known size; refuses the batch axis."""
    shape = ctx.input_shape
    if not isinstance(shape, tuple) or not shape:
        s.refuse(f"{ctx.where}: {kind} needs one input with a feature axis; received input shape {shape}.")
    rank = len(shape) + 1
    out = []
    for a in (axis if isinstance(axis, list) else [axis]):
        if not -rank <= a < rank or a % rank == 0:
            s.refuse(f"{ctx.where}: {kind} axis {a} is out of range or the batch axis for inputs of rank {rank}.")
        out.append(a % rank - rank)
    if len(set(out)) != len(out):
        s.refuse(f"{ctx.where}: {kind} axis {axis!r} repeats an axis.")
    return tuple(sorted(out))


def _sizes(axes, ctx, kind: str) -> tuple:
    sizes = tuple(ctx.input_shape[a] for a in axes)
    if None in sizes:
        s.refuse(f"{ctx.where}: {kind} normalises over axes {list(axes)} of input shape [batch, "
                 f"{', '.join(map(str, ctx.input_shape))}], whose size must be known to build its weights.")
    return sizes


def _numbered(layer, names) -> list:
    present = [n for n in names if getattr(layer, n) is not None]
    return [Weight(f"vars/{i}", (n,)) for i, n in enumerate(present)]


_NORM_WEIGHTS = {
    "beta_initializer": s.INITIALIZER, "gamma_initializer": s.INITIALIZER, "beta_regularizer": s.REGULARIZER,
    "gamma_regularizer": s.REGULARIZER, "beta_constraint": s.CONSTRAINT, "gamma_constraint": s.CONSTRAINT,
}


def _layer_norm(cfg, ctx):
    axes = _negative_axes(cfg.get("axis", -1), ctx, "LayerNormalization")
    sizes = _sizes(axes, ctx, "LayerNormalization")
    axis, features = (axes[0], sizes[0]) if len(axes) == 1 else (axes, sizes)
    return nn.LayerNormalization(features, axis, epsilon=cfg.get("epsilon", 1e-3), center=cfg.get("center", True),
                                 scale=cfg.get("scale", True), rms_scaling=cfg.get("rms_scaling", False))


def _layer_norm_config(layer, ctx):
    cfg = {"axis": [layer.axis] if isinstance(layer.axis, int) else list(layer.axis), "epsilon": layer.epsilon,
           "center": layer.center, "scale": layer.scale}
    if ctx.flavor == "keras3":
        cfg["rms_scaling"] = layer.rms_scaling
    elif layer.rms_scaling:
        raise ValueError(f"{ctx.where}: LayerNormalization(rms_scaling=True) exists in Keras 3 only; convert with "
                         "flavor='keras3'.")
    return cfg


register(Entry(
    "LayerNormalization", nn.LayerNormalization,
    fields={"axis": _axis_value, "epsilon": _epsilon, "center": s.boolean, "scale": s.boolean,
            "rms_scaling": s.boolean, **_NORM_WEIGHTS},
    build=_layer_norm,
    config=_layer_norm_config,
    weights=lambda layer: _numbered(layer, ("gamma", "beta")),
))


def _batch_norm(cfg, ctx):
    axes = _negative_axes(cfg.get("axis", -1), ctx, "BatchNormalization")
    if len(axes) != 1:
        s.refuse(f"{ctx.where}: BatchNormalization over several axes {cfg.get('axis')!r} is not supported.")
    (features,) = _sizes(axes, ctx, "BatchNormalization")
    return nn.BatchNormalization(features, axes[0], momentum=cfg.get("momentum", 0.99),
                                 epsilon=cfg.get("epsilon", 1e-3), center=cfg.get("center", True),
                                 scale=cfg.get("scale", True), trainable=cfg.get("trainable", True))


register(Entry(
    "BatchNormalization", nn.BatchNormalization,
    fields={"axis": _axis_value, "momentum": _momentum, "epsilon": _epsilon, "center": s.boolean, "scale": s.boolean,
            "moving_mean_initializer": s.INITIALIZER, "moving_variance_initializer": s.INITIALIZER,
            "synchronized": s.boolean, "renorm": s.one_of(False), "renorm_clipping": s.NONE,
            "renorm_momentum": s.number, "fused": s.one_of(None, False), "virtual_batch_size": s.NONE,
            "adjustment": s.NONE, **_NORM_WEIGHTS},
    build=_batch_norm,
    config=lambda layer, ctx: {"axis": layer.axis, "momentum": layer.momentum, "epsilon": layer.epsilon,
                               "center": layer.center, "scale": layer.scale, "trainable": layer.trainable},
    weights=lambda layer: _numbered(layer, ("gamma", "beta", "moving_mean", "moving_variance")),
))


def _unit_norm(cfg, ctx):
    axes = _negative_axes(cfg.get("axis", -1), ctx, "UnitNormalization")
    return nn.UnitNormalization(axes[0] if len(axes) == 1 else axes,
                                semantics="tf_keras" if ctx.flavor == "tf_keras" else "keras3")


register(Entry(
    "UnitNormalization", nn.UnitNormalization,
    fields={"axis": _axis_value},
    build=_unit_norm,
    config=lambda layer, ctx: {"axis": layer.axis if isinstance(layer.axis, int) else list(layer.axis)},
))
