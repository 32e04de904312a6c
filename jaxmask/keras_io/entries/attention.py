"""Registry entries: MultiHeadAttention, Attention, AdditiveAttention.

Keras 3 records ``mha(q, v)`` with positional arguments and ``mha(query=q, value=v, key=k)`` with keyword ones;
tf_keras records ``mha(q, value=v)`` as ``[q]`` plus ``{"value": v}``. ``adapt_call`` turns every form into jaxmask's
positional ``(query, value[, key])``, so the graph fills ``value_mask`` / ``key_mask`` from those tensors' masks as
Keras does. Which library wrote the file picks the layer's ``semantics`` (the rule for attention rows with no
allowed key, see ``jaxmask.nn._attention``). Described for the other library (``parity.to_keras``), a layer keeps
its numbers except in such rows: a tf_keras layer is written with ``softmax_robust_masking=True`` when its
semantics is "keras3" (uniform rows, Keras 3's rule without dropout or returned scores).
"""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, Weight, register

MAX_HEADS, MAX_HEAD_DIM = 1024, 4096
_DIM = s.integer(1, MAX_HEAD_DIM)
_OUTPUT = s.int_tuple(1, s.MAX_UNITS)


def _optional(check):
    return lambda v, where: None if v is None else check(v, where)


def _attention_axes(v, where):
    if v is None or (isinstance(v, list) and len(v) == 1 and v[0] in (1, -2) and not isinstance(v[0], bool)) or (
            v in (1, -2) and not isinstance(v, bool)):
        return None
    s.refuse(f"{where} must be null or the time axis ([1] or [-2]) of [batch, time, features] inputs; received "
             f"{v!r:.80}: attention over other axes is not supported by jaxmask.")


_MHA_FIELDS = {
    "num_heads": s.integer(1, MAX_HEADS), "key_dim": _DIM, "value_dim": _optional(_DIM), "dropout": s.rate,
    "use_bias": s.boolean, "output_shape": _optional(_OUTPUT), "attention_axes": _attention_axes,
    "use_gate": s.one_of(False), "sliding_window": s.NONE, "flash_attention": s.one_of(None, False),
    "kernel_initializer": s.INITIALIZER, "bias_initializer": s.INITIALIZER, "kernel_regularizer": s.REGULARIZER,
    "bias_regularizer": s.REGULARIZER, "activity_regularizer": s.REGULARIZER, "kernel_constraint": s.CONSTRAINT,
    "bias_constraint": s.CONSTRAINT, "seed": s.scalar,
    # tf_keras only
    "query_shape": _optional(s.shape), "key_shape": _optional(s.shape), "value_shape": _optional(s.shape),
    "softmax_robust_masking": s.boolean,
}
_TENSORS = ("query", "value", "key")
_FLAGS = ("return_attention_scores", "use_causal_mask")


def _mha_call(args, kwargs):
    """Every recorded form of the call as positional ``(query, value[, key])`` plus the other keywords."""
    args, kwargs = list(args), dict(kwargs)
    for i, name in enumerate(_TENSORS):
        if name in kwargs:
            v = kwargs.pop(name)
            if v is None:
                continue
            if len(args) != i:
                s.refuse(f"MultiHeadAttention call: `{name}` is given both by position and by keyword, or after a "
                         "missing earlier argument.")
            args.append(v)
    for flag in _FLAGS:
        if flag in kwargs:
            kwargs[flag] = s.boolean(kwargs[flag], f"MultiHeadAttention call argument {flag!r}")
    if not 2 <= len(args) <= 3:
        s.refuse(f"MultiHeadAttention call needs `query` and `value` (and optionally `key`); received {len(args)} "
                 "tensor arguments.")
    return tuple(args), kwargs


def _features(ctx, cfg, i, name, default):
    shapes = ctx.arg_shapes
    shape = shapes[i] if len(shapes) > i else None
    if shape is None:
        shape = cfg.get(f"{name}_shape")
        shape = None if shape is None else shape[1:]
    if shape is None:
        return default
    if len(shape) != 2:
        s.refuse(f"{ctx.where}: MultiHeadAttention's `{name}` has shape [batch, {', '.join(map(str, shape))}]; only "
                 "[batch, time, features] inputs are supported.")
    if shape[-1] is None:
        s.refuse(f"{ctx.where}: MultiHeadAttention's `{name}` has an unknown feature size.")
    return shape[-1]


def _build_mha(cfg, ctx):
    fq = ctx.feature("MultiHeadAttention", 2)
    fv = _features(ctx, cfg, 1, "value", fq)
    fk = _features(ctx, cfg, 2, "key", fv)
    output = cfg.get("output_shape")
    tf_keras = ctx.flavor == "tf_keras"
    return nn.MultiHeadAttention(
        fq, cfg["num_heads"], cfg["key_dim"], cfg.get("value_dim"), dropout=cfg.get("dropout", 0.0),
        use_bias=cfg.get("use_bias", True), output_shape=None if output is None else output[0],
        value_features=fv, key_features=fk, semantics="tf_keras" if tf_keras else "keras3",
        softmax_robust_masking=cfg.get("softmax_robust_masking", False) if tf_keras else False, rngs=ctx.rngs)


def _mha_config(layer, ctx):
    cfg = {"num_heads": layer.num_heads, "key_dim": layer.key_dim, "value_dim": layer.value_dim,
           "dropout": layer.dropout, "use_bias": layer.use_bias,
           "output_shape": None if layer.output_features == layer.query_features else layer.output_features,
           "attention_axes": None}
    if ctx.flavor == "tf_keras":  # tf_keras' from_config needs the three shapes (it builds from them)
        cfg["softmax_robust_masking"] = layer.softmax_robust_masking or layer.semantics == "keras3"
        cfg.update({f"{name}_shape": [None, None, f] for name, f in (
            ("query", layer.query_features), ("value", layer.value_features), ("key", layer.key_features))})
    return cfg


def _mha_weights(layer):
    out = []
    for attr, group in (("query", "query_dense"), ("key", "key_dense"), ("value", "value_dense"),
                        ("attention_output", "output_dense")):
        out.append(Weight(f"{group}/vars/0", (attr, "kernel")))
        if layer.use_bias:
            out.append(Weight(f"{group}/vars/1", (attr, "bias")))
    return out


register(Entry(
    "MultiHeadAttention", nn.MultiHeadAttention,
    fields=_MHA_FIELDS,
    build=_build_mha,
    config=_mha_config,
    weights=_mha_weights,
    call_kwargs={"attention_mask": None, "value_mask": None, "key_mask": None, "return_attention_scores": s.boolean,
                 "use_causal_mask": s.boolean},
    adapt_call=_mha_call,
))


def _dense_attention_call(kind):
    def adapt(args, kwargs):
        kwargs = dict(kwargs)
        for flag in _FLAGS:
            if flag in kwargs:
                kwargs[flag] = s.boolean(kwargs[flag], f"{kind} call argument {flag!r}")
        return args, kwargs
    return adapt


def _query_features(ctx, kind):
    shape = ctx.input_shape
    if not isinstance(shape, list) or not 2 <= len(shape) <= 3 or any(
            not isinstance(x, tuple) or len(x) != 2 for x in shape):
        s.refuse(f"{ctx.where}: {kind} is called on a list [query, value] or [query, value, key] of [batch, time, "
                 f"features] tensors; received input shapes {shape}.")
    if shape[0][-1] is None:
        s.refuse(f"{ctx.where}: {kind}'s query has an unknown feature size.")
    return shape[0][-1]


_DENSE_FIELDS = {"use_scale": s.boolean, "dropout": s.rate, "seed": s.scalar, "causal": s.one_of(False)}

register(Entry(
    "Attention", nn.Attention,
    fields=_DENSE_FIELDS | {"score_mode": s.one_of("dot", "concat")},
    build=lambda cfg, ctx: (_query_features(ctx, "Attention"),
                            nn.Attention(cfg.get("use_scale", False), cfg.get("score_mode", "dot"),
                                         cfg.get("dropout", 0.0), rngs=ctx.rngs))[1],
    config=lambda layer, ctx: {"use_scale": layer.use_scale, "score_mode": layer.score_mode, "dropout": layer.dropout},
    weights=lambda layer: [Weight(f"vars/{i}", (name,)) for i, name in enumerate(
        n for n in ("scale", "concat_score_weight") if getattr(layer, n) is not None)],
    call_kwargs={"return_attention_scores": s.boolean, "use_causal_mask": s.boolean},
    adapt_call=_dense_attention_call("Attention"),
))

register(Entry(
    "AdditiveAttention", nn.AdditiveAttention,
    fields=_DENSE_FIELDS,
    build=lambda cfg, ctx: nn.AdditiveAttention(_query_features(ctx, "AdditiveAttention"), cfg.get("use_scale", True),
                                                cfg.get("dropout", 0.0), rngs=ctx.rngs),
    config=lambda layer, ctx: {"use_scale": layer.use_scale, "dropout": layer.dropout},
    weights=lambda layer: [Weight("vars/0", ("scale",))] if layer.scale is not None else [],
    call_kwargs={"return_attention_scores": s.boolean, "use_causal_mask": s.boolean},
    adapt_call=_dense_attention_call("AdditiveAttention"),
))
