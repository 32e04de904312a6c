"""Regularisation layers: ``SpatialDropout1D``, ``GaussianNoise``, ``GaussianDropout``, ``ActivityRegularization``.

All pass the mask on unchanged (Keras 3 and tf_keras, verified). The noise layers act in training only
(``deterministic=False``, the default; ``model.eval()`` turns them into the identity) and, like Keras, on every
step, padded steps included: GaussianNoise makes zero padding non-zero, which is harmless downstream of a mask but
matters to layers that find padding by value (put ``Masking`` before the noise, not after).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmask.nn._core import Layer, dropout_keep_mask, rng_stream


def _rate(layer: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{layer}: `{name}` must be a number in [0, 1); received {value!r}.")
    return float(value)


class _Noise(Layer):
    def _key(self):
        if self.rngs is None:
            raise ValueError(f"{type(self).__name__} in training mode needs `rngs`: build it with "
                             f"{type(self).__name__}(..., rngs=nnx.Rngs(0)), or call model.eval() for inference.")
        return self.rngs()

    def _stream(self, rngs):
        self.deterministic = False
        self.rngs = rng_stream(rngs) if rngs is not None else nnx.data(None)


class SpatialDropout1D(_Noise):
    """Dropout of whole channels: in training each (sample, feature) channel is kept with probability 1 - rate
    for every step and scaled by 1/(1 - rate), y[b, :, f] = x[b, :, f] · k[b, f] / (1 - rate).

    Args:
      rate: fraction of channels to drop, in [0, 1).
      rngs: ``nnx.Rngs`` for the masks (its ``dropout`` stream, else ``default``); needed in training only.

    Raises:
      ValueError: ``rate`` out of range, ``x`` not [B, T, F], or training without ``rngs``.

    Keras equivalent: ``keras.layers.SpatialDropout1D(rate)`` (noise shape [B, 1, F]).
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs | None = None):
        self.rate = _rate("SpatialDropout1D", "rate", rate)
        self._stream(rngs)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"SpatialDropout1D expects [B, T, F] inputs; received shape {tuple(x.shape)}.")
        if self.deterministic or self.rate == 0.0:
            return x
        keep = dropout_keep_mask(self._key(), self.rate, (x.shape[0], 1, x.shape[2]))
        scaled = x / jnp.asarray(1.0 - self.rate, x.dtype)
        return jnp.where(jnp.broadcast_to(keep, x.shape), scaled, jnp.zeros((), x.dtype))


class GaussianNoise(_Noise):
    """Additive noise in training: y = x + ε, ε ~ N(0, stddev²) drawn per value (padded steps too).

    Args:
      stddev: the noise's standard deviation, >= 0.
      rngs: ``nnx.Rngs`` for the noise; needed in training only.

    Keras equivalent: ``keras.layers.GaussianNoise(stddev)``.
    """

    def __init__(self, stddev: float, *, rngs: nnx.Rngs | None = None):
        if isinstance(stddev, bool) or not isinstance(stddev, (int, float)) or not (
                math.isfinite(stddev) and stddev >= 0):
            raise ValueError(f"GaussianNoise: `stddev` must be a finite number >= 0; received {stddev!r}.")
        self.stddev = float(stddev)
        self._stream(rngs)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if self.deterministic or self.stddev == 0.0:
            return x
        return x + jnp.asarray(self.stddev, x.dtype) * jax.random.normal(self._key(), x.shape, x.dtype)


class GaussianDropout(_Noise):
    """Multiplicative noise in training: y = x · ε, ε ~ N(1, rate / (1 - rate)) drawn per value.

    Args:
      rate: the "drop probability" that sets the variance rate / (1 - rate), in [0, 1).
      rngs: ``nnx.Rngs`` for the noise; needed in training only.

    Keras equivalent: ``keras.layers.GaussianDropout(rate)``.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs | None = None):
        self.rate = _rate("GaussianDropout", "rate", rate)
        self._stream(rngs)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if self.deterministic or self.rate == 0.0:
            return x
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        noise = jnp.ones((), x.dtype) + jnp.asarray(stddev, x.dtype) * jax.random.normal(self._key(), x.shape, x.dtype)
        return x * noise


class ActivityRegularization(Layer):
    """The identity (in training and inference); passes the mask on.

    In Keras the layer also adds the activity loss (l1 · Σ|y| + l2 · Σy²) / B over every value of the batch,
    padded steps included, to the training loss. **jaxmask implements no activity losses**: ``jm.Trainer`` and
    ``jm.masked_loss`` never see it, so only ``l1 = l2 = 0`` is accepted (here and by ``jm.keras_io.load_model``,
    which refuses files with non-zero values rather than train differently from Keras).

    Raises:
      ValueError: ``l1`` or ``l2`` is not 0.

    Keras equivalent: ``keras.layers.ActivityRegularization(l1=0.0, l2=0.0)``.
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        for name, v in (("l1", l1), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != 0:
                raise ValueError(f"ActivityRegularization: `{name}` must be 0: jaxmask adds no activity losses to the "
                                 f"training loss (received {name}={v!r}); add the penalty to your loss yourself, "
                                 "e.g. loss + l2 * jnp.sum(y**2) / B.")
        self.l1 = 0.0
        self.l2 = 0.0

    def __call__(self, x, mask=None):
        return jnp.asarray(x)
