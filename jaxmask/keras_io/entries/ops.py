"""Registry entries for the operations Keras 3 writes into functional graphs (``keras.src.ops.numpy`` and
``keras.src.ops.core``): the mask computations (``NotEqual``, ``Any``, ``LogicalOr`` ...) and ``ConvertToTensor``.
They are graph nodes, not layers: no weights, not in ``model.layers``."""

from __future__ import annotations

from jaxmask import nn
from jaxmask.keras_io import _schema as s
from jaxmask.keras_io._registry import Entry, register

_REDUCE = {"axis": s.one_of(-1, None), "keepdims": s.boolean}
_NUMPY = {"NotEqual": ("not_equal", {}), "Equal": ("equal", {}), "LogicalOr": ("logical_or", {}),
          "LogicalAnd": ("logical_and", {}), "LogicalNot": ("logical_not", {}), "Any": ("any", _REDUCE),
          "All": ("all", _REDUCE)}


def _build(op):
    def build(cfg, ctx):
        options = {k: cfg[k] for k in ("axis", "keepdims") if k in cfg}
        return nn.Op(op, **options)
    return build


for _cls, (_op, _fields) in _NUMPY.items():
    register(Entry(_cls, nn.Op, fields=_fields, build=_build(_op), config=lambda layer, ctx: dict(layer.options),
                   module="keras.src.ops.numpy"))

register(Entry(
    "ConvertToTensor", nn.Op,
    fields={"dtype": s.input_dtype, "sparse": s.one_of(None, False), "ragged": s.one_of(None, False)},
    build=lambda cfg, ctx: nn.Op("identity", dtype=cfg.get("dtype")),
    config=lambda layer, ctx: {"dtype": layer.dtype},
    module="keras.src.ops.core",
))
