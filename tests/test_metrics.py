"""jm.metrics against Keras itself.

References: ``model.evaluate`` of tiny masked Keras 3 and tf_keras models (Input -> Masking -> Dense
with fixed weights), compiled with the metric names users write; standalone ``keras.metrics`` objects
for settings and edge cases (ties, thresholds hit exactly, logits); and Keras' own ``get_metric`` for
the "accuracy" resolution. Data: B == T == 8 with post- and pre-padding, holes mid-sequence, a fully
masked row and a one-step row; Keras evaluates it in batches of 3 (so its accumulation across batches
is exercised too).

Keras 3 ignores the mask in Precision/Recall/AUC (it counts padded steps; tf_keras does not): those
Keras 3 numbers are compared with ``mask=None``, the tf_keras ones with the mask.
"""

import dataclasses

import jax
import numpy as np
import pytest

import jaxmask as jm
from jaxmask import metrics as M

# One table of tolerances (relative, absolute). Keras accumulates float32 sums per batch of 3 in a
# different order, and AUC sums 200 buckets with a different cumsum.
TOL = {
    "mean": (1e-6, 1e-7),
    "confusion": (1e-6, 1e-7),
    "auc": (1e-5, 1e-6),
    "internal": (1e-6, 1e-7),  # jit vs eager, merge vs one update: same math, other summation order
}

B, T, F = 8, 8, 3
C = 6
CONFUSION = (M.Precision, M.Recall, M.AUC)


def _tol(metric):
    if isinstance(metric, M.AUC):
        return TOL["auc"]
    return TOL["confusion"] if isinstance(metric, CONFUSION) else TOL["mean"]


def _close(actual, expected, tol, what):
    rtol, atol = tol
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol, err_msg=what)


def _mask() -> np.ndarray:
    m = np.ones((B, T), bool)
    m[0, 5:] = False  # post-padding
    m[1, :3] = False  # pre-padding
    m[2, 3:5] = False  # hole mid-sequence
    m[3, :] = False  # fully masked row
    m[5, 2] = False  # hole ...
    m[5, 6:] = False  # ... and post-padding
    m[6, 1:] = False  # a single valid step
    return m


def _data(seed=0):
    rng = np.random.default_rng(seed)
    mask = _mask()
    x = rng.normal(size=(B, T, F)).astype("float32")
    x[~mask] = 0.0
    return x, mask


def _run(metric, y_true, y_pred, **kw):
    return metric.result(metric.update(metric.init(), y_true, y_pred, **kw))


# --------------------------------------------------------------------------------------------------
# Keras evaluate references
# --------------------------------------------------------------------------------------------------

# (key, Keras compile identifier maker given the keras module, jm metric maker given (y_true, y_pred)).
# A string identifier is resolved by both sides from its name; keys are the names evaluate reports.


def _by_name(key):
    return key, (lambda keras: key), (lambda yt, yp: M.resolve(key, yt.shape, yp.shape))


def _by_class(key, cls):
    """tf_keras does not know the names "auc", "precision", "recall" (its compile fails with
    "'str' object is not callable"), so both Keras sides get the class; jaxmask resolves the name."""

    def keras_metric(keras):
        return getattr(keras.metrics, cls)(name=key)

    return key, keras_metric, (lambda yt, yp: M.resolve(key, yt.shape, yp.shape))


CASES = {
    "binary": dict(
        units=1,
        activation="sigmoid",
        loss="binary_crossentropy",
        metrics=[
            _by_name("accuracy"),
            _by_name("acc"),
            _by_name("binary_accuracy"),
            (
                "binary_accuracy_07",
                lambda keras: keras.metrics.BinaryAccuracy(threshold=0.7, name="binary_accuracy_07"),
                lambda yt, yp: M.BinaryAccuracy(threshold=0.7, name="binary_accuracy_07"),
            ),
            _by_name("mse"),
            _by_name("mae"),
            _by_class("auc", "AUC"),
            (
                "auc_pr",
                lambda keras: keras.metrics.AUC(curve="PR", name="auc_pr"),
                lambda yt, yp: M.AUC(curve="PR", name="auc_pr"),
            ),
            _by_class("precision", "Precision"),
            _by_class("recall", "Recall"),
        ],
    ),
    "categorical": dict(
        units=C,
        activation="softmax",
        loss="categorical_crossentropy",
        metrics=[
            _by_name("accuracy"),
            _by_name("categorical_accuracy"),
            _by_name("top_k_categorical_accuracy"),
            (
                "top2",
                lambda keras: keras.metrics.TopKCategoricalAccuracy(k=2, name="top2"),
                lambda yt, yp: M.TopKCategoricalAccuracy(k=2, name="top2"),
            ),
            _by_name("mean_squared_error"),
            _by_name("mean_absolute_error"),
            _by_class("auc", "AUC"),
        ],
    ),
    "sparse": dict(
        units=C,
        activation="softmax",
        loss="sparse_categorical_crossentropy",
        metrics=[
            _by_name("accuracy"),
            _by_name("sparse_categorical_accuracy"),
            _by_name("sparse_top_k_categorical_accuracy"),
            (
                "sparse_top2",
                lambda keras: keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="sparse_top2"),
                lambda yt, yp: M.SparseTopKCategoricalAccuracy(k=2, name="sparse_top2"),
            ),
        ],
    ),
}


def _labels(case, rng):
    if case == "binary":
        return (rng.random((B, T, 1)) > 0.5).astype("float32")
    ids = rng.integers(0, C, size=(B, T))
    if case == "sparse":
        return ids.astype("float32")
    return np.eye(C, dtype="float32")[ids]


def _keras_run(keras, case, sample_weights):
    """Build, compile and evaluate one case; returns (x, mask, y_true, y_pred, [results per weights])."""
    spec = CASES[case]
    rng = np.random.default_rng(1)
    x, mask = _data()
    y_true = _labels(case, rng)
    inp = keras.Input((T, F))
    dense = keras.layers.Dense(spec["units"], activation=spec["activation"])
    model = keras.Model(inp, dense(keras.layers.Masking(0.0)(inp)))
    kernel = rng.normal(size=(F, spec["units"])).astype("float32")
    dense.set_weights([kernel, rng.normal(0.2, 0.5, size=(spec["units"],)).astype("float32")])
    model.compile(
        loss=spec["loss"],
        metrics=[make(keras) for _, make, _ in spec["metrics"]],
        weighted_metrics=[make(keras) for _, make, _ in spec["metrics"]],
    )
    y_pred = model.predict(x, batch_size=B, verbose=0)
    results = [
        model.evaluate(x, y_true, sample_weight=sw, batch_size=3, verbose=0, return_dict=True) for sw in sample_weights
    ]
    return x, mask, y_true, y_pred, results


def _weights():
    rng = np.random.default_rng(2)
    temporal = rng.uniform(0.1, 2.0, size=(B, T)).astype("float32")
    temporal[0, 1] = 0.0  # a zero weight at a valid step
    per_sample = rng.uniform(0.1, 2.0, size=(B,)).astype("float32")
    return temporal, per_sample


@pytest.fixture(scope="module")
def keras3():
    keras = pytest.importorskip("keras")
    temporal, per_sample = _weights()
    # Keras 3 rejects [B] weights for temporal outputs; [B, 1] is what it takes (and jm's [B] means).
    return {case: _keras_run(keras, case, [temporal, per_sample[:, None]]) for case in CASES}


@pytest.fixture(scope="module")
def tf_keras():
    tfk = pytest.importorskip("tf_keras")
    temporal, per_sample = _weights()
    return {case: _keras_run(tfk, case, [temporal, per_sample]) for case in CASES}


def _compare(run, case, mask_confusion: bool):
    x, mask, y_true, y_pred, results = run
    temporal, per_sample = _weights()
    failures = []
    for key, _, make in CASES[case]["metrics"]:
        metric = make(y_true, y_pred)
        assert metric.name == key
        use_mask = mask if (mask_confusion or not isinstance(metric, CONFUSION)) else None
        checks = [(key, None, results[0])]
        checks += [(f"weighted_{key}", sw, res) for sw, res in zip((temporal, per_sample), results)]
        for reported, sw, res in checks:
            ours = float(_run(metric, y_true, y_pred, mask=use_mask, sample_weight=sw))
            rtol, atol = _tol(metric)
            if not abs(ours - res[reported]) <= atol + rtol * abs(res[reported]):
                shape = None if sw is None else sw.shape
                failures.append(f"{reported} (sample_weight {shape}): jaxmask {ours!r} vs keras {res[reported]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.keras
@pytest.mark.parametrize("case", list(CASES))
def test_matches_keras3_evaluate(keras3, case):
    _compare(keras3[case], case, mask_confusion=False)


@pytest.mark.keras
@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_matches_tf_keras_evaluate(tf_keras, case):
    _compare(tf_keras[case], case, mask_confusion=True)


@pytest.mark.keras
def test_masked_confusion_metrics_match_keras3_given_the_mask_as_weight(keras3):
    """The Keras 3 reference for masked Precision/Recall/AUC: the mask passed as sample_weight."""
    keras = pytest.importorskip("keras")
    x, mask, y_true, y_pred, _ = keras3["binary"]
    temporal, per_sample = _weights()
    for sw in (None, temporal, per_sample):
        w = mask.astype("float32") * (1.0 if sw is None else (sw if sw.ndim == 2 else sw[:, None]))
        for ours, ref in [
            (M.AUC(), keras.metrics.AUC()),
            (M.AUC(curve="PR"), keras.metrics.AUC(curve="PR")),
            (M.Precision(), keras.metrics.Precision()),
            (M.Recall(), keras.metrics.Recall()),
        ]:
            ref.update_state(y_true, y_pred, sample_weight=w)
            got = _run(ours, y_true, y_pred, mask=mask, sample_weight=sw)
            what = f"{ours.name} with sample_weight={None if sw is None else sw.shape}"
            _close(got, float(ref.result()), _tol(ours), what)


@pytest.mark.keras
def test_keras3_counts_padded_steps_in_auc(keras3):
    """Pin the Keras 3 quirk the module docstring documents: its AUC differs from the masked one."""
    x, mask, y_true, y_pred, results = keras3["binary"]
    masked = float(_run(M.AUC(), y_true, y_pred, mask=mask))
    unmasked = float(_run(M.AUC(), y_true, y_pred))
    assert abs(masked - unmasked) > 1e-3
    _close(results[0]["auc"], unmasked, TOL["auc"], "keras 3 auc")


@pytest.mark.keras
def test_batches_of_different_length_are_pooled_per_step_not_per_sample():
    """Documented deviation: Keras' Mean pools per-sample means over time, so a batch padded to a
    different T is weighted by 1/T; jaxmask pools steps. Same T (any single padded array): equal."""
    keras = pytest.importorskip("keras")
    batches = [(np.ones((1, 2, 1)), np.ones((1, 2, 1))), (np.ones((1, 4, 1)), np.zeros((1, 4, 1)))]
    ref, ours = keras.metrics.BinaryAccuracy(), M.BinaryAccuracy()
    state = ours.init()
    for y_true, y_pred in batches:
        ref.update_state(y_true, y_pred, sample_weight=np.ones(y_true.shape[:2]))
        state = ours.update(state, y_true, y_pred, mask=np.ones(y_true.shape[:2], bool))
    _close(float(ref.result()), 0.5, TOL["mean"], "keras: one vote per sequence")
    _close(ours.result(state), 2 / 6, TOL["mean"], "jaxmask: one vote per valid step")


# --------------------------------------------------------------------------------------------------
# Standalone Keras metric objects: settings and edge cases
# --------------------------------------------------------------------------------------------------


def _keras_value(ref, y_true, y_pred, weight):
    ref.update_state(y_true, y_pred, sample_weight=weight)
    return float(ref.result())


@pytest.mark.keras
def test_auc_settings_and_exact_threshold_hits_match_keras():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(3)
    mask = _mask()
    y_true = (rng.random((B, T, 2)) > 0.4).astype("float32")
    # Predictions sitting exactly on thresholds k/199 and k/49, plus 0, 1 and out-of-range values.
    y_pred = rng.choice(
        np.concatenate([np.arange(200) / 199, np.arange(50) / 49, [0.0, 1.0, -0.2, 1.3]]), size=(B, T, 2)
    ).astype("float32")
    sw = rng.uniform(0.0, 2.0, size=(B, T)).astype("float32")
    weight = (mask * sw)[..., None]
    settings = [
        {},
        dict(curve="PR"),
        dict(num_thresholds=50, summation_method="minoring"),
        dict(num_thresholds=3, summation_method="majoring"),
        dict(curve="PR", summation_method="majoring"),
        dict(curve="pr", summation_method="minoring", num_thresholds=11),
    ]
    for kw in settings:
        got = _run(M.AUC(**kw), y_true, y_pred, mask=mask, sample_weight=sw)
        _close(got, _keras_value(keras.metrics.AUC(**kw), y_true, y_pred, weight), TOL["auc"], str(kw))
    logits = rng.normal(0.0, 2.0, size=(B, T, 2)).astype("float32")
    got = _run(M.AUC(from_logits=True), y_true, logits, mask=mask)
    ref = _keras_value(keras.metrics.AUC(from_logits=True), y_true, logits, mask.astype("float32"))
    _close(got, ref, TOL["auc"], "from_logits")


@pytest.mark.keras
def test_thresholds_top_k_ties_and_label_layouts_match_keras():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(4)
    mask = _mask()
    w = mask.astype("float32")
    # Ties: four classes share the top score, so with k=2 all four are "in the top 2" (TF in_top_k).
    scores = rng.choice([0.1, 0.3, 0.5], size=(B, T, C)).astype("float32")
    scores[:, :, :4] = np.where(rng.random((B, T, 1)) > 0.5, 0.9, scores[:, :, :4])
    ids = rng.integers(0, C, size=(B, T))
    one_hot = np.eye(C, dtype="float32")[ids]
    cases = [
        (M.TopKCategoricalAccuracy(k=2), keras.metrics.TopKCategoricalAccuracy(k=2), one_hot, scores),
        (M.TopKCategoricalAccuracy(), keras.metrics.TopKCategoricalAccuracy(), one_hot, scores),
        (M.SparseTopKCategoricalAccuracy(k=1), keras.metrics.SparseTopKCategoricalAccuracy(k=1), ids, scores),
        (M.SparseTopKCategoricalAccuracy(k=3), keras.metrics.SparseTopKCategoricalAccuracy(k=3), ids[..., None], scores),
        (M.SparseCategoricalAccuracy(), keras.metrics.SparseCategoricalAccuracy(), ids[..., None] * 1.0, scores),
        (M.CategoricalAccuracy(), keras.metrics.CategoricalAccuracy(), one_hot, scores),
    ]
    binary_pred = rng.choice([0.2, 0.5, 0.7, 0.71, 0.9], size=(B, T, 1)).astype("float32")
    binary_true = (rng.random((B, T)) > 0.5).astype("float32")  # [B, T] labels for a [B, T, 1] output
    for t in (0.5, 0.7):
        cases.append((M.BinaryAccuracy(threshold=t), keras.metrics.BinaryAccuracy(threshold=t), binary_true, binary_pred))
        cases.append((M.Precision(threshold=t), keras.metrics.Precision(thresholds=t), binary_true, binary_pred))
        cases.append((M.Recall(threshold=t), keras.metrics.Recall(thresholds=t), binary_true, binary_pred))
    multi_true = (rng.random((B, T, 3)) > 0.5).astype("float32")
    multi_pred = rng.random((B, T, 3)).astype("float32")
    cases.append((M.BinaryAccuracy(), keras.metrics.BinaryAccuracy(), multi_true, multi_pred))
    cases.append((M.Precision(), keras.metrics.Precision(), multi_true, multi_pred))
    cases.append((M.Accuracy(), keras.metrics.Accuracy(), np.round(multi_pred * 2), np.round(multi_pred * 2 + 0.3)))
    cases.append((M.MeanAbsoluteError(), keras.metrics.MeanAbsoluteError(), multi_true, multi_pred))
    for ours, ref, y_true, y_pred in cases:
        expected = _keras_value(ref, y_true, y_pred, w)
        _close(_run(ours, y_true, y_pred, mask=mask), expected, _tol(ours), f"{ours}")


def test_per_sample_outputs_without_time_axis():
    """[B, C] predictions (no T): weights [B]; hand-computed reference."""
    y_pred = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], "float32")
    ids = np.array([1, 1, 2, 0])
    w = np.array([1.0, 2.0, 0.0, 0.5], "float32")
    acc = M.SparseCategoricalAccuracy()
    _close(_run(acc, ids, y_pred), 2 / 4, TOL["mean"], "unweighted")
    _close(_run(acc, ids, y_pred, sample_weight=w), 1.0 / 3.5, TOL["mean"], "weighted")
    _close(_run(acc, ids, y_pred, sample_weight=w[:, None]), 1.0 / 3.5, TOL["mean"], "[B, 1] weights")


# --------------------------------------------------------------------------------------------------
# resolve / get
# --------------------------------------------------------------------------------------------------

RESOLVE_SHAPES = [
    ((B, T, 1), (B, T, 1), M.BinaryAccuracy),
    ((B, T), (B, T, 1), M.BinaryAccuracy),
    ((B, T), (B, T, C), M.SparseCategoricalAccuracy),
    ((B, T, 1), (B, T, C), M.SparseCategoricalAccuracy),
    ((B, T, C), (B, T, C), M.CategoricalAccuracy),
    ((B, 1), (B, 1), M.BinaryAccuracy),
    ((B,), (B, C), M.SparseCategoricalAccuracy),
    ((B, C), (B, C), M.CategoricalAccuracy),
]


@pytest.mark.keras
@pytest.mark.parametrize("y_true_shape, y_pred_shape, expected", RESOLVE_SHAPES)
def test_resolve_accuracy_like_keras_compile(y_true_shape, y_pred_shape, expected):
    pytest.importorskip("keras")
    from keras.src.trainers.compile_utils import get_metric

    keras_names = {
        M.BinaryAccuracy: "BinaryAccuracy",
        M.SparseCategoricalAccuracy: "SparseCategoricalAccuracy",
        M.CategoricalAccuracy: "CategoricalAccuracy",
    }
    for ident in ("accuracy", "acc", "Accuracy"):
        ref = get_metric(ident, np.zeros(y_true_shape, "float32"), np.zeros(y_pred_shape, "float32"))
        assert type(ref).__name__ == keras_names[expected]
        ours = M.resolve(ident, y_true_shape, y_pred_shape)
        assert type(ours) is expected and ours.name == ident == ref.name


def test_resolve_keras_legacy_uses_the_loss():
    shapes = ((B, T, C), (B, T, C))
    assert type(M.resolve("acc", *shapes, loss="binary_crossentropy", semantics="keras_legacy")) is M.BinaryAccuracy
    assert type(M.resolve("acc", *shapes, loss="sparse_categorical_crossentropy", semantics="keras_legacy")) is (
        M.SparseCategoricalAccuracy
    )
    assert type(M.resolve("acc", (B, T), (B, T, C), semantics="keras_legacy")) is M.CategoricalAccuracy
    assert type(M.resolve("acc", *shapes, loss="binary_crossentropy")) is M.CategoricalAccuracy  # keras3: shapes only


def test_get_names_and_aliases():
    expected = {
        "accuracy": M.Accuracy,
        "acc": M.Accuracy,
        "binary_accuracy": M.BinaryAccuracy,
        "BinaryAccuracy": M.BinaryAccuracy,
        "categorical_accuracy": M.CategoricalAccuracy,
        "sparse_categorical_accuracy": M.SparseCategoricalAccuracy,
        "top_k_categorical_accuracy": M.TopKCategoricalAccuracy,
        "sparse_top_k_categorical_accuracy": M.SparseTopKCategoricalAccuracy,
        "mse": M.MeanSquaredError,
        "MSE": M.MeanSquaredError,
        "mean_squared_error": M.MeanSquaredError,
        "mae": M.MeanAbsoluteError,
        "MAE": M.MeanAbsoluteError,
        "MeanAbsoluteError": M.MeanAbsoluteError,
        "precision": M.Precision,
        "recall": M.Recall,
        "auc": M.AUC,
        "AUC": M.AUC,
    }
    for name, cls in expected.items():
        assert type(M.get(name)) is cls, name
    assert M.get("top_k_categorical_accuracy", k=3).k == 3
    assert M.get("auc", curve="pr").curve == "PR"
    auc = M.AUC(num_thresholds=10)
    assert M.get(auc) is auc and M.resolve(auc, (B,), (B, 1)) is auc
    assert M.resolve("mse", (B, T, 1), (B, T, 1)).name == "mse"
    assert jm.metrics is M


# --------------------------------------------------------------------------------------------------
# Accumulator properties
# --------------------------------------------------------------------------------------------------

ALL_METRICS = [
    (M.Accuracy(), "round"),
    (M.BinaryAccuracy(), "binary"),
    (M.BinaryAccuracy(threshold=0.3), "binary"),
    (M.CategoricalAccuracy(), "one_hot"),
    (M.SparseCategoricalAccuracy(), "sparse"),
    (M.TopKCategoricalAccuracy(k=2), "one_hot"),
    (M.SparseTopKCategoricalAccuracy(k=2), "sparse"),
    (M.MeanSquaredError(), "binary"),
    (M.MeanAbsoluteError(), "binary"),
    (M.Precision(), "binary"),
    (M.Recall(), "binary"),
    (M.AUC(), "binary"),
    (M.AUC(curve="PR"), "binary"),
]
IDS = [f"{m.name}-{getattr(m, 'curve', '')}{getattr(m, 'threshold', '')}" for m, _ in ALL_METRICS]


def _batch(layout, seed, mask=None):
    rng = np.random.default_rng(seed)
    mask = _mask() if mask is None else mask
    y_pred = rng.random((B, T, C)).astype("float32")
    ids = rng.integers(0, C, size=(B, T))
    y_true = {
        "binary": (rng.random((B, T, C)) > 0.5).astype("float32"),
        "one_hot": np.eye(C, dtype="float32")[ids],
        "sparse": ids,
        "round": np.round(y_pred * 2),
    }[layout]
    if layout == "round":
        y_pred = np.round(y_pred * 2 + rng.normal(0, 0.3, y_pred.shape)).astype("float32")
    sw = rng.uniform(0.1, 2.0, size=(B, T)).astype("float32")
    return y_true, y_pred, mask, sw


@pytest.mark.parametrize("metric, layout", ALL_METRICS, ids=IDS)
def test_merge_equals_one_update_over_concatenated_batches(metric, layout):
    ya, pa, ma, wa = _batch(layout, 10)
    yb, pb, mb, wb = _batch(layout, 11, mask=_mask()[::-1])
    for weighted in (False, True):
        kw_a = dict(mask=ma, sample_weight=wa if weighted else None)
        kw_b = dict(mask=mb, sample_weight=wb if weighted else None)
        state_a = metric.update(metric.init(), ya, pa, **kw_a)
        merged = metric.merge(state_a, metric.update(metric.init(), yb, pb, **kw_b))
        chained = metric.update(state_a, yb, pb, **kw_b)
        whole = metric.update(
            metric.init(),
            np.concatenate([ya, yb]),
            np.concatenate([pa, pb]),
            mask=np.concatenate([ma, mb]),
            sample_weight=np.concatenate([wa, wb]) if weighted else None,
        )
        # Counts are compared relative to their largest entry: TN = Σ negatives - FP cancels in float32.
        for got, want in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(whole)):
            scale = float(np.max(np.abs(want)))
            _close(got, want, (0.0, TOL["internal"][0] * scale + TOL["internal"][1]), "merge state")
        _close(metric.result(merged), metric.result(whole), TOL["internal"], "merge result")
        _close(metric.result(chained), metric.result(whole), TOL["internal"], "chained result")


@pytest.mark.parametrize("metric, layout", ALL_METRICS, ids=IDS)
def test_jit_equals_eager_without_recompiling(metric, layout):
    ya, pa, ma, wa = _batch(layout, 20)
    yb, pb, mb, wb = _batch(layout, 21)
    update = jax.jit(metric.update)
    state = update(metric.init(), ya, pa, mask=ma, sample_weight=wa)
    state = update(state, yb, pb, mask=mb, sample_weight=wb)
    assert update._cache_size() == 1
    eager = metric.update(metric.init(), ya, pa, mask=ma, sample_weight=wa)
    eager = metric.update(eager, yb, pb, mask=mb, sample_weight=wb)
    _close(jax.jit(metric.result)(state), metric.result(eager), TOL["internal"], "jit vs eager")


@pytest.mark.parametrize("metric, layout", ALL_METRICS, ids=IDS)
def test_fully_masked_batch_is_zero_and_padding_garbage_cannot_leak(metric, layout):
    y_true, y_pred, mask, sw = _batch(layout, 30)
    empty = metric.update(metric.init(), y_true, y_pred, mask=np.zeros((B, T), bool), sample_weight=sw)
    assert float(metric.result(empty)) == 0.0
    assert float(metric.result(metric.init())) == 0.0
    # NaN / out-of-range labels and NaN predictions at masked steps change nothing.
    clean = _run(metric, y_true, y_pred, mask=mask, sample_weight=sw)
    dirty_true = np.array(y_true, dtype="float32")
    dirty_true[~mask] = -7.0 if layout == "sparse" else np.nan
    dirty_pred = y_pred.copy()
    dirty_pred[~mask] = np.nan
    dirty = _run(metric, dirty_true, dirty_pred, mask=mask, sample_weight=sw)
    assert np.isfinite(float(dirty))
    _close(dirty, clean, TOL["internal"], "garbage in padding")


def test_masking_equals_slicing_valid_steps():
    """Σ m·v / Σ m equals the plain mean over the valid steps gathered into a [1, N] batch."""
    y_true, y_pred, mask, sw = _batch("sparse", 40)
    for metric in (M.SparseCategoricalAccuracy(), M.SparseTopKCategoricalAccuracy(k=3)):
        masked = _run(metric, y_true, y_pred, mask=mask, sample_weight=sw)
        sliced = _run(metric, y_true[mask][None], y_pred[mask][None], sample_weight=sw[mask][None])
        _close(masked, sliced, TOL["internal"], metric.name)


def test_per_sample_weights_broadcast_over_time():
    """[B] == [B, 1] == explicitly tiled [B, T]; with B == T a time-wise broadcast would differ."""
    y_true, y_pred, mask, _ = _batch("binary", 50)
    w = np.linspace(0.1, 2.0, B).astype("float32")
    for metric in (M.MeanSquaredError(), M.AUC()):
        tiled = _run(metric, y_true, y_pred, mask=mask, sample_weight=np.repeat(w[:, None], T, axis=1))
        for sw in (w, w[:, None]):
            _close(_run(metric, y_true, y_pred, mask=mask, sample_weight=sw), tiled, TOL["internal"], str(sw.shape))
        wrong = _run(metric, y_true, y_pred, mask=mask, sample_weight=np.repeat(w[None, :], B, axis=0))
        assert abs(float(wrong) - float(tiled)) > 1e-4


def test_metrics_are_hashable_frozen_values():
    a, b = M.AUC(curve="PR"), M.AUC(curve="pr")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.curve = "ROC"


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def test_validation_errors():
    y_true, y_pred, mask, sw = _batch("one_hot", 60)
    acc = M.CategoricalAccuracy()
    state = acc.init()
    with pytest.raises(ValueError, match=r"categorical_accuracy: `y_true` must have the shape of `y_pred` \(8, 8, 6\)"):
        acc.update(state, np.argmax(y_true, -1), y_pred)
    with pytest.raises(ValueError, match=r"sparse_categorical_accuracy: `y_true` must have shape \(8, 8\) or \(8, 8, 1\)"):
        M.SparseCategoricalAccuracy().update(state, y_true, y_pred)
    with pytest.raises(ValueError, match=r"precision: `y_true` must have the shape of `y_pred`"):
        M.Precision().update(M.Precision().init(), y_true[..., :2], y_pred)
    with pytest.raises(ValueError, match=r"`mask` must be a \[B, T\] array matching the input's \(B, T\) = \(8, 8\)"):
        acc.update(state, y_true, y_pred, mask=mask[:, :5])
    with pytest.raises(TypeError, match=r"`mask` must be bool"):
        acc.update(state, y_true, y_pred, mask=np.full((B, T), "x"))
    bad_weights = r"`sample_weight` must be \[B\], \[B, 1\] or \[B, T\] with \(B, T\) = \(8, 8\); received shape \(8, 8, 1\)"
    with pytest.raises(ValueError, match=bad_weights):
        acc.update(state, y_true, y_pred, sample_weight=sw[..., None])
    with pytest.raises(ValueError, match=r"`sample_weight` must be \[B\] with B = 8; received shape \(3,\)"):
        acc.update(state, y_true[:, 0], y_pred[:, 0], sample_weight=np.ones(3))
    with pytest.raises(ValueError, match=r"`mask` \[B, T\] needs a sequence `y_pred` \[B, T, C\]"):
        acc.update(state, y_true[:, 0], y_pred[:, 0], mask=mask)
    with pytest.raises(ValueError, match=r"`y_pred` must be \[B, T, C\] \(sequence\) or \[B, C\]; received shape \(8,\)"):
        acc.update(state, y_true[:, 0, 0], y_pred[:, 0, 0])


def test_unknown_names_and_bad_settings():
    with pytest.raises(ValueError, match=r"Unknown metric 'f1'\. Valid names: \[.*'auc'.*'mse'.*\]"):
        M.get("f1")
    with pytest.raises(ValueError, match=r"Unknown metric 'Mse'"):
        M.resolve("Mse", (B, T), (B, T, 1))
    with pytest.raises(TypeError, match=r"`identifier` must be a metric name or a jm.metrics object; received int"):
        M.get(3)
    semantics = r"`semantics` must be one of \['keras3', 'keras_legacy', 'tf_keras', 'tf_keras_pre212'\]"
    with pytest.raises(ValueError, match=semantics):
        M.resolve("acc", (B,), (B, 1), semantics="keras2")
    with pytest.raises(ValueError, match=r"`num_thresholds` must be an integer > 1; received 1"):
        M.AUC(num_thresholds=1)
    with pytest.raises(ValueError, match=r"`curve` must be one of \['ROC', 'PR'\]; received 'PRGAIN'"):
        M.AUC(curve="PRGAIN")
    with pytest.raises(ValueError, match=r"`summation_method` must be one of"):
        M.AUC(summation_method="trapezoid")
    with pytest.raises(ValueError, match=r"`k` must be an integer >= 1; received 0"):
        M.TopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match=r"`threshold` must be a float in \[0, 1\]; received 1.5"):
        M.Precision(threshold=1.5)

