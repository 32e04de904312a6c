"""jm.masked_loss: loss x reduction x weight shape under a mask, against Keras 3 (TF backend) with the mask
attached to y_pred, tf_keras with ``y_pred._keras_mask``, tiny Keras models' ``evaluate``, and NumPy
transcriptions of the tf.keras <= 2.11 and Keras 1.x-2.2 formulas; plus property tests.

Tolerances (float32 outputs; inputs drawn in float64 with NumPy and cast to float32 once). A value passes
when |ours - ref| <= atol + rtol * |ref|.

| comparison                                                    | rtol | atol | why                                   |
|---------------------------------------------------------------|------|------|---------------------------------------|
| Keras 3 / tf_keras Loss.__call__ with a mask                  | 1e-6 | 1e-7 | same op order, float32 rounding        |
| Keras 3 model.evaluate                                        | 1e-6 | 1e-6 | Dense matmul in TF vs NumPy float32    |
| NumPy transcriptions (pre212, legacy) on Keras 3's values     | 1e-6 | 1e-7 | float64 reference of float32 values    |
| property tests (masking = slicing, B == T)                    | 1e-5 | 1e-6 | different summation order              |
| fully masked / zero weights                                   | 0    | 0    | exactly 0, gradients exactly 0         |
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("these references need Keras 3 on the TensorFlow backend", allow_module_level=True)

import jaxmask as jm  # noqa: E402
from jaxmask.functional.reduction import REDUCTIONS, SEMANTICS  # noqa: E402
from keras.src import backend as keras_backend  # noqa: E402

TOL = {
    "keras": dict(rtol=1e-6, atol=1e-7),
    "evaluate": dict(rtol=1e-6, atol=1e-6),
    "numpy": dict(rtol=1e-6, atol=1e-7),
    "property": dict(rtol=1e-5, atol=1e-6),
}
SETTINGS = settings(max_examples=50, derandomize=True, deadline=None)

# post-padding, pre-padding, a hole mid-sequence, a fully masked row, a full row
MASK = np.array(
    [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]], bool
)
B, T = MASK.shape
C = 4


def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def _probs(rng, shape):
    z = rng.normal(size=shape)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# loss name -> (keras 3 class, tf_keras class name or None, y_true(rng), y_pred(rng), kwargs)
LOSSES = {
    "mean_squared_error": ("MeanSquaredError", lambda r: r.normal(size=(B, T, 3)), lambda r: r.normal(size=(B, T, 3)), {}),
    "binary_crossentropy": (
        "BinaryCrossentropy",
        lambda r: r.integers(0, 2, (B, T, 1)),
        lambda r: r.uniform(0.05, 0.95, (B, T, 1)),
        {},
    ),
    "binary_crossentropy_logits": (
        "BinaryCrossentropy",
        lambda r: r.integers(0, 2, (B, T, 1)),
        lambda r: r.normal(size=(B, T, 1)) * 3,
        {"from_logits": True},
    ),
    "categorical_crossentropy": (
        "CategoricalCrossentropy",
        lambda r: np.eye(C)[r.integers(0, C, (B, T))],
        lambda r: _probs(r, (B, T, C)),
        {"label_smoothing": 0.1},
    ),
    "sparse_categorical_crossentropy": (
        "SparseCategoricalCrossentropy",
        lambda r: r.integers(0, C, (B, T)),
        lambda r: _probs(r, (B, T, C)),
        {},
    ),
    "huber": ("Huber", lambda r: r.normal(size=(B, T, 2)), lambda r: r.normal(size=(B, T, 2)) * 2, {"delta": 0.7}),
    "kl_divergence": ("KLDivergence", lambda r: _probs(r, (B, T, C)), lambda r: _probs(r, (B, T, C)), {}),
}
FN_OF = {"binary_crossentropy_logits": "binary_crossentropy"}
WEIGHTS = ("none", "B", "BT", "BT1")


def make(loss_key, seed=0, nan_padding=False):
    cls_name, make_true, make_pred, kwargs = LOSSES[loss_key]
    rng = np.random.default_rng(seed)
    y_true, y_pred = f32(make_true(rng)), f32(make_pred(rng))
    if nan_padding:
        y_pred[~MASK] = np.where(np.arange(np.count_nonzero(~MASK))[:, None] % 2, np.nan, np.inf)
    return cls_name, FN_OF.get(loss_key, loss_key), y_true, y_pred, kwargs


def weights(kind, seed=1):
    """(ours, keras 3's): jaxmask takes [B]; Keras 3 needs [B, 1] for [B, T] losses (it raises on [B])."""
    rng = np.random.default_rng(seed)
    per_sample = f32(rng.uniform(0, 2, B) * (rng.random(B) > 0.2))
    per_step = f32(rng.uniform(0, 2, (B, T)) * (rng.random((B, T)) > 0.2))
    return {
        "none": (None, None),
        "B": (per_sample, per_sample[:, None]),
        "BT": (per_step, per_step),
        "BT1": (per_step[..., None], per_step[..., None]),
    }[kind]


def masked_tensor(y_pred, mask, attr="keras3"):
    t = tf.constant(y_pred)
    if attr == "keras3":
        keras_backend.set_keras_mask(t, tf.constant(mask))
    else:
        t._keras_mask = tf.constant(mask)
    return t


def assert_close(ours, ref, tol):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, **tol)


# ------------------------------------------------------------------------------------ Keras 3 and tf_keras


@pytest.mark.parametrize("reduction", REDUCTIONS["keras3"])
@pytest.mark.parametrize("loss_key", LOSSES)
def test_matches_keras3_with_mask(loss_key, reduction):
    cls_name, fn, y_true, y_pred, kwargs = make(loss_key)
    keras_loss = getattr(keras.losses, cls_name)(reduction=reduction, **kwargs)
    for kind in WEIGHTS:
        ours_w, keras_w = weights(kind)
        ref = keras_loss(y_true, masked_tensor(y_pred, MASK), sample_weight=keras_w).numpy()
        ours = jm.masked_loss(fn, y_true, y_pred, mask=MASK, sample_weight=ours_w, reduction=reduction, **kwargs)
        assert_close(ours, ref, TOL["keras"])


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "none"])
@pytest.mark.parametrize("loss_key", LOSSES)
def test_matches_keras3_without_mask(loss_key, reduction):
    cls_name, fn, y_true, y_pred, kwargs = make(loss_key, seed=2)
    keras_loss = getattr(keras.losses, cls_name)(reduction=reduction, **kwargs)
    for kind in WEIGHTS:
        ours_w, keras_w = weights(kind)
        ref = keras_loss(y_true, y_pred, sample_weight=keras_w).numpy()
        ours = jm.masked_loss(fn, y_true, y_pred, sample_weight=ours_w, reduction=reduction, **kwargs)
        assert_close(ours, ref, TOL["keras"])


def test_mean_with_sample_weight_without_mask_counts_per_step_weights():
    """Documented deviation: without a mask Keras 3 divides by Σ_b w_b for [B, 1] weights (T times less than
    the per-step Σ w); with a mask, and in jaxmask always, the divisor is Σ w·m over steps."""
    _, fn, y_true, y_pred, _ = make("mean_squared_error")
    w = f32(np.arange(1, B + 1))
    keras_loss = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")
    no_mask = keras_loss(y_true, y_pred, sample_weight=w[:, None]).numpy()
    all_valid = keras_loss(y_true, masked_tensor(y_pred, np.ones((B, T), bool)), sample_weight=w[:, None]).numpy()
    ours = jm.masked_loss(fn, y_true, y_pred, sample_weight=w, reduction="mean_with_sample_weight")
    assert_close(ours, all_valid, TOL["keras"])
    np.testing.assert_allclose(no_mask, T * all_valid, rtol=1e-6)


@pytest.mark.parametrize("loss_key", ["mean_squared_error", "binary_crossentropy_logits", "categorical_crossentropy",
                                      "sparse_categorical_crossentropy", "huber", "kl_divergence"])
def test_matches_tf_keras_with_mask(loss_key):
    """tf_keras 2.21 (`apply_valid_mask`): [B] weights are passed as [B] and tf_keras expands them to [B, 1]."""
    tf_keras = pytest.importorskip("tf_keras")
    cls_name, fn, y_true, y_pred, kwargs = make(loss_key, seed=3)
    mask = MASK.copy()
    for reduction in REDUCTIONS["tf_keras"]:
        if reduction == "mean":
            continue
        tf_loss = getattr(tf_keras.losses, cls_name)(reduction=reduction, **kwargs)
        for kind in WEIGHTS:
            ours_w, _ = weights(kind)
            ref = tf_loss(y_true, masked_tensor(y_pred, mask, "tf_keras"), sample_weight=ours_w).numpy()
            ours = jm.masked_loss(
                fn, y_true, y_pred, mask=mask, sample_weight=ours_w, reduction=reduction, semantics="tf_keras", **kwargs
            )
            assert_close(ours, ref, TOL["keras"])


def test_fully_masked_batch_tf_keras_nan_jaxmask_zero():
    tf_keras = pytest.importorskip("tf_keras")
    _, fn, y_true, y_pred, _ = make("mean_squared_error")
    empty = np.zeros((B, T), bool)
    ref = tf_keras.losses.MeanSquaredError()(y_true, masked_tensor(y_pred, empty, "tf_keras")).numpy()
    assert np.isnan(ref)
    assert float(jm.masked_loss(fn, y_true, y_pred, mask=empty, semantics="tf_keras")) == 0.0
    assert keras.losses.MeanSquaredError()(y_true, masked_tensor(y_pred, empty)).numpy() == 0.0


def test_logits_path_with_mask_matches_keras3():
    """y_pred out of a Keras sigmoid carries `_keras_logits` and a mask; saturated logits make the path visible."""
    rng = np.random.default_rng(8)
    z = f32(rng.normal(size=(B, T, 1)) * 25)
    y_true = f32(rng.integers(0, 2, (B, T, 1)))
    y_pred = keras.activations.sigmoid(tf.constant(z))
    keras_backend.set_keras_mask(y_pred, tf.constant(MASK))
    ours_w, keras_w = weights("B")
    ref = keras.losses.BinaryCrossentropy()(y_true, y_pred, sample_weight=keras_w).numpy()
    probs = jax.nn.sigmoid(z)
    ours = jm.masked_loss("bce", y_true, probs, mask=MASK, sample_weight=ours_w, y_pred_logits=z)
    assert_close(ours, ref, TOL["keras"])
    assert abs(float(jm.masked_loss("bce", y_true, probs, mask=MASK, sample_weight=ours_w)) - ref) > 0.5


def test_ignore_class_masks_the_reduction_like_keras3():
    rng = np.random.default_rng(9)
    y_true = rng.integers(0, C, (B, T))
    y_pred = f32(_probs(rng, (B, T, C)))
    for reduction in ("sum_over_batch_size", "mean_with_sample_weight", "sum"):
        ref = keras.losses.SparseCategoricalCrossentropy(ignore_class=2, reduction=reduction)(
            y_true, masked_tensor(y_pred, MASK)
        ).numpy()
        ours = jm.losses.SparseCategoricalCrossentropy(ignore_class=2, reduction=reduction)(y_true, y_pred, mask=MASK)
        assert_close(ours, ref, TOL["keras"])


def test_circle_reduction_counts_positive_losses_like_keras3():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 3, (8,))
    emb = rng.normal(size=(8, 4))
    emb = f32(emb / np.linalg.norm(emb, axis=-1, keepdims=True))
    sample_mask = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    ref = keras.losses.Circle(gamma=2.0, margin=0.6)(labels, masked_tensor(emb, sample_mask)).numpy()
    ours = jm.losses.Circle(gamma=2.0, margin=0.6)(labels, emb, mask=sample_mask)
    assert_close(ours, ref, TOL["keras"])


# -------------------------------------------------------------------------------------- tiny Keras models


def _keras_sequence_model(units, activation, kernel, bias, loss):
    model = keras.Sequential(
        [keras.Input((T, kernel.shape[0])), keras.layers.Masking(0.0), keras.layers.Dense(units, activation=activation)]
    )
    model.layers[-1].set_weights([kernel, bias])
    model.compile(loss=loss)
    return model


def _padded_inputs(rng, feat):
    x = f32(rng.normal(size=(B, T, feat)))
    x[~MASK] = 0.0
    return x


def test_model_evaluate_binary_sigmoid_matches():
    """Masking -> Dense(1, sigmoid), compile(loss="binary_crossentropy"), evaluate with [B, T] weights: Keras
    takes the logits path (y_pred carries `_keras_logits`) and the mask from the Masking layer."""
    rng = np.random.default_rng(11)
    x = _padded_inputs(rng, 3)
    kernel, bias = f32(rng.normal(size=(3, 1)) * 12), f32([0.5])
    y = f32(rng.integers(0, 2, (B, T, 1)))
    sw = f32(rng.uniform(0.5, 2, (B, T)))
    model = _keras_sequence_model(1, "sigmoid", kernel, bias, "binary_crossentropy")
    ref = model.evaluate(x, y, sample_weight=sw, batch_size=B, verbose=0)
    logits = x @ kernel + bias
    ours = jm.masked_loss("binary_crossentropy", y, jax.nn.sigmoid(logits), mask=MASK, sample_weight=sw,
                          y_pred_logits=logits)
    assert_close(ours, ref, TOL["evaluate"])


def test_model_evaluate_sparse_softmax_matches():
    rng = np.random.default_rng(12)
    x = _padded_inputs(rng, 2)
    kernel, bias = f32(rng.normal(size=(2, C)) * 8), f32(rng.normal(size=C))
    y = rng.integers(0, C, (B, T))
    sw = f32(rng.uniform(0.5, 2, B))
    model = _keras_sequence_model(C, "softmax", kernel, bias, "sparse_categorical_crossentropy")
    ref = model.evaluate(x, y, sample_weight=sw[:, None], batch_size=B, verbose=0)
    logits = x @ kernel + bias
    ours = jm.masked_loss("sparse_categorical_crossentropy", y, jax.nn.softmax(logits), mask=MASK, sample_weight=sw,
                          y_pred_logits=logits)
    assert_close(ours, ref, TOL["evaluate"])


# ----------------------------------------------------------------------------------------- class weights


def test_class_weight_one_hot_matches_tf_keras_conversion_and_keras3_loss():
    """Per-step class weights: tf_keras' own `class_weight -> sample_weight` map on one-hot [B, T, C] targets is the
    reference for the weights, Keras 3's loss with those weights the reference for the value."""
    tf_keras = pytest.importorskip("tf_keras")
    from tf_keras.src.engine import data_adapter

    _, fn, y_true, y_pred, kwargs = make("categorical_crossentropy", seed=4)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0, 3: 3.0}
    _, _, cw = data_adapter._make_class_weight_map_fn(class_weight)(tf.zeros((B, T, 1)), tf.constant(y_true))
    sw = f32(weights("B")[0])
    ref = keras.losses.CategoricalCrossentropy(**kwargs)(
        y_true, masked_tensor(y_pred, MASK), sample_weight=sw[:, None] * cw.numpy()
    ).numpy()
    ours = jm.masked_loss(fn, y_true, y_pred, mask=MASK, sample_weight=sw, class_weight=class_weight, **kwargs)
    assert_close(ours, ref, TOL["keras"])
    del tf_keras


@pytest.mark.parametrize("labels", ["sparse", "sparse_trailing_1", "binary"])
def test_class_weight_sparse_and_binary_labels(labels):
    rng = np.random.default_rng(5)
    if labels == "binary":
        y_true, y_pred, fn = f32(rng.integers(0, 2, (B, T, 1))), f32(rng.uniform(0.1, 0.9, (B, T, 1))), "bce"
        ids, class_weight = y_true[..., 0].astype(int), {0: 0.25, 1: 4.0}
    else:
        ids = rng.integers(0, C, (B, T))
        y_true = ids if labels == "sparse" else ids[..., None]
        y_pred, fn = f32(_probs(rng, (B, T, C))), "sparse_categorical_crossentropy"
        class_weight = {1: 3.0, 3: 0.0}  # missing classes weigh 1, as Keras' `class_weight.get(c, 1.0)`
    per_step = f32(np.vectorize(lambda c: class_weight.get(int(c), 1.0))(ids))
    keras_loss = keras.losses.BinaryCrossentropy() if fn == "bce" else keras.losses.SparseCategoricalCrossentropy()
    ref = keras_loss(y_true, masked_tensor(y_pred, MASK), sample_weight=per_step)
    ours = jm.masked_loss(fn, y_true, y_pred, mask=MASK, class_weight=class_weight)
    assert_close(ours, ref.numpy(), TOL["keras"])


# ------------------------------------------------------------------------- older profiles: NumPy references


def keras3_values(loss_key, y_true, y_pred, kwargs):
    """Per-step values from Keras 3 itself (float32), the input of the NumPy reductions below."""
    fn = FN_OF.get(loss_key, loss_key)
    return np.asarray(getattr(keras.losses, fn)(tf.constant(y_true), tf.constant(y_pred), **kwargs), np.float64)


def tf_keras_pre212_reference(values, mask, sample_weight, reduction):
    """tf.keras <= 2.11: `compile_utils.LossesContainer` merges the mask into the weights
    (`losses_utils.apply_mask`: sw * mask, no rescaling), then `losses_utils.compute_weighted_loss`:
    `weighted = losses * sw` ([B] weights expanded to [B, 1] by `squeeze_or_expand_dimensions`), and
    SUM_OVER_BATCH_SIZE = `reduce_sum(weighted) / size(losses)` (divide_no_nan); SUM = reduce_sum; NONE = weighted.
    """
    sw = np.ones_like(values) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if sw.ndim == values.ndim - 1:
        sw = sw[:, None]
    elif sw.ndim == values.ndim + 1:
        sw = sw[..., 0]
    sw = sw * mask
    weighted = values * sw
    if reduction == "none":
        return weighted
    total = weighted.sum()
    return total if reduction == "sum" else total / values.size


def keras_legacy_reference(values, mask, weights):
    """Keras 2.2.4 keras/engine/training_utils.py `weighted_masked_objective` (the seed's Keras), line by line:

        score_array = fn(y_true, y_pred)
        if mask is not None:
            mask = K.cast(mask, K.floatx())
            score_array *= mask
            score_array /= K.mean(mask)
        if weights is not None:
            ndim = K.ndim(score_array); weight_ndim = K.ndim(weights)
            score_array = K.mean(score_array, axis=list(range(weight_ndim, ndim)))
            score_array *= weights
            score_array /= K.mean(K.cast(K.not_equal(weights, 0), K.floatx()))
        return K.mean(score_array)

    Keras 2.2 always passes weights: ones [B] without sample_weight, [B, T] with sample_weight_mode="temporal".
    """
    score = values.copy()
    if mask is not None:
        mask = mask.astype(np.float64)
        score = score * mask
        score = score / np.mean(mask)
    w = np.ones(values.shape[0]) if weights is None else np.asarray(weights, np.float64)
    score = np.mean(score, axis=tuple(range(w.ndim, score.ndim)))
    score = score * w
    score = score / np.mean((w != 0).astype(np.float64))
    return np.mean(score)


@pytest.mark.parametrize("reduction", REDUCTIONS["tf_keras_pre212"])
@pytest.mark.parametrize("loss_key", ["mean_squared_error", "categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_tf_keras_pre212_matches_numpy_transcription(loss_key, reduction):
    _, fn, y_true, y_pred, kwargs = make(loss_key, seed=6)
    values = keras3_values(loss_key, y_true, y_pred, kwargs)
    for kind in WEIGHTS:
        ours_w, _ = weights(kind)
        ref = tf_keras_pre212_reference(values, MASK, ours_w, "sum_over_batch_size" if reduction == "mean" else reduction)
        ours = jm.masked_loss(fn, y_true, y_pred, mask=MASK, sample_weight=ours_w, reduction=reduction,
                              semantics="tf_keras_pre212", **kwargs)
        assert_close(ours, ref.astype(np.float32), TOL["numpy"])


@pytest.mark.parametrize("loss_key", ["mean_squared_error", "binary_crossentropy", "sparse_categorical_crossentropy"])
def test_keras_legacy_matches_numpy_transcription(loss_key):
    _, fn, y_true, y_pred, kwargs = make(loss_key, seed=7)
    values = keras3_values(loss_key, y_true, y_pred, kwargs)
    mask = MASK[:4]  # Keras 2.2 divides by mean(mask): NaN for an all-masked batch, so no empty batch here
    values, y_true, y_pred = values[:4], y_true[:4], y_pred[:4]
    for kind in ("none", "B", "BT"):
        ours_w, _ = weights(kind)
        ours_w = None if ours_w is None else ours_w[:4]
        ref = keras_legacy_reference(values, mask, ours_w)
        ours = jm.masked_loss(fn, y_true, y_pred, mask=mask, sample_weight=ours_w, semantics="keras_legacy", **kwargs)
        assert_close(ours, np.float32(ref), TOL["numpy"])
    ref = keras_legacy_reference(values, None, None)
    assert_close(jm.masked_loss(fn, y_true, y_pred, semantics="keras_legacy", **kwargs), np.float32(ref), TOL["numpy"])


def test_keras_legacy_class_weight_is_temporal():
    _, fn, y_true, y_pred, kwargs = make("sparse_categorical_crossentropy", seed=8)
    class_weight = {0: 0.0, 1: 2.0, 2: 0.5, 3: 1.0}
    per_step = np.vectorize(class_weight.get)(y_true).astype(np.float64)
    values = keras3_values("sparse_categorical_crossentropy", y_true, y_pred, kwargs)
    ref = keras_legacy_reference(values[:4], MASK[:4], per_step[:4])
    ours = jm.masked_loss(fn, y_true[:4], y_pred[:4], mask=MASK[:4], class_weight=class_weight, semantics="keras_legacy")
    assert_close(ours, np.float32(ref), TOL["numpy"])


def test_semantics_differ_as_documented():
    """One batch, four answers: the table in DESIGN.md, computed from Keras 3's per-step values."""
    _, fn, y_true, y_pred, kwargs = make("mean_squared_error", seed=9)
    values = keras3_values("mean_squared_error", y_true, y_pred, kwargs)
    w = weights("B")[0].astype(np.float64)
    total = (values * w[:, None] * MASK).sum()
    expected = {
        "keras3": total / MASK.sum(),
        "tf_keras": total / MASK.sum(),
        "tf_keras_pre212": total / MASK.size,
        "keras_legacy": total / MASK.sum() * B / np.count_nonzero(w),
    }
    for semantics, ref in expected.items():
        ours = jm.masked_loss(fn, y_true, y_pred, mask=MASK, sample_weight=weights("B")[0], semantics=semantics)
        assert_close(ours, np.float32(ref), TOL["numpy"])


# ------------------------------------------------------------------------------------------ never NaN


def _profiles():
    return [(s, r) for s in SEMANTICS for r in REDUCTIONS[s]]


@pytest.mark.parametrize("semantics, reduction", _profiles())
def test_nan_and_inf_padding_never_leak(semantics, reduction):
    for loss_key in ("mean_squared_error", "sparse_categorical_crossentropy", "binary_crossentropy_logits"):
        _, fn, y_true, clean, kwargs = make(loss_key)
        _, _, _, dirty, _ = make(loss_key, nan_padding=True)
        w = weights("BT")[0]

        def loss(p, fn=fn, y_true=y_true, kwargs=kwargs):
            out = jm.masked_loss(fn, y_true, p, mask=MASK, sample_weight=w, reduction=reduction, semantics=semantics,
                                 **kwargs)
            return jnp.sum(out)

        np.testing.assert_array_equal(np.asarray(loss(dirty)), np.asarray(loss(clean)))
        grad = np.asarray(jax.grad(loss)(dirty))
        assert np.isfinite(grad).all()
        np.testing.assert_array_equal(grad[~MASK], 0.0)


# --------------------------------------------------------------------------------------- property tests
# Each (loss, profile, reduction) is jitted once and cached: jit compiles a shape in ~50 ms where eager
# dispatch compiles every primitive separately (~0.5 s), which is what keeps these under a few seconds.

PER_STEP_LOSSES = [
    ("mean_squared_error", "dense", ()),
    ("mean_absolute_error", "dense", ()),
    ("binary_crossentropy", "binary", ()),
    ("binary_focal_crossentropy", "binary", (("apply_class_balancing", True),)),
    ("categorical_crossentropy", "onehot", ()),
    ("categorical_crossentropy", "onehot", (("from_logits", True),)),
    ("categorical_focal_crossentropy", "onehot", ()),
    ("sparse_categorical_crossentropy", "sparse", ()),
    ("categorical_generalized_cross_entropy", "sparse", (("q", 0.7),)),
    ("kl_divergence", "prob", ()),
    ("poisson", "positive", ()),
    ("huber", "dense", ()),
    ("log_cosh", "dense", ()),
    ("cosine_similarity", "dense", ()),
    ("categorical_hinge", "onehot", ()),
    ("mean_squared_logarithmic_error", "positive", ()),
    ("mean_absolute_percentage_error", "dense", ()),
]


@functools.lru_cache(maxsize=None)
def compiled(name, kwargs, semantics="keras3", reduction="sum_over_batch_size", grad=False):
    """jit(masked_loss) for one static configuration; with ``grad``, value and gradient w.r.t. y_pred."""

    def loss(y_true, y_pred, mask, w):
        out = jm.masked_loss(name, y_true, y_pred, mask=mask, sample_weight=w, reduction=reduction,
                             semantics=semantics, **dict(kwargs))
        return out if reduction == "none" and not grad else jnp.sum(out)

    return jax.jit(jax.value_and_grad(loss, argnums=1) if grad else loss)


def draw_batch(seed, b, t, k, labels, zero_padding=False):
    rng = np.random.default_rng(seed)
    kk = max(k, 2)
    if labels == "dense":
        y_true, y_pred = rng.normal(size=(b, t, k)), rng.normal(size=(b, t, k))
    elif labels == "positive":
        y_true, y_pred = rng.uniform(0, 3, (b, t, k)), rng.uniform(0.1, 3, (b, t, k))
    elif labels == "binary":
        y_true, y_pred = rng.integers(0, 2, (b, t, k)), rng.uniform(0.05, 0.95, (b, t, k))
    elif labels == "onehot":
        y_true, y_pred = np.eye(kk)[rng.integers(0, kk, (b, t))], _probs(rng, (b, t, kk))
    elif labels == "prob":
        y_true, y_pred = _probs(rng, (b, t, kk)), _probs(rng, (b, t, kk))
    else:
        y_true, y_pred = rng.integers(0, kk, (b, t)).astype(np.int32), _probs(rng, (b, t, kk))
    y_pred = f32(y_pred)
    if zero_padding:
        y_pred[...] = 0.0  # padding values with singular gradients (log 0, p ** q at 0, zero vectors)
    return (y_true if labels == "sparse" else f32(y_true)), y_pred


shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 2))


@st.composite
def masked_batches(draw):
    b, t, k = draw(shapes)
    mask = np.array(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t)), bool).reshape(b, t)
    return b, t, k, mask, draw(st.integers(0, 2**16))


@SETTINGS
@given(masked_batches(), st.sampled_from(PER_STEP_LOSSES), st.sampled_from(["keras3", "tf_keras"]), st.booleans())
def test_masking_equals_slicing(batch, loss_case, semantics, weighted):
    b, t, k, mask, seed = batch
    name, labels, kwargs = loss_case
    y_true, y_pred = draw_batch(seed, b, t, k, labels)
    w = f32(np.random.default_rng(seed + 1).uniform(0, 2, (b, t))) if weighted else None
    w_valid = None if w is None else w[mask]
    masked = compiled(name, kwargs, semantics)(y_true, y_pred, mask, w)
    sliced = compiled(name, kwargs, semantics)(y_true[mask], y_pred[mask], None, w_valid)
    np.testing.assert_allclose(masked, sliced, **TOL["property"])
    s_masked = compiled(name, kwargs, "tf_keras_pre212", "sum")(y_true, y_pred, mask, w)
    s_sliced = compiled(name, kwargs, "tf_keras_pre212", "sum")(y_true[mask], y_pred[mask], None, w_valid)
    np.testing.assert_allclose(s_masked, s_sliced, **TOL["property"])


@SETTINGS
@given(shapes, st.integers(0, 2**16), st.sampled_from(PER_STEP_LOSSES), st.sampled_from(_profiles()),
       st.sampled_from(["none", "B", "BT"]), st.booleans())
def test_fully_masked_batch_is_zero_with_zero_gradients(shape, seed, loss_case, profile, weight_kind, zero_padding):
    b, t, k = shape
    name, labels, kwargs = loss_case
    y_true, y_pred = draw_batch(seed, b, t, k, labels, zero_padding)
    w = {"none": None, "B": np.ones(b, np.float32), "BT": np.ones((b, t), np.float32)}[weight_kind]
    value, grad = compiled(name, kwargs, *profile, grad=True)(y_true, y_pred, np.zeros((b, t), bool), w)
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@SETTINGS
@given(masked_batches(), st.sampled_from(PER_STEP_LOSSES), st.sampled_from(_profiles()))
def test_zero_weights_give_zero_and_zero_gradients(batch, loss_case, profile):
    b, t, k, mask, seed = batch
    name, labels, kwargs = loss_case
    y_true, y_pred = draw_batch(seed, b, t, k, labels)
    value, grad = compiled(name, kwargs, *profile, grad=True)(y_true, y_pred, mask, np.zeros(b, np.float32))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@SETTINGS
@given(masked_batches(), st.sampled_from(PER_STEP_LOSSES))
def test_zero_weighted_samples_equal_dropping_them(batch, loss_case):
    b, t, k, mask, seed = batch
    name, labels, kwargs = loss_case
    y_true, y_pred = draw_batch(seed, b, t, k, labels)
    keep = np.random.default_rng(seed).random(b) < 0.6
    ours = compiled(name, kwargs, "keras3", "sum")(y_true, y_pred, mask, keep.astype(np.float32))
    dropped = compiled(name, kwargs, "keras3", "sum")(y_true[keep], y_pred[keep], mask[keep], None)
    np.testing.assert_allclose(ours, dropped, **TOL["property"])


@SETTINGS
@given(st.integers(1, 4), st.integers(0, 2**16), st.sampled_from(PER_STEP_LOSSES), st.sampled_from(SEMANTICS))
def test_b_equals_t_weights_are_per_sample(n, seed, loss_case, semantics):
    """With B == T a [B] weight could be broadcast along time (Keras 3 does, silently); jaxmask never does."""
    name, labels, kwargs = loss_case
    rng = np.random.default_rng(seed)
    y_true, y_pred = draw_batch(seed, n, n, 2, labels)
    mask = rng.random((n, n)) < 0.7
    w = f32(rng.uniform(0.5, 2, n))
    values = np.asarray(compiled(name, kwargs, reduction="none")(y_true, y_pred, None, None), np.float64)
    per_sample = np.broadcast_to(w[:, None], (n, n))
    ours = compiled(name, kwargs, semantics)(y_true, y_pred, mask, w)
    if semantics != "keras_legacy":  # legacy counts [B] and [B, T] weights differently, by design
        explicit = compiled(name, kwargs, semantics)(y_true, y_pred, mask, per_sample)
        np.testing.assert_allclose(ours, explicit, **TOL["property"])
    total = (values * per_sample * mask).sum()
    ref = {
        "keras3": total / mask.sum() if mask.any() else 0.0,
        "tf_keras": total / mask.sum() if mask.any() else 0.0,
        "tf_keras_pre212": total / mask.size,
        "keras_legacy": total / mask.sum() * n / np.count_nonzero(w) if mask.any() else 0.0,
    }[semantics]
    np.testing.assert_allclose(ours, ref, **TOL["property"])


# ------------------------------------------------------------------------------------------------- jit


def test_jit_compiles_once_per_shape():
    traces = []

    def counted(y_true, y_pred, mask, w):
        traces.append(y_pred.shape)
        return jm.masked_loss("categorical_crossentropy", y_true, y_pred, mask=mask, sample_weight=w,
                              class_weight={0: 2.0}, y_pred_logits=y_pred * 2, label_smoothing=0.1)

    jitted = jax.jit(counted)
    for seed in range(3):
        _, _, y_true, y_pred, _ = make("categorical_crossentropy", seed=seed)
        jitted(y_true, y_pred, MASK, weights("B", seed)[0])
    assert len(traces) == 1
    _, _, y_true, y_pred, _ = make("categorical_crossentropy")
    jitted(y_true[:3], y_pred[:3], MASK[:3], weights("B")[0][:3])
    assert len(traces) == 2


def test_jit_with_partial_and_static_name():
    _, _, y_true, y_pred, _ = make("sparse_categorical_crossentropy")
    fn = jax.jit(functools.partial(jm.masked_loss, "sparse_categorical_crossentropy", semantics="tf_keras"))
    np.testing.assert_allclose(
        fn(y_true, y_pred, mask=MASK), jm.masked_loss("sparse_categorical_crossentropy", y_true, y_pred, mask=MASK),
        rtol=1e-6,
    )


def test_loss_objects_equal_masked_loss():
    _, fn, y_true, y_pred, kwargs = make("huber")
    w = weights("BT")[0]
    obj = jm.losses.Huber(reduction="sum", semantics="tf_keras_pre212", **kwargs)
    ref = jm.masked_loss(fn, y_true, y_pred, mask=MASK, sample_weight=w, reduction="sum",
                         semantics="tf_keras_pre212", **kwargs)
    assert float(obj(y_true, y_pred, sample_weight=w, mask=MASK)) == float(ref)
    assert float(jm.masked_loss(obj, y_true, y_pred, mask=MASK, sample_weight=w, reduction="sum",
                                semantics="tf_keras_pre212")) == float(ref)


def test_custom_callable_and_loss_subclass():
    _, _, y_true, y_pred, _ = make("mean_squared_error")

    class SquaredSum(jm.losses.Loss):
        def call(self, y_true, y_pred):
            return jnp.sum((y_true - y_pred) ** 2, axis=-1)

    expected = float(jm.masked_loss("mse", y_true, y_pred, mask=MASK)) * y_true.shape[-1]
    np.testing.assert_allclose(float(SquaredSum()(y_true, y_pred, mask=MASK)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        float(jm.masked_loss(lambda t, p: jnp.sum((t - p) ** 2, -1), y_true, y_pred, mask=MASK)), expected, rtol=1e-6
    )


# ------------------------------------------------------------------------------------------- validation


def test_errors_name_the_argument_and_the_fix():
    _, _, y_true, y_pred, _ = make("mean_squared_error")
    _, _, labels, probs, _ = make("sparse_categorical_crossentropy")
    cases = [
        (ValueError, r"`y_true` of mean_squared_error must have the shape of `y_pred` \(5, 6, 1\); received \(5, 6\)\. "
                     r"Add the trailing axis: y_true\[\.\.\., None\]",
         lambda: jm.masked_loss("mse", y_true[..., 0], y_pred[..., :1])),
        (ValueError, r"`y_true` of sparse_categorical_crossentropy must hold class ids of shape \(5, 6\)",
         lambda: jm.masked_loss("sparse_categorical_crossentropy", labels[:, :4], probs)),
        (ValueError, r"`mask` must have the shape of the per-step loss values \(5, 6\) .*; received \(5, 5\)",
         lambda: jm.masked_loss("mse", y_true, y_pred, mask=MASK[:, :5])),
        (TypeError, r"`mask` must be bool \(True = valid step\) or 0/1 numbers; received dtype <U1",
         lambda: jm.masked_loss("mse", y_true, y_pred, mask=np.full((B, T), "x"))),
        (ValueError, r"`sample_weight` must be per sample \[B\] or per step \[B, T\].*received \(6,\)\. "
                     r"Check that the batch axis comes first",
         lambda: jm.masked_loss("mse", y_true, y_pred, sample_weight=np.ones(T))),
        (ValueError, r"Unknown loss 'mean_square_error'\. `loss` must be one of \[.*'mean_squared_error'",
         lambda: jm.masked_loss("mean_square_error", y_true, y_pred)),
        (ValueError, r"`reduction` must be one of \['sum_over_batch_size', 'mean', 'sum', 'mean_with_sample_weight', "
                     r"'none'\] with semantics='keras3'; received 'average'",
         lambda: jm.masked_loss("mse", y_true, y_pred, reduction="average")),
        (ValueError, r"'tf_keras' has no 'mean_with_sample_weight' reduction; use semantics='keras3'",
         lambda: jm.masked_loss("mse", y_true, y_pred, reduction="mean_with_sample_weight", semantics="tf_keras")),
        (ValueError, r"`semantics` must be one of \['keras3', 'tf_keras', 'tf_keras_pre212', 'keras_legacy'\]; "
                     r"received 'keras2'",
         lambda: jm.masked_loss("mse", y_true, y_pred, semantics="keras2")),
        (ValueError, r"`class_weight` keys must be class ids in \[0, 4\) \(y_pred has 4 classes\); received keys "
                     r"\[0, 4\], of which \[4\] are outside",
         lambda: jm.masked_loss("sparse_categorical_crossentropy", labels, probs, class_weight={0: 1.0, 4: 2.0})),
        (TypeError, r"`class_weight` must be a dict \{class id: weight\}; received list",
         lambda: jm.masked_loss("sparse_categorical_crossentropy", labels, probs, class_weight=[1.0, 2.0])),
        (ValueError, r"`y_pred_logits` is only used by \['binary_crossentropy', .*\] \(Keras' TF-backend logits path\); received it with loss "
                     r"'mean_squared_error'",
         lambda: jm.masked_loss("mse", y_true, y_pred, y_pred_logits=y_pred)),
        (ValueError, r"`y_pred_logits` must have the shape of `y_pred` \(5, 6, 4\); received \(5, 6\)",
         lambda: jm.masked_loss("sparse_categorical_crossentropy", labels, probs, y_pred_logits=probs[..., 0])),
        (ValueError, r"Loss 'dice' reduces to a scalar \(axis=None\), so `mask`.*Pass axis=-1",
         lambda: jm.masked_loss("dice", y_true, y_pred, mask=MASK)),
        (ValueError, r"`circle` needs `y_true` of shape \[B\] and `y_pred` of shape \[B, D\]",
         lambda: jm.masked_loss("circle", labels, probs)),
        (TypeError, r"`loss` must be a loss name, a jm.losses.Loss or a callable",
         lambda: jm.masked_loss(3, y_true, y_pred)),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


def test_rank_one_labels_expand_like_keras():
    """[B] labels with [B, 1] predictions: Keras expands the labels; so does jaxmask."""
    rng = np.random.default_rng(13)
    y_true, y_pred = f32(rng.integers(0, 2, 7)), f32(rng.uniform(0.1, 0.9, (7, 1)))
    ref = keras.losses.BinaryCrossentropy()(y_true, y_pred).numpy()
    assert_close(jm.masked_loss("bce", y_true, y_pred), ref, TOL["keras"])
