"""parity.check_model on a user's model: the seed model of the issue, trained for a few steps."""

import numpy as np
import pytest

pytest.importorskip("keras")

import parity  # noqa: E402
from parity._losses import LossSpec  # noqa: E402
from parity.compare import run_model_check  # noqa: E402


def seed_model(K, T=7, F=2, H=5):
    return K.Sequential([
        K.Input((T, F)),
        K.layers.Masking(mask_value=0.0),
        K.layers.LSTM(H, return_sequences=True),
        K.layers.Dropout(0.5),
        K.layers.Dense(1, activation="sigmoid"),
    ])


def seed_data(B=5, T=7, F=2, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 4, 1, 0, 6])[:B]
    mask = np.arange(T)[None, :] < lengths[:, None]
    x = np.where(mask[:, :, None], rng.normal(size=(B, T, F)), 0.0).astype(np.float32)
    y = (rng.random((B, T, 1)) > 0.5).astype(np.float32)
    w = rng.uniform(0.5, 2.0, (B, T)).astype(np.float32)
    return x, y, w, mask


@pytest.mark.keras
def test_check_model_on_the_seed_model_with_training():
    import keras

    model = seed_model(keras)
    x, y, w, mask = seed_data()
    before = [v.numpy().copy() for v in model.weights]
    report = parity.check_model(model, x, y, sample_weight=w, loss="binary_crossentropy", steps=5,
                                optimizer="adam", learning_rate=0.05)
    assert report.ok and report.status == "pass", str(report)
    assert report.reference == "keras3" and report.mask_equal
    assert report.valid_diff <= 1e-5 and report.masked_diff <= 1e-5 and report.grad_diff <= 1e-4
    lstm, dense = model.layers[1].name, model.layers[3].name
    assert set(report.grad_diffs) == {f"{lstm}/lstm_cell/kernel", f"{lstm}/lstm_cell/recurrent_kernel",
                                      f"{lstm}/lstm_cell/bias", f"{dense}/kernel", f"{dense}/bias"}
    assert len(report.trajectory_keras) == 6 and report.trajectory_keras[-1] < report.trajectory_keras[0]
    np.testing.assert_allclose(report.trajectory_jax, report.trajectory_keras, rtol=1e-4)
    for v, b in zip(model.weights, before):  # the user's model is left as it was
        np.testing.assert_array_equal(v.numpy(), b)
    assert "PASS" in str(report) and report.to_dict()["status"] == "pass"


@pytest.mark.keras
def test_check_model_probe_without_targets_and_tf_keras():
    tf_keras = pytest.importorskip("tf_keras")
    x, y, w, mask = seed_data(seed=1)
    report = parity.check_model(seed_model(tf_keras), x)
    assert report.ok and report.reference == "tf_keras" and report.loss_keras > 0, str(report)
    report = parity.check_model(seed_model(tf_keras), x, y, sample_weight=w[:, 0], loss="mse")
    assert report.ok and report.deviation is None, str(report)  # tf_keras takes [B] weights per sample


@pytest.mark.keras
def test_check_model_detects_a_wrong_weight():
    import keras

    x, y, w, mask = seed_data(seed=2)
    model = seed_model(keras)
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0, 0.5, v.shape).astype(np.float32) for v in model.get_weights()])
    report = run_model_check(model, x, y, None, LossSpec("mse"), perturb=1e-2, name="perturbed")
    assert not report.ok and report.status == "mismatch"
    assert any("valid steps" in f for f in report.failures) and any(f.startswith("loss") for f in report.failures)
    assert any(f.startswith("gradient") for f in report.failures)


@pytest.mark.keras
def test_check_model_argument_errors():
    import keras

    x, y, w, mask = seed_data()
    with pytest.raises(ValueError, match="`y` and `loss` go together"):
        parity.check_model(seed_model(keras), x, y)
    with pytest.raises(ValueError, match=r"`optimizer` must be one of \[.*'adam'.*\]; received 'adamm'"):
        parity.check_model(seed_model(keras), x, optimizer="adamm")
