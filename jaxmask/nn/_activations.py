"""Activation layers: ``ReLU``, ``LeakyReLU``, ``PReLU``, ``ELU`` and ``Softmax`` (with a mask).

All of them pass the incoming mask on unchanged (Keras 3 and tf_keras, verified) and compute every step,
padded ones included, as Keras does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask.nn._core import Layer, keras_init
from jaxmask.nn._merge import check_semantics


def _number(layer: str, name: str, value, *, lo: float | None = None, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(
            value) or (lo is not None and value < lo):
        bound = f" >= {lo}" if lo is not None else ""
        none = " or None" if allow_none else ""
        raise ValueError(f"{layer}: `{name}` must be a finite number{bound}{none}; received {value!r}.")
    return float(value)


def relu(x, negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0):
    """Keras 3's ``activations.relu``, transcribed step by step.

    .. math::
        y = \\text{clip}(x \\cdot [x > \\theta], 0, M) - \\alpha\\,\\text{relu}(\\theta - x)

    with θ = ``threshold`` >= 0, M = ``max_value`` (no clip when None) and α = ``negative_slope``; α ≠ 0, θ = 0,
    M = None is the leaky ReLU.
    """
    dtype = x.dtype
    if negative_slope != 0.0:
        if max_value is None and threshold == 0:
            return jnp.where(x >= 0, x, jnp.asarray(negative_slope, dtype) * x)
        negative = jax.nn.relu(jnp.asarray(threshold, dtype) - x)
    if threshold != 0:
        y = jnp.where(x > jnp.asarray(threshold, dtype), x, jnp.zeros((), dtype))
    else:
        y = jax.nn.relu(x)
    if max_value is not None:
        y = jnp.clip(y, jnp.zeros((), dtype), jnp.asarray(max_value, dtype))
    if negative_slope != 0.0:
        y = y - jnp.asarray(negative_slope, dtype) * negative
    return y


class ReLU(Layer):
    """Rectified linear unit with Keras' options (see :func:`relu` for the formula); passes the mask on.

    Args:
      max_value: upper clip (>= 0) or None.
      negative_slope: slope below the threshold (>= 0).
      threshold: values at or below it (>= 0) are "negative".

    Raises:
      ValueError: a negative ``max_value``, ``negative_slope`` or ``threshold`` (Keras refuses them too), or a
        non-number.

    Keras equivalent: ``keras.layers.ReLU(max_value=None, negative_slope=0.0, threshold=0.0)``.
    """

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0):
        self.max_value = _number("ReLU", "max_value", max_value, lo=0.0, allow_none=True)
        self.negative_slope = _number("ReLU", "negative_slope", negative_slope, lo=0.0)
        self.threshold = _number("ReLU", "threshold", threshold, lo=0.0)

    def __call__(self, x, mask=None):
        return relu(jnp.asarray(x), self.negative_slope, self.max_value, self.threshold)


class LeakyReLU(Layer):
    """y = x for x >= 0, ``negative_slope`` · x otherwise; passes the mask on.

    Keras 3 requires ``negative_slope`` >= 0; tf_keras accepts any ``alpha``, and so does jaxmask.

    Keras equivalent: ``keras.layers.LeakyReLU(negative_slope=0.3)`` (tf_keras: ``LeakyReLU(alpha=0.3)``).
    """

    def __init__(self, negative_slope: float = 0.3):
        self.negative_slope = _number("LeakyReLU", "negative_slope", negative_slope)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        return jnp.where(x >= 0, x, jnp.asarray(self.negative_slope, x.dtype) * x)


class ELU(Layer):
    """y = x for x > 0, ``alpha`` · (exp(x) - 1) otherwise; passes the mask on.

    Keras equivalent: ``keras.layers.ELU(alpha=1.0)``.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = _number("ELU", "alpha", alpha)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        return jax.nn.elu(x, jnp.asarray(self.alpha, x.dtype))


class PReLU(Layer):
    """Parametric ReLU: y = relu(x) - alpha · relu(-x), with a learned ``alpha`` per position; passes the mask on.

    ``alpha`` has the input's shape without the batch axis, with size 1 along ``shared_axes`` (1-based, as in
    Keras: ``shared_axes=[1]`` shares it over time, the usual choice for [B, T, F]).

    Args:
      input_shape: the input shape without the batch axis, e.g. (T, F) or (None, F) (unknown sizes must be in
        ``shared_axes``); Keras infers it at build time.
      alpha_initializer: "zeros" (Keras' default) or a number (a constant).
      shared_axes: None, an int or a list of ints in [1, len(input_shape)].
      rngs: optional; ``alpha``'s initial value is deterministic.

    Raises:
      ValueError: a shared axis out of range, or an unknown size not shared.

    Keras equivalent: ``keras.layers.PReLU(alpha_initializer="Zeros", shared_axes=None)`` (weight ``alpha``).
    """

    def __init__(self, input_shape, alpha_initializer="zeros", shared_axes=None, *, rngs: nnx.Rngs | None = None):
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        shape = tuple(input_shape)
        if not shape:
            raise ValueError("PReLU: `input_shape` must be the input's shape without the batch axis, e.g. (T, F).")
        axes = () if shared_axes is None else ((shared_axes,) if isinstance(shared_axes, int) else tuple(shared_axes))
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not 1 <= a <= len(shape):
                raise ValueError(f"PReLU: `shared_axes` must hold axes in [1, {len(shape)}] (1 = the first axis after "
                                 f"the batch); received {shared_axes!r}.")
        param = tuple(1 if i + 1 in axes else d for i, d in enumerate(shape))
        for i, d in enumerate(param):
            if d is None or (isinstance(d, (int, np.integer)) and d < 1):
                raise ValueError(f"PReLU: axis {i + 1} of `input_shape` {shape} has unknown size {d}; share it "
                                 f"(shared_axes=[{i + 1}]) or give its size.")
        if isinstance(alpha_initializer, str) and alpha_initializer.lower() == "zeros":
            value = 0.0
        else:
            value = _number("PReLU", "alpha_initializer", alpha_initializer)
        self.input_shape = shape
        self.shared_axes = tuple(sorted(int(a) for a in axes)) or None
        # keras_init: a placeholder under the loaders' abstract_init, so a crafted shape allocates nothing
        alpha = keras_init("zeros", (rngs or nnx.Rngs(0)).params(), param)
        self.alpha = nnx.Param(alpha if value == 0.0 else jnp.full(param, value, jnp.float32))

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        alpha = self.alpha[...]
        if x.ndim != alpha.ndim + 1 or any(a not in (1, d) for a, d in zip(alpha.shape, x.shape[1:])):
            raise ValueError(f"PReLU(input_shape={self.input_shape}) received x.shape={tuple(x.shape)}; expected "
                             f"[B, {', '.join(str(d) for d in self.input_shape)}].")
        alpha = alpha.reshape((1,) + alpha.shape).astype(x.dtype)
        return jax.nn.relu(x) - alpha * jax.nn.relu(-x)


def _broadcast_like_keras(layer: str, mask, x):
    """``mask`` aligned with the *last* axes of ``x`` (NumPy broadcasting, Keras' rule), as an array of x's shape."""
    mask = jnp.asarray(mask)
    ok = mask.ndim <= x.ndim and all(m in (1, d) for m, d in zip(mask.shape[::-1], x.shape[::-1]))
    if not ok:
        raise ValueError(
            f"{layer}: `mask` must broadcast to `x` the NumPy way (aligned with x's last axes, each size 1 or "
            f"equal), as Keras requires; received x.shape={tuple(x.shape)}, mask.shape={tuple(mask.shape)}. A [B, T] "
            "mask passed on from a previous layer does not fit [B, T, F] logits (Keras raises there too); pass an "
            "explicit mask such as mask[:, None, :] for [B, Tq, Tk] scores.")
    return jnp.broadcast_to(mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape), x.shape)


class Softmax(Layer):
    """Softmax along ``axis`` (an int or a tuple of ints); with a mask, masked entries are left out.

    .. math::
        \\text{keras3: } y = \\text{where}(m, \\text{softmax}(\\text{where}(m, x, -10^9)), 0) \\qquad
        \\text{tf\\_keras: } y = \\text{softmax}(x + (1 - m) \\cdot (-10^9))

    The mask broadcasts to ``x`` NumPy-style, aligned with x's *last* axes (Keras' rule: a [B, 1, Tk] mask for
    [B, Tq, Tk] scores). A non-bool mask counts where it is > 0.5 (Keras 3) or enters the formula as a number
    (tf_keras). A row whose entries are all masked gives zeros (Keras 3) or the softmax of x - 1e9 in float32,
    uniform for |x| < 32 (tf_keras; with a tuple ``axis`` tf_keras' logsumexp rounds away and every entry is 1);
    never NaN. The mask is passed on unchanged.

    Note: Keras passes the mask of the previous layer ([B, T]) to Softmax, which aligns it with the last axes: on
    [B, T, F] inputs that raises unless the sizes happen to fit (B == T == F, then it masks the wrong axes;
    jaxmask does exactly what Keras does).

    Args:
      axis: the axis or axes to normalise over.
      semantics: "keras3" (default) or "tf_keras", whose masked formula to use.

    Raises:
      ValueError: a mask that does not broadcast to ``x``.

    Keras equivalent: ``keras.layers.Softmax(axis=-1)`` called as ``layer(x, mask=m)``.
    """

    def __init__(self, axis=-1, *, semantics: str = "keras3"):
        axes = axis if isinstance(axis, (list, tuple)) else (axis,)
        if not axes or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes):
            raise ValueError(f"Softmax: `axis` must be an int or a tuple of ints; received {axis!r}.")
        self.axis = tuple(int(a) for a in axes) if isinstance(axis, (list, tuple)) else int(axis)
        self.semantics = check_semantics("Softmax", semantics)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        for a in axes:
            if not -x.ndim <= a < x.ndim:
                raise ValueError(f"Softmax(axis={self.axis}) received x of rank {x.ndim} (shape {tuple(x.shape)}).")
        big = jnp.asarray(-1e9, x.dtype)
        if mask is not None:
            m = _broadcast_like_keras("Softmax", mask, x)
            if self.semantics == "keras3":
                keep = m if m.dtype == jnp.bool_ else m > 0.5
                x = jnp.where(keep, x, big)
            else:
                x = x + (jnp.ones((), x.dtype) - m.astype(x.dtype)) * big
        if len(axes) > 1:
            y = jnp.exp(x - jax.nn.logsumexp(x, axis=axes, keepdims=True))
        else:
            y = jax.nn.softmax(x, axis=axes[0])
        if mask is not None and self.semantics == "keras3":
            y = jnp.where(keep, y, jnp.zeros((), y.dtype))
        return y
