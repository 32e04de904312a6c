"""LayerNormalization, BatchNormalization and UnitNormalization against Keras 3 (TF backend), tf_keras and NumPy
references: outputs at valid and at masked steps, output masks, masked batch moments in training, moving-average
updates over train steps, round trips through files, the safe loader's caps."""

import json
import os
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jaxmask as jm  # noqa: E402
from jaxmask.nn._normalization import masked_moments  # noqa: E402
from tests import reference as ref  # noqa: E402

B = T = 6  # B == T: a [B] / [T] broadcast mistake cannot pass silently
F = 3
MASK = np.array([
    [1, 1, 1, 1, 1, 1],  # full
    [1, 1, 1, 1, 0, 0],  # post-padded
    [0, 0, 0, 1, 1, 1],  # pre-padded
    [1, 0, 1, 1, 0, 1],  # holes
    [0, 0, 0, 0, 0, 0],  # fully masked
    [1, 0, 0, 0, 0, 0],  # one step
], bool)


def padded(seed=0, f=F, scale=2.0, shift=1.0):
    x = np.random.default_rng(seed).normal(size=(B, T, f)).astype(np.float32) * scale + shift
    return np.where(MASK[:, :, None], x, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- NumPy references


def np_masked_moments(x, mask):
    """Per feature: mean and population variance of the valid steps (a Python loop); (0, 0) with none."""
    x = np.asarray(x, np.float64)
    mean, var = np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
    for f in range(x.shape[-1]):
        values = [x[b, t, f] for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]
        if values:
            mean[f], var[f] = np.mean(values), np.var(values)
    return mean, var


def np_batch_norm(x, mean, var, gamma, beta, eps):
    return (np.asarray(x, np.float64) - mean) / np.sqrt(var + eps) * gamma + beta


def np_layer_norm(x, gamma, beta, eps, axes=(-1,)):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_masked_moments_match_numpy_loop_and_slicing():
    x = padded(1)
    mean, var = masked_moments(jnp.asarray(x), jnp.asarray(MASK), (0, 1))
    want_mean, want_var = np_masked_moments(x, MASK)
    np.testing.assert_allclose(np.asarray(mean).ravel(), want_mean, **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(var).ravel(), want_var, **ref.TOL["float32"])
    # masking equals slicing: the moments of the valid steps alone
    np.testing.assert_allclose(np.asarray(mean).ravel(), x[MASK].mean(0), **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(var).ravel(), x[MASK].var(0), **ref.TOL["float32"])
    # NaN / Inf in padding never reach the statistics
    poisoned = np.where(MASK[:, :, None], x, np.nan).astype(np.float32)
    mean2, var2 = masked_moments(jnp.asarray(poisoned), jnp.asarray(MASK), (0, 1))
    np.testing.assert_array_equal(np.asarray(mean2), np.asarray(mean))
    np.testing.assert_array_equal(np.asarray(var2), np.asarray(var))


def test_masked_moments_of_a_fully_masked_batch_are_zero_with_finite_gradients():
    x = jnp.asarray(padded(2))
    none = jnp.zeros((B, T), bool)
    mean, var = masked_moments(x, none, (0, 1))
    np.testing.assert_array_equal(np.asarray(mean), 0.0)
    np.testing.assert_array_equal(np.asarray(var), 0.0)
    g = jax.grad(lambda x: sum(jnp.sum(v) for v in masked_moments(x, none, (0, 1))))(x)
    assert np.isfinite(np.asarray(g)).all()


def test_layer_normalization_matches_numpy_directly():
    ln = jm.nn.LayerNormalization(F, epsilon=1e-6)
    rng = np.random.default_rng(3)
    ln.gamma[...] = rng.normal(size=F).astype(np.float32)
    ln.beta[...] = rng.normal(size=F).astype(np.float32)
    x = padded(3)
    y = np.asarray(ln(jnp.asarray(x), mask=jnp.asarray(MASK)))
    want = np_layer_norm(x, np.asarray(ln.gamma[...]), np.asarray(ln.beta[...]), 1e-6)
    np.testing.assert_allclose(y, want, **ref.TOL["float32"])
    # a zero (padded) step gives beta; the mask passes through untouched
    np.testing.assert_allclose(y[4, 0], np.asarray(ln.beta[...]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ln.compute_output_mask(x, jnp.asarray(MASK))), MASK)


def test_batch_normalization_train_step_matches_numpy_directly():
    bn = jm.nn.BatchNormalization(F, momentum=0.9)
    rng = np.random.default_rng(4)
    for name in ("gamma", "beta", "moving_mean"):
        getattr(bn, name)[...] = rng.normal(size=F).astype(np.float32)
    bn.moving_variance[...] = rng.uniform(0.5, 2.0, size=F).astype(np.float32)
    before = {k: np.asarray(getattr(bn, k)[...]) for k in ("gamma", "beta", "moving_mean", "moving_variance")}
    x = padded(4)
    y = np.asarray(bn(jnp.asarray(x), mask=jnp.asarray(MASK)))
    mean, var = np_masked_moments(x, MASK)
    np.testing.assert_allclose(y, np_batch_norm(x, mean, var, before["gamma"], before["beta"], 1e-3),
                               **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(bn.moving_mean[...]), before["moving_mean"] * 0.9 + mean * 0.1,
                               **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(bn.moving_variance[...]), before["moving_variance"] * 0.9 + var * 0.1,
                               **ref.TOL["float32"])
    bn.eval()
    y = np.asarray(bn(jnp.asarray(x), mask=jnp.asarray(MASK)))
    np.testing.assert_allclose(y, np_batch_norm(x, np.asarray(bn.moving_mean[...]),
                                                np.asarray(bn.moving_variance[...]), before["gamma"],
                                                before["beta"], 1e-3), **ref.TOL["float32"])


def test_batch_normalization_moving_stats_update_inside_jit():
    bn = jm.nn.BatchNormalization(F, momentum=0.5)
    x, mask = jnp.asarray(padded(5)), jnp.asarray(MASK)

    @nnx.jit
    def call(layer, x, mask):
        return layer(x, mask=mask)

    for _ in range(2):
        call(bn, x, mask)
    mean, var = np_masked_moments(np.asarray(x), MASK)
    np.testing.assert_allclose(np.asarray(bn.moving_mean[...]), mean * 0.75, **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(bn.moving_variance[...]), 0.25 + var * 0.75, **ref.TOL["float32"])


def test_unit_normalization_matches_numpy_and_is_finite_at_zero_steps():
    x = padded(6)
    un = jm.nn.UnitNormalization()
    y = np.asarray(un(jnp.asarray(x)))
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(-1, keepdims=True))
    want = np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0)
    np.testing.assert_allclose(y, want, **ref.TOL["float32"])
    for semantics in ("keras3", "tf_keras"):
        layer = jm.nn.UnitNormalization(semantics=semantics)
        g = jax.grad(lambda x: jnp.sum(layer(x) * 1.5))(jnp.asarray(x))
        assert np.isfinite(np.asarray(g)).all(), semantics


@pytest.mark.parametrize("make, message", [
    (lambda: jm.nn.LayerNormalization(4)(jnp.zeros((2, 3, 5))), r"in_features=\(4,\).*x.shape=\(2, 3, 5\)"),
    (lambda: jm.nn.LayerNormalization(4, axis=(1, 2)), r"one positive size per axis"),
    (lambda: jm.nn.LayerNormalization(4, axis=0)(jnp.zeros((4, 3, 5))), r"batch axis 0"),
    (lambda: jm.nn.LayerNormalization(4)(jnp.zeros((2, 3, 4), jnp.int32)), r"floating-point"),
    (lambda: jm.nn.BatchNormalization(3)(jnp.zeros((2, 4, 5))), r"axis -1 must have size 3"),
    (lambda: jm.nn.BatchNormalization(3)(jnp.zeros((2, 4, 3)), mask=jnp.ones((2, 5), bool)),
     r"`mask` must be a \[B, T\] array matching the input's \(B, T\) = \(2, 4\)"),
    (lambda: jm.nn.BatchNormalization(3, momentum=1.5), r"`momentum` must be in \[0, 1\]"),
    (lambda: jm.nn.UnitNormalization(semantics="keras2"), r"'keras3' or 'tf_keras'"),
    (lambda: jm.nn.UnitNormalization(axis=3)(jnp.zeros((2, 4, 3))), r"out of range for an input of rank 3"),
])
def test_bad_arguments_are_refused_with_clear_messages(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# ------------------------------------------------------------------------------------------- against Keras


def keras_lib(name):
    if name == "keras3":
        return pytest.importorskip("keras")
    return pytest.importorskip("tf_keras")


def keras_mask(flavor, y):
    if flavor == "keras3":
        from keras.src.backend import get_keras_mask

        m = get_keras_mask(y)
    else:
        m = getattr(y, "_keras_mask", None)
    return None if m is None else np.asarray(m)


FLAVORS = ["keras3", "tf_keras"]


def masked_model(K, layer, shape=(T, F)):
    inp = K.Input(shape)
    return K.Model(inp, layer(K.layers.Masking()(inp)))


def randomise(layer, seed):
    rng = np.random.default_rng(seed)
    values = []
    for w in layer.weights:
        name = getattr(w, "path", w.name)
        values.append(rng.uniform(0.5, 2.0, w.shape) if "variance" in name else rng.normal(size=w.shape))
    layer.set_weights([v.astype(np.float32) for v in values])


def one(v):
    """The single output (or mask) of a converted model: tf_keras configs list even a single output, and the
    converted tf_keras model currently returns one-element lists (reported to the lead)."""
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def find(model, kind):
    return next(layer for layer in model.layers if isinstance(layer, kind))


def assert_valid_and_masked(got, want, mask=MASK):
    got, want = np.asarray(one(got)), np.asarray(want)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[mask], want[mask], **ref.TOL["float32"], err_msg="valid steps")
    np.testing.assert_allclose(got[~mask], want[~mask], **ref.TOL["float32"], err_msg="masked steps")


LN_OPTIONS = {
    "default": {},
    "eps_no_center": {"epsilon": 1e-6, "center": False},
    "no_scale": {"scale": False},
    "time_and_features": {"axis": [1, 2]},
}


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("options", LN_OPTIONS)
def test_layer_normalization_matches_keras(flavor, options):
    import parity

    K = keras_lib(flavor)
    layer = K.layers.LayerNormalization(**LN_OPTIONS[options])
    model = masked_model(K, layer)
    randomise(layer, 7)
    x = padded(7)
    y = model(x, training=False)
    ours = parity.from_keras(model)
    got, mask = ours(x)
    assert_valid_and_masked(got, y)
    np.testing.assert_array_equal(np.asarray(one(mask)), keras_mask(flavor, y))


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")  # deprecated in Keras 3, still in its configs
def test_layer_normalization_rms_scaling_matches_keras3():
    import parity

    K = keras_lib("keras3")
    layer = K.layers.LayerNormalization(rms_scaling=True)
    model = masked_model(K, layer)
    randomise(layer, 8)
    x = padded(8)
    ours = parity.from_keras(model)
    assert find(ours, jm.nn.LayerNormalization).beta is None
    assert_valid_and_masked(ours(x)[0], model(x, training=False))
    with pytest.raises(ValueError, match="rms_scaling=True.*Keras 3 only"):
        parity.to_keras(ours, flavor="tf_keras")


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_unit_normalization_matches_keras_including_tiny_norms(flavor, axis):
    import parity

    K = keras_lib(flavor)
    model = masked_model(K, K.layers.UnitNormalization(axis=axis))
    x = padded(9)
    x[0, 1] = [1e-7, 0.0, 0.0]  # norm 1e-7: Keras 3 gives 1, tf_keras 0.1
    x[0, 2] = [1e-13, 0.0, 0.0]
    y = model(x, training=False)
    ours = parity.from_keras(model)
    assert find(ours, jm.nn.UnitNormalization).semantics == flavor
    got, mask = ours(x)
    assert_valid_and_masked(got, y)
    np.testing.assert_array_equal(np.asarray(one(mask)), keras_mask(flavor, y))


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
def test_unit_normalization_gradient_matches_keras_including_zero_steps(flavor):
    """At an all-zero (padded) step the gradient is the clamp: 1e12 in Keras 3, 1e6 in tf_keras, never NaN."""
    import tensorflow as tf

    K = keras_lib(flavor)
    x = padded(10)
    probe = np.random.default_rng(10).normal(size=x.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(K.layers.UnitNormalization()(xt) * probe)
    want = tape.gradient(loss, xt).numpy()
    layer = jm.nn.UnitNormalization(semantics=flavor)
    got = np.asarray(jax.grad(lambda v: jnp.sum(layer(v) * probe))(jnp.asarray(x)))
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got[MASK], want[MASK], **ref.TOL["grad32"])
    np.testing.assert_allclose(got[~MASK], want[~MASK], rtol=1e-6)
    np.testing.assert_allclose(np.abs(got[~MASK]), np.abs(probe[~MASK]) * (1e12 if flavor == "keras3" else 1e6),
                               rtol=1e-6)


BN_OPTIONS = {
    "default": {},
    "momentum_eps": {"momentum": 0.8, "epsilon": 1e-5},
    "no_center_no_scale": {"center": False, "scale": False},
    "time_axis": {"axis": 1},
}


def bn_pair(flavor, options, seed):
    import parity

    K = keras_lib(flavor)
    layer = K.layers.BatchNormalization(**BN_OPTIONS[options])
    model = masked_model(K, layer)
    randomise(layer, seed)
    return model, layer, parity.from_keras(model)


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("options", BN_OPTIONS)
def test_batch_normalization_inference_matches_keras(flavor, options):
    model, _, ours = bn_pair(flavor, options, 11)
    x = padded(11)
    y = model(x, training=False)
    got, mask = ours(x)
    assert_valid_and_masked(got, y)
    np.testing.assert_array_equal(np.asarray(one(mask)), keras_mask(flavor, y))


def _stats(layer):
    return {getattr(w, "path", w.name).split("/")[-1].split(":")[0]: np.asarray(w.numpy()) for w in layer.weights}


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("options", BN_OPTIONS)
def test_batch_normalization_training_uses_masked_moments_like_keras(flavor, options):
    model, layer, ours = bn_pair(flavor, options, 12)
    x = padded(12)
    initial = _stats(layer)
    ours.train()
    got, mask = ours(x)
    want = model(x, training=True)  # updates Keras' moving statistics too
    assert_valid_and_masked(got, want)
    np.testing.assert_array_equal(np.asarray(one(mask)), keras_mask(flavor, want))
    stats = _stats(layer)
    bn = find(ours, jm.nn.BatchNormalization)
    np.testing.assert_allclose(np.asarray(bn.moving_mean[...]), stats["moving_mean"], **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(bn.moving_variance[...]), stats["moving_variance"], **ref.TOL["float32"])
    if options == "default":  # Keras' batch statistics are the NumPy masked moments (valid steps only)
        mean, var = np_masked_moments(x, MASK)
        np.testing.assert_allclose(stats["moving_mean"], 0.99 * initial["moving_mean"] + 0.01 * mean,
                                   **ref.TOL["float32"])
        np.testing.assert_allclose(stats["moving_variance"], 0.99 * initial["moving_variance"] + 0.01 * var,
                                   **ref.TOL["float32"])


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
def test_batch_normalization_fully_masked_batch_is_finite_and_matches_keras(flavor):
    model, layer, ours = bn_pair(flavor, "default", 13)
    x = np.zeros((B, T, F), np.float32)  # Masking masks every step
    ours.train()
    got, _ = ours(x)
    want = np.asarray(model(x, training=True))
    assert np.isfinite(want).all()
    np.testing.assert_allclose(np.asarray(one(got)), want, **ref.TOL["float32"])
    stats, bn = _stats(layer), find(ours, jm.nn.BatchNormalization)
    np.testing.assert_allclose(np.asarray(bn.moving_mean[...]), stats["moving_mean"], **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(bn.moving_variance[...]), stats["moving_variance"], **ref.TOL["float32"])


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
def test_batch_normalization_not_trainable_runs_in_inference_mode_like_keras(flavor):
    import parity

    K = keras_lib(flavor)
    layer = K.layers.BatchNormalization(trainable=False)
    model = masked_model(K, layer)
    randomise(layer, 14)
    ours = parity.from_keras(model)
    ours.train()
    x = padded(14)
    before = np.asarray(find(ours, jm.nn.BatchNormalization).moving_mean[...])
    assert_valid_and_masked(ours(x)[0], model(x, training=True))
    np.testing.assert_array_equal(np.asarray(find(ours, jm.nn.BatchNormalization).moving_mean[...]), before)
    assert parity.to_keras(ours, flavor=flavor).layers[-1].trainable is False


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
def test_batch_normalization_training_gradients_match_keras(flavor):
    """Gradients through the masked batch moments (w.r.t. gamma, beta and the LSTM below) vs GradientTape."""
    import tensorflow as tf

    import parity

    K = keras_lib(flavor)
    inp = K.Input((T, F))
    h = K.layers.LSTM(4, return_sequences=True)(K.layers.Masking()(inp))
    layer = K.layers.BatchNormalization()
    model = K.Model(inp, layer(h))
    randomise(layer, 15)
    x = padded(15)
    r = np.random.default_rng(15).normal(size=(B, T, 4)).astype(np.float32)
    probe = np.where(MASK[:, :, None], r, 0.0)
    ours, bindings = parity.convert.convert(model)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * probe)
    keras_grads = tape.gradient(loss, [b.keras_variable for b in bindings])
    ours.train()
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    def objective(p, r):
        y, _ = nnx.merge(graphdef, p, r, copy=True)(x)
        return jnp.sum(one(y) * probe)

    grads = jax.grad(objective)(params, rest)
    flat = dict(nnx.to_flat_state(grads))
    for b, kg in zip(bindings, keras_grads):
        np.testing.assert_allclose(np.asarray(flat[b.path].get_value()), kg.numpy(), **ref.TOL["grad32"],
                                   err_msg=b.name)


def _sgd_steps(ours, x, y, steps, lr):
    """``steps`` jitted SGD steps on mean squared error in training mode; returns the losses."""
    ours.train()
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
    opt = optax.sgd(lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, rest, opt_state):
        def objective(p):
            model = nnx.merge(graphdef, p, rest, copy=True)
            out, _ = model(x)
            return jnp.mean((one(out) - y) ** 2), nnx.split(model, nnx.Param, ...)[2]

        (loss, new_rest), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    losses = []
    for _ in range(steps):
        params, rest, opt_state, loss = step(params, rest, opt_state)
        losses.append(float(loss))
    nnx.update(ours, params, rest)
    return losses


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
def test_batchnorm_between_rnns_train_steps_match_keras_train_on_batch(flavor):
    """Three SGD steps: Keras ``train_on_batch`` vs a jitted jaxmask step; moving statistics, weights, losses."""
    import parity
    from tests.models import keras_models

    K = keras_lib(flavor)
    model, make = keras_models.batchnorm_between_rnns(K)
    x = make(np.random.default_rng(16), "post")
    y = np.random.default_rng(17).uniform(size=(x.shape[0], 1)).astype(np.float32)
    ours = parity.from_keras(model)
    model.compile(optimizer=K.optimizers.SGD(0.1), loss="mse")
    keras_losses = [float(np.asarray(model.train_on_batch(x, y)).ravel()[0]) for _ in range(3)]
    losses = _sgd_steps(ours, x, y, 3, 0.1)
    np.testing.assert_allclose(losses, keras_losses, **ref.TOL["grad32"])
    bn_keras = next(layer for layer in model.layers if "batch_norm" in layer.name)
    bn = find(ours, jm.nn.BatchNormalization)
    stats = _stats(bn_keras)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_allclose(np.asarray(getattr(bn, name)[...]), stats[name], **ref.TOL["grad32"],
                                   err_msg=name)
    ours.eval()
    np.testing.assert_allclose(np.asarray(one(ours(x)[0])), np.asarray(model(x, training=False)),
                               **ref.TOL["grad32"])


# ------------------------------------------------------------------------------------------- files and loader


@pytest.fixture(scope="module")
def batchnorm_files(tmp_path_factory):
    """batchnorm_between_rnns from Keras 3 (.keras, legacy .h5) and tf_keras (.h5) with non-trivial statistics."""
    pytest.importorskip("keras")
    from tests.models import keras_models

    d = tmp_path_factory.mktemp("batchnorm")
    out = {}
    for flavor, suffixes in (("keras3", (".keras", ".h5")), ("tf_keras", (".h5",))):
        K = keras_lib(flavor)
        model, make = keras_models.batchnorm_between_rnns(K)
        bn = next(layer for layer in model.layers if "batch_norm" in layer.name)
        randomise(bn, 18)
        for suffix in suffixes:
            path = d / f"{flavor}{suffix}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "HDF5 format is considered legacy": on purpose
                model.save(path)
            out[f"{flavor}{suffix}"] = (path, model, make, flavor)
    return out


@pytest.mark.keras
@pytest.mark.parametrize("key", ["keras3.keras", "keras3.h5", "tf_keras.h5"])
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_batchnorm_between_rnns_end_to_end(batchnorm_files, key, padding):
    """from_keras, load_model of the saved file and to_keras all within 1e-5 of Keras (inference)."""
    import parity

    path, model, make, flavor = batchnorm_files[key]
    x = make(np.random.default_rng(19), padding)
    want = np.asarray(model(x, training=False))
    for ours in (parity.from_keras(model), jm.keras_io.load_model(path)):
        got, mask = ours(x)
        np.testing.assert_allclose(np.asarray(one(got)), want, **ref.TOL["float32"])
        assert one(mask) is None
    back = parity.to_keras(jm.keras_io.load_model(path), flavor=flavor)
    np.testing.assert_allclose(np.asarray(back(x, training=False)), want, **ref.TOL["float32"])


@pytest.mark.keras
def test_norm_layers_save_weights_round_trip_into_keras(tmp_path):
    """jm.keras_io.save_weights of a model with every norm layer loads into the Keras twin (weight paths)."""
    import parity

    K = keras_lib("keras3")
    inp = K.Input((T, F))
    h = K.layers.Masking()(inp)
    layers = [K.layers.LayerNormalization(center=False), K.layers.BatchNormalization(scale=False),
              K.layers.UnitNormalization(), K.layers.LayerNormalization()]
    for layer in layers:
        h = layer(h)
    model = K.Model(inp, h)
    for i, layer in enumerate(layers):
        randomise(layer, 20 + i)
    ours = parity.from_keras(model)
    path = tmp_path / "norms.weights.h5"
    jm.keras_io.save_weights(ours, path)
    twin = parity.to_keras(ours)
    for layer in twin.layers[2:]:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    twin.load_weights(path)
    x = padded(20)
    np.testing.assert_allclose(np.asarray(twin(x, training=False)), np.asarray(model(x, training=False)),
                               **ref.TOL["float32"])


def _crafted(tmp_path, cls, config):
    """A .keras archive of Input -> one layer with ``config`` (no weights needed: refused before reading)."""
    arch = {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [None, 5, 3],
                                                                           "dtype": "float32", "name": "in"}},
        {"module": "keras.layers", "class_name": cls, "config": {"name": "x", **config}}]}}
    path = tmp_path / "crafted.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps(arch))
        z.writestr("model.weights.h5", b"")
    return path


@pytest.mark.parametrize("cls, config, message", [
    ("LayerNormalization", {"axis": [10**6]}, "axis"),
    ("LayerNormalization", {"axis": [0]}, "batch axis"),
    ("LayerNormalization", {"epsilon": "1e-3"}, "epsilon"),
    ("BatchNormalization", {"renorm": True}, "renorm"),
    ("BatchNormalization", {"momentum": 7}, "momentum"),
    ("BatchNormalization", {"axis": [1, 2]}, "several axes"),
    ("BatchNormalization", {"virtual_batch_size": 2}, "virtual_batch_size"),
    ("UnitNormalization", {"axis": "all"}, "axis"),
])
def test_crafted_norm_configs_are_refused(tmp_path, cls, config, message):
    with pytest.raises(jm.UnsafeFileError, match=message):
        jm.keras_io.load_model(_crafted(tmp_path, cls, config))


def test_trainer_updates_batch_norm_moving_statistics():
    rngs = nnx.Rngs(0)
    inp = jm.nn.Input((None, F))
    bn = jm.nn.BatchNormalization(F)
    model = jm.nn.Model(inp, jm.nn.Dense(F, 1, rngs=rngs)(bn(jm.nn.Masking()(inp))))
    x = padded(21)
    trainer = jm.Trainer(model, optax.sgd(0.1), "mse")
    trainer.train_on_batch(x, np.zeros((B, T, 1), np.float32))
    mean, _ = np_masked_moments(x, MASK)
    np.testing.assert_allclose(np.asarray(bn.moving_mean[...]), 0.01 * mean, **ref.TOL["float32"])


def _graph_params(module):
    import importlib

    importlib.import_module(module)
    from parity.graph_cases import GRAPHS

    out = []
    for name, (fn, paddings, refs) in GRAPHS.items():
        if fn.__module__ != module:
            continue
        for flavor in FLAVORS:
            if refs is None or flavor in refs:
                out += [pytest.param(name, padding, flavor, id=f"{name}-{padding}-{flavor}") for padding in paddings]
    return out


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("name, padding, flavor", _graph_params("parity.graph_cases.normalization"))
def test_graph_cases_match_keras(name, padding, flavor):
    """This group's parity graph cases (outputs and output masks; the catalogue adds gradients and trajectories)."""
    import parity
    from parity.graph_cases import GRAPHS

    K = keras_lib(flavor)
    model, x = GRAPHS[name][0](K, padding)
    want = model(x, training=False)
    got, mask = parity.from_keras(model)(x)
    np.testing.assert_allclose(np.asarray(one(got)), np.asarray(want), **ref.TOL["float32"])
    want_mask = keras_mask(flavor, want)
    if want_mask is None:
        assert one(mask) is None
    else:
        np.testing.assert_array_equal(np.asarray(one(mask)), want_mask)


_JAX_BACKEND_UNITNORM = """
import numpy as np, jax, jax.numpy as jnp, keras
x = np.zeros((2, 3, 2), "float32"); x[0, 0] = [1.0, 2.0]
layer = keras.layers.UnitNormalization()
g = np.asarray(jax.grad(lambda v: jnp.sum(layer(v) * 1.5))(jnp.asarray(x)))
assert np.isfinite(g[0, 0]).all() and np.isnan(g[0, 1:]).all() and np.isnan(g[1]).all(), g
print("ok")
"""


@pytest.mark.slow
@pytest.mark.keras
def test_keras3_jax_backend_unit_normalization_gradient_is_nan_at_zero_steps():
    """Pins the named deviation keras-jax-unitnorm-zero-step-nan-grad (jaxmask: finite, the TF backend's value)."""
    import subprocess
    import sys

    pytest.importorskip("keras")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _JAX_BACKEND_UNITNORM], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
    x = np.zeros((2, 3, 2), np.float32)
    x[0, 0] = [1.0, 2.0]
    g = jax.grad(lambda v: jnp.sum(jm.nn.UnitNormalization()(v) * 1.5))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g)[1], 1.5e12, rtol=1e-6)
