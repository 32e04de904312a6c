"""Merge layers (Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum, Dot) against Keras 3 (TF backend),
tf_keras and a NumPy transcription of the mask rules; the Keras files round trip (from_keras, load_model of .keras and
.h5, to_keras); the graph operations Keras 3 writes for a Concatenate's mask; the GRU + static features model end to
end.

Mask rules verified by running both libraries (Keras 3.15.1, tf_keras 2.21):
  Keras 3: output mask m1 OR m2 (None if any input has no mask); Multiply/Maximum/Minimum leave masked steps out;
  tf_keras: output mask m1 AND m2 over the inputs that have one; values never depend on masks.
  Concatenate: Keras 3 any(concat(broadcast masks, unmasked = True), -1); tf_keras all(...) and raises along time
  when an input has no mask. Dot: no mask in both.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask as jm
from tests.reference import TOL

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

B, T, F = 4, 7, 3


def _rows(spec, t=T):
    """bool [B, t] from per-row specs: ("all",), ("post", n), ("pre", n), ("holes", [steps]), ("none",)."""
    m = np.ones((len(spec), t), bool)
    for i, row in enumerate(spec):
        kind = row[0]
        if kind == "post":
            m[i, row[1]:] = False
        elif kind == "pre":
            m[i, : t - row[1]] = False
        elif kind == "holes":
            m[i, row[1]] = False
        elif kind == "none":
            m[i] = False
    return m


MASKS = [  # one row of each kind per input: full, post-, pre-padding, holes, a fully masked row
    _rows([("all",), ("post", 5), ("holes", [1, 4]), ("none",)]),
    _rows([("pre", 4), ("holes", [2, 3, 4]), ("all",), ("post", 2)]),
    _rows([("holes", [0, 6]), ("none",), ("post", 3), ("pre", 5)]),
]


def _inputs(seed=0, shape=(B, T, F), masks=MASKS):
    rng = np.random.default_rng(seed)
    return [np.where(m[:, :, None], rng.normal(size=shape), 0.0).astype(np.float32) for m in masks]


XS = _inputs()
WHICH = {"all": (1, 1, 1), "first": (1, 0, 0), "second": (0, 1, 0), "middle_unmasked": (1, 0, 1), "none": (0, 0, 0)}


# --------------------------------------------------------------------------------------------------------
# NumPy reference of the mask rules (transcribed from the table in jaxmask/nn/_merge.py, checked against Keras below).
# --------------------------------------------------------------------------------------------------------

_OPS = {"Add": np.add, "Subtract": np.subtract, "Multiply": np.multiply, "Average": np.add, "Maximum": np.maximum,
        "Minimum": np.minimum}


def np_merge(kind, xs, masks, semantics):
    xs = [np.asarray(x, np.float64) for x in xs]
    if semantics == "tf_keras" or kind in ("Add", "Subtract", "Average"):
        out = xs[0]
        for x in xs[1:]:
            out = _OPS[kind](out, x)
        return out / len(xs) if kind == "Average" else out
    valid = np.stack([np.ones(x.shape, bool) if m is None else np.broadcast_to(m[:, :, None], x.shape)
                      for x, m in zip(xs, masks)])
    stacked = np.stack(xs)
    if kind == "Multiply":
        out = np.prod(np.where(valid, stacked, 1.0), axis=0)
        if all(m is not None for m in masks):
            out = np.where(valid.any(axis=0), out, 0.0)
        return out
    fill = -np.inf if kind == "Maximum" else np.inf
    red = np.max if kind == "Maximum" else np.min
    out = red(np.where(valid, stacked, fill), axis=0)
    return np.where(valid.any(axis=0), out, xs[0])  # every input masked: the first input's value


def np_merge_mask(masks, semantics):
    present = [m for m in masks if m is not None]
    if not present:
        return None
    if semantics == "keras3":
        return None if len(present) < len(masks) else np.logical_or.reduce(present)
    return np.logical_and.reduce(present)


def np_concat_mask(xs, masks, axis, semantics):
    if all(m is None for m in masks):
        return None
    full = [np.ones(x.shape, bool) if m is None else np.broadcast_to(m[:, :, None], x.shape) for x, m in zip(xs, masks)]
    cat = np.concatenate(full, axis=axis)
    return cat.any(axis=-1) if semantics == "keras3" else cat.all(axis=-1)


# --------------------------------------------------------------------------------------------------------
# Without Keras: the layers directly against the NumPy reference, errors.
# --------------------------------------------------------------------------------------------------------


def _masks_for(flags, masks=MASKS):
    return [m if f else None for f, m in zip(flags, masks)]


@pytest.mark.parametrize("semantics", ["keras3", "tf_keras"])
@pytest.mark.parametrize("kind", list(_OPS))
@pytest.mark.parametrize("which", list(WHICH))
def test_elementwise_merges_match_numpy_reference(kind, which, semantics):
    n = 2 if kind == "Subtract" else 3
    masks = _masks_for(WHICH[which])[:n]
    layer = getattr(jm.nn, kind)(semantics=semantics)
    y = jax.jit(lambda xs, ms: layer(xs, mask=ms))(XS[:n], masks)
    np.testing.assert_allclose(y, np_merge(kind, XS[:n], masks, semantics), **TOL["float32"])
    want = np_merge_mask(masks, semantics)
    got = layer.compute_output_mask(XS[:n], masks)
    assert (got is None) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("semantics", ["keras3", "tf_keras"])
@pytest.mark.parametrize("axis", [-1, 1, 2])
@pytest.mark.parametrize("which", ["all", "first", "none"])
def test_concatenate_matches_numpy_reference(axis, which, semantics):
    masks = _masks_for(WHICH[which])[:2]
    layer = jm.nn.Concatenate(axis=axis, semantics=semantics)
    np.testing.assert_array_equal(layer(XS[:2], mask=masks), np.concatenate(XS[:2], axis=axis))
    if semantics == "tf_keras" and axis == 1 and which == "first":
        with pytest.raises(ValueError, match=r"tf_keras cannot concatenate these masks"):
            layer.compute_output_mask(XS[:2], masks)
        return
    want = np_concat_mask(XS[:2], masks, axis, semantics)
    got = layer.compute_output_mask(XS[:2], masks)
    assert (got is None) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(got, want)


def test_b_equals_t_equals_f_does_not_broadcast_silently():
    masks = [_rows([("post", 2), ("pre", 1), ("holes", [1]), ("none",)], t=4),
             _rows([("all",), ("none",), ("post", 1), ("pre", 3)], t=4)]
    xs = _inputs(3, (4, 4, 4), masks)
    for kind in ("Multiply", "Maximum", "Minimum"):
        y = getattr(jm.nn, kind)()(xs, mask=masks)
        np.testing.assert_allclose(y, np_merge(kind, xs, masks, "keras3"), **TOL["float32"])
    for semantics in ("keras3", "tf_keras"):
        np.testing.assert_array_equal(jm.nn.Concatenate(semantics=semantics).compute_output_mask(xs, masks),
                                      np_concat_mask(xs, masks, -1, semantics))


def np_batch_dot(x, y, axes):
    a0, a1 = axes
    out = np.stack([np.tensordot(x[b], y[b], axes=(a0 - 1, a1 - 1)) for b in range(x.shape[0])])
    return out[:, None] if out.ndim == 1 else out


@pytest.mark.parametrize("axes, shapes", [
    (2, [(B, T, F), (B, 5, F)]), ((1, 1), [(B, T, F), (B, T, 2)]), (-1, [(B, F), (B, F)]),
    ((1, 2), [(B, F), (B, 5, F)]), ((2, 1), [(B, T, F), (B, F, 2)]),
])
@pytest.mark.parametrize("normalize", [False, True])
def test_dot_matches_numpy_reference(axes, shapes, normalize):
    rng = np.random.default_rng(1)
    x, y = (rng.normal(size=s).astype(np.float32) for s in shapes)
    pair = axes if isinstance(axes, tuple) else (axes % len(shapes[0]), axes % len(shapes[1]))
    if normalize:
        xn = x / np.linalg.norm(x, axis=pair[0], keepdims=True)
        yn = y / np.linalg.norm(y, axis=pair[1], keepdims=True)
    else:
        xn, yn = x, y
    got = jm.nn.Dot(axes, normalize=normalize)([x, y])
    np.testing.assert_allclose(got, np_batch_dot(xn, yn, pair), **TOL["float32"])
    assert jm.nn.Dot(axes).compute_output_mask([x, y], [MASKS[0], MASKS[1]]) is None


def test_dot_normalize_of_padded_zero_vectors_is_finite_with_finite_gradients():
    layer = jm.nn.Dot(axes=2, normalize=True)
    y = layer(XS[:2])
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(np.asarray(y)[3], 0.0)  # row 3 of input 0 is all padding: cosine 0, not NaN
    grads = jax.grad(lambda a, b: jnp.sum(layer([a, b]) ** 2), argnums=(0, 1))(*XS[:2])
    assert all(np.isfinite(g).all() for g in grads)


def test_fully_masked_rows_give_finite_values():
    masks = _masks_for(WHICH["all"])
    for kind in _OPS:
        n = 2 if kind == "Subtract" else 3
        y = getattr(jm.nn, kind)()(XS[:n], mask=masks[:n])
        assert np.isfinite(y).all(), kind


@pytest.mark.parametrize("call, error, match", [
    (lambda: jm.nn.Add()(XS[0]), TypeError, r"Add must be called on a list of arrays.*received one"),
    (lambda: jm.nn.Subtract()(XS), ValueError, r"Subtract must be called on a list of exactly 2 arrays; received 3"),
    (lambda: jm.nn.Dot(2)(XS), ValueError, r"Dot must be called on a list of exactly 2 arrays; received 3"),
    (lambda: jm.nn.Add()([]), ValueError, r"at least 1 arrays; received 0"),
    (lambda: jm.nn.Add()([XS[0], XS[1][:2]]), ValueError, r"the inputs must share the batch size"),
    (lambda: jm.nn.Add()([XS[0], XS[1][:, :3]]), ValueError, r"the inputs must have the same shape"),
    (lambda: jm.nn.Add()(XS[:2], mask=MASKS[0]), TypeError, r"`mask` must be a list parallel to the inputs"),
    (lambda: jm.nn.Add()(XS[:2], mask=[MASKS[0]]), ValueError, r"`mask` must have one entry per input \(2\)"),
    (lambda: jm.nn.Maximum()(XS[:2], mask=[MASKS[0][:, :3], None]), ValueError,
     r"`mask\[0\]` must match the leading axes of `x\[0\]`"),
    (lambda: jm.nn.Add(semantics="keras2"), ValueError, r"`semantics` must be one of \['keras3', 'tf_keras'\]"),
    (lambda: jm.nn.Concatenate(axis=0), ValueError, r"`axis` must not be 0, the batch axis"),
    (lambda: jm.nn.Concatenate(axis=3)(XS[:2]), ValueError, r"Concatenate\(axis=3\) received inputs of rank 3"),
    (lambda: jm.nn.Concatenate()([XS[0], XS[1][:, :3]]), ValueError, r"must agree on every axis but 2"),
    (lambda: jm.nn.Dot(axes=(1, 2, 3)), ValueError, r"`axes` must be an int or a pair of ints"),
    (lambda: jm.nn.Dot(axes=0)(XS[:2]), ValueError, r"0 is the batch axis"),
    (lambda: jm.nn.Dot(axes=(2, 1))(XS[:2]), ValueError, r"x1.shape\[2\] = 3 and x2.shape\[1\] = 7 must be equal"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_symbolic_graph_and_mask_propagation():
    a, b = jm.nn.Input((None, F), name="a"), jm.nn.Input((None, F), name="b")
    ha, hb = jm.nn.Masking()(a), jm.nn.Masking()(b)
    cat = jm.nn.Concatenate(axis=1)([ha, hb])
    assert cat.shape == (None, None, F)
    model = jm.nn.Model([a, b], [jm.nn.Maximum()([ha, hb]), cat, jm.nn.Dot(axes=2)([ha, hb])])
    (mx, c, d), (m_mx, m_c, m_d) = model(XS[:2])
    np.testing.assert_allclose(mx, np_merge("Maximum", XS[:2], MASKS[:2], "keras3"), **TOL["float32"])
    np.testing.assert_array_equal(m_mx, MASKS[0] | MASKS[1])
    np.testing.assert_array_equal(m_c, np.concatenate(MASKS[:2], axis=1))
    assert d.shape == (B, T, T) and m_d is None


# --------------------------------------------------------------------------------------------------------
# Against Keras 3 and tf_keras.
# --------------------------------------------------------------------------------------------------------


def _lib(name):
    if name == "keras3":
        return pytest.importorskip("keras")
    return pytest.importorskip("tf_keras")


def keras_mask(lib_name, y):
    if lib_name == "keras3":
        from keras.src.backend import get_keras_mask

        m = get_keras_mask(y)
    else:
        m = getattr(y, "_keras_mask", None)
    return None if m is None else np.asarray(m)


def merge_model(K, lib_name, flags):
    """Every merge layer on three inputs, ``flags`` saying which go through Masking."""
    L = K.layers
    inputs = [K.Input((T, F), name=f"x{i}") for i in range(3)]
    h = [L.Masking()(x) if f else x for x, f in zip(inputs, flags)]
    out = {
        "add": L.Add()(h[:2]), "add3": L.Add()(h), "sub": L.Subtract()(h[:2]), "mul": L.Multiply()(h[:2]),
        "mul3": L.Multiply()(h), "avg": L.Average()(h[:2]), "max": L.Maximum()(h[:2]), "max3": L.Maximum()(h),
        "min": L.Minimum()(h[:2]), "min3": L.Minimum()(h), "cat": L.Concatenate()(h[:2]),
        "cat3": L.Concatenate()(h), "dot": L.Dot(axes=2)(h[:2]), "dot_norm": L.Dot(axes=(1, 1), normalize=True)(h[:2]),
    }
    if lib_name == "keras3" or flags[0] == flags[1]:  # tf_keras raises on a time-axis concat with one unmasked input
        out["cat_time"] = L.Concatenate(axis=1)(h[:2])
    return K.Model(inputs, list(out.values())), list(out)


def _run_keras(lib_name, model, xs):
    ys = model(xs)
    return [np.asarray(y) for y in ys], [keras_mask(lib_name, y) for y in ys]


def assert_same(got, want, names, what):
    (gy, gm), (wy, wm) = got, want
    for name, y, m, ky, km in zip(names, gy, gm, wy, wm):
        assert (m is None) == (km is None), f"{what}: {name} mask {m is None and 'None'} vs Keras {km is None and 'None'}"
        y = np.asarray(y)
        if km is None:
            np.testing.assert_allclose(y, ky, **TOL["float32"], err_msg=f"{what}: {name}")
            continue
        np.testing.assert_array_equal(np.asarray(m), km, err_msg=f"{what}: {name} mask")
        full = np.broadcast_to(km.reshape(km.shape + (1,) * (ky.ndim - km.ndim)), ky.shape)
        np.testing.assert_allclose(y[full], ky[full], **TOL["float32"], err_msg=f"{what}: {name} valid steps")
        np.testing.assert_allclose(y[~full], ky[~full], **TOL["float32"], err_msg=f"{what}: {name} masked steps")


@pytest.fixture(scope="module")
def merge_models():
    """(lib, which) -> (Keras model, output names, Keras outputs and masks)."""
    out = {}
    for lib_name in ("keras3", "tf_keras"):
        try:
            K = _lib(lib_name)
        except pytest.skip.Exception:
            continue
        for which, flags in WHICH.items():
            model, names = merge_model(K, lib_name, flags)
            out[lib_name, which] = (model, names, _run_keras(lib_name, model, XS))
    return out


def _case(merge_models, lib_name, which):
    if (lib_name, which) not in merge_models:
        pytest.skip(f"{lib_name} is not installed")
    return merge_models[lib_name, which]


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
@pytest.mark.parametrize("which", list(WHICH))
def test_from_keras_matches_keras(merge_models, lib_name, which):
    import parity

    model, names, want = _case(merge_models, lib_name, which)
    ours = parity.from_keras(model)
    assert_same(ours(XS), want, names, f"{lib_name}/{which}")


@pytest.mark.keras
@pytest.mark.parametrize("lib_name, which", [("keras3", "all"), ("keras3", "middle_unmasked"), ("tf_keras", "all"),
                                             ("tf_keras", "first")])
def test_load_model_and_to_keras_round_trip(merge_models, lib_name, which, tmp_path):
    import parity

    model, names, want = _case(merge_models, lib_name, which)
    path = tmp_path / ("m.keras" if lib_name == "keras3" else "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf_keras: "HDF5 format is considered legacy"
        model.save(path)
    loaded = jm.keras_io.load_model(path)
    assert_same(loaded(XS), want, names, f"load_model {path.name}")
    back = parity.to_keras(loaded, flavor=lib_name)
    assert_same(_run_keras(lib_name, back, XS), want, names, f"to_keras {lib_name}")


@pytest.mark.keras
def test_to_keras_refuses_the_other_librarys_mask_rules():
    import parity

    _lib("tf_keras")
    a, b = jm.nn.Input((T, F)), jm.nn.Input((T, F))
    model = jm.nn.Model([a, b], jm.nn.Maximum()([jm.nn.Masking()(a), jm.nn.Masking()(b)]))
    with pytest.raises(ValueError, match=r"follows keras3's mask rules.*semantics='tf_keras'"):
        parity.to_keras(model, flavor="tf_keras")


def mask_ops_model(K, lib_name):
    """Merges whose output mask a later layer takes: Keras 3 writes the mask computation into the graph
    (LogicalOr, ExpandDims, ZerosLike, OnesLike, the Concatenate operation, Any)."""
    L = K.layers
    a, b, c = (K.Input((None, F), name=n) for n in "abc")
    ha, hb = L.Masking()(a), L.Masking()(b)
    rnn = lambda: L.SimpleRNN(2, return_sequences=True)  # noqa: E731  (a layer that takes the mask)
    outs = [rnn()(L.Concatenate()([ha, hb])), rnn()(L.Concatenate()([ha, c])), rnn()(L.Concatenate(axis=1)([ha, hb])),
            rnn()(L.Add()([ha, hb])), rnn()(L.Multiply()([ha, hb, c]))]
    if lib_name == "keras3":
        outs.append(rnn()(L.Concatenate(axis=1)([ha, c])))
    return K.Model([a, b, c], outs)


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", pytest.param("tf_keras", marks=pytest.mark.slow)])
def test_masks_through_saved_graph_operations(lib_name, tmp_path):
    import parity

    K = _lib(lib_name)
    model = mask_ops_model(K, lib_name)
    if lib_name == "keras3":
        classes = {e["class_name"] for e in json.loads(model.to_json())["config"]["layers"]}
        assert {"LogicalOr", "ExpandDims", "ZerosLike", "OnesLike", "Concatenate", "Any"} <= classes
    want = _run_keras(lib_name, model, XS)
    names = [f"out{i}" for i in range(len(want[0]))]
    assert_same(parity.from_keras(model)(XS), want, names, "from_keras")
    path = tmp_path / ("m.keras" if lib_name == "keras3" else "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(path)
    loaded = jm.keras_io.load_model(path)
    assert_same(loaded(XS), want, names, "load_model")
    assert_same(_run_keras(lib_name, parity.to_keras(loaded, flavor=lib_name), XS), want, names, "to_keras")


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
def test_jm_layers_built_directly_match_keras_layers(lib_name):
    K = _lib(lib_name)
    masks = _masks_for(WHICH["all"])
    for kind in ("Maximum", "Multiply", "Minimum"):
        xs = [K.ops.convert_to_tensor(x) for x in XS] if lib_name == "keras3" else [K.backend.constant(x) for x in XS]
        if lib_name == "keras3":
            from keras.src.backend import set_keras_mask

            for x, m in zip(xs, masks):
                set_keras_mask(x, K.ops.convert_to_tensor(m))
        want = np.asarray(getattr(K.layers, kind)()(xs))
        got = getattr(jm.nn, kind)(semantics=lib_name)(XS, mask=masks)
        np.testing.assert_allclose(got, want, **TOL["float32"], err_msg=kind)
        want_mask = getattr(K.layers, kind)().compute_mask(xs, [K.ops.convert_to_tensor(m) for m in masks]
                                                           if lib_name == "keras3" else [K.backend.constant(m)
                                                                                         for m in masks])
        np.testing.assert_array_equal(getattr(jm.nn, kind)(semantics=lib_name).compute_output_mask(XS, masks),
                                      np.asarray(want_mask), err_msg=f"{kind} mask")


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
def test_concatenate_of_vectors_with_per_sample_masks_matches_keras(lib_name):
    """[B, H] inputs (no time axis) whose masks are [B] (Keras' Masking on a 2-D input)."""
    K = _lib(lib_name)
    x1 = np.array([[1, 2, 3], [0, 0, 0], [0, 0, 0]], np.float32)
    x2 = np.array([[1, 1], [1, 0], [0, 0]], np.float32)
    m1, m2 = (x1 != 0).any(-1), (x2 != 0).any(-1)
    for masks in ([m1, m2], [m1, None]):
        a, b = K.Input((3,)), K.Input((2,))
        hb = K.layers.Masking()(b) if masks[1] is not None else b
        model = K.Model([a, b], K.layers.Concatenate()([K.layers.Masking()(a), hb]))
        want = keras_mask(lib_name, model([x1, x2]))
        np.testing.assert_array_equal(jm.nn.Concatenate(semantics=lib_name).compute_output_mask([x1, x2], masks), want)


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
def test_dot_normalize_caps_tiny_norms_like_keras(lib_name):
    K = _lib(lib_name)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 4, F)).astype(np.float32)
    x[0] *= 3e-7 / np.linalg.norm(x[0], axis=-1, keepdims=True)  # norm 3e-7: Keras 3 scales it to 1, tf_keras to 0.3
    x[1] = 0.0
    y = rng.normal(size=(3, 5, F)).astype(np.float32)
    want = np.asarray(K.layers.Dot(axes=2, normalize=True)([x, y]))
    got = jm.nn.Dot(axes=2, normalize=True, semantics=lib_name)([x, y])
    np.testing.assert_allclose(got, want, **TOL["float32"])


def _tampered(path, edit):
    """A copy of the .keras archive at ``path`` with ``edit(layer_entry)`` applied to every layer entry."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    for e in cfg["config"]["layers"]:
        edit(e)
    members["config.json"] = json.dumps(cfg).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    out = path.with_name("tampered.keras")
    out.write_bytes(buf.getvalue())
    return out


@pytest.mark.keras
@pytest.mark.parametrize("cls, field, value, match", [
    ("Concatenate", "axis", 10**6, r"axis must be an integer in \[-8, 8\]"),
    ("Concatenate", "axis", 0, r"Concatenate along the batch axis \(axis=0\) is not supported"),
    ("Dot", "axes", [0, 1], r"Dot over the batch axis"),
    ("Dot", "axes", [1, 2, 3], r"axes must be an int or a pair of ints"),
    ("Dot", "normalize", "yes", r"normalize must be true or false"),
    ("Add", "extra", 1, r"field 'extra' of Add is not understood"),
])
def test_crafted_configs_are_refused(merge_models, tmp_path, cls, field, value, match):
    model, _, _ = _case(merge_models, "keras3", "all")
    path = tmp_path / "m.keras"
    model.save(path)

    def edit(e):
        if e["class_name"] == cls:
            e["config"][field] = value

    with pytest.raises(jm.UnsafeFileError, match=match):
        jm.keras_io.load_model(_tampered(path, edit))


# --------------------------------------------------------------------------------------------------------
# tests/models/keras_models.py::gru_with_static_features end to end.
# --------------------------------------------------------------------------------------------------------


@pytest.mark.keras
@pytest.mark.parametrize("lib_name", ["keras3", "tf_keras"])
def test_gru_with_static_features_end_to_end(lib_name, tmp_path):
    import parity
    from tests.models.keras_models import gru_with_static_features

    K = _lib(lib_name)
    model, make_inputs = gru_with_static_features(K)
    ours = parity.from_keras(model)
    path = tmp_path / ("m.keras" if lib_name == "keras3" else "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(path)
    loaded = jm.keras_io.load_model(path)
    back = parity.to_keras(ours, flavor=lib_name)
    for padding in ("post", "pre"):
        x = make_inputs(np.random.default_rng(5), padding)
        want = np.asarray(model(x))
        for what, got in (("from_keras", ours(x)), ("load_model", loaded(x))):
            y, mask = (v[0] if isinstance(v, list) else v for v in got)  # tf_keras files list their one output
            assert mask is None, what
            np.testing.assert_allclose(y, want, **TOL["float32"], err_msg=f"{what} {padding}")
        np.testing.assert_allclose(np.asarray(back(x)), want, **TOL["float32"], err_msg=f"to_keras {padding}")
