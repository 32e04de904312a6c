"""Property tests at scale: the masking, padding and jit invariants of ``masked_loss`` and the recurrent scan.

Each property draws a shape from a small fixed set (``LOSS_SHAPES`` / ``RNN_SHAPES``; B == T included) and a
static configuration, and draws the data freely: masks (post/pre padding, holes, all-False rows, all-False
batches, random), values, sample weights (zeros included) and what is written into the padding (NaN, ±Inf,
±1e30, mixtures). Every (configuration, shape) is jit-compiled once and cached, so examples cost
microseconds of compute and the run is dominated by Hypothesis and the NumPy references.

Profiles (tests/conftest.py): "ci" (default, derandomized, a few examples) and "slow"
(``HYPOTHESIS_PROFILE=slow``: 10,000 examples per property). The numbers of the last slow run are in
tests/PROPERTIES.md.

References are independent of jaxmask's reduction and scan code: the loss is reduced in float64 NumPy over
the valid steps sliced out of the per-step values, with the formulas of each Keras version; the recurrent
layers are compared with the Python loop in tests/reference.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxmask as jm
from jaxmask.functional import rnn as F
from jaxmask.functional.reduction import REDUCTIONS, SEMANTICS
from tests import reference as ref

TOL = {
    "loss": dict(atol=1e-5, rtol=1e-5),  # float32 loss vs float64 NumPy reduction
    "jit": dict(atol=1e-6, rtol=1e-6),  # jit vs op-by-op: same float32 ops, different fusion
    "rnn": ref.TOL["float32"],
}

# (B, T, K) for losses, (B, T, F, H) for recurrent layers: few shapes, so jit caches hit.
LOSS_SHAPES = [(1, 1, 1), (3, 3, 2), (2, 5, 3), (4, 2, 1)]
RNN_SHAPES = [(1, 1, 1, 1), (3, 3, 2, 4), (2, 5, 3, 2), (4, 2, 1, 3)]

POISONS = ["nan", "inf", "-inf", "1e30", "-1e30", "mixed"]
_POISON_VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "1e30": 1e30, "-1e30": -1e30}


# -------------------------------------------------------------------------------------------- strategies


@st.composite
def masks(draw, b, t):
    """bool [b, t]: post- or pre-padding (lengths 0..t, so all-False rows), holes, all-False, all-True, random."""
    layout = draw(st.sampled_from(["post", "pre", "holes", "random", "all_false", "all_true"]))
    if layout == "all_false":
        return np.zeros((b, t), bool)
    if layout == "all_true":
        return np.ones((b, t), bool)
    if layout == "random":
        return np.array(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t)), bool).reshape(b, t)
    lengths = np.array(draw(st.lists(st.integers(0, t), min_size=b, max_size=b)))
    steps = np.arange(t)[None, :]
    pre = layout == "pre" or (layout == "holes" and draw(st.booleans()))
    mask = steps >= t - lengths[:, None] if pre else steps < lengths[:, None]
    if layout == "holes":
        holes = np.array(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t)), bool).reshape(b, t)
        mask &= ~holes
    return mask


def poison_like(rng, shape, poison, dtype=np.float32):
    """Values to write into padded positions."""
    if poison == "mixed":
        choices = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 1e3], dtype)
        out = choices[rng.integers(0, len(choices), shape)]
        return np.where(rng.random(shape) < 0.2, rng.normal(0, 1e3, shape), out).astype(dtype)
    return np.full(shape, _POISON_VALUES[poison], dtype)


def padded(values, mask, filler):
    """``values`` with ``filler`` at the masked positions (mask is a prefix of values' shape)."""
    m = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    return np.where(m, values, filler).astype(values.dtype)


def weights_of(rng, kind, zeros, b, t):
    """None, [B] or [B, T] weights in [0, 2), with no / some / all zeros."""
    if kind == "none":
        return None
    shape = (b,) if kind == "B" else (b, t)
    w = rng.uniform(0.0, 2.0, shape)
    keep = {"no": 1.0, "some": 0.5, "all": 0.0}[zeros]
    return (w * (rng.random(shape) < keep)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ losses

# name, labels, kwargs
LOSSES = [
    ("mean_squared_error", "dense", ()),
    ("mean_absolute_error", "dense", ()),
    ("binary_crossentropy", "binary", ()),
    ("binary_crossentropy", "dense", (("from_logits", True),)),
    ("categorical_crossentropy", "onehot", ()),
    ("sparse_categorical_crossentropy", "sparse", ()),
    ("huber", "dense", ()),
    ("poisson", "positive", ()),
]

PROFILES = [(s, r) for s in SEMANTICS for r in REDUCTIONS[s]]


def loss_data(rng, b, t, k, labels):
    """Clean (y_true, y_pred) of one batch; class losses use max(k, 2) classes."""
    kk = max(k, 2)
    if labels == "dense":
        y_true, y_pred = rng.normal(size=(b, t, k)), rng.normal(0, 2, (b, t, k))
    elif labels == "positive":
        y_true, y_pred = rng.uniform(0, 3, (b, t, k)), rng.uniform(0.1, 3, (b, t, k))
    elif labels == "binary":
        y_true, y_pred = rng.integers(0, 2, (b, t, k)), rng.uniform(0.0, 1.0, (b, t, k))
    else:
        logits = rng.normal(0, 2, (b, t, kk))
        y_pred = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        ids = rng.integers(0, kk, (b, t))
        y_true = ids.astype(np.int32) if labels == "sparse" else np.eye(kk)[ids]
    return (y_true if labels == "sparse" else y_true.astype(np.float32)), y_pred.astype(np.float32)


@functools.lru_cache(maxsize=None)
def loss_fn(name, kwargs, semantics, reduction, weight_kind, with_grad):
    """jit(masked_loss) (the sum of its values for reduction="none"), optionally with d/dy_pred."""

    def loss(y_pred, y_true, mask, w):
        out = jm.masked_loss(name, y_true, y_pred, mask=mask, sample_weight=w, reduction=reduction,
                             semantics=semantics, **dict(kwargs))
        return jnp.sum(out)

    if weight_kind == "none":
        base = lambda y_pred, y_true, mask, w: loss(y_pred, y_true, mask, None)  # noqa: E731
    else:
        base = loss
    return jax.value_and_grad(base) if with_grad else base


@functools.lru_cache(maxsize=None)
def jitted(fn):
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def per_step_values(name, kwargs):
    """jit of the plain loss function: per-step values [B, T] of clean inputs, no mask, no weights."""
    fn = jm.losses.get(name)
    return jax.jit(lambda y_true, y_pred: fn(y_true, y_pred, **dict(kwargs)))


def reference_loss(values, mask, w, semantics, reduction):
    """The reduction of each Keras version over the valid steps sliced out, in float64.

    ``values`` [B, T] per-step losses of the clean data; ``w`` None, [B] or [B, T] (as given, padded
    positions included: keras_legacy counts every weight in #{w != 0}, as Keras 2.2 does)."""
    b, t = mask.shape
    wf = np.ones((b, t)) if w is None else np.broadcast_to(np.asarray(w, np.float64).reshape(b, -1), (b, t))
    lv, wv = np.asarray(values, np.float64)[mask], wf[mask]  # the sliced valid steps
    total = float(np.sum(lv * wv))
    n_valid, n = int(mask.sum()), b * t
    if reduction == "none" or reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight":
        den = float(np.sum(wv))
        return total / den if den else 0.0
    if semantics in ("keras3", "tf_keras"):
        return total / n_valid if n_valid else 0.0
    if semantics == "tf_keras_pre212":
        return total / n
    # keras_legacy: (Σ w·m·l / Σ m) · |w| / #{w != 0}
    loss = total / n_valid if n_valid else 0.0
    if w is not None:
        nonzero = np.count_nonzero(np.asarray(w))
        loss = loss * np.asarray(w).size / nonzero if nonzero else 0.0
    return loss


@st.composite
def loss_cases(draw):
    b, t, k = draw(st.sampled_from(LOSS_SHAPES))
    loss = draw(st.sampled_from(LOSSES))
    semantics, reduction = draw(st.sampled_from(PROFILES))
    weight_kind = draw(st.sampled_from(["none", "B", "BT"]))
    zeros = draw(st.sampled_from(["no", "some", "all"]))
    mask = draw(masks(b, t))
    poison = draw(st.sampled_from(POISONS))
    seed = draw(st.integers(0, 2**32 - 1))
    return (b, t, k), loss, semantics, reduction, weight_kind, zeros, mask, poison, seed


def make_loss_batch(case):
    (b, t, k), (name, labels, kwargs), semantics, reduction, weight_kind, zeros, mask, poison, seed = case
    rng = np.random.default_rng(seed)
    y_true, y_pred = loss_data(rng, b, t, k, labels)
    w = weights_of(rng, weight_kind, zeros, b, t)
    dirty_pred = padded(y_pred, mask, poison_like(rng, y_pred.shape, poison))
    if labels == "sparse":  # out-of-range class ids are a common label padding
        dirty_true = padded(y_true, mask, rng.integers(-5, 100, y_true.shape).astype(np.int32))
    else:
        dirty_true = padded(y_true, mask, poison_like(rng, y_true.shape, poison))
    dirty_w = w
    # Padded [B, T] weights are padding too, except where they are part of the formula: keras_legacy counts
    # every weight in #{w != 0}.
    if w is not None and w.ndim == 2 and semantics != "keras_legacy":
        dirty_w = padded(w, mask, poison_like(rng, w.shape, poison))
    return y_true, y_pred, w, dirty_true, dirty_pred, dirty_w


@given(loss_cases())
def test_masked_loss_equals_reduction_of_sliced_valid_steps(case):
    """masked_loss == the Keras formula over the valid steps sliced out (float64 NumPy), in every semantics
    and reduction; NaN/Inf/1e30 in padded labels, predictions and weights change nothing; the value and the
    gradient are finite, and the gradient is 0 at padded steps and at zero-weight steps."""
    _, (name, _, kwargs), semantics, reduction, weight_kind, _, mask, _, _ = case
    y_true, y_pred, w, dirty_true, dirty_pred, dirty_w = make_loss_batch(case)
    fn = jitted(loss_fn(name, kwargs, semantics, reduction, weight_kind, True))

    values = per_step_values(name, kwargs)(y_true, y_pred)
    expected = reference_loss(values, mask, w, semantics, reduction)
    clean_value, clean_grad = fn(y_pred, y_true, mask, w)
    value, grad = fn(dirty_pred, dirty_true, mask, dirty_w)
    value, grad = float(value), np.asarray(grad)
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(value, expected, **TOL["loss"])
    assert value == float(clean_value)
    np.testing.assert_array_equal(grad, np.asarray(clean_grad))
    np.testing.assert_array_equal(grad[~mask], 0.0)
    if w is not None:
        zero_w = np.broadcast_to((w == 0).reshape(mask.shape[0], -1), mask.shape)
        np.testing.assert_array_equal(grad[zero_w], 0.0)


@pytest.mark.slow  # test_losses.py::test_values_under_jit_equal_eager runs by default
@given(loss_cases())
def test_masked_loss_jit_equals_eager(case):
    """The jitted value and gradient equal op-by-op execution (padding poisoned, every profile)."""
    _, (name, _, kwargs), semantics, reduction, weight_kind, _, mask, _, _ = case
    _, _, _, dirty_true, dirty_pred, dirty_w = make_loss_batch(case)
    fn = loss_fn(name, kwargs, semantics, reduction, weight_kind, True)
    v_jit, g_jit = jitted(fn)(dirty_pred, dirty_true, mask, dirty_w)
    v_eager, g_eager = fn(dirty_pred, dirty_true, mask, dirty_w)
    assert np.isfinite(float(v_eager)) and np.isfinite(np.asarray(g_eager)).all()
    np.testing.assert_allclose(float(v_jit), float(v_eager), **TOL["jit"])
    np.testing.assert_allclose(np.asarray(g_jit), np.asarray(g_eager), **TOL["jit"])


def test_padded_weights_mean_with_sample_weight():
    """A NaN [B, T] weight at a padded step does not reach the keras3 mean_with_sample_weight denominator
    (it did: Σ w·m with NaN·0 = NaN; found while building this file's padding strategies)."""
    mask = np.array([[True, True, False], [True, False, False]])
    y_true = np.zeros((2, 3, 1), np.float32)
    y_pred = np.ones((2, 3, 1), np.float32)
    w = np.where(mask, 1.0, np.nan).astype(np.float32)
    value = jm.masked_loss("mse", y_true, y_pred, mask=mask, sample_weight=w, reduction="mean_with_sample_weight")
    assert float(value) == 1.0


# -------------------------------------------------------------------------------------- recurrent layers

CELLS = {  # name -> (cell factory, reference kind, gates, fused)
    "lstm_fused": (F.lstm_cell, "lstm", 4, True),
    "lstm_scan": (F.lstm_cell, "lstm", 4, False),
    "gru": (F.gru_cell, "gru", 3, False),
    "gru_v1": (functools.partial(F.gru_cell, reset_after=False), "gru_v1", 3, False),
    "simple_rnn": (F.simple_rnn_cell, "simple", 1, False),
}


@st.composite
def rnn_cases(draw):
    shape = draw(st.sampled_from(RNN_SHAPES))
    cell = draw(st.sampled_from(sorted(CELLS)))
    go_backwards, zero_output = draw(st.booleans()), draw(st.booleans())
    mask = draw(masks(shape[0], shape[1]))
    poison = draw(st.sampled_from(POISONS))
    scale = draw(st.sampled_from([0.0, 0.5, 1.5]))  # weights: all zero, moderate, saturating
    random_init = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, cell, go_backwards, zero_output, mask, poison, scale, random_init, seed


def make_rnn_batch(case):
    (b, t, f, h), cell, _, _, mask, poison, scale, random_init, seed = case
    _, kind, gates, _ = CELLS[cell]
    rng = np.random.default_rng(seed)
    bias_shape = (2, gates * h) if kind == "gru" else (gates * h,)
    params = {
        "kernel": rng.normal(0, scale, (f, gates * h)).astype(np.float32),
        "recurrent_kernel": rng.normal(0, scale, (h, gates * h)).astype(np.float32),
        "bias": rng.normal(0, scale, bias_shape).astype(np.float32),
    }
    n_states = 2 if kind == "lstm" else 1
    init = tuple(
        (rng.normal(0, 1, (b, h)) if random_init else np.zeros((b, h))).astype(np.float32) for _ in range(n_states)
    )
    x = rng.normal(0, 2, (b, t, f)).astype(np.float32)
    clean = padded(x, mask, np.float32(0))
    dirty = padded(x, mask, poison_like(rng, x.shape, poison))
    return params, init, clean, dirty


@functools.lru_cache(maxsize=None)
def rnn_fn(cell, go_backwards, zero_output):
    """(outputs, last, final states) and the gradient of a masked loss on them, as one jitted function."""
    factory, _, _, fused = CELLS[cell]

    def forward(params, x, mask, init):
        return F.masked_scan(factory(), params, x, mask, init, go_backwards=go_backwards,
                             zero_output_for_mask=zero_output, fused=fused)

    def loss(params, x, init, mask, y):
        outputs, last, final = forward(params, x, mask, init)
        processed = mask[:, ::-1] if go_backwards else mask  # outputs are in processed order
        return (
            jm.masked_loss("mse", y, outputs, mask=processed)
            + jnp.sum(jnp.sin(last))
            + sum(jnp.sum(s * s) for s in final)
        )

    def run(params, x, mask, init, y):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, init, mask, y)
        return forward(params, x, mask, init), value, grads

    return forward, jax.jit(run)


@given(rnn_cases())
def test_rnn_matches_loop_reference_and_ignores_padding(case):
    """LSTM (fused and plain scan), GRU (both variants) and SimpleRNN under any mask: outputs, last output
    and final states equal the Python-loop reference; whatever is written into padded inputs (NaN, ±Inf,
    ±1e30) changes no output, loss or gradient bit; everything is finite; the input gradient is 0 at
    padded steps; a fully masked batch outputs zeros and keeps the initial state."""
    (b, t, f, h), cell, go_backwards, zero_output, mask, _, _, random_init, seed = case
    params, init, clean, dirty = make_rnn_batch(case)
    _, run = rnn_fn(cell, go_backwards, zero_output)
    y = np.random.default_rng(seed + 1).normal(size=(b, t, h)).astype(np.float32)

    (out_c, last_c, final_c), value_c, grads_c = run(params, clean, mask, init, y)
    (out_d, last_d, final_d), value_d, grads_d = run(params, dirty, mask, init, y)

    want, want_last, want_final = ref.rnn(CELLS[cell][1], params, clean, mask, initial_state=init if random_init else None,
                                          go_backwards=go_backwards, zero_output_for_mask=zero_output)
    np.testing.assert_allclose(out_c, want, **TOL["rnn"])
    np.testing.assert_allclose(last_c, want_last, **TOL["rnn"])
    for got, expected in zip(final_c, want_final):
        np.testing.assert_allclose(got, expected, **TOL["rnn"])

    for a, c in zip(jax.tree.leaves((out_d, last_d, final_d, value_d, grads_d)),
                    jax.tree.leaves((out_c, last_c, final_c, value_c, grads_c))):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    d_x = np.asarray(grads_d[1])
    np.testing.assert_array_equal(d_x[~mask], 0.0)
    if not mask.any():
        np.testing.assert_array_equal(np.asarray(out_d), 0.0)
        for got, start in zip(final_d, init):
            np.testing.assert_array_equal(np.asarray(got), start)


@pytest.mark.slow  # test_rnn.py::test_jit_equals_eager_and_compiles_once runs by default
@given(rnn_cases())
def test_rnn_jit_equals_eager(case):
    """The jitted scan equals op-by-op execution (``jax.disable_jit``: the scan runs as a Python loop),
    padded inputs poisoned."""
    (b, t, f, h), cell, go_backwards, zero_output, mask, _, _, _, seed = case
    params, init, _, dirty = make_rnn_batch(case)
    forward, run = rnn_fn(cell, go_backwards, zero_output)
    y = np.zeros((b, t, h), np.float32)
    (out_j, last_j, final_j), _, _ = run(params, dirty, mask, init, y)
    with jax.disable_jit():
        out_e, last_e, final_e = forward(params, dirty, mask, init)
    for a, e in zip(jax.tree.leaves((out_j, last_j, final_j)), jax.tree.leaves((out_e, last_e, final_e))):
        assert np.isfinite(np.asarray(e)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), **TOL["jit"])
