"""Input the way users have it (issue 14 §1): small data (N < batch_size), ragged Python lists, streams of
batches (generators, PyDataset-like objects, tf.data's ``as_numpy_iterator()``) with Keras' ``steps_per_epoch``
rules, bounded compilations for batches of varying T, and a prefetch thread that overlaps a slow loader with
the step.

References: Keras 3 itself (small data, validation_split, steps per epoch), and equalities between input forms
whose padding differs (a ragged list or a stream trains exactly as the arrays padded by hand with their mask;
predictions on a ragged list equal predictions on each sequence alone, with no padding at all)."""

from __future__ import annotations

import os
import time
import warnings

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxmask as jm
from jaxmask.training import padded_length
from tests.training.helpers import params_of, running_sum_data, seed_model

F = 3


def keras_or_skip():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    return pytest.importorskip("keras")


def trainer(units=4, lr=0.1, seed=0, **kw):
    return jm.Trainer(seed_model(F, units=units, dropout=0.0, seed=seed), optax.sgd(lr), "binary_crossentropy",
                      metrics=["accuracy"], **kw)


@pytest.fixture(scope="module")
def shared():
    """One Trainer for the module (its compiled steps are reused across tests: compilations dominate the run
    time), with the model's initial weights to go back to."""
    tr = trainer()
    _, params, _, other = nnx.split(tr.model, nnx.Param, nnx.RngState, ...)
    return tr, jax.device_get((params, other))


def fresh(shared):
    """The shared Trainer as a new one: initial weights (plain SGD keeps no optimizer state; no dropout)."""
    tr, weights = shared
    if tr.state is not None:
        tr.set_weights(weights)
    return tr


def assert_same_params(a, b, tol=1e-6):
    pa, pb = (v if isinstance(v, dict) else params_of(v) for v in (a, b))
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=tol, atol=tol, err_msg=k)


class StepCounter(jm.training.Callback):
    def __init__(self):
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


@pytest.fixture(scope="module")
def data():
    x, y, mask, lengths = running_sum_data(24, t_max=12, t_min=2, seed=3)
    x[5, 1] = 0.0  # a hole mid-sequence: Masking masks it, a ragged list keeps it as a step
    mask[5, 1] = False
    return x, y, mask, lengths


# ------------------------------------------------------------------------------------------ small data


@pytest.mark.keras
def test_fewer_samples_than_batch_size_is_one_batch_as_keras(data, shared):
    """N = 4 < batch_size = 32: Keras trains one batch of 4 per epoch, evaluates and predicts them, and
    validation_split=0.1 holds out N - floor(N·0.9) = 1 sample. Same weights, same numbers here."""
    keras = keras_or_skip()
    import parity

    x, y, mask, _ = data
    x4, y4 = x[:4], y[:4]
    tr = fresh(shared)
    k_model = parity.to_keras(tr.model)
    k_model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    k_hist = k_model.fit(x4, y4, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    start = tr.global_step
    hist = tr.fit(x4, y4, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    assert tr.global_step == start + 2
    np.testing.assert_allclose(hist["loss"], k_hist["loss"], rtol=1e-5)
    k_eval = k_model.evaluate(x4, y4, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(tr.evaluate(x4, y4, batch_size=32)["loss"], k_eval["loss"], rtol=1e-5)
    np.testing.assert_allclose(tr.predict(x4, batch_size=32, padded_value=None), k_model.predict(x4, batch_size=32, verbose=0),
                               rtol=1e-5, atol=1e-6)
    k_hist = k_model.fit(x4, y4, batch_size=32, epochs=1, validation_split=0.1, shuffle=False, verbose=0).history
    hist = tr.fit(x4, y4, batch_size=32, epochs=1, validation_split=0.1, shuffle=False, verbose=0).history
    np.testing.assert_allclose([hist["loss"][0], hist["val_loss"][0]], [k_hist["loss"][0], k_hist["val_loss"][0]], rtol=1e-5)


def test_validation_split_takes_floor_of_the_training_share():
    """Keras 3: the first floor(N·(1 - split)) samples train. N = 10, split 0.25: 7 train, 3 validate (the old
    rule floor(N·split) = 2 differed)."""
    from jaxmask.training._data import ArrayData, split_validation

    d = ArrayData(np.arange(10.0)[:, None, None])
    train, val = split_validation(d, 0.25)
    assert (train.n, val.n) == (7, 3)
    with pytest.raises(ValueError, match=r"leaves 0 for training and 3 for validation"):
        split_validation(ArrayData(np.zeros((3, 2, 1))), 0.9)


# ------------------------------------------------------------------------------------------ ragged lists


def test_ragged_lists_train_as_the_arrays_padded_by_hand(data, shared):
    """x, y and sample_weight as lists of [T_i, ...] arrays: the Trainer pads them at the end, masks them from the
    lengths, and trains exactly as on jm.pad_sequences(..., padding='post') + jm.lengths_to_mask."""
    x, y, _, lengths = data
    seqs = [x[i, : lengths[i]] for i in range(len(x))]
    labels = [y[i, : lengths[i]] for i in range(len(x))]
    weights = [np.linspace(0.5, 1.5, lengths[i]).astype(np.float32) for i in range(len(x))]
    t = max(lengths)
    by_hand = fresh(shared)
    xp = jm.pad_sequences(seqs, padding="post", dtype="float32")
    mp = np.asarray(jm.lengths_to_mask(lengths, t))
    yp = jm.pad_sequences(labels, padding="post", dtype="float32")
    wp = jm.pad_sequences(weights, padding="post", dtype="float32")
    h1 = by_hand.fit((xp, mp), yp, sample_weight=wp, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    p1 = params_of(by_hand)
    ragged = fresh(shared)
    h2 = ragged.fit(seqs, labels, sample_weight=weights, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-6)
    assert_same_params(ragged, p1)
    bucketed = fresh(shared)
    h3 = bucketed.fit(seqs, labels, sample_weight=weights, batch_size=8, epochs=1, shuffle=False, verbose=0,
                      bucket_by_length=[8]).history
    assert h3["padding_saved"][0] > 0


def test_predict_on_a_ragged_list_returns_each_sequence_alone(data, shared):
    """predict(list of [T_i, F]) is a list of [T_i, 1] arrays, equal to predicting each sequence on its own (no
    padding at all); a B == T case (8 sequences, longest 8) and a hole mid-sequence included."""
    x, _, _, lengths = data
    tr = fresh(shared)
    for idx in (np.arange(len(x)), np.flatnonzero(lengths <= 8)[:8]):
        seqs = [x[i, : lengths[i]] for i in idx]
        out = tr.predict(seqs, padded_value=None)
        assert isinstance(out, list) and [o.shape for o in out] == [(lengths[i], 1) for i in idx]
        for k in (0, 1, 5):  # lengths 10, 2 and 10 with a hole; then 2, 3, 2 (B == T == 8)
            s, o = seqs[k], out[k]
            alone = tr.predict(s[None], padded_value=None)[0]
            np.testing.assert_allclose(o, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_token_sequences_with_embedding_mask_zero():
    """[T_i] int token lists: padded with 0 (the Embedding's mask), trained and predicted per sequence."""
    rngs = nnx.Rngs(0)
    model = jm.nn.Sequential([jm.nn.Embedding(10, 4, mask_zero=True, rngs=rngs),
                              jm.nn.LSTM(4, 3, return_sequences=True, rngs=rngs), jm.nn.Dense(3, 1, rngs=rngs)])
    tr = jm.Trainer(model, optax.sgd(0.1), "mse")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 10, n) for n in (3, 7, 5, 2)]
    labels = [rng.normal(size=(n, 1)).astype(np.float32) for n in (3, 7, 5, 2)]
    tr.fit(seqs, labels, epochs=1, verbose=0)
    out = tr.predict(seqs)
    assert [o.shape for o in out] == [(3, 1), (7, 1), (5, 1), (2, 1)]
    np.testing.assert_allclose(out[1], tr.predict(seqs[1][None])[0], rtol=1e-5, atol=1e-6)


def test_padded_length_grid():
    """At most four lengths per doubling of T, fewer than 25% added steps beyond T = 8; given lengths win."""
    lengths = [padded_length(t) for t in range(1, 1025)]
    assert sorted(set(lengths))[:12] == [8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56]
    assert all(p >= t and (t <= 8 or p < 1.25 * t) for t, p in zip(range(1, 1025), lengths))
    assert len(set(lengths)) == 29
    assert padded_length(13, [16, 32]) == 16 and padded_length(33, [16, 32]) == 40


# ------------------------------------------------------------------------------------------ streams


def batches_of(x, y, mask, sw=None, size=8):
    """The array batches (rows in order) as stream batches (x, y, sample_weight, mask), each cut to its own
    longest valid length (so their T differ)."""
    sw = np.ones(x.shape[:2], np.float32) if sw is None else sw
    out = []
    for s in range(0, len(x), size):
        rows = slice(s, s + size)
        t = int(np.max(np.flatnonzero(mask[rows].any(0))) + 1)
        out.append((x[rows, :t], y[rows, :t], sw[rows, :t], mask[rows, :t]))
    return out


def test_streams_train_as_the_arrays(data, shared):
    """A generator, a PyDataset-like object and a list iterator of (x, y, sample_weight, mask) batches, each of
    its own T (padded by the Trainer up to padded_length), train exactly as fit on the arrays."""
    x, y, mask, _ = data
    sw = np.random.default_rng(1).uniform(0.5, 1.5, x.shape[:2]).astype(np.float32)
    ref = fresh(shared)
    h_ref = ref.fit((x, mask), y, sample_weight=sw, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    p_ref = params_of(ref)
    ev_ref = ref.evaluate((x, mask), y, sample_weight=sw, batch_size=8)["loss"]
    pred_ref = ref.predict((x, mask), batch_size=8)
    items = batches_of(x, y, mask, sw)
    assert len({b[0].shape[1] for b in items}) > 1

    class Batches:  # Keras' PyDataset protocol
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    def generator():
        yield from items

    for source, epochs in ((Batches(), 2), (generator(), 1), (iter(items), 1)):
        tr = fresh(shared)
        hist = tr.fit(source, epochs=epochs, shuffle=False, verbose=0).history
        np.testing.assert_allclose(hist["loss"], h_ref["loss"][:epochs], rtol=1e-6)
        if epochs == 2:
            assert_same_params(tr, p_ref)
            ev = tr.evaluate(Batches())
            np.testing.assert_allclose(ev["loss"], ev_ref, rtol=1e-6)
            got = tr.predict(Batches())  # concatenated, padded to the longest batch; masked steps 0
            assert got.shape == (len(x), max(b[0].shape[1] for b in items), 1)
            want = pred_ref[:, : got.shape[1]]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pydataset_batches_are_shuffled_per_epoch_and_on_epoch_end_is_called(data, shared):
    x, y, mask, _ = data
    items = batches_of(x, y, mask)
    seen, ends = [], []

    class Batches:
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            seen.append(i)
            return items[i]

        def on_epoch_end(self):
            ends.append(len(seen))

    fresh(shared).fit(Batches(), epochs=3, verbose=0)
    orders = [seen[0:3], seen[3:6], seen[6:9]]
    assert all(sorted(o) == [0, 1, 2] for o in orders) and len({tuple(o) for o in orders}) > 1
    assert ends == [3, 6, 9]


def test_steps_per_epoch_follows_keras(data, shared):
    """Keras 3 (run): a one-shot generator of 5 batches with steps_per_epoch=2 and 3 epochs gives 2, 2, 1 steps
    (the last epoch ends early with a warning); a PyDataset of 3 batches with steps_per_epoch=2 gives 2, then 1
    (then a new pass). Without steps_per_epoch each epoch is one pass."""
    items = batches_of(*data[:3])

    def generator():
        yield from items + items[:2]

    counter = StepCounter()
    with pytest.warns(UserWarning, match=r"`x` ran out of data after 1 of 2 steps of epoch 2"):
        fresh(shared).fit(generator(), steps_per_epoch=2, epochs=3, verbose=0, callbacks=[counter])
    assert counter.per_epoch == [2, 2, 1]

    class Batches:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return items[i]

    counter = StepCounter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh(shared).fit(Batches(), steps_per_epoch=2, epochs=4, shuffle=False, verbose=0, callbacks=[counter])
    assert counter.per_epoch == [2, 1, 2, 1] and len(caught) == 2
    counter = StepCounter()
    fresh(shared).fit(Batches(), epochs=2, verbose=0, callbacks=[counter])
    assert counter.per_epoch == [3, 3]


def test_validation_stream_and_validation_steps(data, shared):
    x, y, mask, _ = data
    items = batches_of(x, y, mask)

    class Batches:
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    tr = fresh(shared)
    hist = tr.fit(Batches(), validation_data=Batches(), epochs=2, verbose=0).history
    np.testing.assert_allclose(hist["val_loss"][-1], tr.evaluate((x, mask), y, batch_size=8)["loss"], rtol=1e-6)
    first = tr.evaluate(Batches(), steps=1)
    np.testing.assert_allclose(first["loss"], tr.evaluate((x[:8], mask[:8]), y[:8])["loss"], rtol=1e-6)
    gen = (b for b in items * 4)  # validation_steps: a one-shot validation generator goes on across epochs
    hist = tr.fit(Batches(), validation_data=gen, validation_steps=3, epochs=2, verbose=0).history
    assert len(hist["val_loss"]) == 2


def test_tf_data_as_numpy_iterator(data, shared):
    """tf.data's as_numpy_iterator() (a one-shot iterator of NumPy tuples) is an input like any other; jaxmask
    itself never imports TensorFlow."""
    keras_or_skip()
    tf = pytest.importorskip("tensorflow")
    x, y, mask, _ = data
    ones = np.ones(x.shape[:2], np.float32)
    ref = fresh(shared)
    h_ref = ref.fit((x, mask), y, sample_weight=ones, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    p_ref = params_of(ref)
    ds = tf.data.Dataset.from_tensor_slices((x, y, ones, mask)).batch(8)
    tr = fresh(shared)
    hist = tr.fit(ds.as_numpy_iterator(), epochs=1, verbose=0).history
    np.testing.assert_allclose(hist["loss"], h_ref["loss"], rtol=1e-6)
    assert_same_params(tr, p_ref)


def test_varying_lengths_compile_a_bounded_number_of_times():
    """20 batches with T drawn from 3..12: one compilation per padded length (8, 10, 12), not per T."""
    rng = np.random.default_rng(0)
    ts = rng.integers(3, 13, 20)
    batches = []
    for t in ts:
        x, y, _, _ = running_sum_data(8, t_max=int(t), t_min=1, seed=int(t))
        batches.append((x, y))
    tr = trainer()
    tr.fit(iter(batches), epochs=1, verbose=0)
    expected = len({padded_length(t) for t in ts})
    print(f"\n{len(set(ts.tolist()))} distinct T in 20 batches -> {tr.trace_counts['train']} compilations "
          f"(padded lengths {sorted({padded_length(t) for t in ts})})")
    assert tr.trace_counts["train"] == expected < len(set(ts.tolist()))


class Boom(RuntimeError):
    pass


def test_loader_errors_surface_at_their_batch_and_stop_training_closes_the_loader(data, shared):
    x, y, mask, _ = data
    items = batches_of(x, y, mask)
    counter = StepCounter()

    def failing():
        yield items[0]
        yield items[1]
        raise Boom("loader broke")

    with pytest.raises(Boom, match="loader broke"):
        fresh(shared).fit(failing(), epochs=1, verbose=0, callbacks=[counter])
    assert counter.per_epoch == [2]

    class StopAt(jm.training.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.trainer.stop_training = True

    def endless():
        while True:
            yield items[0]

    tr = fresh(shared)
    before, start = tr.global_step, time.perf_counter()
    tr.fit(endless(), epochs=1, verbose=0, callbacks=[StopAt()])
    assert tr.global_step == before + 2 and time.perf_counter() - start < 30


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t, g, d: t.fit(g, d[1], verbose=0), r"`y` cannot be passed when `x` is a stream of batches \(generator\)"),
        (lambda t, g, d: t.fit(g, batch_size=4, verbose=0), r"`batch_size` cannot be passed when `x` is a stream"),
        (lambda t, g, d: t.fit(g, validation_split=0.2, verbose=0), r"`validation_split` needs arrays"),
        (lambda t, g, d: t.fit(g, steps_per_epoch=0, verbose=0), r"`steps_per_epoch` must be a positive int or None; received 0"),
        (lambda t, g, d: t.fit(d[0], d[1], steps_per_epoch=2, verbose=0), r"`steps_per_epoch` is for streams of batches"),
        (lambda t, g, d: t.fit(iter([]), epochs=1, verbose=0), r"`x` gave no batch for epoch 0"),
        (lambda t, g, d: t.fit(g, epochs=2, verbose=0), r"`x` gave no batch for epoch 1 \(it gave 3 batches before\)\. A one-shot"),
        (lambda t, g, d: t.fit(iter([d[0][:4]]), verbose=0), r"batch 0 of `x` has no labels"),
        (lambda t, g, d: t.fit(iter([(d[0],) * 5]), verbose=0), r"batch 0 of `x` must be a tuple \(x,\), \(x, y\).*received a tuple of 5"),
        (lambda t, g, d: t.fit(iter([(d[0][:4], d[1][:3])]), verbose=0), r"batch 0 of `x`: `x` and `y` must hold the same number"),
        (lambda t, g, d: t.fit(iter([(d[0][:4], d[1][:4], None, d[2][:4, :5])]), verbose=0), r"batch 0 of `x`: `mask` must be bool \[N, T\] = \(4, 12\)"),
        (lambda t, g, d: t.fit((d[0], d[2]), d[1], sample_weight=np.ones(d[0].shape[:2]),
                               validation_data=iter(batches_of(*d)[:1]), epochs=2, verbose=0),
         r"`validation_data` gave no batch for epoch 1"),
        (lambda t, g, d: t.predict(g, mask=d[2]), r"`mask` cannot be passed when `x` is a stream"),
    ],
)
def test_bad_stream_input_is_named(data, shared, call, match):
    x, y, mask, _ = data
    gen = (b for b in batches_of(x, y, mask))
    with pytest.raises(ValueError, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(fresh(shared), gen, (x, y, mask))


# ------------------------------------------------------------------------------------------ prefetch


def test_prefetch_overlaps_a_slow_loader_with_the_step(data, shared):
    """A loader that sleeps as long as the consumer side of a batch takes (the compiled step, a callback reading
    its loss as a progress bar does, so the device cannot hide the loader, and a wait standing in for a longer
    step): an epoch takes about max(load, step) per batch, not their sum."""
    n_batches, wait = 10, 0.05
    items = (batches_of(*data[:3]) * 4)[:n_batches]

    class SlowStep(jm.training.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            time.sleep(wait)

    tr = fresh(shared)
    tr.fit(iter(items[:2]), epochs=1, verbose=0)  # compiled already by the tests above, else here
    start = time.perf_counter()
    tr.fit(iter(items), epochs=1, verbose=0, callbacks=[SlowStep()])
    steps = time.perf_counter() - start
    load = steps / n_batches

    def slow():
        for item in items:
            time.sleep(load)
            yield item

    start = time.perf_counter()
    tr.fit(slow(), epochs=1, verbose=0, callbacks=[SlowStep()])
    total = time.perf_counter() - start
    serial = load * n_batches + steps
    print(f"\nloader {load * 1e3:.0f} ms/batch, step {steps / n_batches * 1e3:.0f} ms/batch, {n_batches} batches: "
          f"sum {serial:.2f} s, max {max(load * n_batches, steps):.2f} s, measured {total:.2f} s")
    assert total < 0.8 * serial
