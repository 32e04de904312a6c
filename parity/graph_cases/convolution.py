"""Graph cases for the convolution and pooling layers. None of them supports masking: they compute over padded
steps and drop the mask (Keras 3 warns, tf_keras is silent), so the recurrent layers after them run unmasked:
a causal Conv1D front-end before an LSTM, SeparableConv1D with same-padded average pooling, padding / cropping /
up-sampling into GlobalMaxPooling1D, grouped strided convolution, and GlobalMaxPooling1D over a masked LSTM's
sequence (its max includes the padded steps)."""

from __future__ import annotations

import warnings

from parity.graph_cases import graph
from parity.graph_cases.data import F, T, features


def _quiet(build):
    """Keras 3 warns when a layer that does not support masking receives a mask (the point of these cases)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build()


@graph("conv_causal_lstm")
def causal_lstm(K, padding):
    """tests/models' conv_lstm: Conv1D(causal, relu) -> MaxPooling1D -> LSTM, no mask anywhere."""
    L = K.layers
    inputs = K.Input((None, F))
    x = L.MaxPooling1D(2)(L.Conv1D(4, 3, padding="causal", activation="relu")(inputs))
    return K.Model(inputs, L.Dense(1)(L.LSTM(3)(x))), features(padding, "conv_causal_lstm", t=8)


@graph("conv_after_masking")
def after_masking(K, padding):
    """Masking -> Conv1D(same, dilated) -> LSTM(return_sequences): the Conv1D drops the mask, the LSTM and the
    output carry none."""
    L = K.layers
    inputs = K.Input((None, F))

    def build():
        x = L.Conv1D(4, 2, padding="same", dilation_rate=2)(L.Masking()(inputs))
        return K.Model(inputs, L.Dense(2)(L.LSTM(3, return_sequences=True)(x)))

    return _quiet(build), features(padding, "conv_after_masking")


@graph("conv_separable_avgpool")
def separable_avgpool(K, padding):
    """SeparableConv1D(same, depth_multiplier=2) -> AveragePooling1D(3, 2, same) -> GRU."""
    L = K.layers
    inputs = K.Input((None, F))

    def build():
        x = L.SeparableConv1D(4, 3, padding="same", depth_multiplier=2, activation="tanh")(L.Masking()(inputs))
        x = L.AveragePooling1D(3, strides=2, padding="same")(x)
        return K.Model(inputs, L.Dense(1)(L.GRU(3)(x)))

    return _quiet(build), features(padding, "conv_separable_avgpool")


@graph("conv_separable_causal", references=("tf_keras",))
def separable_causal(K, padding):
    """tf_keras' SeparableConv1D(padding="causal") (Keras 3 refuses causal there) -> LSTM."""
    L = K.layers
    inputs = K.Input((None, F))
    x = L.SeparableConv1D(3, 3, padding="causal", dilation_rate=2)(inputs)
    return K.Model(inputs, L.Dense(1)(L.LSTM(3)(x))), features(padding, "conv_separable_causal")


@graph("conv_pad_crop_upsample_gmp")
def pad_crop_upsample(K, padding):
    """ZeroPadding1D -> Conv1D(valid, dilated) -> Cropping1D -> UpSampling1D -> MaxPooling1D(same) ->
    GlobalMaxPooling1D."""
    L = K.layers
    inputs = K.Input((None, F))
    x = L.Conv1D(4, 3, dilation_rate=2, activation="relu")(L.ZeroPadding1D((2, 1))(inputs))
    x = L.MaxPooling1D(3, strides=2, padding="same")(L.UpSampling1D(2)(L.Cropping1D((1, 0))(x)))
    return K.Model(inputs, L.Dense(2)(L.GlobalMaxPooling1D()(x))), features(padding, "conv_pad_crop")


@graph("conv_groups_strides")
def groups_strides(K, padding):
    """Conv1D(groups=3, strides=2, same, no bias) -> Conv1D(kernel 1) -> GlobalMaxPooling1D(keepdims) -> Dense."""
    L = K.layers
    inputs = K.Input((T, F))
    x = L.Conv1D(6, 3, strides=2, padding="same", groups=3, use_bias=False)(inputs)
    x = L.GlobalMaxPooling1D(keepdims=True)(L.Conv1D(4, 1, activation="elu")(x))
    return K.Model(inputs, L.Dense(1)(x)), features(padding, "conv_groups_strides")


@graph("conv_gmp_over_masked_lstm")
def gmp_over_masked_lstm(K, padding):
    """Masking -> LSTM(return_sequences) -> GlobalMaxPooling1D: the mask reaches the LSTM, but the max runs over
    every step (the LSTM's carried outputs at padded steps, zeros before the first valid step)."""
    L = K.layers
    inputs = K.Input((None, F))

    def build():
        x = L.GlobalMaxPooling1D()(L.LSTM(4, return_sequences=True)(L.Masking()(inputs)))
        return K.Model(inputs, L.Dense(1)(x))

    return _quiet(build), features(padding, "conv_gmp_over_masked_lstm")
