"""Recurrent layers against the independent NumPy loop in tests/reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import jaxmask as jm
from jaxmask.functional import rnn as F
from tests import reference as ref

B, T, FEAT, H = 4, 7, 3, 5

PATTERNS = {
    "post": np.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5, [1] * 6 + [0]], bool),
    "pre": np.array([[1] * 7, [0] * 2 + [1] * 5, [0] * 5 + [1] * 2, [0] + [1] * 6], bool),
    "holes": np.array([[1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 1, 1, 0], [1] * 7, [1, 1, 1, 0, 1, 1, 1]], bool),
    "fully_masked_row": np.array([[1] * 7, [0] * 7, [1] * 3 + [0] * 4, [0] * 3 + [1] * 4], bool),
    "none": None,
}

LAYERS = {
    "lstm": lambda **kw: jm.nn.LSTM(FEAT, H, rngs=nnx.Rngs(0), **kw),
    "gru": lambda **kw: jm.nn.GRU(FEAT, H, rngs=nnx.Rngs(1), **kw),
    "gru_v1": lambda **kw: jm.nn.GRU(FEAT, H, reset_after=False, rngs=nnx.Rngs(2), **kw),
    "simple": lambda **kw: jm.nn.SimpleRNN(FEAT, H, rngs=nnx.Rngs(3), **kw),
}


def randomize(layer, seed):
    """Non-trivial biases so a bug in bias handling cannot hide behind Keras' zero init."""
    rng = np.random.default_rng(seed)
    for name in ("kernel", "recurrent_kernel", "bias"):
        p = getattr(layer, name)
        p[...] = jnp.asarray(rng.normal(0, 0.5, p.shape), jnp.float32)
    return layer


def params_np(layer):
    return {k: np.asarray(v) for k, v in layer.params().items()}


def data(seed=0, b=B, t=T):
    return np.random.default_rng(seed).normal(size=(b, t, FEAT)).astype(np.float32)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_sequences_match_reference(kind, pattern, go_backwards, zero_output_for_mask):
    layer = randomize(
        LAYERS[kind](return_sequences=True, go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask), 7
    )
    x, mask = data(), PATTERNS[pattern]
    y = layer(x, mask=mask)
    want, _, _ = ref.rnn(kind, params_np(layer), x, mask, go_backwards=go_backwards,
                         zero_output_for_mask=zero_output_for_mask)
    np.testing.assert_allclose(y, want, **ref.TOL["float32"])


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("pattern", ["post", "pre", "holes", "fully_masked_row"])
def test_return_state_and_initial_state(kind, pattern):
    layer = randomize(LAYERS[kind](return_state=True), 11)
    n = layer.state_size
    rng = np.random.default_rng(5)
    init = [rng.normal(size=(B, H)).astype(np.float32) for _ in range(n)]
    x, mask = data(3), PATTERNS[pattern]
    last, *states = layer(x, mask=mask, initial_state=init)
    _, want_last, want_states = ref.rnn(kind, params_np(layer), x, mask, initial_state=init)
    np.testing.assert_allclose(last, want_last, **ref.TOL["float32"])
    assert len(states) == n
    for got, want in zip(states, want_states):
        np.testing.assert_allclose(got, want, **ref.TOL["float32"])
    # the fully masked row keeps its initial state exactly
    if pattern == "fully_masked_row":
        for got, s0 in zip(states, init):
            np.testing.assert_array_equal(np.asarray(got)[1], s0[1])


def test_last_output_is_zero_with_zero_output_for_mask_and_post_padding():
    layer = randomize(LAYERS["lstm"](zero_output_for_mask=True), 1)
    y = np.asarray(layer(data(), mask=PATTERNS["post"]))
    np.testing.assert_array_equal(y[1:], 0.0)  # rows 1-3 end in padding: Keras' quirk
    assert np.all(y[0] != 0.0)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("pattern", ["post", "pre", "holes", "fully_masked_row"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_matches_reference(merge_mode, pattern, return_sequences):
    fw = randomize(LAYERS["lstm"](return_sequences=return_sequences), 1)
    bi = jm.nn.Bidirectional(fw, merge_mode=merge_mode)
    randomize(bi.backward_layer, 2)
    x, mask = data(4), PATTERNS[pattern]
    got = bi(x, mask=mask)
    want = ref.bidirectional("lstm", params_np(bi.forward_layer), params_np(bi.backward_layer), x, mask,
                             merge_mode, return_sequences)
    if merge_mode is None:
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **ref.TOL["float32"])
    else:
        np.testing.assert_allclose(got, want, **ref.TOL["float32"])


def test_bidirectional_backward_weights_are_fresh_and_return_state():
    fw = LAYERS["gru"](return_state=True)
    bi = jm.nn.Bidirectional(fw, merge_mode="sum")
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    assert not np.allclose(bi.forward_layer.kernel[...], bi.backward_layer.kernel[...])
    out, fw_h, bw_h = bi(data(), mask=PATTERNS["holes"])
    _, _, (want_fw,) = ref.rnn("gru", params_np(bi.forward_layer), data(), PATTERNS["holes"])
    _, _, (want_bw,) = ref.rnn("gru", params_np(bi.backward_layer), data(), PATTERNS["holes"], go_backwards=True)
    np.testing.assert_allclose(fw_h, want_fw, **ref.TOL["float32"])
    np.testing.assert_allclose(bw_h, want_bw, **ref.TOL["float32"])
    np.testing.assert_allclose(out, want_fw + want_bw, **ref.TOL["float32"])


@pytest.mark.parametrize("pattern", ["post", "pre", "holes"])
def test_stack_of_three_layers_via_sequential(pattern):
    rngs = nnx.Rngs(0)
    layers = [
        randomize(jm.nn.LSTM(FEAT, H, return_sequences=True, rngs=rngs), 1),
        randomize(jm.nn.GRU(H, H, return_sequences=True, rngs=rngs), 2),
        randomize(jm.nn.SimpleRNN(H, H, return_sequences=True, rngs=rngs), 3),
    ]
    x = data(8)
    mask = PATTERNS[pattern]
    x_in = np.where(mask[:, :, None], x, 0.0).astype(np.float32)
    model = jm.nn.Sequential([jm.nn.Masking(0.0), *layers])
    y, out_mask = model(x_in)
    np.testing.assert_array_equal(out_mask, mask)
    want = x_in
    for kind, layer in zip(["lstm", "gru", "simple"], layers):
        want, _, _ = ref.rnn(kind, params_np(layer), want, mask)
    np.testing.assert_allclose(y, want, **ref.TOL["float32"])


def test_batch_equal_to_time():
    layer = randomize(LAYERS["lstm"](return_sequences=True), 3)
    x = data(9, b=T, t=T)
    mask = np.tril(np.ones((T, T), bool))  # row b has b + 1 valid steps
    want, _, _ = ref.rnn("lstm", params_np(layer), x, mask)
    np.testing.assert_allclose(layer(x, mask=mask), want, **ref.TOL["float32"])


def test_initial_output_initial_state_reproduces_keras_jax_backend():
    init = [np.full((B, H), 0.25, np.float32), np.zeros((B, H), np.float32)]
    layer = randomize(LAYERS["lstm"](return_sequences=True, initial_output="initial_state"), 3)
    y = np.asarray(layer(data(), mask=PATTERNS["pre"], initial_state=init))
    np.testing.assert_array_equal(y[1, :2], 0.25)  # leading masked steps output the initial h
    layer.initial_output = "zeros"
    np.testing.assert_array_equal(np.asarray(layer(data(), mask=PATTERNS["pre"], initial_state=init))[1, :2], 0.0)


@pytest.mark.parametrize("kind", LAYERS)
def test_jit_equals_eager_and_compiles_once(kind):
    layer = randomize(LAYERS[kind](return_sequences=True), 4)
    traces = []

    @nnx.jit
    def run(layer, x, mask):
        traces.append(1)
        return layer(x, mask=mask)

    x = data()
    for pattern in ("post", "holes"):
        np.testing.assert_allclose(run(layer, x, PATTERNS[pattern]), layer(x, mask=PATTERNS[pattern]), atol=1e-6)
    assert len(traces) == 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_v1", "simple"])
def test_gradients_check_grads_float64(cell):
    make = {"lstm": F.lstm_cell, "gru": F.gru_cell, "gru_v1": lambda: F.gru_cell(reset_after=False),
            "simple": F.simple_rnn_cell}[cell]
    with jax.enable_x64(True):
        c = make()
        g = {"lstm": 4, "gru": 3, "gru_v1": 3, "simple": 1}[cell]
        rng = np.random.default_rng(0)
        bias_shape = (2, g * 2) if cell == "gru" else (g * 2,)
        params = {
            "kernel": jnp.asarray(rng.normal(0, 0.5, (FEAT, g * 2))),
            "recurrent_kernel": jnp.asarray(rng.normal(0, 0.5, (2, g * 2))),
            "bias": jnp.asarray(rng.normal(0, 0.5, bias_shape)),
        }
        x = jnp.asarray(rng.normal(size=(3, 5, FEAT)))
        mask = jnp.asarray([[1, 1, 0, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
        init = tuple(jnp.asarray(rng.normal(size=(3, 2))) for _ in c.state_names)

        def f(params, x, init):
            outputs, last, final = F.masked_scan(c, params, x, mask, init)
            return jnp.sum(outputs**2) + jnp.sum(last) + sum(jnp.sum(s * s) for s in final)

        check_grads(f, (params, x, init), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("poison", [np.nan, np.inf, 1e30])
def test_non_finite_padding_changes_nothing_bitwise(kind, poison):
    layer = randomize(LAYERS[kind](return_sequences=True), 6)
    mask = PATTERNS["holes"]
    clean = data(2) * mask[:, :, None]
    dirty = np.where(mask[:, :, None], clean, poison).astype(np.float32)
    weights = np.asarray(mask, np.float32)

    def loss(layer, x):
        y = layer(x, mask=mask)
        return jnp.sum(jnp.where(mask[:, :, None], y, 0.0) ** 2)

    def value_and_grads(x):
        value, grads = nnx.value_and_grad(loss, argnums=(0, 1))(layer, x)
        return value, jax.tree.leaves(grads)

    v_clean, g_clean = value_and_grads(clean)
    v_dirty, g_dirty = value_and_grads(dirty)
    y_clean = np.asarray(layer(clean, mask=mask)) * weights[:, :, None]
    y_dirty = np.asarray(layer(dirty, mask=mask)) * weights[:, :, None]
    np.testing.assert_array_equal(y_clean, y_dirty)
    np.testing.assert_array_equal(v_clean, v_dirty)
    for a, b in zip(g_clean, g_dirty):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape == clean.shape:  # input gradient: compare at valid steps, padded steps must be 0
            np.testing.assert_array_equal(b[~mask], 0.0)
        np.testing.assert_array_equal(a, b)


def test_dropout_training_vs_eval():
    layer = LAYERS["lstm"](return_sequences=True, dropout=0.5, recurrent_dropout=0.3)
    x = data()
    a, b = layer(x), layer(x)
    assert not np.allclose(a, b)  # fresh masks per call in training mode
    layer.eval()
    np.testing.assert_array_equal(layer(x), layer(x))
    layer.dropout = layer.recurrent_dropout = 0.0
    np.testing.assert_array_equal(layer(x), jm.nn.LSTM(FEAT, H, return_sequences=True, rngs=nnx.Rngs(0))(x))


def test_keras_default_initialisers():
    layer = jm.nn.LSTM(FEAT, 64, rngs=nnx.Rngs(0))
    u = np.asarray(layer.recurrent_kernel[...])
    np.testing.assert_allclose(u @ u.T, np.eye(64), atol=1e-5)  # orthogonal rows
    limit = np.sqrt(6.0 / (FEAT + 4 * 64))
    k = np.asarray(layer.kernel[...])
    assert k.min() >= -limit and k.max() <= limit and k.std() > limit / 3
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), np.r_[np.zeros(64), np.ones(64), np.zeros(128)])
    assert jm.nn.GRU(FEAT, 8, rngs=nnx.Rngs(0)).bias.shape == (2, 24)
    assert jm.nn.GRU(FEAT, 8, reset_after=False, rngs=nnx.Rngs(0)).bias.shape == (24,)


def test_hard_sigmoid_definitions():
    x = jnp.asarray([-4.0, -2.5, -1.0, 0.0, 1.0, 2.5, 4.0])
    np.testing.assert_allclose(F.get_activation("hard_sigmoid")(x), np.clip((x + 3) / 6, 0, 1), atol=1e-7)
    np.testing.assert_allclose(F.get_activation("hard_sigmoid_legacy")(x), np.clip(0.2 * x + 0.5, 0, 1), atol=1e-7)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_messages():
    layer = LAYERS["lstm"](return_sequences=True)
    x = data()
    with pytest.raises(ValueError, match=r"`mask` must be a \[B, T\] array matching the input's \(B, T\) = \(4, 7\); received shape \(4, 6\)"):
        layer(x, mask=np.ones((4, 6), bool))
    with pytest.raises(TypeError, match=r"`mask` must be bool .*received dtype <U1"):
        layer(x, mask=np.full((4, 7), "a"))
    with pytest.raises(ValueError, match=r"`x` must have rank 3 with layout \[B, T, F\]; received shape \(4, 7\)"):
        layer(x[..., 0])
    with pytest.raises(ValueError, match=r"LSTM\(in_features=3\) received x with 5 features"):
        layer(np.zeros((4, 7, 5), np.float32))
    with pytest.raises(ValueError, match=r"ragged list of sequences .* jm.pad_sequences"):
        layer([np.zeros((3, FEAT)), np.zeros((5, FEAT))])
    with pytest.raises(ValueError, match=r"`activation` must be one of .*received 'tanhh'"):
        jm.nn.LSTM(FEAT, H, activation="tanhh", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`recurrent_activation` must be one of .*received 'sigmod'"):
        jm.nn.GRU(FEAT, H, recurrent_activation="sigmod", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`initial_state` of LSTM must be a list of 2 arrays"):
        layer(x, initial_state=[np.zeros((4, H))])
    with pytest.raises(ValueError, match=r"`initial_state` of LSTM must hold arrays of shape \[B, H\] = \(4, 5\); received shape \(4, 6\)"):
        layer(x, initial_state=[np.zeros((4, 6)), np.zeros((4, 6))])
    with pytest.raises(ValueError, match=r"`merge_mode` must be one of"):
        jm.nn.Bidirectional(layer, merge_mode="max")
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\); received 1.5"):
        jm.nn.LSTM(FEAT, H, dropout=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"return_state=True, which a Sequential model cannot"):
        jm.nn.Sequential([LAYERS["gru"](return_state=True)])


@pytest.mark.parametrize("pattern", ["post", "holes", "fully_masked_row", "none"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize(("remat", "with_dropout"), [
    (False, False), (True, True),
    pytest.param(True, False, marks=pytest.mark.slow), pytest.param(False, True, marks=pytest.mark.slow),
])
def test_fused_lstm_equals_plain_scan(pattern, go_backwards, remat, with_dropout):
    """The hand-written VJP path and autodiff of the plain scan give the same values and gradients."""
    rng = np.random.default_rng(1)
    params = {
        "kernel": jnp.asarray(rng.normal(0, 0.5, (FEAT, 4 * H)), jnp.float32),
        "recurrent_kernel": jnp.asarray(rng.normal(0, 0.5, (H, 4 * H)), jnp.float32),
        "bias": jnp.asarray(rng.normal(0, 0.5, (4 * H,)), jnp.float32),
    }
    x = jnp.asarray(data(5))
    mask = PATTERNS[pattern]
    init = tuple(jnp.asarray(rng.normal(size=(B, H)), jnp.float32) for _ in range(2))
    rec_dp = jnp.asarray(rng.integers(0, 2, (B, H)) * 2.0, jnp.float32) if with_dropout else None
    weights = jnp.asarray(rng.normal(size=(B, T, H)), jnp.float32)

    def loss(params, x, init, fused):
        outputs, last, (h, c) = F.masked_scan(F.lstm_cell(), params, x, mask, init, go_backwards=go_backwards,
                                              recurrent_dropout=rec_dp, fused=fused, remat=remat)
        return jnp.sum(outputs * weights) + jnp.sum(jnp.sin(last)) + jnp.sum(h * c) + jnp.sum(c)

    v_fast, g_fast = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, init, True)
    v_ref, g_ref = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, init, False)
    np.testing.assert_allclose(v_fast, v_ref, **ref.TOL["float32"])
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, **ref.TOL["grad32"])


def test_fused_lstm_check_grads_float64_with_dropout_and_remat():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        params = {
            "kernel": jnp.asarray(rng.normal(0, 0.5, (FEAT, 8))),
            "recurrent_kernel": jnp.asarray(rng.normal(0, 0.5, (2, 8))),
            "bias": jnp.asarray(rng.normal(0, 0.5, (8,))),
        }
        x = jnp.asarray(rng.normal(size=(3, 5, FEAT)))
        mask = jnp.asarray([[1, 1, 0, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
        init = tuple(jnp.asarray(rng.normal(size=(3, 2))) for _ in range(2))
        rec_dp = jnp.asarray([[2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])

        def f(params, x, init):
            outputs, last, final = F.masked_scan(F.lstm_cell(), params, x, mask, init, recurrent_dropout=rec_dp,
                                                 remat=True)
            return jnp.sum(outputs**2) + jnp.sum(last) + sum(jnp.sum(s * s) for s in final)

        check_grads(f, (params, x, init), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keep_mask_statistics(rate):
    """The counter-hash dropout mask: right keep rate, no correlation between neighbours or between keys."""
    from jaxmask.nn._core import dropout_keep_mask

    shape = (64, 100, 50)
    n = int(np.prod(shape))
    a = np.asarray(dropout_keep_mask(jax.random.key(0), rate, shape)).ravel().astype(np.float64)
    b = np.asarray(dropout_keep_mask(jax.random.key(1), rate, shape)).ravel().astype(np.float64)
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(a.mean() - (1 - rate)) < 5 * sigma
    for other in (a[1:], b[:-1]):  # neighbours within a mask, and the same positions under another key
        assert abs(np.corrcoef(a[:-1], other)[0, 1]) < 5 / np.sqrt(n)
    np.testing.assert_array_equal(a, np.asarray(dropout_keep_mask(jax.random.key(0), rate, shape)).ravel())
    assert np.asarray(dropout_keep_mask(jax.random.key(0), 0.0, (3, 4))).all()
