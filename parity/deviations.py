"""Documented reference bugs: where Keras gives a NaN, an error or a backend-dependent value and jaxmask
deliberately does not. The parity runner reports them as named deviations, never as pass or fail, and only
after checking that the difference is exactly the documented one (everything else must still match).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Deviation:
    name: str
    references: tuple[str, ...]
    summary: str
    jaxmask: str
    upstream: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEVIATIONS = {
    d.name: d
    for d in (
        Deviation(
            name="tf_keras-nan-fully-masked-batch",
            references=("tf_keras",),
            summary="tf_keras divides the masked loss by Σ mask; a batch whose every step is masked gives "
            "loss NaN and NaN gradients.",
            jaxmask="loss 0 and zero gradients (Keras 3's divide_no_nan value).",
            upstream="tf_keras losses_utils.apply_valid_mask (keras-team/keras PR #16712, shipped in TF 2.12); "
            "fixed in Keras 3 by keras-team/keras PR #21908 (divide_no_nan).",
        ),
        Deviation(
            name="keras-legacy-nan-fully-masked-batch",
            references=("keras3", "keras3-jax", "tf_keras"),
            summary="Keras <= 2.2.4 weighted_masked_objective divides by mean(mask): NaN when every step is masked.",
            jaxmask="loss 0 and zero gradients.",
            upstream="keras/engine/training_utils.py weighted_masked_objective; epsilon added by keras-team/keras "
            "PR #11643 (Keras 2.2.5).",
        ),
        Deviation(
            name="keras-jax-leading-masked-initial-h",
            references=("keras3-jax",),
            summary="On Keras 3's JAX backend an RNN outputs the initial h (not 0) at masked steps before the "
            "first valid step; differs from the TF backend only with a non-zero initial_state.",
            jaxmask="0 by default (TF backend); initial_output='initial_state' reproduces the JAX backend exactly "
            "(checked).",
            upstream="keras/src/backend/jax/rnn.py (the masked output is taken from states[0]).",
        ),
        Deviation(
            name="keras3-per-sample-weight",
            references=("keras3", "keras3-jax"),
            summary="Keras 3.15 raises 'Incompatible shapes' (TF) / a broadcast error (JAX) for [B] sample "
            "weights with a [B, T] loss, and silently weights along time when B == T.",
            jaxmask="[B] weights are per sample ([B, 1]) always; compared against Keras given sw[:, None].",
            upstream="keras/src/losses/loss.py squeeze_or_expand_to_same_rank; no upstream issue found.",
        ),
        Deviation(
            name="keras-gap-nan-fully-masked-row",
            references=("keras3", "keras3-jax", "tf_keras"),
            summary="GlobalAveragePooling1D computes Σ mask·x / Σ mask: NaN (0/0) for a fully masked row, which "
            "makes the batch loss and every gradient NaN.",
            jaxmask="0 for that row; the other rows, and loss and gradients on the batch without the fully masked "
            "rows, match (checked).",
            upstream="keras/src/layers/pooling/global_average_pooling1d.py (tf_keras: "
            "tf_keras/src/layers/pooling/global_average_pooling1d.py).",
        ),
        Deviation(
            name="keras3-mha-clears-input-masks",
            references=("keras3", "keras3-jax"),
            summary="Keras 3's MultiHeadAttention.call deletes the Keras mask of its query, value and key tensors "
            "(set_keras_mask(t, None)); in a functional graph every layer that consumes one of those tensors after "
            "the MHA has run (in Keras' node order) sees no mask, e.g. Attention()([x, mha(x, x)]) stops zeroing "
            "padded queries and a second MHA on x attends to padding. tf_keras keeps the masks.",
            jaxmask="masks stay attached to every tensor (tf_keras' behaviour); graphs where no layer reads an "
            "MHA input's mask after the MHA (the keras.io transformer block) are unaffected and match.",
            upstream="keras/src/layers/attention/multi_head_attention.py MultiHeadAttention.call (added to silence "
            "the EinsumDense mask warning of keras-team/keras issue #20455).",
        ),
        Deviation(
            name="keras-mha-scores-mask",
            references=("keras3", "keras3-jax", "tf_keras"),
            summary="With return_attention_scores=True and a mask, Keras 3 and tf_keras attach the [B, 1, T, S] "
            "attention mask to the returned scores [B, N, T, S] (the output mask of the Softmax layer inside MHA); "
            "it is not a [B, T] sequence mask and no Keras layer can consume it.",
            jaxmask="the scores carry no mask; their values match.",
            upstream="keras/src/layers/attention/multi_head_attention.py _masked_softmax (tf_keras: "
            "tf_keras/src/layers/attention/multi_head_attention.py).",
        ),
        Deviation(
            name="tf_keras-ema-starts-at-initial-weights",
            references=("tf_keras",),
            summary="tf_keras' optimizers with use_ema=True start the moving average at the weights before the first "
            "step and apply ema_momentum from step 1; Keras 3 starts it at the weights after the first step "
            "(momentum 0 at iteration 0). The EMA weights differ by ema_momentum^t * (w_0 - w_1).",
            jaxmask="Keras 3's rule (jm.optimizers, use_ema=True); tf_keras' average is reproduced exactly from the same "
            "trajectory in tests/test_optimizers.py.",
            upstream="tf_keras/src/optimizers/optimizer.py build (add_variable_from_reference(var, 'average', "
            "initial_value=var)) vs keras/src/optimizers/base_optimizer.py _update_model_variables_moving_average.",
        ),
        Deviation(
            name="tf_keras-no-gradient-accumulation",
            references=("tf_keras",),
            summary="tf_keras' optimizers have no gradient_accumulation_steps argument (Keras 3 added it); passing "
            "it raises.",
            jaxmask="gradient_accumulation_steps as Keras 3 (mean of k gradients, schedules on micro-steps, EMA every "
            "call).",
            upstream="keras/src/optimizers/base_optimizer.py (Keras 3 only).",
        ),
        Deviation(
            name="tf_keras-optimizer-defaults",
            references=("tf_keras",),
            summary="Defaults that differ from Keras 3: Lion(learning_rate=1e-4) (Keras 3: 1e-3), "
            "RMSprop(ema_overwrite_frequency=100) (Keras 3: None), and Adam(adaptive_epsilon=False), an argument "
            "Keras 3 does not have. tf_keras' optimizers are XLA-compiled by default (jit_compile=True).",
            jaxmask="Keras 3's defaults; pass tf_keras' values explicitly to reproduce tf_keras.",
            upstream="tf_keras/src/optimizers/lion.py, rmsprop.py, adam.py.",
        ),
        Deviation(
            name="keras-unitnorm-tiny-norm-clamp",
            references=("keras3", "keras3-jax", "tf_keras"),
            summary="UnitNormalization clamps differently below norm 1e-6: Keras 3 computes x · min(1/‖x‖, 1e12) "
            "(keras.ops.normalize), tf_keras x / sqrt(max(‖x‖², 1e-12)) (tf.linalg.l2_normalize), so a step of norm "
            "1e-7 gives norm 1 in Keras 3 and 0.1 in tf_keras. An all-zero (padded) step gives 0 in both, with "
            "gradient 1e12 (Keras 3) or 1e6 (tf_keras) times the upstream gradient.",
            jaxmask="each reference's rule: UnitNormalization(semantics='keras3' | 'tf_keras'), set by the loader "
            "from the file's Keras version (tests/test_normalization.py checks both at norms 1e-7 and 1e-13). "
            "parity.to_keras into the other flavor writes only axis, so that model differs below norm 1e-6.",
            upstream="keras/src/ops/nn.py _normalize (order 2); tf_keras/src/layers/normalization/"
            "unit_normalization.py (tf.linalg.l2_normalize).",
        ),
        Deviation(
            name="keras-jax-dot-normalize-zero-vector-nan-grad",
            references=("keras3-jax",),
            summary="Dot(normalize=True) on Keras 3's JAX backend computes x · min(rsqrt(Σx²), 1e7): for an all-zero "
            "vector (a padded step after a bias-free or zero-bias projection) the value is 0 but the gradient is "
            "0 · inf = NaN, which makes every weight's gradient NaN. The TF backend and tf_keras give finite "
            "gradients.",
            jaxmask="x · rsqrt(max(Σx², ε²)), the same values (ε = 1e-7 Keras 3, 1e-6 tf_keras) with finite "
            "gradients; the graph case merge_dot_cosine runs on keras3 and tf_keras only.",
            upstream="keras/src/ops/nn.py _normalize (inv_norm = minimum(rsqrt(square_sum), 1 / epsilon)); "
            "keras/src/layers/merging/dot.py.",
        ),
        Deviation(
            name="keras-jax-unitnorm-zero-step-nan-grad",
            references=("keras3-jax",),
            summary="UnitNormalization on Keras 3's JAX backend computes x · min(rsqrt(Σx²), 1e12): at an all-zero "
            "step (padding after Masking and a zero-bias Dense) the value is 0 but the gradient is 0 · inf = NaN, "
            "which makes every weight below it NaN even when the loss masks that step. The TF backend gives "
            "1e12 × the upstream gradient there (finite), tf_keras 1e6 ×.",
            jaxmask="the TF backend's values and gradients (the clamped branch is chosen with a where, so rsqrt never "
            "sees 0); the graph case norm_unitnorm_zero_steps runs on keras3 and tf_keras only, "
            "norm_batchnorm_time_axis_unitnorm (no all-zero step) on all three.",
            upstream="keras/src/ops/nn.py _normalize (inv_norm = minimum(rsqrt(square_sum), 1 / epsilon)); "
            "keras/src/layers/normalization/unit_normalization.py.",
        ),
    )
}
