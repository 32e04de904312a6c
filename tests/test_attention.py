"""MultiHeadAttention, Attention and AdditiveAttention against a NumPy reference of Keras' masked softmax and
against Keras 3 (TF backend) and tf_keras themselves, at valid and masked steps separately, with post-, pre-padding,
holes, fully masked rows and B == T; round trips through from_keras, load_model (.keras / .h5), to_keras and
save_weights; the safe loader's caps; the acceptance models that contain attention."""

from __future__ import annotations

import json
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmask as jm
from tests.reference import TOL

B, T, S, F, FV = 4, 7, 6, 5, 4
QMASK = np.array([[1] * 7, [1] * 5 + [0] * 2, [0, 0, 1, 1, 0, 1, 1], [0] * 7], bool)  # full, post, pre + hole, none
VMASK = np.array([[1] * 6, [1, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 1], [0] * 6], bool)  # full, holes, pre, none
VMASK_SOME = VMASK.copy()
VMASK_SOME[3] = [1, 1, 0, 0, 0, 0]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _x(shape, seed):
    return _rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ NumPy reference


def np_masked_softmax(s, valid, rule):
    """Keras' masked softmax over the last axis, float64 except the float32 rounding of ``s - 1e9`` that decides what
    a row with no allowed key gets (``rule``: "replace" -> where(m, s, -1e9); "subtract" -> where(m, s, s - 1e9))."""
    if rule == "replace":
        z = np.where(valid, s, -1e9)
    else:
        z = np.where(valid, s, (s.astype(np.float32) - np.float32(1e9)).astype(np.float64))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_mha(w, query, value, key, *, key_dim, qmask=None, vmask=None, kmask=None, amask=None, causal=False,
           rule="replace", zero_rows=False):
    """Keras' MultiHeadAttention written from its equations: projections, scaled scores, the AND of the masks."""
    q = np.einsum("btf,fnh->btnh", query, w[0]) + w[1]
    k = np.einsum("bsf,fnh->bsnh", key, w[2]) + w[3]
    v = np.einsum("bsf,fnh->bsnh", value, w[4]) + w[5]
    s = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(key_dim)
    b, t, n = query.shape[0], query.shape[1], value.shape[1]
    valid = np.ones((b, t, n), bool)
    if qmask is not None:
        valid &= qmask[:, :, None]
    for m in (vmask, kmask):
        if m is not None:
            valid &= m[:, None, :]
    if causal:
        valid &= np.arange(n)[None, None, :] <= np.arange(t)[None, :, None]
    if amask is not None:
        valid &= amask
    p = np_masked_softmax(s, valid[:, None], rule)
    if zero_rows:
        p = np.where(valid[:, None], p, 0.0)
    ctx = np.einsum("bnts,bsnh->btnh", p, v)
    return np.einsum("btnh,nhf->btf", ctx, w[6]) + w[7], p


def np_dense_attention(query, value, key, *, mode, qmask=None, vmask=None, causal=False, scale=None, csw=None):
    """Keras' Attention ("dot", "concat") and AdditiveAttention ("additive") from their equations."""
    if mode == "dot":
        s = np.einsum("bif,bjf->bij", query, key) * (1.0 if scale is None else scale)
    else:
        x = query[:, :, None, :] + key[:, None, :, :]
        if mode == "concat":
            s = csw * np.tanh((1.0 if scale is None else scale) * x).sum(-1)
        else:
            s = (np.tanh(x) * (1.0 if scale is None else scale)).sum(-1)
    valid = np.ones(s.shape, bool)
    if vmask is not None:
        valid &= vmask[:, None, :]
    if causal:
        valid &= np.arange(s.shape[2])[None, None, :] <= np.arange(s.shape[1])[None, :, None]
    p = np_masked_softmax(s, valid, "subtract")
    out = np.einsum("bij,bjf->bif", p, value)
    if qmask is not None:
        out = np.where(qmask[:, :, None], out, 0.0)
    return out, p


def mha_weights(layer):
    names = [(a, n) for a in ("query", "key", "value", "attention_output") for n in ("kernel", "bias")]
    out = []
    for a, n in names:
        v = getattr(getattr(layer, a), n)
        out.append(0.0 if v is None else np.asarray(v[...], np.float64))
    return out


def set_random(layer, seed, scale=0.5):
    state = nnx.state(layer, nnx.Param)
    rng = _rng(seed)
    state = jax.tree.map(lambda v: jnp.asarray(rng.normal(0, scale, v.shape), jnp.float32), state)
    nnx.update(layer, state)
    return layer


def assert_steps(got, want, mask, what=""):
    """Equal at valid query steps and at masked ones, checked separately."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got[mask], want[mask], **TOL["float32"], err_msg=f"{what} valid steps")
    np.testing.assert_allclose(got[~mask], want[~mask], **TOL["float32"], err_msg=f"{what} masked steps")


# ------------------------------------------------------------------------------------------------ without Keras

MHA_CASES = {
    # name: (constructor kwargs, call kwargs, reference rule, zero_rows)
    "keras3_fused": ({}, {}, "replace", False),
    "keras3_scores": ({}, {"return_attention_scores": True}, "replace", True),
    "keras3_dropout_inference": ({"dropout": 0.3}, {}, "replace", True),
    "keras3_value_dim": ({"value_dim": 3, "output_shape": 6}, {}, "replace", False),
    "tf_keras": ({"semantics": "tf_keras"}, {}, "subtract", False),
    "tf_keras_robust": ({"semantics": "tf_keras", "softmax_robust_masking": True}, {}, "replace", False),
    "keras3_causal": ({}, {"use_causal_mask": True}, "replace", False),
    "no_bias": ({"use_bias": False, "num_heads": 3, "key_dim": 2}, {}, "replace", False),
}


@pytest.mark.parametrize("name", MHA_CASES)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_mha_matches_numpy_reference(name, cross):
    kwargs, call, rule, zero_rows = MHA_CASES[name]
    kwargs = {"num_heads": 2, "key_dim": 4, **kwargs}
    layer = jm.nn.MultiHeadAttention(F, value_features=FV if cross else None, key_features=3 if cross else None,
                                     rngs=nnx.Rngs(0), **kwargs)
    set_random(layer, 1)
    layer.eval()
    q = _x((B, T, F), 2)
    if cross:
        v, k, vm = _x((B, S, FV), 3), _x((B, S, 3), 4), VMASK
        got = layer(q, v, k, mask=QMASK, value_mask=vm, **call)
    else:
        v, k, vm = q, q, QMASK
        got = layer(q, q, mask=QMASK, value_mask=QMASK, **call)
    w = mha_weights(layer)
    want, p = np_mha(w, q.astype(np.float64), v.astype(np.float64), k.astype(np.float64), key_dim=kwargs["key_dim"],
                     qmask=QMASK, vmask=vm, causal=call.get("use_causal_mask", False), rule=rule, zero_rows=zero_rows)
    if call.get("return_attention_scores"):
        got, scores = got
        np.testing.assert_allclose(scores, p, **TOL["float32"])
        assert scores.shape == (B, kwargs["num_heads"], T, v.shape[1])
    assert_steps(got, want, QMASK)
    assert np.isfinite(np.asarray(got)).all()


def test_mha_rows_without_keys_follow_the_documented_rule():
    """Padded queries: keras3 (fused) -> uniform weights over every value, padded ones included; keras3 with returned
    scores -> weights 0, output = output bias; a valid query whose value row is all padding gets the same."""
    layer = set_random(jm.nn.MultiHeadAttention(F, 2, 4, value_features=FV, rngs=nnx.Rngs(0)), 5)
    q, v = _x((B, T, F), 6), _x((B, S, FV), 7)
    fused = np.asarray(layer(q, v, mask=QMASK, value_mask=VMASK))
    out, scores = layer(q, v, mask=QMASK, value_mask=VMASK, return_attention_scores=True)
    vproj = np.einsum("bsf,fnh->bsnh", v, np.asarray(layer.value.kernel[...])) + np.asarray(layer.value.bias[...])
    mean_out = np.einsum("bnh,nhf->bf", vproj.mean(1), np.asarray(layer.attention_output.kernel[...]))
    mean_out = mean_out + np.asarray(layer.attention_output.bias[...])
    np.testing.assert_allclose(fused[3], np.broadcast_to(mean_out[3], (T, F)), **TOL["float32"])  # no valid value
    np.testing.assert_allclose(fused[1, 5], mean_out[1], **TOL["float32"])  # padded query
    np.testing.assert_array_equal(np.asarray(scores)[3], 0.0)
    np.testing.assert_allclose(np.asarray(out)[3], np.broadcast_to(layer.attention_output.bias[...], (T, F)),
                               **TOL["float32"])


def test_mha_tf_keras_subtract_rounds_like_float32():
    """tf_keras adds -1e9 to masked logits in float32: a row with no allowed key and logits beyond ±32 is not
    uniform; the reference emulates the rounding and jaxmask agrees (values and no NaN)."""
    layer = set_random(jm.nn.MultiHeadAttention(F, 1, 4, semantics="tf_keras", rngs=nnx.Rngs(0)), 8, scale=4.0)
    q = _x((B, T, F), 9) * 3
    _, p = layer(q, q, mask=QMASK, value_mask=QMASK, return_attention_scores=True)
    w = mha_weights(layer)
    _, want = np_mha(w, q.astype(np.float64), q.astype(np.float64), q.astype(np.float64), key_dim=4, qmask=QMASK,
                     vmask=QMASK, rule="subtract")
    assert np.ptp(want[3, 0], axis=-1).max() > 0.01, "the case must exercise the rounding"
    np.testing.assert_allclose(p, want, atol=1e-5, rtol=1e-4)


def test_mha_attention_mask_and_key_mask_combine_with_and():
    layer = set_random(jm.nn.MultiHeadAttention(F, 2, 3, value_features=FV, key_features=3, rngs=nnx.Rngs(0)), 10)
    q, v, k = _x((B, T, F), 11), _x((B, S, FV), 12), _x((B, S, 3), 13)
    am = _rng(14).random((B, T, S)) > 0.3
    kmask = np.ones((B, S), bool)
    kmask[:, 0] = False
    got = layer(q, v, k, mask=QMASK, value_mask=VMASK_SOME, key_mask=kmask, attention_mask=am.astype(np.int32),
                use_causal_mask=True)
    want, _ = np_mha(mha_weights(layer), q.astype(np.float64), v.astype(np.float64), k.astype(np.float64), key_dim=3,
                     qmask=QMASK, vmask=VMASK_SOME, kmask=kmask, amask=am, causal=True)
    assert_steps(got, want, QMASK)
    # a [1, T, S] attention mask broadcasts over the batch
    got1 = layer(q, v, k, attention_mask=am[:1])
    want1, _ = np_mha(mha_weights(layer), q.astype(np.float64), v.astype(np.float64), k.astype(np.float64),
                      key_dim=3, amask=am[:1])
    np.testing.assert_allclose(got1, want1, **TOL["float32"])


def test_mha_batch_equals_time():
    """B == T == S: a query mask mistaken for a value mask (or transposed) would change the numbers."""
    n = 4
    layer = set_random(jm.nn.MultiHeadAttention(F, 2, 3, rngs=nnx.Rngs(0)), 15)
    x = _x((n, n, F), 16)
    qm = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]], bool)
    got = layer(x, x, mask=qm, value_mask=qm.T.copy())
    want, _ = np_mha(mha_weights(layer), x.astype(np.float64), x.astype(np.float64), x.astype(np.float64), key_dim=3,
                     qmask=qm, vmask=qm.T.copy())
    assert_steps(got, want, qm)


def test_mha_dropout_in_training_drops_weights_and_keeps_scores():
    layer = set_random(jm.nn.MultiHeadAttention(F, 2, 4, dropout=0.5, rngs=nnx.Rngs(0)), 17)
    q = _x((B, T, F), 18)
    layer.eval()
    y_eval, s_eval = layer(q, q, mask=QMASK, value_mask=QMASK, return_attention_scores=True)
    layer.train()
    y1, s1 = layer(q, q, mask=QMASK, value_mask=QMASK, return_attention_scores=True)
    y2 = layer(q, q, mask=QMASK, value_mask=QMASK)
    np.testing.assert_allclose(s1, s_eval, **TOL["float32"])  # Keras returns the weights before dropout
    assert not np.allclose(y1, y_eval) and not np.allclose(y1, y2)  # fresh masks each call
    assert np.isfinite(np.asarray(y1)).all()


def test_mha_gradients_finite_when_every_row_is_masked():
    layer = set_random(jm.nn.MultiHeadAttention(F, 2, 4, rngs=nnx.Rngs(0)), 19)
    q = _x((B, T, F), 20)
    none = np.zeros((B, T), bool)
    for semantics in ("keras3", "tf_keras"):
        layer.semantics = semantics

        def loss(model, x):
            return jnp.sum(model(x, x, mask=none, value_mask=none) ** 2)

        value, grads = nnx.value_and_grad(loss)(layer, q)
        assert np.isfinite(float(value))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("subtract", [False, True], ids=["replace", "subtract"])
def test_attend_gradient_equals_autodiff_of_the_formula(subtract):
    """The hand-written backward of the fused core against JAX autodiff of the plain formula in float64 (rows with
    no allowed key included: their logits get gradient with "subtract" only)."""
    from jaxmask.nn._attention import attend

    n, h = 2, 3
    rng = _rng(29)
    q, k, v = (rng.normal(size=(B, n, T, h)), rng.normal(size=(B, n, S, h)), rng.normal(size=(B, n, S, 4)))
    valid = (QMASK[:, :, None] & VMASK[:, None, :])[:, None]
    w = rng.normal(size=(B, n, T, 4))

    def plain(q, k, v):
        z = jnp.einsum("bnth,bnsh->bnts", q * 0.5, k)
        rounded = (z.astype(jnp.float32) - jnp.float32(1e9)).astype(z.dtype)  # float32's rounding, as Keras
        z = jnp.where(valid, z, rounded if subtract else -1e9)
        return jnp.einsum("bnts,bnsh->bnth", jax.nn.softmax(z, axis=-1), v)

    with jax.enable_x64(True):
        want = jax.grad(lambda *a: jnp.sum(plain(*a) * w), argnums=(0, 1, 2))(q, k, v)
        want_out = plain(q, k, v)
    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    got = jax.grad(lambda *a: jnp.sum(attend(*a, jnp.asarray(valid), 0.5, subtract) * w.astype(np.float32)),
                   argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(attend(*args, jnp.asarray(valid), 0.5, subtract), want_out, **TOL["float32"])
    for g, ww in zip(got, want):
        np.testing.assert_allclose(g, ww, **TOL["grad32"])
    assert (np.abs(np.asarray(got[0])[3]).max() > 1e-3) == subtract  # row 3 has no allowed key at all


DENSE_CASES = {
    "dot": (lambda: jm.nn.Attention(), {}, "dot"),
    "dot_scale_causal": (lambda: jm.nn.Attention(use_scale=True), {"use_causal_mask": True}, "dot"),
    "concat": (lambda: jm.nn.Attention(score_mode="concat"), {}, "concat"),
    "concat_scale": (lambda: jm.nn.Attention(use_scale=True, score_mode="concat"), {}, "concat"),
    "additive": (lambda: jm.nn.AdditiveAttention(F, rngs=nnx.Rngs(0)), {}, "additive"),
    "additive_no_scale_causal": (lambda: jm.nn.AdditiveAttention(use_scale=False), {"use_causal_mask": True},
                                 "additive"),
}


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_attention_matches_numpy_reference(name):
    make, call, mode = DENSE_CASES[name]
    layer = make()
    params = nnx.state(layer, nnx.Param)
    if jax.tree.leaves(params):
        set_random(layer, 21, scale=1.0)
    q, v, k = _x((B, T, F), 22), _x((B, S, FV), 23), _x((B, S, F), 24)
    out, p = layer([q, v, k], mask=[QMASK, VMASK], return_attention_scores=True, **call)
    scale = None if layer.scale is None else np.asarray(layer.scale[...], np.float64)
    csw = None if layer.concat_score_weight is None else float(layer.concat_score_weight[...])
    want, wp = np_dense_attention(q.astype(np.float64), v.astype(np.float64), k.astype(np.float64), mode=mode,
                                  qmask=QMASK, vmask=VMASK, causal=bool(call), scale=scale, csw=csw)
    assert_steps(out, want, QMASK)
    np.testing.assert_allclose(p, wp, **TOL["float32"])
    np.testing.assert_array_equal(np.asarray(out)[~QMASK], 0.0)
    assert np.isfinite(np.asarray(p)).all()
    np.testing.assert_array_equal(layer.compute_output_mask([q, v, k], [QMASK, VMASK]), QMASK)
    assert layer.compute_output_mask([q, v], [None, VMASK]) is None and layer.compute_output_mask([q, v], None) is None


def test_attention_dropout_returns_dropped_weights():
    layer = jm.nn.Attention(dropout=0.5, rngs=nnx.Rngs(3))
    q, v = _x((B, T, F), 25), _x((B, S, F), 26)
    layer.eval()
    _, p_eval = layer([q, v], mask=[None, VMASK_SOME], return_attention_scores=True)
    layer.train()
    y, p = layer([q, v], mask=[None, VMASK_SOME], return_attention_scores=True)
    p, p_eval = np.asarray(p), np.asarray(p_eval)
    kept = p != 0
    assert 0.3 < kept[p_eval > 0].mean() < 0.7
    np.testing.assert_allclose(p[kept], p_eval[kept] / 0.5, **TOL["float32"])
    np.testing.assert_allclose(y, np.einsum("bij,bjf->bif", p, v), **TOL["float32"])


def test_graph_fills_value_mask_of_positional_arguments():
    """``mha(x, x)`` in a jm.nn.Model gets the query mask *and* the value mask from x, as Keras does."""
    rngs = nnx.Rngs(0)
    tokens = jm.nn.Input((T,), dtype="int32")
    e = jm.nn.Embedding(20, F, mask_zero=True, rngs=rngs)(tokens)
    mha = jm.nn.MultiHeadAttention(F, 2, 3, rngs=rngs)
    model = jm.nn.Model(tokens, mha(e, e))
    ids = np.where(QMASK, _rng(27).integers(1, 20, (B, T)), 0).astype(np.int32)
    y, mask = model(ids)
    emb = model.layers[0](ids)
    np.testing.assert_allclose(y, mha(emb, emb, mask=QMASK, value_mask=QMASK), **TOL["float32"])
    assert not np.allclose(y, mha(emb, emb, mask=QMASK))
    np.testing.assert_array_equal(mask, QMASK)
    a = jm.nn.Attention()
    model = jm.nn.Model(tokens, a([e, e], use_causal_mask=True))
    y, mask = model(ids)
    np.testing.assert_allclose(y, a([emb, emb], mask=[QMASK, QMASK], use_causal_mask=True), **TOL["float32"])
    np.testing.assert_array_equal(mask, QMASK)


def test_mha_compiles_once():
    layer = jm.nn.MultiHeadAttention(F, 2, 3, rngs=nnx.Rngs(0))
    traces = []

    @nnx.jit
    def f(m, x, mask):
        traces.append(1)
        return m(x, x, mask=mask, value_mask=mask)

    x = _x((B, T, F), 28)
    f(layer, x, QMASK)
    f(layer, x + 1, ~QMASK)
    assert len(traces) == 1


@pytest.mark.parametrize("build, match", [
    (lambda: jm.nn.MultiHeadAttention(F, 2, 3, attention_axes=2, rngs=nnx.Rngs(0)), r"`attention_axes` must be None"),
    (lambda: jm.nn.MultiHeadAttention(F, 0, 3, rngs=nnx.Rngs(0)), r"`num_heads` must be a positive integer"),
    (lambda: jm.nn.MultiHeadAttention(F, 2, 3, output_shape=(2, 3), rngs=nnx.Rngs(0)), r"`output_shape` must be"),
    (lambda: jm.nn.MultiHeadAttention(F, 2, 3, semantics="keras2", rngs=nnx.Rngs(0)), r"`semantics` must be one"),
    (lambda: jm.nn.MultiHeadAttention(F, 2, 3, softmax_robust_masking=True, rngs=nnx.Rngs(0)), r"tf_keras option"),
    (lambda: jm.nn.MultiHeadAttention(F, 2, 3, dropout=1.0, rngs=nnx.Rngs(0)), r"`dropout` must be in \[0, 1\)"),
    (lambda: jm.nn.MultiHeadAttention(F, 2, 3, kernel_initializer="he_normal", rngs=nnx.Rngs(0)),
     r"`kernel_initializer` must be one of"),
    (lambda: jm.nn.Attention(score_mode="add"), r"`score_mode` must be 'dot' or 'concat'"),
    (lambda: jm.nn.AdditiveAttention(), r"pass query_features"),
])
def test_constructor_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("call, error, match", [
    (lambda m, a: m(_x((B, T), 0), _x((B, T, F), 0)), ValueError, r"`query` must have rank 3"),
    (lambda m, a: m(_x((B, T, F + 1), 0), _x((B, T, F), 0)), ValueError, r"`query` must have 5 features"),
    (lambda m, a: m(np.ones((B, T, F), np.int32), _x((B, T, F), 0)), TypeError, r"floating-point"),
    (lambda m, a: m(_x((B, T, F), 0), _x((B + 1, T, F), 0)), ValueError, r"must share B"),
    (lambda m, a: m(_x((B, T, F), 0), _x((B, S, F), 0), _x((B, S + 1, F), 0)), ValueError, r"must share B"),
    (lambda m, a: m(_x((B, T, F), 0), _x((B, S, F), 0), value_mask=QMASK), ValueError,
     r"`value_mask` must be a \[B, T\] array matching the input's \(B, T\) = \(4, 6\)"),
    (lambda m, a: m(_x((B, T, F), 0), _x((B, S, F), 0), attention_mask=np.ones((B, S, T), bool)), ValueError,
     r"`attention_mask` must be broadcastable to \[B, T, S\] = \(4, 7, 6\)"),
    (lambda m, a: a(_x((B, T, F), 0)), ValueError, r"must be called on a list \[query, value\]"),
    (lambda m, a: a([_x((B, T, F), 0)] * 4), ValueError, r"of length 4"),
    (lambda m, a: a([_x((B, T, F), 0), _x((B, S, F), 0), _x((B, S, F + 1), 0)]), ValueError, r"query and key F"),
    (lambda m, a: a([_x((B, T, F), 0)] * 2, mask=QMASK), ValueError, r"`mask` must be a list \[query_mask"),
    (lambda m, a: a([_x((B, T, F), 0), _x((B, S, F), 0)], mask=[None, QMASK]), ValueError, r"mask\[1\] \(value_mask\)"),
])
def test_call_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(jm.nn.MultiHeadAttention(F, 2, 3, rngs=nnx.Rngs(0)), jm.nn.Attention())


# ------------------------------------------------------------------------------------------------ against Keras

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
VOCAB = 20


def _tokens(t, seed, mask):
    ids = _rng(seed).integers(1, VOCAB, size=mask.shape)
    return np.where(mask, ids, 0).astype(np.int32)


def _padded(shape, seed, mask):
    return np.where(mask[:, :, None], _x(shape, seed), 0.0).astype(np.float32)


def _masks(t, padding):
    """[B, t] valid steps: post-, pre-padding or holes; the last row fully masked."""
    m = np.ones((B, t), bool)
    lengths = [t, t - 2, 2, 0]
    for i, n in enumerate(lengths):
        if padding == "post":
            m[i, n:] = False
        elif padding == "pre":
            m[i, : t - n] = False
        else:
            m[i, [1, t - 2]] = i != 0
            m[i] &= i != 3
    return m


def keras_models(K):
    """name -> (model, make_inputs(padding) -> list of inputs, mask of the first input)."""
    L = K.layers
    out = {}
    tokens = K.Input((None,), dtype="int32")
    e = L.Embedding(VOCAB, F, mask_zero=True)(tokens)
    out["tokens_self"] = (K.Model(tokens, L.MultiHeadAttention(2, 3)(e, e)),
                          lambda p, t=T: [_tokens(t, 30, _masks(t, p))])
    x = K.Input((None, F))
    branches = [L.Masking()(x) for _ in range(3)]  # one Masking per MHA: Keras 3's MHA clears its inputs' masks
    o1 = L.MultiHeadAttention(2, 3, dropout=0.25)(branches[0], branches[0])
    o2, scores = L.MultiHeadAttention(2, 3, value_dim=4, output_shape=7)(branches[1], branches[1],
                                                                         use_causal_mask=True,
                                                                         return_attention_scores=True)
    o3 = L.MultiHeadAttention(1, 5, use_bias=False)(branches[2], branches[2])
    out["features_variants"] = (K.Model(x, [o1, o2, scores, o3]), lambda p, t=T: [_padded((B, t, F), 31, _masks(t, p))])
    q, v, k = K.Input((None, F)), K.Input((None, FV)), K.Input((None, 3))
    mq1, mv1, mq2, mv2 = L.Masking()(q), L.Masking()(v), L.Masking()(q), L.Masking()(v)
    c1 = L.MultiHeadAttention(2, 3)(mq1, mv1, k)
    c2 = L.MultiHeadAttention(2, 4, value_dim=2)(query=mq2, value=mv2)
    out["cross"] = (K.Model([q, v, k], [c1, c2]),
                    lambda p, t=T: [_padded((B, t, F), 32, _masks(t, p)), _padded((B, S, FV), 33, _masks(S, "holes")),
                                    _x((B, S, 3), 34)])
    x = K.Input((None, F))
    vv, kk = K.Input((None, FV)), K.Input((None, F))
    m1, mv, mk = L.Masking()(x), L.Masking()(vv), L.Masking()(kk)
    d1 = L.Attention()([m1, m1])
    d2, d2s = L.Attention(use_scale=True, score_mode="concat")([m1, mv, mk], use_causal_mask=True,
                                                                return_attention_scores=True)
    d3 = L.AdditiveAttention()([m1, mk])  # tf_keras sizes `scale` by the value, Keras 3 by the query
    d4 = L.AdditiveAttention(use_scale=False)([m1, m1], use_causal_mask=True)
    out["dense_attention"] = (K.Model([x, vv, kk], [d1, d2, d2s, d3, d4]),
                              lambda p, t=T: [_padded((B, t, F), 35, _masks(t, p)),
                                              _padded((B, S, FV), 36, _masks(S, "post")),
                                              _padded((B, S, F), 37, _masks(S, "post"))])
    rng = _rng(38)
    for model, _ in out.values():
        for layer in model.layers:
            if layer.weights:
                layer.set_weights([rng.normal(0, 0.7, np.shape(w)).astype(np.float32) for w in layer.get_weights()])
    return out


def keras_mask(K, y):
    if K.__name__ == "keras":
        from keras.src.backend import get_keras_mask

        m = get_keras_mask(y)
    else:
        m = getattr(y, "_keras_mask", None)
    return None if m is None else np.asarray(m)


def compare(K, keras_model, ours, inputs, first_mask, what):
    want = keras_model(inputs, training=False)
    want = want if isinstance(want, (list, tuple)) else [want]
    got, masks = ours(inputs if len(inputs) > 1 else inputs[0])
    got, masks = (got, masks) if isinstance(got, list) else ([got], [masks])
    assert len(got) == len(want)
    for i, (g, w, m) in enumerate(zip(got, want, masks)):
        w_mask = keras_mask(K, w)
        if w_mask is not None and w_mask.ndim == 4:  # MHA scores: DEVIATIONS["keras-mha-scores-mask"]
            assert m is None and w_mask.shape == (w.shape[0], 1) + tuple(w.shape[2:]), what
        elif w_mask is None:
            assert m is None, f"{what} output {i}: Keras passes no mask"
        else:
            np.testing.assert_array_equal(m, w_mask, err_msg=f"{what} output {i} mask")
        if np.ndim(w) == 3:
            assert_steps(g, np.asarray(w), first_mask, f"{what} output {i}")
        else:
            np.testing.assert_allclose(g, np.asarray(w), **TOL["float32"], err_msg=f"{what} output {i}")
        assert np.isfinite(np.asarray(g)).all()


@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def library(request):
    if request.param == "keras3":
        K = pytest.importorskip("keras")
    else:
        K = pytest.importorskip("tf_keras")
    return request.param, K, keras_models(K)


def _first_mask(inputs):
    x = inputs[0]
    return x != 0 if x.ndim == 2 else np.any(x != 0, axis=-1)


@pytest.mark.keras
@pytest.mark.parametrize("name", ["tokens_self", "features_variants", "cross", "dense_attention"])
def test_from_keras_matches_keras(library, name):
    flavor, K, models = library
    model, make = models[name]
    ours = __import__("parity").from_keras(model)
    for padding in ("post", "pre", "holes"):
        inputs = make(padding)
        compare(K, model, ours, inputs, _first_mask(inputs), f"{flavor} {name} {padding}")
    inputs = make("post", B)  # B == T
    compare(K, model, ours, inputs, _first_mask(inputs), f"{flavor} {name} B == T")


@pytest.mark.keras
@pytest.mark.parametrize("name", ["tokens_self", "features_variants", "cross", "dense_attention"])
def test_load_model_and_to_keras_round_trip(library, name, tmp_path):
    import parity

    flavor, K, models = library
    model, make = models[name]
    inputs = make("holes")
    path = tmp_path / ("m.keras" if flavor == "keras3" else "m.h5")
    model.save(path)
    loaded = jm.keras_io.load_model(path)
    compare(K, model, loaded, inputs, _first_mask(inputs), f"{flavor} {name} load_model")
    back = parity.to_keras(loaded, flavor=flavor)
    want = model(inputs, training=False)
    got = back(inputs, training=False)
    for w, g in zip(want if isinstance(want, list) else [want], got if isinstance(got, list) else [got]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **TOL["float32"])
    if flavor == "keras3":
        wpath = tmp_path / "m.weights.h5"
        jm.keras_io.save_weights(loaded, wpath)
        twin = K.models.clone_model(model)
        twin.load_weights(wpath)
        got = twin(inputs, training=False)
        for w, g in zip(want if isinstance(want, list) else [want], got if isinstance(got, list) else [got]):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), **TOL["float32"])


@pytest.mark.keras
def test_direct_layer_with_copied_weights_matches_keras(library):
    """jm.nn.MultiHeadAttention built by hand, weights copied with Keras' get_weights() order."""
    flavor, K, _ = library
    keras_layer = K.layers.MultiHeadAttention(2, 3, value_dim=4, output_shape=6)
    q, v = _x((B, T, F), 40), _x((B, S, FV), 41)
    keras_layer(q, v)
    keras_layer.set_weights([_rng(42).normal(0, 0.7, w.shape).astype(np.float32) for w in keras_layer.get_weights()])
    ours = jm.nn.MultiHeadAttention(F, 2, 3, 4, output_shape=6, value_features=FV, rngs=nnx.Rngs(0),
                                    semantics=flavor)
    names = [(a, n) for a in ("query", "key", "value", "attention_output") for n in ("kernel", "bias")]
    for (a, n), w in zip(names, keras_layer.get_weights()):
        getattr(getattr(ours, a), n)[...] = jnp.asarray(w)
    am = np.broadcast_to(QMASK[:, :, None] & VMASK[:, None, :], (B, T, S))
    want = np.asarray(keras_layer(q, v, attention_mask=am))
    assert_steps(ours(q, v, attention_mask=am), want, QMASK)
    assert_steps(ours(q, v, mask=QMASK, value_mask=VMASK), want, QMASK)


@pytest.mark.keras
@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_check_model_gradients_match(flavor):
    """Loss and every weight's gradient (the probe loss sums over padded steps too, so rows with no allowed key
    count) through parity.check_model."""
    import parity

    K = pytest.importorskip("keras" if flavor == "keras3" else "tf_keras")
    tokens = K.Input((T,), dtype="int32")
    e = K.layers.Embedding(VOCAB, F, mask_zero=True)(tokens)
    x = K.layers.MultiHeadAttention(2, 3, dropout=0.1)(e, e)
    y = K.layers.Dense(2)(K.layers.Attention(use_scale=True)([x, x]))
    model = K.Model(tokens, y)
    report = parity.check_model(model, _tokens(T, 43, _masks(T, "holes")))
    assert report.ok and report.status == "pass", str(report)
    assert report.mask_equal and len(report.grad_diffs) == 12, str(report)


def _archive_with(path, out, edit):
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(files["config.json"])
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "MultiHeadAttention":
            edit(layer["config"])
    files["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    return out


@pytest.mark.keras
@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(num_heads=10**6), r"num_heads must be an integer in \[1, 1024\]"),
    (lambda c: c.update(key_dim=10**7), r"key_dim must be an integer in \[1, 4096\]"),
    (lambda c: c.update(attention_axes=[2]), r"attention_axes must be null or the time axis"),
    (lambda c: c.update(use_gate=True), r"use_gate must be one of \[False\]"),
    (lambda c: c.update(sliding_window=4), r"sliding_window must be one of \[None\]"),
    (lambda c: c.update(output_shape=[3, 2]), r"output_shape must be 1 integer"),
    (lambda c: c.update(num_heads=3), r"declares shape"),
])
def test_loader_refuses_crafted_attention_configs(tmp_path, edit, match):
    import time

    keras = pytest.importorskip("keras")
    tokens = keras.Input((T,), dtype="int32")
    e = keras.layers.Embedding(VOCAB, F, mask_zero=True)(tokens)
    model = keras.Model(tokens, keras.layers.MultiHeadAttention(2, 3)(e, e))
    model.save(tmp_path / "m.keras")
    crafted = _archive_with(tmp_path / "m.keras", tmp_path / "crafted.keras", edit)
    start = time.perf_counter()
    with pytest.raises(jm.UnsafeFileError, match=match):
        jm.keras_io.load_model(crafted)
    assert time.perf_counter() - start < 5.0


@pytest.mark.keras
def test_keras3_mha_clears_its_inputs_masks_deviation():
    """Keras 3 (both backends' code path) deletes the Keras mask of MultiHeadAttention's input tensors: a layer that
    consumes the same tensor *after* the MHA runs sees no mask. tf_keras and jaxmask keep it (named deviation
    "keras3-mha-clears-input-masks"); this test pins Keras 3's behaviour so a fix upstream is noticed."""
    import parity
    from parity.deviations import DEVIATIONS

    keras = pytest.importorskip("keras")
    x = keras.Input((T, F))
    m = keras.layers.Masking()(x)
    a = keras.layers.MultiHeadAttention(2, 3)(m, m)
    c = keras.layers.Attention()([m, a])  # runs after the MHA: its query mask (m's) is gone in Keras 3
    model = keras.Model(x, c)
    xs = _padded((B, T, F), 44, _masks(T, "post"))
    want = np.asarray(model(xs))
    valid = _masks(T, "post")
    assert not np.all(want[~valid] == 0.0), "Keras 3 now keeps the mask: drop the deviation"
    got, mask = parity.from_keras(model)(xs)
    np.testing.assert_array_equal(np.asarray(got)[~valid], 0.0)
    np.testing.assert_array_equal(mask, valid)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], **TOL["float32"])  # the difference: padding
    assert "keras3-mha-clears-input-masks" in DEVIATIONS


def _acceptance(name, flavor, padding, slow):
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(name, flavor, padding, marks=marks, id=f"{name}-{flavor}-{padding}")


@pytest.mark.keras
@pytest.mark.parametrize("name, flavor, padding", [
    _acceptance("transformer_classifier", "keras3", "pre", False),
    _acceptance("bigru_attention", "tf_keras", "post", True),
    _acceptance("transformer_classifier", "keras3", "post", True),
    _acceptance("transformer_classifier", "tf_keras", "post", True),
    _acceptance("transformer_classifier", "tf_keras", "pre", True),
    _acceptance("bigru_attention", "keras3", "post", True),
    _acceptance("bigru_attention", "keras3", "pre", True),
    _acceptance("bigru_attention", "tf_keras", "pre", True),
])
def test_acceptance_models_outputs_and_gradients(name, flavor, padding, tmp_path):
    """The keras.io-style transformer block (Embedding(mask_zero) -> MHA -> Add -> LayerNormalization -> ... ->
    GlobalAveragePooling1D) and the Bi-GRU with Attention pooling: outputs and masks via from_keras and load_model
    within 1e-5 of Keras, and every weight's gradient via parity.check_model (tests/test_keras_models.py covers the
    other paddings and to_keras)."""
    import parity
    from tests.models.keras_models import MODELS

    K = pytest.importorskip("keras" if flavor == "keras3" else "tf_keras")
    K.utils.set_random_seed(0)
    model, make_inputs = MODELS[name](K)
    x = make_inputs(np.random.default_rng(5), padding)
    want = np.asarray(model(x, training=False))
    path = tmp_path / ("m.keras" if flavor == "keras3" else "m.h5")
    model.save(path)
    for ours in (parity.from_keras(model), jm.keras_io.load_model(path)):
        got, mask = ours(x)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        assert mask is None
    report = parity.check_model(model, x)
    assert report.ok and report.status == "pass", str(report)
