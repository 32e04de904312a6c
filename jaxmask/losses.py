"""Keras losses in pure JAX, and ``masked_loss``: the one masked, weighted reduction.

The loss functions (``jm.losses.binary_crossentropy`` ...) return unreduced values with Keras' names,
argument order and last-axis reduction (see :mod:`jaxmask.functional.losses`). :func:`masked_loss`
applies a mask, sample/class weights and the reduction of the chosen Keras version
(:mod:`jaxmask.functional.reduction`). The Keras-style classes (``jm.losses.BinaryCrossentropy`` ...) are
thin wrappers over :func:`masked_loss`.

Example:
  >>> import functools, jax, jaxmask as jm
  >>> loss_fn = jax.jit(functools.partial(jm.masked_loss, "mse", semantics="keras3"))
  >>> loss_fn(y_true, y_pred, mask=mask)                         # Σ m·l / Σ m
  >>> jm.masked_loss("binary_crossentropy", y_true, jax.nn.sigmoid(z), mask=mask,
  ...                y_pred_logits=z)                             # Keras' TF-backend logits path
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmask._checks import shape_of
from jaxmask.functional import losses as _f
from jaxmask.functional.losses import (
    EPSILON as EPSILON,
    binary_crossentropy as binary_crossentropy,
    binary_focal_crossentropy as binary_focal_crossentropy,
    categorical_crossentropy as categorical_crossentropy,
    categorical_focal_crossentropy as categorical_focal_crossentropy,
    categorical_generalized_cross_entropy as categorical_generalized_cross_entropy,
    categorical_hinge as categorical_hinge,
    circle as circle,
    cosine_similarity as cosine_similarity,
    dice as dice,
    hinge as hinge,
    huber as huber,
    kl_divergence as kl_divergence,
    log_cosh as log_cosh,
    mean_absolute_error as mean_absolute_error,
    mean_absolute_percentage_error as mean_absolute_percentage_error,
    mean_squared_error as mean_squared_error,
    mean_squared_logarithmic_error as mean_squared_logarithmic_error,
    poisson as poisson,
    sparse_categorical_crossentropy as sparse_categorical_crossentropy,
    squared_hinge as squared_hinge,
    tversky as tversky,
)
from jaxmask.functional.reduction import REDUCTIONS, SEMANTICS, reduce_weighted_loss

__all__ = [
    "EPSILON",
    "masked_loss",
    "get",
    "Loss",
    "LossFunctionWrapper",
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "categorical_generalized_cross_entropy",
    "sparse_categorical_crossentropy",
    "kl_divergence",
    "poisson",
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "huber",
    "log_cosh",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "cosine_similarity",
    "dice",
    "tversky",
    "circle",
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy",
    "CategoricalGeneralizedCrossEntropy",
    "SparseCategoricalCrossentropy",
    "KLDivergence",
    "Poisson",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError",
    "CosineSimilarity",
    "Huber",
    "LogCosh",
    "Hinge",
    "SquaredHinge",
    "CategoricalHinge",
    "Dice",
    "Tversky",
    "Circle",
]


# ------------------------------------------------------------------------------------------------ registry


class _Spec(NamedTuple):
    """What masked_loss needs to know about a loss function.

    labels: "dense" (y_true shaped like y_pred), "sparse" (class ids, y_pred has a class axis more) or
      "circle" ([B] labels, [B, D] embeddings).
    per_step: each step's value depends only on that step's inputs (so masked inputs may be replaced).
    logits: accepts ``logits=`` (Keras' TF-backend ``_keras_logits`` path).
    with_mask: a variant returning ``Values(values, mask)`` when the loss attaches its own mask.
    """

    labels: str
    per_step: bool = True
    logits: bool = False
    with_mask: Callable | None = None


_SPECS = {
    binary_crossentropy: _Spec("dense", logits=True),
    binary_focal_crossentropy: _Spec("dense", logits=True),
    categorical_crossentropy: _Spec("dense", logits=True),
    categorical_focal_crossentropy: _Spec("dense"),
    categorical_generalized_cross_entropy: _Spec("sparse"),
    sparse_categorical_crossentropy: _Spec(
        "sparse", logits=True, with_mask=_f._sparse_categorical_crossentropy
    ),
    kl_divergence: _Spec("dense"),
    poisson: _Spec("dense"),
    mean_squared_error: _Spec("dense"),
    mean_absolute_error: _Spec("dense"),
    mean_absolute_percentage_error: _Spec("dense"),
    mean_squared_logarithmic_error: _Spec("dense"),
    huber: _Spec("dense"),
    log_cosh: _Spec("dense"),
    hinge: _Spec("dense", per_step=False),  # 0/1 -> -1/1 only if every label of the batch is 0 or 1
    squared_hinge: _Spec("dense", per_step=False),
    categorical_hinge: _Spec("dense"),
    cosine_similarity: _Spec("dense"),
    dice: _Spec("dense"),
    tversky: _Spec("dense"),
    circle: _Spec("circle", per_step=False, with_mask=_f._circle),
}

_LOGITS_LOSSES = sorted(fn.__name__ for fn, spec in _SPECS.items() if spec.logits)


def _last_axis(fn, kwargs, ndim) -> bool:
    """Whether ``fn`` reduces the last axis of an ``ndim`` y_pred (True for functions without ``axis``)."""
    params = inspect.signature(fn).parameters
    if "axis" not in params:
        return True
    axis = kwargs.get("axis", params["axis"].default)
    return isinstance(axis, int) and not isinstance(axis, bool) and axis % max(ndim, 1) == ndim - 1


# --------------------------------------------------------------------------------------------- loss classes


class Loss:
    """Keras-style loss object: ``loss(y_true, y_pred, sample_weight=None, mask=None)`` -> scalar.

    Subclass and implement ``call(y_true, y_pred)`` (unreduced values), or use the built-in subclasses.
    ``__call__`` is :func:`masked_loss` with this object's ``reduction`` and ``semantics``.

    Args:
      name: a name, as in Keras.
      reduction: "sum_over_batch_size" (default), "mean", "sum", "mean_with_sample_weight" or "none".
      semantics: "keras3" (default), "tf_keras", "tf_keras_pre212" or "keras_legacy".

    Keras equivalent: ``keras.losses.Loss``.
    """

    def __init__(self, name=None, reduction="sum_over_batch_size", *, semantics="keras3"):
        reduction = "none" if reduction is None else reduction
        _check_names(reduction, semantics)
        self.name = name or type(self).__name__.lower()
        self.reduction = reduction
        self.semantics = semantics

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__} must implement call(y_true, y_pred) -> unreduced values.")

    def __call__(self, y_true, y_pred, sample_weight=None, mask=None, *, class_weight=None, y_pred_logits=None):
        return masked_loss(
            self,
            y_true,
            y_pred,
            mask=mask,
            sample_weight=sample_weight,
            class_weight=class_weight,
            reduction=self.reduction,
            semantics=self.semantics,
            y_pred_logits=y_pred_logits,
        )

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, reduction={self.reduction!r}, semantics={self.semantics!r})"


class LossFunctionWrapper(Loss):
    """A :class:`Loss` around a loss function and fixed keyword arguments (Keras' ``LossFunctionWrapper``)."""

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, *, semantics="keras3", **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", None), reduction=reduction, semantics=semantics)
        self.fn = fn
        self.fn_kwargs = kwargs

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self.fn_kwargs)


def _wrapper(cls_name, fn, signature):
    """A Keras-named :class:`LossFunctionWrapper` subclass whose ``__init__`` has Keras' exact signature.

    ``signature`` lists (parameter, default) in Keras' positional order, ``reduction`` and ``name`` included;
    ``semantics`` is added keyword-only.
    """
    order = tuple(k for k, _ in signature)
    defaults = dict(signature)

    def __init__(self, *args, semantics="keras3", **kwargs):
        if len(args) > len(order):
            raise TypeError(f"{cls_name}() takes at most {len(order)} positional arguments; received {len(args)}.")
        unknown = sorted(set(kwargs) - set(order))
        if unknown:
            raise TypeError(f"{cls_name}() got unexpected keyword arguments {unknown}; valid: {list(order)}.")
        twice = sorted(set(order[: len(args)]) & set(kwargs))
        if twice:
            raise TypeError(f"{cls_name}() got multiple values for {twice}.")
        bound = {**defaults, **dict(zip(order, args)), **kwargs}
        reduction, name = bound.pop("reduction"), bound.pop("name")
        LossFunctionWrapper.__init__(self, fn, reduction=reduction, name=name, semantics=semantics, **bound)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v) for k, v in signature]
    params.append(inspect.Parameter("semantics", inspect.Parameter.KEYWORD_ONLY, default="keras3"))
    __init__.__signature__ = inspect.Signature(params)
    shown = ", ".join(f"{k}={v!r}" for k, v in signature)
    doc = (
        f"``{cls_name}({shown}, *, semantics='keras3')``: Keras-style loss object wrapping :func:`{fn.__name__}`.\n\n"
        f"Calling it, ``loss(y_true, y_pred, sample_weight=None, mask=None)``, is :func:`masked_loss` with\n"
        f"``{fn.__name__}`` and this object's arguments, ``reduction`` and ``semantics``.\n\n"
        f"Keras equivalent: ``keras.losses.{cls_name}``."
    )
    return type(cls_name, (LossFunctionWrapper,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


_R = ("reduction", "sum_over_batch_size")
_CE = (("from_logits", False), ("label_smoothing", 0.0), ("axis", -1))
BinaryCrossentropy = _wrapper(
    "BinaryCrossentropy", binary_crossentropy, (*_CE, _R, ("name", "binary_crossentropy"))
)
BinaryFocalCrossentropy = _wrapper(
    "BinaryFocalCrossentropy",
    binary_focal_crossentropy,
    (("apply_class_balancing", False), ("alpha", 0.25), ("gamma", 2.0), *_CE, _R,
     ("name", "binary_focal_crossentropy")),
)
CategoricalCrossentropy = _wrapper(
    "CategoricalCrossentropy", categorical_crossentropy, (*_CE, _R, ("name", "categorical_crossentropy"))
)
CategoricalFocalCrossentropy = _wrapper(
    "CategoricalFocalCrossentropy",
    categorical_focal_crossentropy,
    (("alpha", 0.25), ("gamma", 2.0), *_CE, _R, ("name", "categorical_focal_crossentropy")),
)
SparseCategoricalCrossentropy = _wrapper(
    "SparseCategoricalCrossentropy",
    sparse_categorical_crossentropy,
    (("from_logits", False), ("ignore_class", None), _R, ("axis", -1), ("name", "sparse_categorical_crossentropy")),
)
KLDivergence = _wrapper("KLDivergence", kl_divergence, (_R, ("name", "kl_divergence")))
Poisson = _wrapper("Poisson", poisson, (_R, ("name", "poisson")))
MeanSquaredError = _wrapper("MeanSquaredError", mean_squared_error, (_R, ("name", "mean_squared_error")))
MeanAbsoluteError = _wrapper("MeanAbsoluteError", mean_absolute_error, (_R, ("name", "mean_absolute_error")))
MeanAbsolutePercentageError = _wrapper(
    "MeanAbsolutePercentageError", mean_absolute_percentage_error, (_R, ("name", "mean_absolute_percentage_error"))
)
MeanSquaredLogarithmicError = _wrapper(
    "MeanSquaredLogarithmicError", mean_squared_logarithmic_error, (_R, ("name", "mean_squared_logarithmic_error"))
)
CosineSimilarity = _wrapper("CosineSimilarity", cosine_similarity, (("axis", -1), _R, ("name", "cosine_similarity")))
Huber = _wrapper("Huber", huber, (("delta", 1.0), _R, ("name", "huber_loss")))
LogCosh = _wrapper("LogCosh", log_cosh, (_R, ("name", "log_cosh")))
Hinge = _wrapper("Hinge", hinge, (_R, ("name", "hinge")))
SquaredHinge = _wrapper("SquaredHinge", squared_hinge, (_R, ("name", "squared_hinge")))
CategoricalHinge = _wrapper("CategoricalHinge", categorical_hinge, (_R, ("name", "categorical_hinge")))
Dice = _wrapper("Dice", dice, (_R, ("name", "dice"), ("axis", None)))
Tversky = _wrapper("Tversky", tversky, (("alpha", 0.5), ("beta", 0.5), _R, ("name", "tversky"), ("axis", None)))
Circle = _wrapper(
    "Circle", circle, (("gamma", 80.0), ("margin", 0.4), ("remove_diagonal", True), _R, ("name", "circle"))
)
_GCE = _wrapper(
    "CategoricalGeneralizedCrossEntropy",
    categorical_generalized_cross_entropy,
    (("q", 0.5), _R, ("name", "categorical_generalized_cross_entropy")),
)


class CategoricalGeneralizedCrossEntropy(_GCE):
    __doc__ = _GCE.__doc__

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        q = self.fn_kwargs["q"]
        if not 0 < q < 1:
            raise ValueError(f"`q` must be in the interval (0, 1); received q={q!r}. Keras' default is 0.5.")

    __init__.__signature__ = inspect.signature(_GCE.__init__)


_CLASSES = (
    BinaryCrossentropy,
    BinaryFocalCrossentropy,
    CategoricalCrossentropy,
    CategoricalFocalCrossentropy,
    CategoricalGeneralizedCrossEntropy,
    SparseCategoricalCrossentropy,
    KLDivergence,
    Poisson,
    MeanSquaredError,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredLogarithmicError,
    CosineSimilarity,
    Huber,
    LogCosh,
    Hinge,
    SquaredHinge,
    CategoricalHinge,
    Dice,
    Tversky,
    Circle,
)

# Keras 3 `keras.losses.get` names: every function and class name, and these aliases.
_ALIASES = {
    "bce": binary_crossentropy,
    "BCE": binary_crossentropy,
    "kld": kl_divergence,
    "KLD": kl_divergence,
    "mae": mean_absolute_error,
    "MAE": mean_absolute_error,
    "mse": mean_squared_error,
    "MSE": mean_squared_error,
    "mape": mean_absolute_percentage_error,
    "MAPE": mean_absolute_percentage_error,
    "msle": mean_squared_logarithmic_error,
    "MSLE": mean_squared_logarithmic_error,
}
_NAMES: dict = {fn.__name__: fn for fn in _SPECS}
_NAMES.update({cls.__name__: cls for cls in _CLASSES})
_NAMES.update(_ALIASES)


def get(identifier):
    """Resolve a loss identifier as ``keras.losses.get`` does.

    Args:
      identifier: None; a function or class name (``"mean_squared_error"``, ``"MeanSquaredError"``) or a
        Keras alias (``"mse"``, ``"mae"``, ``"mape"``, ``"msle"``, ``"kld"``, ``"bce"`` and upper-case
        forms); a ``{"class_name": ..., "config": {...}}`` dict; a :class:`Loss` class (instantiated),
        instance or any callable (returned as is).

    Returns:
      A loss function, a :class:`Loss` instance, or None.

    Raises:
      ValueError: unknown name (the valid names are listed).

    Keras equivalent: ``keras.losses.get``.
    """
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name")
        cls = _NAMES.get(class_name)
        if not (inspect.isclass(cls) and issubclass(cls, Loss)):
            raise ValueError(
                f"`identifier['class_name']` must name a loss class, one of {sorted(c.__name__ for c in _CLASSES)}; "
                f"received {class_name!r}."
            )
        return cls(**identifier.get("config", {}))
    obj = identifier
    if isinstance(identifier, str):
        if identifier not in _NAMES:
            raise ValueError(
                f"Unknown loss {identifier!r}. `loss` must be one of {sorted(_NAMES)}, a jm.losses.Loss or a "
                "callable (y_true, y_pred) -> per-step values."
            )
        obj = _NAMES[identifier]
    if inspect.isclass(obj) and issubclass(obj, Loss):
        return obj()
    if callable(obj):
        return obj
    raise ValueError(
        f"Could not interpret loss identifier {identifier!r}: expected a name, a config dict, a jm.losses.Loss "
        "or a callable."
    )


# ----------------------------------------------------------------------------------------------- validation


def _check_names(reduction, semantics):
    if semantics not in SEMANTICS:
        raise ValueError(
            f"`semantics` must be one of {list(SEMANTICS)}; received {semantics!r}. "
            "Use 'keras3' for Keras 3.x, 'tf_keras' for tf.keras 2.12-2.21."
        )
    if reduction not in REDUCTIONS[semantics]:
        known = reduction in REDUCTIONS["keras3"]
        hint = (
            f"{semantics!r} has no {reduction!r} reduction; use semantics='keras3' for it."
            if known
            else "Use 'sum_over_batch_size' (Keras' default)."
        )
        raise ValueError(
            f"`reduction` must be one of {list(REDUCTIONS[semantics])} with semantics={semantics!r}; "
            f"received {reduction!r}. {hint}"
        )


def _resolve(loss, loss_kwargs):
    """Return (fn, kwargs, spec or None) for any accepted ``loss``."""
    if isinstance(loss, str):
        loss = get(loss)
    if isinstance(loss, LossFunctionWrapper):
        return loss.fn, {**loss.fn_kwargs, **loss_kwargs}, _SPECS.get(loss.fn)
    if isinstance(loss, Loss):
        if loss_kwargs:
            raise TypeError(
                f"Extra loss arguments {sorted(loss_kwargs)} cannot be passed to the custom loss object {loss!r}; "
                "set them when constructing it."
            )
        return loss.call, {}, None
    if not callable(loss):
        raise TypeError(
            f"`loss` must be a loss name, a jm.losses.Loss or a callable (y_true, y_pred) -> values; "
            f"received {type(loss).__name__}."
        )
    return loss, dict(loss_kwargs), _SPECS.get(loss)


def _check_labels(spec, fn, kwargs, y_true, y_pred):
    """Check y_true against y_pred for the loss' label kind; return y_true (Keras' [B] -> [B, 1] fix applied)."""
    name = fn.__name__
    ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    if spec.labels == "dense":
        if ts == ps:
            return y_true
        if len(ts) == 1 and ps == ts + (1,):
            return y_true[:, None]  # Keras expands rank-1 labels against [B, 1] predictions
        if ts + (1,) == ps:
            fix = "Add the trailing axis: y_true[..., None] (Keras would squeeze y_pred and average over T instead)."
        elif ts == ps + (1,):
            fix = "Drop the trailing axis: y_true[..., 0] (Keras would squeeze y_true and average over T instead)."
        else:
            fix = "Give y_true the shape of y_pred."
        raise ValueError(f"`y_true` of {name} must have the shape of `y_pred` {ps}; received {ts}. {fix}")
    if spec.labels == "sparse":
        axis = kwargs.get("axis", -1) % len(ps) if ps else 0
        expected = ps[:axis] + ps[axis + 1 :]
        if ps and (ts == expected or ts == expected + (1,)):
            return y_true
        raise ValueError(
            f"`y_true` of {name} must hold class ids of shape {expected} (y_pred {ps} without its class axis), "
            f"or {expected + (1,)}; received {ts}. For one-hot targets use categorical_crossentropy, or "
            "pass y_true.argmax(-1)."
        )
    if len(ts) == 1 and len(ps) == 2 and ts[0] == ps[0]:
        return y_true
    raise ValueError(
        f"`circle` needs `y_true` of shape [B] and `y_pred` of shape [B, D]; received y_true {ts}, y_pred {ps}. "
        "Flatten valid steps first: y_pred[mask], y_true[mask]."
    )


def _check_mask(mask, values_shape):
    shape = shape_of(mask)
    dtype = np.dtype(mask.dtype if hasattr(mask, "dtype") else np.asarray(mask).dtype)
    if dtype.kind not in "biuf":
        raise TypeError(f"`mask` must be bool (True = valid step) or 0/1 numbers; received dtype {dtype}.")
    if shape != tuple(values_shape):
        raise ValueError(
            f"`mask` must have the shape of the per-step loss values {tuple(values_shape)} ([B, T]: y_pred without "
            f"its last axis); received {shape}. Build one with jm.lengths_to_mask(lengths, T) or jm.compute_mask(x)."
        )
    mask = jnp.asarray(mask)
    return mask if dtype.kind == "b" else mask != 0


def _check_weights(sample_weight, values_shape):
    """Return weights of the values' rank: [B] -> [B, 1, ...] (always; never guessed by B == T)."""
    w = jnp.asarray(sample_weight)
    shape, vs = tuple(w.shape), tuple(values_shape)
    if not jnp.issubdtype(w.dtype, jnp.number) and w.dtype != jnp.bool_:
        raise TypeError(f"`sample_weight` must be numeric; received dtype {w.dtype}.")
    if shape == ():
        return jnp.broadcast_to(w, vs[:1] + (1,) * (len(vs) - 1))
    if shape == vs:
        return w
    if shape == vs[:1]:
        return w.reshape(vs[:1] + (1,) * (len(vs) - 1))
    if shape == vs + (1,):
        return w[..., 0]
    allowed = ", ".join(str(s) for s in dict.fromkeys([vs[:1], vs, vs + (1,)]))
    raise ValueError(
        f"`sample_weight` must be per sample [B] or per step [B, T] (or [B, T, 1]) for loss values of shape {vs}, "
        f"i.e. one of {allowed}; received {shape}. Check that the batch axis comes first."
    )


def _class_weights(class_weight, y_true, y_pred, values_shape, dtype, sparse):
    """Per-step weights from a {class: weight} dict: argmax of one-hot labels, the id of sparse labels (truncated
    to int as the sparse losses do), the rounded value of binary labels."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"`class_weight` must be a dict {{class id: weight}}; received {type(class_weight).__name__}.")
    vs, ts = tuple(values_shape), tuple(y_true.shape)
    to_id = (lambda y: y.astype(jnp.int32)) if sparse else jnp.round
    if ts == vs:
        labels = to_id(y_true)
    elif ts == vs + (1,):
        labels = to_id(y_true[..., 0])
    elif len(ts) == len(vs) + 1 and ts[:-1] == vs:
        labels = jnp.argmax(y_true, axis=-1)
    else:
        raise ValueError(
            f"`class_weight` needs `y_true` of shape {vs} (class ids), {vs + (1,)} (binary) or {vs} + (C,) "
            f"(one-hot) to match the loss values {vs}; received {ts}. Pass per-step `sample_weight` instead."
        )
    num_classes = y_pred.shape[-1] if y_pred.ndim and y_pred.shape[-1] > 1 else 2
    bad = [k for k in class_weight if isinstance(k, bool) or not isinstance(k, (int, np.integer))
           or not 0 <= k < num_classes]
    if bad:
        raise ValueError(
            f"`class_weight` keys must be class ids in [0, {num_classes}) (y_pred has {num_classes} classes); "
            f"received keys {sorted(class_weight, key=repr)}, of which {bad!r} are outside. Remove them or fix the ids."
        )
    table = np.ones(num_classes, dtype=np.float64)
    for k, v in class_weight.items():
        table[int(k)] = float(v)
    labels = labels.astype(jnp.int32)
    inside = (labels >= 0) & (labels < num_classes)
    return jnp.where(inside, jnp.asarray(table, dtype)[jnp.clip(labels, 0, num_classes - 1)], 1.0).astype(dtype)


def _fill(x, mask, value, full):
    """Replace x at masked positions (``full``) or only its non-finite masked entries, aligning mask as a prefix."""
    if x is None or tuple(x.shape[: mask.ndim]) != tuple(mask.shape):
        return x
    if not full and not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    bad = ~m if full else (~m & ~jnp.isfinite(x))
    return jnp.where(bad, jnp.asarray(value).astype(x.dtype), x)


# ---------------------------------------------------------------------------------------------- masked_loss


def masked_loss(
    loss,
    y_true,
    y_pred,
    *,
    mask=None,
    sample_weight=None,
    class_weight=None,
    reduction="sum_over_batch_size",
    semantics="keras3",
    y_pred_logits=None,
    **loss_kwargs,
):
    """Masked, weighted loss reduced exactly as the chosen Keras version reduces it.

    With l the per-step values of ``loss``, m the mask, w the weights (sample x class), N = #steps:

    .. math:: \\text{keras3, tf\\_keras: } \\sum w m l / \\sum m \\qquad
              \\text{tf\\_keras\\_pre212: } \\sum w m l / N \\qquad
              \\text{keras\\_legacy: } \\frac{\\sum w m l}{\\sum m} \\cdot \\frac{|w|}{\\#\\{w \\ne 0\\}}

    (``sum_over_batch_size``; see :mod:`jaxmask.functional.reduction` for the other reductions.) The result
    is never NaN because of masking: a fully masked batch gives 0 with zero gradients in every profile
    (tf_keras itself gives NaN there), and NaN/Inf at masked steps does not leak. Masked inputs of
    per-step losses are replaced by harmless values before the loss is evaluated, so even losses with
    singular gradients at padding values (e.g. ``p ** q`` at p = 0) stay finite.

    Args:
      loss: a name accepted by :func:`get` (``"mse"``, ``"BinaryCrossentropy"`` ...), a ``jm.losses``
        function, a :class:`Loss` object, or any callable ``(y_true, y_pred) -> values``. Static under jit.
      y_true: [B, T, K] targets ([B, T] or [B, T, 1] class ids for sparse losses).
      y_pred: [B, T, K] predictions.
      mask: optional [B, T] bool (or 0/1), True = valid step; the shape of the per-step values.
      sample_weight: optional [B] (per sample; always expanded to [B, 1], never matched to T even when
        B == T), [B, T] or [B, T, 1] weights.
      class_weight: optional dict {class id: weight}, turned into per-step weights from y_true (argmax of
        one-hot, the id of sparse labels, the rounded label of binary ones; missing classes weigh 1);
        multiplied with ``sample_weight`` as tf_keras does.
      reduction: "sum_over_batch_size" (= "mean"), "sum", "mean_with_sample_weight" (keras3 only) or "none".
      semantics: "keras3" (Keras 3.x), "tf_keras" (tf.keras 2.12-2.21), "tf_keras_pre212" (tf.keras <= 2.11)
        or "keras_legacy" (Keras 1.x-2.2 ``weighted_masked_objective``).
      y_pred_logits: optional pre-activation values with ``y_pred == sigmoid(y_pred_logits)`` (or softmax).
        Reproduces Keras' TF backend, which computes binary/categorical/sparse categorical (and the bce
        term of binary focal) cross-entropy from the logits when y_pred is the output of a sigmoid/softmax
        activation; without it the probabilities are clipped to [1e-7, 1 - 1e-7] as on the JAX backend.
      **loss_kwargs: passed to the loss function (``from_logits``, ``label_smoothing``, ``axis``, ``delta`` ...).

    Returns:
      A scalar, or [B, T] values (0 at masked steps) for ``reduction="none"``.

    Raises:
      ValueError: unknown loss/reduction/semantics; shape mismatch between y_true, y_pred, mask,
        sample_weight; class_weight keys outside the classes; a mask or weights on a loss that reduces
        to a scalar (``dice``/``tversky`` with ``axis=None``).
      TypeError: wrong argument types.

    Deviations from Keras, all deliberate: 0 instead of NaN for a fully masked batch (tf_keras); [B] weights
    are per sample even when B == T (Keras 3.15 raises or weights along time); ``mean_with_sample_weight``
    divides by the per-step weights Σ w·m also without a mask (Keras 3 then divides [B, 1] weights by
    Σ_b w_b, i.e. T times less); [B, T] labels with [B, T, 1] predictions are an error (Keras squeezes and
    averages over T).

    Keras equivalent: ``keras.losses.Loss.__call__`` with a mask attached to ``y_pred``
    (``model.compile(loss=...)`` after a ``Masking``/``Embedding(mask_zero=True)`` layer).

    Example:
      >>> masked_loss("sparse_categorical_crossentropy", labels, probs, mask=mask, sample_weight=w)
    """
    reduction = "none" if reduction is None else reduction
    _check_names(reduction, semantics)
    fn, kwargs, spec = _resolve(loss, loss_kwargs)

    y_true = jnp.asarray(y_true)
    y_pred = jnp.asarray(y_pred)
    # Keras' loss dtype is float32: half-precision predictions (a mixed_bfloat16 policy) are reduced in float32
    y_true, y_pred = (a.astype(jnp.float32) if a.dtype in (jnp.bfloat16, jnp.float16) else a for a in (y_true, y_pred))
    if spec is not None:
        y_true = _check_labels(spec, fn, kwargs, y_true, y_pred)
    if y_pred_logits is not None:
        if spec is None or not spec.logits:
            raise ValueError(
                f"`y_pred_logits` is only used by {_LOGITS_LOSSES} (Keras' TF-backend logits path); received it "
                f"with loss {getattr(fn, '__name__', fn)!r}. Drop it, or pass from_logits=True with the logits."
            )
        y_pred_logits = jnp.asarray(y_pred_logits)
        if tuple(y_pred_logits.shape) != tuple(y_pred.shape):
            raise ValueError(
                f"`y_pred_logits` must have the shape of `y_pred` {tuple(y_pred.shape)}; received "
                f"{tuple(y_pred_logits.shape)}. Pass the pre-activation output of the layer that produced y_pred."
            )
        kwargs["logits"] = y_pred_logits

    values_shape = jax.eval_shape(
        lambda t, p, k: fn(t, p, **{**kwargs, **k}),
        jax.ShapeDtypeStruct(y_true.shape, y_true.dtype),
        jax.ShapeDtypeStruct(y_pred.shape, y_pred.dtype),
        {} if y_pred_logits is None else {"logits": jax.ShapeDtypeStruct(y_pred.shape, y_pred_logits.dtype)},
    ).shape
    if values_shape == () and (mask is not None or sample_weight is not None or class_weight is not None):
        raise ValueError(
            f"Loss {getattr(fn, '__name__', fn)!r} reduces to a scalar (axis=None), so `mask`, `sample_weight` and "
            "`class_weight` cannot be applied (Keras silently includes padded steps). Pass axis=-1 for per-step "
            "values."
        )

    labels = y_true
    if mask is not None:
        mask = _check_mask(mask, values_shape)
        if spec is not None and _last_axis(fn, kwargs, y_pred.ndim):
            full = spec.per_step
            y_true = _fill(y_true, mask, 0 if spec.labels != "dense" else 0.5, full)
            y_pred = _fill(y_pred, mask, 0.5, full)
            if y_pred_logits is not None:
                kwargs["logits"] = _fill(y_pred_logits, mask, 0.0, full)

    if spec is not None and spec.with_mask is not None:
        values, out_mask = spec.with_mask(y_true, y_pred, **kwargs)
        if out_mask is not None:
            mask = out_mask if mask is None else mask & out_mask
    else:
        values = jnp.asarray(fn(y_true, y_pred, **kwargs))
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.float32)

    weights = None
    if sample_weight is not None:
        weights = _check_weights(sample_weight, values_shape).astype(values.dtype)
    if class_weight is not None:
        sparse = spec is not None and spec.labels == "sparse"
        cw = _class_weights(class_weight, labels, y_pred, values_shape, values.dtype, sparse)
        weights = cw if weights is None else weights * cw
    return reduce_weighted_loss(values, weights=weights, mask=mask, reduction=reduction, semantics=semantics)
