"""Normalisation layers with Keras' weights and mask semantics: LayerNormalization, BatchNormalization (masked
batch moments, moving statistics as ``nnx.BatchStat``) and UnitNormalization.

What a mask does to each (verified on Keras 3.15.1, TF and JAX backends, and tf_keras 2.21):

- ``LayerNormalization`` and ``UnitNormalization`` normalise every step on its own, padded steps included; the
  mask only passes through.
- ``BatchNormalization`` in training computes the batch mean and variance over the valid steps only (Keras 3
  ``BatchNormalization._moments``; tf_keras ``tf.nn.weighted_moments`` with the mask as frequency weights, its
  non-fused path, which is the one rank-3 inputs take), updates the moving statistics with them, and normalises
  every step with them; in inference it uses the moving statistics. The mask passes through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmask._checks import check_mask
from jaxmask.nn._core import Layer


def _axes(axis, ndim: int, layer: str) -> tuple:
    """``axis`` (int or sequence) as sorted non-negative axes of an ``ndim``-array; the batch axis is refused."""
    items = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(f"{layer}: `axis` {axis!r} is out of range for an input of rank {ndim}.")
        out.append(a % ndim)
    if 0 in out:
        raise ValueError(f"{layer}: `axis` {axis!r} includes the batch axis 0; normalise over feature (or time) axes.")
    if len(set(out)) != len(out):
        raise ValueError(f"{layer}: `axis` {axis!r} repeats an axis.")
    return tuple(sorted(out))


def _float(x, layer: str):
    if not hasattr(x, "shape"):
        raise TypeError(f"{layer}: `x` must be an array; received {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer}: `x` must hold floating-point values; received dtype {x.dtype}.")
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _along(v, axes: tuple, ndim: int):
    """A weight of shape ``[x.shape[a] for a in axes]`` reshaped to broadcast against an ``ndim``-array."""
    shape = [1] * ndim
    for a, d in zip(axes, v.shape):
        shape[a] = d
    return v.reshape(shape)


def _normalize(x, mean, variance, gamma, beta, epsilon: float):
    """``tf.nn.batch_normalization``'s form: ``x · inv + (β − μ · inv)`` with ``inv = γ / sqrt(σ² + ε)``."""
    inv = jax.lax.rsqrt(variance + jnp.asarray(epsilon, x.dtype))
    if gamma is not None:
        inv = inv * gamma
    offset = -mean * inv
    if beta is not None:
        offset = offset + beta
    return x * inv + offset


def masked_moments(x, mask, axes: tuple):
    """Mean and (population) variance of ``x`` over ``axes``, counting only positions where ``mask`` is True.

    .. math:: \\mu = \\frac{\\sum m x}{\\sum m}, \\qquad \\sigma^2 = \\frac{\\sum m (x - \\mu)^2}{\\sum m}

    and ``(0, 0)`` where ``Σ m = 0`` (Keras 3 divides by ``Σ m + 1e-7``, tf_keras uses ``div_no_nan``: both give
    0 there and agree to float32 rounding elsewhere).

    Args:
      x: [..., F] float array.
      mask: None, or bool of shape ``x.shape[:-1]`` (True = valid), broadcast along the last axis.
      axes: the reduction axes (keepdims).

    Returns:
      ``(mean, variance)`` with ``x``'s rank (size 1 along ``axes``).
    """
    if mask is None:
        mean = jnp.mean(x, axis=axes, keepdims=True)
        return mean, jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    m = jnp.broadcast_to(mask[..., None], x.shape)
    zero = jnp.zeros((), x.dtype)
    count = jnp.sum(m, axis=axes, keepdims=True).astype(x.dtype)
    safe = jnp.where(count > 0, count, jnp.ones((), x.dtype))
    mean = jnp.where(count > 0, jnp.sum(jnp.where(m, x, zero), axis=axes, keepdims=True) / safe, zero)
    sq = jnp.square(jnp.where(m, x - mean, zero))
    variance = jnp.where(count > 0, jnp.sum(sq, axis=axes, keepdims=True) / safe, zero)
    return mean, variance


class LayerNormalization(Layer):
    """Normalises each sample over ``axis`` (the features by default), then scales and shifts.

    .. math:: y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} \\gamma + \\beta, \\qquad
              \\mu, \\sigma^2 = \\text{mean}, \\text{var of } x \\text{ over } axis

    With ``rms_scaling=True`` (Keras 3 only, deprecated there) ``y = x / sqrt(σ² + ε) · γ`` (Keras divides by the
    variance, not the root mean square; reproduced) and there is no ``beta``.

    Every step is normalised on its own, padded steps included (a zero step gives ``β``); the mask passes through
    unchanged, as in Keras 3 and tf_keras.

    Args:
      in_features: the size of ``axis`` (an int), or a tuple of sizes when ``axis`` names several axes.
      axis: int or tuple of ints, the axes to normalise over (not the batch axis 0).
      epsilon: added to the variance.
      center: learn ``beta`` (zeros at first).
      scale: learn ``gamma`` (ones at first).
      rms_scaling: see above.
      rngs: accepted for a uniform constructor; the initial weights are constants.

    Call: ``layer(x, mask=None)`` with ``x`` [B, ..., F] float; returns the same shape.

    Raises:
      ValueError: ``x``'s sizes along ``axis`` differ from ``in_features``, or ``axis`` is out of range.
      TypeError: ``x`` is not a float array.

    Keras equivalent: ``keras.layers.LayerNormalization(axis=-1, epsilon=1e-3, center=True, scale=True)``
    (weights ``gamma``, ``beta``).
    """

    def __init__(self, in_features, axis=-1, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 rms_scaling: bool = False, *, rngs: nnx.Rngs | None = None):
        shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        n_axes = 1 if isinstance(axis, int) else len(tuple(axis))
        if len(shape) != n_axes or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"LayerNormalization: `in_features` must give one positive size per axis of `axis`="
                             f"{axis!r}; received {in_features!r}.")
        self.axis = axis if isinstance(axis, int) else tuple(axis)
        self.feature_shape = shape
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.rms_scaling = bool(rms_scaling)
        ones = jnp.ones(shape, jnp.float32)
        self.gamma = nnx.Param(ones) if self.scale or self.rms_scaling else nnx.data(None)
        self.beta = nnx.Param(jnp.zeros(shape, jnp.float32)) if self.center and not self.rms_scaling else nnx.data(None)

    def __call__(self, x, mask=None):
        x = _float(x, "LayerNormalization")
        axes = _axes(self.axis, x.ndim, "LayerNormalization")
        got = tuple(x.shape[a] for a in axes)
        if got != self.feature_shape:
            raise ValueError(f"LayerNormalization(in_features={self.feature_shape}, axis={self.axis!r}) received "
                             f"x.shape={tuple(x.shape)} (sizes {got} along the axes); build it with "
                             f"in_features={got}.")
        gamma = None if self.gamma is None else _along(self.gamma[...], axes, x.ndim)
        beta = None if self.beta is None else _along(self.beta[...], axes, x.ndim)
        mean = jnp.mean(x, axis=axes, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        if self.rms_scaling:
            y = x * jax.lax.rsqrt(variance + jnp.asarray(self.epsilon, x.dtype))
            return y * gamma
        return _normalize(x, mean, variance, gamma, beta, self.epsilon)


class BatchNormalization(Layer):
    """Batch normalisation with Keras' masked batch moments and moving statistics.

    Training (``deterministic=False``, the default; ``model.train()``):

    .. math:: \\mu = \\frac{\\sum m x}{\\sum m}, \\quad \\sigma^2 = \\frac{\\sum m (x - \\mu)^2}{\\sum m}
              \\text{ over every axis but } axis, \\qquad y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}\\gamma + \\beta

    with ``m`` the mask (all ones without one): padded steps do not enter the statistics but are normalised with
    them. Then ``moving_mean ← moving_mean · momentum + μ · (1 − momentum)`` and the same for ``moving_variance``
    with ``σ²`` (``nnx.BatchStat`` variables, updated in place; inside ``jit`` they travel in the model's non-Param
    state, which ``jm.Trainer`` carries from step to step). A batch whose every step is masked has ``μ = σ² = 0``:
    its outputs are ``x / sqrt(ε) · γ + β`` (finite) and the moving statistics decay towards 0 by one momentum
    step, exactly as in Keras 3 and tf_keras.

    Inference (``deterministic=True``, ``model.eval()``; also always when ``trainable=False``, as Keras does):
    ``μ, σ²`` are the moving statistics and nothing is updated. The mask passes through unchanged.

    Args:
      in_features: the size of ``axis``.
      axis: the feature axis (int; not the batch axis).
      momentum: of the moving averages.
      epsilon: added to the variance.
      center: learn ``beta`` (zeros at first).
      scale: learn ``gamma`` (ones at first).
      trainable: Keras' ``trainable``; False runs in inference mode even in training (the optimizer still
        sees ``gamma``/``beta`` as parameters: freeze them with ``optax.masked`` if you need Keras' freezing).
      rngs: accepted for a uniform constructor; the initial weights are constants.

    Call: ``layer(x, mask=None)`` with ``x`` [B, ..., F] float and ``mask`` bool ``x.shape[:-1]`` ([B, T] for
    sequences) or None.

    Raises:
      ValueError: ``x.shape[axis] != in_features``, a mask of the wrong shape, ``axis`` out of range.
      TypeError: ``x`` is not a float array.

    Keras equivalent: ``keras.layers.BatchNormalization(axis=-1, momentum=0.99, epsilon=1e-3, center=True,
    scale=True)`` (weights ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``).
    """

    def __init__(self, in_features: int, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, *, trainable: bool = True, rngs: nnx.Rngs | None = None):
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"BatchNormalization: `in_features` must be a positive int; received {in_features!r}.")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"BatchNormalization: `axis` must be an int; received {axis!r}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNormalization: `momentum` must be in [0, 1]; received {momentum!r}.")
        self.in_features = in_features
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.trainable = bool(trainable)
        self.deterministic = False
        shape = (in_features,)
        self.gamma = nnx.Param(jnp.ones(shape, jnp.float32)) if self.scale else nnx.data(None)
        self.beta = nnx.Param(jnp.zeros(shape, jnp.float32)) if self.center else nnx.data(None)
        self.moving_mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.moving_variance = nnx.BatchStat(jnp.ones(shape, jnp.float32))

    def __call__(self, x, mask=None):
        x = _float(x, "BatchNormalization")
        (axis,) = _axes(self.axis, x.ndim, "BatchNormalization")
        if x.shape[axis] != self.in_features:
            raise ValueError(f"BatchNormalization(in_features={self.in_features}, axis={self.axis}) received "
                             f"x.shape={tuple(x.shape)}; axis {self.axis} must have size {self.in_features}.")
        along = lambda v: _along(v, (axis,), x.ndim)  # noqa: E731
        gamma = None if self.gamma is None else along(self.gamma[...])
        beta = None if self.beta is None else along(self.beta[...])
        if self.deterministic or not self.trainable:
            return _normalize(x, along(self.moving_mean[...]), along(self.moving_variance[...]), gamma, beta,
                              self.epsilon)
        if mask is not None:
            mask = check_mask(mask, x.shape[:-1], "mask")
        axes = tuple(a for a in range(x.ndim) if a != axis)
        mean, variance = masked_moments(x, mask, axes)
        m, rest = self.momentum, 1.0 - self.momentum  # Keras 3: moving · momentum + batch · (1 - momentum)
        self.moving_mean[...] = self.moving_mean[...] * m + jax.lax.stop_gradient(mean).reshape(-1) * rest
        self.moving_variance[...] = self.moving_variance[...] * m + jax.lax.stop_gradient(variance).reshape(-1) * rest
        return _normalize(x, mean, variance, gamma, beta, self.epsilon)


class UnitNormalization(Layer):
    """Scales each sample to unit L2 norm over ``axis``; every step on its own, the mask passes through.

    .. math:: y = x \\cdot \\min(1 / \\lVert x \\rVert_2, 10^{12}) \\quad (\\text{semantics="keras3"}), \\qquad
              y = x / \\sqrt{\\max(\\lVert x \\rVert_2^2, 10^{-12})} \\quad (\\text{semantics="tf_keras"})

    The two references differ only for norms below 1e-6 (Keras 3 clamps the norm at 1e-12, tf_keras the squared
    norm: a step of norm 1e-7 gives norm 1 in Keras 3 and 0.1 in tf_keras); an all-zero step (padding) gives 0
    in both; its gradient is the clamp (1e12 per unit of upstream gradient in Keras 3 on TensorFlow, 1e6 in
    tf_keras), which a masked loss multiplies by 0. Keras 3 on the JAX backend gives NaN there (0 · ∞ through
    ``rsqrt(0)``); jaxmask gives the TensorFlow backend's finite value (deviation
    keras-jax-unitnorm-zero-step-nan-grad).

    Args:
      axis: int or tuple of ints (not the batch axis 0).
      semantics: ``"keras3"`` or ``"tf_keras"``: which reference's clamp (set by the loader from the file).

    Call: ``layer(x, mask=None)`` with ``x`` float [B, ...]; returns the same shape.

    Keras equivalent: ``keras.layers.UnitNormalization(axis=-1)``.
    """

    def __init__(self, axis=-1, *, semantics: str = "keras3"):
        if semantics not in ("keras3", "tf_keras"):
            raise ValueError(f"UnitNormalization: `semantics` must be 'keras3' or 'tf_keras'; received {semantics!r}.")
        self.axis = axis if isinstance(axis, int) else tuple(axis)
        self.semantics = semantics

    def __call__(self, x, mask=None):
        x = _float(x, "UnitNormalization")
        axes = _axes(self.axis, x.ndim, "UnitNormalization")
        square_sum = jnp.sum(jnp.square(x), axis=axes, keepdims=True)
        if self.semantics == "tf_keras":
            return x * jax.lax.rsqrt(jnp.maximum(square_sum, jnp.asarray(1e-12, x.dtype)))
        big = square_sum > jnp.asarray(1e-24, x.dtype)  # rsqrt(s) < 1e12
        inv = jnp.where(big, jax.lax.rsqrt(jnp.where(big, square_sum, jnp.ones((), x.dtype))),
                        jnp.asarray(1e12, x.dtype))
        return x * inv
