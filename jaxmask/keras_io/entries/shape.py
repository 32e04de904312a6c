"""Registry entries: shape layers (RepeatVector, Flatten, Reshape, Permute), regularisation layers (SpatialDropout1D,
GaussianNoise, GaussianDropout, ActivityRegularization) and activation layers (ReLU, LeakyReLU, PReLU, ELU,
Softmax)."""

from __future__ import annotations

import math

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, Weight, register
from jaxmask.keras_io.entries.merge import semantics_for

MAX_REPEAT = 2**16  # RepeatVector's n: the output is n times the input
MAX_DIM = 2**24  # one dimension of Reshape's target_shape


def _ints(lo, hi, *, allow=(), max_len=8):
    """A list of 1..max_len ints in [lo, hi] (or in ``allow``), also as an int alone or Keras' ``__tuple__``."""

    def check(v, where):
        if isinstance(v, dict) and v.get("class_name") == "__tuple__":
            v = v["config"].get("value") if isinstance(v.get("config"), dict) else None
        items = v if isinstance(v, list) else [v]
        if not 1 <= len(items) <= max_len:
            s.refuse(f"{where} must list 1 to {max_len} integers; received {v!r:.80}.")
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int) or not (lo <= x <= hi or x in allow):
                extra = f" or one of {list(allow)}" if allow else ""
                s.refuse(f"{where} must hold integers in [{lo}, {hi}]{extra}; received {v!r:.80}.")
        return tuple(items) if isinstance(v, list) else v

    return check


def _nonneg(v, where):
    v = s.number(v, where)
    if not (math.isfinite(v) and v >= 0):
        s.refuse(f"{where} must be a finite number >= 0; received {v!r}.")
    return v


def _optional_nonneg(v, where):
    return None if v is None else _nonneg(v, where)


def _finite(v, where):
    v = s.number(v, where)
    if not math.isfinite(v):
        s.refuse(f"{where} must be a finite number; received {v!r}.")
    return v


def _zero(v, where):
    if s.number(v, where) != 0:
        s.refuse(f"{where} = {v!r}: ActivityRegularization adds an activity loss in training, which jaxmask does not "
                 "implement (the layer is the identity at inference); only l1 = l2 = 0 is loaded. Remove the layer "
                 "or set l1 = l2 = 0 in Keras before saving if you only need inference.")
    return 0.0


def _guard(build):
    """Turn a constructor's ValueError/TypeError (a config that cannot describe a layer) into a refusal."""

    def guarded(cfg, ctx):
        try:
            return build(cfg, ctx)
        except (TypeError, ValueError) as e:
            s.refuse(f"{ctx.where}: {e}")

    return guarded


def _shape(ctx, kind, rank=None):
    shape = ctx.input_shape
    if not isinstance(shape, tuple) or not shape or (rank is not None and len(shape) != rank):
        want = f"[batch, {', '.join(['...'] * rank)}]" if rank else "[batch, ...]"
        s.refuse(f"{ctx.where}: {kind} needs one input {want}; received input shape {shape!r:.80}.")
    return shape


# ------------------------------------------------------------------------------------------------- shape

register(Entry(
    "RepeatVector", nn.RepeatVector,
    fields={"n": s.integer(1, MAX_REPEAT)},
    build=lambda cfg, ctx: (_shape(ctx, "RepeatVector", 1), nn.RepeatVector(cfg["n"]))[1],
    config=lambda layer, ctx: {"n": layer.n},
))

register(Entry(
    "Flatten", nn.Flatten,
    fields={"data_format": s.one_of(None, "channels_last", "channels_first")},
    build=lambda cfg, ctx: (_shape(ctx, "Flatten"), nn.Flatten(cfg.get("data_format")))[1],
    config=lambda layer, ctx: {"data_format": layer.data_format},
))

register(Entry(
    "Reshape", nn.Reshape,
    fields={"target_shape": _ints(1, MAX_DIM, allow=(-1,))},
    build=_guard(lambda cfg, ctx: (_shape(ctx, "Reshape"), nn.Reshape(cfg["target_shape"]))[1]),
    config=lambda layer, ctx: {"target_shape": list(layer.target_shape)},
))

register(Entry(
    "Permute", nn.Permute,
    fields={"dims": _ints(1, 8)},
    build=_guard(lambda cfg, ctx: (_shape(ctx, "Permute"), nn.Permute(cfg["dims"]))[1]),
    config=lambda layer, ctx: {"dims": list(layer.dims)},
))

# ------------------------------------------------------------------------------------------------- noise

register(Entry(
    "SpatialDropout1D", nn.SpatialDropout1D,
    fields={"rate": s.rate, "seed": s.scalar, "noise_shape": s.NONE},
    build=lambda cfg, ctx: (_shape(ctx, "SpatialDropout1D", 2), nn.SpatialDropout1D(cfg["rate"], rngs=ctx.rngs))[1],
    config=lambda layer, ctx: {"rate": layer.rate},
))

register(Entry(
    "GaussianNoise", nn.GaussianNoise,
    fields={"stddev": _nonneg, "seed": s.scalar},
    build=lambda cfg, ctx: nn.GaussianNoise(cfg["stddev"], rngs=ctx.rngs),
    config=lambda layer, ctx: {"stddev": layer.stddev},
))

register(Entry(
    "GaussianDropout", nn.GaussianDropout,
    fields={"rate": s.rate, "seed": s.scalar},
    build=lambda cfg, ctx: nn.GaussianDropout(cfg["rate"], rngs=ctx.rngs),
    config=lambda layer, ctx: {"rate": layer.rate},
))

register(Entry(
    "ActivityRegularization", nn.ActivityRegularization,
    fields={"l1": _zero, "l2": _zero},
    build=lambda cfg, ctx: nn.ActivityRegularization(),
    config=lambda layer, ctx: {"l1": 0.0, "l2": 0.0},
))

# ------------------------------------------------------------------------------------------------- activations

register(Entry(
    "ReLU", nn.ReLU,
    fields={"max_value": _optional_nonneg, "negative_slope": _nonneg, "threshold": _nonneg},
    build=lambda cfg, ctx: nn.ReLU(cfg.get("max_value"), cfg.get("negative_slope", 0.0), cfg.get("threshold", 0.0)),
    config=lambda layer, ctx: {"max_value": layer.max_value, "negative_slope": layer.negative_slope,
                               "threshold": layer.threshold},
))


def _leaky_slope(cfg):
    return cfg.get("negative_slope", cfg.get("alpha", 0.3))


register(Entry(
    "LeakyReLU", nn.LeakyReLU,
    fields={"negative_slope": _finite, "alpha": _finite},  # tf_keras (and Keras 3's deprecated alias): alpha
    build=lambda cfg, ctx: nn.LeakyReLU(_leaky_slope(cfg)),
    config=lambda layer, ctx: ({"alpha": layer.negative_slope} if ctx.flavor == "tf_keras"
                               else {"negative_slope": layer.negative_slope}),
))

register(Entry(
    "ELU", nn.ELU,
    fields={"alpha": _finite},
    build=lambda cfg, ctx: nn.ELU(cfg.get("alpha", 1.0)),
    config=lambda layer, ctx: {"alpha": layer.alpha},
))


def _build_prelu(cfg, ctx):
    shape = _shape(ctx, "PReLU")
    return nn.PReLU(shape, shared_axes=cfg.get("shared_axes"), rngs=ctx.rngs)


register(Entry(
    "PReLU", nn.PReLU,
    fields={"alpha_initializer": s.INITIALIZER, "alpha_regularizer": s.REGULARIZER, "alpha_constraint": s.CONSTRAINT,
            "shared_axes": lambda v, where: None if v is None else _ints(1, 8)(v, where)},
    build=_guard(_build_prelu),
    config=lambda layer, ctx: {"shared_axes": list(layer.shared_axes) if layer.shared_axes else None},
    weights=lambda layer: [Weight("vars/0", ("alpha",))],
))


def _softmax_config(layer, ctx):
    semantics_for(layer, ctx)
    return {"axis": list(layer.axis) if isinstance(layer.axis, tuple) else layer.axis}


register(Entry(
    "Softmax", nn.Softmax,
    fields={"axis": _ints(-8, 8)},
    build=_guard(lambda cfg, ctx: nn.Softmax(cfg.get("axis", -1), semantics=ctx.flavor)),
    config=_softmax_config,
))
