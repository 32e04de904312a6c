"""The Trainer's fast path: ``steps_per_execution`` is bit-identical to single steps, logs stay on the device
until read and then give the values a NumPy reference gives, nothing is traced twice, and the user's model holds
the trained weights without copies."""

import time
from collections.abc import Mapping

import jax
import numpy as np
import optax
import pytest

import jaxmask as jm
from jaxmask.training import _trainer
from tests import reference as ref
from tests.training.helpers import params_of, running_sum_data, seed_model

N, T, F = 100, 12, 3


@pytest.fixture(scope="module")
def data():
    x, y, mask, _ = running_sum_data(N, t_max=T, features=F, seed=4)
    return x, y, mask


class Recorder(jm.training.Callback):
    """Every batch's logs as a plain dict, and the global step seen at each hook."""

    def __init__(self):
        super().__init__()
        self.logs, self.begins = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append((batch, self.trainer.global_step, dict(logs)))


def fit(data, k, epochs=2, batch_size=16, callbacks=(), validation=False):
    x, y, mask = data
    model = seed_model(F, units=8, dropout=0.5)  # dropout: the masks must follow (seed, step) in a scan too
    trainer = jm.Trainer(model, optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"], seed=5,
                         steps_per_execution=k)
    rec = Recorder()
    history = trainer.fit((x, mask), y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[rec, *callbacks],
                          validation_data=((x[:40], mask[:40]), y[:40]) if validation else None)
    return trainer, history, rec


def assert_same_run(a, b):
    (ta, ha, ra), (tb, hb, rb) = a, b
    assert ha.history == hb.history
    assert ra.logs == rb.logs and ra.begins == rb.begins
    pa, pb = params_of(ta), params_of(tb)
    for key, value in pa.items():
        np.testing.assert_array_equal(value, pb[key])
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(ta.state.opt_state),
                           jax.device_get(tb.state.opt_state))
    assert ta.global_step == tb.global_step == int(ta.state.step)


@pytest.fixture(scope="module")
def single(data):
    return fit(data, 1, validation=True)


@pytest.mark.parametrize("k", [4, pytest.param(6, marks=pytest.mark.slow), pytest.param(10, marks=pytest.mark.slow)])
def test_steps_per_execution_is_bit_identical_to_single_steps(data, single, k):
    """N = 100, batch 16: 6 full batches and one of 4. k = 4: one scan, two single steps; k = 6: one scan;
    k = 10 > 6: single steps only. Then the partial batch alone. Parameters, optimizer state, epoch logs and
    every batch's logs (as the callbacks see them, per step) are equal bit for bit, dropout included."""
    grouped = fit(data, k, validation=True)
    assert_same_run(single, grouped)
    assert [b for b, _, _ in grouped[2].logs] == list(range(7)) * 2
    assert [s for _, s, _ in grouped[2].logs] == list(range(1, 15))


def test_steps_per_execution_evaluate_and_predict_match(data, single):
    x, y, mask = data
    trainer = single[0]
    grouped = jm.Trainer(trainer.model, optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"],
                         steps_per_execution=4)
    assert grouped.evaluate((x, mask), y, batch_size=16) == trainer.evaluate((x, mask), y, batch_size=16)
    np.testing.assert_array_equal(grouped.predict((x, mask), batch_size=8), trainer.predict((x, mask), batch_size=8))


def test_groups_end_at_save_points():
    """A scan never runs past a step where a callback saves the state (ModelCheckpoint / BackupAndRestore with
    an int save_freq): there the state is exactly that step's."""
    groups = _trainer._groups
    assert list(groups(10, 4)) == [(0, 4), (4, 4), (8, 1), (9, 1)]
    assert list(groups(10, 4, first=3)) == [(3, 4), (7, 1), (8, 1), (9, 1)]
    assert list(groups(12, 4, 0, 0, (8,))) == [(0, 4), (4, 4), (8, 4)]
    assert list(groups(12, 4, 0, 1, (8,))) == [(0, 4), (4, 1), (5, 1), (6, 1), (7, 4), (11, 1)]
    assert list(groups(9, 4, 0, 2, (4,))) == [(0, 1), (1, 1), (2, 4), (6, 1), (7, 1), (8, 1)]
    assert list(groups(6, 2, 0, 0, (3,))) == [(0, 2), (2, 1), (3, 2), (5, 1)]


def test_checkpoints_inside_groups_see_their_own_step(data, tmp_path):
    """ModelCheckpoint(save_freq=4) with steps_per_execution=4 writes the weights of steps 4, 8, 12 exactly as
    single steps do (the groups are cut at the save points: 7 batches per epoch, saves across epochs)."""
    runs = []
    for k in (1, 4):
        ckpt = jm.training.ModelCheckpoint(str(tmp_path / f"k{k}" / "s{batch}-e{epoch}"), save_freq=4)
        runs.append(fit(data, k, callbacks=[ckpt]))
    assert_same_run(*runs)
    names = sorted(p.name for p in (tmp_path / "k1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "k4").iterdir()) and len(names) == 3
    for name in names:
        a, b = seed_model(F, units=8), seed_model(F, units=8)
        jm.training.load_weights(a, tmp_path / "k1" / name)
        jm.training.load_weights(b, tmp_path / "k4" / name)
        for key, value in params_of(a).items():
            np.testing.assert_array_equal(value, params_of(b)[key])


@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_batches_placed_one_by_one_give_the_same_run(data, single, monkeypatch, k):
    """Arrays above DEVICE_DATA_BYTES go to the device batch by batch (k = 4: four host batches stacked per call):
    same numbers as the on-device gather."""
    monkeypatch.setattr(_trainer, "DEVICE_DATA_BYTES", 0)
    assert_same_run(single, fit(data, k, validation=True))


def test_steps_per_execution_is_checked():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"`steps_per_execution` must be a positive int; received"):
            jm.Trainer(seed_model(F, units=4), optax.sgd(0.1), "mse", steps_per_execution=bad)


def numpy_masked_bce(y, p, mask):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    per_step = -(y * np.log(p) + (1 - y) * np.log(1 - p))[..., 0]
    return per_step[mask].mean()


def test_lazy_logs_read_like_a_dict_of_numbers(data):
    """train_on_batch's logs are a read-only Mapping: keys without a fetch, values as Python floats / ints equal
    to a NumPy reference of the batch's loss and accuracy before the update."""
    x, y, mask = data
    xb, yb, mb = x[:32], y[:32], mask[:32]
    trainer = jm.Trainer(seed_model(F, units=8, dropout=0.0), optax.sgd(0.5), "binary_crossentropy",
                         metrics=["accuracy"])
    p = trainer.predict((xb, mb), padded_value=None)
    logs = trainer.train_on_batch((xb, mb), yb)
    assert isinstance(logs, Mapping) and isinstance(logs, jm.training.Logs)
    assert list(logs) == ["loss", "accuracy", "nonfinite_steps"] and len(logs) == 3 and "loss" in logs  # Keras' order
    assert logs._values is None  # nothing read yet: the step may still be running
    assert isinstance(logs["loss"], float) and isinstance(logs["nonfinite_steps"], int)
    np.testing.assert_allclose(logs["loss"], numpy_masked_bce(yb, p, mb), **ref.TOL["float32"])
    acc = ((p[..., 0] > 0.5) == (yb[..., 0] > 0.5))[mb].mean()
    np.testing.assert_allclose(logs["accuracy"], acc, **ref.TOL["float32"])
    plain = dict(logs)
    assert type(plain) is dict and logs == plain and plain == logs and repr(logs) == repr(plain)
    assert logs["nonfinite_steps"] == 0
    with pytest.raises(TypeError):
        logs["loss"] = 1.0


def test_per_step_logs_share_one_fetch():
    stacked = {"loss": jax.numpy.asarray([0.5, 0.25, 0.125]), "nonfinite_steps": jax.numpy.asarray([0, 1, 1])}
    views = jm.training.Logs.per_step(stacked, 3)
    assert [dict(v) for v in views] == [
        {"loss": 0.5, "nonfinite_steps": 0}, {"loss": 0.25, "nonfinite_steps": 1}, {"loss": 0.125, "nonfinite_steps": 1}
    ]
    assert views[0]._source is views[2]._source and views[0]._source.device is None


def test_no_retracing_across_calls(data):
    x, y, mask = data
    trainer = jm.Trainer(seed_model(F, units=8), optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"],
                         steps_per_execution=2)
    trainer.train_on_batch((x[:16], mask[:16]), y[:16])
    trainer.fit((x, mask), y, batch_size=16, epochs=1, verbose=0)
    trainer.evaluate((x, mask), y, batch_size=16)
    trainer.predict((x, mask), batch_size=16)
    warm = dict(trainer.trace_counts)
    for _ in range(3):
        trainer.train_on_batch((x[16:32], mask[16:32]), y[16:32])
    trainer.fit((x, mask), y, batch_size=16, epochs=2, verbose=0)
    trainer.evaluate((x, mask), y, batch_size=16)
    trainer.predict((x, mask), batch_size=16)
    assert trainer.trace_counts == warm


def test_model_holds_the_trained_arrays_without_copies(data):
    """After train_on_batch the user's model holds the Trainer's own arrays; inside fit a callback reading
    ``self.model`` gets the weights of the step just run; a weight assigned between calls is adopted alone."""
    x, y, mask = data
    model = seed_model(F, units=8)
    trainer = jm.Trainer(model, optax.adam(1e-2), "binary_crossentropy")
    trainer.train_on_batch((x[:16], mask[:16]), y[:16])
    kernel = trainer.state.params["layers"][1]["kernel"]
    assert model.layers[1].kernel.get_raw_value() is kernel.get_raw_value()

    seen = []

    class ReadModel(jm.training.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((np.asarray(self.model.layers[3].bias.get_raw_value()),
                         np.asarray(jax.device_get(self.trainer.state.params["layers"][3]["bias"].get_raw_value()))))

    trainer.fit((x, mask), y, batch_size=50, epochs=1, verbose=0, callbacks=[ReadModel()])
    assert len(seen) == 2 and all(np.array_equal(a, b) for a, b in seen)

    before = params_of(trainer)
    model.layers[3].bias[...] = np.array([3.0], np.float32)
    trainer.evaluate((x, mask), y)
    after = params_of(trainer)
    for key, value in before.items():
        if key.startswith("['layers'][3]['bias']"):
            np.testing.assert_array_equal(after[key], [3.0])
        else:
            np.testing.assert_array_equal(after[key], value)


@pytest.mark.slow
def test_train_on_batch_overhead_is_small(data):
    """Loose: 50 train_on_batch calls cost at most 1.3x 50 raw compiled steps on the same batch (medians of
    alternated rounds; the README's benchmark measures the seed shape precisely)."""
    x, y, mask = data
    trainer = jm.Trainer(seed_model(F, units=32), optax.adam(1e-3), "binary_crossentropy")
    trainer.train_on_batch((x, mask), y)
    ts = trainer._base
    state = ts.init_state(seed_model(F, units=32))
    batch = jax.device_put({"x": x, "y": y, "mask": mask, "sample_weight": None})
    state, logs = ts.step(state, batch)
    jax.block_until_ready(logs)

    def raw():
        nonlocal state
        for _ in range(50):
            state, logs = ts.step(state, batch)
        jax.block_until_ready(logs)

    def api():
        for _ in range(50):
            logs = trainer.train_on_batch((x, mask), y)
        logs["loss"]

    rounds = {raw: [], api: []}
    for _ in range(5):
        for fn, times in rounds.items():
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    assert np.median(rounds[api]) <= 1.3 * np.median(rounds[raw]), rounds
