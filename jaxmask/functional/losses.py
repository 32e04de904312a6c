"""Keras 3 loss functions as pure JAX functions returning unreduced values.

Each function is a transcription of ``keras/src/losses/losses.py`` (Keras 3.15) with the cross-entropy
kernels of ``keras/src/backend/jax/nn.py``: same names, same argument order ``(y_true, y_pred)``, same
reduction over the last axis (a mean for most losses, a sum for the cross-entropies and
``kl_divergence``), same clipping with ``EPSILON = 1e-7``. Values at every position are returned;
masking, weighting and the reduction to a scalar happen in one place, :func:`jaxmask.masked_loss`.

Keras' TensorFlow backend computes binary/categorical cross-entropy from the logits when ``y_pred`` is
the output of a sigmoid/softmax activation (the tensor carries ``_keras_logits``). A JAX array carries no
such attribute, so the cross-entropies take the logits explicitly: pass the pre-activation values as
``logits=`` (``y_pred`` must then equal ``sigmoid(logits)`` / ``softmax(logits)``) to get the TF
backend's numbers; leave it out to get the JAX backend's (clipped probabilities).

Differences from Keras that are deliberate, all in places where Keras would return NaN or an
infinite gradient, never in a finite value:

* ``cosine_similarity`` normalises with a ``where`` so a zero vector (padding) has a finite gradient, not NaN.
* ``sparse_categorical_crossentropy(ignore_class=...)`` feeds a uniform distribution (instead of
  Keras' all-zero row, ``0 / 0``) into the kernel at ignored positions; their value is 0 either way.
* ``circle`` guards ``logsumexp`` over an empty row, so rows without positives have gradient 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

EPSILON = 1e-7
"""``keras.backend.epsilon()``: the clipping constant of every loss here."""


class Values(NamedTuple):
    """Per-position loss values and the mask the loss itself attaches (Keras' ``set_keras_mask`` on the
    result: ``sparse_categorical_crossentropy(ignore_class=...)`` and ``circle``), or None."""

    values: jax.Array
    mask: jax.Array | None


# ----------------------------------------------------------------------------------------------- helpers


def _floats(y_true, y_pred):
    """``y_pred`` as a float array (float32 unless already floating) and ``y_true`` cast to its dtype."""
    y_pred = jnp.asarray(y_pred)
    if not jnp.issubdtype(y_pred.dtype, jnp.floating):
        y_pred = y_pred.astype(jnp.float32)
    return jnp.asarray(y_true).astype(y_pred.dtype), y_pred


def squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """Keras' ``squeeze_or_expand_to_same_rank``: fix a rank difference of exactly 1 with a trailing 1."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = jnp.expand_dims(x2, -1)
        else:
            x1 = jnp.squeeze(x1, -1)
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = jnp.expand_dims(x1, -1)
        else:
            x2 = jnp.squeeze(x2, -1)
    return x1, x2


def _smooth_labels(y_true, label_smoothing: float, num_classes: int):
    """Keras' label smoothing: y (1 - s) + s / C (C = 2 for binary targets)."""
    return y_true * (1.0 - label_smoothing) + (label_smoothing / num_classes)


def _expand_along(v, axis: int, ndim: int):
    """Reshape a 1-D per-class vector so it broadcasts along ``axis`` of an ``ndim`` array (no rank promotion)."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _l2_normalize(x, axis):
    """``keras.ops.normalize(x, order=2)``: ``x * min(rsqrt(sum(x**2)), 1/eps)``, finite gradient at x = 0."""
    square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    positive = square_sum > 0
    inv_norm = jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, square_sum, 1.0)), jnp.inf)
    return x * jnp.minimum(inv_norm, 1.0 / EPSILON)


def _binary_kernel(target, output, from_logits):
    """``keras/src/backend/jax/nn.py::binary_crossentropy`` (element-wise, no reduction)."""
    if from_logits:
        return -1.0 * target * jax.nn.log_sigmoid(output) - (1.0 - target) * jax.nn.log_sigmoid(-output)
    output = jnp.clip(output, EPSILON, 1.0 - EPSILON)
    bce = target * jnp.log(output)
    bce = bce + (1.0 - target) * jnp.log(1.0 - output)
    return -bce


def _categorical_log_prob(output, from_logits, axis):
    """Log-probabilities as the JAX backend forms them: log_softmax, or normalise, clip and log."""
    if from_logits:
        return jax.nn.log_softmax(output, axis=axis)
    output = output / jnp.sum(output, axis, keepdims=True)
    output = jnp.clip(output, EPSILON, 1.0 - EPSILON)
    return jnp.log(output)


def _check_logits(logits, y_pred, name):
    logits = jnp.asarray(logits).astype(y_pred.dtype)
    if logits.shape != y_pred.shape:
        raise ValueError(
            f"`logits` of {name} must have the shape of `y_pred` {tuple(y_pred.shape)} (y_pred = activation(logits)); "
            f"received shape {tuple(logits.shape)}. Pass the pre-activation output of the same layer."
        )
    return logits


def _check_axis(axis):
    if isinstance(axis, bool):
        raise ValueError(f"`axis` must be of type `int`. Received: axis={axis} of type {type(axis)}")


# ------------------------------------------------------------------------------------------ cross-entropy


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *, logits=None):
    """Binary cross-entropy, averaged over ``axis``.

    .. math:: \\ell = \\operatorname{mean}_{axis}\\big(-y \\log p - (1 - y) \\log(1 - p)\\big),
        \\quad p = \\operatorname{clip}(y_{pred}, \\epsilon, 1 - \\epsilon),
        \\quad y = y_{true}(1 - s) + s / 2

    Args:
      y_true: [..., K] targets in [0, 1].
      y_pred: [..., K] probabilities, or logits when ``from_logits=True``.
      from_logits: ``y_pred`` holds logits.
      label_smoothing: s in [0, 1]; squeezes targets towards 0.5.
      axis: the axis averaged over.
      logits: optional [..., K] pre-activation values with ``y_pred == sigmoid(logits)``: the value is then
        computed from them, as Keras' TF backend does for the output of a sigmoid activation.

    Returns:
      [...] loss values (``y_pred``'s shape without ``axis``).

    Keras equivalent: ``keras.losses.binary_crossentropy``.

    Example:
      >>> binary_crossentropy(jnp.array([[0., 1.]]), jnp.array([[0.6, 0.4]]))  # [0.916]
    """
    y_true, y_pred = _floats(y_true, y_pred)
    if label_smoothing:
        y_true = _smooth_labels(y_true, label_smoothing, 2)
    if logits is not None:
        y_pred, from_logits = _check_logits(logits, y_pred, "binary_crossentropy"), True
    return jnp.mean(_binary_kernel(y_true, y_pred, from_logits), axis=axis)


def binary_focal_crossentropy(
    y_true,
    y_pred,
    apply_class_balancing=False,
    alpha=0.25,
    gamma=2.0,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    logits=None,
):
    """Binary focal cross-entropy (Lin et al., 2018), averaged over ``axis``.

    .. math:: \\ell = \\operatorname{mean}_{axis}\\big(w\\,(1 - p_t)^{\\gamma}\\,\\mathrm{bce}\\big),
        \\quad p_t = y p + (1 - y)(1 - p), \\quad w = y\\alpha + (1 - y)(1 - \\alpha) \\text{ if balancing}

    The ``bce`` term is computed from logits when ``from_logits=True`` or ``logits=`` is given: Keras' TF
    backend does both (its sigmoid attaches ``_keras_logits``); the focal factor always uses probabilities.

    Args:
      y_true: [..., K] targets in [0, 1].
      y_pred: [..., K] probabilities, or logits when ``from_logits=True``.
      apply_class_balancing: weight class 1 by alpha and class 0 by 1 - alpha.
      alpha: balancing factor for class 1.
      gamma: focusing parameter; 0 gives binary cross-entropy.
      from_logits: ``y_pred`` holds logits.
      label_smoothing: s in [0, 1].
      axis: the axis averaged over.
      logits: optional [..., K] values with ``y_pred == sigmoid(logits)`` (ignored when ``from_logits``).

    Returns:
      [...] loss values.

    Keras equivalent: ``keras.losses.binary_focal_crossentropy``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    if label_smoothing:
        y_true = _smooth_labels(y_true, label_smoothing, 2)
    if from_logits:
        logits, y_pred = y_pred, jax.nn.sigmoid(y_pred)
    elif logits is not None:
        logits = _check_logits(logits, y_pred, "binary_focal_crossentropy")
    if logits is not None:
        bce = _binary_kernel(y_true, logits, True)
    else:
        bce = _binary_kernel(y_true, y_pred, False)
    p_t = y_true * y_pred + (1 - y_true) * (1 - y_pred)
    focal_bce = jnp.power(1.0 - p_t, gamma) * bce
    if apply_class_balancing:
        weight = y_true * alpha + (1 - y_true) * (1 - alpha)
        focal_bce = weight * focal_bce
    return jnp.mean(focal_bce, axis=axis)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *, logits=None):
    """Categorical cross-entropy over the class axis ``axis``.

    .. math:: \\ell = -\\sum_{c} y_c \\log \\operatorname{clip}\\big(p_c / \\textstyle\\sum_k p_k, \\epsilon, 1 - \\epsilon\\big)
        \\quad (\\text{or } \\log\\operatorname{softmax} \\text{ of logits}), \\quad y = y_{true}(1 - s) + s / C

    Args:
      y_true: [..., C] one-hot (or soft) targets.
      y_pred: [..., C] probabilities (renormalised to sum to 1), or logits when ``from_logits=True``.
      from_logits: ``y_pred`` holds logits.
      label_smoothing: s in [0, 1]; C is ``y_true.shape[-1]`` as in Keras.
      axis: the class axis.
      logits: optional [..., C] values with ``y_pred == softmax(logits)``: computed from them, as Keras'
        TF backend does for the output of a softmax activation.

    Returns:
      [...] loss values.

    Keras equivalent: ``keras.losses.categorical_crossentropy``.
    """
    _check_axis(axis)
    y_true, y_pred = _floats(y_true, y_pred)
    if label_smoothing:
        y_true = _smooth_labels(y_true, label_smoothing, y_true.shape[-1])
    if logits is not None:
        y_pred, from_logits = _check_logits(logits, y_pred, "categorical_crossentropy"), True
    return -jnp.sum(y_true * _categorical_log_prob(y_pred, from_logits, axis), axis=axis)


def categorical_focal_crossentropy(
    y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1
):
    """Categorical focal cross-entropy, summed over the class axis.

    .. math:: \\ell = \\sum_c \\alpha\\,(1 - p_c)^{\\gamma}\\,(-y_c \\log p_c),
        \\quad p = \\operatorname{clip}(\\hat p / \\textstyle\\sum \\hat p, \\epsilon, 1 - \\epsilon)

    Args:
      y_true: [..., C] one-hot targets.
      y_pred: [..., C] probabilities, or logits when ``from_logits=True`` (softmax is applied).
      alpha: scalar or [C] per-class weight.
      gamma: focusing parameter.
      from_logits: ``y_pred`` holds logits.
      label_smoothing: s in [0, 1].
      axis: the class axis.

    Returns:
      [...] loss values.

    Keras equivalent: ``keras.losses.categorical_focal_crossentropy``.
    """
    _check_axis(axis)
    y_true, y_pred = _floats(y_true, y_pred)
    if label_smoothing:
        y_true = _smooth_labels(y_true, label_smoothing, y_true.shape[-1])
    if from_logits:
        y_pred = jax.nn.softmax(y_pred, axis=axis)
    output = y_pred / jnp.sum(y_pred, axis=axis, keepdims=True)
    output = jnp.clip(output, EPSILON, 1.0 - EPSILON)
    cce = -y_true * jnp.log(output)
    alpha = jnp.asarray(alpha, dtype=y_pred.dtype)
    if alpha.ndim == 1:
        alpha = _expand_along(alpha, axis, y_pred.ndim)
    weighting_factor = jnp.power(1.0 - output, gamma) * alpha
    return jnp.sum(weighting_factor * cce, axis=axis)


def _sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1, logits=None):
    y_pred = jnp.asarray(y_pred)
    if not jnp.issubdtype(y_pred.dtype, jnp.floating):
        y_pred = y_pred.astype(jnp.float32)
    y_true = jnp.asarray(y_true)
    if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
        y_true = jnp.squeeze(y_true, axis=axis)
    class_axis = axis % y_pred.ndim
    valid = None
    if ignore_class is not None:
        valid = y_true != jnp.asarray(ignore_class).astype(y_true.dtype)
        y_true = jnp.where(valid, y_true, 0)
        # Keras zeroes the ignored rows (0 / 0 in the JAX kernel: NaN gradients); a uniform row gives the
        # same discarded value with finite gradients. Keras' `where` also drops `_keras_logits`, so the TF
        # backend takes the probability path here: so do we.
        y_pred = jnp.where(jnp.expand_dims(valid, class_axis), y_pred, 1.0)
        logits = None
    if logits is not None:
        y_pred, from_logits = _check_logits(logits, y_pred, "sparse_categorical_crossentropy"), True
    log_prob = _categorical_log_prob(y_pred, from_logits, axis)
    target = jax.nn.one_hot(y_true.astype(jnp.int32), y_pred.shape[axis], axis=axis, dtype=log_prob.dtype)
    res = -jnp.sum(target * log_prob, axis=axis)
    if valid is not None:
        res = jnp.where(valid, res, 0.0)
    return Values(res, valid)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1, *, logits=None):
    """Categorical cross-entropy with integer targets.

    .. math:: \\ell = -\\log \\operatorname{clip}\\big(p_{y} / \\textstyle\\sum_k p_k, \\epsilon, 1 - \\epsilon\\big)
        \\quad (\\text{or } \\log\\operatorname{softmax}(z)_y \\text{ from logits})

    Keras' TF kernel clips before normalising (``-log clip(p_y) + log sum_k clip(p_k)``); the two agree
    whenever ``y_pred`` sums to 1 and no probability is below 1e-7.

    Args:
      y_true: [...] or [..., 1] integer class ids (floats are truncated).
      y_pred: [..., C] probabilities, or logits when ``from_logits=True``.
      from_logits: ``y_pred`` holds logits.
      ignore_class: a class id whose positions give 0 and are masked out of the reduction by
        :func:`jaxmask.masked_loss` (as Keras attaches a mask to the result).
      axis: the class axis.
      logits: optional [..., C] values with ``y_pred == softmax(logits)``; ignored with ``ignore_class``,
        as on Keras' TF backend.

    Returns:
      [...] loss values (0 at ignored positions).

    Keras equivalent: ``keras.losses.sparse_categorical_crossentropy``.
    """
    return _sparse_categorical_crossentropy(y_true, y_pred, from_logits, ignore_class, axis, logits).values


def categorical_generalized_cross_entropy(y_true, y_pred, q):
    """Generalized cross-entropy (Zhang & Sabuncu, 2018) with integer targets.

    .. math:: \\ell = (1 - p_y^{\\,q}) / q

    Args:
      y_true: [...] integer class ids (a trailing axis of 1 is squeezed).
      y_pred: [..., C] probabilities.
      q: noise parameter in (0, 1).

    Returns:
      [...] loss values.

    Keras equivalent: ``keras.losses.categorical_generalized_cross_entropy``. Keras one-hot encodes a
    [..., 1] target to [..., 1, C] and broadcasts it against [..., C]; here it is squeezed first.
    """
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = jnp.squeeze(y_true, -1)
    one_hot = jax.nn.one_hot(y_true.astype(jnp.int32), y_pred.shape[-1], dtype=y_pred.dtype)
    p = jnp.sum(y_pred * one_hot, axis=-1)
    return (1 - jnp.power(p, q)) / q


# ---------------------------------------------------------------------------------------------- regression


def mean_squared_error(y_true, y_pred):
    """Mean squared error over the last axis: :math:`\\ell = \\operatorname{mean}((y_{true} - y_{pred})^2)`.

    Args: y_true, y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.mean_squared_error``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    return jnp.mean(jnp.square(y_true - y_pred), axis=-1)


def mean_absolute_error(y_true, y_pred):
    """Mean absolute error over the last axis: :math:`\\ell = \\operatorname{mean}|y_{true} - y_{pred}|`.

    Args: y_true, y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.mean_absolute_error``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    return jnp.mean(jnp.abs(y_true - y_pred), axis=-1)


def mean_absolute_percentage_error(y_true, y_pred):
    """Mean absolute percentage error: :math:`\\ell = 100\\,\\operatorname{mean}|y_t - y_p| / \\max(|y_t|, \\epsilon)`.

    Args: y_true, y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.mean_absolute_percentage_error``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    diff = jnp.abs((y_true - y_pred) / jnp.maximum(jnp.abs(y_true), EPSILON))
    return 100.0 * jnp.mean(diff, axis=-1)


def mean_squared_logarithmic_error(y_true, y_pred):
    """Mean squared log error: :math:`\\ell = \\operatorname{mean}(\\log(\\max(y_p, \\epsilon) + 1) - \\log(\\max(y_t, \\epsilon) + 1))^2`.

    Args: y_true, y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.mean_squared_logarithmic_error``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    first_log = jnp.log(jnp.maximum(y_pred, EPSILON) + 1.0)
    second_log = jnp.log(jnp.maximum(y_true, EPSILON) + 1.0)
    return jnp.mean(jnp.square(first_log - second_log), axis=-1)


def huber(y_true, y_pred, delta=1.0):
    """Huber loss over the last axis: :math:`x^2/2` for :math:`|x| \\le \\delta`, else :math:`\\delta|x| - \\delta^2/2`.

    Args: y_true, y_pred: [..., K]; delta: the switch point. Returns: [...].

    Keras equivalent: ``keras.losses.huber``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    delta = jnp.asarray(delta, dtype=y_pred.dtype)
    error = y_pred - y_true
    abs_error = jnp.abs(error)
    half = jnp.asarray(0.5, dtype=y_pred.dtype)
    return jnp.mean(
        jnp.where(abs_error <= delta, half * jnp.square(error), delta * abs_error - half * jnp.square(delta)),
        axis=-1,
    )


def log_cosh(y_true, y_pred):
    """Log-cosh over the last axis: :math:`\\ell = \\operatorname{mean}(x + \\operatorname{softplus}(-2x) - \\log 2)`.

    Args: y_true, y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.log_cosh``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    x = y_pred - y_true
    log2 = jnp.asarray(jnp.log(2.0), dtype=y_pred.dtype)
    return jnp.mean(x + jax.nn.softplus(x * -2.0) - log2, axis=-1)


def cosine_similarity(y_true, y_pred, axis=-1):
    """Negative cosine similarity along ``axis``: :math:`\\ell = -\\sum \\hat y_{true} \\hat y_{pred}` (L2-normalised).

    A zero vector gives 0 with a finite gradient (Keras: NaN gradient).

    Args: y_true, y_pred: [..., K]; axis: the axis compared. Returns: [...].

    Keras equivalent: ``keras.losses.cosine_similarity``.
    """
    y_true, y_pred = squeeze_or_expand_to_same_rank(*_floats(y_true, y_pred))
    return -jnp.sum(_l2_normalize(y_true, axis) * _l2_normalize(y_pred, axis), axis=axis)


def kl_divergence(y_true, y_pred):
    """Kullback-Leibler divergence summed over the last axis, inputs clipped to [eps, 1].

    .. math:: \\ell = \\sum y \\log(y / p)

    Args: y_true, y_pred: [..., C] distributions. Returns: [...].

    Keras equivalent: ``keras.losses.kl_divergence``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    y_true = jnp.clip(y_true, EPSILON, 1)
    y_pred = jnp.clip(y_pred, EPSILON, 1)
    return jnp.sum(y_true * jnp.log(y_true / y_pred), axis=-1)


def poisson(y_true, y_pred):
    """Poisson loss over the last axis: :math:`\\ell = \\operatorname{mean}(y_p - y_t \\log(y_p + \\epsilon))`.

    Args: y_true, y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.poisson``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    return jnp.mean(y_pred - y_true * jnp.log(y_pred + EPSILON), axis=-1)


# ------------------------------------------------------------------------------------------------- hinge


def _convert_binary_labels_to_hinge(y_true):
    """Keras: 0/1 labels become -1/1, but only when *every* label in the batch is 0 or 1."""
    is_binary = jnp.all((y_true == 0) | (y_true == 1))
    return jnp.where(is_binary, 2.0 * y_true - 1.0, y_true)


def hinge(y_true, y_pred):
    """Hinge loss over the last axis: :math:`\\ell = \\operatorname{mean}\\max(1 - y_t y_p, 0)`.

    0/1 labels are turned into -1/1 when all labels of the batch (padding included) are 0 or 1.

    Args: y_true: [..., K] labels in {-1, 1} or {0, 1}; y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.hinge``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    y_true = _convert_binary_labels_to_hinge(y_true)
    return jnp.mean(jnp.maximum(1.0 - y_true * y_pred, 0.0), axis=-1)


def squared_hinge(y_true, y_pred):
    """Squared hinge loss over the last axis: :math:`\\ell = \\operatorname{mean}\\max(1 - y_t y_p, 0)^2`.

    Args: y_true: [..., K] labels in {-1, 1} or {0, 1}; y_pred: [..., K]. Returns: [...].

    Keras equivalent: ``keras.losses.squared_hinge``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    y_true = _convert_binary_labels_to_hinge(y_true)
    return jnp.mean(jnp.square(jnp.maximum(1.0 - y_true * y_pred, 0.0)), axis=-1)


def categorical_hinge(y_true, y_pred):
    """Categorical hinge: :math:`\\ell = \\max(\\max_c (1 - y_c) p_c - \\sum_c y_c p_c + 1, 0)`.

    Args: y_true: [..., C] one-hot; y_pred: [..., C]. Returns: [...].

    Keras equivalent: ``keras.losses.categorical_hinge``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    pos = jnp.sum(y_true * y_pred, axis=-1)
    neg = jnp.max((1.0 - y_true) * y_pred, axis=-1)
    return jnp.maximum(neg - pos + 1.0, 0.0)


# ------------------------------------------------------------------------------------------- segmentation


def dice(y_true, y_pred, axis=None):
    """Dice loss: :math:`\\ell = 1 - 2\\sum y_t y_p / (\\sum y_t + \\sum y_p + \\epsilon)` over ``axis``.

    Args: y_true, y_pred: [..., K]; axis: int or tuple; None reduces everything to a scalar (Keras default).
    Returns: y_pred's shape without ``axis``.

    Keras equivalent: ``keras.losses.dice``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    intersection = jnp.sum(y_true * y_pred, axis=axis)
    return 1 - 2.0 * intersection / (jnp.sum(y_true, axis=axis) + jnp.sum(y_pred, axis=axis) + EPSILON)


def tversky(y_true, y_pred, alpha=0.5, beta=0.5, axis=None):
    """Tversky loss: :math:`\\ell = 1 - TP / (TP + \\alpha FP + \\beta FN + \\epsilon)` over ``axis``.

    Args: y_true, y_pred: [..., K]; alpha: false-positive weight; beta: false-negative weight; axis: as in
    :func:`dice`. Returns: y_pred's shape without ``axis``.

    Keras equivalent: ``keras.losses.tversky``.
    """
    y_true, y_pred = _floats(y_true, y_pred)
    intersection = jnp.sum(y_true * y_pred, axis=axis)
    fp = jnp.sum((1 - y_pred) * y_true, axis=axis)
    fn = jnp.sum(y_pred * (1 - y_true), axis=axis)
    return 1 - intersection / (intersection + fp * alpha + fn * beta + EPSILON)


# --------------------------------------------------------------------------------------------- similarity


def _masked_logsumexp(x, where):
    """``logsumexp(where(where, x, -inf), axis=1)`` with a finite gradient for rows without any True."""
    any_ = jnp.any(where, axis=1)
    safe = jnp.where(where, x, -jnp.inf)
    safe = jnp.where(any_[:, None], safe, 0.0)
    return jnp.where(any_, jax.nn.logsumexp(safe, axis=1), -jnp.inf)


def _circle(y_true, y_pred, ref_labels=None, ref_embeddings=None, remove_diagonal=True, gamma=80, margin=0.4):
    y_pred = jnp.asarray(y_pred)
    if not jnp.issubdtype(y_pred.dtype, jnp.floating):
        y_pred = y_pred.astype(jnp.float32)
    y_true = jnp.asarray(y_true).astype(jnp.int32)
    ref_embeddings = y_pred if ref_embeddings is None else jnp.asarray(ref_embeddings).astype(y_pred.dtype)
    ref_labels = y_true if ref_labels is None else jnp.asarray(ref_labels).astype(jnp.int32)
    optim_pos, optim_neg = margin, 1 + margin
    delta_pos, delta_neg = margin, 1 - margin
    distances = jnp.maximum(1 - y_pred @ ref_embeddings.T, 0.0)
    positive = y_true.reshape(-1, 1) == ref_labels.reshape(-1, 1).T
    negative = ~positive
    if remove_diagonal:
        positive = positive & ~jnp.eye(y_true.size, ref_labels.size, dtype=bool)
    pos_weights = jnp.maximum((optim_pos + distances) * positive.astype(distances.dtype), 0.0)
    neg_weights = jnp.maximum((optim_neg - distances) * negative.astype(distances.dtype), 0.0)
    pos_wdists = -1 * gamma * pos_weights * (delta_pos - distances)
    neg_wdists = gamma * neg_weights * (delta_neg - distances)
    loss = jax.nn.softplus(_masked_logsumexp(pos_wdists, positive) + _masked_logsumexp(neg_wdists, negative))
    return Values(loss, loss > 0)


def circle(y_true, y_pred, ref_labels=None, ref_embeddings=None, remove_diagonal=True, gamma=80, margin=0.4):
    """Circle loss (Sun et al., 2020) on L2-normalised embeddings.

    .. math:: \\ell_i = \\operatorname{softplus}\\Big(\\operatorname{lse}_{j \\in P_i} -\\gamma a^p_{ij}(\\Delta_p - d_{ij})
        + \\operatorname{lse}_{j \\in N_i} \\gamma a^n_{ij}(\\Delta_n - d_{ij})\\Big), \\quad d = \\max(1 - y_{pred} r^\\top, 0)

    Samples interact (every other sample is a reference), so a mask only removes a sample from the
    reduction, as in Keras. Keras also masks out every sample whose loss is 0 (:func:`jaxmask.masked_loss`
    does the same).

    Args:
      y_true: [B] integer labels.
      y_pred: [B, D] L2-normalised embeddings.
      ref_labels: [R] labels of the references (default ``y_true``).
      ref_embeddings: [R, D] references (default ``y_pred``).
      remove_diagonal: drop self-similarity from the positives.
      gamma: scale.
      margin: relaxation.

    Returns:
      [B] loss values.

    Keras equivalent: ``keras.losses.circle``.
    """
    return _circle(y_true, y_pred, ref_labels, ref_embeddings, remove_diagonal, gamma, margin).values
