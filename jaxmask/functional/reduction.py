"""The one masked, weighted reduction of per-step loss values, in the four Keras profiles.

Notation: l = per-step loss values (shape S, e.g. [B, T]), m = mask (True = valid step), w = weights
already broadcastable to S ([B, 1] per sample, [B, T] per step), N = number of elements of S,
V = Σ m (N without a mask).

| semantics          | sum_over_batch_size / mean                       | sum     | mean_with_sample_weight |
|--------------------|--------------------------------------------------|---------|-------------------------|
| ``keras3``         | Σ w·m·l / V, 0 when V = 0                        | Σ w·m·l | Σ w·m·l / Σ w·m         |
| ``tf_keras``       | Σ w·m·l / V (tf_keras: NaN when V = 0; here 0)   | Σ w·m·l | —                       |
| ``tf_keras_pre212``| Σ w·m·l / N                                      | Σ w·m·l | —                       |
| ``keras_legacy``   | Σ w·m·l / V · W / #{w ≠ 0} (W = size of w)       | —       | —                       |

``none`` returns w·m·l (0 at masked steps) in every profile.

``keras_legacy`` is Keras 2.2.4's ``weighted_masked_objective`` (keras/engine/training_utils.py): the masked
scores are divided by mean(m), averaged down to the weights' rank, multiplied by w, divided by mean(w != 0)
and averaged; Keras 2.2 always passes weights (ones [B] by default), so without weights the factor is 1.
Keras 2.2.4 has no epsilon in mean(m) (NaN for an empty batch; keras PR #11643 added 1e-7 later): here 0.

Every division is a double ``where``, and masked values enter through ``where`` rather than a product, so a
fully masked batch gives 0 with zero (finite) gradients, and NaN/Inf at masked steps never leaks.
"""

from __future__ import annotations

import jax.numpy as jnp

SEMANTICS = ("keras3", "tf_keras", "tf_keras_pre212", "keras_legacy")
REDUCTIONS = {
    "keras3": ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none"),
    "tf_keras": ("sum_over_batch_size", "mean", "sum", "none"),
    "tf_keras_pre212": ("sum_over_batch_size", "mean", "sum", "none"),
    "keras_legacy": ("sum_over_batch_size", "mean", "none"),
}


def _divide_no_nan(num, den):
    """``num / den``, 0 where ``den == 0``, with finite gradients on both sides."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def reduce_weighted_loss(values, *, weights=None, mask=None, reduction="sum_over_batch_size", semantics="keras3"):
    """Mask, weight and reduce per-step loss values as the chosen Keras version does.

    Args:
      values: [B, ...] per-step loss values (S).
      weights: optional weights of S's rank, broadcastable to S: [B, 1, ...] per sample, S per step.
      mask: optional bool array of shape S; True = valid step.
      reduction: one of ``REDUCTIONS[semantics]``.
      semantics: one of ``SEMANTICS``.

    Returns:
      A scalar, or S-shaped values for ``reduction="none"``.

    The inputs are trusted (validated by :func:`jaxmask.masked_loss`).
    """
    dtype = values.dtype
    if reduction == "mean":
        reduction = "sum_over_batch_size"
    n = values.size
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)

    if reduction == "none":
        out = values if weights is None else values * weights
        return out if mask is None else jnp.where(mask, out, 0)

    rescale = reduction == "sum_over_batch_size" and semantics in ("keras3", "tf_keras") and mask is not None
    if rescale:
        # Keras 3 `apply_mask` / tf_keras `apply_valid_mask`: valid steps get weight N / V, so that the
        # division by N below yields Σ w·m·l / V. Kept in Keras' order so the float32 rounding matches.
        valid = jnp.sum(mask.astype(dtype))
        step_weight = jnp.where(mask, _divide_no_nan(jnp.asarray(n, dtype), valid), 0).astype(dtype)
    elif mask is not None:
        step_weight = mask.astype(dtype)
    else:
        step_weight = None

    if weights is None:
        total_weight = step_weight
    elif step_weight is None:
        total_weight = weights
    else:
        total_weight = weights * step_weight
    if total_weight is None:
        weighted = values
    else:
        weighted = values * total_weight
    if mask is not None:
        weighted = jnp.where(mask, weighted, 0)
    total = jnp.sum(weighted)

    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight":
        if total_weight is None:
            return total / jnp.asarray(n, dtype)
        step_weights = jnp.broadcast_to(total_weight, values.shape)
        if mask is not None:  # padded steps' weights may hold anything (NaN·0 = NaN)
            step_weights = jnp.where(mask, step_weights, 0)
        return _divide_no_nan(total, jnp.sum(step_weights))
    if semantics == "keras_legacy":
        valid = jnp.asarray(n, dtype) if mask is None else jnp.sum(mask.astype(dtype))
        loss = _divide_no_nan(total, valid)
        if weights is not None:
            nonzero = jnp.sum((weights != 0).astype(dtype))
            loss = _divide_no_nan(loss * jnp.asarray(weights.size, dtype), nonzero)
        return loss
    return _divide_no_nan(total, jnp.asarray(n, dtype))
