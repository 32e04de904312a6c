"""dtype_policy="mixed_bfloat16" (Keras' name): float32 parameters, bfloat16 compute, float32 recurrent state
and loss. Checked against an independent float64 NumPy reference and against Keras 3's own mixed_bfloat16
(TF backend) at the bf16 rows of ``parity.tolerances``.

``python -m tests.test_mixed_precision`` prints the measured differences behind those rows."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmask as jm
from jaxmask.functional import precision
from jaxmask.functional import rnn as F
from parity.tolerances import TOLERANCES
from tests import reference as ref

B, T, FEAT, H = 8, 20, 4, 16
KINDS = {"lstm": "LSTM", "gru": "GRU", "simple": "SimpleRNN"}


def _data(seed=0, b=B, t=T):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t, FEAT)).astype(np.float32)
    lengths = rng.integers(0, t + 1, b)
    lengths[0], lengths[1] = 0, t  # a fully masked row and a full one
    post = np.arange(t)[None, :] < lengths[:, None]
    holes = post.copy()
    holes[:, t // 4] = False
    masks = {"post": post, "pre": post[:, ::-1].copy(), "holes": holes}
    return x, masks


def _layer(kind, policy, weights=None, **kw):
    layer = getattr(jm.nn, KINDS[kind])(FEAT, H, return_sequences=True, dtype_policy=policy, rngs=nnx.Rngs(0), **kw)
    if weights is not None:
        for name, w in zip(("kernel", "recurrent_kernel", "bias"), weights):
            getattr(layer, name)[...] = jnp.asarray(w)
    return layer


def _random_weights(kind, seed):
    rng = np.random.default_rng(seed)
    g = {"lstm": 4, "gru": 3, "simple": 1}[kind]
    bias = (2, g * H) if kind == "gru" else (g * H,)
    return [rng.normal(0, s, shape).astype(np.float32) for s, shape in
            ((0.4, (FEAT, g * H)), (0.3, (H, g * H)), (0.3, bias))]


def _err(got, want, where=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    d = np.abs(got - want)
    return float(d.max() if where is None else d[np.broadcast_to(where, d.shape)].max())


# ------------------------------------------------------------------------------------------------------
# The policy object and the dtype contract
# ------------------------------------------------------------------------------------------------------


def test_bad_policy_names():
    for bad in ("mixed_float16", "bf16", 3):
        with pytest.raises(ValueError, match=r"`dtype_policy` must be None, 'float32' or 'mixed_bfloat16'.*received"):
            jm.nn.LSTM(FEAT, H, dtype_policy=bad, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`dtype_policy` must be None"):
        jm.nn.Dense(FEAT, 1, dtype_policy="float16", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", list(KINDS))
def test_dtypes_under_mixed_bfloat16(kind):
    """Keras' contract (float32 variables, bfloat16 outputs and returned states) with a float32 carry."""
    layer = _layer(kind, "mixed_bfloat16", return_state=True)
    x, masks = _data()
    out, *states = layer(jnp.asarray(x), mask=jnp.asarray(masks["pre"]))
    assert layer.kernel[...].dtype == jnp.float32 and layer.dtype_policy.compute_dtype == "bfloat16"
    assert out.dtype == jnp.bfloat16 and all(s.dtype == jnp.bfloat16 for s in states)
    cell = layer.cell()
    init = tuple(jnp.zeros((B, H), jnp.float32) for _ in cell.state_names)
    params = precision.get_policy("mixed_bfloat16").cast(layer.params())
    hs, last, final = F.masked_scan(cell, params, jnp.asarray(x, jnp.bfloat16), jnp.asarray(masks["pre"]), init)
    assert hs.dtype == jnp.float32 and all(s.dtype == jnp.float32 for s in final)


def test_dense_and_loss_under_mixed_bfloat16():
    dense = jm.nn.Dense(FEAT, 2, activation="sigmoid", dtype_policy="mixed_bfloat16", rngs=nnx.Rngs(0))
    x, masks = _data()
    y = dense(jnp.asarray(x))
    assert y.dtype == jnp.bfloat16 and dense.kernel[...].dtype == jnp.float32
    w = np.asarray(dense.kernel[...], np.float64)
    want = 1 / (1 + np.exp(-(x.astype(np.float64) @ w)))
    assert np.all(TOLERANCES["outputs_bf16"].close(np.asarray(y, np.float32), want)), _err(y, want)
    y_true = (np.random.default_rng(1).random((B, T, 2)) > 0.5).astype(np.float32)
    loss = jm.masked_loss("binary_crossentropy", y_true, y, mask=masks["post"])
    assert loss.dtype == jnp.float32
    g = jax.grad(lambda k: jm.masked_loss("binary_crossentropy", y_true, jax.nn.sigmoid(
        jnp.asarray(x, jnp.bfloat16) @ k.astype(jnp.bfloat16)), mask=masks["post"]))(dense.kernel[...])
    assert g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all()


def test_float32_policy_casts_float64_inputs_and_none_does_not():
    with jax.enable_x64(True):
        x = jnp.asarray(_data()[0], jnp.float64)
        assert _layer("lstm", "float32")(x).dtype == jnp.float32
        layer = _layer("lstm", None)
        for name in ("kernel", "recurrent_kernel", "bias"):
            setattr(layer, name, nnx.Param(getattr(layer, name)[...].astype(jnp.float64)))
        assert layer(x).dtype == jnp.float64


def test_stateful_layer_keeps_its_state_in_float32():
    layer = jm.nn.LSTM(FEAT, H, stateful=True, batch_size=B, dtype_policy="mixed_bfloat16", rngs=nnx.Rngs(0))
    x, _ = _data()
    first = layer(jnp.asarray(x))
    assert layer.states[...].dtype == jnp.float32 and first.dtype == jnp.bfloat16
    layer(jnp.asarray(x))
    assert layer.states[...].dtype == jnp.float32


# ------------------------------------------------------------------------------------------------------
# Accuracy: against a float64 NumPy reference (independent of Keras)
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_mixed_bfloat16_close_to_float64_reference(kind):
    x, masks = _data(2, b=T, t=T)  # B == T
    weights = _random_weights(kind, 2)
    layer = _layer(kind, "mixed_bfloat16", weights)
    tol = TOLERANCES["outputs_bf16"]
    for name, mask in masks.items():
        got = layer(jnp.asarray(x), mask=jnp.asarray(mask))
        want, _, _ = ref.rnn(kind, dict(zip(("kernel", "recurrent_kernel", "bias"), weights)), x, mask)
        assert np.all(tol.close(np.asarray(got, np.float32), want)), (name, _err(got, want))


# ------------------------------------------------------------------------------------------------------
# Against Keras 3's mixed_bfloat16 (TF backend)
# ------------------------------------------------------------------------------------------------------


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def keras_layer_outputs(keras, kind, policy, x, mask, weights):
    layer = getattr(keras.layers, KINDS[kind])(H, return_sequences=True, dtype=policy)
    layer.build((None, T, FEAT))
    layer.set_weights(weights)
    out = layer(np.where(mask[:, :, None], x, 0.0).astype(np.float32), mask=mask)
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")))


def measure_layers(keras, seeds=(0, 1, 2)):
    """Max |diff| at all steps: jaxmask bf16 vs Keras bf16, and each against the float32 answer."""
    rows = []
    for kind in KINDS:
        for seed in seeds:
            x, masks = _data(seed)
            weights = _random_weights(kind, seed)
            for name, mask in masks.items():
                k32 = keras_layer_outputs(keras, kind, "float32", x, mask, weights)
                kbf = keras_layer_outputs(keras, kind, "mixed_bfloat16", x, mask, weights)
                jbf = np.asarray(_layer(kind, "mixed_bfloat16", weights)(jnp.asarray(x), mask=jnp.asarray(mask)),
                                 np.float32)
                close = bool(np.all(TOLERANCES["outputs_bf16"].close(jbf, kbf)))
                rows.append(dict(kind=kind, seed=seed, mask=name, jm_vs_keras=_err(jbf, kbf), jm_vs_f32=_err(jbf, k32),
                                 keras_vs_f32=_err(kbf, k32), close=close))
    return rows


def _model_pair(keras, policy, seed=0):
    """Masking -> LSTM(H, return_sequences) -> Dense(1, sigmoid) on both sides with the same weights."""
    keras.utils.set_random_seed(seed)
    k_model = keras.Sequential([keras.Input((T, FEAT)), keras.layers.Masking(0.0, dtype=policy),
                                keras.layers.LSTM(H, return_sequences=True, dtype=policy),
                                keras.layers.Dense(1, activation="sigmoid", dtype=policy)])
    rngs = nnx.Rngs(0)
    j_model = jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(FEAT, H, return_sequences=True, dtype_policy=policy,
                                                                 rngs=rngs),
                                jm.nn.Dense(H, 1, activation="sigmoid", dtype_policy=policy, rngs=rngs)])
    lstm, dense = j_model.layers[1], j_model.layers[2]
    kw = k_model.layers[1].get_weights() + k_model.layers[2].get_weights()
    for p, w in zip((lstm.kernel, lstm.recurrent_kernel, lstm.bias, dense.kernel, dense.bias), kw):
        p[...] = jnp.asarray(w)
    return k_model, j_model


def keras_model_loss_and_grads(keras, k_model, x, y, mask):
    """Keras' masked mean of the clipped binary cross-entropy in float32, and its gradients (tf.GradientTape)."""
    import tensorflow as tf

    m = tf.constant(mask, tf.float32)
    with tf.GradientTape() as tape:
        p = tf.clip_by_value(tf.cast(k_model(x, training=False), tf.float32)[..., 0], 1e-7, 1 - 1e-7)
        l = -(y[..., 0] * tf.math.log(p) + (1 - y[..., 0]) * tf.math.log(1 - p))
        loss = tf.reduce_sum(l * m) / tf.reduce_sum(m)
    grads = tape.gradient(loss, k_model.trainable_variables)
    return float(loss), [np.asarray(g) for g in grads]


def jm_model_loss_and_grads(j_model, x, y):
    graphdef, params, rest = nnx.split(j_model, nnx.Param, ...)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, rest)
        y_pred, out_mask = model(jnp.asarray(x))
        return jm.masked_loss("binary_crossentropy", y, y_pred, mask=out_mask)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    lstm, dense = grads["layers"][1], grads["layers"][2]
    order = [lstm["kernel"], lstm["recurrent_kernel"], lstm["bias"], dense["kernel"], dense["bias"]]
    return float(loss), [np.asarray(g[...]) for g in order], loss.dtype


def measure_model(keras, seed=0):
    x, masks = _data(seed)
    mask = masks["pre"]
    x = np.where(mask[:, :, None], x, 0.0).astype(np.float32)
    y = (np.random.default_rng(seed).random((B, T, 1)) > 0.5).astype(np.float32)
    out = {}
    for policy in ("float32", "mixed_bfloat16"):
        k_model, j_model = _model_pair(keras, policy, seed)
        out[policy] = keras_model_loss_and_grads(keras, k_model, x, y, mask), jm_model_loss_and_grads(j_model, x, y)
    (kl, kg), (jl, jg, jdtype) = out["mixed_bfloat16"]
    (kl32, kg32), _ = out["float32"]
    grad_scale = max(float(np.abs(g).max()) for g in kg32)
    return dict(loss_jm_vs_keras=abs(jl - kl), loss_jm_vs_f32=abs(jl - kl32), loss_keras_vs_f32=abs(kl - kl32),
                grad_jm_vs_keras=max(_err(a, b) for a, b in zip(jg, kg)) / grad_scale,
                grad_jm_vs_f32=max(_err(a, b) for a, b in zip(jg, kg32)) / grad_scale,
                grad_keras_vs_f32=max(_err(a, b) for a, b in zip(kg, kg32)) / grad_scale,
                loss_dtype=str(jdtype), jm_grads=jg, keras_grads=kg, jm_loss=jl, keras_loss=kl)


@pytest.fixture(scope="module")
def keras():
    return _keras()


@pytest.mark.keras
def test_layers_match_keras_mixed_bfloat16(keras):
    rows = measure_layers(keras, seeds=(0,))
    bad = [r for r in rows if not r["close"]]
    assert not bad, bad
    # the float32 carry keeps jaxmask at least as close to the float32 answer as Keras' bfloat16 carry
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        assert max(r["jm_vs_f32"] for r in rs) <= max(r["keras_vs_f32"] for r in rs), rs


@pytest.mark.keras
def test_model_loss_and_gradients_match_keras_mixed_bfloat16(keras):
    m = measure_model(keras)
    assert m["loss_dtype"] == "float32"
    tol_loss, tol_grad = TOLERANCES["loss_bf16"], TOLERANCES["gradients_bf16"]
    assert tol_loss.close(m["jm_loss"], m["keras_loss"]), m["loss_jm_vs_keras"]
    scale = max(float(np.abs(g).max()) for g in m["keras_grads"])
    for a, b in zip(m["jm_grads"], m["keras_grads"]):
        assert a.dtype == np.float32
        assert np.all(np.abs(a - b) <= tol_grad.atol * scale + tol_grad.rtol * np.abs(b)), _err(a, b) / scale


if __name__ == "__main__":
    k = _keras()
    rows = measure_layers(k)
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        print(f"{kind:7s} max|jm-keras| {max(r['jm_vs_keras'] for r in rs):.2e}  max|jm-f32| "
              f"{max(r['jm_vs_f32'] for r in rs):.2e}  max|keras-f32| {max(r['keras_vs_f32'] for r in rs):.2e}  "
              f"all within outputs_bf16: {all(r['close'] for r in rs)}  ({len(rs)} cases)")
    for seed in (0, 1, 2):
        m = measure_model(k, seed)
        keys = [key for key in m if key.startswith(("loss_", "grad_")) and key != "loss_dtype"]
        print(f"model seed {seed}: " + "  ".join(f"{key} {m[key]:.2e}" for key in keys))
