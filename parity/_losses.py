"""The loss of a parity check, computed on both sides.

Reference side, by semantics (``keras3`` and ``tf_keras`` run the library's own code; the other two drive
the installed library's per-step losses the way the old versions did, since those versions cannot be
installed next to it):

* ``keras3``: a Keras 3 ``Loss`` object called on the model output, which carries its mask.
* ``tf_keras``: a tf_keras ``Loss`` object called on the model output (mask attached).
* ``tf_keras_pre212``: tf.keras <= 2.11 compile path: the mask is folded into the sample weights with
  tf_keras' own ``losses_utils.apply_mask`` and the loss object sees an output *without* mask, so
  ``sum_over_batch_size`` divides by all B·T steps.
* ``keras_legacy``: Keras 2.2.4's ``weighted_masked_objective`` transcribed line by line on top of the
  reference's per-step loss values (``reduction="none"``), including its ``1 / mean(mask)`` scaling and
  the per-sample time average when the weights are [B].

jaxmask side: ``jm.masked_loss`` with the output mask of the jaxmask model, and the pre-activation logits
whenever the reference computed the cross-entropy from them (TF backend, ``_keras_logits``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import jaxmask as jm

SEMANTICS_REFERENCES = {
    "keras3": ("keras3", "keras3-jax"),
    "tf_keras": ("tf_keras",),
    "tf_keras_pre212": ("tf_keras",),
    "keras_legacy": ("keras3", "keras3-jax", "tf_keras"),
}
"""Which references can check which loss semantics."""

LOGIT_LOSSES = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
                "binary_focal_crossentropy")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A hashable description of the loss: name, keyword arguments, reduction, semantics."""

    name: str
    kwargs: tuple = ()
    reduction: str = "sum_over_batch_size"
    semantics: str = "keras3"

    @property
    def kw(self) -> dict:
        return dict(self.kwargs)

    def describe(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in self.kwargs)
        return f"{self.name}{extra}/{self.reduction}/{self.semantics}"


def canonical_name(K, name: str) -> str:
    """The Keras function name of a loss (``"mse"`` -> ``"mean_squared_error"``)."""
    fn = K.losses.get(name)
    inner = getattr(fn, "fn", fn)
    return getattr(inner, "__name__", name)


def keras_loss_object(K, name: str, reduction: str, kwargs: dict):
    """A Keras ``Loss`` object (class of the loss function ``name``) with ``reduction``."""
    canonical = canonical_name(K, name)
    wanted = canonical.replace("_", "").lower()
    classes = {n.lower(): n for n in dir(K.losses) if n[:1].isupper()}
    if wanted not in classes:
        raise ValueError(f"no Keras loss class for loss {name!r} ({canonical}).")
    return getattr(K.losses, classes[wanted])(reduction=reduction, **kwargs)


def _get_mask(K, flavor, tensor):
    if flavor == "tf_keras":
        return getattr(tensor, "_keras_mask", None)
    from keras.src.backend import get_keras_mask

    return get_keras_mask(tensor)


def _unmasked(flavor, backend, tensor):
    """A copy of ``tensor`` without Keras mask (keeping ``_keras_logits`` on TensorFlow)."""
    if backend == "jax":
        return tensor + 0
    import tensorflow as tf

    out = tf.identity(tensor)
    if hasattr(tensor, "_keras_logits"):
        out._keras_logits = tensor._keras_logits
    return out


def keras_loss(K, flavor: str, backend: str, spec: LossSpec, y_true, y_pred, sample_weight):
    """The reference loss (a backend scalar) of ``y_pred`` (a model output carrying its Keras mask)."""
    if spec.semantics in ("keras3", "tf_keras"):
        return keras_loss_object(K, spec.name, spec.reduction, spec.kw)(y_true, y_pred, sample_weight=sample_weight)
    mask = _get_mask(K, flavor, y_pred)
    bare = _unmasked(flavor, backend, y_pred)
    if spec.semantics == "tf_keras_pre212":
        from tf_keras.src.utils import losses_utils

        sw = losses_utils.apply_mask(bare, sample_weight, mask)
        return keras_loss_object(K, spec.name, spec.reduction, spec.kw)(y_true, bare, sample_weight=sw)
    # keras_legacy: Keras 2.2.4 training_utils.weighted_masked_objective, verbatim but for the backend calls.
    if flavor == "tf_keras":
        import tensorflow as tf

        mean, cast = tf.reduce_mean, tf.cast
        not_equal = tf.not_equal
    else:
        ops = K.ops
        mean, cast, not_equal = ops.mean, ops.cast, ops.not_equal
    score_array = keras_loss_object(K, spec.name, "none", spec.kw)(y_true, bare)
    if mask is not None:
        mask = cast(mask, "float32")
        score_array *= mask
        score_array /= mean(mask)
    weights = sample_weight
    if weights is None:  # Keras 2.2 always fed weights: ones of shape [B] (sample_weight_mode=None)
        weights = np.ones((np.shape(y_true)[0],), np.float32)
    weights = cast(weights, "float32")
    ndim, weight_ndim = len(score_array.shape), len(weights.shape)
    score_array = mean(score_array, axis=list(range(weight_ndim, ndim))) if weight_ndim < ndim else score_array
    score_array *= weights
    score_array /= mean(cast(not_equal(weights, 0), "float32"))
    return mean(score_array)


def jax_loss(spec: LossSpec, y_true, y_pred, mask, sample_weight, logits=None):
    """jaxmask's loss: ``jm.masked_loss`` with the model's output mask."""
    return jm.masked_loss(
        spec.name,
        y_true,
        y_pred,
        mask=mask,
        sample_weight=sample_weight,
        reduction=spec.reduction,
        semantics=spec.semantics,
        y_pred_logits=logits,
        **spec.kw,
    )


def reference_uses_logits(K, backend: str, spec: LossSpec, y_true, y_pred) -> bool:
    """Whether the reference computes this cross-entropy from ``y_pred._keras_logits``.

    Keras' TF backend does so when the tensor reaching the loss kernel still carries ``_keras_logits``: the
    output of a sigmoid/softmax, not reshaped on the way, i.e. unless ``squeeze_or_expand_to_same_rank``
    squeezes ``y_pred`` (y_true of rank one less with a trailing 1 on y_pred).
    """
    if backend != "tensorflow" or not hasattr(y_pred, "_keras_logits"):
        return False
    if canonical_name(K, spec.name) not in LOGIT_LOSSES or spec.kw.get("from_logits", False):
        return False
    rank_true, shape_pred = len(np.shape(y_true)), tuple(y_pred.shape)
    return not (len(shape_pred) == rank_true + 1 and shape_pred[-1] == 1)
