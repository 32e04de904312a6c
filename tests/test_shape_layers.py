"""Shape, regularisation and activation layers (RepeatVector, Flatten, Reshape, Permute, SpatialDropout1D, GaussianNoise,
GaussianDropout, ActivityRegularization, ReLU, LeakyReLU, PReLU, ELU, Softmax) against Keras 3 (TF backend),
tf_keras and NumPy references; noise statistics in training; round trips; the safe loader's caps.

What Keras does with the mask (verified by running Keras 3.15.1 and tf_keras 2.21): Flatten, Reshape, Permute and
RepeatVector drop it (Keras 3 warns); the noise layers, ActivityRegularization and the activation layers pass it
on; Softmax takes a mask broadcast against the logits' last axes and passes it on.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmask as jm
from tests.reference import TOL

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

B, T, F = 4, 6, 3
MASK = np.ones((B, T), bool)
MASK[0, 4:] = False  # post-padding
MASK[1, :3] = False  # pre-padding
MASK[2, [1, 3]] = False  # holes
MASK[3] = False  # a fully masked row
X = np.where(MASK[:, :, None], np.random.default_rng(0).normal(size=(B, T, F)) * 1.5, 0.0).astype(np.float32)
STATIC = np.random.default_rng(1).normal(size=(B, F)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Without Keras: NumPy references, noise statistics, errors.
# --------------------------------------------------------------------------------------------------------


def np_relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras' documented piecewise definition: max_value for x >= max_value, x for threshold <= x < max_value
    (x = threshold itself gives 0 in Keras' code), negative_slope · (x - threshold) below."""
    x = np.asarray(x, np.float64)
    top = np.inf if max_value is None else max_value
    return np.where(x >= top, top, np.where(x > threshold, x, negative_slope * np.minimum(x - threshold, 0.0)))


RELU_CASES = [{}, {"max_value": 0.5}, {"negative_slope": 0.1}, {"negative_slope": 0.1, "threshold": 0.2},
              {"max_value": 6.0, "negative_slope": 0.2}, {"threshold": 0.3}, {"threshold": 0.4, "max_value": 1.0},
              {"max_value": 0.8, "threshold": 0.3, "negative_slope": 0.05}]


@pytest.mark.parametrize("kwargs", RELU_CASES)
def test_relu_matches_numpy_reference(kwargs):
    np.testing.assert_allclose(jm.nn.ReLU(**kwargs)(X), np_relu(X, **kwargs), **TOL["float32"])


def test_activations_match_numpy_references():
    np.testing.assert_allclose(jm.nn.LeakyReLU()(X), np.where(X >= 0, X, 0.3 * X), **TOL["float32"])
    np.testing.assert_allclose(jm.nn.ELU(0.5)(X), np.where(X > 0, X, 0.5 * np.expm1(X)), **TOL["float32"])
    prelu = jm.nn.PReLU((T, F), shared_axes=[1])
    alpha = np.random.default_rng(2).normal(size=(1, F)).astype(np.float32)
    prelu.alpha[...] = alpha
    np.testing.assert_allclose(prelu(X), np.where(X > 0, X, alpha[None] * X), **TOL["float32"])
    assert jm.nn.PReLU((None, F), shared_axes=1).alpha.shape == (1, F)


def test_b_equals_t_equals_f_prelu_alpha_is_per_position():
    x = np.random.default_rng(3).normal(size=(3, 3, 3)).astype(np.float32)
    prelu = jm.nn.PReLU((3, 3))
    alpha = np.arange(9, dtype=np.float32).reshape(3, 3) / 10
    prelu.alpha[...] = alpha
    np.testing.assert_allclose(prelu(x), np.where(x > 0, x, alpha[None] * x), **TOL["float32"])


def np_softmax(x, mask, axis, semantics):
    x = np.asarray(x, np.float64)
    m = np.broadcast_to(mask, x.shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    if semantics == "keras3":
        keep = m > 0.5
        z = np.where(keep, x, -1e9)
    else:
        z = (x.astype(np.float32) + ((1.0 - m) * -1e9).astype(np.float32)).astype(np.float64)  # float32, as tf_keras
    if semantics == "tf_keras" and len(axes) > 1:  # exp(z - logsumexp(z)) in float32: the -1e9 shift rounds away
        z = z.astype(np.float32)
        top = z.max(axis=axes, keepdims=True)
        lse = (top + np.log(np.exp(z - top).sum(axis=axes, keepdims=True))).astype(np.float32)
        return np.exp((z - lse).astype(np.float64))
    z = z - z.max(axis=axes, keepdims=True)
    y = np.exp(z) / np.exp(z).sum(axis=axes, keepdims=True)
    return np.where(keep, y, 0.0) if semantics == "keras3" else y


SCORES = np.random.default_rng(4).normal(size=(B, T, T)).astype(np.float32) * 3
KEY_MASK = MASK[:, None, :]  # [B, 1, Tk]; row 3 fully masked


@pytest.mark.parametrize("semantics", ["keras3", "tf_keras"])
@pytest.mark.parametrize("axis, mask", [(-1, KEY_MASK), (1, MASK[:, :, None]), ((1, 2), KEY_MASK), (-1, None)])
def test_softmax_with_mask_matches_numpy_reference(semantics, axis, mask):
    layer = jm.nn.Softmax(axis=axis, semantics=semantics)
    y = layer(SCORES, mask=mask)
    assert np.isfinite(y).all()
    want = np_softmax(SCORES, np.ones((1, 1, 1)) if mask is None else mask, axis, semantics)
    np.testing.assert_allclose(y, want, **TOL["float32"])
    if mask is not None and semantics == "keras3":
        np.testing.assert_array_equal(np.asarray(y)[3], 0.0)  # a fully masked row: zeros, not NaN
    grad = jax.grad(lambda s: jnp.sum(layer(s, mask=mask) * jnp.arange(T, dtype=jnp.float32).reshape(1, 1, T)))(SCORES)
    assert np.isfinite(grad).all()


def test_softmax_mask_is_aligned_with_the_last_axes_like_keras():
    with pytest.raises(ValueError, match=r"`mask` must broadcast to `x` the NumPy way.*mask\[:, None, :\]"):
        jm.nn.Softmax()(X, mask=MASK)  # [B, T] against [B, T, F]: Keras raises too
    assert jm.nn.Softmax().compute_output_mask(SCORES, KEY_MASK) is KEY_MASK  # passed on


def test_shape_layers_match_numpy_and_drop_the_mask():
    cases = [
        (jm.nn.Flatten(), X.reshape(B, -1)),
        (jm.nn.Flatten("channels_first"), np.moveaxis(X, 1, -1).reshape(B, -1)),
        (jm.nn.Reshape((-1, 2 * F)), X.reshape(B, T // 2, 2 * F)),
        (jm.nn.Reshape((F, T)), X.reshape(B, F, T)),
        (jm.nn.Permute((2, 1)), X.transpose(0, 2, 1)),
    ]
    for layer, want in cases:
        np.testing.assert_array_equal(layer(X, mask=MASK), want)
        assert layer.compute_output_mask(X, MASK) is None, type(layer).__name__
    rep = jm.nn.RepeatVector(5)
    np.testing.assert_array_equal(rep(STATIC), np.repeat(STATIC[:, None], 5, axis=1))
    assert rep.compute_output_mask(STATIC, None) is None


@pytest.mark.parametrize("layer", [jm.nn.SpatialDropout1D(0.5), jm.nn.GaussianNoise(0.5), jm.nn.GaussianDropout(0.5),
                                   jm.nn.ActivityRegularization(), jm.nn.ReLU(), jm.nn.LeakyReLU(), jm.nn.ELU(),
                                   jm.nn.PReLU((T, F))])
def test_mask_passes_through(layer):
    assert layer.compute_output_mask(X, MASK) is MASK


def _train(layer):
    layer.deterministic = False
    return layer


def test_spatial_dropout_drops_whole_channels_with_the_right_rate_and_scale():
    x = np.random.default_rng(5).uniform(1.0, 2.0, size=(64, 20, 64)).astype(np.float32)
    layer = _train(jm.nn.SpatialDropout1D(0.3, rngs=nnx.Rngs(0)))
    y = np.asarray(layer(x))
    kept = y != 0
    channel = kept.all(axis=1)
    np.testing.assert_array_equal(kept, np.broadcast_to(channel[:, None, :], kept.shape))  # all steps or none
    n = channel.size
    assert abs(1 - channel.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    np.testing.assert_allclose(y[kept], (x / 0.7)[kept], rtol=1e-6)
    assert not np.array_equal(layer(x), y)  # a new mask each call


def test_gaussian_noise_and_dropout_statistics():
    x = np.full((64, 50, 32), 2.0, np.float32)
    n = x.size
    noise = np.asarray(_train(jm.nn.GaussianNoise(0.5, rngs=nnx.Rngs(1)))(x)) - x
    assert abs(noise.mean()) < 4 * 0.5 / np.sqrt(n)
    assert abs(noise.std() - 0.5) < 0.01
    ratio = np.asarray(_train(jm.nn.GaussianDropout(0.2, rngs=nnx.Rngs(2)))(x)) / x
    assert abs(ratio.mean() - 1.0) < 4 * np.sqrt(0.25 / n)
    assert abs(ratio.var() - 0.2 / 0.8) < 0.01


def test_noise_layers_are_identity_in_eval_mode_and_need_rngs_in_training():
    for layer in (jm.nn.SpatialDropout1D(0.5, rngs=nnx.Rngs(0)), jm.nn.GaussianNoise(1.0, rngs=nnx.Rngs(0)),
                  jm.nn.GaussianDropout(0.5, rngs=nnx.Rngs(0))):
        model = jm.nn.Sequential([jm.nn.Masking(), layer])
        assert not np.array_equal(model(X)[0], np.asarray(X))
        model.eval()
        y, mask = model(X)
        np.testing.assert_array_equal(y, X)
        np.testing.assert_array_equal(mask, MASK)
    with pytest.raises(ValueError, match=r"GaussianNoise in training mode needs `rngs`"):
        jm.nn.GaussianNoise(0.1)(X)


@pytest.mark.parametrize("call, error, match", [
    (lambda: jm.nn.RepeatVector(0), ValueError, r"`n` must be an int >= 1; received 0"),
    (lambda: jm.nn.RepeatVector(2)(X), ValueError, r"RepeatVector expects \[B, F\] inputs"),
    (lambda: jm.nn.Reshape((-1, -1)), ValueError, r"at most one -1"),
    (lambda: jm.nn.Reshape((5,))(X), ValueError, r"cannot reshape samples of shape \(6, 3\) \(18 values\)"),
    (lambda: jm.nn.Permute((1, 1)), ValueError, r"`dims` must be a permutation of 1..2"),
    (lambda: jm.nn.Permute((2, 1, 3))(X), ValueError, r"expects inputs of rank 4"),
    (lambda: jm.nn.Flatten("nchw"), ValueError, r"`data_format` must be"),
    (lambda: jm.nn.SpatialDropout1D(1.0), ValueError, r"`rate` must be a number in \[0, 1\)"),
    (lambda: jm.nn.SpatialDropout1D(0.1)(STATIC), ValueError, r"expects \[B, T, F\] inputs"),
    (lambda: jm.nn.GaussianNoise(-1.0), ValueError, r"`stddev` must be a finite number >= 0"),
    (lambda: jm.nn.ActivityRegularization(l2=0.01), ValueError, r"`l2` must be 0: jaxmask adds no activity losses"),
    (lambda: jm.nn.ReLU(max_value=-1.0), ValueError, r"`max_value` must be a finite number >= 0.0 or None"),
    (lambda: jm.nn.ReLU(threshold=-0.3), ValueError, r"`threshold` must be a finite number >= 0.0"),
    (lambda: jm.nn.LeakyReLU(float("nan")), ValueError, r"`negative_slope` must be a finite number"),
    (lambda: jm.nn.PReLU((None, F)), ValueError, r"axis 1 of `input_shape` \(None, 3\) has unknown size"),
    (lambda: jm.nn.PReLU((T, F), shared_axes=[3]), ValueError, r"`shared_axes` must hold axes in \[1, 2\]"),
    (lambda: jm.nn.PReLU((T, F))(STATIC), ValueError, r"expected \[B, 6, 3\]"),
    (lambda: jm.nn.Softmax(axis="last"), ValueError, r"`axis` must be an int or a tuple of ints"),
    (lambda: jm.nn.Softmax(axis=3)(X), ValueError, r"Softmax\(axis=3\) received x of rank 3"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------------------------
# Against Keras 3 and tf_keras.
# --------------------------------------------------------------------------------------------------------


def _lib(name):
    if name == "keras3":
        return pytest.importorskip("keras")
    return pytest.importorskip("tf_keras")


def keras_mask(lib_name, y):
    if lib_name == "keras3":
        from keras.src.backend import get_keras_mask

        m = get_keras_mask(y)
    else:
        m = getattr(y, "_keras_mask", None)
    return None if m is None else np.asarray(m)


def shape_model(K, lib_name):
    """Every layer of this file on a Masking mask (Softmax and RepeatVector on unmasked inputs)."""
    L = K.layers
    seq, static = K.Input((T, F), name="seq"), K.Input((F,), name="static")
    h = L.Masking()(seq)
    slope = {"alpha": 0.1} if lib_name == "tf_keras" else {"negative_slope": 0.1}
    out = {
        "flatten": L.Flatten()(h), "reshape": L.Reshape((-1, 2 * F))(h), "reshape_ft": L.Reshape((F, T))(h),
        "permute": L.Permute((2, 1))(h), "spatial_dropout": L.SpatialDropout1D(0.5)(h),
        "gaussian_noise": L.GaussianNoise(0.3)(h), "gaussian_dropout": L.GaussianDropout(0.4)(h),
        "activity_reg": L.ActivityRegularization()(h), "leaky_relu": L.LeakyReLU()(h),
        "leaky_relu_0.1": L.LeakyReLU(**slope)(h), "elu": L.ELU()(h), "elu_0.5": L.ELU(alpha=0.5)(h),
        "prelu_shared": L.PReLU(shared_axes=[1])(h), "prelu": L.PReLU()(h),
        "softmax": L.Softmax()(seq), "softmax_time": L.Softmax(axis=1)(seq),
        "repeat": L.RepeatVector(4)(static), "repeat_gru": L.RepeatVector(2)(L.GRU(2)(h)),
    }
    for i, kwargs in enumerate(RELU_CASES):
        out[f"relu_{i}"] = L.ReLU(**kwargs)(h)
    model = K.Model([seq, static], list(out.values()))
    rng = np.random.default_rng(6)
    for layer in model.layers:
        if type(layer).__name__ == "PReLU":
            layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return model, list(out)


def softmax_model(K):
    L = K.layers
    scores, key_mask, time_mask = K.Input((T, T), name="scores"), K.Input((1, T), name="km"), K.Input((T, 1), name="tm")
    outs = [L.Softmax()(scores, mask=key_mask), L.Softmax(axis=1)(scores, mask=time_mask),
            L.Softmax(axis=(1, 2))(scores, mask=key_mask)]
    return K.Model([scores, key_mask, time_mask], outs), ["softmax_keys", "softmax_time", "softmax_both"]


SOFTMAX_INPUTS = [SCORES, KEY_MASK.astype(np.float32), MASK[:, :, None].astype(np.float32)]
SHAPE_INPUTS = [X, STATIC]


def _run_keras(lib_name, model, xs):
    ys = model(xs, training=False)
    return [np.asarray(y) for y in ys], [keras_mask(lib_name, y) for y in ys]


def assert_same(got, want, names, what):
    (gy, gm), (wy, wm) = got, want
    for name, y, m, ky, km in zip(names, gy, gm, wy, wm):
        assert (m is None) == (km is None), f"{what}: {name} mask {'None' if m is None else 'set'} vs Keras " \
                                            f"{'None' if km is None else 'set'}"
        y = np.asarray(y)
        if km is None:
            np.testing.assert_allclose(y, ky, **TOL["float32"], err_msg=f"{what}: {name}")
            continue
        np.testing.assert_array_equal(np.asarray(m) != 0, km != 0, err_msg=f"{what}: {name} mask")
        full = np.broadcast_to(km.reshape((1,) * (ky.ndim - km.ndim) + km.shape) if km.shape != ky.shape[:km.ndim]
                               else km.reshape(km.shape + (1,) * (ky.ndim - km.ndim)), ky.shape) != 0
        np.testing.assert_allclose(y[full], ky[full], **TOL["float32"], err_msg=f"{what}: {name} valid steps")
        np.testing.assert_allclose(y[~full], ky[~full], **TOL["float32"], err_msg=f"{what}: {name} masked steps")


@pytest.fixture(scope="module")
def models():
    """lib -> {"shape" | "softmax": (Keras model, names, inputs, Keras outputs and masks)}."""
    out = {}
    for lib_name in ("keras3", "tf_keras"):
        try:
            K = _lib(lib_name)
        except pytest.skip.Exception:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Keras 3: "this layer does not support masking"
            m, names = shape_model(K, lib_name)
            s, snames = softmax_model(K)
            out[lib_name] = {"shape": (m, names, SHAPE_INPUTS, _run_keras(lib_name, m, SHAPE_INPUTS)),
                             "softmax": (s, snames, SOFTMAX_INPUTS, _run_keras(lib_name, s, SOFTMAX_INPUTS))}
    return out


def _case(models, lib_name, kind):
    if lib_name not in models:
        pytest.skip(f"{lib_name} is not installed")
    return models[lib_name][kind]


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
@pytest.mark.parametrize("kind", ["shape", "softmax"])
def test_from_keras_matches_keras(models, lib_name, kind):
    import parity

    model, names, xs, want = _case(models, lib_name, kind)
    assert_same(parity.from_keras(model)(xs), want, names, f"{lib_name}/{kind}")


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
@pytest.mark.parametrize("kind", ["shape", "softmax"])
def test_load_model_and_to_keras_round_trip(models, lib_name, kind, tmp_path):
    import parity

    model, names, xs, want = _case(models, lib_name, kind)
    path = tmp_path / ("m.keras" if lib_name == "keras3" else "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(path)
        loaded = jm.keras_io.load_model(path)
        assert_same(loaded(xs), want, names, f"load_model {path.name}")
        back = parity.to_keras(loaded, flavor=lib_name)
        assert_same(_run_keras(lib_name, back, xs), want, names, f"to_keras {lib_name}")


@pytest.mark.keras
def test_jm_softmax_built_directly_matches_keras_layer():
    K = _lib("keras3")
    for axis, mask in ((-1, KEY_MASK), (1, MASK[:, :, None])):
        want = np.asarray(K.layers.Softmax(axis=axis)(K.ops.convert_to_tensor(SCORES), mask=K.ops.convert_to_tensor(mask)))
        np.testing.assert_allclose(jm.nn.Softmax(axis=axis)(SCORES, mask=mask), want, **TOL["float32"])


@pytest.mark.keras
def test_activity_regularization_with_a_loss_is_refused():
    import parity

    K = _lib("keras3")
    inp = K.Input((T, F))
    model = K.Model(inp, K.layers.ActivityRegularization(l1=0.01)(inp))
    with pytest.raises(ValueError, match=r"l1 = 0.01: ActivityRegularization adds an activity loss in training"):
        parity.from_keras(model)


def _tampered(path, edit):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    for e in cfg["config"]["layers"]:
        edit(e)
    members["config.json"] = json.dumps(cfg).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    out = path.with_name("tampered.keras")
    out.write_bytes(buf.getvalue())
    return out


@pytest.mark.keras
@pytest.mark.parametrize("cls, field, value, match", [
    ("RepeatVector", "n", 10**9, r"n must be an integer in \[1, 65536\]"),
    ("Reshape", "target_shape", [2**30], r"target_shape must hold integers in \[1, 16777216\] or one of \[-1\]"),
    ("Reshape", "target_shape", [-1, -1], r"at most one -1"),
    ("Reshape", "target_shape", [7], r"cannot reshape samples of shape \(6, 3\)"),
    ("Permute", "dims", [1, 1], r"`dims` must be a permutation"),
    ("Permute", "dims", list(range(1, 20)), r"dims must list 1 to 8 integers"),
    ("ActivityRegularization", "l2", 0.5, r"l2 = 0.5: ActivityRegularization adds an activity loss"),
    ("ReLU", "negative_slope", -1.0, r"negative_slope must be a finite number >= 0"),
    ("GaussianNoise", "stddev", "big", r"stddev must be a number"),
    ("SpatialDropout1D", "rate", 1.0, r"rate must be a number in \[0, 1\)"),
    ("PReLU", "shared_axes", [9], r"shared_axes must hold integers in \[1, 8\]"),
    ("PReLU", "alpha_initializer", {"module": "evil", "class_name": "Zeros", "config": {}}, r"module 'evil'"),
    ("Softmax", "axis", [99], r"axis must hold integers in \[-8, 8\]"),
    ("Flatten", "data_format", "nchw", r"data_format must be one of"),
])
def test_crafted_configs_are_refused(models, tmp_path, cls, field, value, match):
    model = _case(models, "keras3", "shape")[0]
    path = tmp_path / "m.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(path)

    def edit(e):
        if e["class_name"] == cls:
            e["config"][field] = value

    with pytest.raises(jm.UnsafeFileError, match=match):
        jm.keras_io.load_model(_tampered(path, edit))


@pytest.mark.keras
def test_prelu_over_an_unknown_time_axis_needs_shared_axes(tmp_path):
    K = _lib("keras3")
    inp = K.Input((None, F))
    model = K.Model(inp, K.layers.PReLU(shared_axes=[1])(inp))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = jm.keras_io.load_model(path)
    np.testing.assert_allclose(loaded(X)[0], np.asarray(model(X)), **TOL["float32"])

    def edit(e):
        if e["class_name"] == "PReLU":
            e["config"]["shared_axes"] = None

    with pytest.raises(jm.UnsafeFileError, match=r"axis 1 of `input_shape` \(None, 3\) has unknown size"):
        jm.keras_io.load_model(_tampered(path, edit))
