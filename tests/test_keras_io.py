"""jaxmask.keras_io against Keras itself.

Models are built and saved by Keras 3 (``.keras``, ``.weights.h5``, Keras 3 legacy ``.h5``) and tf_keras
(``.h5``, ``save_weights``) in this process; a child process in which importing tensorflow, keras and tf_keras
fails loads them with ``jm.keras_io`` and must reproduce Keras' outputs (float32 tolerance). ``save_weights``
files must load into Keras and give identical outputs. Tests that need Keras skip cleanly without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from flax import nnx

import jaxmask as jm
from tests.adversarial import make
from tests.reference import TOL

REPO = Path(__file__).resolve().parents[1]
B, T, F = 5, 5, 3  # B == T on purpose: catches silent broadcasting between batch and time


def masked_inputs(all_masked_row: bool) -> np.ndarray:
    """[B, T, F] float32 with post-padding, pre-padding, a hole mid-sequence, a full row and (optionally) a
    fully masked row; masked steps are exact zeros (Masking(0.0))."""
    x = np.random.default_rng(7).normal(size=(B, T, F)).astype(np.float32)
    x[0, 3:] = 0.0  # post-padding
    x[1, :2] = 0.0  # pre-padding
    x[2, 2] = 0.0  # hole
    if all_masked_row:
        x[4] = 0.0
    return x


def token_inputs() -> np.ndarray:
    return np.array([[1, 2, 3, 0, 0], [0, 0, 4, 5, 6], [1, 0, 2, 0, 3], [7, 8, 9, 1, 2], [0, 0, 0, 0, 0]], np.int32)


# --------------------------------------------------------------------------------------------------------
# Without Keras: save_weights layout and round trip, argument errors, config validation.
# --------------------------------------------------------------------------------------------------------


def every_layer_model(seed=0):
    """The jaxmask twin of keras3_models()["seq_every_layer"]."""
    rngs = nnx.Rngs(seed)
    return jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(F, 4, return_sequences=True, rngs=rngs),
        jm.nn.Bidirectional(jm.nn.GRU(4, 3, return_sequences=True, rngs=rngs)),
        jm.nn.SimpleRNN(6, 2, return_sequences=True, activation="relu", rngs=rngs),
        jm.nn.TimeDistributed(jm.nn.Dense(2, 2, rngs=rngs)),
        jm.nn.Dropout(0.5, rngs=rngs),
        jm.nn.Activation("softplus"),
        jm.nn.GlobalAveragePooling1D(),
        jm.nn.Dense(2, 1, activation="sigmoid", rngs=rngs),
    ])


# Observed with Keras 3.15.1: model.save_weights() of the Keras twin of every_layer_model() writes exactly these
# datasets (name per class, numbered per class; RNN weights under cell/, Bidirectional under
# forward_layer/backward_layer, TimeDistributed under layer/).
KERAS3_DATASETS = {
    "layers/lstm/cell/vars/0": (3, 16), "layers/lstm/cell/vars/1": (4, 16), "layers/lstm/cell/vars/2": (16,),
    "layers/bidirectional/forward_layer/cell/vars/0": (4, 9),
    "layers/bidirectional/forward_layer/cell/vars/1": (3, 9),
    "layers/bidirectional/forward_layer/cell/vars/2": (2, 9),
    "layers/bidirectional/backward_layer/cell/vars/0": (4, 9),
    "layers/bidirectional/backward_layer/cell/vars/1": (3, 9),
    "layers/bidirectional/backward_layer/cell/vars/2": (2, 9),
    "layers/simple_rnn/cell/vars/0": (6, 2), "layers/simple_rnn/cell/vars/1": (2, 2),
    "layers/simple_rnn/cell/vars/2": (2,),
    "layers/time_distributed/layer/vars/0": (2, 2), "layers/time_distributed/layer/vars/1": (2,),
    "layers/dense/vars/0": (2, 1), "layers/dense/vars/1": (1,),
}


def test_save_weights_writes_keras3_layout(tmp_path):
    path = tmp_path / "m.weights.h5"
    jm.keras_io.save_weights(every_layer_model(), path)
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.update({name: obj.shape}) if isinstance(obj, h5py.Dataset) else None)
    assert found == KERAS3_DATASETS


def test_save_then_load_weights_round_trip(tmp_path):
    path = tmp_path / "m.weights.h5"
    source, target = every_layer_model(0), every_layer_model(1)
    jm.keras_io.save_weights(source, path)
    jm.keras_io.load_weights(target, path)
    src, dst = nnx.state(source, nnx.Param), nnx.state(target, nnx.Param)
    for a, b in zip(jax_leaves(src), jax_leaves(dst)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["m.weights.h5"]  # no temporary file left behind


def jax_leaves(state):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_save_weights_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"must end with '\.weights\.h5'.*m\.weights\.h5"):
        jm.keras_io.save_weights(every_layer_model(), tmp_path / "m.h5")
    with pytest.raises(TypeError, match="must be a jm.nn.Sequential or jm.nn.Model"):
        jm.keras_io.save_weights(jm.nn.Dense(2, 1, rngs=nnx.Rngs(0)), tmp_path / "m.weights.h5")

    class Custom(jm.nn.Layer):
        def __call__(self, x, mask=None):
            return x

    with pytest.raises(TypeError, match="Custom has no Keras equivalent in jaxmask's layer registry"):
        jm.keras_io.save_weights(jm.nn.Sequential([jm.nn.TimeDistributed(Custom())]), tmp_path / "m.weights.h5")


def test_load_weights_into_a_different_architecture_is_refused_before_reading(tmp_path):
    path = tmp_path / "m.weights.h5"
    jm.keras_io.save_weights(every_layer_model(), path)
    rngs = nnx.Rngs(0)
    other = jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(F, 5, return_sequences=True, rngs=rngs)])
    before = np.asarray(other.layers[1].kernel[...])
    with pytest.raises(jm.UnsafeFileError, match=r"declares shape \(3, 16\) but the architecture expects \(3, 20\)"):
        jm.keras_io.load_weights(other, path)
    np.testing.assert_array_equal(other.layers[1].kernel[...], before)  # nothing assigned


def _edited(layer_index, **changes):
    """The benign config with fields of one layer's config changed."""
    layers = make.benign_layers()
    layers[layer_index] = dict(layers[layer_index], config=dict(layers[layer_index]["config"], **changes))
    return make.benign_config(layers)


@pytest.mark.parametrize("config, match", [
    (_edited(2, units="2"), r"units must be an integer"),
    (_edited(2, units=True), r"units must be an integer"),
    (_edited(2, units=2**30), r"units must be an integer in \[1, 16777216\]"),
    (_edited(2, activation="leaky_relu"), r"activation 'leaky_relu' is not one of"),
    (_edited(2, activation=["tanh"]), r"activation \['tanh'\] is not one of"),  # unhashable: fuzzer-found
    (_edited(0, dtype=["float32"]), r"must name a numeric dtype"),
    (_edited(2, stateful=True), r"a stateful LSTM needs a fixed batch size"),
    (_edited(2, return_state=True), r"return_state=True inside a Sequential model"),
    (_edited(2, dropout=1.5), r"dropout must be a number in \[0, 1\)"),
    (_edited(2, dtype={"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"},
                       "registered_name": None}), r"must be float32"),
    (_edited(2, kernel_initializer={"module": "keras.initializers", "class_name": "GlorotUniform",
                                    "config": {"seed": {"nested": 1}}, "registered_name": None}),
     r"plain numbers and strings only"),
    (_edited(2, new_feature=3), r"field 'new_feature' of LSTM is not understood"),
    (_edited(3, units=2), r"declares shape \(2, 1\) but the architecture expects \(2, 2\)"),
    (dict(make.benign_config([{k: v for k, v in e.items() if k != "build_config"} for e in make.benign_layers()[1:]]),
          build_config={"input_shape": None}), r"input shape is unknown"),
    ({"class_name": "Sequential", "config": {"layers": [{"class_name": "Conv3DTranspose", "config": {}}]}},
     r"layer class 'Conv3DTranspose' is not in the allow-list"),
    ({"module": "keras", "class_name": "Sequential", "config": {"layers": []},
      "compile_config": {"loss": {"module": "mylib", "class_name": "MyLoss", "config": {}}}},
     r"compile_config.loss: module 'mylib'"),
    ([1, 2, 3], r"must be a JSON object"),
])
def test_config_validation(tmp_path, config, match):
    path = tmp_path / "m.keras"
    path.write_bytes(make.keras_archive(config))
    with pytest.raises(jm.UnsafeFileError, match=match):
        jm.keras_io.load_model(path)


def test_config_accepts_keras_builtin_loss_functions(tmp_path):
    config = make.benign_config()
    config["compile_config"] = {"loss": {"module": "builtins", "class_name": "function",
                                         "config": "mean_squared_error", "registered_name": "function"}}
    path = tmp_path / "m.keras"
    path.write_bytes(make.keras_archive(config))
    model = jm.keras_io.load_model(path)
    np.testing.assert_array_equal(model.layers[1].kernel[...], make.benign_weights()[0])


def test_loaded_model_is_in_eval_mode(tmp_path):
    layers = make.benign_layers()
    layers.insert(3, {"module": "keras.layers", "class_name": "Dropout", "config": {"name": "dropout", "rate": 0.5},
                      "registered_name": None})
    path = tmp_path / "m.keras"
    path.write_bytes(make.keras_archive(make.benign_config(layers)))
    model = jm.keras_io.load_model(path)
    assert model.layers[1].deterministic and model.layers[2].deterministic
    x = masked_inputs(True)[:, :make.T]
    np.testing.assert_array_equal(model(x)[0], model(x)[0])


# --------------------------------------------------------------------------------------------------------
# Against Keras.
# --------------------------------------------------------------------------------------------------------


def keras3_models(keras):
    """name -> (Keras 3 model, input kind, formats to save)."""
    L = keras.layers
    m1 = keras.Sequential([
        keras.Input((T, F)), L.Masking(0.0), L.LSTM(4, return_sequences=True),
        L.Bidirectional(L.GRU(3, return_sequences=True)), L.SimpleRNN(2, return_sequences=True, activation="relu"),
        L.TimeDistributed(L.Dense(2)), L.Dropout(0.5), L.Activation("softplus"), L.GlobalAveragePooling1D(),
        L.Dense(1, activation="sigmoid"),
    ])
    m2 = keras.Sequential([
        keras.Input((T, F)), L.Masking(0.0),
        L.LSTM(4, return_sequences=True, go_backwards=True, recurrent_activation="hard_sigmoid"),
        L.GRU(3, return_sequences=True, reset_after=False, zero_output_for_mask=True),
        L.Bidirectional(L.LSTM(2), merge_mode="ave"), L.Dense(3, activation="softmax"),
    ])
    tokens = keras.Input((T,), dtype="int32")
    h = L.Embedding(10, 4, mask_zero=True)(tokens)
    h = L.LSTM(3, return_sequences=True, use_bias=False)(h)
    h = L.GRU(2)(h)
    m3 = keras.Model(tokens, L.Dense(1)(h))
    inp = keras.Input((T, F))
    h = L.Masking(0.0)(inp)
    h = L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="mul")(h)
    h = L.TimeDistributed(L.Dense(2, use_bias=False))(h)
    m4 = keras.Model(inp, L.Dense(2, activation="gelu")(h))
    m5 = keras.Sequential([L.Masking(0.0), L.GRU(2, return_sequences=True, activation="elu"), L.Dense(1)])
    m5.build((None, T, F))
    acts = ["exponential", "linear", "tanh", "sigmoid", "hard_sigmoid", "relu", "relu6", "elu", "selu", "softplus",
            "softsign", "silu", "swish", "gelu", "softmax", "log_softmax", "hard_silu", "hard_swish", "mish"]
    m6 = keras.Sequential([keras.Input((T, F))] + [L.Dense(3, activation=a) for a in acts])
    return {"seq_every_layer": (m1, "float_no_empty_row", ("keras", "h5")),
            "seq_backwards_hard_sigmoid": (m2, "float", ("keras", "weights")),
            "functional_embedding": (m3, "tokens", ("keras", "h5")),
            "functional_bidirectional_mul": (m4, "float", ("keras",)),
            "seq_built_without_input": (m5, "float", ("keras",)),
            "seq_every_activation": (m6, "float", ("keras",))}


def tf_keras_models(tf_keras):
    L = tf_keras.layers
    t1 = tf_keras.Sequential([
        tf_keras.Input((T, F)), L.Masking(0.0), L.LSTM(4, return_sequences=True, recurrent_activation="hard_sigmoid"),
        L.Bidirectional(L.GRU(3, return_sequences=True)), L.TimeDistributed(L.Dense(2)), L.GlobalAveragePooling1D(),
        L.Dense(1),
    ])
    tokens = tf_keras.Input((T,))
    h = L.Embedding(10, 4, mask_zero=True)(tokens)
    h = L.SimpleRNN(3, return_sequences=True)(h)
    t2 = tf_keras.Model(tokens, L.Dense(2, activation="tanh")(h))
    return {"tf_keras_seq_hard_sigmoid": (t1, "float_no_empty_row", ("h5",)),
            "tf_keras_functional_embedding": (t2, "tokens", ("h5", "h5_weights"))}


INPUTS = {"float": masked_inputs(True), "float_no_empty_row": masked_inputs(False), "tokens": token_inputs()}

_CHILD = """
import json, sys
for name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[name] = None
import numpy as np
import jaxmask as jm
manifest = json.load(open(sys.argv[1]))
out = {}
for key, (path, inputs) in manifest.items():
    model = jm.keras_io.load_model(path)
    y, mask = model(np.load(manifest_dir + "/" + inputs + ".npy"))
    out[key] = np.asarray(y)
    out[key + "/mask"] = np.asarray(mask) if mask is not None else np.zeros(0)
for name in ("tensorflow", "keras", "tf_keras"):
    assert sys.modules[name] is None, name
try:
    import tensorflow
    raise SystemExit("tensorflow was importable")
except ImportError:
    pass
np.savez(sys.argv[2], **out)
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Saves every model in every format and records Keras' outputs: key -> (path, input kind, Keras output)."""
    keras = pytest.importorskip("keras")
    d = tmp_path_factory.mktemp("keras_files")
    files = {}
    models = {}
    for name, (model, inputs, formats) in keras3_models(keras).items():
        ref = np.asarray(model(INPUTS[inputs], training=False))
        models[name] = model
        for fmt in formats:
            path = d / {"keras": f"{name}.keras", "h5": f"{name}.h5", "weights": f"{name}.weights.h5"}[fmt]
            model.save(path) if fmt != "weights" else model.save_weights(path)
            files[f"{name}.{fmt}"] = (path, inputs, ref)
    try:
        import tf_keras
    except ImportError:
        tf_keras = None
    if tf_keras is not None:
        for name, (model, inputs, formats) in tf_keras_models(tf_keras).items():
            ref = np.asarray(model(INPUTS[inputs], training=False))
            models[name] = model
            for fmt in formats:
                path = d / (f"{name}.h5" if fmt == "h5" else f"{name}_weights.h5")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "HDF5 format is considered legacy": on purpose
                    model.save(path) if fmt == "h5" else model.save_weights(path)
                files[f"{name}.{fmt}"] = (path, inputs, ref)
    return d, files, models, keras


@pytest.fixture(scope="module")
def child_outputs(keras_files):
    """Outputs of every full-model file loaded by jm.keras_io in a process where TF/Keras cannot be imported."""
    d, files, _, _ = keras_files
    for kind, x in INPUTS.items():
        np.save(d / f"{kind}.npy", x)
    manifest = {k: (str(p), inputs) for k, (p, inputs, _) in files.items() if not k.endswith(("weights",))}
    (d / "manifest.json").write_text(json.dumps(manifest))
    code = f"manifest_dir = {str(d)!r}\n" + _CHILD
    proc = subprocess.run([sys.executable, "-c", code, str(d / "manifest.json"), str(d / "out.npz")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(d / "out.npz"))


FULL_MODEL_FILES = [
    "seq_every_layer.keras", "seq_every_layer.h5", "seq_backwards_hard_sigmoid.keras",
    "functional_embedding.keras", "functional_embedding.h5", "functional_bidirectional_mul.keras",
    "seq_built_without_input.keras", "seq_every_activation.keras", "tf_keras_seq_hard_sigmoid.h5", "tf_keras_functional_embedding.h5",
]


@pytest.mark.parametrize("key", FULL_MODEL_FILES)
@pytest.mark.keras
def test_load_model_without_tensorflow_matches_keras(keras_files, child_outputs, key):
    files = keras_files[1]
    if key not in files:
        pytest.skip("tf_keras is not installed")
    _, _, ref = files[key]
    np.testing.assert_allclose(child_outputs[key], ref, **TOL["float32"])


@pytest.mark.keras
def test_load_weights_from_keras_weights_h5_matches_keras(keras_files):
    _, files, _, _ = keras_files
    path, inputs, ref = files["seq_backwards_hard_sigmoid.weights"]
    twin = twin_of_seq_backwards(seed=3)
    jm.keras_io.load_weights(twin, path)
    np.testing.assert_allclose(twin(INPUTS[inputs])[0], ref, **TOL["float32"])


@pytest.mark.keras
def test_load_weights_from_tf_keras_save_weights_matches_keras(keras_files):
    _, files, _, _ = keras_files
    if "tf_keras_functional_embedding.h5_weights" not in files:
        pytest.skip("tf_keras is not installed")
    path, inputs, ref = files["tf_keras_functional_embedding.h5_weights"]
    rngs = nnx.Rngs(5)
    twin = jm.nn.Sequential([jm.nn.Embedding(10, 4, mask_zero=True, rngs=rngs),
                             jm.nn.SimpleRNN(4, 3, return_sequences=True, rngs=rngs),
                             jm.nn.Dense(3, 2, activation="tanh", rngs=rngs)])
    jm.keras_io.load_weights(twin, path)
    np.testing.assert_allclose(twin(INPUTS[inputs])[0], ref, **TOL["float32"])


def twin_of_seq_backwards(seed):
    rngs = nnx.Rngs(seed)
    return jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(F, 4, return_sequences=True, go_backwards=True, recurrent_activation="hard_sigmoid", rngs=rngs),
        jm.nn.GRU(4, 3, return_sequences=True, reset_after=False, zero_output_for_mask=True, rngs=rngs),
        jm.nn.Bidirectional(jm.nn.LSTM(3, 2, rngs=rngs), merge_mode="ave"),
        jm.nn.Dense(2, 3, activation="softmax", rngs=rngs),
    ])


@pytest.mark.keras
@pytest.mark.parametrize("name, twin", [("seq_backwards_hard_sigmoid", twin_of_seq_backwards),
                                        ("seq_every_layer", every_layer_model)])
def test_save_weights_loads_into_keras_with_identical_outputs(keras_files, tmp_path, name, twin):
    _, _, models, keras = keras_files
    ours = twin(seed=11)
    ours.eval()
    path = tmp_path / "ours.weights.h5"
    jm.keras_io.save_weights(ours, path)
    theirs = keras.models.clone_model(models[name])
    theirs.load_weights(path)
    x = INPUTS["float"] if name == "seq_backwards_hard_sigmoid" else INPUTS["float_no_empty_row"]
    np.testing.assert_allclose(np.asarray(theirs(x, training=False)), ours(x)[0], **TOL["float32"])


@pytest.mark.keras
def test_graphs_load_and_match_keras(keras_files, tmp_path):
    """Branches, shared layers, several outputs and nested models load from .keras files (they were refused in
    round 1) and give Keras' numbers."""
    _, _, _, keras = keras_files
    L = keras.layers
    a = keras.Input((None, F))
    branch = keras.Model(a, L.Add()([L.Dense(2)(a), L.Dense(2)(a)]))
    shared_in = keras.Input((T, F))
    dense = L.Dense(F)
    shared = keras.Model(shared_in, dense(dense(shared_in)))
    b = keras.Input((T, F))
    multi = keras.Model(b, [L.Dense(2)(b), L.Dense(3)(b)])
    nested = keras.Sequential([keras.Input((T, F)), keras.Sequential([L.Dense(2)])])
    x = np.random.default_rng(0).normal(size=(3, T, F)).astype(np.float32)
    for name, model in {"branch": branch, "shared": shared, "multi": multi, "nested": nested}.items():
        path = tmp_path / f"{name}.keras"
        model.save(path)
        ours = jm.keras_io.load_model(path)
        want = model(x)
        got = ours(x)[0]
        for w, g in zip(want if isinstance(want, (list, tuple)) else [want], got if isinstance(got, list) else [got]):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6, err_msg=name)


def test_unsupported_keras_layer_is_refused(keras_files, tmp_path):
    _, _, _, keras = keras_files
    model = keras.Sequential([keras.Input((T, F)), keras.layers.RNN(keras.layers.LSTMCell(2), name="generic")])
    model.save(tmp_path / "rnn.keras")
    with pytest.raises(jm.UnsafeFileError, match="layer class 'RNN' is not in the allow-list"):
        jm.keras_io.load_model(tmp_path / "rnn.keras")
