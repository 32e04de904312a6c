"""Merge layers: ``Concatenate``, ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``, ``Dot``.

Each is called on a list of arrays, ``layer([x1, x2, ...], mask=[m1, m2, ...])`` (entries of ``mask`` may be
None). Keras 3 and tf_keras merge masks differently (verified on Keras 3.15.1 and tf_keras 2.21 by running both);
``semantics=`` picks one, and the Keras loader picks the one of the library that wrote the file:

=================  =====================================================  ==========================================
                   ``semantics="keras3"`` (Keras 3)                       ``semantics="tf_keras"`` (tf_keras 2.x)
=================  =====================================================  ==========================================
output mask        m1 OR m2 OR ... ; None as soon as one input has no     m1 AND m2 AND ... over the inputs that
(Add ... Minimum)  mask                                                   have one; None only if none has
values of          masked steps of an input are left out: Multiply uses   plain element-wise operations; the masks do
Multiply, Maximum, 1 there (0 where every input is masked, when all have  not change any value
Minimum            masks); Maximum/Minimum take the other inputs' values
Concatenate mask   any over the concatenated masks' last axis, an         all over the last axis (an input without a
                   input without a mask counting as all True: along the   mask counts as all True): along the
                   feature axis m1 OR m2 (all True if one input has no    feature axis m1 AND m2; along the time axis
                   mask); along the time axis the masks concatenated      the masks concatenated (tf_keras raises if
                                                                          an input there has no mask)
Dot                no output mask                                         no output mask
=================  =====================================================  ==========================================

Inputs of different ranks are broadcast as Keras does: the lower-rank ones get size-1 axes inserted after the
batch axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmask.nn._core import Layer

SEMANTICS = ("keras3", "tf_keras")


def check_semantics(layer: str, semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"{layer}: `semantics` must be one of {list(SEMANTICS)} (the Keras whose mask rules to "
                         f"follow); received {semantics!r}.")
    return semantics


def _as_arrays(layer: str, x, n: int | None = None) -> list:
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{layer} must be called on a list of arrays, e.g. {layer}()([x1, x2]); received one "
                        f"{type(x).__name__}.")
    if not x or (n is not None and len(x) != n):
        want = f"exactly {n}" if n is not None else "at least 1"
        raise ValueError(f"{layer} must be called on a list of {want} arrays; received {len(x)}.")
    xs = [jnp.asarray(v) for v in x]
    for i, v in enumerate(xs):
        if v.ndim < 2:
            raise ValueError(f"{layer}: `x[{i}]` must have a batch axis and at least one more, [B, ...]; received "
                             f"shape {v.shape}.")
    batch = {v.shape[0] for v in xs}
    if len(batch) > 1:
        raise ValueError(f"{layer}: the inputs must share the batch size; received shapes "
                         f"{[tuple(v.shape) for v in xs]}.")
    return xs


def _as_masks(layer: str, xs: list, mask, leading: bool = True) -> list:
    """``mask`` as a list parallel to ``xs`` of None / bool arrays; with ``leading``, each must match the leading
    axes of its input ([B, T] for [B, T, F]), where a layer broadcasts masks into values as Keras does."""
    if mask is None:
        return [None] * len(xs)
    if not isinstance(mask, (list, tuple)):
        raise TypeError(f"{layer}: `mask` must be a list parallel to the inputs (None entries allowed), e.g. "
                        f"mask=[m1, None]; received one {type(mask).__name__}.")
    if len(mask) != len(xs):
        raise ValueError(f"{layer}: `mask` must have one entry per input ({len(xs)}); received {len(mask)}.")
    out = []
    for i, (v, m) in enumerate(zip(xs, mask)):
        if m is None:
            out.append(None)
            continue
        m = jnp.asarray(m)
        if leading and (m.ndim > v.ndim or m.shape != v.shape[: m.ndim]):
            raise ValueError(f"{layer}: `mask[{i}]` must match the leading axes of `x[{i}]` (shape {v.shape}), "
                             f"e.g. [B, T]; received shape {m.shape}.")
        if m.dtype != jnp.bool_:
            if not (jnp.issubdtype(m.dtype, jnp.number)):
                raise TypeError(f"{layer}: `mask[{i}]` must be bool (True = valid step) or 0/1 numbers; received "
                                f"dtype {m.dtype}.")
            m = m != 0
        out.append(m)
    return out


def _broadcast_mask(m, shape):
    """A [B, T] mask as an array of ``shape`` ([B, T, ...]): Keras' ``broadcast_to(expand_dims(m, -1), shape)``."""
    return jnp.broadcast_to(m.reshape(m.shape + (1,) * (len(shape) - m.ndim)), shape)


def _same_rank(xs: list) -> list:
    """Keras' ``Merge``: inputs of lower rank get size-1 axes after the batch axis."""
    rank = max(v.ndim for v in xs)
    return [v.reshape(v.shape[:1] + (1,) * (rank - v.ndim) + v.shape[1:]) for v in xs]


def _broadcast_shape(layer: str, xs: list) -> tuple:
    try:
        return jnp.broadcast_shapes(*(v.shape for v in xs))
    except ValueError:
        raise ValueError(f"{layer}: the inputs must have the same shape (or broadcast, sizes 1 allowed); received "
                         f"shapes {[tuple(v.shape) for v in xs]}.") from None


class _Merge(Layer):
    """An element-wise merge of a list of inputs (see the module docstring for the mask rules)."""

    n_inputs: int | None = None
    masks_enter_values = False  # Keras 3's Multiply, Maximum, Minimum

    def __init__(self, *, semantics: str = "keras3"):
        self.semantics = check_semantics(type(self).__name__, semantics)

    def _masks(self, xs, mask):
        leading = self.masks_enter_values and self.semantics == "keras3"
        return _as_masks(type(self).__name__, xs, mask, leading=leading)

    def _prepare(self, x, mask):
        layer = type(self).__name__
        xs = _as_arrays(layer, x, self.n_inputs)
        masks = self._masks(xs, mask)
        xs = _same_rank(xs)
        shape = _broadcast_shape(layer, xs)
        return [jnp.broadcast_to(v, shape) for v in xs], masks

    def compute_output_mask(self, x, mask):
        xs = _as_arrays(type(self).__name__, x, self.n_inputs)
        masks = self._masks(xs, mask)
        present = [m for m in masks if m is not None]
        if not present:
            return None
        if self.semantics == "keras3" and len(present) < len(masks):
            return None
        if len({m.ndim for m in present}) > 1:
            raise ValueError(f"{type(self).__name__}: the input masks must have the same rank to be merged; received "
                             f"shapes {[tuple(m.shape) for m in present]}.")
        try:
            shape = jnp.broadcast_shapes(*(m.shape for m in present))
        except ValueError:
            raise ValueError(f"{type(self).__name__}: the input masks must broadcast together; received shapes "
                             f"{[tuple(m.shape) for m in present]}.") from None
        present = [jnp.broadcast_to(m, shape) for m in present]
        return _reduce(jnp.logical_or if self.semantics == "keras3" else jnp.logical_and, present)

    def __call__(self, x, mask=None):
        xs, masks = self._prepare(x, mask)
        return self._merge(xs, masks)


def _reduce(op, values):
    out = values[0]
    for v in values[1:]:
        out = op(out, v)
    return out


class Add(_Merge):
    """Element-wise sum of the inputs: y = x1 + x2 + ...; the masks merge as ``semantics`` says.

    Args (call):
      x: a list of arrays of the same shape (or broadcastable), e.g. [B, T, F] each.
      mask: None or a list parallel to ``x`` of None / bool [B, T].

    Returns:
      [B, T, F]; the output mask is m1 OR m2 ... (Keras 3: None if an input has no mask) or m1 AND m2 ... (tf_keras,
      over the inputs that have one).

    Raises:
      TypeError / ValueError: ``x`` is not a list of arrays, shapes do not broadcast, or ``mask`` does not match.

    Keras equivalent: ``keras.layers.Add()``.
    """

    def _merge(self, xs, masks):
        return _reduce(jnp.add, xs)


class Subtract(_Merge):
    """y = x1 - x2 for exactly two inputs; the masks merge as in :class:`Add`.

    Keras equivalent: ``keras.layers.Subtract()``.
    """

    n_inputs = 2

    def _merge(self, xs, masks):
        return xs[0] - xs[1]


class Average(_Merge):
    """y = (x1 + ... + xn) / n over every step (padded steps included, as Keras); masks merge as in :class:`Add`.

    Keras equivalent: ``keras.layers.Average()``.
    """

    def _merge(self, xs, masks):
        return _reduce(jnp.add, xs) / jnp.asarray(len(xs), xs[0].dtype)


class Multiply(_Merge):
    """Element-wise product; with ``semantics="keras3"`` a masked step of an input counts as 1.

    .. math::
        \\text{keras3: } y = \\prod_i \\text{where}(m_i, x_i, 1), \\text{ then } y = 0 \\text{ where every input
        is masked (only when every input has a mask)} \\qquad \\text{tf\\_keras: } y = \\prod_i x_i

    Output mask as in :class:`Add`. Keras equivalent: ``keras.layers.Multiply()``.
    """

    masks_enter_values = True

    def _merge(self, xs, masks):
        if self.semantics == "tf_keras":
            return _reduce(jnp.multiply, xs)
        every = all(m is not None for m in masks)
        one = jnp.ones((), xs[0].dtype)
        out, out_mask = None, None
        for v, m in zip(xs, masks):
            if m is not None:
                mb = _broadcast_mask(m, v.shape)
                v = jnp.where(mb, v, one)
                if every:
                    out_mask = mb if out_mask is None else out_mask | mb
            out = v if out is None else out * v
        if every:
            out = jnp.where(out_mask, out, jnp.zeros((), out.dtype))
        return out


class _Extremum(_Merge):
    op = None
    masks_enter_values = True

    def _merge(self, xs, masks):
        op = type(self).op
        if self.semantics == "tf_keras":
            return _reduce(op, xs)
        # Keras 3's Merge._apply_merge_op_and_or_mask, step by step: a masked value takes the running result's,
        # the running result takes the new input's where the inputs so far were all masked.
        out, out_mask = xs[0], None if masks[0] is None else _broadcast_mask(masks[0], xs[0].shape)
        for v, m in zip(xs[1:], masks[1:]):
            mb = None if m is None else _broadcast_mask(m, v.shape)
            if mb is not None:
                v = jnp.where(mb, v, out)
            if out_mask is not None:
                out = jnp.where(out_mask, out, v)
            out_mask = out_mask | mb if (mb is not None and out_mask is not None) else None
            out = op(out, v)
        return out


class Maximum(_Extremum):
    """Element-wise maximum; with ``semantics="keras3"`` masked steps of an input are left out.

    .. math::
        \\text{keras3: } y = \\max_{i:\\, m_i} x_i \\text{ (} x_1 \\text{ where every input is masked)}
        \\qquad \\text{tf\\_keras: } y = \\max_i x_i

    (Keras 3 folds the inputs left to right; an input without a mask counts as valid everywhere.) Output mask as in
    :class:`Add`. Keras equivalent: ``keras.layers.Maximum()``.
    """

    op = staticmethod(jnp.maximum)


class Minimum(_Extremum):
    """Element-wise minimum; masked steps are left out with ``semantics="keras3"`` (see :class:`Maximum`).

    Keras equivalent: ``keras.layers.Minimum()``.
    """

    op = staticmethod(jnp.minimum)


class Concatenate(Layer):
    """Concatenates a list of arrays along ``axis``; the output mask as Keras computes it.

    .. math::
        \\text{keras3: } m = \\text{any}_{-1}(\\text{concat}_{axis}(\\tilde m_i)) \\qquad
        \\text{tf\\_keras: } m = \\text{all}_{-1}(\\text{concat}_{axis}(\\tilde m_i))

    with m̃_i an input's mask broadcast to its shape (Keras 3) or given a trailing size-1 axis (tf_keras), all True
    for an input without a mask. Along the feature axis (``axis=-1``) of [B, T, F] inputs this is m1 OR m2 (Keras 3:
    all True as soon as one input has no mask) or m1 AND m2 (tf_keras); along the time axis (``axis=1``) it is
    the masks concatenated. No input with a mask: no output mask.

    Args:
      axis: the axis to concatenate along (not the batch axis 0); negative counts from the end.
      semantics: "keras3" (default) or "tf_keras": whose mask rule to follow.

    Call: ``layer([x1, x2, ...], mask=None | [m1, m2, ...])``; the inputs have the same rank and agree on every
    axis but ``axis``.

    Raises:
      ValueError: ``axis`` is the batch axis or out of range, shapes disagree, or (tf_keras) a mask that tf_keras
        cannot concatenate (an input without a mask along the time axis: tf_keras raises there too).

    Keras equivalent: ``keras.layers.Concatenate(axis=-1)``.
    """

    def __init__(self, axis: int = -1, *, semantics: str = "keras3"):
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Concatenate: `axis` must be an int; received {axis!r}.")
        if axis == 0:
            raise ValueError("Concatenate: `axis` must not be 0, the batch axis; use axis=1 (time) or -1 (features).")
        self.axis = int(axis)
        self.semantics = check_semantics("Concatenate", semantics)

    def _axis(self, xs) -> int:
        rank = xs[0].ndim
        if any(v.ndim != rank for v in xs):
            raise ValueError(f"Concatenate: the inputs must have the same rank; received shapes "
                             f"{[tuple(v.shape) for v in xs]}.")
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(f"Concatenate(axis={self.axis}) received inputs of rank {rank}; `axis` must be in "
                             f"[1, {rank - 1}] or [-{rank - 1}, -1].")
        axis = self.axis % rank
        for v in xs[1:]:
            if v.shape[:axis] + v.shape[axis + 1:] != xs[0].shape[:axis] + xs[0].shape[axis + 1:]:
                raise ValueError(f"Concatenate(axis={self.axis}): the inputs must agree on every axis but {axis}; "
                                 f"received shapes {[tuple(u.shape) for u in xs]}.")
        return axis

    def __call__(self, x, mask=None):
        xs = _as_arrays("Concatenate", x)
        _as_masks("Concatenate", xs, mask)
        return jnp.concatenate(xs, axis=self._axis(xs))

    def compute_output_mask(self, x, mask):
        xs = _as_arrays("Concatenate", x)
        masks = _as_masks("Concatenate", xs, mask)
        if all(m is None for m in masks):
            return None
        axis = self._axis(xs)
        if self.semantics == "keras3":
            full = [jnp.ones(v.shape, bool) if m is None else _broadcast_mask(m, v.shape) for v, m in zip(xs, masks)]
            return jnp.any(jnp.concatenate(full, axis=axis), axis=-1)
        parts = [jnp.ones(v.shape, bool) if m is None else (m[..., None] if m.ndim < v.ndim else m)
                 for v, m in zip(xs, masks)]
        shapes = [p.shape[:axis] + p.shape[axis + 1:] for p in parts]
        if any(sh != shapes[0] for sh in shapes):
            raise ValueError(f"Concatenate(axis={self.axis}, semantics='tf_keras'): tf_keras cannot concatenate "
                             f"these masks (shapes {[p.shape for p in parts]}: an input without a mask counts as "
                             "all True of its full shape, a masked one as [B, T, 1]) and raises; give every input a "
                             "mask, or use semantics='keras3'.")
        return jnp.all(jnp.concatenate(parts, axis=axis), axis=-1)


def _l2_normalize(x, axis: int, semantics: str):
    """Keras 3: x · min(1/‖x‖, 1/ε), ε = 1e-7; tf_keras ``l2_normalize``: x / max(‖x‖, 1e-6). Written as
    x · rsqrt(max(Σx², ε²)) so that a zero vector (a padded step) gives 0 with finite gradients."""
    eps2 = 1e-14 if semantics == "keras3" else 1e-12
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(eps2, x.dtype)))


class Dot(Layer):
    """Batched dot product of two inputs along ``axes``, optionally of L2-normalised inputs (cosine similarity).

    .. math:: y_b = \\sum_k x^{(1)}_{b,\\ldots,k,\\ldots} \\, x^{(2)}_{b,\\ldots,k,\\ldots}

    The result has x1's remaining axes, then x2's (without batch); a rank-1 result becomes [B, 1]. E.g.
    [B, T, F] · [B, S, F] with ``axes=2`` gives [B, T, S] (attention scores); [B, F] · [B, F] gives [B, 1].

    Args:
      axes: an int (the same axis of both) or a pair (axis of x1, axis of x2); not the batch axis 0.
      normalize: L2-normalise both inputs along their dot axis first (Keras 3 caps 1/‖x‖ at 1e7, tf_keras at 1e6;
        a zero vector, e.g. a padded step, gives 0 with finite gradients; Keras 3 on JAX gives NaN gradients there:
        the named deviation ``keras-jax-dot-normalize-zero-vector-nan-grad``).
      semantics: "keras3" (default) or "tf_keras" (only the normalisation cap differs).

    Returns:
      the dot product; no output mask (Keras 3 and tf_keras both drop the masks).

    Raises:
      ValueError: bad ``axes``, not two inputs, or the dot axes differ in size.

    Keras equivalent: ``keras.layers.Dot(axes, normalize=False)``.
    """

    def __init__(self, axes, normalize: bool = False, *, semantics: str = "keras3"):
        pair = axes if isinstance(axes, (list, tuple)) else (axes, axes)
        if len(pair) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in pair):
            raise ValueError(f"Dot: `axes` must be an int or a pair of ints; received {axes!r}.")
        self.axes = tuple(int(a) for a in pair) if isinstance(axes, (list, tuple)) else int(axes)
        self.normalize = bool(normalize)
        self.semantics = check_semantics("Dot", semantics)

    def _axes(self, xs) -> tuple:
        pair = self.axes if isinstance(self.axes, tuple) else (self.axes, self.axes)
        out = []
        for i, (a, v) in enumerate(zip(pair, xs)):
            if not -v.ndim <= a < v.ndim or a % v.ndim == 0:
                raise ValueError(f"Dot(axes={self.axes}): the axis of input {i} (shape {v.shape}) must be in "
                                 f"[1, {v.ndim - 1}] or negative; 0 is the batch axis.")
            out.append(a % v.ndim)
        if xs[0].shape[out[0]] != xs[1].shape[out[1]]:
            raise ValueError(f"Dot(axes={self.axes}): x1.shape[{out[0]}] = {xs[0].shape[out[0]]} and "
                             f"x2.shape[{out[1]}] = {xs[1].shape[out[1]]} must be equal; received shapes "
                             f"{tuple(xs[0].shape)} and {tuple(xs[1].shape)}.")
        return tuple(out)

    def __call__(self, x, mask=None):
        xs = _as_arrays("Dot", x, 2)
        _as_masks("Dot", xs, mask, leading=False)  # Keras' Dot ignores masks of any shape
        a0, a1 = self._axes(xs)
        x1, x2 = xs
        if self.normalize:
            x1, x2 = _l2_normalize(x1, a0, self.semantics), _l2_normalize(x2, a1, self.semantics)
        y = jax.lax.dot_general(x1, x2, (((a0,), (a1,)), ((0,), (0,))), precision=jax.lax.Precision.HIGHEST)
        return y[:, None] if y.ndim == 1 else y

    def compute_output_mask(self, x, mask):
        return None
