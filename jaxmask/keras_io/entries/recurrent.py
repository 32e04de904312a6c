"""Registry entries: LSTM, GRU, SimpleRNN and Bidirectional."""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, Weight, nested, register, weights_of

_RNN_FIELDS = {
    "units": s.UNITS, "activation": s.activation, "use_bias": s.boolean, "kernel_initializer": s.INITIALIZER,
    "recurrent_initializer": s.INITIALIZER, "bias_initializer": s.INITIALIZER, "kernel_regularizer": s.REGULARIZER,
    "recurrent_regularizer": s.REGULARIZER, "bias_regularizer": s.REGULARIZER, "activity_regularizer": s.REGULARIZER,
    "kernel_constraint": s.CONSTRAINT, "recurrent_constraint": s.CONSTRAINT, "bias_constraint": s.CONSTRAINT,
    "dropout": s.rate, "recurrent_dropout": s.rate, "return_sequences": s.boolean, "return_state": s.boolean,
    "go_backwards": s.boolean, "stateful": s.boolean, "unroll": s.boolean, "time_major": s.one_of(False),
    "implementation": s.scalar, "zero_output_for_mask": s.boolean, "seed": s.scalar, "use_cudnn": s.scalar,
}
_EXTRA = {
    "LSTM": {"recurrent_activation": s.activation, "unit_forget_bias": s.boolean},
    "GRU": {"recurrent_activation": s.activation, "reset_after": s.boolean},
    "SimpleRNN": {},
}
_FLAGS = ("return_sequences", "return_state", "go_backwards", "zero_output_for_mask", "stateful")


def _rnn_call(args, kwargs):
    """tf_keras records ``rnn(x, initial_state=[h, c])`` as ``rnn([x, h, c])``."""
    if args and isinstance(args[0], list):
        return (args[0][0],) + tuple(args[1:]), {**kwargs, "initial_state": list(args[0][1:]) or None}
    return args, kwargs


def _build_rnn(kind):
    def build(cfg, ctx):
        extra = {}
        if kind != "SimpleRNN":
            extra["recurrent_activation"] = ctx.activation(cfg.get("recurrent_activation", "sigmoid"))
        if kind == "LSTM":
            extra["unit_forget_bias"] = cfg.get("unit_forget_bias", True)
        if kind == "GRU":
            extra["reset_after"] = cfg.get("reset_after", True)
        stateful = cfg.get("stateful", False)
        if stateful and ctx.batch_size is None:
            s.refuse(f"{ctx.where}: a stateful {kind} needs a fixed batch size (Input(batch_shape=...)).")
        return getattr(nn, kind)(
            ctx.feature(kind, 2), cfg["units"], activation=ctx.activation(cfg.get("activation", "tanh")),
            use_bias=cfg.get("use_bias", True), dropout=cfg.get("dropout", 0.0),
            recurrent_dropout=cfg.get("recurrent_dropout", 0.0),
            initial_output="initial_state" if ctx.backend == "jax" else "zeros",
            batch_size=ctx.batch_size if stateful else None,
            rngs=ctx.rngs, **{k: cfg.get(k, False) for k in _FLAGS}, **extra)
    return build


def _rnn_config(layer, ctx):
    cfg = {"units": layer.units, "activation": ctx.keras_activation(layer.activation), "use_bias": layer.use_bias,
           "dropout": layer.dropout, "recurrent_dropout": layer.recurrent_dropout}
    cfg.update({k: getattr(layer, k) for k in _FLAGS})
    if hasattr(layer, "recurrent_activation"):
        cfg["recurrent_activation"] = ctx.keras_activation(layer.recurrent_activation)
    for k in ("unit_forget_bias", "reset_after"):
        if hasattr(layer, k):
            cfg[k] = getattr(layer, k)
    return cfg


def _rnn_weights(layer):
    out = [Weight("cell/vars/0", ("kernel",)), Weight("cell/vars/1", ("recurrent_kernel",))]
    return out + ([Weight("cell/vars/2", ("bias",))] if layer.bias is not None else [])


for _kind in ("LSTM", "GRU", "SimpleRNN"):
    register(Entry(_kind, getattr(nn, _kind), fields=_RNN_FIELDS | _EXTRA[_kind], build=_build_rnn(_kind),
                   config=_rnn_config, weights=_rnn_weights, call_kwargs={"initial_state": None},
                   adapt_call=_rnn_call))


def _build_bidirectional(cfg, ctx):
    layers = []
    for key in ("layer", "backward_layer"):
        sub = cfg.get(key)
        if sub is None and key == "backward_layer":  # Keras builds the twin from the config, direction flipped
            fw = cfg["layer"]
            fw_cfg = fw.get("config") if isinstance(fw, dict) else None
            if not isinstance(fw_cfg, dict):
                s.refuse(f"{ctx.where}.config.layer must be a serialised layer.")
            sub = {**fw, "config": {**fw_cfg, "go_backwards": not fw_cfg.get("go_backwards", False)}}
        inner = ctx.build_layer(sub, ctx.input_shape, f"{ctx.where}.config.{key}")
        if not isinstance(inner, (nn.LSTM, nn.GRU, nn.SimpleRNN)):
            s.refuse(f"{ctx.where}.config.{key}: Bidirectional wraps LSTM, GRU or SimpleRNN; received "
                     f"{type(inner).__name__}.")
        layers.append(inner)
    merge = cfg.get("merge_mode", "concat")
    try:
        return nn.Bidirectional(layers[0], merge_mode=merge, backward_layer=layers[1])
    except (TypeError, ValueError) as e:
        s.refuse(f"{ctx.where}: {e}")


register(Entry(
    "Bidirectional", nn.Bidirectional,
    fields={"layer": None, "backward_layer": None, "merge_mode": s.one_of("concat", "sum", "mul", "ave", None)},
    build=_build_bidirectional,
    config=lambda layer, ctx: {"layer": ctx.describe_layer(layer.forward_layer),
                               "backward_layer": ctx.describe_layer(layer.backward_layer),
                               "merge_mode": layer.merge_mode},
    weights=lambda layer: (nested("forward_layer", "forward_layer", weights_of(layer.forward_layer))
                           + nested("backward_layer", "backward_layer", weights_of(layer.backward_layer))),
    call_kwargs={"initial_state": None},
    adapt_call=_rnn_call,
))
