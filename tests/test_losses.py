"""Every jm.losses function, value per element, against real Keras 3 (TF backend) and tf_keras.

Tolerances (float32 outputs; inputs drawn in float64 with NumPy and cast to float32 once, the same
float32 arrays go to both sides). A value passes when |ours - ref| <= atol + rtol * |ref|.

| comparison                                                        | rtol | atol | why                                        |
|-------------------------------------------------------------------|------|------|--------------------------------------------|
| Keras 3 (TF backend), every loss                                  | 1e-6 | 1e-7 | float32 rounding; atol only for values ~0   |
| tf_keras, every loss it has                                       | 1e-6 | 1e-7 | same kernels                               |
| tf_keras binary (focal) cross-entropy from probabilities in [.05, .95] | 1e-6 | 3e-6 | tf_keras takes log(p + 1e-7), Keras 3 log(p) |
| Keras 3 JAX-backend kernels in the clipping regime                | 1e-6 | 1e-7 | same formula, different float32 libm        |
| gradients (check_grads, float64)                                  | 1e-4 | 1e-4 | finite differences                         |
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("these references need Keras 3 on the TensorFlow backend", allow_module_level=True)

import jaxmask as jm  # noqa: E402
from keras.src import backend as keras_backend  # noqa: E402

TOL = {
    "keras3": dict(rtol=1e-6, atol=1e-7),
    "tf_keras": dict(rtol=1e-6, atol=1e-7),
    "tf_keras_bce": dict(rtol=1e-6, atol=3e-6),
    "keras_jax_kernel": dict(rtol=1e-6, atol=1e-7),
    "grad": dict(rtol=1e-4, atol=1e-4),
}

B, T, K = 3, 5, 4
SHAPE = (B, T, K)


def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def probs(rng, shape=SHAPE, scale=2.0):
    z = rng.normal(size=shape) * scale
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def onehot(rng, shape=SHAPE):
    return np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]


def binary(rng, shape=SHAPE):
    return rng.integers(0, 2, shape).astype(np.float64)


def normal(rng, shape=SHAPE, scale=1.0):
    return rng.normal(size=shape) * scale


def unit_rows(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def with_zero_vectors(x):
    x = x.copy()
    x[0, 1] = 0.0
    return x


# (loss name, y_true(rng), y_pred(rng), kwargs). Every loss, every option Keras exposes.
CASES = [
    ("binary_crossentropy", binary, lambda r: r.uniform(0.02, 0.98, SHAPE), {}),
    ("binary_crossentropy", binary, lambda r: r.uniform(0.02, 0.98, SHAPE), {"label_smoothing": 0.1}),
    ("binary_crossentropy", binary, lambda r: normal(r, scale=3.0), {"from_logits": True}),
    ("binary_crossentropy", lambda r: r.uniform(0, 1, SHAPE), lambda r: r.uniform(0.02, 0.98, SHAPE), {"axis": 1}),
    ("binary_focal_crossentropy", binary, lambda r: r.uniform(0.02, 0.98, SHAPE), {}),
    (
        "binary_focal_crossentropy",
        binary,
        lambda r: r.uniform(0.02, 0.98, SHAPE),
        {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5, "label_smoothing": 0.05},
    ),
    ("binary_focal_crossentropy", binary, lambda r: normal(r, scale=3.0), {"from_logits": True, "gamma": 3.0}),
    ("categorical_crossentropy", onehot, probs, {}),
    ("categorical_crossentropy", onehot, lambda r: r.uniform(0.1, 2.0, SHAPE), {}),  # renormalised
    ("categorical_crossentropy", onehot, probs, {"label_smoothing": 0.2}),
    ("categorical_crossentropy", onehot, normal, {"from_logits": True}),
    ("categorical_crossentropy", lambda r: probs(r, (B, K, T)), lambda r: probs(r, (B, K, T)), {"axis": 1}),
    ("categorical_focal_crossentropy", onehot, probs, {}),
    ("categorical_focal_crossentropy", onehot, probs, {"alpha": [0.1, 0.2, 0.3, 0.4], "gamma": 1.0}),
    ("categorical_focal_crossentropy", onehot, normal, {"from_logits": True, "label_smoothing": 0.1}),
    ("categorical_generalized_cross_entropy", lambda r: r.integers(0, K, (B, T)), probs, {"q": 0.5}),
    ("categorical_generalized_cross_entropy", lambda r: r.integers(0, K, (B, T)), probs, {"q": 0.8}),
    ("sparse_categorical_crossentropy", lambda r: r.integers(0, K, (B, T)), probs, {}),
    ("sparse_categorical_crossentropy", lambda r: r.integers(0, K, (B, T, 1)), probs, {}),
    ("sparse_categorical_crossentropy", lambda r: r.integers(0, K, (B, T)), normal, {"from_logits": True}),
    ("sparse_categorical_crossentropy", lambda r: r.integers(0, K, (B, T)), probs, {"ignore_class": 2}),
    (
        "sparse_categorical_crossentropy",
        lambda r: r.integers(-1, K, (B, T)),
        normal,
        {"from_logits": True, "ignore_class": -1},
    ),
    ("kl_divergence", probs, probs, {}),
    ("kl_divergence", onehot, probs, {}),  # zeros clipped to epsilon
    ("poisson", lambda r: r.poisson(2.0, SHAPE), lambda r: r.uniform(0.0, 4.0, SHAPE), {}),
    ("mean_squared_error", normal, normal, {}),
    ("mean_absolute_error", normal, normal, {}),
    ("mean_absolute_percentage_error", normal, normal, {}),
    ("mean_absolute_percentage_error", lambda r: np.where(r.random(SHAPE) < 0.3, 0.0, r.normal(size=SHAPE)), normal, {}),
    ("mean_squared_logarithmic_error", lambda r: r.uniform(-0.5, 3, SHAPE), lambda r: r.uniform(-0.5, 3, SHAPE), {}),
    ("huber", normal, lambda r: normal(r, scale=2.0), {}),
    ("huber", normal, lambda r: normal(r, scale=2.0), {"delta": 0.5}),
    ("log_cosh", normal, lambda r: normal(r, scale=3.0), {}),
    ("hinge", lambda r: r.choice([-1.0, 1.0], SHAPE), normal, {}),
    ("hinge", binary, normal, {}),  # 0/1 labels converted to -1/1
    ("hinge", lambda r: r.choice([-1.0, 0.0, 1.0], SHAPE), normal, {}),  # not all 0/1: unchanged
    ("squared_hinge", lambda r: r.choice([-1.0, 1.0], SHAPE), normal, {}),
    ("squared_hinge", binary, normal, {}),
    ("categorical_hinge", onehot, normal, {}),
    ("cosine_similarity", normal, lambda r: with_zero_vectors(normal(r)), {}),
    ("cosine_similarity", normal, normal, {"axis": 1}),
    ("dice", lambda r: r.uniform(0, 1, SHAPE), lambda r: r.uniform(0, 1, SHAPE), {}),
    ("dice", binary, lambda r: r.uniform(0, 1, SHAPE), {"axis": -1}),
    ("dice", binary, lambda r: r.uniform(0, 1, SHAPE), {"axis": (1, 2)}),
    ("tversky", binary, lambda r: r.uniform(0, 1, SHAPE), {}),
    ("tversky", binary, lambda r: r.uniform(0, 1, SHAPE), {"alpha": 0.3, "beta": 0.7, "axis": -1}),
    ("circle", lambda r: r.integers(0, 3, (8,)), lambda r: unit_rows(r, (8, 4)), {}),
    (
        "circle",
        lambda r: r.integers(0, 3, (8,)),
        lambda r: unit_rows(r, (8, 4)),
        {"remove_diagonal": False, "gamma": 10.0, "margin": 0.25},
    ),
]
IDS = [f"{i:02d}-{name}-{'-'.join(map(str, kw.values())) or 'default'}" for i, (name, _, _, kw) in enumerate(CASES)]

TF_KERAS_NAMES = {
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "sparse_categorical_crossentropy",
    "kl_divergence",
    "poisson",
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "huber",
    "log_cosh",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "cosine_similarity",
}


def make_case(i):
    name, make_true, make_pred, kwargs = CASES[i]
    rng = np.random.default_rng(1000 + i)
    return name, f32(make_true(rng)), f32(make_pred(rng)), kwargs


def assert_close(ours, ref, tol):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, **tol)


def test_every_keras_loss_function_is_covered():
    """Every loss function exported by keras.losses (except ctc) has a jm.losses twin and a case here."""
    keras_fns = {
        n for n in dir(keras.losses) if n[0].islower() and callable(getattr(keras.losses, n)) and n not in {"get", "serialize", "deserialize", "ctc"}
    }
    assert keras_fns <= {name for name, *_ in CASES}
    for n in keras_fns:
        assert callable(getattr(jm.losses, n))


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_values_match_keras3(i):
    name, y_true, y_pred, kwargs = make_case(i)
    ours = getattr(jm.losses, name)(y_true, y_pred, **kwargs)
    ref = getattr(keras.losses, name)(tf.constant(y_true), tf.constant(y_pred), **kwargs)
    assert_close(ours, ref.numpy(), TOL["keras3"])


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if c[0] in TF_KERAS_NAMES], ids=lambda i: IDS[i])
def test_values_match_tf_keras(i):
    tf_keras = pytest.importorskip("tf_keras")
    name, y_true, y_pred, kwargs = make_case(i)
    if name == "sparse_categorical_crossentropy" and "ignore_class" in kwargs and kwargs.get("from_logits"):
        pytest.skip("tf_keras rejects negative class ids even when ignored")
    tol = TOL["tf_keras"]
    if name in ("binary_crossentropy", "binary_focal_crossentropy") and not kwargs.get("from_logits"):
        y_pred = f32(np.clip(y_pred, 0.05, 0.95))
        tol = TOL["tf_keras_bce"]
    ours = getattr(jm.losses, name)(y_true, y_pred, **kwargs)
    ref = getattr(tf_keras.losses, name)(tf.constant(y_true), tf.constant(y_pred), **kwargs)
    assert_close(ours, ref.numpy(), tol)


def test_values_under_jit_equal_eager():
    for i in range(len(CASES)):
        name, y_true, y_pred, kwargs = make_case(i)
        fn = getattr(jm.losses, name)
        jitted = jax.jit(lambda t, p, fn=fn, kwargs=kwargs: fn(t, p, **kwargs))
        np.testing.assert_allclose(jitted(y_true, y_pred), fn(y_true, y_pred, **kwargs), rtol=1e-6, atol=1e-7)


def test_clipping_regime_matches_keras_jax_kernels():
    """Probabilities at 0 and 1 and un-normalised rows: ours equals the Keras 3 JAX-backend kernels."""
    from keras.src.backend.jax import nn as kjax

    rng = np.random.default_rng(7)
    p = f32(np.where(rng.random(SHAPE) < 0.3, rng.choice([0.0, 1.0, 1e-9], SHAPE), rng.uniform(0, 3, SHAPE)))
    yb, yc, ys = f32(binary(rng)), f32(onehot(rng)), rng.integers(0, K, (B, T))
    pb = f32(np.clip(p, 0, 1))
    tol = TOL["keras_jax_kernel"]
    assert_close(jm.losses.binary_crossentropy(yb, pb), np.mean(kjax.binary_crossentropy(yb, pb), axis=-1), tol)
    assert_close(jm.losses.categorical_crossentropy(yc, p), kjax.categorical_crossentropy(yc, p), tol)
    assert_close(jm.losses.sparse_categorical_crossentropy(ys, p), kjax.sparse_categorical_crossentropy(ys, p), tol)


def test_logits_path_matches_tf_backend_keras_logits():
    """y_pred out of a Keras sigmoid/softmax carries `_keras_logits`; with saturated logits the TF backend's
    value differs from the clipped one, and `logits=` reproduces it."""
    rng = np.random.default_rng(3)
    z = f32(normal(rng, scale=25.0))
    tol = TOL["keras3"]
    for name, make_true, activation, jax_activation in [
        ("binary_crossentropy", binary, keras.activations.sigmoid, jax.nn.sigmoid),
        ("binary_focal_crossentropy", binary, keras.activations.sigmoid, jax.nn.sigmoid),
        ("categorical_crossentropy", onehot, keras.activations.softmax, jax.nn.softmax),
        ("sparse_categorical_crossentropy", lambda r: r.integers(0, K, (B, T)), keras.activations.softmax, jax.nn.softmax),
    ]:
        y_true = f32(make_true(rng))
        keras_pred = activation(tf.constant(z))
        assert hasattr(keras_pred, "_keras_logits")
        ref = getattr(keras.losses, name)(tf.constant(y_true), keras_pred).numpy()
        fn = getattr(jm.losses, name)
        ours = fn(y_true, jax_activation(z), logits=z)
        assert_close(ours, ref, tol)
        clipped = np.asarray(fn(y_true, jax_activation(z)))
        assert np.abs(clipped - ref).max() > 1.0, name  # the path matters at these logits


def test_binary_focal_from_logits_uses_logits_like_tf_backend():
    rng = np.random.default_rng(4)
    y_true, z = f32(binary(rng)), f32(normal(rng, scale=30.0))
    ref = keras.losses.binary_focal_crossentropy(tf.constant(y_true), tf.constant(z), from_logits=True, gamma=0.5)
    assert_close(jm.losses.binary_focal_crossentropy(y_true, z, from_logits=True, gamma=0.5), ref.numpy(), TOL["keras3"])


def test_loss_attached_masks_match_keras():
    """sparse_categorical_crossentropy(ignore_class) and circle attach a mask to their result in Keras."""
    rng = np.random.default_rng(5)
    y_true, y_pred = rng.integers(0, K, (B, T)), f32(probs(rng))
    ref = keras.losses.sparse_categorical_crossentropy(tf.constant(y_true), tf.constant(y_pred), ignore_class=1)
    ours = jm.functional.losses._sparse_categorical_crossentropy(y_true, y_pred, ignore_class=1)
    np.testing.assert_array_equal(np.asarray(ours.mask), keras_backend.get_keras_mask(ref).numpy())
    labels, emb = rng.integers(0, 3, (8,)), f32(unit_rows(rng, (8, 4)))
    ref = keras.losses.circle(tf.constant(labels), tf.constant(emb), gamma=5.0)
    ours = jm.functional.losses._circle(labels, emb, gamma=5.0)
    np.testing.assert_array_equal(np.asarray(ours.mask), keras_backend.get_keras_mask(ref).numpy())


def test_circle_with_references_matches_keras():
    rng = np.random.default_rng(6)
    labels, emb = rng.integers(0, 3, (6,)), f32(unit_rows(rng, (6, 4)))
    ref_labels, ref_emb = rng.integers(0, 3, (9,)), f32(unit_rows(rng, (9, 4)))
    kwargs = dict(remove_diagonal=False, gamma=20.0)
    ref = keras.losses.circle(
        tf.constant(labels), tf.constant(emb), ref_labels=tf.constant(ref_labels), ref_embeddings=tf.constant(ref_emb), **kwargs
    )
    ours = jm.losses.circle(labels, emb, ref_labels=ref_labels, ref_embeddings=ref_emb, **kwargs)
    assert_close(ours, ref.numpy(), TOL["keras3"])


def test_get_resolves_every_keras_identifier():
    from keras.src.losses import ALL_OBJECTS_DICT

    for identifier, obj in ALL_OBJECTS_DICT.items():
        if identifier in {"Loss", "LossFunctionWrapper", "CTC", "ctc"}:
            continue
        ours = jm.losses.get(identifier)
        if isinstance(obj, type):
            assert type(ours).__name__ == obj.__name__, identifier
        else:
            assert ours.__name__ == obj.__name__, identifier
    assert jm.losses.get(None) is None
    assert jm.losses.get(jm.losses.huber) is jm.losses.huber
    cce = jm.losses.get({"class_name": "CategoricalCrossentropy", "config": {"from_logits": True}})
    assert cce.fn_kwargs["from_logits"] is True
    with pytest.raises(ValueError, match=r"Unknown loss 'cce'\. `loss` must be one of \[.*'mse'"):
        jm.losses.get("cce")


def test_loss_classes_have_keras_signatures_and_names():
    """Every class takes Keras' parameters in Keras' positional order with Keras' defaults (``dtype`` aside,
    ``semantics`` added keyword-only), and gets Keras' default name."""
    import inspect

    for cls in jm.losses._CLASSES:
        keras_cls = getattr(keras.losses, cls.__name__)
        ref = [(k, p.default) for k, p in inspect.signature(keras_cls.__init__).parameters.items() if k != "dtype"]
        ours = [(k, p.default) for k, p in inspect.signature(cls.__init__).parameters.items() if k != "semantics"]
        assert ours == ref, cls.__name__
        assert cls().name == keras_cls().name, cls.__name__


def test_loss_class_positional_and_invalid_arguments():
    assert jm.losses.BinaryCrossentropy(True, 0.1).fn_kwargs == {"from_logits": True, "label_smoothing": 0.1, "axis": -1}
    dice = jm.losses.Dice("sum", "d", -1)  # Keras' order: reduction, name, axis
    assert (dice.reduction, dice.name, dice.fn_kwargs) == ("sum", "d", {"axis": -1})
    with pytest.raises(TypeError, match=r"multiple values for \['from_logits'\]"):
        jm.losses.BinaryCrossentropy(True, from_logits=False)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['delta'\]"):
        jm.losses.MeanSquaredError(delta=1.0)
    with pytest.raises(ValueError, match=r"`q` must be in the interval \(0, 1\); received q=1\.5"):
        jm.losses.CategoricalGeneralizedCrossEntropy(q=1.5)
    with pytest.raises(ValueError, match=r"`reduction` must be one of .* received 'avg'"):
        jm.losses.Huber(reduction="avg")


def test_logits_shape_is_checked():
    with pytest.raises(ValueError, match=r"`logits` of binary_crossentropy must have the shape of `y_pred` \(3, 5, 4\)"):
        jm.losses.binary_crossentropy(np.zeros(SHAPE), np.full(SHAPE, 0.5), logits=np.zeros((3, 5)))


@pytest.mark.parametrize(
    "name, make_true, make_pred, kwargs",
    [
        ("binary_crossentropy", binary, lambda r: r.uniform(0.1, 0.9, SHAPE), {}),
        ("binary_crossentropy", binary, normal, {"from_logits": True, "label_smoothing": 0.1}),
        ("binary_focal_crossentropy", binary, lambda r: r.uniform(0.1, 0.9, SHAPE), {"apply_class_balancing": True}),
        ("categorical_crossentropy", onehot, lambda r: probs(r, scale=0.5), {}),
        ("categorical_focal_crossentropy", onehot, lambda r: probs(r, scale=0.5), {}),
        ("sparse_categorical_crossentropy", lambda r: r.integers(0, K, (B, T)), normal, {"from_logits": True}),
        ("kl_divergence", probs, lambda r: probs(r, scale=0.5), {}),
        ("huber", normal, lambda r: normal(r, scale=2.0), {}),
        ("log_cosh", normal, normal, {}),
        ("cosine_similarity", normal, normal, {}),
        ("mean_squared_logarithmic_error", lambda r: r.uniform(0.1, 3, SHAPE), lambda r: r.uniform(0.1, 3, SHAPE), {}),
        ("categorical_generalized_cross_entropy", lambda r: r.integers(0, K, (B, T)), lambda r: probs(r, scale=0.5), {"q": 0.5}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_gradients_match_finite_differences(name, make_true, make_pred, kwargs):
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        y_true = jnp.asarray(make_true(rng))
        y_pred = jnp.asarray(make_pred(rng), dtype=jnp.float64)
        fn = getattr(jm.losses, name)
        check_grads(lambda p: fn(y_true, p, **kwargs), (y_pred,), order=1, modes=("rev",), eps=1e-6, **TOL["grad"])


def test_cosine_similarity_zero_vector_has_finite_gradient():
    y_true = jnp.ones((2, 3))
    y_pred = jnp.zeros((2, 3))
    grad = jax.grad(lambda p: jnp.sum(jm.losses.cosine_similarity(y_true, p)))(y_pred)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(np.asarray(jm.losses.cosine_similarity(y_true, y_pred)), 0.0)
