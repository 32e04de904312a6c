"""``Op``: the element-wise operations Keras 3 writes into functional graphs (mostly to compute masks)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxmask.nn._core import Layer

OPS = {
    "not_equal": jnp.not_equal, "equal": jnp.equal, "logical_or": jnp.logical_or, "logical_and": jnp.logical_and,
    "logical_not": jnp.logical_not, "any": jnp.any, "all": jnp.all, "identity": lambda x: x,
    "expand_dims": jnp.expand_dims, "zeros_like": jnp.zeros_like, "ones_like": jnp.ones_like,
    "concatenate": jnp.concatenate,
}


class Op(Layer):
    """A pure operation node of a functional graph: ``Op("not_equal")(x, 0)``; passes no mask on.

    Args:
      op: one of ``OPS`` (``"not_equal"``, ``"equal"``, ``"logical_or"``, ``"logical_and"``, ``"logical_not"``,
        ``"any"``, ``"all"``, ``"identity"``, ``"expand_dims"``, ``"zeros_like"``, ``"ones_like"``,
        ``"concatenate"``; the last takes a list of arrays).
      dtype: cast the result to this dtype (Keras' ``ConvertToTensor(dtype=...)``), or None.
      **options: keyword arguments of the operation (``axis``, ``keepdims`` for ``any``/``all``).

    Keras equivalent: ``keras.ops.not_equal`` and friends as graph nodes (``keras.src.ops.numpy.NotEqual``).
    """

    def __init__(self, op: str, *, dtype=None, **options):
        if op not in OPS:
            raise ValueError(f"`op` must be one of {sorted(OPS)}; received {op!r}.")
        self.op = op
        self.dtype = dtype
        self.options = tuple(sorted(options.items()))

    def __call__(self, *args, mask=None):
        args = [[jnp.asarray(v) for v in a] if isinstance(a, (list, tuple)) else jnp.asarray(a) for a in args]
        y = OPS[self.op](*args, **dict(self.options))
        return y.astype(self.dtype) if self.dtype is not None else y

    def compute_output_mask(self, x, mask=None):
        return None
