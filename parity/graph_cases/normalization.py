"""Graph cases for the normalisation layers: LayerNormalization in a transformer-style block and over time and
features, BatchNormalization between recurrent layers (non-trivial moving statistics; the catalogue runs in
inference mode, so those statistics are what normalise) and over the time axis, UnitNormalization, and Keras 3's
``rms_scaling``."""

from __future__ import annotations

import zlib

import numpy as np

from parity.graph_cases import graph
from parity.graph_cases.data import F, T, VOCAB, features, tokens


def _random_statistics(model, key: str) -> None:
    """Moving mean ~ N(0, 1), moving variance ~ U(0.5, 2), gamma ~ N(1, 0.2), beta ~ N(0, 0.2) for every
    BatchNormalization of ``model``, in Keras' weight order."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        values = []
        for w in layer.weights:
            name = getattr(w, "path", w.name)
            shape = tuple(w.shape)
            if "moving_variance" in name:
                values.append(rng.uniform(0.5, 2.0, shape))
            elif "moving_mean" in name:
                values.append(rng.normal(size=shape))
            elif "gamma" in name:
                values.append(rng.normal(1.0, 0.2, shape))
            else:
                values.append(rng.normal(0.0, 0.2, shape))
        layer.set_weights([v.astype(np.float32) for v in values])


@graph("norm_layernorm_block")
def layernorm_block(K, padding):
    """Embedding(mask_zero) -> Dense -> LayerNormalization(epsilon=1e-6) -> LSTM: the mask passes through the norm."""
    L = K.layers
    inputs = K.Input((None,), dtype="int32")
    x = L.LayerNormalization(epsilon=1e-6)(L.Dense(5)(L.Embedding(VOCAB, 4, mask_zero=True)(inputs)))
    outputs = L.Dense(2)(L.LSTM(3)(x))
    return K.Model(inputs, outputs), tokens(padding, "norm_layernorm_block")


@graph("norm_batchnorm_between_rnns")
def batchnorm_between_rnns(K, padding):
    """Masking -> LSTM(return_sequences) -> BatchNormalization -> GRU (tests/models' batchnorm_between_rnns)."""
    L = K.layers
    inputs = K.Input((None, F))
    x = L.BatchNormalization(momentum=0.9)(L.LSTM(4, return_sequences=True)(L.Masking()(inputs)))
    outputs = L.Dense(1, activation="sigmoid")(L.GRU(3)(x))
    model = K.Model(inputs, outputs)
    _random_statistics(model, "norm_batchnorm_between_rnns")
    return model, features(padding, "norm_batchnorm_between_rnns")


@graph("norm_batchnorm_time_axis_unitnorm")
def batchnorm_time_axis(K, padding):
    """BatchNormalization(axis=1) (one statistic per time step), UnitNormalization, LayerNormalization over time and
    features, then a GRU with return_sequences: the mask passes through all three norms. The Dense before the
    UnitNormalization has a non-zero bias, so no step it sees is all zero (see norm_unitnorm_zero_steps)."""
    L = K.layers
    inputs = K.Input((T, F))
    x = L.BatchNormalization(axis=1, center=False)(L.Masking()(inputs))
    x = L.Dense(4, bias_initializer="ones")(x)
    x = L.LayerNormalization(axis=[1, 2], scale=False)(L.UnitNormalization()(x))
    outputs = L.Dense(2)(L.GRU(3, return_sequences=True)(x))
    model = K.Model(inputs, outputs)
    _random_statistics(model, "norm_batchnorm_time_axis")
    return model, features(padding, "norm_batchnorm_time_axis")


@graph("norm_unitnorm_zero_steps", references=("keras3", "tf_keras"))
def unitnorm_zero_steps(K, padding):
    """Masking -> Dense (zero bias) -> UnitNormalization -> GRU: padded steps reach UnitNormalization as all-zero
    vectors (output 0, gradient the clamp). Not on keras3-jax: NaN gradients there
    (deviation keras-jax-unitnorm-zero-step-nan-grad)."""
    L = K.layers
    inputs = K.Input((None, F))
    x = L.UnitNormalization()(L.Dense(4)(L.Masking()(inputs)))
    outputs = L.Dense(1)(L.GRU(3)(x))
    return K.Model(inputs, outputs), features(padding, "norm_unitnorm_zero_steps")


@graph("norm_layernorm_rms_scaling", references=("keras3", "keras3-jax"))
def layernorm_rms(K, padding):
    """Keras 3's (deprecated) LayerNormalization(rms_scaling=True): x / sqrt(var + eps) * gamma, no beta."""
    import warnings

    L = K.layers
    inputs = K.Input((None, F))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        x = L.LayerNormalization(rms_scaling=True)(L.Dense(4)(L.Masking()(inputs)))
    outputs = L.Dense(1)(L.LSTM(3)(x))
    return K.Model(inputs, outputs), features(padding, "norm_layernorm_rms")
