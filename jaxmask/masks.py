"""Masks and padding: build the [B, T] mask, pad ragged sequences, standardise valid steps only.

Notation: B batch, T time, F features; ``mask[b, t]`` is True for a valid step.

The mask is explicit everywhere in jaxmask: from lengths (``lengths_to_mask``) or from a sentinel value
read *before* any preprocessing changes the data (``compute_mask``). ``MaskedStandardScaler`` fits and
transforms valid steps only and leaves padding untouched, so zero padding stays zero after scaling.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxmask._checks import check_choice, check_mask, check_rank, shape_of

_SIDES = ("pre", "post")


def _dtype_of(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _check_maxlen(maxlen) -> int:
    """Return ``maxlen`` as a non-negative Python int (it fixes the output's T, so it must be concrete)."""
    try:
        if isinstance(maxlen, (bool, np.bool_)):
            raise TypeError
        value = operator.index(maxlen)
    except TypeError:
        raise TypeError(
            f"`maxlen` must be a non-negative Python int (it sets the output's T); received {maxlen!r} "
            f"of type {type(maxlen).__name__}. Pass int(maxlen); under jax.jit mark it static "
            "(static_argnames='maxlen')."
        ) from None
    if value < 0:
        raise ValueError(f"`maxlen` must be >= 0; received {value}. Pass the number of time steps T to pad to.")
    return value


def compute_mask(x, mask_value=0.0):
    """Mask of the steps that are not entirely ``mask_value`` (the rule of Keras' ``Masking`` layer).

    .. math:: m[b, t] = \\exists f:\\; x[b, t, f] \\neq v

    A step is masked only when **every** feature equals ``mask_value``; a step with one NaN feature is
    valid (NaN != v), and -0.0 == 0.0 counts as equal. Take the mask from the raw data, *before* scaling
    or any other preprocessing that changes the padding value. Pure and jit-able.

    Args:
      x: array [B, T, F] (jax or NumPy), any real dtype.
      mask_value: scalar sentinel v marking padded steps.

    Returns:
      bool jax array [B, T], True = valid step.

    Raises:
      ValueError: ``x`` is not rank 3, or ``mask_value`` is not a scalar.

    Keras equivalent: ``keras.layers.Masking(mask_value).compute_mask(x)``.

    Example::

      >>> x = np.array([[[1.0], [0.0], [2.0]]])
      >>> jm.compute_mask(x)
      Array([[ True, False,  True]], dtype=bool)
    """
    check_rank(
        "x",
        x,
        3,
        "[B, T, F]",
        hint="For integer token ids [B, T] the Embedding(mask_zero=True) mask is `x != 0`; "
        "for one feature per step add the axis with x[..., None].",
    )
    if np.ndim(mask_value) != 0:
        raise ValueError(
            f"`mask_value` must be a scalar (one sentinel for every feature); received shape "
            f"{shape_of(mask_value)}. Pass a single number such as 0.0."
        )
    return jnp.any(jnp.asarray(x) != mask_value, axis=-1)


def lengths_to_mask(lengths, maxlen, padding="post"):
    """Mask [B, T] with ``lengths[b]`` valid steps per row, at the start ("post") or the end ("pre").

    .. math::
       \\text{post}: m[b, t] = t < L_b \\qquad \\text{pre}: m[b, t] = t \\geq T - L_b

    ``padding`` names where the padding sits, as in ``pad_sequences``: "post" puts the valid steps first,
    "pre" puts them last. With concrete lengths every value is checked to lie in [0, maxlen]; under
    ``jax.jit`` the values cannot be checked and act as if clipped to [0, maxlen]. Pure and jit-able
    (``maxlen`` and ``padding`` static).

    Args:
      lengths: integer array [B], number of valid steps per row.
      maxlen: Python int T, the number of time steps.
      padding: "post" (valid steps first) or "pre" (valid steps last).

    Returns:
      bool jax array [B, T].

    Raises:
      ValueError: ``lengths`` is not rank 1, a length lies outside [0, maxlen], ``maxlen`` < 0, or
        ``padding`` is not "pre"/"post".
      TypeError: ``lengths`` is not integer, or ``maxlen`` is not an int.

    Keras equivalent: ``tf.sequence_mask(lengths, maxlen)`` for "post"; the mask ``Masking`` computes on
    the output of ``keras.utils.pad_sequences(..., padding=padding)`` when no step equals the pad value.

    Example::

      >>> jm.lengths_to_mask(np.array([1, 3]), 3, padding="pre")
      Array([[False, False,  True],
             [ True,  True,  True]], dtype=bool)
    """
    check_rank("lengths", lengths, 1, "[B]", hint="Pass one length per row, e.g. np.array([len(s) for s in seqs]).")
    dtype = _dtype_of(lengths)
    if dtype.kind not in "iu":
        raise TypeError(
            f"`lengths` must be integers (valid steps per row); received dtype {dtype}. "
            "Convert with np.asarray(lengths).astype(np.int32)."
        )
    maxlen = _check_maxlen(maxlen)
    check_choice("padding", padding, _SIDES)
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        bad = (values < 0) | (values > maxlen)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"every entry of `lengths` must lie in [0, maxlen] = [0, {maxlen}]; received "
                f"lengths[{i}] = {values[i]}. Raise maxlen to max(lengths) = {values.max()} or clip with "
                "np.clip(lengths, 0, maxlen)."
            )
    positions = jnp.arange(maxlen) if padding == "post" else jnp.arange(maxlen)[::-1]
    return positions[None, :] < jnp.asarray(lengths)[:, None]


def mask_to_lengths(mask):
    """Number of valid steps per row; masks with holes in the middle count every valid step.

    .. math:: L_b = \\sum_t m[b, t]

    Args:
      mask: [B, T], bool or 0/1 numbers.

    Returns:
      int32 jax array [B].

    Raises:
      ValueError: ``mask`` is not rank 2.
      TypeError: ``mask`` is neither bool nor numeric.

    Keras equivalent: ``ops.sum(ops.cast(mask, "int32"), axis=1)``.

    Example::

      >>> jm.mask_to_lengths(np.array([[True, False, True], [False, False, False]]))
      Array([2, 0], dtype=int32)
    """
    check_rank("mask", mask, 2, "[B, T]")
    mask = check_mask(mask, shape_of(mask))
    return jnp.sum(mask, axis=1, dtype=jnp.int32)


def _error_kind(error: Exception) -> type:
    """The builtin class to re-raise ``error`` as (its subclasses may need extra constructor arguments)."""
    for kind in (TypeError, OverflowError):
        if isinstance(error, kind):
            return kind
    return ValueError


def _sequence_array(index: int, sequence, dtype):
    target = "an array" if dtype is None else f"dtype {np.dtype(dtype)}"
    try:
        return np.asarray(sequence, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise _error_kind(e)(
            f"`sequences[{index}]` could not be converted to {target}: {e}. Each sequence must be a list or "
            "array of scalars [T_i] or of equal-length feature vectors [T_i, F], with values that fit `dtype`."
        ) from e


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0):
    """Pad (and truncate) a list of B ragged sequences into one NumPy array [B, T, ...]; same result as Keras.

    Each sequence has T_i steps of identical shape (scalars, or F features). T = ``maxlen``, or the longest
    T_i when None. Longer sequences lose steps at the start ("pre") or end ("post") per ``truncating``;
    shorter ones are filled with ``value`` before ("pre") or after ("post") per ``padding``. Values are
    converted with NumPy's casting to ``dtype`` (floats into "int32" truncate toward zero, as in Keras).
    Runs in NumPy on the host; this is data preparation, not a jit-able op.

    Differences from Keras (the result is otherwise identical, including dtype, for every argument
    combination Keras accepts):

    - ``maxlen=0`` with ``truncating="pre"`` gives an empty [B, 0] array like ``truncating="post"``;
      Keras crashes there (its ``s[-0:]`` keeps the whole sequence).
    - a string ``value`` is accepted with any spelling of the object dtype (``object``, ``"object"``,
      ``"O"``); Keras accepts only the builtin ``object``.
    - ``padding``/``truncating`` are validated even when every sequence is empty.

    Args:
      sequences: sized collection (list, tuple, array) of B sequences, each a list/array [T_i] or [T_i, F].
      maxlen: int T or None (the longest T_i).
      dtype: NumPy dtype of the result; ``object`` for variable-length strings.
      padding: "pre" or "post", where the fill goes.
      truncating: "pre" or "post", where steps are removed from sequences longer than T.
      value: fill value (number, or string with a string/object dtype).

    Returns:
      NumPy array [B, T] + feature shape, of ``dtype``.

    Raises:
      ValueError: bad ``padding``/``truncating``; a sequence that is not a sequence (or is a str);
        mismatched feature shapes; a string ``value`` with a non-string ``dtype``; empty ``sequences``
        with ``maxlen=None``; negative ``maxlen``.
      TypeError: ``maxlen`` not an int; ``dtype`` not a dtype; ``value`` not convertible to ``dtype``.
      OverflowError: an integer that ``dtype`` cannot hold (as NumPy and Keras).

    Keras equivalent: ``keras.utils.pad_sequences`` (same signature and defaults).

    Example::

      >>> jm.pad_sequences([[1], [2, 3], [4, 5, 6]], maxlen=2, padding="post")
      array([[1, 0],
             [2, 3],
             [5, 6]], dtype=int32)
    """
    check_choice("padding", padding, _SIDES)
    check_choice("truncating", truncating, _SIDES)
    if not hasattr(sequences, "__len__"):
        raise ValueError(
            f"`sequences` must be a sized collection such as a list of sequences; received "
            f"{type(sequences).__name__}. Materialise an iterator or generator with list(...)."
        )
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(
            f"`dtype` must be a NumPy dtype such as 'int32', 'float32' or object; received {dtype!r} ({e})."
        ) from e
    if isinstance(value, str) and np_dtype.kind not in "OUS":
        raise ValueError(
            f"`value` is the string {value!r} but `dtype` is {np_dtype}, which cannot hold strings. "
            "Pass dtype=object for variable-length strings, or a numeric `value`."
        )

    lengths, sample_shape, first = [], (), None
    for i, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes)):
            raise ValueError(
                f"`sequences[{i}]` is a {type(seq).__name__} ({seq!r}), not a sequence of tokens. "
                "Split it first, e.g. list(s) or s.split()."
            )
        try:
            lengths.append(len(seq))
        except TypeError:
            raise ValueError(
                f"`sequences[{i}]` must be a sequence (list or array of T_i steps); received "
                f"{type(seq).__name__} {seq!r}. Wrap single steps in a list."
            ) from None
        if first is None and lengths[-1]:
            first, sample_shape = i, _sequence_array(i, seq, None).shape[1:]

    if maxlen is None:
        if not lengths:
            raise ValueError(
                "`maxlen` cannot be inferred from an empty `sequences`; pass maxlen=T to get an array of "
                "shape (0, T)."
            )
        maxlen = max(lengths)
    else:
        maxlen = _check_maxlen(maxlen)

    try:
        out = np.full((len(sequences), maxlen) + sample_shape, value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise _error_kind(e)(
            f"`value` = {value!r} cannot be stored in `dtype` {np_dtype}: {e}. Pass a value that "
            "dtype can represent."
        ) from e

    for i, seq in enumerate(sequences):
        if not lengths[i]:
            continue
        try:
            if truncating == "post" or maxlen == 0:
                kept = seq[:maxlen]
            else:
                kept = seq[-maxlen:]
        except TypeError as e:
            raise TypeError(
                f"`sequences[{i}]` must support slicing (list, tuple or array); received "
                f"{type(seq).__name__}. Convert it with list(...)."
            ) from e
        kept = _sequence_array(i, kept, dtype)
        if kept.shape[1:] != sample_shape:
            raise ValueError(
                f"every step must have the same shape: `sequences[{first}]` has steps of shape "
                f"{sample_shape} but `sequences[{i}]` has {kept.shape[1:]}. Only the time axis T_i may "
                "differ; make every step the same number of features F."
            )
        if padding == "post":
            out[i, : len(kept)] = kept
        else:
            out[i, maxlen - len(kept) :] = kept
    return out


class NotFittedError(ValueError, AttributeError):
    """Raised when a ``MaskedStandardScaler`` is used before ``fit`` (same bases as scikit-learn's)."""


def _resolve_mask(xp, x, mask):
    """The [B, T] mask in ``x``'s array namespace: given, or Masking's zero-sentinel rule on ``x`` itself."""
    if mask is None:
        return xp.any(x != 0.0, axis=-1)
    mask = check_mask(mask, shape_of(x)[:2])
    return mask if xp is jnp else np.asarray(mask)


class MaskedStandardScaler:
    """Standardise each feature with the mean and population std of the **valid** steps only.

    .. math::
       \\mu_f = \\frac{\\sum_{b,t} m\\,x_{btf}}{\\sum m}, \\quad
       \\sigma^2_f = \\frac{\\sum_{b,t} m\\,(x_{btf} - \\mu_f)^2}{\\sum m}, \\quad
       y_{btf} = \\begin{cases} (x_{btf} - \\mu_f) / s_f & m_{bt} \\\\ x_{btf} & \\text{otherwise} \\end{cases}

    with :math:`s_f = \\sigma_f`, or 1 for a (numerically) constant feature, by scikit-learn's rule.

    Why: a plain ``StandardScaler`` sees padding as data, and turns the zero padding into
    :math:`-\\mu/\\sigma \\neq 0`, so ``Masking(0.0)`` no longer finds it and the model trains on padding.
    This scaler leaves padded positions bitwise as they were (NaN and Inf included), so zero padding
    stays zero and Masking still works; better still, keep the mask and pass it explicitly.

    ``mask`` is bool or 0/1 [B, T]. When it is None, ``fit``/``transform`` use
    ``compute_mask(x, 0.0)``'s rule on the ``x`` they receive, i.e. on the **unscaled** data, before any
    scaling could move the padding. ``inverse_transform`` needs the mask: scaled data has no reliable
    sentinel (a valid step equal to the mean scales to all zeros).

    Statistics are computed in float64 with NumPy, like scikit-learn; ``fit`` needs concrete arrays.
    ``transform``/``inverse_transform`` return NumPy for NumPy input and jax for jax input (jit-able),
    in the input's float dtype (integer input becomes float64 / JAX's default float).

    Attributes (after ``fit``): ``mean_`` [F], ``var_`` [F], ``scale_`` [F] (float64 NumPy),
    ``n_samples_seen_`` (number of valid steps), ``n_features_in_`` (F).

    Keras equivalent: none (Keras users apply ``sklearn.preprocessing.StandardScaler`` to
    ``x.reshape(-1, F)``, which counts padding); for valid steps this equals StandardScaler fitted on
    ``x[mask]``.

    Example::

      >>> scaler = jm.MaskedStandardScaler()
      >>> x_scaled = scaler.fit_transform(x_train)          # mask from x_train's zero padding
      >>> x_test_scaled = scaler.transform(x_test, mask_test)
    """

    def __init__(self):
        self.mean_ = None
        self.var_ = None
        self.scale_ = None
        self.n_samples_seen_ = None
        self.n_features_in_ = None

    def fit(self, x, mask=None):
        """Fit ``mean_``, ``var_``, ``scale_`` on the valid steps of x [B, T, F]; mask [B, T] or None.

        Raises:
          ValueError: bad rank or mask shape, no valid step, or NaN/Inf at a valid step.
          TypeError: non-numeric x, or traced (jit) inputs.
        """
        if isinstance(x, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
            raise TypeError(
                "MaskedStandardScaler.fit needs concrete arrays but received a traced value (inside jax.jit "
                "or vmap). Call fit outside the transformation; transform and inverse_transform are jit-able."
            )
        values = np.asarray(self._check_x(x))
        keep = _resolve_mask(np, values, mask)
        valid = values[keep]
        if valid.shape[0] == 0:
            raise ValueError(
                "`mask` marks no valid step, so there is nothing to fit a mean and std on. Pass data with at "
                "least one valid step (mask True)."
            )
        bad = ~np.isfinite(values) & keep[..., None]
        if bad.any():
            b, t, f = np.argwhere(bad)[0]
            raise ValueError(
                f"`x` has the non-finite value {values[b, t, f]} at the valid step (b, t) = ({b}, {t}), "
                f"feature {f}. Mask that step out or impute it before fitting."
            )
        valid = valid.astype(np.float64)
        n = valid.shape[0]
        mean = valid.mean(axis=0)
        var = ((valid - mean) ** 2).mean(axis=0)
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        self.mean_, self.var_ = mean, var
        self.scale_ = np.where(constant, 1.0, np.sqrt(var))
        self.n_samples_seen_, self.n_features_in_ = n, values.shape[-1]
        return self

    def transform(self, x, mask=None):
        """Scale the valid steps of x [B, T, F]: (x - mean_) / scale_; padded positions are returned unchanged."""
        return self._apply(x, mask, inverse=False, method="transform")

    def fit_transform(self, x, mask=None):
        """``fit(x, mask)`` then ``transform(x, mask)``; both use the same mask (from the unscaled x if None)."""
        return self.fit(x, mask).transform(x, mask)

    def inverse_transform(self, x, mask=None):
        """Undo ``transform`` on the valid steps of x [B, T, F]: x * scale_ + mean_; padding unchanged.

        Raises:
          ValueError: ``mask`` is None (scaled data has no reliable sentinel; pass the transform mask).
        """
        if mask is None:
            raise ValueError(
                "`mask` is required for inverse_transform: in scaled data a valid step equal to the mean is "
                "all zeros and would pass for padding. Pass the mask used in transform, e.g. "
                "jm.compute_mask(x_unscaled)."
            )
        return self._apply(x, mask, inverse=True, method="inverse_transform")

    def _check_x(self, x):
        check_rank("x", x, 3, "[B, T, F]", hint="Add a feature axis with x[..., None] for one feature per step.")
        dtype = _dtype_of(x)
        if dtype.kind not in "biuf":
            raise TypeError(f"`x` must be real numbers; received dtype {dtype}. Convert with x.astype(np.float32).")
        return x

    def _apply(self, x, mask, *, inverse: bool, method: str):
        if self.mean_ is None:
            raise NotFittedError(
                f"This MaskedStandardScaler is not fitted yet; call fit(x, mask) before {method}."
            )
        x = self._check_x(x)
        xp = jnp if isinstance(x, jax.Array) else np
        x = xp.asarray(x)
        features = x.shape[-1]
        if features != self.n_features_in_:
            raise ValueError(
                f"`x` has F = {features} features but this MaskedStandardScaler was fitted with "
                f"F = {self.n_features_in_}. Pass data with the fitted features, or fit again."
            )
        keep = _resolve_mask(xp, x, mask)[..., None]
        if x.dtype.kind != "f":
            x = x.astype(jnp.result_type(float) if xp is jnp else np.float64)
        mean = xp.asarray(self.mean_, dtype=x.dtype).reshape(1, 1, features)
        scale = xp.asarray(self.scale_, dtype=x.dtype).reshape(1, 1, features)
        safe = xp.where(keep, x, xp.zeros((), x.dtype))
        scaled = safe * scale + mean if inverse else (safe - mean) / scale
        return xp.where(keep, scaled, x)
