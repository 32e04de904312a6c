"""The seed's architecture trained by jm.Trainer follows Keras 3's loss trajectory: same initial weights,
same batches, plain SGD, no dropout (rate 0), 20 steps."""

import os

import numpy as np
import optax
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

import jaxmask as jm  # noqa: E402
from tests.training.helpers import running_sum_data, seed_model  # noqa: E402

pytestmark = pytest.mark.keras

T, F, H, BS, STEPS, LR = 20, 4, 100, 16, 20, 0.5


def keras_seed_model(jm_model):
    """The seed's Keras model, with the jaxmask model's weights copied by name (Keras layouts are the same)."""
    model = keras.Sequential(
        [
            keras.Input((T, F)),
            keras.layers.Masking(mask_value=0.0),
            keras.layers.LSTM(H, return_sequences=True),
            keras.layers.Dropout(0.0),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    lstm, dense = jm_model.layers[1], jm_model.layers[3]
    model.layers[1].set_weights([np.asarray(lstm.params()[k]) for k in ("kernel", "recurrent_kernel", "bias")])
    model.layers[3].set_weights([np.asarray(dense.kernel[...]), np.asarray(dense.bias[...])])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), loss="binary_crossentropy")
    return model


def test_sgd_loss_trajectory_matches_keras3():
    x, y, mask, _ = running_sum_data(5 * BS, t_max=T, features=F, t_min=2, seed=11)
    x = np.asarray(jm.MaskedStandardScaler().fit_transform(x, mask), np.float32)
    x[0, 3] = 0.0  # a hole mid-sequence: an all-zero step inside a valid sequence, masked by Masking
    model = seed_model(F, units=H, dropout=0.0, seed=4)
    k_model = keras_seed_model(model)
    trainer = jm.Trainer(model, optax.sgd(LR), "binary_crossentropy")
    ours, theirs = [], []
    for step in range(STEPS):
        rows = slice((step % 5) * BS, (step % 5 + 1) * BS)
        ours.append(trainer.train_on_batch(x[rows], y[rows])["loss"])
        theirs.append(float(k_model.train_on_batch(x[rows], y[rows])))
    ours, theirs = np.array(ours), np.array(theirs)
    assert theirs[-1] < 0.9 * theirs[0]  # it actually learns: the comparison is not between two flat lines
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    k_lstm = model.layers[1].params()
    for got, want in zip(k_model.layers[1].get_weights(), (k_lstm["kernel"], k_lstm["recurrent_kernel"], k_lstm["bias"])):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
