"""Registry entries: Masking, Embedding, Dense, Dropout, Activation, GlobalAveragePooling1D, TimeDistributed."""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, Weight, nested, register, weights_of

_LORA = {"lora_rank": s.one_of(None, 0), "lora_alpha": s.scalar, "quantization_config": s.NONE}

register(Entry(
    "Masking", nn.Masking,
    fields={"mask_value": s.number},
    build=lambda cfg, ctx: (ctx.feature("Masking"), nn.Masking(cfg.get("mask_value", 0.0)))[1],
    config=lambda layer, ctx: {"mask_value": float(layer.mask_value)},
))

register(Entry(
    "Embedding", nn.Embedding,
    fields={"input_dim": s.UNITS, "output_dim": s.UNITS, "mask_zero": s.boolean, "input_length": s.scalar,
            "embeddings_initializer": s.INITIALIZER, "embeddings_regularizer": s.REGULARIZER,
            "activity_regularizer": s.REGULARIZER, "embeddings_constraint": s.CONSTRAINT, "sparse": s.one_of(False),
            **_LORA},
    build=lambda cfg, ctx: nn.Embedding(cfg["input_dim"], cfg["output_dim"], mask_zero=cfg.get("mask_zero", False),
                                        rngs=ctx.rngs),
    config=lambda layer, ctx: {"input_dim": layer.input_dim, "output_dim": layer.output_dim,
                               "mask_zero": layer.mask_zero},
    weights=lambda layer: [Weight("vars/0", ("embeddings",))],
))

register(Entry(
    "Dense", nn.Dense,
    fields={"units": s.UNITS, "activation": s.activation, "use_bias": s.boolean, "kernel_initializer": s.INITIALIZER,
            "bias_initializer": s.INITIALIZER, "kernel_regularizer": s.REGULARIZER, "bias_regularizer": s.REGULARIZER,
            "activity_regularizer": s.REGULARIZER, "kernel_constraint": s.CONSTRAINT, "bias_constraint": s.CONSTRAINT,
            **_LORA},
    build=lambda cfg, ctx: nn.Dense(ctx.feature("Dense"), cfg["units"],
                                    activation=ctx.activation(cfg.get("activation", "linear")),
                                    use_bias=cfg.get("use_bias", True), rngs=ctx.rngs),
    config=lambda layer, ctx: {"units": layer.units, "activation": ctx.keras_activation(layer.activation),
                               "use_bias": layer.bias is not None},
    weights=lambda layer: [Weight("vars/0", ("kernel",))] + ([Weight("vars/1", ("bias",))] if layer.bias is not None
                                                              else []),
))

register(Entry(
    "Dropout", nn.Dropout,
    fields={"rate": s.rate, "noise_shape": s.NONE, "seed": s.scalar},
    build=lambda cfg, ctx: nn.Dropout(cfg["rate"], rngs=ctx.rngs),
    config=lambda layer, ctx: {"rate": layer.rate},
))

register(Entry(
    "Activation", nn.Activation,
    fields={"activation": s.activation},
    build=lambda cfg, ctx: nn.Activation(ctx.activation(cfg["activation"])),
    config=lambda layer, ctx: {"activation": ctx.keras_activation(layer.activation)},
))

register(Entry(
    "GlobalAveragePooling1D", nn.GlobalAveragePooling1D,
    fields={"data_format": s.one_of("channels_last"), "keepdims": s.boolean},
    build=lambda cfg, ctx: (ctx.feature("GlobalAveragePooling1D", 2),
                            nn.GlobalAveragePooling1D(keepdims=cfg.get("keepdims", False)))[1],
    config=lambda layer, ctx: {"keepdims": layer.keepdims},
))


def _time_distributed(cfg, ctx):
    shape = ctx.input_shape
    if not isinstance(shape, tuple) or len(shape) < 2:
        s.refuse(f"{ctx.where}: TimeDistributed needs inputs [batch, time, ...]; received shape {shape}.")
    return nn.TimeDistributed(ctx.build_layer(cfg["layer"], shape[1:], f"{ctx.where}.config.layer"))


register(Entry(
    "TimeDistributed", nn.TimeDistributed,
    fields={"layer": None},
    build=_time_distributed,
    config=lambda layer, ctx: {"layer": ctx.describe_layer(layer.layer)},
    weights=lambda layer: nested("layer", "layer", weights_of(layer.layer)),
))
