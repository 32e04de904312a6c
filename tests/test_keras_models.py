"""Acceptance (issues 11 and 12): the eight models of ``tests/models/keras_models.py``, written as Keras users write
them, taken over by jaxmask three ways — ``parity.from_keras(model)``, ``jm.keras_io.load_model`` of the saved file
(``.keras`` from Keras 3, ``.h5`` from tf_keras) — and handed back with ``parity.to_keras``; outputs within 1e-5 of
Keras and output masks equal, on post- and pre-padded batches."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jaxmask as jm  # noqa: E402
from tests.models.keras_models import MODELS  # noqa: E402

pytestmark = pytest.mark.keras
FLAVORS = ("keras3", "tf_keras")


def _keras(flavor):
    return pytest.importorskip("keras" if flavor == "keras3" else "tf_keras")


def _listed(v):
    return [np.asarray(a) for a in v] if isinstance(v, (list, tuple)) else [np.asarray(v)]


def _mask_of(flavor, tensor):
    if flavor == "tf_keras":
        m = getattr(tensor, "_keras_mask", None)
    else:
        from keras.src.backend import get_keras_mask

        m = get_keras_mask(tensor)
    return None if m is None else np.asarray(m).astype(bool)


def _reset(keras_model, ours=None):
    for layer in keras_model.layers:
        for name in ("reset_states", "reset_state"):
            if getattr(layer, "stateful", False) and hasattr(layer, name):
                getattr(layer, name)()
                break
    if ours is not None:
        ours.reset_states()


@pytest.fixture(scope="module", params=[(m, f) for m in MODELS for f in FLAVORS], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, tmp_path_factory):
    name, flavor = request.param
    K = _keras(flavor)
    K.utils.set_random_seed(0)
    model, make_inputs = MODELS[name](K)
    path = tmp_path_factory.mktemp(name) / (f"{name}.keras" if flavor == "keras3" else f"{name}.h5")
    model.save(path)
    return name, flavor, model, make_inputs, path


def _reference(flavor, model, x):
    _reset(model)
    out = model(x, training=False)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o) for o in outs], [_mask_of(flavor, o) for o in outs]


def _check(ours, model, flavor, x, what):
    want, want_masks = _reference(flavor, model, x)
    ours.reset_states()
    got, masks = ours(x)
    got, masks = _listed(got), masks if isinstance(masks, list) else [masks]
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=what)
        assert np.isfinite(g).all(), what
    for m, w in zip(masks, want_masks):
        assert (m is None) == (w is None), f"{what}: mask {m is None} vs Keras {w is None}"
        if m is not None:
            np.testing.assert_array_equal(np.asarray(m), w, err_msg=what)


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_from_keras_matches(case, padding):
    import parity

    name, flavor, model, make_inputs, _ = case
    x = make_inputs(np.random.default_rng(1), padding)
    _check(parity.from_keras(model), model, flavor, x, f"{name} {flavor} {padding} from_keras")


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_load_model_matches(case, padding):
    name, flavor, model, make_inputs, path = case
    x = make_inputs(np.random.default_rng(2), padding)
    _check(jm.keras_io.load_model(path), model, flavor, x, f"{name} {flavor} {padding} load_model")


def test_to_keras_round_trip(case):
    import parity

    name, flavor, model, make_inputs, _ = case
    x = make_inputs(np.random.default_rng(3), "pre")
    ours = parity.from_keras(model)
    back = parity.to_keras(ours, flavor=flavor)
    want, _ = _reference(flavor, model, x)
    got, _ = _reference(flavor, back, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6, err_msg=f"{name} {flavor} to_keras")
