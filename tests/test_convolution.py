"""Conv1D, SeparableConv1D, pooling, UpSampling1D, ZeroPadding1D, Cropping1D and GlobalMaxPooling1D against
Keras 3 (TF backend), tf_keras and NumPy references, with Keras' mask rule for layers that do not support
masking (computed over padded steps, mask dropped), gradients, conv_lstm end to end, the safe loader's caps."""

import json
import os
import time
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jaxmask as jm  # noqa: E402
from tests import reference as ref  # noqa: E402

B = T = 7  # B == T
F = 6
MASK = np.array([
    [1, 1, 1, 1, 1, 1, 1],  # full
    [1, 1, 1, 1, 1, 0, 0],  # post-padded
    [0, 0, 0, 1, 1, 1, 1],  # pre-padded
    [1, 0, 1, 1, 0, 0, 1],  # holes
    [0, 0, 0, 0, 0, 0, 0],  # fully masked
    [1, 0, 0, 0, 0, 0, 0],  # one step
    [0, 0, 0, 0, 0, 0, 1],  # last step only
], bool)
NO_MASK_WARNING = "ignore:.*does not support masking"


def padded(seed=0, f=F, shift=0.0):
    x = np.random.default_rng(seed).normal(size=(B, T, f)).astype(np.float32) + shift
    return np.where(MASK[:, :, None], x, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- NumPy references


def np_conv1d(x, kernel, bias, strides=1, padding="valid", dilation=1, groups=1):
    """Keras' Conv1D written as loops: y[b, o, f] = Σ_i Σ_c xp[b, o·s + i·d, c] · kernel[i, c, f] + bias[f]."""
    x = np.asarray(x, np.float64)
    k, cin, filters = kernel.shape
    t = x.shape[1]
    span = (k - 1) * dilation + 1
    if padding == "causal":
        left, right = span - 1, 0
    elif padding == "same":
        total = max((-(-t // strides) - 1) * strides + span - t, 0)
        left, right = total // 2, total - total // 2
    else:
        left = right = 0
    xp = np.pad(x, ((0, 0), (left, right), (0, 0)))
    n_out = (xp.shape[1] - span) // strides + 1
    y = np.zeros((x.shape[0], n_out, filters))
    per = filters // groups
    for b in range(x.shape[0]):
        for o in range(n_out):
            for f in range(filters):
                g = f // per
                acc = 0.0 if bias is None else float(bias[f])
                for i in range(k):
                    for c in range(cin):
                        acc += xp[b, o * strides + i * dilation, g * cin + c] * kernel[i, c, f]
                y[b, o, f] = acc
    return y


def np_pool(x, pool, strides, padding, op):
    """TF's pooling: ``same`` pads so that ⌈T / s⌉ windows exist; padding never counts (max or mean)."""
    x = np.asarray(x, np.float64)
    t = x.shape[1]
    if padding == "same":
        n = -(-t // strides)
        left = max((n - 1) * strides + pool - t, 0) // 2
    else:
        n, left = (t - pool) // strides + 1, 0
    out = np.zeros((x.shape[0], n, x.shape[2]))
    for o in range(n):
        lo = o * strides - left
        window = x[:, max(lo, 0):min(lo + pool, t)]
        out[:, o] = window.max(axis=1) if op == "max" else window.mean(axis=1)
    return out


@pytest.mark.parametrize("options", [
    dict(padding="valid"), dict(padding="same", strides=2), dict(padding="causal", dilation_rate=2),
    dict(padding="same", groups=3), dict(padding="valid", strides=3, use_bias=False),
])
def test_conv1d_matches_numpy_loops(options):
    layer = jm.nn.Conv1D(F, 6, 3, **options, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    if layer.bias is not None:
        layer.bias[...] = rng.normal(size=6).astype(np.float32)
    x = padded(1)
    want = np_conv1d(x, np.asarray(layer.kernel[...]), None if layer.bias is None else np.asarray(layer.bias[...]),
                     options.get("strides", 1), options["padding"], options.get("dilation_rate", 1),
                     options.get("groups", 1))
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, **ref.TOL["float32"])


def test_causal_conv1d_output_depends_only_on_the_past():
    layer = jm.nn.Conv1D(F, 2, 3, padding="causal", dilation_rate=2, rngs=nnx.Rngs(1))
    x = padded(2)
    changed = x.copy()
    changed[:, 4:] += 5.0
    a, b = np.asarray(layer(jnp.asarray(x))), np.asarray(layer(jnp.asarray(changed)))
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("pool, strides, padding", [(2, None, "valid"), (3, 2, "same"), (3, 1, "same"),
                                                    (4, 3, "valid"), (4, 3, "same")])
def test_pooling_matches_numpy(pool, strides, padding):
    x = padded(3)
    s = pool if strides is None else strides
    got_max = jm.nn.MaxPooling1D(pool, strides, padding)(jnp.asarray(x))
    got_avg = jm.nn.AveragePooling1D(pool, strides, padding)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got_max), np_pool(x, pool, s, padding, "max"), **ref.TOL["float32"])
    np.testing.assert_allclose(np.asarray(got_avg), np_pool(x, pool, s, padding, "mean"), **ref.TOL["float32"])


def test_global_max_pooling_takes_the_max_over_padded_steps_too():
    x = padded(4, shift=-10.0)  # every valid value is negative: a padded zero wins wherever there is padding
    y = np.asarray(jm.nn.GlobalMaxPooling1D()(jnp.asarray(x), mask=jnp.asarray(MASK)))
    np.testing.assert_array_equal(y, x.max(axis=1))
    np.testing.assert_array_equal(y[4], 0.0)  # the fully masked row: the max of its padding
    assert (y[0] < 0).all()
    kept = jm.nn.GlobalMaxPooling1D(keepdims=True)(jnp.asarray(x))
    assert kept.shape == (B, 1, F)


def test_layers_without_mask_support_drop_the_mask_with_a_warning():
    mask = jnp.asarray(MASK)
    for layer in (jm.nn.Conv1D(F, 2, 3, rngs=nnx.Rngs(0)), jm.nn.MaxPooling1D(), jm.nn.GlobalMaxPooling1D(),
                  jm.nn.Cropping1D()):
        with pytest.warns(UserWarning, match=f"{type(layer).__name__} does not support masking"):
            assert layer.compute_output_mask(padded(5), mask) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert layer.compute_output_mask(padded(5), None) is None


def test_symbolic_output_lengths():
    x = jm.nn.Input((None, F))
    assert jm.nn.Conv1D(F, 4, 3, strides=2, rngs=nnx.Rngs(0))(x).shape == (None, None, 4)
    known = jm.nn.Input((9, F))
    assert jm.nn.Conv1D(F, 4, 3, strides=2, rngs=nnx.Rngs(0))(known).shape == (None, 4, 4)
    assert jm.nn.SeparableConv1D(F, 5, 3, padding="same", strides=2, rngs=nnx.Rngs(0))(known).shape == (None, 5, 5)
    assert jm.nn.AveragePooling1D(3, 2, "same")(known).shape == (None, 5, F)
    assert jm.nn.UpSampling1D(3)(known).shape == (None, 27, F)
    assert jm.nn.ZeroPadding1D((1, 2))(known).shape == (None, 12, F)
    assert jm.nn.Cropping1D((1, 2))(known).shape == (None, 6, F)
    assert jm.nn.GlobalMaxPooling1D(keepdims=True)(known).shape == (None, 1, F)


@pytest.mark.parametrize("make, message", [
    (lambda: jm.nn.Conv1D(F, 4, 3, groups=4, rngs=nnx.Rngs(0)), r"`groups`=4 must divide both in_features=6"),
    (lambda: jm.nn.Conv1D(F, 4, 3, strides=2, dilation_rate=2, rngs=nnx.Rngs(0)), r"`strides` > 1 together"),
    (lambda: jm.nn.Conv1D(F, 4, 3, padding="full", rngs=nnx.Rngs(0)), r"`padding` must be one of"),
    (lambda: jm.nn.Conv1D(F, 4, 0, rngs=nnx.Rngs(0)), r"`kernel_size` must be a positive int; received 0"),
    (lambda: jm.nn.Conv1D(F, 4, 3, rngs=nnx.Rngs(0))(jnp.zeros((2, 5, 3))), r"in_features=6.*last axis must be 6"),
    (lambda: jm.nn.Conv1D(F, 4, 3, rngs=nnx.Rngs(0))(jnp.zeros((2, 5))), r"rank 3"),
    (lambda: jm.nn.MaxPooling1D(2, padding="causal"), r"'valid' or 'same'"),
    (lambda: jm.nn.Cropping1D((3, 3))(jnp.zeros((2, 5, 1))), r"cropping 6 steps of 5 leaves none"),
    (lambda: jm.nn.ZeroPadding1D((1, -1)), r"non-negative int or a pair"),
    (lambda: jm.nn.GlobalMaxPooling1D()(jnp.zeros((2, 5, 1), jnp.int32)), r"floating-point"),
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


def one(v):
    """The single output (or mask) of a converted model: the converted tf_keras model currently returns
    one-element lists for a single output (reported to the lead)."""
    return v[0] if isinstance(v, list) and len(v) == 1 else v


FLAVORS = ["keras3", "tf_keras"]
CASES = {  # name -> (Keras class, kwargs, flavors)
    "conv_valid": ("Conv1D", dict(filters=4, kernel_size=3), FLAVORS),
    "conv_same_strides": ("Conv1D", dict(filters=4, kernel_size=3, strides=2, padding="same"), FLAVORS),
    "conv_causal_dilated_relu": ("Conv1D", dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2,
                                                activation="relu"), FLAVORS),
    "conv_groups_no_bias": ("Conv1D", dict(filters=6, kernel_size=2, padding="same", groups=3, use_bias=False),
                            FLAVORS),
    "sep_valid_dm2": ("SeparableConv1D", dict(filters=4, kernel_size=3, depth_multiplier=2), FLAVORS),
    "sep_same_strides_tanh": ("SeparableConv1D", dict(filters=3, kernel_size=2, strides=2, padding="same",
                                                      activation="tanh"), FLAVORS),
    "sep_causal": ("SeparableConv1D", dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2),
                   ["tf_keras"]),
    "maxpool": ("MaxPooling1D", dict(pool_size=2), FLAVORS),
    "maxpool_same": ("MaxPooling1D", dict(pool_size=3, strides=2, padding="same"), FLAVORS),
    "avgpool": ("AveragePooling1D", dict(pool_size=2), FLAVORS),
    "avgpool_same": ("AveragePooling1D", dict(pool_size=3, strides=2, padding="same"), FLAVORS),
    "avgpool_overlap": ("AveragePooling1D", dict(pool_size=4, strides=1), FLAVORS),
    "upsample": ("UpSampling1D", dict(size=3), FLAVORS),
    "zero_pad": ("ZeroPadding1D", dict(padding=(1, 2)), FLAVORS),
    "zero_pad_int": ("ZeroPadding1D", dict(padding=2), FLAVORS),
    "crop": ("Cropping1D", dict(cropping=(1, 2)), FLAVORS),
    "crop_int": ("Cropping1D", dict(cropping=1), FLAVORS),
    "global_max": ("GlobalMaxPooling1D", dict(), FLAVORS),
    "global_max_keepdims": ("GlobalMaxPooling1D", dict(keepdims=True), FLAVORS),
}
PARAMS = [pytest.param(flavor, case, id=f"{case}-{flavor}") for case, (_, _, fl) in CASES.items() for flavor in fl]


def masked_model(K, cls, kwargs, seed):
    inp = K.Input((T, F))
    layer = getattr(K.layers, cls)(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras 3: "does not support masking"
        model = K.Model(inp, layer(K.layers.Masking()(inp)))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    return model


@pytest.mark.keras
@pytest.mark.filterwarnings(NO_MASK_WARNING)
@pytest.mark.parametrize("flavor, case", PARAMS)
def test_layer_matches_keras_over_padded_steps_and_drops_the_mask(flavor, case):
    import parity

    cls, kwargs, _ = CASES[case]
    K = keras_lib(flavor)
    model = masked_model(K, cls, kwargs, 6)
    x = padded(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want = model(x, training=False)
    got, mask = parity.from_keras(model)(x)
    np.testing.assert_allclose(np.asarray(one(got)), np.asarray(want), **ref.TOL["float32"])
    assert keras_mask(flavor, want) is None and one(mask) is None


@pytest.mark.keras
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("cls, kwargs", [(c, k) for c, k, _ in CASES.values() if c not in ("Conv1D",
                                                                                           "SeparableConv1D")][::3]
                         + [("Conv1D", dict(filters=2, kernel_size=2)),
                            ("SeparableConv1D", dict(filters=2, kernel_size=2))])
def test_keras_rule_keras3_warns_tf_keras_is_silent(flavor, cls, kwargs):
    """The verified rule: given a masked input, Keras 3 warns and drops the mask; tf_keras drops it silently."""
    K = keras_lib(flavor)
    x = padded(7)
    masked = K.layers.Masking()(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = getattr(K.layers, cls)(**kwargs)(masked)
    assert keras_mask(flavor, y) is None
    said = [str(w.message) for w in caught if "does not support masking" in str(w.message)]
    assert bool(said) == (flavor == "keras3"), said


@pytest.mark.keras
@pytest.mark.filterwarnings(NO_MASK_WARNING)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_rnn_after_conv1d_sees_no_mask_like_keras(flavor):
    """Masking -> Conv1D(same) -> LSTM: the LSTM runs over every step (Keras drops the mask at the Conv1D)."""
    import parity

    K = keras_lib(flavor)
    inp = K.Input((None, F))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        h = K.layers.Conv1D(4, 3, padding="same")(K.layers.Masking()(inp))
        y = K.layers.LSTM(3, return_sequences=True)(h)
    model = K.Model(inp, y)
    x = padded(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want = model(x, training=False)
    got, mask = parity.from_keras(model)(x)
    np.testing.assert_allclose(np.asarray(one(got)), np.asarray(want), **ref.TOL["float32"])
    assert keras_mask(flavor, want) is None and one(mask) is None
    # the padded steps were processed: a masked LSTM would repeat step 4's output at row 1's padded steps 5, 6
    out = np.asarray(one(got))
    assert not np.allclose(out[1, 5], out[1, 4]) and not np.allclose(out[1, 6], out[1, 4])


@pytest.mark.keras
@pytest.mark.filterwarnings(NO_MASK_WARNING)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_gradients_match_keras(flavor):
    """Gradients of a probe loss w.r.t. every weight and the input, through causal dilated Conv1D,
    SeparableConv1D, same pooling (ties in the zero padding route to the first max in both), padding, cropping,
    up-sampling and GlobalMaxPooling1D."""
    import tensorflow as tf

    import parity

    K = keras_lib(flavor)
    L = K.layers
    inp = K.Input((T, F))
    h = L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu")(inp)
    h = L.SeparableConv1D(4, 2, padding="same", depth_multiplier=2)(L.ZeroPadding1D((1, 0))(h))
    h = L.MaxPooling1D(3, 2, padding="same")(L.UpSampling1D(2)(L.Cropping1D((0, 1))(h)))
    h = L.AveragePooling1D(2, 1, padding="same")(h)
    model = K.Model(inp, L.GlobalMaxPooling1D()(h))
    rng = np.random.default_rng(9)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    x = padded(9)
    probe = rng.normal(size=(B, 4)).astype(np.float32)
    ours, bindings = parity.convert.convert(model)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(model(xt, training=False) * probe)
    keras_grads = tape.gradient(loss, [xt] + [b.keras_variable for b in bindings])
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    def objective(p, v):
        y, _ = nnx.merge(graphdef, p, rest, copy=True)(v)
        return jnp.sum(one(y) * probe)

    grads, gx = jax.grad(objective, argnums=(0, 1))(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(gx), keras_grads[0].numpy(), **ref.TOL["grad32"], err_msg="input")
    flat = dict(nnx.to_flat_state(grads))
    for b, kg in zip(bindings, keras_grads[1:]):
        np.testing.assert_allclose(np.asarray(flat[b.path].get_value()), kg.numpy(), **ref.TOL["grad32"],
                                   err_msg=b.name)


# ------------------------------------------------------------------------------------------- files and loader


@pytest.fixture(scope="module")
def conv_lstm_files(tmp_path_factory):
    """tests/models conv_lstm from Keras 3 (.keras, legacy .h5) and tf_keras (.h5)."""
    pytest.importorskip("keras")
    from tests.models import keras_models

    d = tmp_path_factory.mktemp("conv_lstm")
    out = {}
    for flavor, suffixes in (("keras3", (".keras", ".h5")), ("tf_keras", (".h5",))):
        model, make = keras_models.conv_lstm(keras_lib(flavor))
        rng = np.random.default_rng(10)
        conv = model.layers[1]
        conv.set_weights([w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in conv.get_weights()])
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
def test_conv_lstm_end_to_end(conv_lstm_files, key, padding):
    """from_keras, load_model of the saved file and to_keras all within 1e-5 of Keras."""
    import parity

    path, model, make, flavor = conv_lstm_files[key]
    x = make(np.random.default_rng(11), padding)
    want = np.asarray(model(x, training=False))
    loaded = jm.keras_io.load_model(path)
    for ours in (parity.from_keras(model), loaded):
        got, mask = ours(x)
        np.testing.assert_allclose(np.asarray(one(got)), want, **ref.TOL["float32"])
        assert one(mask) is None
    back = parity.to_keras(loaded, flavor=flavor)
    np.testing.assert_allclose(np.asarray(back(x, training=False)), want, **ref.TOL["float32"])


@pytest.mark.keras
@pytest.mark.filterwarnings(NO_MASK_WARNING)
def test_conv_layers_save_weights_round_trip_into_keras(tmp_path):
    """jm.keras_io.save_weights of Conv1D / SeparableConv1D models loads into the Keras twin (weight paths)."""
    import parity

    K = keras_lib("keras3")
    inp = K.Input((T, F))
    layers = [K.layers.Conv1D(4, 3, padding="same"), K.layers.SeparableConv1D(3, 2, depth_multiplier=2),
              K.layers.Conv1D(3, 2, use_bias=False), K.layers.SeparableConv1D(2, 1, use_bias=False)]
    h = inp
    for layer in layers:
        h = layer(h)
    model = K.Model(inp, h)
    rng = np.random.default_rng(12)
    for layer in layers:
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    ours = parity.from_keras(model)
    path = tmp_path / "conv.weights.h5"
    jm.keras_io.save_weights(ours, path)
    twin = parity.to_keras(ours)
    for layer in twin.layers[1:]:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    twin.load_weights(path)
    x = padded(12)
    np.testing.assert_allclose(np.asarray(twin(x, training=False)), np.asarray(model(x, training=False)),
                               **ref.TOL["float32"])


def _crafted(tmp_path, cls, config):
    """A .keras archive of Input -> one layer with ``config`` (refused before any weight is read)."""
    arch = {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [None, 9, 6],
                                                                           "dtype": "float32", "name": "in"}},
        {"module": "keras.layers", "class_name": cls, "config": {"name": "x", **config}}]}}
    path = tmp_path / "crafted.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps(arch))
        z.writestr("model.weights.h5", b"")
    return path


@pytest.mark.parametrize("cls, config, message", [
    ("Conv1D", {"filters": 10**9, "kernel_size": [3]}, "filters"),
    ("Conv1D", {"filters": 4, "kernel_size": [10**9]}, "kernel_size"),
    ("Conv1D", {"filters": 4, "kernel_size": [3], "strides": [0]}, "strides"),
    ("Conv1D", {"filters": 4, "kernel_size": [3], "padding": "full"}, "padding"),
    ("Conv1D", {"filters": 4, "kernel_size": [3], "data_format": "channels_first"}, "data_format"),
    ("Conv1D", {"filters": 4, "kernel_size": [3], "groups": 4}, "groups"),
    ("Conv1D", {"filters": 4, "kernel_size": [3], "strides": [2], "dilation_rate": [2]}, "strides"),
    ("SeparableConv1D", {"filters": 4, "kernel_size": [3], "depth_multiplier": 10**6}, "depth_multiplier"),
    ("MaxPooling1D", {"pool_size": [10**6]}, "pool_size"),
    ("AveragePooling1D", {"pool_size": [2], "padding": "causal"}, "padding"),
    ("UpSampling1D", {"size": 10**6}, "size"),
    ("ZeroPadding1D", {"padding": [10**9, 0]}, "padding"),
    ("Cropping1D", {"cropping": [1, 2, 3]}, "cropping"),
    ("GlobalMaxPooling1D", {"data_format": "channels_first"}, "data_format"),
])
def test_crafted_conv_configs_are_refused_quickly(tmp_path, cls, config, message):
    path = _crafted(tmp_path, cls, config)
    start = time.perf_counter()
    with pytest.raises(jm.UnsafeFileError, match=message):
        jm.keras_io.load_model(path)
    assert time.perf_counter() - start < 5.0


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
@pytest.mark.filterwarnings(NO_MASK_WARNING)
@pytest.mark.parametrize("name, padding, flavor", _graph_params("parity.graph_cases.convolution"))
def test_graph_cases_match_keras(name, padding, flavor):
    """This group's parity graph cases (outputs and output masks; the catalogue adds gradients and trajectories)."""
    import parity
    from parity.graph_cases import GRAPHS

    K = keras_lib(flavor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, x = GRAPHS[name][0](K, padding)
        want = model(x, training=False)
    got, mask = parity.from_keras(model)(x)
    np.testing.assert_allclose(np.asarray(one(got)), np.asarray(want), **ref.TOL["float32"])
    assert keras_mask(flavor, want) is None and one(mask) is None
