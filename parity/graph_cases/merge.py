"""Graph cases for the merge layers: residual Add over an embedding, Concatenate along features and time (Keras 3
writes the mask computation into the graph), Keras 3's masked Multiply/Maximum/Minimum, Dot attention, and a GRU
branch concatenated with static features."""

from __future__ import annotations

from parity.graph_cases import graph
from parity.graph_cases.data import F, T, VOCAB, features, static, tokens


@graph("merge_residual_add")
def residual_add(K, padding):
    """Embedding(mask_zero) + Dense of itself (Add keeps the mask) into an LSTM."""
    L = K.layers
    inputs = K.Input((None,), dtype="int32")
    emb = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    x = L.Add()([emb, L.Dense(4, activation="tanh")(emb)])
    outputs = L.Dense(1)(L.LSTM(3)(x))
    return K.Model(inputs, outputs), tokens(padding, "merge_residual_add")


@graph("merge_concat_features")
def concat_features(K, padding):
    """Two masked sequences concatenated along the feature axis (Keras 3: m1 OR m2; tf_keras: m1 AND m2) into a GRU;
    the two inputs are padded differently."""
    L = K.layers
    a, b = K.Input((None, F), name="a"), K.Input((None, 2), name="b")
    x = L.Concatenate()([L.Masking()(a), L.Masking()(b)])
    outputs = L.Dense(1)(L.GRU(4, return_sequences=True)(x))
    other = "pre" if padding == "post" else "post"
    return K.Model([a, b], outputs), [features(padding, "concat_a"), features(other, "concat_b", f=2)]


@graph("merge_concat_time")
def concat_time(K, padding):
    """Two masked sequences concatenated along time (the masks concatenate) into an LSTM."""
    L = K.layers
    a, b = K.Input((None, F), name="a"), K.Input((None, F), name="b")
    x = L.Concatenate(axis=1)([L.Masking()(a), L.Masking()(b)])
    outputs = L.Dense(2)(L.LSTM(3)(x))
    return K.Model([a, b], outputs), [features(padding, "time_a"), features(padding, "time_b", t=5)]


@graph("merge_elementwise")
def elementwise(K, padding):
    """Multiply, Maximum, Minimum, Average and Subtract of two masked branches with different masks (Keras 3 leaves
    masked steps out of Multiply/Maximum/Minimum; tf_keras does not), then an RNN over their concatenation."""
    L = K.layers
    a, b = K.Input((None, F), name="a"), K.Input((None, F), name="b")
    ha, hb = L.Dense(3)(L.Masking()(a)), L.Dense(3)(L.Masking()(b))
    merged = [L.Multiply()([ha, hb]), L.Maximum()([ha, hb]), L.Minimum()([ha, hb]), L.Average()([ha, hb]),
              L.Subtract()([ha, hb])]
    x = L.SimpleRNN(4, return_sequences=True)(L.Concatenate()(merged))
    other = "holes" if padding != "holes" else "pre"
    return K.Model([a, b], L.Dense(1)(x)), [features(padding, "elem_a"), features(other, "elem_b")]


@graph("merge_dot_attention")
def dot_attention(K, padding):
    """Dot-product scores (Dot(axes=2), no mask) and a weighted sum (Dot(axes=(2, 1)))."""
    L = K.layers
    inputs = K.Input((T, F))
    h = L.Masking()(inputs)
    q, k, v = L.Dense(4)(h), L.Dense(4)(h), L.Dense(3)(h)
    weights = L.Softmax()(L.Dot(axes=2)([q, k]))
    context = L.Dot(axes=(2, 1))([weights, v])
    return K.Model(inputs, L.Dense(2)(L.Flatten()(context))), features(padding, "merge_dot")


@graph("merge_dot_cosine", references=("keras3", "tf_keras"))
def dot_cosine(K, padding):
    """Cosine similarities (Dot(normalize=True)) of projections that are exactly 0 at padded steps. Not run against
    Keras 3 on JAX, whose gradients there are NaN (deviation keras-jax-dot-normalize-zero-vector-nan-grad)."""
    L = K.layers
    inputs = K.Input((T, F))
    h = L.Masking()(inputs)
    cosine = L.Dot(axes=2, normalize=True)([L.Dense(4)(h), L.Dense(4)(h)])
    return K.Model(inputs, L.Dense(2)(L.Flatten()(cosine))), features(padding, "merge_cosine")


@graph("merge_gru_static")
def gru_static(K, padding):
    """tests/models: a GRU branch over a padded sequence concatenated with a Dense of static features."""
    L = K.layers
    seq, extra = K.Input((None, F), name="sequence"), K.Input((2,), name="static")
    h = L.GRU(5)(L.Masking()(seq))
    x = L.Concatenate()([h, L.Dense(3, activation="relu")(extra)])
    return K.Model([seq, extra], L.Dense(1)(x)), [features(padding, "gru_static"), static("gru_static")]
