"""Masked metrics as pure, jit-able accumulators whose numbers match Keras' compile metrics.

A metric is a small frozen (hashable) object with four pure methods::

    state = metric.init()                                             # pytree of float32 arrays
    state = metric.update(state, y_true, y_pred, mask=m, sample_weight=w)
    state = metric.merge(state_a, state_b)                            # data parallel: add the states
    value = metric.result(state)                                      # float32 scalar

Masking, with m[b, t] = 1 at a valid step and v[b, t] the metric's per-step value (mean over the
channel axis C, see :mod:`jaxmask.functional.metrics`):

* unweighted: Σ m·v / Σ m;
* weighted:   Σ w·m·v / Σ w·m, with ``sample_weight`` [B, T], or [B] / [B, 1] applied to every step
  of its sequence (Keras 3 raises on [B] weights for temporal outputs; tf_keras expands them to
  [B, 1], which is what jaxmask does);
* confusion metrics (precision, recall, AUC) count each (step, channel) entry with weight w·m;
* an empty accumulator (everything masked, or all weights 0) gives 0, never NaN (``divide_no_nan``),
  and NaN or garbage in ``y_true``/``y_pred`` at masked steps cannot reach the result.

This is how Keras uses the mask in compile metrics: tf_keras passes it as ``sample_weight`` to every
metric; Keras 3 does the same for mean metrics (accuracy family, MSE, MAE). Two documented
differences from Keras 3:

* Keras 3 (3.15, both backends) ignores the mask in ``Precision``, ``Recall`` and ``AUC``: they
  count padded steps. jaxmask applies the mask, like tf_keras. Call ``update(..., mask=None)`` to
  reproduce Keras 3's number.
* Keras' ``Mean`` accumulates per-sample means over time (total += Σ_b mean_t(w·m·v), count +=
  Σ_b mean_t(w·m)), so batches padded to different lengths T are weighted by 1/T. jaxmask
  accumulates Σ w·m·v and Σ w·m; the two agree whenever every batch has the same T (any single
  ``model.evaluate`` on a padded array).

Example::

    acc = jm.metrics.get("sparse_categorical_accuracy")
    update = jax.jit(acc.update)
    state = acc.init()
    for y, logits, m in batches:
        state = update(state, y, logits, mask=m)
    print(acc.result(state))
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmask._checks import check_choice, check_mask
from jaxmask.functional import metrics as F

Array = jax.Array

SEMANTICS = ("keras3", "tf_keras", "tf_keras_pre212", "keras_legacy")


class MeanState(NamedTuple):
    """Accumulator of the mean metrics: Σ w·m·v and Σ w·m (float32 scalars)."""

    total: Array
    count: Array


class ConfusionState(NamedTuple):
    """Weighted confusion counts, float32 [N] (one entry per threshold)."""

    true_positives: Array
    false_positives: Array
    true_negatives: Array
    false_negatives: Array


# --------------------------------------------------------------------------------------------------
# Boundary: shapes, mask and weights -> one float32 weight per step
# --------------------------------------------------------------------------------------------------


def _step_weights(y_pred: Array, mask, sample_weight) -> Array:
    """float32 weight per step, shape ``y_pred.shape[:-1]`` ([B, T] or [B]): mask · sample_weight."""
    steps = y_pred.shape[:-1]
    weights = jnp.ones(steps, jnp.float32)
    if mask is not None:
        if len(steps) != 2:
            raise ValueError(
                f"`mask` [B, T] needs a sequence `y_pred` [B, T, C]; received y_pred.shape={y_pred.shape}. "
                "Add the channel axis (y_pred[..., None]) or drop the mask."
            )
        weights = check_mask(mask, steps).astype(jnp.float32)
    if sample_weight is not None:
        sw = jnp.asarray(sample_weight)
        batch = steps[0]
        if sw.shape in ((batch,), (batch, 1)):
            sw = jnp.reshape(sw, (batch,) + (1,) * (len(steps) - 1))
        elif sw.shape != steps:
            layouts = f"[B] with B = {batch}" if len(steps) == 1 else f"[B], [B, 1] or [B, T] with (B, T) = {steps}"
            raise ValueError(
                f"`sample_weight` must be {layouts}; received shape {sw.shape}. "
                "Per-sample weights are applied to every step of their sequence."
            )
        if not (jnp.issubdtype(sw.dtype, jnp.number) or sw.dtype == jnp.bool_):
            raise TypeError(f"`sample_weight` must be numeric; received dtype {sw.dtype}.")
        weights = weights * sw.astype(jnp.float32)
    return weights


def _check_y_pred(y_pred) -> Array:
    y_pred = jnp.asarray(y_pred)
    if y_pred.ndim not in (2, 3):
        raise ValueError(
            f"`y_pred` must be [B, T, C] (sequence) or [B, C]; received shape {y_pred.shape}. "
            "A binary output per step is [B, T, 1]."
        )
    return y_pred


def _add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


# --------------------------------------------------------------------------------------------------
# Mean metrics
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanMetricWrapper:
    """A per-step metric function averaged under a mask and sample weights.

    .. math:: \\text{result} = \\frac{\\sum w\\,m\\,v}{\\sum w\\,m} \\quad (0 \\text{ when } \\sum w\\,m = 0)

    Args:
      fn: ``fn(y_true, y_pred) -> [B, T]`` (or [B]) per-step values, e.g. from
        :mod:`jaxmask.functional.metrics`. Must be hashable for ``jax.jit`` of bound methods to cache.
      name: the key reported by ``Trainer.evaluate``.

    Keras equivalent: ``keras.metrics.MeanMetricWrapper(fn)`` as used by ``compile``.
    """

    fn: Callable[[Array, Array], Array]
    name: str

    def values(self, y_true, y_pred) -> Array:
        return self.fn(y_true, y_pred)

    def init(self) -> MeanState:
        """An empty accumulator."""
        return MeanState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def update(self, state: MeanState, y_true, y_pred, *, mask=None, sample_weight=None) -> MeanState:
        """Add one batch.

        Args:
          state: from ``init``/``update``/``merge``.
          y_true: labels (layout per metric, see :mod:`jaxmask.functional.metrics`).
          y_pred: [B, T, C] or [B, C].
          mask: bool-like [B, T], True = valid step; only with a sequence ``y_pred``.
          sample_weight: [B, T], [B, 1] or [B] (sequence) / [B] (per sample).

        Returns:
          The new state.

        Raises:
          ValueError: ``y_true``, ``mask`` or ``sample_weight`` does not fit ``y_pred``.
        """
        y_pred = _check_y_pred(y_pred)
        weights = _step_weights(y_pred, mask, sample_weight)
        values = self.values(y_true, y_pred).astype(jnp.float32)
        counted = weights != 0
        total = jnp.sum(jnp.where(counted, weights * jnp.where(counted, values, 0.0), 0.0))
        return MeanState(state.total + total, state.count + jnp.sum(weights))

    def merge(self, state_a: MeanState, state_b: MeanState) -> MeanState:
        """Combine two accumulators (e.g. from two devices): their sums add."""
        return _add(state_a, state_b)

    def result(self, state: MeanState) -> Array:
        """Σ w·m·v / Σ w·m, or 0 for an empty accumulator."""
        return F.divide_no_nan(state.total, state.count)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accuracy(MeanMetricWrapper):
    """Exact equality of ``y_true`` and ``y_pred`` (not the "accuracy" of ``compile``: see ``resolve``).

    Keras equivalent: ``keras.metrics.Accuracy``.
    """

    fn: Callable = F.accuracy
    name: str = "accuracy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinaryAccuracy(MeanMetricWrapper):
    """``y_pred > threshold`` equals the 0/1 label.

    Keras equivalent: ``keras.metrics.BinaryAccuracy(threshold=0.5)``.
    """

    fn: Callable = F.binary_accuracy
    name: str = "binary_accuracy"
    threshold: float = 0.5

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool):
            raise TypeError(f"`threshold` must be a float; received {self.threshold!r}.")

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred, threshold=self.threshold)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CategoricalAccuracy(MeanMetricWrapper):
    """``argmax(y_true) == argmax(y_pred)`` with one-hot labels.

    Keras equivalent: ``keras.metrics.CategoricalAccuracy``.
    """

    fn: Callable = F.categorical_accuracy
    name: str = "categorical_accuracy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseCategoricalAccuracy(MeanMetricWrapper):
    """``y_true == argmax(y_pred)`` with integer labels.

    Keras equivalent: ``keras.metrics.SparseCategoricalAccuracy``.
    """

    fn: Callable = F.sparse_categorical_accuracy
    name: str = "sparse_categorical_accuracy"


def _check_k(k) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`k` must be an integer >= 1; received {k!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKCategoricalAccuracy(MeanMetricWrapper):
    """The one-hot label's class is among the ``k`` highest scores (ties count as in, as in TF).

    Keras equivalent: ``keras.metrics.TopKCategoricalAccuracy(k=5)``.
    """

    fn: Callable = F.top_k_categorical_accuracy
    name: str = "top_k_categorical_accuracy"
    k: int = 5

    def __post_init__(self):
        _check_k(self.k)

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred, k=self.k)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """The integer label is among the ``k`` highest scores.

    Keras equivalent: ``keras.metrics.SparseTopKCategoricalAccuracy(k=5)``.
    """

    fn: Callable = F.sparse_top_k_categorical_accuracy
    name: str = "sparse_top_k_categorical_accuracy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanSquaredError(MeanMetricWrapper):
    """Mean over channels of (y_true - y_pred)², averaged over valid steps.

    Keras equivalent: ``keras.metrics.MeanSquaredError``.
    """

    fn: Callable = F.mean_squared_error
    name: str = "mean_squared_error"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanAbsoluteError(MeanMetricWrapper):
    """Mean over channels of |y_true - y_pred|, averaged over valid steps.

    Keras equivalent: ``keras.metrics.MeanAbsoluteError``.
    """

    fn: Callable = F.mean_absolute_error
    name: str = "mean_absolute_error"


# --------------------------------------------------------------------------------------------------
# Confusion metrics
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ConfusionMetric:
    """Accumulates weighted TP/FP/TN/FN over every (step, channel) entry with weight w·m."""

    name: str

    def _num_thresholds(self) -> int:
        raise NotImplementedError

    def _counts(self, y_true, y_pred, weights):
        raise NotImplementedError

    def init(self) -> ConfusionState:
        """An empty accumulator."""
        zeros = jnp.zeros((self._num_thresholds(),), jnp.float32)
        return ConfusionState(zeros, zeros, zeros, zeros)

    def update(self, state: ConfusionState, y_true, y_pred, *, mask=None, sample_weight=None) -> ConfusionState:
        """Add one batch.

        Args:
          state: from ``init``/``update``/``merge``.
          y_true: [..., C] labels (``!= 0`` is positive), or without the trailing axis when C == 1.
          y_pred: [B, T, C] or [B, C] probabilities; every channel is one entry.
          mask: bool-like [B, T], True = valid step; only with a sequence ``y_pred``.
          sample_weight: [B, T], [B, 1] or [B] (sequence) / [B] (per sample).

        Returns:
          The new state.

        Raises:
          ValueError: ``y_true``, ``mask`` or ``sample_weight`` does not fit ``y_pred``.
        """
        y_pred = _check_y_pred(y_pred)
        weights = _step_weights(y_pred, mask, sample_weight)
        y_true, y_pred = F.align_dense(y_true, y_pred, self.name)
        weights = jnp.broadcast_to(weights[..., None], y_pred.shape)
        counted = weights != 0
        y_true = jnp.where(counted, y_true, jnp.zeros_like(y_true))
        y_pred = jnp.where(counted, y_pred, jnp.zeros_like(y_pred))
        return _add(state, ConfusionState(*self._counts(y_true, y_pred, weights)))

    def merge(self, state_a: ConfusionState, state_b: ConfusionState) -> ConfusionState:
        """Combine two accumulators (e.g. from two devices): the counts add."""
        return _add(state_a, state_b)


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be a float in [0, 1]; received {threshold!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SingleThresholdMetric(_ConfusionMetric):
    """Confusion counts at one threshold: ``y_pred > threshold`` is a positive prediction."""

    threshold: float = 0.5

    def __post_init__(self):
        _check_threshold(self.threshold)

    def _num_thresholds(self) -> int:
        return 1

    def _counts(self, y_true, y_pred, weights):
        return F.confusion_at_thresholds(y_true, y_pred, weights, jnp.full((1,), self.threshold, jnp.float32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Precision(_SingleThresholdMetric):
    """TP / (TP + FP) with ``y_pred > threshold`` as a positive prediction; 0 when nothing is predicted
    positive.

    Keras equivalent: ``keras.metrics.Precision(thresholds=0.5)`` (single threshold; ``top_k`` and
    ``class_id`` are not provided).
    """

    name: str = "precision"

    def result(self, state: ConfusionState) -> Array:
        """TP / (TP + FP), or 0."""
        return F.divide_no_nan(state.true_positives, state.true_positives + state.false_positives)[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recall(_SingleThresholdMetric):
    """TP / (TP + FN) with ``y_pred > threshold`` as a positive prediction; 0 when there is no positive
    label.

    Keras equivalent: ``keras.metrics.Recall(thresholds=0.5)`` (single threshold; ``top_k`` and
    ``class_id`` are not provided).
    """

    name: str = "recall"

    def result(self, state: ConfusionState) -> Array:
        """TP / (TP + FN), or 0."""
        return F.divide_no_nan(state.true_positives, state.true_positives + state.false_negatives)[0]


_CURVES = {"roc": "ROC", "pr": "PR"}
_SUMMATIONS = ("interpolation", "minoring", "majoring")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AUC(_ConfusionMetric):
    """Area under the ROC or precision-recall curve, from confusion counts at ``num_thresholds``
    evenly spaced thresholds (Keras' approximation, not the exact rank statistic).

    Multi-channel predictions are flattened: each (step, channel) entry is one example
    (Keras' ``multi_label=False``).

    Args:
      num_thresholds: N > 1; thresholds ``[-eps, 1/(N-1), ..., (N-2)/(N-1), 1 + eps]``.
      curve: "ROC" or "PR" (case-insensitive).
      summation_method: "interpolation" (trapezoids; for PR, Keras' interpolation of TP and FP),
        "minoring" or "majoring".
      from_logits: apply a sigmoid to ``y_pred`` first.
      name: the key reported by ``Trainer.evaluate``.

    Keras equivalent: ``keras.metrics.AUC(num_thresholds=200, curve="ROC",
    summation_method="interpolation")`` (``multi_label``, ``label_weights`` and explicit
    ``thresholds`` are not provided).
    """

    name: str = "auc"
    num_thresholds: int = 200
    curve: str = "ROC"
    summation_method: str = "interpolation"
    from_logits: bool = False

    def __post_init__(self):
        n = self.num_thresholds
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 1:
            raise ValueError(f"`num_thresholds` must be an integer > 1; received {n!r}.")
        if not isinstance(self.curve, str) or self.curve.lower() not in _CURVES:
            raise ValueError(f"`curve` must be one of ['ROC', 'PR']; received {self.curve!r}.")
        object.__setattr__(self, "curve", _CURVES[self.curve.lower()])
        check_choice("summation_method", self.summation_method, _SUMMATIONS)

    def _num_thresholds(self) -> int:
        return int(self.num_thresholds)

    def _counts(self, y_true, y_pred, weights):
        if self.from_logits:
            y_pred = jax.nn.sigmoid(y_pred)
        return F.confusion_bucketed(y_true, y_pred, weights, int(self.num_thresholds))

    def result(self, state: ConfusionState) -> Array:
        """The area; 0 for an empty accumulator."""
        return F.auc_from_confusion(*state, curve=self.curve, summation_method=self.summation_method)


Metric = MeanMetricWrapper | Precision | Recall | AUC

# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

_CLASSES = (
    Accuracy,
    BinaryAccuracy,
    CategoricalAccuracy,
    SparseCategoricalAccuracy,
    TopKCategoricalAccuracy,
    SparseTopKCategoricalAccuracy,
    MeanSquaredError,
    MeanAbsoluteError,
    Precision,
    Recall,
    AUC,
)

# Keras 3's `keras.metrics.get` table: class names, their snake_case names, and the short aliases.
_BY_NAME: dict[str, type] = {}
for _cls in _CLASSES:
    _BY_NAME[_cls.__name__] = _cls
    _BY_NAME[_cls.name] = _cls
_BY_NAME.update({"mse": MeanSquaredError, "MSE": MeanSquaredError, "mae": MeanAbsoluteError, "MAE": MeanAbsoluteError})
_BY_NAME["acc"] = Accuracy
del _cls


def _is_metric(obj) -> bool:
    return isinstance(obj, (MeanMetricWrapper, _ConfusionMetric))


def get(identifier, **kwargs) -> Metric:
    """A metric object from a Keras name, alias or class name; metric objects pass through.

    Accepts what ``keras.metrics.get`` accepts for these metrics: class names ("AUC",
    "BinaryAccuracy"), their snake_case names ("auc", "binary_accuracy", "mean_squared_error") and
    the aliases "mse", "MSE", "mae", "MAE"; plus "acc". Names are case-sensitive, as in Keras.

    Note "accuracy" and "acc" give :class:`Accuracy` (exact equality), as ``keras.metrics.get``
    does; the "accuracy" of ``model.compile`` depends on the shapes: use :func:`resolve`.

    Args:
      identifier: a name or a metric object.
      **kwargs: constructor settings, e.g. ``get("auc", curve="PR")``, ``get("top_k_categorical_accuracy", k=3)``.

    Returns:
      A frozen metric object with ``init``, ``update``, ``merge``, ``result`` and ``name``.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
      TypeError: neither a string nor a metric object.

    Keras equivalent: ``keras.metrics.get(identifier)``.
    """
    if _is_metric(identifier):
        return dataclasses.replace(identifier, **kwargs) if kwargs else identifier
    if not isinstance(identifier, str):
        raise TypeError(
            f"`identifier` must be a metric name or a jm.metrics object; received {type(identifier).__name__}."
        )
    if identifier not in _BY_NAME:
        raise ValueError(f"Unknown metric {identifier!r}. Valid names: {sorted(_BY_NAME)}.")
    return _BY_NAME[identifier](**kwargs)


def _accuracy_for(y_true_shape: tuple, y_pred_shape: tuple, loss, semantics: str) -> type:
    if semantics == "keras_legacy":
        # Keras <= 2.2 (training.py): by the output's last axis and the loss function.
        if y_pred_shape[-1] == 1 or loss == "binary_crossentropy":
            return BinaryAccuracy
        if loss == "sparse_categorical_crossentropy":
            return SparseCategoricalAccuracy
        return CategoricalAccuracy
    # Keras 3 and tf_keras (compile_utils): by shapes only.
    if y_pred_shape[-1] == 1:
        return BinaryAccuracy
    if len(y_true_shape) < len(y_pred_shape) or (y_true_shape[-1] == 1 and y_pred_shape[-1] > 1):
        return SparseCategoricalAccuracy
    return CategoricalAccuracy


def resolve(identifier, y_true_shape, y_pred_shape, *, loss=None, semantics: str = "keras3") -> Metric:
    """The metric ``model.compile(metrics=[identifier])`` would build, named as Keras names it.

    "accuracy" / "acc" (any case) is chosen as Keras 3 and tf_keras do (``get_metric`` in
    keras/src/trainers/compile_utils.py), from the shapes only:

    * ``y_pred`` last axis 1 -> :class:`BinaryAccuracy`;
    * else ``y_true`` of lower rank than ``y_pred``, or ``y_true`` last axis 1 -> :class:`SparseCategoricalAccuracy`;
    * else :class:`CategoricalAccuracy`.

    With ``semantics="keras_legacy"`` (Keras <= 2.2) the loss decides instead: last axis 1 or
    ``loss == "binary_crossentropy"`` -> binary; ``loss == "sparse_categorical_crossentropy"`` ->
    sparse; else categorical. ``loss`` is not consulted by the other profiles (Keras 3 and tf_keras
    ignore it). Only the choice of metric changes with ``semantics``; accumulation is always the one
    described in this module's docstring.

    Any other identifier goes through :func:`get`. A string identifier becomes the metric's ``name``
    (the key ``evaluate`` reports, e.g. "acc", "mse"), as in Keras' compile.

    Args:
      identifier: a name or a metric object (returned unchanged).
      y_true_shape: shape of one batch of labels, e.g. (B, T) or (B, T, C).
      y_pred_shape: shape of one batch of predictions, e.g. (B, T, C).
      loss: the loss name, used only by ``semantics="keras_legacy"``.
      semantics: "keras3" (default), "tf_keras", "tf_keras_pre212" or "keras_legacy".

    Returns:
      A metric object.

    Raises:
      ValueError: unknown metric name or semantics.

    Keras equivalent: ``keras.src.trainers.compile_utils.get_metric(identifier, y_true, y_pred)``.
    """
    check_choice("semantics", semantics, SEMANTICS)
    if _is_metric(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in ("accuracy", "acc"):
        y_true_shape, y_pred_shape = tuple(y_true_shape), tuple(y_pred_shape)
        if not y_true_shape or not y_pred_shape:
            raise ValueError(
                f"resolve({identifier!r}) needs the shapes of y_true and y_pred; received "
                f"y_true_shape={y_true_shape}, y_pred_shape={y_pred_shape}."
            )
        return _accuracy_for(y_true_shape, y_pred_shape, loss, semantics)(name=identifier)
    return dataclasses.replace(get(identifier), name=identifier)


__all__ = [
    "AUC",
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "ConfusionState",
    "MeanAbsoluteError",
    "MeanMetricWrapper",
    "MeanSquaredError",
    "MeanState",
    "Metric",
    "Precision",
    "Recall",
    "SEMANTICS",
    "SparseCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
    "TopKCategoricalAccuracy",
    "get",
    "resolve",
]
