"""Stateful RNNs: the final state of each call is the next call's initial state, row by row, and under a mask
it is the state after each row's last valid step — so a long sequence fed in chunks (streaming inference)
gives exactly what one call on the whole sequence gives, whatever the mask does at chunk boundaries."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import jaxmask as jm

B, T, F, H, CHUNK = 4, 12, 3, 5, 4
# row 0 full, row 1 ends mid-chunk (7), row 2 pre-padded (starts mid-chunk), row 3 has holes across a boundary
MASK = np.ones((B, T), bool)
MASK[1, 7:] = False
MASK[2, :5] = False
MASK[3, [3, 4, 8]] = False


def _x():
    x = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    return np.where(MASK[:, :, None], x, 0.0).astype(np.float32)


def _layer(kind, stateful, seed=0, **kw):
    return getattr(jm.nn, kind)(F, H, return_sequences=True, stateful=stateful, batch_size=B if stateful else None,
                                rngs=nnx.Rngs(seed), **kw)


def _whole_and_chunks(layer, whole_layer, x, call=lambda layer, x, m: layer(x, mask=m)):
    whole = np.asarray(call(whole_layer, x, MASK))
    chunks = [np.asarray(call(layer, x[:, i: i + CHUNK], MASK[:, i: i + CHUNK])) for i in range(0, T, CHUNK)]
    return whole, np.concatenate(chunks, axis=1)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_chunks_equal_one_call_on_the_whole(kind):
    """Every step, masked ones included, with ``initial_output="initial_state"`` (a chunk's leading masked steps
    repeat the carried output); valid steps with the default (Keras' TF backend outputs 0 there)."""
    x = _x()
    stateful, plain = _layer(kind, True, initial_output="initial_state"), _layer(kind, False)
    whole, streamed = _whole_and_chunks(stateful, plain, x)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    default = _layer(kind, True)
    whole, streamed = _whole_and_chunks(default, plain, x)
    np.testing.assert_allclose(streamed[MASK], whole[MASK], atol=1e-6)
    # the carried state is the whole sequence's final state (after each row's last valid step)
    final = plain.__class__(F, H, return_state=True, rngs=nnx.Rngs(0))(x, mask=MASK)[1:]
    np.testing.assert_allclose(np.asarray(stateful.states[...]), np.stack([np.asarray(s) for s in final]),
                               atol=1e-6)


def test_state_is_carried_inside_jit_and_reset_zeroes_it():
    x = _x()
    layer, plain = _layer("LSTM", True, initial_output="initial_state"), _layer("LSTM", False)
    graphdef, state = nnx.split(layer)

    @jax.jit
    def step(state, x, m):
        module = nnx.merge(graphdef, state)
        y = module(x, mask=m)
        return nnx.state(module), y

    chunks = []
    for i in range(0, T, CHUNK):
        state, y = step(state, x[:, i: i + CHUNK], MASK[:, i: i + CHUNK])
        chunks.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), np.asarray(plain(x, mask=MASK)), atol=1e-6)
    nnx.update(layer, state)
    assert np.abs(np.asarray(layer.states[...])).max() > 0
    layer.reset_states()
    np.testing.assert_array_equal(np.asarray(layer.states[...]), 0.0)
    np.testing.assert_allclose(np.asarray(layer(x, mask=MASK)), np.asarray(plain(x, mask=MASK)), atol=1e-6)


def test_fully_masked_chunk_keeps_the_state():
    layer = _layer("GRU", True)
    x = _x()
    layer(x[:, :CHUNK], mask=MASK[:, :CHUNK])
    before = np.asarray(layer.states[...])
    layer(x[:, CHUNK:2 * CHUNK], mask=np.zeros((B, CHUNK), bool))
    np.testing.assert_array_equal(np.asarray(layer.states[...]), before)


def test_stateful_in_a_model_and_model_reset_states():
    x = _x()
    inp = jm.nn.Input((None, F), batch_size=B)
    out = jm.nn.Dense(H, 2, rngs=nnx.Rngs(1))(_layer("LSTM", True)(jm.nn.Masking()(inp)))
    model = jm.nn.Model(inp, out)
    first, _ = model(x[:, :CHUNK])
    second, _ = model(x[:, :CHUNK])
    assert not np.allclose(np.asarray(first), np.asarray(second))  # the state moved on
    model.reset_states()
    again, _ = model(x[:, :CHUNK])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))


def test_bad_stateful_arguments():
    with pytest.raises(ValueError, match=r"`stateful=True` needs the fixed batch size.*batch_size=None"):
        jm.nn.LSTM(F, H, stateful=True, rngs=nnx.Rngs(0))
    layer = _layer("LSTM", True)
    with pytest.raises(ValueError, match=r"batch_size=4\) received a batch of 2 rows"):
        layer(_x()[:2])
    with pytest.raises(ValueError, match=r"reset_states\(\) needs stateful=True"):
        _layer("LSTM", False).reset_states()


@pytest.mark.keras
@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_streaming_matches_keras_stateful(flavor):
    import parity

    K = pytest.importorskip("keras" if flavor == "keras3" else "tf_keras")
    inp = K.Input(batch_shape=(B, None, F))
    x_sym = K.layers.Masking()(inp)
    seq = K.layers.LSTM(H, stateful=True, return_sequences=True)(x_sym)
    bi = K.layers.Bidirectional(K.layers.GRU(H, stateful=True, return_sequences=True))(seq)
    model = K.Model(inp, bi)
    ours = parity.from_keras(model)
    x = _x()
    for i in range(0, T, CHUNK):
        want = np.asarray(model(x[:, i: i + CHUNK]))
        got, _ = ours(x[:, i: i + CHUNK])
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, err_msg=f"chunk at {i}")
