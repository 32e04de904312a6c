"""Trainer end to end on the seed's task in miniature: learning, evaluate/predict against NumPy references,
callbacks, weights files, non-finite steps and the errors at the boundary."""

import io
import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxmask as jm
from tests import reference as ref
from tests.training.helpers import majority_baseline, params_of, running_sum_data, seed_model

N, T, F = 240, 12, 3


@pytest.fixture(scope="module")
def data():
    x, y, mask, lengths = running_sum_data(N, t_max=T, features=F, seed=1)
    x = np.asarray(jm.MaskedStandardScaler().fit_transform(x, mask), np.float32)
    return x, y, mask, lengths


@pytest.fixture(scope="module")
def trained(data):
    """One trained Trainer shared by the read-only tests below."""
    x, y, mask, _ = data
    trainer = jm.Trainer(seed_model(F, units=16), optax.adam(2e-2), "binary_crossentropy", metrics=["accuracy"])
    history = trainer.fit((x, mask), y, batch_size=45, epochs=12, validation_split=0.25, validation_batch_size=60, verbose=0)
    return trainer, history


def numpy_masked_bce(y, p, mask):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    per_step = -(y * np.log(p) + (1 - y) * np.log(1 - p))[..., 0]
    return per_step[mask].mean()


def test_fit_beats_majority_baseline(data, trained):
    x, y, mask, _ = data
    trainer, history = trained
    assert set(history.history) == {"loss", "accuracy", "nonfinite_steps", "val_loss", "val_accuracy"}
    assert history.epoch == list(range(12)) and all(len(v) == 12 for v in history.history.values())
    val = slice(180, None)  # validation_split takes the last quarter
    baseline = majority_baseline(y[val], mask[val])
    assert history.history["val_accuracy"][-1] > baseline + 0.15, (history.history["val_accuracy"], baseline)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_evaluate_equals_numpy_reference(data, trained):
    x, y, mask, _ = data
    trainer, _ = trained
    p = trainer.predict((x, mask), padded_value=None, batch_size=N)
    got = trainer.evaluate((x, mask), y, batch_size=N)
    np.testing.assert_allclose(got["loss"], numpy_masked_bce(y, p, mask), **ref.TOL["float32"])
    acc = ((p[..., 0] > 0.5) == (y[..., 0] > 0.5))[mask].mean()
    np.testing.assert_allclose(got["accuracy"], acc, **ref.TOL["float32"])
    # Keras' evaluate: batch losses weighted by batch size; metrics over all valid steps.
    batched = trainer.evaluate((x, mask), y, batch_size=100)
    parts = [(s, min(s + 100, N)) for s in range(0, N, 100)]
    expected = sum(numpy_masked_bce(y[a:b], p[a:b], mask[a:b]) * (b - a) for a, b in parts) / N
    np.testing.assert_allclose(batched["loss"], expected, **ref.TOL["float32"])
    np.testing.assert_allclose(batched["accuracy"], acc, **ref.TOL["float32"])


def test_predict_fill_values_and_ragged(data, trained):
    x, y, mask, lengths = data
    trainer, _ = trained
    user_mask = mask.copy()
    user_mask[0, 1] = False  # a hole mid-sequence, from the user's mask only (Masking sees valid data there)
    raw = trainer.predict((x, user_mask), padded_value=None)
    model = trainer.model
    model.eval()
    direct, _ = model(x, mask=user_mask)
    model.train()
    np.testing.assert_allclose(raw, np.asarray(direct), **ref.TOL["float32"])
    assert np.all(raw[~user_mask] != 0.0)  # Keras' carried values at padding: the seed's surprise
    zeros = trainer.predict((x, user_mask))
    nans = trainer.predict(x, mask=user_mask, padded_value=float("nan"))
    np.testing.assert_array_equal(zeros[user_mask], raw[user_mask])
    assert np.all(zeros[~user_mask] == 0.0) and np.all(np.isnan(nans[~user_mask]))
    ragged = trainer.predict((x, user_mask), ragged=True, batch_size=7)
    assert [len(r) for r in ragged] == list(user_mask.sum(1))
    assert len(ragged[0]) == lengths[0] - 1
    for i in (0, 1, N - 1):
        np.testing.assert_array_equal(ragged[i], raw[i][user_mask[i]])


def test_model_and_trainer_share_weights(data, trained):
    trainer, _ = trained
    model_params = params_of(trainer.model)
    for k, v in params_of(trainer).items():
        np.testing.assert_array_equal(model_params[k], v)


def test_weights_assigned_to_model_are_picked_up(data):
    x, y, mask, _ = data
    model = seed_model(F, units=4, dropout=0.0)
    trainer = jm.Trainer(model, optax.sgd(0.1), "binary_crossentropy")
    trainer.train_on_batch(x[:16], y[:16], mask=mask[:16])
    model.layers[3].bias[...] = np.array([5.0], np.float32)
    out = trainer.predict((x[:4], mask[:4]), padded_value=None)
    model.eval()
    np.testing.assert_allclose(out, np.asarray(model(x[:4], mask=mask[:4])[0]), **ref.TOL["float32"])
    trainer.train_on_batch(x[:16], y[:16], mask=mask[:16])
    assert abs(float(np.asarray(model.layers[3].bias[...])[0]) - 5.0) < 1.0


def test_loss_plumbing_sample_and_class_weights(data):
    """train_on_batch reports the masked, weighted loss of the batch before the update (NumPy reference)."""
    x, y, mask, _ = data
    xb, yb, mb = x[:32], y[:32], mask[:32]
    model = seed_model(F, units=8, dropout=0.0)
    trainer = jm.Trainer(model, optax.sgd(0.0), "binary_crossentropy", metrics=["accuracy"])
    p = trainer.predict((xb, mb), padded_value=None)
    pc = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    per_step = -(yb * np.log(pc) + (1 - yb) * np.log(1 - pc))[..., 0]
    sw = np.random.default_rng(0).uniform(0.5, 2.0, (32, T)).astype(np.float32)
    cw = {0: 1.0, 1: 3.0}
    w = sw * np.where(yb[..., 0] > 0.5, 3.0, 1.0)
    expected = (per_step * w)[mb].sum() / mb.sum()  # keras3: Σ w·m·l / Σ m
    logs = trainer.train_on_batch((xb, mb), yb, sample_weight=sw, class_weight=cw)
    np.testing.assert_allclose(logs["loss"], expected, **ref.TOL["float32"])
    assert logs["nonfinite_steps"] == 0
    plain = trainer.train_on_batch((xb, mb), yb)
    np.testing.assert_allclose(plain["loss"], per_step[mb].mean(), **ref.TOL["float32"])


def test_nonfinite_step_is_skipped_and_counted(data):
    x, y, mask, _ = data
    model = seed_model(F, units=8)
    trainer = jm.Trainer(model, optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    bad = x[:16].copy()
    bad[3, 1, 0] = np.nan  # a valid step (Masking: NaN != 0), so the loss is NaN
    trainer.train_on_batch((x[:16], mask[:16]), y[:16])
    before = params_of(trainer)
    opt_before = jax.device_get(trainer.state.opt_state)
    logs = trainer.train_on_batch((bad, mask[:16]), y[:16])
    assert logs["nonfinite_steps"] == 1
    for k, v in params_of(trainer).items():
        np.testing.assert_array_equal(v, before[k])
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(trainer.state.opt_state), opt_before)
    assert trainer.train_on_batch((x[:16], mask[:16]), y[:16])["nonfinite_steps"] == 0
    assert any(not np.array_equal(v, before[k]) for k, v in params_of(trainer).items())

    # In fit: the run goes on, the epoch's loss and metrics leave the skipped batch out, and it is counted.
    xs = x[:64].copy()
    xs[5, 0, 0] = np.nan
    history = trainer.fit((xs, mask[:64]), y[:64], batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert history.history["nonfinite_steps"] == [1, 1]
    assert all(np.isfinite(history.history["loss"])) and all(np.isfinite(v).all() for v in params_of(trainer).values())


def test_custom_loop_with_make_train_step_equals_fit(data):
    x, y, mask, _ = data
    fit_model, loop_model = seed_model(F, units=8), seed_model(F, units=8)
    trainer = jm.Trainer(fit_model, optax.adam(1e-2), "binary_crossentropy", seed=3, metrics=["accuracy"])
    history = trainer.fit((x[:96], mask[:96]), y[:96], batch_size=32, epochs=2, shuffle=False, verbose=0)

    ts = jm.training.make_train_step(
        loop_model, optax.adam(1e-2), "binary_crossentropy", metrics=[jm.metrics.BinaryAccuracy(name="accuracy")]
    )
    state = ts.init_state(loop_model, seed=3)
    for _ in range(2):
        state = state._replace(acc=ts.init_accumulators())
        for rows, _ in jm.training.epoch_plan(96, 32, rng=None):
            batch = {"x": x[rows], "y": y[rows], "mask": mask[rows], "sample_weight": None}
            state, logs = ts.step(state, batch)
    assert int(state.step) == 6
    np.testing.assert_allclose(float(logs["loss"]), history.history["loss"][-1], rtol=1e-6)
    np.testing.assert_allclose(float(logs["accuracy"]), history.history["accuracy"][-1], rtol=1e-6)
    nnx.update(loop_model, state.params, state.other)
    got = params_of(loop_model)
    for k, v in params_of(trainer).items():
        np.testing.assert_array_equal(got[k], v)


def test_early_stopping_restores_best_and_loggers_match_history(data, tmp_path):
    x, y, mask, _ = data
    trainer = jm.Trainer(seed_model(F, units=8), optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    snapshots = []

    class Snapshot(jm.training.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(params_of(self.trainer))

    stop = jm.training.EarlyStopping(monitor="loss", min_delta=10.0, patience=1, restore_best_weights=True)
    csv_path, json_path = tmp_path / "log.csv", tmp_path / "log.jsonl"
    bar, lines = io.StringIO(), io.StringIO()
    history = trainer.fit(
        (x[:80], mask[:80]),
        y[:80],
        batch_size=40,
        epochs=10,
        verbose=0,
        callbacks=[
            Snapshot(),
            stop,
            jm.training.CSVLogger(csv_path),
            jm.training.JSONLogger(json_path),
            jm.training.ProgressBar(file=bar, refresh_seconds=0.0),
            jm.training.ProgressBar(per_step=False, file=lines),
        ],
    )
    assert "Epoch 2/10" in bar.getvalue() and "2/2" in bar.getvalue()
    assert f"loss={history.history['loss'][1]:.4f}" in bar.getvalue() and "nonfinite_steps=0]" in bar.getvalue()
    assert "nonfinite_steps=0.0" not in bar.getvalue()
    printed = lines.getvalue().splitlines()
    assert len(printed) == 2 and printed[1].startswith("Epoch 2/10 - ")
    assert f"loss: {history.history['loss'][1]:.4f} - accuracy: {history.history['accuracy'][1]:.4f}" in printed[1]
    assert history.epoch == [0, 1]  # no improvement of 10 in epoch 1, patience 1: stop
    for k, v in params_of(trainer).items():
        np.testing.assert_array_equal(v, snapshots[0][k])
    rows = [json.loads(line) for line in open(json_path)]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert [r["loss"] for r in rows] == history.history["loss"]
    lines = open(csv_path).read().splitlines()
    assert lines[0] == "epoch,accuracy,loss,nonfinite_steps"
    assert [float(line.split(",")[2]) for line in lines[1:]] == history.history["loss"]


def test_model_checkpoint_and_load_weights(data, tmp_path):
    x, y, mask, _ = data
    trainer = jm.Trainer(seed_model(F, units=8), optax.adam(1e-2), "binary_crossentropy")
    pattern = str(tmp_path / "w-{epoch:02d}-{loss:.3f}")
    best = jm.training.ModelCheckpoint(str(tmp_path / "best"), monitor="val_loss", save_best_only=True)
    history = trainer.fit(
        (x[:80], mask[:80]),
        y[:80],
        batch_size=40,
        epochs=3,
        verbose=0,
        validation_data=((x[80:120], mask[80:120]), y[80:120]),
        callbacks=[jm.training.ModelCheckpoint(pattern, monitor="loss"), best],
    )
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("w-"))
    assert names == [f"w-{e + 1:02d}-{history.history['loss'][e]:.3f}" for e in range(3)]
    fresh = seed_model(F, units=8, seed=9)
    jm.training.load_weights(fresh, tmp_path / names[2])
    for k, v in params_of(trainer).items():
        np.testing.assert_array_equal(params_of(fresh)[k], v)
    assert best.best == min(history.history["val_loss"])
    jm.training.load_weights(fresh, tmp_path / "best")
    best_epoch = int(np.argmin(history.history["val_loss"]))
    jm.training.load_weights(trainer.model, tmp_path / names[best_epoch])
    for k, v in params_of(trainer.model).items():
        np.testing.assert_array_equal(params_of(fresh)[k], v)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t, d: t.fit(d[0], d[1][:-1], verbose=0), r"`x` and `y` must hold the same number of samples"),
        (lambda t, d: t.fit(d[0], d[1][..., 0], verbose=0), r"`y_true` of binary_crossentropy must have the shape of `y_pred`.*y_true\[\.\.\., None\]"),
        (lambda t, d: t.fit(d[0], d[1][:, :5], verbose=0), r"`y` has shape \(240, 5, 1\)"),
        (lambda t, d: t.fit(d[0], d[1], batch_size=0, verbose=0), r"`batch_size` must be a positive int; received 0"),
        (lambda t, d: t.fit(d[0], d[1], validation_split=1.0, verbose=0), r"`validation_split` must be a float in \(0, 1\)"),
        (lambda t, d: t.fit(d[0], d[1], validation_split=-0.1, verbose=0), r"`validation_split` must be a float in \(0, 1\)"),
        (lambda t, d: t.fit(d[0], d[1], validation_split=0.999, verbose=0), r"leaves 0 for training and 240 for validation"),
        (lambda t, d: t.fit((d[0], d[2][:, :4]), d[1], verbose=0), r"`mask` must be bool \[N, T\] = \(240, 12\)"),
        (lambda t, d: t.fit(d[0], d[1], sample_weight=np.ones(7), verbose=0), r"`sample_weight` must be \[N\]"),
        (lambda t, d: t.fit(d[0], None, verbose=0), r"`y` is required"),
        (lambda t, d: t.fit(list(d[0][:2, :3]) + [d[0][2, :2]], [d[1][0, :3], d[1][1, :2], d[1][2, :2]], verbose=0),
         r"`y` could not be turned into one array.*same T_i as x"),
        (lambda t, d: t.fit((d[0], d[2], d[2]), d[1], verbose=0), r"must be \(x, mask\)"),
        (lambda t, d: t.fit((d[0], d[2]), d[1], mask=d[2], verbose=0), r"mask was given twice"),
        (lambda t, d: t.fit(d[0], d[1], validation_data=(d[0],), verbose=0), r"`validation_data` must be \(x_val, y_val\)"),
        (lambda t, d: t.fit(d[0], d[1], validation_data=(d[0][:5], d[1][:4]), verbose=0), r"validation_data `x` and `y`"),
        (lambda t, d: t.predict(d[0][:, :, :2]), r"LSTM\(in_features=3\) received x with 2 features"),
        (lambda t, d: t.fit(d[0], d[1], bucket_by_length=[0, 5], verbose=0), r"bucket lengths must lie in \[1, T\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(data, call, match):
    x, y, mask, _ = data
    trainer = jm.Trainer(seed_model(F, units=4), optax.sgd(0.1), "binary_crossentropy")
    with pytest.raises((ValueError, TypeError), match=match):
        call(trainer, (x, y, mask))


def test_constructor_errors():
    model = seed_model(F, units=4)
    with pytest.raises(TypeError, match=r"`optimizer` must be an optax GradientTransformation"):
        jm.Trainer(model, 3, "mse")
    with pytest.raises(ValueError, match=r"`semantics` must be one of"):
        jm.Trainer(model, optax.sgd(0.1), "mse", semantics="keras2")
    with pytest.raises(TypeError, match=r"`model` must be a Flax NNX module"):
        jm.Trainer(lambda x: x, optax.sgd(0.1), "mse")
    with pytest.raises(TypeError, match=r"`metrics` and `weighted_metrics` must be lists"):
        jm.Trainer(model, optax.sgd(0.1), "mse", metrics="accuracy")


def test_dropout_is_a_function_of_trainer_seed_and_step(data):
    """Every RNG stream is re-seeded from (Trainer seed, step): same seed, same masks, whatever key type the
    layers were built with (here rbg keys); another seed, other masks."""
    x, y, mask, _ = data
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    model = jm.nn.Sequential(
        [
            jm.nn.Masking(0.0),
            jm.nn.LSTM(F, 4, return_sequences=True, dropout=0.3, recurrent_dropout=0.3, rngs=rngs),
            jm.nn.Dropout(0.5, rngs=rngs),
            jm.nn.Dense(4, 1, activation="sigmoid", rngs=rngs),
        ]
    )
    losses = []
    for seed in (1, 1, 2):
        trainer = jm.Trainer(nnx.clone(model), optax.sgd(0.1), "binary_crossentropy", seed=seed)
        losses.append([trainer.train_on_batch((x[:16], mask[:16]), y[:16])["loss"] for _ in range(3)])
    assert losses[0] == losses[1]
    assert losses[0][0] != losses[2][0]
    assert len(set(losses[0])) == 3
