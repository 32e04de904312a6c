"""``jm.Trainer`` on models with several inputs and several outputs, one loss each, weighted (issue 11 §5,
Keras' ``compile(loss=[...], loss_weights=[...])``): total = Σ w_i · loss_i, logs ``loss`` and
``<output>_loss`` (unweighted), metrics ``<output>_<metric>``, each output's loss under its own output mask.

References: NumPy transcriptions of the masked losses, a hand-written ``jax.grad`` of the weighted objective for
one SGD step, and Keras 3 itself (a two-input two-output functional model trained side by side)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxmask as jm
from tests.training.helpers import params_of

N, T, F, S, H = 8, 6, 3, 2, 4


class TwoInTwoOut(nnx.Module):
    """The call contract of ``jm.nn.Model``, written by hand: ``model(x, mask) -> ([tag, reg], [tag_mask, None])``.

    seq [B, T, F] -> Masking -> LSTM (sequences) -> Dense(1, sigmoid) per step: "tag"; the masked mean of the
    LSTM outputs concatenated with static [B, S] -> Dense(2): "reg"."""

    input_names = ("seq", "static")
    output_names = ("tag", "reg")

    def __init__(self, seed=0):
        rngs = nnx.Rngs(seed)
        self.masking = jm.nn.Masking(0.0)
        self.lstm = jm.nn.LSTM(F, H, return_sequences=True, rngs=rngs)
        self.pool = jm.nn.GlobalAveragePooling1D()
        self.tag = jm.nn.Dense(H, 1, activation="sigmoid", rngs=rngs)
        self.reg = jm.nn.Dense(H + S, 2, rngs=rngs)

    def __call__(self, x, mask=None):
        seq, static = (x["seq"], x["static"]) if isinstance(x, dict) else x
        m = self.masking.compute_output_mask(seq)
        h = self.lstm(self.masking(seq), mask=m)
        pooled = self.pool(h, mask=m)
        return [self.tag(h), self.reg(jnp.concatenate([pooled, static], axis=-1))], [m, None]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(N, T, F)).astype(np.float32)
    lengths = np.array([6, 1, 3, 4, 6, 2, 5, 6])
    for i, n in enumerate(lengths):
        seq[i, n:] = 0.0
    seq[3, 1] = 0.0  # a hole mid-sequence
    static = rng.normal(size=(N, S)).astype(np.float32)
    tag = (rng.random((N, T, 1)) > 0.5).astype(np.float32)
    reg = rng.normal(size=(N, 2)).astype(np.float32)
    return seq, static, tag, reg


def bce(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)


def reference_losses(model, data, sw_tag=None, sw_reg=None):
    """NumPy: masked BCE of "tag" (Σ w·m·l / Σ m) and MSE of "reg" (Σ w·l / N) on one batch."""
    seq, static, tag, reg = data
    (p_tag, p_reg), (m, _) = model([jnp.asarray(seq), jnp.asarray(static)])
    m = np.asarray(m, np.float64)
    w = np.ones((N, T)) if sw_tag is None else np.broadcast_to(np.asarray(sw_tag, np.float64).reshape(N, -1), (N, T))
    l_tag = (w * m * bce(tag, np.asarray(p_tag, np.float64))).sum() / m.sum()
    v = np.ones(N) if sw_reg is None else np.asarray(sw_reg, np.float64)
    l_reg = (v * ((reg - np.asarray(p_reg, np.float64)) ** 2).mean(-1)).sum() / N
    return l_tag, l_reg


def test_weighted_losses_and_keras_log_names_match_numpy(data):
    seq, static, tag, reg = data
    model = TwoInTwoOut()
    tr = jm.Trainer(model, optax.sgd(0.1), ["binary_crossentropy", "mse"], loss_weights=[0.3, 2.0])
    logs = tr.evaluate([seq, static], [tag, reg], batch_size=N)
    l_tag, l_reg = reference_losses(model, data)
    assert set(logs) == {"loss", "tag_loss", "reg_loss"}
    np.testing.assert_allclose([logs["tag_loss"], logs["reg_loss"], logs["loss"]], [l_tag, l_reg, 0.3 * l_tag + 2.0 * l_reg],
                               rtol=1e-5)
    by_name = tr.evaluate({"seq": seq, "static": static}, {"reg": reg, "tag": tag}, batch_size=N)
    assert by_name == pytest.approx(logs, rel=1e-6)
    weights = {"reg": 2.0, "tag": 0.3}
    assert jm.Trainer(model, optax.sgd(0.1), {"tag": "bce", "reg": "mse"}, loss_weights=weights).evaluate(
        [seq, static], [tag, reg], batch_size=N) == pytest.approx(logs, rel=1e-6)
    sw_tag, sw_reg = np.linspace(0.5, 2.0, N).astype(np.float32), np.linspace(2.0, 0.1, N).astype(np.float32)
    l_tag, l_reg = reference_losses(model, data, sw_tag, sw_reg)
    weighted = tr.evaluate([seq, static], [tag, reg], sample_weight={"tag": sw_tag, "reg": sw_reg}, batch_size=N)
    np.testing.assert_allclose([weighted["tag_loss"], weighted["reg_loss"]], [l_tag, l_reg], rtol=1e-5)
    one_for_all = tr.evaluate([seq, static], [tag, reg], sample_weight=sw_tag, batch_size=N)
    np.testing.assert_allclose([one_for_all["tag_loss"], one_for_all["reg_loss"]], reference_losses(model, data, sw_tag, sw_tag),
                               rtol=1e-5)


def test_one_loss_for_every_output_and_outputs_without_a_loss(data):
    seq, static, tag, reg = data
    model = TwoInTwoOut()
    p_tag, p_reg = (np.asarray(p, np.float64) for p in model([seq, static])[0])
    m = np.asarray(model([seq, static])[1][0], np.float64)
    mse_tag = (m * ((tag - p_tag) ** 2).mean(-1)).sum() / m.sum()
    mse_reg = ((reg - p_reg) ** 2).mean(-1).mean()
    both = jm.Trainer(model, optax.sgd(0.1), "mse").evaluate([seq, static], [tag, reg], batch_size=N)
    np.testing.assert_allclose([both["tag_loss"], both["reg_loss"], both["loss"]], [mse_tag, mse_reg, mse_tag + mse_reg],
                               rtol=1e-5)
    reg_only = jm.Trainer(model, optax.sgd(0.1), {"tag": None, "reg": "mse"})
    logs = reg_only.evaluate([seq, static], {"reg": reg}, batch_size=N)
    assert set(logs) == {"loss", "reg_loss"}
    np.testing.assert_allclose(logs["loss"], mse_reg, rtol=1e-5)


def test_one_sgd_step_follows_the_gradient_of_the_weighted_objective(data):
    """fit on one batch = params - lr · ∇(0.3 · BCE_masked(tag) + 2 · MSE(reg)), the objective written in jnp here."""
    seq, static, tag, reg = data
    model = TwoInTwoOut(seed=1)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def objective(params):
        (p_tag, p_reg), (m, _) = nnx.merge(graphdef, params, rest)([seq, static])
        p = jnp.clip(p_tag, 1e-7, 1 - 1e-7)
        l_tag = -(tag * jnp.log(p) + (1 - tag) * jnp.log(1 - p)).mean(-1)
        m = m.astype(jnp.float32)
        return 0.3 * (m * l_tag).sum() / m.sum() + 2.0 * ((reg - p_reg) ** 2).mean()

    grads = jax.grad(objective)(params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
    tr = jm.Trainer(model, optax.sgd(0.5), ["binary_crossentropy", "mse"], loss_weights=[0.3, 2.0])
    tr.fit([seq, static], [tag, reg], batch_size=N, epochs=1, verbose=0)
    want = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = params_of(tr)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_per_output_metrics_and_predict(data):
    seq, static, tag, reg = data
    model = TwoInTwoOut()
    tr = jm.Trainer(model, optax.sgd(0.1), ["binary_crossentropy", "mse"], metrics={"tag": ["accuracy"], "reg": "mae"},
                    weighted_metrics=[None, ["mse"]])
    sw = np.linspace(0.5, 2.0, N).astype(np.float32)
    logs = tr.evaluate([seq, static], [tag, reg], sample_weight=[None, sw], batch_size=N)
    assert set(logs) == {"loss", "tag_loss", "reg_loss", "tag_accuracy", "reg_mae", "reg_mse"}
    (p_tag, p_reg), (m, _) = model([seq, static])
    p_tag, p_reg, m = np.asarray(p_tag), np.asarray(p_reg), np.asarray(m)
    acc = ((p_tag[..., 0] > 0.5) == (tag[..., 0] > 0.5))[m].mean()
    np.testing.assert_allclose(logs["tag_accuracy"], acc, rtol=1e-6)
    np.testing.assert_allclose(logs["reg_mae"], np.abs(reg - p_reg).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["reg_mse"], (sw * ((reg - p_reg) ** 2).mean(-1)).sum() / sw.sum(), rtol=1e-5)
    out = tr.predict({"seq": seq, "static": static})
    assert isinstance(out, list) and out[0].shape == (N, T, 1) and out[1].shape == (N, 2)
    np.testing.assert_array_equal(out[0][~m], 0.0)
    np.testing.assert_allclose(out[1], p_reg, rtol=1e-5, atol=1e-6)


def test_stream_of_multi_io_batches_trains_as_the_arrays(data):
    seq, static, tag, reg = data
    tr = jm.Trainer(TwoInTwoOut(), optax.sgd(0.1), ["binary_crossentropy", "mse"], loss_weights=[0.3, 2.0])
    _, params, _, other = nnx.split(tr.model, nnx.Param, nnx.RngState, ...)
    initial = jax.device_get((params, other))
    h_ref = tr.fit([seq, static], [tag, reg], batch_size=4, epochs=1, shuffle=False, verbose=0).history
    tr.set_weights(initial)  # plain SGD keeps no optimizer state: the same Trainer starts over
    batches = (({"seq": seq[i : i + 4], "static": static[i : i + 4]}, [tag[i : i + 4], reg[i : i + 4]]) for i in (0, 4))
    hist = tr.fit(batches, epochs=1, verbose=0).history
    assert hist.keys() == h_ref.keys()
    for key in hist:
        np.testing.assert_allclose(hist[key], h_ref[key], rtol=1e-6, err_msg=key)


def test_functional_model_with_a_ragged_input_trains():
    """A jm.nn.Model with Input((None, F)) and Input((S,)): the sequence input given as a ragged list is padded
    (to a padded length) and masked by the Trainer; the loss goes down."""
    rngs = nnx.Rngs(0)
    seq_in = jm.nn.Input((None, F), name="seq")
    static_in = jm.nn.Input((S,), name="static")
    h = jm.nn.LSTM(F, H, return_sequences=True, rngs=rngs)(jm.nn.Masking(0.0)(seq_in))
    tag = jm.nn.Dense(H, 1, activation="sigmoid", rngs=rngs)(h)
    last = jm.nn.LSTM(H, H, rngs=rngs)(h)
    reg = jm.nn.Dense(H + S, 2, rngs=rngs)(jm.nn.Concatenate()([last, static_in]))
    model = jm.nn.Model([seq_in, static_in], [tag, reg])
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, 16)
    seqs = [rng.normal(size=(n, F)).astype(np.float32) for n in lengths]
    tags = [(s[:, :1] > 0).astype(np.float32) for s in seqs]
    static = rng.normal(size=(16, S)).astype(np.float32)
    regs = np.stack([s.mean(0)[:2] for s in seqs]) + static
    tr = jm.Trainer(model, optax.adam(0.05), ["binary_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    hist = tr.fit({"seq": seqs, "static": static}, [tags, regs], batch_size=8, epochs=15, verbose=0).history
    assert hist["loss"][-1] < 0.7 * hist["loss"][0]
    assert set(hist) >= {"loss", model.output_names[0] + "_loss", model.output_names[1] + "_loss"}
    out = tr.predict({"seq": seqs, "static": static})
    assert [o.shape for o in out[0]] == [(n, 1) for n in lengths] and out[1].shape == (16, 2)


@pytest.mark.parametrize(
    "make, call, match",
    [
        (lambda m: jm.Trainer(m, optax.sgd(0.1), ["mse"]), None, r"`loss` must have one entry per model output \(2: \['tag', 'reg'\]\); received 1"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), {"tag": "mse", "regg": "mse"}), None,
         r"`loss` is a dict with keys \['regg', 'tag'\]; the model's outputs are \['tag', 'reg'\]"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse", loss_weights=0.5), None, r"`loss_weights` for a model with 2 outputs"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse", loss_weights={"tag": "x"}), None, r"`loss_weights\['tag'\]` must be a number"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse", metrics=["mae"]), lambda t, d: t.evaluate([d[0], d[1]], [d[2], d[3]]),
         r"metrics must be a list with one entry per output"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit([d[0], d[1]], [d[2], d[3]], class_weight={0: 1.0}, verbose=0),
         r"`class_weight` is only supported for models with a single output"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit([d[0], d[1]], [d[2]], verbose=0),
         r"`y` must be a list with one entry per model output \(2: \['tag', 'reg'\]\).*received a list of 1"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit({"seq": d[0]}, [d[2], d[3]], verbose=0),
         r"`x` is a dict with keys \['seq'\]; the model's inputs are \['seq', 'static'\]"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit([d[0], d[1][:5]], [d[2], d[3]], verbose=0),
         r"`x\['static'\]` holds 5 samples \(shape \(5, 2\)\) and `x\['seq'\]` holds 8"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit([d[0], d[1]], [d[2], d[3][:, [0, 1, 1]]], verbose=0),
         r"`y\['reg'\]` has shape \(8, 3\), which does not fit the model's output of per-sample shape \(2,\)"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit([d[0], d[1]], [d[2], d[3][:, :1]], verbose=0),
         r"output 'reg' \(labels `y\['reg'\]`\): `y_true` of mean_squared_error must have the shape of `y_pred`"),
        (lambda m: jm.Trainer(m, optax.sgd(0.1), "mse"), lambda t, d: t.fit([d[0], d[1]], {"tag": d[2]}, verbose=0),
         r"`y\['reg'\]` is missing; that output has a loss"),
    ],
)
def test_bad_multi_io_input_is_named(data, make, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        trainer = make(TwoInTwoOut())
        call(trainer, data)


@pytest.mark.keras
def test_two_input_two_output_model_trains_as_keras(data):
    """A Keras functional model (Masking -> LSTM -> per-step Dense "tag"; LSTM -> Concatenate(static) -> Dense
    "reg"), taken over with parity.from_keras, trained side by side with SGD, losses weighted [0.3, 2.0]: every
    epoch's loss, tag_loss and reg_loss, and the metrics, as Keras 3 logs them."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    keras = pytest.importorskip("keras")
    import parity

    seq, static, tag, reg = data
    a = keras.Input((T, F), name="seq")
    b = keras.Input((S,), name="static")
    h = keras.layers.LSTM(H, return_sequences=True, name="lstm")(keras.layers.Masking(0.0, name="masking")(a))
    o1 = keras.layers.Dense(1, activation="sigmoid", name="tag")(h)
    last = keras.layers.LSTM(3, name="lstm_2")(h)
    o2 = keras.layers.Dense(2, name="reg")(keras.layers.Concatenate(name="concatenate")([last, b]))
    k_model = keras.Model([a, b], [o1, o2])
    model = parity.from_keras(k_model)
    metrics = {"tag": ["accuracy"], "reg": ["mae"]}
    k_model.compile(keras.optimizers.SGD(0.1), loss=["binary_crossentropy", "mse"], loss_weights=[0.3, 2.0], metrics=metrics)
    k_hist = k_model.fit([seq, static], [tag, reg], batch_size=4, epochs=3, shuffle=False, verbose=0).history
    tr = jm.Trainer(model, optax.sgd(0.1), ["binary_crossentropy", "mse"], loss_weights=[0.3, 2.0], metrics=metrics)
    hist = tr.fit([seq, static], [tag, reg], batch_size=4, epochs=3, shuffle=False, verbose=0).history
    hist.pop("nonfinite_steps")
    assert set(hist) == set(k_hist) == {"loss", "tag_loss", "reg_loss", "tag_accuracy", "reg_mae"}
    for key in k_hist:
        np.testing.assert_allclose(hist[key], k_hist[key], rtol=2e-5, err_msg=key)
