"""jm.optimizers against Keras 3 (TF backend) and tf_keras; LR schedules against keras.optimizers.schedules; the
LR / NaN / TensorBoard callbacks; Trainer("adam").

The optimizer comparison runs both sides on the same small problem for 20 steps: weights of shapes (3, 4), (4,)
and () with gradients ``a·(w - t) + noise_k`` computed in NumPy float32 from each side's own weights (so any
difference feeds back, as in training). Our update runs twice: op by op (``jax.disable_jit``), which must agree
with Keras to 1e-6 of each weight array's scale (it is bit-identical for most rules), and jit-compiled, where
XLA:CPU fuses ``a·b + c`` into FMA instructions (no flag turns it off; Keras' own JAX backend does the same),
which moves results by a rounding per step; that path is held to 5e-5 (measured worst 1.6e-5: SGD momentum 0.9,
centered RMSprop, Ftrl with l1).
"""

from __future__ import annotations

import inspect
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmask as jm
from jaxmask import optimizers as jo

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SHAPES = [(3, 4), (4,), ()]
STEPS = 20
NAMES = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Lion", "Ftrl"]


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def problem(seed=0):
    rng = np.random.default_rng(seed)
    w0 = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    a = [rng.uniform(0.5, 2.0, size=s).astype(np.float32) for s in SHAPES]
    t = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    noise = [[rng.normal(0, 0.3, size=s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]

    def grads(ws, k):
        return [ai * (np.asarray(w, np.float32) - ti) + ni for w, ai, ti, ni in zip(ws, a, t, noise[k])]

    return w0, grads


def run_reference(opt, K):
    """Weights after each of STEPS ``apply_gradients`` of a Keras / tf_keras optimizer (eager), then after
    ``finalize_variable_values`` when it has an EMA."""
    w0, grads = problem()
    vs = [K.Variable(w) for w in w0] if hasattr(K, "Variable") else None
    if vs is None:  # tf_keras
        import tensorflow as tf

        vs = [tf.Variable(w) for w in w0]
    out = []
    for k in range(STEPS):
        opt.apply_gradients(zip(grads([v.numpy() for v in vs], k), vs))
        out.append([v.numpy().copy() for v in vs])
    if opt.use_ema:
        opt.finalize_variable_values(vs)
        out.append([v.numpy().copy() for v in vs])
    return out


def run_ours(tx, *, jit=True, ema=False):
    w0, grads = problem()
    params = [jnp.asarray(w) for w in w0]
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for k in range(STEPS):
        updates, state = update([jnp.asarray(g) for g in grads(params, k)], state, params)
        params = optax.apply_updates(params, updates)
        out.append([np.asarray(p) for p in params])
    if ema:
        out.append([np.asarray(p) for p in jo.finalize_variable_values(params, state)])
    return out


def scale_error(reference, ours) -> float:
    """max over steps and arrays of max|ours - ref| / max|ref| (relative to each weight array's scale)."""
    worst = 0.0
    for a, b in zip(reference, ours):
        for x, y in zip(a, b):
            worst = max(worst, float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(x))), 1e-30))
    return worst


def _schedule(K, spec):
    name, kw = spec
    mod = K.optimizers.schedules if K is not None else jo.schedules
    return getattr(mod, name)(**kw)


SLOW = pytest.mark.slow
CONFIGS = [
    # (name, kwargs, bit-identical to Keras op by op?); one default case per optimizer and per base option
    pytest.param("SGD", {}, True, marks=SLOW),
    ("SGD", dict(learning_rate=0.1, momentum=0.9), True),
    pytest.param("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True), True, marks=SLOW),
    pytest.param("SGD", dict(learning_rate=0.1, momentum=0.5, weight_decay=0.1), False, marks=SLOW),
    ("Adam", dict(learning_rate=0.05), True),
    pytest.param("Adam", dict(learning_rate=0.05, amsgrad=True), True, marks=SLOW),
    ("Adam", dict(learning_rate=0.05, clipnorm=0.5), False),
    pytest.param("Adam", dict(learning_rate=0.05, global_clipnorm=0.5), False, marks=SLOW),
    pytest.param("Adam", dict(learning_rate=0.05, clipvalue=0.1), True, marks=SLOW),
    pytest.param("Adam", dict(learning_rate=0.05, weight_decay=0.1), False, marks=SLOW),
    pytest.param("Adam", dict(learning_rate=0.05, use_ema=True), True, marks=SLOW),
    ("Adam", dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3), False),
    ("Adam", dict(learning_rate=0.05, gradient_accumulation_steps=3), False),
    ("Adam", dict(learning_rate=("ExponentialDecay", dict(initial_learning_rate=0.05, decay_steps=3, decay_rate=0.5))),
     False),
    pytest.param("AdamW", dict(learning_rate=0.05), False, marks=SLOW),
    ("AdamW", dict(learning_rate=0.05, global_clipnorm=0.5), False),
    pytest.param("AdamW", dict(learning_rate=0.05, global_clipnorm=1.0, gradient_accumulation_steps=2), False,
                 marks=SLOW),
    pytest.param("RMSprop", dict(learning_rate=0.01), True, marks=SLOW),
    ("RMSprop", dict(learning_rate=0.01, centered=True, momentum=0.5), True),
    ("Adagrad", dict(learning_rate=0.1), True),
    pytest.param("Adagrad", dict(learning_rate=("CosineDecay", dict(initial_learning_rate=0.2, decay_steps=15)),
                                 clipnorm=1.0), False, marks=SLOW),
    ("Adadelta", dict(learning_rate=1.0), True),
    ("Adamax", dict(learning_rate=0.05), True),
    ("Nadam", dict(learning_rate=0.05), False),
    pytest.param("Nadam", dict(learning_rate=0.05, gradient_accumulation_steps=2, use_ema=True,
                               ema_overwrite_frequency=2), False, marks=SLOW),
    pytest.param("Lion", dict(learning_rate=0.01), True, marks=SLOW),
    ("Lion", dict(learning_rate=0.01, weight_decay=0.5, clipvalue=0.5), False),
    ("Ftrl", dict(learning_rate=0.1), False),
    pytest.param("Ftrl", dict(learning_rate=0.1, l1_regularization_strength=0.01, l2_regularization_strength=0.01,
                              l2_shrinkage_regularization_strength=0.01, beta=0.1), False, marks=SLOW),
]


def _build(name, kw, K):
    kw = dict(kw)
    if isinstance(kw.get("learning_rate"), tuple):
        kw["learning_rate"] = _schedule(K, kw["learning_rate"])
    return getattr(K.optimizers if K is not None else jo, name)(**kw)


def _config_id(c):
    name, kw, _ = c.values if hasattr(c, "values") else c
    return f"{name}-{'-'.join(kw) or 'defaults'}"


@pytest.mark.keras
@pytest.mark.parametrize("name,kw,bitwise", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_matches_keras3_over_20_steps(keras, name, kw, bitwise):
    reference = run_reference(_build(name, kw, keras), keras)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(reference[-1], problem()[0]))
    assert moved > 0.02  # the weights really moved
    ema = bool(kw.get("use_ema"))
    with jax.disable_jit():
        eager = run_ours(_build(name, kw, None), jit=False, ema=ema)
    assert scale_error(reference, eager) <= 1e-6
    if bitwise:  # Keras' float32 weights bit for bit
        for a, b in zip(reference, eager):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    assert scale_error(reference, run_ours(_build(name, kw, None), ema=ema)) <= 5e-5


@pytest.mark.keras
def test_defaults_are_keras3s(keras):
    for name in NAMES:
        theirs = {k: p.default for k, p in inspect.signature(getattr(keras.optimizers, name).__init__).parameters.items()
                  if k not in ("self", "kwargs", "loss_scale_factor")}
        assert getattr(jo, name)._defaults == theirs, name


@pytest.mark.keras
def test_optax_adam_is_not_keras_adam(keras):
    """Why jm.optimizers exists: optax.adam drifts from Keras' Adam within 20 steps."""
    reference = run_reference(keras.optimizers.Adam(0.05), keras)
    optax_error = scale_error(reference, run_ours(optax.adam(0.05, eps=1e-7)))
    ours_error = scale_error(reference, run_ours(jo.Adam(0.05)))
    assert optax_error > 1e-5 and optax_error > 10 * ours_error


TF_KERAS_CASES = [
    ("SGD", dict(learning_rate=0.1, momentum=0.9)), ("Adam", dict(learning_rate=0.05, clipnorm=0.5)),
    ("AdamW", dict(learning_rate=0.05)), ("RMSprop", dict(learning_rate=0.01, centered=True)),
    ("Adagrad", dict(learning_rate=0.1)), ("Adadelta", dict(learning_rate=1.0)), ("Adamax", dict(learning_rate=0.05)),
    ("Nadam", dict(learning_rate=0.05)), ("Lion", dict(learning_rate=0.01)), ("Ftrl", dict(learning_rate=0.1)),
]


@pytest.mark.keras
@pytest.mark.slow
@pytest.mark.parametrize("name,kw", TF_KERAS_CASES, ids=[n for n, _ in TF_KERAS_CASES])
def test_tf_keras_optimizers_match(name, kw):
    """tf_keras 2.21 runs the same rules (XLA-compiled by default, hence the jit tolerance)."""
    tf_keras = pytest.importorskip("tf_keras")
    reference = run_reference(getattr(tf_keras.optimizers, name)(**kw), tf_keras)
    assert scale_error(reference, run_ours(_build(name, kw, None))) <= 5e-5


@pytest.mark.keras
def test_tf_keras_named_differences():
    """What tf_keras does differently, each named in parity/deviations.py."""
    tf_keras = pytest.importorskip("tf_keras")
    # tf_keras-no-gradient-accumulation
    with pytest.raises((TypeError, ValueError)):
        tf_keras.optimizers.Adam(gradient_accumulation_steps=2)
    # tf_keras-optimizer-defaults
    assert tf_keras.optimizers.Lion().get_config()["learning_rate"] == pytest.approx(1e-4)
    assert jo.Lion().learning_rate == 1e-3
    assert tf_keras.optimizers.RMSprop().ema_overwrite_frequency == 100 and jo.RMSprop().config["ema_overwrite_frequency"] is None
    # tf_keras-ema-starts-at-initial-weights: its average starts at w0 and uses ema_momentum from step 1
    reference = run_reference(tf_keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9), tf_keras)
    ours = run_ours(jo.Adam(0.05))
    average = [w.copy() for w in problem()[0]]
    for weights in ours:
        average = [np.float32(0.9) * a + np.float32(1 - 0.9) * w for a, w in zip(average, weights)]
    for x, y in zip(reference[-1], average):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    keras3_ema = run_ours(jo.Adam(0.05, use_ema=True, ema_momentum=0.9), ema=True)[-1]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(keras3_ema, average)) > 1e-3


# ------------------------------------------------------------------------------------------ schedules

SCHEDULES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.9)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.9, staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 50, 120], values=[1.0, 0.5, 0.1, 0.01])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=90)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=37, end_learning_rate=0.01, power=0.5, cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=9, decay_rate=0.5)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=9, decay_rate=0.5, staircase=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=150, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=120, warmup_target=0.2, warmup_steps=30)),
    ("CosineDecay", dict(initial_learning_rate=0.05, decay_steps=120, alpha=0.05, warmup_target=0.2, warmup_steps=25)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=20)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=13, t_mul=1.0, m_mul=0.7, alpha=0.1)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=11, t_mul=1.5, m_mul=0.9)),
]


@pytest.mark.keras
@pytest.mark.parametrize("name,kw", SCHEDULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULES)])
def test_schedules_match_keras(keras, name, kw):
    theirs = getattr(keras.optimizers.schedules, name)(**kw)
    ours = getattr(jo.schedules, name)(**kw)
    steps = np.arange(0, 301, 2)
    want = np.array([float(theirs(int(s))) for s in steps], np.float32)
    got = np.asarray(jax.jit(jax.vmap(ours))(jnp.asarray(steps, jnp.int32)))
    # 1e-6 of the schedule's scale: values near 0 (a cosine's trough) differ from Keras' by ulps of the scale, as
    # XLA turns x / c into x · (1/c) and a·b + c into one FMA
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(want))))
    with jax.disable_jit():
        np.testing.assert_allclose(np.asarray([ours(int(s)) for s in steps[:40]]), want[:40], rtol=1e-6, atol=1e-9)
    assert len(np.unique(want)) > 3  # the schedule really changes over these steps
    assert type(ours).from_config(ours.get_config()).get_config() == ours.get_config()


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"`decay_steps` of ExponentialDecay must be > 0; received 0"):
        jo.schedules.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(ValueError, match=r"`values` of PiecewiseConstantDecay must have one more element"):
        jo.schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"Unknown learning-rate schedule 'Nope'"):
        jo.schedules.get({"class_name": "Nope", "config": {}})


# ------------------------------------------------------------------------------------------ get / errors


def test_get_names_configs_and_passthrough():
    for name in NAMES:
        for spelling in (name.lower(), name.upper(), name):
            tx = jo.get(spelling)
            assert type(tx) is getattr(jo, name) and tx.config == getattr(jo, name)().config
    assert jo.get("sgd").learning_rate == 0.01 and jo.get("adam").config["epsilon"] == 1e-7
    tx = jo.get({"class_name": "RMSprop", "config": {"learning_rate": 0.1, "centered": True}})
    assert isinstance(tx, jo.RMSprop) and tx.config["centered"] and tx.learning_rate == 0.1
    plain = optax.adam(1e-3)
    assert jo.get(plain) is plain
    mine = jo.Nadam()
    assert jo.get(mine) is mine
    sched = jo.schedules.CosineDecay(0.1, 10)
    again = jo.get({"class_name": "Adam", "config": jo.Adam(sched, clipnorm=1.0).get_config()})
    assert isinstance(again.learning_rate, jo.schedules.CosineDecay) and again.config["clipnorm"] == 1.0
    with pytest.raises(ValueError, match=r"Unknown optimizer name 'adamm'"):
        jo.get("adamm")
    with pytest.raises(ValueError, match=r"'adafactor' \(optax.adafactor is the optax one\)"):
        jo.get("adafactor")
    with pytest.raises(TypeError, match=r"`optimizer` must be an optax GradientTransformation .* received int"):
        jo.get(3)


@pytest.mark.keras
def test_get_converts_a_keras_optimizer(keras):
    k_opt = keras.optimizers.AdamW(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(0.01, 5, 0.5), weight_decay=0.01, clipnorm=2.0
    )
    tx = jo.get(k_opt)
    assert isinstance(tx, jo.AdamW) and tx.config["clipnorm"] == 2.0 and tx.config["weight_decay"] == 0.01
    assert isinstance(tx.learning_rate, jo.schedules.ExponentialDecay) and tx.learning_rate.decay_steps == 5


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: jo.Adam(clipnorm=1.0, clipvalue=1.0), ValueError, r"Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"),
        (lambda: jo.AdamW(weight_decay=None), ValueError, r"`weight_decay` of AdamW must be a float"),
        (lambda: jo.Lion(beta_1=0.0), ValueError, r"`beta_1` of Lion must be in \(0, 1\]"),
        (lambda: jo.SGD(momentum=1.5), ValueError, r"`momentum` of SGD must be <= 1.0; received 1.5"),
        (lambda: jo.Adam(gradient_accumulation_steps=1), ValueError, r"`gradient_accumulation_steps` of Adam must be >= 2"),
        (lambda: jo.Adam(ema_momentum=2.0), ValueError, r"`ema_momentum` of Adam must be <= 1.0"),
        (lambda: jo.Adam(learning_rate="fast"), TypeError, r"`learning_rate` of Adam must be a finite number"),
        (lambda: jo.Ftrl(learning_rate_power=0.5), ValueError, r"`learning_rate_power` of Ftrl must be <= 0.0"),
        (lambda: jo.Adam(loss_scale_factor=2.0), TypeError, r"unknown argument\(s\) \['loss_scale_factor'\] \(loss scaling"),
        (lambda: jo.Adam(0.1, 0.9, 0.999, 1e-7, False, None, None, None, None, False, 0.99, None, None, None, 1),
         TypeError, r"Adam\(\) takes at most 14 positional arguments"),
    ],
)
def test_argument_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_update_needs_params():
    tx = jo.Adam()
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"call optimizer.update\(grads, state, params\)"):
        tx.update({"w": jnp.ones(3)}, state)


def test_learning_rate_in_the_state():
    params = {"w": jnp.ones(3)}
    state = jo.SGD(0.5).init(params)
    assert jo.get_learning_rate(state) == 0.5
    state = jo.set_learning_rate(state, 0.25)
    assert jo.get_learning_rate(state) == 0.25
    assert state.learning_rate.dtype == jnp.float32 and not state.learning_rate.weak_type
    updates, _ = jax.jit(jo.SGD(0.5).update)({"w": jnp.full(3, 2.0)}, state, params)
    np.testing.assert_array_equal(updates["w"], np.full(3, -0.5, np.float32))  # the state's 0.25, not 0.5
    injected = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    chained = optax.chain(optax.clip(1.0), injected).init(params)
    assert jo.get_learning_rate(jo.set_learning_rate(chained, 0.03)) == pytest.approx(0.03)
    sched = jo.schedules.ExponentialDecay(0.1, 1, 0.5)
    tx = jo.Adam(sched)
    s = tx.init(params)
    _, s = tx.update(params, s, params)
    assert jo.get_learning_rate(s, tx) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"pass the optimizer too"):
        jo.get_learning_rate(s)
    with pytest.raises(TypeError, match=r"created with a learning-rate schedule, so its learning rate is not settable"):
        jo.set_learning_rate(s, 0.1)
    with pytest.raises(ValueError, match=r"the optimizer state holds none.*optax.inject_hyperparams"):
        jo.get_learning_rate(optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match=r"finite number >= 0; received -1.0"):
        jo.set_learning_rate(state, -1.0)


# ------------------------------------------------------------------------------------------ Trainer


def _data(n=24, t=6, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(np.float32)
    lengths = rng.integers(2, t + 1, n)
    mask = np.arange(t)[None] < lengths[:, None]
    x[~mask] = 0.0
    y = (np.cumsum(x[..., :1], axis=1) > 0).astype(np.float32)
    return x, y


def _model(seed=0):
    """Masking -> Dense(4, tanh) -> Dense(1, sigmoid): per-step outputs, cheap to compile."""
    from flax import nnx

    rngs = nnx.Rngs(seed)
    return jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.Dense(3, 4, activation="tanh", rngs=rngs),
                             jm.nn.Dense(4, 1, activation="sigmoid", rngs=rngs)])


def _weights(trainer):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(trainer.state.params)]


def test_trainer_takes_keras_names():
    x, y = _data()
    by_name = jm.Trainer(_model(), "adam", "binary_crossentropy")
    by_object = jm.Trainer(_model(), jo.Adam(), "binary_crossentropy")
    h1 = by_name.fit(x, y, batch_size=8, epochs=2, verbose=0)
    h2 = by_object.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert h1.history["loss"] == h2.history["loss"]
    for a, b in zip(_weights(by_name), _weights(by_object)):
        np.testing.assert_array_equal(a, b)
    assert isinstance(jm.Trainer(_model(), "RMSprop", "mse").optimizer, jo.RMSprop)
    with pytest.raises(ValueError, match=r"Unknown optimizer name 'adamm'"):
        jm.Trainer(_model(), "adamm", "mse")


def test_trainer_fit_ends_with_the_ema_weights():
    x, y = _data()
    tx = jo.Adam(0.05, use_ema=True, ema_momentum=0.5)
    trainer = jm.Trainer(_model(), tx, "binary_crossentropy")
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    average = jax.tree_util.tree_leaves(trainer.state.opt_state.average)
    for a, b in zip(_weights(trainer), average):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert int(trainer.state.opt_state.iterations) == 3


class _FakeTrainer:
    """Just what the LR callbacks read: ``state.opt_state`` and ``optimizer``."""

    def __init__(self, tx):
        from jaxmask.training import TrainState

        self.optimizer = tx
        self.state = TrainState(None, None, tx.init({"w": jnp.zeros(2)}), None, None, None)
        self.model = None
        self.resumed = False
        self.stop_training = False


@pytest.mark.keras
def test_reduce_lr_on_plateau_follows_keras(keras):
    """The same monitored values through Keras' callback (on a Keras optimizer) and ours: same rates, logs."""
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65, 0.66, 0.67, 0.68]
    kwargs = dict(monitor="val_loss", factor=0.5, patience=2, cooldown=1, min_lr=0.02, min_delta=1e-4)
    k_model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    k_model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    k_cb = keras.callbacks.ReduceLROnPlateau(**kwargs)
    k_cb.set_model(k_model)
    fake = _FakeTrainer(jo.SGD(0.1))
    cb = jm.training.ReduceLROnPlateau(**kwargs)
    cb.set_trainer(fake)
    k_cb.on_train_begin()
    cb.on_train_begin()
    for epoch, v in enumerate(values):
        k_logs, logs = {"val_loss": v}, {"val_loss": v}
        k_cb.on_epoch_end(epoch, k_logs)
        cb.on_epoch_end(epoch, logs)
        assert logs["learning_rate"] == pytest.approx(k_logs["learning_rate"], rel=1e-7)
        assert jo.get_learning_rate(fake.state.opt_state) == pytest.approx(
            float(k_model.optimizer.learning_rate), rel=1e-7
        )
    assert jo.get_learning_rate(fake.state.opt_state) == pytest.approx(0.02)  # 0.1 -> 0.05 -> 0.025 -> min_lr
    with pytest.raises(ValueError, match=r"`factor` of ReduceLROnPlateau must be < 1.0"):
        jm.training.ReduceLROnPlateau(factor=1.0)


def test_lr_callbacks_in_fit_change_the_rate_without_recompiling():
    x, y = _data()
    trainer = jm.Trainer(_model(), jo.SGD(0.5), "binary_crossentropy")
    cb = jm.training.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    history = trainer.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[cb])
    assert history.history["learning_rate"] == [0.5, 0.5, 0.25, 0.125]  # the rate each epoch used, as Keras logs
    assert jo.get_learning_rate(trainer.state.opt_state) == 0.0625
    assert trainer.trace_counts["train"] == 1

    sched = jm.training.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    trainer = jm.Trainer(_model(), "sgd", "binary_crossentropy")
    history = trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[sched])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert trainer.trace_counts["train"] == 1
    with pytest.raises(ValueError, match=r"the optimizer state holds none"):
        jm.Trainer(_model(), optax.sgd(0.1), "mse").fit(x, y, epochs=1, verbose=0, callbacks=[
            jm.training.LearningRateScheduler(lambda e: 0.1)])
    with pytest.raises(ValueError, match=r"output of the `schedule` function should be a finite float"):
        jm.Trainer(_model(), "sgd", "mse").fit(x, y, epochs=1, verbose=0, callbacks=[
            jm.training.LearningRateScheduler(lambda e: "slow")])


class _Interrupt(Exception):
    pass


class _StopAt(jm.training.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.trainer.global_step == self.step:
            raise _Interrupt


def test_lr_schedule_and_plateau_resume_exactly(tmp_path):
    """Interrupted mid-epoch and resumed from a backup: the rates and weights of the uninterrupted run."""
    x, y = _data(n=24)

    def run(directory, stop=None):
        callbacks = [jm.training.LearningRateScheduler(lambda epoch, lr: lr * 0.5),
                     jm.training.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0),
                     jm.training.BackupAndRestore(directory, save_freq=2)]
        if stop is not None:
            callbacks.insert(0, _StopAt(stop))
        trainer = jm.Trainer(_model(), jo.Adam(0.04), "binary_crossentropy")
        return trainer, trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)

    full_trainer, full = run(tmp_path / "full")
    with pytest.raises(_Interrupt):
        run(tmp_path / "cut", stop=5)
    resumed_trainer, resumed = run(tmp_path / "cut")
    assert resumed.history["learning_rate"] == full.history["learning_rate"]
    assert resumed.history["loss"] == full.history["loss"]
    for a, b in zip(_weights(full_trainer), _weights(resumed_trainer)):
        np.testing.assert_array_equal(a, b)


def test_terminate_on_nan_stops_after_the_bad_batch():
    x, y = _data(n=32)
    x[13, 0, :] = np.nan  # a valid step of sample 13: batch 1 (unshuffled) has a NaN loss
    trainer = jm.Trainer(_model(), "adam", "binary_crossentropy")
    seen = []

    class Count(jm.training.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    history = trainer.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                          callbacks=[jm.training.TerminateOnNaN(), Count()])
    assert seen == [0, 1] and trainer.global_step == 2 and history.history["nonfinite_steps"] == [1]
    assert all(np.isfinite(w).all() for w in _weights(trainer))  # the bad step was skipped, not applied
    trainer = jm.Trainer(_model(), "adam", "binary_crossentropy")
    with pytest.raises(RuntimeError, match=r"NaN or Inf loss or gradients at batch 1"):
        trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                    callbacks=[jm.training.TerminateOnNaN(raise_error=True)])


def test_tensorboard_writes_readable_event_files(tmp_path):
    x, y = _data(n=32)
    trainer = jm.Trainer(_model(), "adam", "binary_crossentropy", metrics=["accuracy"])
    history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_split=0.25,
                          callbacks=[jm.training.TensorBoard(tmp_path, update_freq=2)])
    train = jm.training.read_tensorboard_scalars(str(tmp_path / "train"))
    val = jm.training.read_tensorboard_scalars(str(tmp_path / "validation"))
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(history.history["loss"])
    assert [s for s, _ in train["epoch_loss"]] == [0, 1]
    assert [v for _, v in val["epoch_accuracy"]] == pytest.approx(history.history["val_accuracy"])
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx([0.001, 0.001])
    assert [s for s, _ in train["batch_loss"]] == [2, 4, 6]  # every 2nd of 6 batches (3 per epoch)
    with pytest.raises(ValueError, match=r"`histogram_freq`=1.* writes scalars only"):
        jm.training.TensorBoard(tmp_path, histogram_freq=1)


@pytest.mark.keras
def test_tensorboard_files_read_by_tensorflow(tmp_path):
    """An independent reader: TensorFlow's own record reader checks the framing and CRCs and parses the protos."""
    tf = pytest.importorskip("tensorflow")
    from jaxmask.training._tfevents import EventFileWriter, crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    writer = EventFileWriter(str(tmp_path))
    writer.add_scalars({"epoch_loss": 0.5, "epoch_accuracy": 0.75}, 3)
    writer.add_scalars({"epoch_loss": 0.25}, 12345678901)
    writer.close()
    events = list(tf.compat.v1.train.summary_iterator(writer.path))
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events[1:]] == [
        (3, [("epoch_loss", 0.5), ("epoch_accuracy", 0.75)]), (12345678901, [("epoch_loss", 0.25)])]
    assert math.isclose(events[1].wall_time, events[0].wall_time, abs_tol=60)
