"""Registry entries: Conv1D, SeparableConv1D, MaxPooling1D, AveragePooling1D, UpSampling1D, ZeroPadding1D,
Cropping1D, GlobalMaxPooling1D."""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, Weight, register

# Caps: a crafted file cannot ask for huge windows or channel counts (the loader also caps the total weights).
MAX_FILTERS = 2**16
MAX_WINDOW = 2**12
_CHANNELS_LAST = s.one_of("channels_last")
_FILTERS = s.integer(1, MAX_FILTERS)
_WINDOW = s.int_tuple(1, MAX_WINDOW)
_LORA = {"lora_rank": s.one_of(None, 0), "lora_alpha": s.scalar}


def _pair(lo, hi):
    """``padding`` / ``cropping``: an int or a pair [start, end] (Keras writes the pair); returns a tuple."""
    check = s.integer(lo, hi)

    def pair(v, where):
        if isinstance(v, dict) and v.get("class_name") == "__tuple__":
            v = v["config"].get("value") if isinstance(v.get("config"), dict) else None
        items = v if isinstance(v, list) else [v, v]
        if len(items) != 2:
            s.refuse(f"{where} must be an integer or a pair of integers; received {v!r:.80}.")
        return tuple(check(x, where) for x in items)

    return pair


def _optional_window(v, where):
    return None if v is None else _WINDOW(v, where)


_CONV = {
    "filters": _FILTERS, "kernel_size": _WINDOW, "strides": _WINDOW, "padding": s.one_of("valid", "same", "causal"),
    "data_format": _CHANNELS_LAST, "dilation_rate": _WINDOW, "activation": s.activation, "use_bias": s.boolean,
    "bias_initializer": s.INITIALIZER, "bias_regularizer": s.REGULARIZER, "activity_regularizer": s.REGULARIZER,
    "bias_constraint": s.CONSTRAINT, **_LORA,
}


def _conv_args(cfg, ctx):
    return dict(strides=cfg.get("strides", (1,))[0], padding=cfg.get("padding", "valid"),
                dilation_rate=cfg.get("dilation_rate", (1,))[0],
                activation=ctx.activation(cfg.get("activation", "linear")), use_bias=cfg.get("use_bias", True),
                rngs=ctx.rngs)


def _conv_config(layer, ctx):
    return {"filters": layer.filters, "kernel_size": layer.kernel_size, "strides": layer.strides,
            "padding": layer.padding, "dilation_rate": layer.dilation_rate,
            "activation": ctx.keras_activation(layer.activation), "use_bias": layer.bias is not None}


def _build(kind, make):
    """Refuses (UnsafeFileError, naming the layer) what the jaxmask constructor refuses (ValueError)."""
    def build(cfg, ctx):
        try:
            return make(cfg, ctx)
        except ValueError as e:
            s.refuse(f"{ctx.where}: {kind}: {e}")
    return build


register(Entry(
    "Conv1D", nn.Conv1D,
    fields={**_CONV, "groups": s.integer(1, MAX_FILTERS), "kernel_initializer": s.INITIALIZER,
            "kernel_regularizer": s.REGULARIZER, "kernel_constraint": s.CONSTRAINT},
    build=_build("Conv1D", lambda cfg, ctx: nn.Conv1D(ctx.feature("Conv1D", 2), cfg["filters"],
                                                      cfg["kernel_size"][0], groups=cfg.get("groups", 1),
                                                      **_conv_args(cfg, ctx))),
    config=lambda layer, ctx: {**_conv_config(layer, ctx), "groups": layer.groups},
    weights=lambda layer: [Weight("vars/0", ("kernel",))] + ([Weight("vars/1", ("bias",))] if layer.bias is not None
                                                              else []),
))


def _separable_config(layer, ctx):
    if layer.padding == "causal" and ctx.flavor == "keras3":
        raise ValueError(f"{ctx.where}: SeparableConv1D(padding='causal') exists in tf_keras only; convert with "
                         "flavor='tf_keras'.")
    return {**_conv_config(layer, ctx), "depth_multiplier": layer.depth_multiplier}


register(Entry(
    "SeparableConv1D", nn.SeparableConv1D,
    fields={**_CONV, "groups": s.one_of(1), "depth_multiplier": s.integer(1, 2**10),
            "kernel_initializer": s.INITIALIZER, "kernel_regularizer": s.REGULARIZER, "kernel_constraint": s.CONSTRAINT,
            "depthwise_initializer": s.INITIALIZER, "pointwise_initializer": s.INITIALIZER,
            "depthwise_regularizer": s.REGULARIZER, "pointwise_regularizer": s.REGULARIZER,
            "depthwise_constraint": s.CONSTRAINT, "pointwise_constraint": s.CONSTRAINT},
    build=_build("SeparableConv1D", lambda cfg, ctx: nn.SeparableConv1D(
        ctx.feature("SeparableConv1D", 2), cfg["filters"], cfg["kernel_size"][0],
        depth_multiplier=cfg.get("depth_multiplier", 1), **_conv_args(cfg, ctx))),
    config=_separable_config,
    weights=lambda layer: [Weight("vars/0", ("depthwise_kernel",)), Weight("vars/1", ("pointwise_kernel",))]
    + ([Weight("vars/2", ("bias",))] if layer.bias is not None else []),
))

_POOL = {"pool_size": _WINDOW, "strides": _optional_window, "padding": s.one_of("valid", "same"),
         "data_format": _CHANNELS_LAST}


def _pool(kind):
    def make(cfg, ctx):
        ctx.feature(kind, 2)
        strides = cfg.get("strides")
        return getattr(nn, kind)(cfg.get("pool_size", (2,))[0], None if strides is None else strides[0],
                                 cfg.get("padding", "valid"))
    return _build(kind, make)


for _kind in ("MaxPooling1D", "AveragePooling1D"):
    register(Entry(
        _kind, getattr(nn, _kind), fields=_POOL, build=_pool(_kind),
        config=lambda layer, ctx: {"pool_size": layer.pool_size, "strides": layer.strides, "padding": layer.padding},
    ))

register(Entry(
    "UpSampling1D", nn.UpSampling1D,
    fields={"size": s.integer(1, 2**10)},
    build=lambda cfg, ctx: (ctx.feature("UpSampling1D", 2), nn.UpSampling1D(cfg.get("size", 2)))[1],
    config=lambda layer, ctx: {"size": layer.size},
))

register(Entry(
    "ZeroPadding1D", nn.ZeroPadding1D,
    fields={"padding": _pair(0, MAX_WINDOW), "data_format": _CHANNELS_LAST},
    build=lambda cfg, ctx: (ctx.feature("ZeroPadding1D", 2), nn.ZeroPadding1D(cfg.get("padding", (1, 1))))[1],
    config=lambda layer, ctx: {"padding": list(layer.padding)},
))

register(Entry(
    "Cropping1D", nn.Cropping1D,
    fields={"cropping": _pair(0, 2**31)},
    build=lambda cfg, ctx: (ctx.feature("Cropping1D", 2), nn.Cropping1D(cfg.get("cropping", (1, 1))))[1],
    config=lambda layer, ctx: {"cropping": list(layer.cropping)},
))

register(Entry(
    "GlobalMaxPooling1D", nn.GlobalMaxPooling1D,
    fields={"data_format": _CHANNELS_LAST, "keepdims": s.boolean},
    build=lambda cfg, ctx: (ctx.feature("GlobalMaxPooling1D", 2),
                            nn.GlobalMaxPooling1D(keepdims=cfg.get("keepdims", False)))[1],
    config=lambda layer, ctx: {"keepdims": layer.keepdims},
))
