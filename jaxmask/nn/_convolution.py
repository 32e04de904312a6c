"""1D convolution, pooling and reshaping layers with Keras' weights and mask semantics: Conv1D, SeparableConv1D,
MaxPooling1D, AveragePooling1D, UpSampling1D, ZeroPadding1D, Cropping1D, GlobalMaxPooling1D.

None of them supports masking in Keras (verified on Keras 3.15.1, TF and JAX backends, and tf_keras 2.21): given
a masked input they compute over every step, padded steps included, and drop the mask, so the layers after them
see none (an LSTM after a Conv1D runs over the padding). Keras 3 warns ("this layer does not support masking and
will therefore destroy the mask information"), tf_keras drops it silently. jaxmask does the same and warns once
per call site, like Keras 3. Masking again after them (``Masking`` on the features, or a mask passed to the
model) is the way to bring a mask back.

All of them take channels-last inputs [B, T, F] (``data_format="channels_last"``, Keras' default).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmask.functional.rnn import get_activation
from jaxmask.nn._core import Layer, as_input

_PADDINGS = ("valid", "same", "causal")


def _positive(name: str, layer: str, value) -> int:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{layer}: `{name}` must be a positive int; received {value!r}.")
    return value


def _pair(name: str, layer: str, value) -> tuple[int, int]:
    """``padding=1`` / ``cropping=(1, 2)``: an int for both ends or a pair (start, end) of non-negative ints."""
    items = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in items):
        raise ValueError(f"{layer}: `{name}` must be a non-negative int or a pair (start, end) of them; received "
                         f"{value!r}.")
    return items


class _NoMask(Layer):
    """Base of the layers Keras marks ``supports_masking = False``: the output carries no mask."""

    def compute_output_mask(self, x, mask):
        if mask is not None:
            warnings.warn(f"{type(self).__name__} does not support masking: it computes over padded steps too and "
                          "drops the mask (as Keras does), so the layers after it see no mask.", UserWarning,
                          stacklevel=3)
        return None


def _sequence(x, layer: str, features: int | None = None):
    x = as_input(x, layer, dtype="float")
    if features is not None and x.shape[-1] != features:
        raise ValueError(f"{layer}(in_features={features}) received x.shape={tuple(x.shape)}; the last axis must be "
                         f"{features}.")
    return x


def _conv_padding(padding: str, kernel_size: int, dilation: int):
    """lax padding for Keras' ``valid`` / ``same`` (TF's: the extra pad at the end) / ``causal`` (all at the start)."""
    if padding == "causal":
        return [((kernel_size - 1) * dilation, 0)]
    return padding.upper()


def _check_conv_args(layer: str, padding: str, strides: int, dilation_rate: int, allowed=_PADDINGS):
    if padding not in allowed:
        raise ValueError(f"{layer}: `padding` must be one of {list(allowed)}; received {padding!r}.")
    if strides > 1 and dilation_rate > 1:
        raise ValueError(f"{layer}: `strides` > 1 together with `dilation_rate` > 1 is not supported (nor by Keras); "
                         f"received strides={strides}, dilation_rate={dilation_rate}.")


_glorot = jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1)  # Keras' fans: receptive field × channels


class Conv1D(_NoMask):
    """1D convolution over time: ``y[b, t, o] = act(Σ_{i, c} x[b, t·s + i·d, c] · kernel[i, c, o] + bias[o])``.

    ``padding="valid"`` uses only complete windows (T_out = ⌈(T − (k − 1)·d) / s⌉), ``"same"`` pads with zeros
    so that T_out = ⌈T / s⌉ (the odd extra zero at the end, as TensorFlow), ``"causal"`` pads ``(k − 1)·d`` zeros
    at the start so ``y[t]`` sees only ``x[≤ t]``. ``groups`` splits the channels into independent groups
    (kernel [k, F / groups, filters]).

    Masks: padded steps enter the windows like any other step; the output carries no mask (Keras drops it, with
    a warning in Keras 3).

    Args:
      in_features: F, the input channels.
      filters: output channels.
      kernel_size: k.
      strides: s.
      padding: "valid", "same" or "causal".
      dilation_rate: d (``strides`` > 1 with ``dilation_rate`` > 1 is refused, as by Keras).
      groups: divides both F and ``filters``.
      activation: a Keras activation name or None.
      use_bias: add ``bias``.
      rngs: for the glorot-uniform kernel (bias zeros), Keras' defaults.

    Call: ``layer(x, mask=None)`` with ``x`` [B, T, F] float; returns [B, T_out, filters].

    Raises:
      ValueError: inconsistent sizes (message names the argument), ``x``'s last axis is not F.

    Keras equivalent: ``keras.layers.Conv1D(filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
    groups=1, activation=None, use_bias=True)`` (weights ``kernel`` [k, F / groups, filters], ``bias``).
    """

    def __init__(self, in_features: int, filters: int, kernel_size, strides=1, padding: str = "valid",
                 dilation_rate=1, groups: int = 1, activation=None, use_bias: bool = True, *, rngs: nnx.Rngs):
        self.in_features = _positive("in_features", "Conv1D", in_features)
        self.filters = _positive("filters", "Conv1D", filters)
        self.kernel_size = _positive("kernel_size", "Conv1D", kernel_size)
        self.strides = _positive("strides", "Conv1D", strides)
        self.dilation_rate = _positive("dilation_rate", "Conv1D", dilation_rate)
        self.groups = _positive("groups", "Conv1D", groups)
        self.padding = padding
        _check_conv_args("Conv1D", padding, self.strides, self.dilation_rate)
        if self.in_features % self.groups or self.filters % self.groups:
            raise ValueError(f"Conv1D: `groups`={self.groups} must divide both in_features={self.in_features} and "
                             f"filters={self.filters}.")
        self.activation = activation
        self._act = get_activation(activation)
        shape = (self.kernel_size, self.in_features // self.groups, self.filters)
        self.kernel = nnx.Param(_glorot(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((self.filters,), jnp.float32)) if use_bias else nnx.data(None)

    def __call__(self, x, mask=None):
        x = _sequence(x, "Conv1D", self.in_features)
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...].astype(x.dtype), window_strides=(self.strides,),
            padding=_conv_padding(self.padding, self.kernel_size, self.dilation_rate),
            rhs_dilation=(self.dilation_rate,), dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups)
        if self.bias is not None:
            y = y + self.bias[...].reshape(1, 1, -1)
        return self._act(y)


class SeparableConv1D(_NoMask):
    """Depthwise-separable 1D convolution: a depthwise convolution (each channel on its own, ``depth_multiplier``
    outputs per channel), then a pointwise (k = 1) convolution to ``filters`` channels, bias, activation.

    .. math:: z[b, t, c·D + j] = \\sum_i x[b, t·s + i·d, c] \\, w_{dw}[i, c, j], \\qquad
              y = act(z \\, w_{pw}[0] + bias)

    Padding, strides and dilation as ``Conv1D`` (``"causal"`` exists in tf_keras, not in Keras 3). Masks: as
    ``Conv1D`` (computed over padded steps, output mask dropped).

    Args:
      in_features: F.
      filters: output channels.
      kernel_size, strides, padding, dilation_rate: of the depthwise step.
      depth_multiplier: D.
      activation, use_bias, rngs: as ``Conv1D``.

    Call: ``layer(x, mask=None)`` with ``x`` [B, T, F]; returns [B, T_out, filters].

    Keras equivalent: ``keras.layers.SeparableConv1D(filters, kernel_size, strides=1, padding="valid",
    dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True)`` (weights ``depthwise_kernel``
    [k, F, D], ``pointwise_kernel`` [1, F·D, filters], ``bias``).
    """

    def __init__(self, in_features: int, filters: int, kernel_size, strides=1, padding: str = "valid",
                 dilation_rate=1, depth_multiplier: int = 1, activation=None, use_bias: bool = True, *,
                 rngs: nnx.Rngs):
        self.in_features = _positive("in_features", "SeparableConv1D", in_features)
        self.filters = _positive("filters", "SeparableConv1D", filters)
        self.kernel_size = _positive("kernel_size", "SeparableConv1D", kernel_size)
        self.strides = _positive("strides", "SeparableConv1D", strides)
        self.dilation_rate = _positive("dilation_rate", "SeparableConv1D", dilation_rate)
        self.depth_multiplier = _positive("depth_multiplier", "SeparableConv1D", depth_multiplier)
        self.padding = padding
        _check_conv_args("SeparableConv1D", padding, self.strides, self.dilation_rate)
        self.activation = activation
        self._act = get_activation(activation)
        f, d = self.in_features, self.depth_multiplier
        self.depthwise_kernel = nnx.Param(_glorot(rngs.params(), (self.kernel_size, f, d), jnp.float32))
        self.pointwise_kernel = nnx.Param(_glorot(rngs.params(), (1, f * d, self.filters), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((self.filters,), jnp.float32)) if use_bias else nnx.data(None)

    def __call__(self, x, mask=None):
        x = _sequence(x, "SeparableConv1D", self.in_features)
        f, d = self.in_features, self.depth_multiplier
        depthwise = self.depthwise_kernel[...].astype(x.dtype).reshape(self.kernel_size, 1, f * d)
        z = jax.lax.conv_general_dilated(
            x, depthwise, window_strides=(self.strides,),
            padding=_conv_padding(self.padding, self.kernel_size, self.dilation_rate),
            rhs_dilation=(self.dilation_rate,), dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=f)
        y = z @ self.pointwise_kernel[...][0].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].reshape(1, 1, -1)
        return self._act(y)


class _Pooling1D(_NoMask):
    _name = ""

    def __init__(self, pool_size=2, strides=None, padding: str = "valid"):
        self.pool_size = _positive("pool_size", self._name, pool_size)
        self.strides = self.pool_size if strides is None else _positive("strides", self._name, strides)
        if padding not in ("valid", "same"):
            raise ValueError(f"{self._name}: `padding` must be 'valid' or 'same'; received {padding!r}.")
        self.padding = padding

    def _window(self, x, init, op):
        return jax.lax.reduce_window(x, init, op, (1, self.pool_size, 1), (1, self.strides, 1),
                                     self.padding.upper())


class MaxPooling1D(_Pooling1D):
    """Max over windows of ``pool_size`` steps every ``strides`` steps (default ``pool_size``).

    ``padding="same"`` gives ⌈T / strides⌉ outputs and the padding never wins the max (TensorFlow's rule).
    Masks: padded steps enter the max like any other; the output carries no mask (as Keras).

    Call: ``layer(x, mask=None)`` with ``x`` [B, T, F]; returns [B, T_out, F].

    Keras equivalent: ``keras.layers.MaxPooling1D(pool_size=2, strides=None, padding="valid")``.
    """

    _name = "MaxPooling1D"

    def __call__(self, x, mask=None):
        x = _sequence(x, "MaxPooling1D")
        return self._window(x, -jnp.inf, jax.lax.max)


class AveragePooling1D(_Pooling1D):
    """Mean over windows of ``pool_size`` steps every ``strides`` steps (default ``pool_size``).

    ``padding="same"`` gives ⌈T / strides⌉ outputs; a window that overlaps the padding averages only its real steps
    (TensorFlow's rule: [1, 2, 3, ...] with pool 3, stride 2 starts with 1.5). Masks: padded steps are averaged like
    any other; the output carries no mask (as Keras).

    Call: ``layer(x, mask=None)`` with ``x`` [B, T, F]; returns [B, T_out, F].

    Keras equivalent: ``keras.layers.AveragePooling1D(pool_size, strides=None, padding="valid")``.
    """

    _name = "AveragePooling1D"

    def __init__(self, pool_size, strides=None, padding: str = "valid"):
        super().__init__(pool_size, strides, padding)

    def __call__(self, x, mask=None):
        x = _sequence(x, "AveragePooling1D")
        total = self._window(x, 0.0, jax.lax.add)
        if self.padding == "valid":
            return total / jnp.asarray(self.pool_size, x.dtype)
        count = self._window(jnp.ones((1, x.shape[1], 1), x.dtype), 0.0, jax.lax.add)
        return total / count


class UpSampling1D(_NoMask):
    """Repeats every step ``size`` times: [B, T, F] -> [B, T·size, F]. Output carries no mask (as Keras).

    Keras equivalent: ``keras.layers.UpSampling1D(size=2)``.
    """

    def __init__(self, size: int = 2):
        self.size = _positive("size", "UpSampling1D", size)

    def __call__(self, x, mask=None):
        return jnp.repeat(_sequence(x, "UpSampling1D"), self.size, axis=1)


class ZeroPadding1D(_NoMask):
    """Adds zero steps at the start and end of time: [B, T, F] -> [B, start + T + end, F]. Output carries no mask
    (as Keras: the added steps are not marked as padding).

    Args:
      padding: an int for both ends or a pair (start, end).

    Keras equivalent: ``keras.layers.ZeroPadding1D(padding=1)``.
    """

    def __init__(self, padding=1):
        self.padding = _pair("padding", "ZeroPadding1D", padding)

    def __call__(self, x, mask=None):
        x = _sequence(x, "ZeroPadding1D")
        return jnp.pad(x, ((0, 0), self.padding, (0, 0)))


class Cropping1D(_NoMask):
    """Removes steps at the start and end of time: [B, T, F] -> [B, T − start − end, F]. Output carries no mask (as
    Keras).

    Args:
      cropping: an int for both ends or a pair (start, end).

    Raises:
      ValueError: ``start + end`` >= T (nothing would be left).

    Keras equivalent: ``keras.layers.Cropping1D(cropping=(1, 1))``.
    """

    def __init__(self, cropping=(1, 1)):
        self.cropping = _pair("cropping", "Cropping1D", cropping)

    def __call__(self, x, mask=None):
        x = _sequence(x, "Cropping1D")
        start, end = self.cropping
        if start + end >= x.shape[1]:
            raise ValueError(f"Cropping1D(cropping={self.cropping}) received x.shape={tuple(x.shape)}: cropping "
                             f"{start + end} steps of {x.shape[1]} leaves none.")
        return x[:, start:x.shape[1] - end]


class GlobalMaxPooling1D(_NoMask):
    """Max over every time step, padded ones included: [B, T, F] -> [B, F] ([B, 1, F] with ``keepdims``).

    .. math:: y_{b,f} = \\max_t x_{b,t,f}

    The mask is ignored and dropped, as in Keras 3 (which warns that the layer does not support masking) and
    tf_keras: padded steps count in the max (a zero-padded step wins over negative features, a fully masked row
    gives the max of its padding values). Mask the features first if padding must not count.

    Keras equivalent: ``keras.layers.GlobalMaxPooling1D(keepdims=False)``.
    """

    def __init__(self, keepdims: bool = False):
        self.keepdims = bool(keepdims)

    def __call__(self, x, mask=None):
        return jnp.max(_sequence(x, "GlobalMaxPooling1D"), axis=1, keepdims=self.keepdims)
