"""Length bucketing: one compilation per batch shape (none after the first epoch), the padding saved is
reported, and training equals unbucketed training on the same batches."""

import numpy as np
import optax
import pytest

import jaxmask as jm
from tests.training.helpers import params_of, running_sum_data, seed_model

N, T, BS, BOUNDS = 150, 24, 32, [8, 16, 24]


def test_bucketed_fit_compiles_per_shape_reports_padding_and_equals_unbucketed():
    x, y, mask, lengths = running_sum_data(N, t_max=T, t_min=2, seed=4)
    bucketed = jm.Trainer(seed_model(3, units=8, dropout=0.0), optax.sgd(0.5), "binary_crossentropy",
                          metrics=["accuracy"], seed=2)
    plain = jm.Trainer(seed_model(3, units=8, dropout=0.0), optax.sgd(0.5), "binary_crossentropy", seed=2)
    traces = []

    class CountTraces(jm.training.Callback):
        def on_epoch_end(self, epoch, logs=None):
            traces.append(self.trainer.trace_counts["train"])

    history = bucketed.fit((x, mask), y, batch_size=BS, epochs=3, bucket_by_length=BOUNDS, callbacks=[CountTraces()],
                           verbose=0)

    buckets = jm.training.Buckets.build(jm.training.valid_lengths(mask), BOUNDS)
    np.testing.assert_array_equal(buckets.lengths, lengths)  # post-padding: valid length = sequence length
    plans = [jm.training.epoch_plan(N, BS, rng=jm.training.epoch_rng(2, 0, e), buckets=buckets) for e in range(3)]
    shapes = [sorted((len(rows), length) for rows, length in plan) for plan in plans]
    assert shapes[0] == shapes[1] == shapes[2]  # reshuffled, same shapes
    assert traces == [len(set(shapes[0]))] * 3  # compiled once per shape, nothing after the first epoch
    assert len(set(shapes[0])) <= len(BOUNDS) + 1
    for plan in plans:
        assert sorted(np.concatenate([rows for rows, _ in plan])) == list(range(N))  # every sample once
        assert all(lengths[rows].max() <= length for rows, length in plan)  # no valid step cut off

    computed = sum(len(rows) * length for rows, length in plans[0])
    assert history.history["padding_saved"] == [pytest.approx(1 - computed / (N * T))] * 3
    assert history.history["padding_waste"] == [pytest.approx((computed - lengths.sum()) / computed)] * 3
    assert history.history["padding_saved"][0] > 0.25
    assert history.bucketing["boundaries"] == BOUNDS

    for plan in plans:  # the same batches, padded to the full T
        for rows, _ in plan:
            plain.train_on_batch((x[rows], mask[rows]), y[rows])
    got = params_of(bucketed)
    for k, v in params_of(plain).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_bucketing_needs_lengths_and_keras3_style_losses():
    x, y, mask, _ = running_sum_data(40, t_max=T, seed=5)
    no_masking = jm.nn.Sequential([jm.nn.Dense(3, 1, activation="sigmoid", rngs=__import__("flax").nnx.Rngs(0))])
    trainer = jm.Trainer(no_masking, optax.sgd(0.1), "binary_crossentropy")
    with pytest.raises(ValueError, match=r"bucket_by_length needs each sequence's length: pass mask="):
        trainer.fit(x, y, bucket_by_length=True, verbose=0)
    legacy = jm.Trainer(seed_model(3, units=4), optax.sgd(0.1), "binary_crossentropy", semantics="tf_keras_pre212")
    with pytest.raises(ValueError, match=r"would change the loss under semantics='tf_keras_pre212'"):
        legacy.fit((x, mask), y, bucket_by_length=True, verbose=0)
    default = jm.training.Buckets.build(jm.training.valid_lengths(mask), [8, 16])
    assert default.boundaries == (8, 16) and (default.assignment <= 2).all()
