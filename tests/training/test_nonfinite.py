"""Non-finite steps: an Inf/NaN gradient with a finite loss is skipped and counted, and training goes on; the
opt-in ``debug_nans`` reports NaN/Inf at valid positions (batch, sample, step) before the step runs and never
reports padding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxmask as jm
from tests.training.helpers import params_of, running_sum_data, seed_model

N, T, F = 64, 8, 3


@pytest.fixture(scope="module")
def data():
    x, y, mask, _ = running_sum_data(N, t_max=T, features=F, seed=4)
    return x, y, mask


@jax.custom_vjp
def _spiky(y_pred, y_true):
    return y_pred


def _spiky_fwd(y_pred, y_true):
    return y_pred, y_true


def _spiky_bwd(y_true, g):
    """Gradient Inf whenever a label 2 is in the batch; the value is untouched."""
    return jnp.where(jnp.any(y_true > 1.5), jnp.inf, 1.0) * g, jnp.zeros_like(y_true)


_spiky.defvjp(_spiky_fwd, _spiky_bwd)


def finite_loss_inf_gradient(y_true, y_pred):
    """Squared error against min(y, 1): finite for every label; its gradient is Inf for batches with a label 2."""
    return jnp.mean((jnp.minimum(y_true, 1.0) - _spiky(y_pred, y_true)) ** 2, axis=-1)


def test_inf_gradient_with_finite_loss_is_skipped_counted_and_training_goes_on(data):
    x, y, mask = data
    trainer = jm.Trainer(seed_model(F, units=4), optax.adam(1e-2), finite_loss_inf_gradient)
    good = trainer.train_on_batch((x[:16], mask[:16]), y[:16])
    assert good["nonfinite_steps"] == 0 and np.isfinite(good["loss"])
    before, opt_before, step_before = params_of(trainer), jax.device_get(trainer.state.opt_state), trainer.global_step

    spiked = y[:16].copy()
    spiked[2, 0, 0] = 2.0  # a valid step: the loss stays finite, the gradient is Inf
    logs = trainer.train_on_batch((x[:16], mask[:16]), spiked)
    assert logs["nonfinite_steps"] == 1
    assert trainer.global_step == step_before + 1  # the step counter advances (dropout keys stay aligned)
    for k, v in params_of(trainer).items():
        np.testing.assert_array_equal(v, before[k])
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(trainer.state.opt_state), opt_before)

    # In fit: every epoch skips the one spiked batch (shuffle=False: samples 16..31), counts it, and learns.
    ys = y.copy()
    ys[20, 0, 0] = 2.0
    history = trainer.fit((x, mask), ys, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert history.history["nonfinite_steps"] == [1, 1, 1]
    assert all(np.isfinite(history.history["loss"]))
    after = params_of(trainer)
    assert all(np.isfinite(v).all() for v in after.values())
    assert any(not np.array_equal(after[k], before[k]) for k in before)


def test_debug_nans_names_batch_and_valid_positions_before_the_step(data):
    x, y, mask = data
    bad = x.copy()
    bad[37, 2, 1] = np.nan  # sample 37, step 2 (valid): with batch_size 16 and no shuffle, batch 2
    bad[41, 5, 0] = np.inf
    assert mask[37, 2] and mask[41, 5]
    trainer = jm.Trainer(seed_model(F, units=4), optax.adam(1e-2), "binary_crossentropy", debug_nans=True)
    with pytest.raises(ValueError, match=r"debug_nans: batch 2 of epoch 0 holds NaN or Inf at valid positions, so "
                                         r"its loss or gradients would be non-finite: `x` at \(sample, step\) "
                                         r"\(37, 2\), \(41, 5\)\. Samples are rows"):
        trainer.fit((bad, mask), y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert trainer.global_step == 2  # batches 0 and 1 ran; batch 2 never did
    assert all(np.isfinite(v).all() for v in params_of(trainer).values())

    with pytest.raises(ValueError, match=r"train_on_batch holds NaN or Inf .* `x` at \(sample, step\) \(5, 2\), \(9, 5\)"):
        trainer.train_on_batch((bad[32:48], mask[32:48]), y[32:48])

    labels = y.copy()
    labels[3, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch 0 of epoch 0 .* `y` at \(sample, step\) \(3, 1\)\."):
        trainer.fit((x, mask), labels, batch_size=16, epochs=1, shuffle=False, verbose=0)

    # Without debug_nans the same batch is a skipped, counted step.
    plain = jm.Trainer(seed_model(F, units=4), optax.adam(1e-2), "binary_crossentropy")
    assert plain.train_on_batch((bad[32:48], mask[32:48]), y[32:48])["nonfinite_steps"] == 1


def test_debug_nans_ignores_padding(data):
    """NaN/Inf/1e30 at padded steps (by the mask the model uses) and in padded labels: no report, finite steps."""
    x, y, mask = data
    dirty, labels = x.copy(), y.copy()
    pad = ~mask
    dirty[pad] = np.nan
    dirty[pad & (np.arange(T)[None, :] % 2 == 0)] = np.inf
    labels[pad] = np.nan
    rngs = nnx.Rngs(0)
    model = jm.nn.Sequential([jm.nn.LSTM(F, 4, return_sequences=True, rngs=rngs),
                              jm.nn.Dense(4, 1, activation="sigmoid", rngs=rngs)])  # the user's mask is the mask
    trainer = jm.Trainer(model, optax.adam(1e-2), "binary_crossentropy", debug_nans=True)
    history = trainer.fit((dirty, mask), labels, batch_size=16, epochs=2, verbose=0)
    assert history.history["nonfinite_steps"] == [0, 0] and all(np.isfinite(history.history["loss"]))
    assert trainer.train_on_batch((dirty[:16], mask[:16]), labels[:16])["nonfinite_steps"] == 0

    # With Masking first, the model's mask is Masking's: zero steps are padding, whatever the mask passed says,
    # and a NaN step is valid (NaN != 0), so it is reported even where the passed mask says "padding".
    masked_model = jm.Trainer(seed_model(F, units=4), optax.adam(1e-2), "binary_crossentropy", debug_nans=True)
    zeros = x * mask[:, :, None]
    assert masked_model.train_on_batch((zeros[:16], mask[:16]), labels[:16])["nonfinite_steps"] == 0
    row, step = np.argwhere(pad[:16])[0]
    leaky = zeros[:16].copy()
    leaky[row, step, 0] = np.nan
    with pytest.raises(ValueError, match=rf"`x` at \(sample, step\) \({row}, {step}\)\. .*counts a step with a NaN"):
        masked_model.train_on_batch((leaky, mask[:16]), labels[:16])
    unchecked = jm.Trainer(seed_model(F, units=4), optax.adam(1e-2), "binary_crossentropy")
    assert unchecked.train_on_batch((leaky, mask[:16]), labels[:16])["nonfinite_steps"] == 1
