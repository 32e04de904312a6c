"""jm.nn.Model: functional graphs built with jm.nn.Input, their mask propagation, shared and nested layers, RNN state
wiring, and errors for bad input that name the input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import jaxmask as jm

B, T, F, H = 3, 5, 4, 6


def _x(seed=0, t=T):
    x = np.random.default_rng(seed).normal(size=(B, t, F)).astype(np.float32)
    x[1, 3:] = 0.0  # post-padded row
    x[2, :2] = 0.0  # pre-padded row
    return x


def _encoder_decoder():
    rngs = nnx.Rngs(0)
    enc_in, dec_in = jm.nn.Input((None, F), name="encoder"), jm.nn.Input((None, F), name="decoder")
    encoder = jm.nn.LSTM(F, H, return_state=True, rngs=rngs)
    decoder = jm.nn.LSTM(F, H, return_sequences=True, rngs=rngs)
    _, h, c = encoder(jm.nn.Masking()(enc_in))
    seq = decoder(jm.nn.Masking()(dec_in), initial_state=[h, c])
    head = jm.nn.Dense(H, 2, rngs=rngs)
    return jm.nn.Model([enc_in, dec_in], head(seq)), encoder, decoder, head


def test_encoder_decoder_wiring_equals_calling_the_layers():
    model, encoder, decoder, head = _encoder_decoder()
    enc, dec = _x(0), _x(1)
    y, mask = model([enc, dec])
    _, h, c = encoder(enc, mask=jm.compute_mask(enc))
    want = head(decoder(dec, mask=jm.compute_mask(dec), initial_state=[h, c]))
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask), jm.compute_mask(dec))
    same, _ = model({"decoder": dec, "encoder": enc})
    np.testing.assert_array_equal(np.asarray(same), np.asarray(y))


def test_shared_layer_shares_weights_and_nested_models():
    rngs = nnx.Rngs(1)
    inp = jm.nn.Input((None, F))
    dense = jm.nn.Dense(F, F, rngs=rngs)
    inner = jm.nn.Model(inp, dense(dense(inp)))
    outer_in = jm.nn.Input((None, F))
    outer = jm.nn.Model(outer_in, jm.nn.GlobalAveragePooling1D()(inner(jm.nn.Masking()(outer_in))))
    x = _x()
    y, mask = outer(x)
    kernel, bias = np.asarray(dense.kernel[...]), np.asarray(dense.bias[...])
    twice = (np.where(jm.compute_mask(x)[:, :, None], x, 0) @ kernel + bias) @ kernel + bias
    m = np.asarray(jm.compute_mask(x))[:, :, None]
    want = (twice * m).sum(1) / np.maximum(m.sum(1), 1)
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-5)
    assert mask is None
    assert len(jax.tree.leaves(nnx.state(outer, nnx.Param))) == 2  # one kernel, one bias


def test_model_runs_under_jit_with_one_trace():
    model, *_ = _encoder_decoder()
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def f(state, enc, dec):
        traces.append(1)
        return nnx.merge(graphdef, state)([enc, dec])[0]

    eager, _ = model([_x(0), _x(1)])
    np.testing.assert_allclose(np.asarray(f(state, _x(0), _x(1))), np.asarray(eager), atol=1e-6)
    f(state, _x(2), _x(3))
    assert len(traces) == 1


def test_bad_input_names_the_input():
    model, *_ = _encoder_decoder()
    with pytest.raises(ValueError, match=r"the model has 2 inputs \['encoder', 'decoder'\]; `x` holds 1 entries"):
        model([_x()])
    with pytest.raises(ValueError, match=r"`x` is a dict with keys \['decoder', 'encodr'\]; the model's inputs are "
                                         r"\['encoder', 'decoder'\]"):
        model({"encodr": _x(), "decoder": _x()})
    with pytest.raises(ValueError, match=r"input 'decoder' must have shape \[B, \?, 4\]; received shape \(3, 5, 2\)"):
        model([_x(), _x()[:, :, :2]])
    with pytest.raises(ValueError, match=r"`mask\['encoder'\]` must be a \[B, T\] array matching the input's \(B, T\) "
                                         r"= \(3, 5\); received shape \(3, 4\)"):
        model([_x(), _x()], mask=[np.ones((B, 4), bool), None])
    with pytest.raises(ValueError, match=r"pass `x` as a list in that order or a dict"):
        model(_x())


def test_int_input_to_an_rnn_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"LSTM: `x` must hold floating-point values.*received dtype int32.*Embedding"):
        jm.nn.LSTM(F, H, rngs=nnx.Rngs(0))(np.ones((B, T, F), np.int32))


def test_disconnected_graph_and_bad_arguments_are_refused():
    a, b = jm.nn.Input((None, F), name="a"), jm.nn.Input((None, F), name="b")
    out = jm.nn.Dense(F, 1, rngs=nnx.Rngs(0))(b)
    with pytest.raises(ValueError, match=r"depends on an Input 'b' that is not in `inputs` \(graph disconnected"):
        jm.nn.Model(a, out)
    with pytest.raises(TypeError, match=r"`outputs` must be a KerasTensor"):
        jm.nn.Model(a, np.zeros(3))
    with pytest.raises(ValueError, match=r"Dense called on shape \(None, None, 4\) float32: .*last axis must be 7"):
        jm.nn.Dense(7, 1, rngs=nnx.Rngs(0))(a)
