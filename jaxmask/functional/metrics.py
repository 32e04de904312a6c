"""Keras-exact metric math: per-step metric values, confusion counts and the AUC of Keras 3.

Every function here is pure and jit-able. The last axis of ``y_pred`` is the channel axis C, so a
metric value is one number per step: ``y_pred`` [B, T, C] gives values [B, T], ``y_pred`` [B, C]
gives [B]. A binary sequence output is [B, T, 1], as Keras' ``Dense(1)`` makes it. Masks, sample
weights and accumulation live in :mod:`jaxmask.metrics`; these functions never see a mask.

Label layouts, as in Keras (``squeeze_or_expand_to_same_rank``): dense metrics (accuracy,
binary_accuracy, mean_squared_error, mean_absolute_error, confusion counts) take ``y_true`` of
``y_pred``'s shape, or without the trailing axis when C == 1; one-hot metrics (categorical_accuracy,
top_k_categorical_accuracy) take ``y_true`` of ``y_pred``'s shape; sparse metrics take integer
labels [B, T] or [B, T, 1] (class ids stored as floats are accepted, as in Keras).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def shape_error(fn: str, y_true_shape: tuple, y_pred_shape: tuple, layout: str) -> ValueError:
    """The one message for a ``y_true`` that does not fit ``y_pred``."""
    return ValueError(
        f"{fn}: `y_true` must have {layout}; received y_true.shape={tuple(y_true_shape)}, "
        f"y_pred.shape={tuple(y_pred_shape)}. Check that the labels belong to these predictions "
        "(one-hot labels need categorical_*, integer labels need sparse_*)."
    )


def align_dense(y_true, y_pred, fn: str) -> tuple[Array, Array]:
    """Give ``y_true`` the shape of ``y_pred`` by adding or dropping one trailing axis of size 1.

    Keras' ``squeeze_or_expand_to_same_rank``; any other mismatch is a ``ValueError`` (Keras would
    broadcast silently).
    """
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    elif y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape != y_pred.shape:
        raise shape_error(fn, y_true.shape, y_pred.shape, f"the shape of `y_pred` {y_pred.shape}")
    return y_true, y_pred


def align_sparse(y_true, y_pred, fn: str) -> tuple[Array, Array]:
    """Integer labels [...] or [..., 1] for scores [..., C]; returns labels of shape [...]."""
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape != y_pred.shape[:-1]:
        steps = y_pred.shape[:-1]
        raise shape_error(fn, y_true.shape, y_pred.shape, f"shape {steps} or {steps + (1,)} (integer class ids)")
    return y_true, y_pred


def align_one_hot(y_true, y_pred, fn: str) -> tuple[Array, Array]:
    """One-hot (or probability) labels of exactly ``y_pred``'s shape [..., C]."""
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise shape_error(fn, y_true.shape, y_pred.shape, f"the shape of `y_pred` {y_pred.shape} (one-hot labels)")
    return y_true, y_pred


def _float(x: Array) -> Array:
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def divide_no_nan(x: Array, y: Array) -> Array:
    """``x / y`` with 0 wherever ``y == 0`` (TF's ``divide_no_nan``, Keras ``ops.divide_no_nan``)."""
    zero = y == 0
    return jnp.where(zero, jnp.zeros_like(x), x / jnp.where(zero, jnp.ones_like(y), y))


# --------------------------------------------------------------------------------------------------
# Per-step values: [..., C] in, [...] out
# --------------------------------------------------------------------------------------------------


def accuracy(y_true, y_pred) -> Array:
    """Exact equality, averaged over the channel axis.

    .. math:: v = \\tfrac{1}{C} \\sum_c [y\\_true_c = y\\_pred_c]

    Args:
      y_true: [..., C], or [...] when C == 1.
      y_pred: [..., C].

    Returns:
      float32 [...].

    Keras equivalent: ``keras.metrics.accuracy`` (what ``keras.metrics.get("accuracy")`` returns; the
    "accuracy" string in ``compile`` is resolved by shape instead, see ``jm.metrics.resolve``).
    """
    y_true, y_pred = align_dense(y_true, y_pred, "accuracy")
    return jnp.mean((y_true.astype(y_pred.dtype) == y_pred).astype(jnp.float32), axis=-1)


def binary_accuracy(y_true, y_pred, *, threshold: float = 0.5) -> Array:
    """Share of channels where ``y_pred > threshold`` equals the label.

    .. math:: v = \\tfrac{1}{C} \\sum_c [y\\_true_c = [y\\_pred_c > \\theta]]

    The comparison is Keras': the prediction is cast to the label dtype and compared exactly, so a
    soft label such as 0.7 never matches.

    Args:
      y_true: [..., C] 0/1 labels, or [...] when C == 1.
      y_pred: [..., C] probabilities (or logits with ``threshold=0``).
      threshold: strictly greater counts as 1.

    Returns:
      float32 [...].

    Keras equivalent: ``keras.metrics.binary_accuracy(y_true, y_pred, threshold)``.
    """
    y_true, y_pred = align_dense(y_true, y_pred, "binary_accuracy")
    hit = (y_pred > threshold).astype(y_true.dtype) == y_true
    return jnp.mean(hit.astype(jnp.float32), axis=-1)


def categorical_accuracy(y_true, y_pred) -> Array:
    """``argmax(y_true) == argmax(y_pred)`` (first index wins ties).

    Args:
      y_true: [..., C] one-hot labels.
      y_pred: [..., C] scores.

    Returns:
      float32 [...].

    Keras equivalent: ``keras.metrics.categorical_accuracy``.
    """
    y_true, y_pred = align_one_hot(y_true, y_pred, "categorical_accuracy")
    return (jnp.argmax(y_true, axis=-1) == jnp.argmax(y_pred, axis=-1)).astype(jnp.float32)


def sparse_categorical_accuracy(y_true, y_pred) -> Array:
    """``y_true == argmax(y_pred)``, compared in ``y_pred``'s float dtype as Keras does (a label 2.5
    never matches).

    Args:
      y_true: [...] or [..., 1] class ids.
      y_pred: [..., C] scores.

    Returns:
      float32 [...].

    Keras equivalent: ``keras.metrics.sparse_categorical_accuracy``.
    """
    y_true, y_pred = align_sparse(y_true, y_pred, "sparse_categorical_accuracy")
    y_pred = _float(y_pred)
    predicted = jnp.argmax(y_pred, axis=-1).astype(y_pred.dtype)
    return (y_true.astype(y_pred.dtype) == predicted).astype(jnp.float32)


def in_top_k(targets, predictions, k: int) -> Array:
    """Whether the score of class ``targets`` is among the ``k`` largest of ``predictions``.

    TF's ``in_top_k``: ties at the boundary all count as in the top k (rank = number of strictly
    larger scores), and a row with a non-finite score or an out-of-range target is ``False``.

    Args:
      targets: int [...].
      predictions: [..., C].
      k: number of top classes.

    Returns:
      bool [...].
    """
    num_classes = predictions.shape[-1]
    in_range = (targets >= 0) & (targets < num_classes)
    safe = jnp.clip(targets, 0, num_classes - 1).astype(jnp.int32)
    at_target = jnp.take_along_axis(predictions, safe[..., None], axis=-1)
    larger = jnp.sum((predictions > at_target).astype(jnp.int32), axis=-1)
    finite = jnp.all(jnp.isfinite(predictions), axis=-1)
    return in_range & finite & (larger < k)


def top_k_categorical_accuracy(y_true, y_pred, *, k: int = 5) -> Array:
    """Whether ``argmax(y_true)`` is among the top ``k`` scores (ties count as in, as in TF).

    Args:
      y_true: [..., C] one-hot labels.
      y_pred: [..., C] scores.
      k: number of top classes.

    Returns:
      float32 [...].

    Keras equivalent: ``keras.metrics.top_k_categorical_accuracy(y_true, y_pred, k)``.
    """
    y_true, y_pred = align_one_hot(y_true, y_pred, "top_k_categorical_accuracy")
    return in_top_k(jnp.argmax(y_true, axis=-1), _float(y_pred), k).astype(jnp.float32)


def sparse_top_k_categorical_accuracy(y_true, y_pred, *, k: int = 5) -> Array:
    """Whether class ``y_true`` (cast to int32, truncating, as Keras) is among the top ``k`` scores.

    Args:
      y_true: [...] or [..., 1] class ids.
      y_pred: [..., C] scores.
      k: number of top classes.

    Returns:
      float32 [...].

    Keras equivalent: ``keras.metrics.sparse_top_k_categorical_accuracy(y_true, y_pred, k)``.
    """
    y_true, y_pred = align_sparse(y_true, y_pred, "sparse_top_k_categorical_accuracy")
    return in_top_k(y_true.astype(jnp.int32), _float(y_pred), k).astype(jnp.float32)


def mean_squared_error(y_true, y_pred) -> Array:
    """.. math:: v = \\tfrac{1}{C} \\sum_c (y\\_true_c - y\\_pred_c)^2

    Args:
      y_true: [..., C], or [...] when C == 1.
      y_pred: [..., C].

    Returns:
      [...] in ``y_pred``'s float dtype.

    Keras equivalent: ``keras.metrics.mean_squared_error``.
    """
    y_true, y_pred = align_dense(y_true, y_pred, "mean_squared_error")
    y_pred = _float(y_pred)
    return jnp.mean(jnp.square(y_true.astype(y_pred.dtype) - y_pred), axis=-1)


def mean_absolute_error(y_true, y_pred) -> Array:
    """.. math:: v = \\tfrac{1}{C} \\sum_c |y\\_true_c - y\\_pred_c|

    Args:
      y_true: [..., C], or [...] when C == 1.
      y_pred: [..., C].

    Returns:
      [...] in ``y_pred``'s float dtype.

    Keras equivalent: ``keras.metrics.mean_absolute_error``.
    """
    y_true, y_pred = align_dense(y_true, y_pred, "mean_absolute_error")
    y_pred = _float(y_pred)
    return jnp.mean(jnp.abs(y_true.astype(y_pred.dtype) - y_pred), axis=-1)


# --------------------------------------------------------------------------------------------------
# Confusion counts and AUC
# --------------------------------------------------------------------------------------------------


def confusion_at_thresholds(y_true, y_pred, weights, thresholds) -> tuple[Array, Array, Array, Array]:
    """Weighted TP, FP, TN, FN at each threshold: positive label ``y_true != 0``, positive
    prediction ``y_pred > threshold``.

    Args:
      y_true: labels, ``y_pred``'s shape.
      y_pred: predictions [...].
      weights: float weights, ``y_pred``'s shape (0 removes an entry).
      thresholds: float [N].

    Returns:
      ``(tp, fp, tn, fn)``, each float32 [N].

    Keras equivalent: ``metrics_utils.update_confusion_matrix_variables`` (the general path used by
    ``Precision`` and ``Recall``).
    """
    label = (jnp.reshape(y_true, (1, -1)) != 0)
    above = jnp.reshape(y_pred, (1, -1)) > jnp.reshape(thresholds, (-1, 1))
    w = jnp.reshape(weights, (1, -1)).astype(jnp.float32)

    def count(cond):
        return jnp.sum(jnp.where(cond, w, 0.0), axis=1)

    return count(label & above), count(~label & above), count(~label & ~above), count(label & ~above)


def confusion_bucketed(y_true, y_pred, weights, num_thresholds: int) -> tuple[Array, Array, Array, Array]:
    """Weighted TP, FP, TN, FN at Keras' evenly spaced AUC thresholds, by bucketing.

    Thresholds are ``[-eps, 1/(N-1), ..., (N-2)/(N-1), 1 + eps]``. Predictions are clipped to [0, 1]
    and put in bucket ``max(ceil(p * (N - 1)) - 1, 0)``; a prediction counts as positive at every
    threshold up to its bucket. This is Keras' ``_update_confusion_matrix_variables_optimized``
    transcribed, float32 rounding of ``p * (N - 1)`` included, so predictions that sit exactly on a
    threshold land where Keras puts them.

    Args:
      y_true: labels, ``y_pred``'s shape; ``!= 0`` is positive.
      y_pred: probabilities [...].
      weights: float weights, ``y_pred``'s shape.
      num_thresholds: N > 1.

    Returns:
      ``(tp, fp, tn, fn)``, each float32 [N].
    """
    y_pred = jnp.clip(jnp.reshape(y_pred, (-1,)).astype(jnp.float32), 0.0, 1.0)
    positive = (jnp.reshape(y_true, (-1,)) != 0).astype(jnp.float32)
    w = jnp.reshape(weights, (-1,)).astype(jnp.float32)
    true_labels = positive * w
    false_labels = (1.0 - positive) * w
    buckets = jnp.maximum(jnp.ceil(y_pred * jnp.float32(num_thresholds - 1)) - 1.0, 0.0).astype(jnp.int32)

    def at_or_above(values):
        per_bucket = jax.ops.segment_sum(values, buckets, num_segments=num_thresholds)
        return jnp.flip(jnp.cumsum(jnp.flip(per_bucket)))

    tp, fp = at_or_above(true_labels), at_or_above(false_labels)
    return tp, fp, jnp.sum(false_labels) - fp, jnp.sum(true_labels) - tp


def _interpolate_pr_auc(tp: Array, fp: Array, fn: Array) -> Array:
    """Keras' PR-AUC with interpolation (Davis & Goadrich 2006, closed form), transcribed."""
    dtp = tp[:-1] - tp[1:]
    p = tp + fp
    dp = p[:-1] - p[1:]
    prec_slope = divide_no_nan(dtp, jnp.maximum(dp, 0.0))
    intercept = tp[1:] - prec_slope * p[1:]
    safe_p_ratio = jnp.where(
        (p[:-1] > 0) & (p[1:] > 0), divide_no_nan(p[:-1], jnp.maximum(p[1:], 0.0)), jnp.ones_like(p[1:])
    )
    increment = divide_no_nan(prec_slope * (dtp + intercept * jnp.log(safe_p_ratio)), jnp.maximum(tp[1:] + fn[1:], 0.0))
    return jnp.sum(increment)


def auc_from_confusion(tp, fp, tn, fn, *, curve: str = "ROC", summation_method: str = "interpolation") -> Array:
    """Area under the ROC or PR curve from confusion counts at increasing thresholds.

    ROC: x = FP / (FP + TN), y = TP / (TP + FN). PR: x = recall, y = precision. Riemann sum over
    consecutive thresholds with heights ``(y_i + y_{i+1}) / 2`` ("interpolation"), ``min``
    ("minoring") or ``max`` ("majoring"); PR with "interpolation" uses Keras' closed form that
    interpolates TP and FP linearly, not precision. Every ratio is ``divide_no_nan``, so empty
    counts give 0, never NaN.

    Args:
      tp, fp, tn, fn: float [N], N > 1.
      curve: "ROC" or "PR".
      summation_method: "interpolation", "minoring" or "majoring".

    Returns:
      float32 scalar.

    Keras equivalent: ``keras.metrics.AUC.result`` (``multi_label=False``).
    """
    if curve == "PR" and summation_method == "interpolation":
        return _interpolate_pr_auc(tp, fp, fn)
    recall = divide_no_nan(tp, tp + fn)
    if curve == "ROC":
        x, y = divide_no_nan(fp, fp + tn), recall
    else:
        x, y = recall, divide_no_nan(tp, tp + fp)
    if summation_method == "interpolation":
        heights = (y[:-1] + y[1:]) / 2.0
    elif summation_method == "minoring":
        heights = jnp.minimum(y[:-1], y[1:])
    else:
        heights = jnp.maximum(y[:-1], y[1:])
    return jnp.sum((x[:-1] - x[1:]) * heights)
