"""Shape layers: ``RepeatVector``, ``Flatten``, ``Reshape``, ``Permute``.

None of them supports masking in Keras: the mask is dropped (Keras 3 warns "this layer does not support masking
and will therefore destroy the mask information"; tf_keras drops it silently; verified on Keras 3.15.1 and
tf_keras 2.21). jaxmask drops it too: the output has no mask.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxmask.nn._core import Layer


def _int_tuple(layer: str, name: str, value, lo: int) -> tuple:
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo for v in items):
        raise ValueError(f"{layer}: `{name}` must be a tuple of ints >= {lo}; received {value!r}.")
    return tuple(int(v) for v in items)


class _DropsMask(Layer):
    def compute_output_mask(self, x, mask):
        return None


class RepeatVector(_DropsMask):
    """Repeats a [B, F] input ``n`` times: y[b, i, :] = x[b, :], [B, n, F]. No output mask.

    Raises:
      ValueError: ``n`` < 1, or ``x`` not of rank 2.

    Keras equivalent: ``keras.layers.RepeatVector(n)``.
    """

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"RepeatVector: `n` must be an int >= 1; received {n!r}.")
        self.n = int(n)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"RepeatVector expects [B, F] inputs (rank 2); received shape {tuple(x.shape)}.")
        return jnp.broadcast_to(x[:, None, :], (x.shape[0], self.n, x.shape[1]))


class Flatten(_DropsMask):
    """Flattens every axis but the batch: [B, d1, ..., dk] -> [B, d1·...·dk]. No output mask.

    Args:
      data_format: "channels_last" (default) or "channels_first" (axis 1 is moved last first, as Keras does for
        inputs of rank >= 3).

    Keras equivalent: ``keras.layers.Flatten(data_format=None)``.
    """

    def __init__(self, data_format: str | None = None):
        if data_format not in (None, "channels_last", "channels_first"):
            raise ValueError(f"Flatten: `data_format` must be 'channels_last' or 'channels_first'; received "
                             f"{data_format!r}.")
        self.data_format = data_format or "channels_last"

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError("Flatten expects inputs with a batch axis; received a scalar.")
        if self.data_format == "channels_first" and x.ndim > 2:
            x = jnp.moveaxis(x, 1, -1)
        return x.reshape((x.shape[0], math.prod(x.shape[1:])))


class Reshape(_DropsMask):
    """Reshapes every sample to ``target_shape`` (one entry may be -1, inferred): [B, ...] -> [B, *target_shape].
    No output mask.

    Raises:
      ValueError: a bad ``target_shape``, or one that does not fit the input's size.

    Keras equivalent: ``keras.layers.Reshape(target_shape)``.
    """

    def __init__(self, target_shape):
        items = tuple(target_shape) if isinstance(target_shape, (list, tuple)) else (target_shape,)
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (v < 1 and v != -1) for v in items) \
                or sum(v == -1 for v in items) > 1:
            raise ValueError(f"Reshape: `target_shape` must be a tuple of positive ints with at most one -1; "
                             f"received {target_shape!r}.")
        self.target_shape = tuple(int(v) for v in items)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        size = math.prod(x.shape[1:])
        known = math.prod(v for v in self.target_shape if v != -1)
        if (-1 in self.target_shape and (known == 0 or size % known)) or (
                -1 not in self.target_shape and known != size):
            raise ValueError(f"Reshape(target_shape={self.target_shape}) cannot reshape samples of shape "
                             f"{tuple(x.shape[1:])} ({size} values).")
        return x.reshape((x.shape[0],) + self.target_shape)


class Permute(_DropsMask):
    """Permutes the axes after the batch: ``dims`` is a permutation of 1..k (1-based, as Keras), e.g. (2, 1)
    turns [B, T, F] into [B, F, T]. No output mask.

    Raises:
      ValueError: ``dims`` is not a permutation of 1..k, or does not match the input's rank.

    Keras equivalent: ``keras.layers.Permute(dims)``.
    """

    def __init__(self, dims):
        dims = _int_tuple("Permute", "dims", dims, 1)
        if sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"Permute: `dims` must be a permutation of 1..{len(dims)} (1 = the first axis after "
                             f"the batch); received {dims!r}.")
        self.dims = dims

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if x.ndim != len(self.dims) + 1:
            raise ValueError(f"Permute(dims={self.dims}) expects inputs of rank {len(self.dims) + 1}; received shape "
                             f"{tuple(x.shape)}.")
        return jnp.transpose(x, (0,) + self.dims)
