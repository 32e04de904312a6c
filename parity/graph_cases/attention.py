"""Graph cases for the attention layers: MultiHeadAttention (self, cross with key, causal, Keras 3's non-fused path
through dropout), Attention (dot with scale, concat with causal) and AdditiveAttention, over padded token ids and
Masking features (post, pre, holes; one fully padded row, so rows with no allowed key are exercised).

Each MultiHeadAttention gets its own Masking/Embedding output: Keras 3's MHA deletes the masks of its input tensors
(``parity.deviations.DEVIATIONS["keras3-mha-clears-input-masks"]``), so no later layer here reads them. No case
returns attention scores as a model output (``DEVIATIONS["keras-mha-scores-mask"]``).
"""

from __future__ import annotations

from parity.graph_cases import graph
from parity.graph_cases.data import F, T, features, tokens

VOCAB = 20


@graph("mha_self_attention_tokens")
def mha_self_attention_tokens(K, padding):
    ids = K.Input((T,), dtype="int32")
    x = K.layers.Embedding(VOCAB, 6, mask_zero=True)(ids)
    y = K.layers.MultiHeadAttention(num_heads=2, key_dim=3)(x, x)
    return K.Model(ids, K.layers.Dense(2)(y)), tokens(padding, "mha_self_attention_tokens")


@graph("mha_cross_attention_key")
def mha_cross_attention_key(K, padding):
    q, v, k = K.Input((T, F)), K.Input((T - 2, 4)), K.Input((T - 2, 2))
    # value_dim == key_dim: Keras 3's JAX backend fails on MHA with value_dim != key_dim (its dot_product_attention
    # needs equal head sizes); tests/test_attention.py covers value_dim != key_dim on the TF backend and tf_keras.
    y = K.layers.MultiHeadAttention(num_heads=2, key_dim=3, output_shape=5)(
        K.layers.Masking()(q), K.layers.Masking()(v), k)
    inputs = [features(padding, "mha_cross_q"), features(padding, "mha_cross_v", t=T - 2, f=4, full_row=False),
              features("post", "mha_cross_k", t=T - 2, f=2, full_row=False)]
    return K.Model([q, v, k], y), inputs


@graph("mha_causal_dropout")
def mha_causal_dropout(K, padding):
    """dropout > 0 takes Keras 3's explicit softmax path (rows with no allowed key get weight 0), even in inference."""
    x = K.Input((T, F))
    m = K.layers.Masking()(x)
    y = K.layers.MultiHeadAttention(num_heads=1, key_dim=4, dropout=0.2)(m, m, use_causal_mask=True)
    return K.Model(x, y), features(padding, "mha_causal_dropout")


@graph("attention_dot_scale")
def attention_dot_scale(K, padding):
    x = K.Input((T, F))
    m = K.layers.Masking()(x)
    y = K.layers.Attention(use_scale=True)([m, m])
    return K.Model(x, K.layers.Dense(2)(y)), features(padding, "attention_dot_scale")


@graph("attention_concat_causal")
def attention_concat_causal(K, padding):
    q, v = K.Input((T, F)), K.Input((T, F))
    y = K.layers.Attention(use_scale=True, score_mode="concat")([K.layers.Masking()(q), K.layers.Masking()(v)],
                                                               use_causal_mask=True)
    return K.Model([q, v], y), [features(padding, "attention_concat_q"), features(padding, "attention_concat_v")]


@graph("additive_attention")
def additive_attention(K, padding):
    ids = K.Input((T,), dtype="int32")
    x = K.layers.Embedding(VOCAB, 4, mask_zero=True)(ids)
    y = K.layers.AdditiveAttention()([x, x])
    return K.Model(ids, y), tokens(padding, "additive_attention")
