"""Graph cases for the shape, regularisation and activation layers: a RepeatVector sequence autoencoder, Permute /
Reshape / Flatten heads (they drop the mask), noise layers and activation layers between RNNs (they pass it on),
and Softmax over attention scores with an explicit key mask (fully masked rows included)."""

from __future__ import annotations

import numpy as np

from parity.graph_cases import graph
from parity.graph_cases.data import F, T, features, valid


def _random_prelu(model, key: int) -> None:
    rng = np.random.default_rng(key)
    for layer in model.layers:
        if type(layer).__name__ == "PReLU":
            layer.set_weights([rng.uniform(0.05, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])


@graph("shape_repeat_vector_autoencoder")
def repeat_vector_autoencoder(K, padding):
    """Masked LSTM encoder -> RepeatVector(T) -> LSTM decoder -> TimeDistributed(Dense): the mask stops at the
    encoder's last output and RepeatVector has none."""
    L = K.layers
    inputs = K.Input((None, F))
    code = L.LSTM(4)(L.Masking()(inputs))
    x = L.LSTM(3, return_sequences=True)(L.RepeatVector(T)(code))
    return K.Model(inputs, L.TimeDistributed(L.Dense(F))(x)), features(padding, "shape_autoencoder")


@graph("shape_permute_reshape_flatten")
def permute_reshape_flatten(K, padding):
    """Masked steps through SpatialDropout1D and a Dense, then Permute / Reshape / Flatten heads (mask dropped)."""
    L = K.layers
    inputs = K.Input((T, F))
    h = L.Dense(4, activation="relu")(L.SpatialDropout1D(0.3)(L.Masking()(inputs)))
    heads = [L.Reshape((4 * T,))(L.Permute((2, 1))(h)), L.Flatten()(h), L.Flatten()(L.Reshape((-1, 2))(h))]
    return K.Model(inputs, L.Dense(2)(L.Concatenate()(heads))), features(padding, "shape_heads")


@graph("shape_noise_and_activations")
def noise_and_activations(K, padding):
    """Noise layers (identity at inference), ActivityRegularization(0, 0) and activation layers between RNNs: all
    pass the mask on to the GRU."""
    L = K.layers
    slope = {"alpha": 0.2} if K.__name__ == "tf_keras" else {"negative_slope": 0.2}
    inputs = K.Input((None, F))
    x = L.GaussianDropout(0.2)(L.GaussianNoise(0.3)(L.Masking()(inputs)))
    x = L.LSTM(4, return_sequences=True)(x)
    x = L.ELU(alpha=0.7)(L.LeakyReLU(**slope)(L.PReLU(shared_axes=[1])(x)))
    x = L.ActivityRegularization()(L.ReLU(max_value=0.9, negative_slope=0.1, threshold=0.05)(x))
    model = K.Model(inputs, L.Dense(1)(L.GRU(3)(x)))
    _random_prelu(model, 7)
    return model, features(padding, "shape_noise")


@graph("shape_softmax_key_mask")
def softmax_key_mask(K, padding):
    """Attention weights from Dot scores and Softmax(scores, mask=key_mask) with an explicit [B, 1, T] mask input
    (row 3 has no valid key: zeros in Keras 3, uniform in tf_keras)."""
    L = K.layers
    inputs, key_mask = K.Input((T, F), name="x"), K.Input((1, T), name="key_mask")
    q, k = L.Dense(4)(inputs), L.Dense(4)(inputs)
    weights = L.Softmax()(L.Dot(axes=2)([q, k]), mask=key_mask)
    context = L.Dot(axes=(2, 1))([weights, L.Dense(3)(inputs)])
    x = L.Flatten()(context)
    mask = valid(padding)[:, None, :].astype(np.float32)
    return K.Model([inputs, key_mask], L.Dense(1)(x)), [features(padding, "shape_softmax"), mask]
