"""Eight models written the way Keras users and the keras.io examples write them: the acceptance cases of
issues 11 and 12 (tests/test_keras_models.py) and graph cases of the parity catalogue. Each builder takes the Keras module (``keras`` or ``tf_keras``) and returns
``(model, make_inputs)`` where ``make_inputs(rng, padding)`` gives a padded batch (``padding`` "post" or
"pre", with one fully padded row where the model allows it)."""

from __future__ import annotations

import numpy as np

VOCAB, B, T, F = 50, 4, 9, 6


def _lengths(rng, padding, t=T, allow_zero=True):
    lengths = rng.integers(2, t + 1, size=B)
    lengths[0] = t
    if allow_zero:
        lengths[-1] = 0
    return lengths


def _tokens(rng, padding, t=T, allow_zero=True):
    seqs = [rng.integers(1, VOCAB, size=n) for n in _lengths(rng, padding, t, allow_zero)]
    x = np.zeros((B, t), np.int32)
    for i, s in enumerate(seqs):
        if len(s):
            if padding == "post":
                x[i, : len(s)] = s
            else:
                x[i, t - len(s):] = s
    return x


def _features(rng, padding, t=T, f=F, allow_zero=True):
    x = rng.normal(size=(B, t, f)).astype(np.float32)
    for i, n in enumerate(_lengths(rng, padding, t, allow_zero)):
        if padding == "post":
            x[i, n:] = 0.0
        else:
            x[i, : t - n] = 0.0
    return x


def bilstm_classifier(K):
    """keras.io "Bidirectional LSTM on IMDB": Input((None,)) token ids -> Embedding(mask_zero) -> Bi-LSTM x2."""
    inputs = K.Input(shape=(None,), dtype="int32")
    x = K.layers.Embedding(VOCAB, 8, mask_zero=True)(inputs)
    x = K.layers.Bidirectional(K.layers.LSTM(6, return_sequences=True))(x)
    x = K.layers.Bidirectional(K.layers.LSTM(5))(x)
    outputs = K.layers.Dense(1, activation="sigmoid")(x)
    return K.Model(inputs, outputs), lambda rng, p: _tokens(rng, p)


def encoder_decoder(K):
    """keras.io "Character-level seq2seq": the encoder's final states are the decoder's initial state."""
    encoder_inputs = K.Input(shape=(None, F))
    masked = K.layers.Masking()(encoder_inputs)
    _, state_h, state_c = K.layers.LSTM(7, return_state=True)(masked)
    decoder_inputs = K.Input(shape=(None, F))
    decoder_masked = K.layers.Masking()(decoder_inputs)
    decoder_outputs, _, _ = K.layers.LSTM(7, return_sequences=True, return_state=True)(
        decoder_masked, initial_state=[state_h, state_c])
    outputs = K.layers.Dense(F, activation="softmax")(decoder_outputs)
    model = K.Model([encoder_inputs, decoder_inputs], outputs)
    return model, lambda rng, p: [_features(rng, p), _features(rng, p, allow_zero=False)]


def transformer_classifier(K):
    """keras.io "Text classification with Transformer" (smaller): token + position embedding, one block."""
    inputs = K.Input(shape=(T,), dtype="int32")
    tokens = K.layers.Embedding(VOCAB, 8, mask_zero=True)(inputs)
    attn = K.layers.MultiHeadAttention(num_heads=2, key_dim=4)(tokens, tokens)
    x = K.layers.LayerNormalization(epsilon=1e-6)(K.layers.Add()([tokens, attn]))
    ffn = K.layers.Dense(8)(K.layers.Dense(16, activation="relu")(x))
    x = K.layers.LayerNormalization(epsilon=1e-6)(K.layers.Add()([x, ffn]))
    x = K.layers.GlobalAveragePooling1D()(x)
    x = K.layers.Dropout(0.1)(x)
    outputs = K.layers.Dense(2, activation="softmax")(x)
    return K.Model(inputs, outputs), lambda rng, p: _tokens(rng, p, allow_zero=False)


def gru_with_static_features(K):
    """A GRU branch over a padded sequence concatenated with static per-sample features."""
    seq = K.Input(shape=(None, F), name="sequence")
    static = K.Input(shape=(3,), name="static")
    h = K.layers.GRU(6)(K.layers.Masking()(seq))
    s = K.layers.Dense(4, activation="relu")(static)
    x = K.layers.Concatenate()([h, s])
    outputs = K.layers.Dense(1)(x)
    model = K.Model([seq, static], outputs)
    return model, lambda rng, p: [_features(rng, p), rng.normal(size=(B, 3)).astype(np.float32)]


def stateful_lstm(K):
    """A stateful streaming LSTM with a fixed batch size (Keras' stateful=True)."""
    inputs = K.Input(batch_shape=(B, None, F))
    x = K.layers.Masking()(inputs)
    x = K.layers.LSTM(5, stateful=True, return_sequences=True)(x)
    outputs = K.layers.TimeDistributed(K.layers.Dense(2))(x)
    return K.Model(inputs, outputs), lambda rng, p: _features(rng, p)


def conv_lstm(K):
    """A Conv1D front-end before an LSTM (time series). Conv1D does not support masking: no mask reaches the LSTM."""
    inputs = K.Input(shape=(None, F))
    x = K.layers.Conv1D(8, 3, padding="causal", activation="relu")(inputs)
    x = K.layers.MaxPooling1D(2)(x)
    x = K.layers.LSTM(6)(x)
    outputs = K.layers.Dense(1)(x)
    return K.Model(inputs, outputs), lambda rng, p: _features(rng, p, t=10)


def batchnorm_between_rnns(K):
    """BatchNormalization between recurrent layers under a Masking mask."""
    inputs = K.Input(shape=(None, F))
    x = K.layers.Masking()(inputs)
    x = K.layers.LSTM(6, return_sequences=True)(x)
    x = K.layers.BatchNormalization()(x)
    x = K.layers.GRU(5)(x)
    outputs = K.layers.Dense(1, activation="sigmoid")(x)
    return K.Model(inputs, outputs), lambda rng, p: _features(rng, p)


def bigru_attention(K):
    """A Bi-GRU with dot-product Attention over its own outputs, then masked pooling."""
    inputs = K.Input(shape=(None,), dtype="int32")
    x = K.layers.Embedding(VOCAB, 8, mask_zero=True)(inputs)
    h = K.layers.Bidirectional(K.layers.GRU(4, return_sequences=True))(x)
    context = K.layers.Attention()([h, h])
    x = K.layers.GlobalMaxPooling1D()(K.layers.Concatenate()([h, context]))
    outputs = K.layers.Dense(3, activation="softmax")(x)
    return K.Model(inputs, outputs), lambda rng, p: _tokens(rng, p, allow_zero=False)


MODELS = {f.__name__: f for f in (bilstm_classifier, encoder_decoder, transformer_classifier,
                                   gru_with_static_features, stateful_lstm, conv_lstm, batchnorm_between_rnns,
                                   bigru_attention)}


def _register():
    from parity.graph_cases import graph

    for name, build in MODELS.items():
        if name == "stateful_lstm":  # its state moves on with every call: tests/test_stateful.py checks it
            continue

        def builder(K, padding, build=build):
            model, make_inputs = build(K)
            return model, make_inputs(np.random.default_rng(0), padding)

        graph(f"model/{name}", paddings=("post", "pre"))(builder)


_register()
