"""jaxmask.masks against independent references: Keras' own ``pad_sequences`` (and ``Masking``), and plain
Python loops written from the definitions for the masks and the scaler."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask as jm
from jaxmask.masks import NotFittedError

# The suite's tolerances (same values as the shared table): float32 outputs, float64 statistics.
TOL = {"float32": dict(atol=1e-5, rtol=1e-5), "float64": dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


# ---------------------------------------------------------------- independent references (plain loops)


def ref_compute_mask(x, mask_value):
    batch, time, features = x.shape
    mask = np.zeros((batch, time), dtype=bool)
    for b in range(batch):
        for t in range(time):
            mask[b, t] = any(not (x[b, t, f] == mask_value) for f in range(features))
    return mask


def ref_lengths_to_mask(lengths, maxlen, padding):
    mask = np.zeros((len(lengths), maxlen), dtype=bool)
    for b, length in enumerate(lengths):
        for t in range(maxlen):
            mask[b, t] = t < length if padding == "post" else t >= maxlen - length
    return mask


def ref_mask_to_lengths(mask):
    return np.array([sum(1 for v in row if v) for row in mask], dtype=np.int32)


def ref_scaler(x, mask):
    """Per-feature mean, population variance and scale (1 where the valid values are all equal)."""
    features = x.shape[-1]
    mean, var, scale = np.zeros(features), np.zeros(features), np.ones(features)
    for f in range(features):
        values = [float(x[b, t, f]) for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]
        mean[f] = math.fsum(values) / len(values)
        var[f] = math.fsum((v - mean[f]) ** 2 for v in values) / len(values)
        if len(set(values)) > 1:
            scale[f] = math.sqrt(var[f])
    return mean, var, scale


def ref_transform(x, mask, mean, scale):
    out = np.array(x, dtype=np.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                for f in range(x.shape[2]):
                    out[b, t, f] = (float(x[b, t, f]) - mean[f]) / scale[f]
    return out


def assert_identical(ours, ref):
    """Same type, dtype, shape and bytes (objects: same type and repr element by element)."""
    assert type(ours) is np.ndarray
    assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape)
    if ref.dtype == object:
        assert [(type(a), repr(a)) for a in ours.ravel()] == [(type(b), repr(b)) for b in ref.ravel()]
    else:
        assert ours.tobytes() == ref.tobytes()


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return a.dtype == b.dtype and np.array_equal(a.view(width), b.view(width))


# ---------------------------------------------------------------- pad_sequences vs keras.utils.pad_sequences

INT_SEQS = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
_rng = np.random.default_rng(0)
FLOAT_SEQS = [
    _rng.normal(size=(3, 2)),
    np.zeros((0, 2)),
    _rng.normal(size=(6, 2)) * 10,
    [[1.5, -2.25]],  # a nested list among arrays
    _rng.normal(size=(2, 2)).astype(np.float32),
]
WORDS = [["the", "cat"], ["a"], [], ["one", "two", "three", "four"]]


@pytest.mark.keras
@pytest.mark.parametrize("seqs", [INT_SEQS, FLOAT_SEQS], ids=["int_1d", "ragged_TxF"])
@pytest.mark.parametrize("dtype", ["int32", "float32", "float64", object])
@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_pad_sequences_equals_keras(keras, seqs, dtype, padding, truncating):
    for value, maxlen in itertools.product([0.0, -1, 0.5, np.nan], [None, 2, 7]):
        kwargs = dict(maxlen=maxlen, dtype=dtype, padding=padding, truncating=truncating, value=value)
        with np.errstate(invalid="ignore"):  # NaN into int32 warns in both (same result)
            ref = keras.utils.pad_sequences(seqs, **kwargs)
            ours = jm.pad_sequences(seqs, **kwargs)
        assert_identical(ours, ref)


@pytest.mark.keras
@pytest.mark.parametrize(
    "seqs, dtype",
    [
        (((1, 2), (3,), ()), "int32"),  # tuples
        (np.arange(12).reshape(3, 4), "float32"),  # a dense [B, T] array
        ([np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([4])], "int32"),
        ([[], []], "float32"),  # every sequence empty: T = 0
        ([[[1, 2], [3, 4]], [[5, 6]]], "float64"),  # nested lists [T_i, F]
        ([np.ones((2, 3, 2)), np.zeros((1, 3, 2))], "float32"),  # steps with more than one feature axis
    ],
    ids=["tuples", "dense", "arrays", "all_empty", "nested_lists", "rank4"],
)
@pytest.mark.parametrize("maxlen", [None, 1, 5])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_pad_sequences_containers_equal_keras(keras, seqs, dtype, maxlen, padding):
    kwargs = dict(maxlen=maxlen, dtype=dtype, padding=padding, truncating=padding)
    assert_identical(jm.pad_sequences(seqs, **kwargs), keras.utils.pad_sequences(seqs, **kwargs))


@pytest.mark.keras
def test_pad_sequences_object_dtype_quirk_equals_keras(keras):
    """With dtype=object a list can be one element of a later sequence (the step shape comes from the first
    non-empty sequence) until truncation turns that sequence into a [1, 2] array: both then raise."""
    seqs = [[1], [1, [2, 3]]]
    assert_identical(jm.pad_sequences(seqs, dtype=object), keras.utils.pad_sequences(seqs, dtype=object))
    with pytest.raises(ValueError):
        keras.utils.pad_sequences(seqs, maxlen=1, dtype=object)
    with pytest.raises(ValueError, match=r"`sequences\[0\]` has steps of shape \(\) but `sequences\[1\]` has \(2,\)"):
        jm.pad_sequences(seqs, maxlen=1, dtype=object)


@pytest.mark.keras
@pytest.mark.parametrize(
    "dtype, value",
    [(object, "<pad>"), ("U5", "x"), ("U2", "<pad>"), (str, "-"), ("S3", b"_"), ("float32", 0.0), (bool, 0.5)],
)
@pytest.mark.parametrize("maxlen", [None, 2])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_pad_sequences_strings_and_odd_dtypes_equal_keras(keras, dtype, value, maxlen, padding):
    seqs = WORDS if dtype not in ("float32", bool) else INT_SEQS
    kwargs = dict(maxlen=maxlen, dtype=dtype, padding=padding, truncating="post", value=value)
    assert_identical(jm.pad_sequences(seqs, **kwargs), keras.utils.pad_sequences(seqs, **kwargs))


@pytest.mark.keras
def test_pad_sequences_no_sequences_with_maxlen_equals_keras(keras):
    assert_identical(jm.pad_sequences([], maxlen=3), keras.utils.pad_sequences([], maxlen=3))
    assert jm.pad_sequences([], maxlen=3).shape == (0, 3)


@pytest.mark.keras
@pytest.mark.parametrize(
    "seqs, kwargs, kind, match",
    [
        ([[1, 2]], dict(value="x"), ValueError, r"`value` is the string 'x' but `dtype` is int32, which cannot hold"),
        ([["a"]], dict(dtype="float32", value="x"), ValueError, r"`dtype` is float32, which cannot hold strings"),
        ([[1, 2]], dict(dtype="int33"), TypeError, r"`dtype` must be a NumPy dtype .*received 'int33'"),
        ([[1, 2]], dict(maxlen=-1), ValueError, r"`maxlen` must be >= 0; received -1"),
        ([[1, 2]], dict(maxlen=2.0), TypeError, r"`maxlen` must be a non-negative Python int .*received 2\.0"),
        ([[1, 2]], dict(maxlen=True), TypeError, r"`maxlen` must be a non-negative Python int .*received True"),
        ([], dict(), ValueError, r"`maxlen` cannot be inferred from an empty `sequences`; pass maxlen=T"),
        ([[1, 2], 3], dict(), ValueError, r"`sequences\[1\]` must be a sequence .*received int 3"),
        (iter([[1]]), dict(), ValueError, r"`sequences` must be a sized collection .*list\(\.\.\.\)"),
        ([["a"], "abc"], dict(dtype=object), (ValueError, TypeError), r"`sequences\[1\]` is a str \('abc'\)"),
        (
            [np.ones((2, 2)), np.ones((1, 3))],
            dict(),
            ValueError,
            r"`sequences\[0\]` has steps of shape \(2,\) but `sequences\[1\]` has \(3,\)",
        ),
        ([[1], [2, 3], [[4, 5]]], dict(), ValueError, r"`sequences\[0\]` has steps of shape \(\) but"),
        ([[1, [2, 3]]], dict(), ValueError, r"`sequences\[0\]` could not be converted to an array: .*inhomogeneous"),
        ([[2**40]], dict(), OverflowError, r"`sequences\[0\]` could not be converted to dtype int32"),
        ([[1.5]], dict(value=None), TypeError, r"`value` = None cannot be stored in `dtype` int32"),
        ([[1, 2]], dict(padding="middle"), ValueError, r"`padding` must be one of \['post', 'pre'\]; received"),
        ([[1, 2]], dict(truncating="middle"), ValueError, r"`truncating` must be one of \['post', 'pre'\]"),
        ([{1, 2}], dict(maxlen=1), TypeError, r"`sequences\[0\]` must support slicing .*received set"),
    ],
)
def test_pad_sequences_errors_where_keras_raises(keras, seqs, kwargs, kind, match):
    with pytest.raises(kind):
        keras.utils.pad_sequences(seqs, **kwargs)
    with pytest.raises(kind if isinstance(kind, type) else ValueError, match=match):
        jm.pad_sequences(seqs, **kwargs)


@pytest.mark.keras
def test_pad_sequences_maxlen_zero_truncating_pre_is_empty_where_keras_crashes(keras):
    with pytest.raises(ValueError, match="could not broadcast"):  # Keras: s[-0:] keeps the whole sequence
        keras.utils.pad_sequences(INT_SEQS, maxlen=0, truncating="pre")
    for padding in ("pre", "post"):
        ref = keras.utils.pad_sequences(INT_SEQS, maxlen=0, padding=padding, truncating="post")
        assert_identical(jm.pad_sequences(INT_SEQS, maxlen=0, padding=padding, truncating="pre"), ref)
        assert_identical(jm.pad_sequences(INT_SEQS, maxlen=0, padding=padding, truncating="post"), ref)


@pytest.mark.keras
@pytest.mark.parametrize("dtype", ["object", "O", np.object_])
def test_pad_sequences_object_dtype_spellings_accept_string_value(keras, dtype):
    with pytest.raises(ValueError, match="You should set `dtype=object`"):  # Keras wants the builtin `object`
        keras.utils.pad_sequences(WORDS, dtype=dtype, value="<pad>")
    ref = keras.utils.pad_sequences(WORDS, dtype=object, value="<pad>")
    assert_identical(jm.pad_sequences(WORDS, dtype=dtype, value="<pad>"), ref)


def test_pad_sequences_checks_padding_even_when_all_sequences_are_empty():
    with pytest.raises(ValueError, match=r"`padding` must be one of \['post', 'pre'\]; received 'middle'"):
        jm.pad_sequences([[], []], padding="middle")


def test_pad_sequences_keras_docstring_examples():
    seqs = [[1], [2, 3], [4, 5, 6]]
    np.testing.assert_array_equal(jm.pad_sequences(seqs), [[0, 0, 1], [0, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(jm.pad_sequences(seqs, value=-1), [[-1, -1, 1], [-1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(jm.pad_sequences(seqs, padding="post"), [[1, 0, 0], [2, 3, 0], [4, 5, 6]])
    np.testing.assert_array_equal(jm.pad_sequences(seqs, maxlen=2), [[0, 1], [2, 3], [5, 6]])
    assert jm.pad_sequences(seqs).dtype == np.int32


def test_jaxmask_masks_imports_neither_keras_nor_tensorflow():
    code = "import sys, jaxmask.masks; print([m for m in ('keras', 'tensorflow', 'tf_keras') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- compute_mask


def mask_input(mask_value):
    """B == T == 4, F == 3: post-padding, pre-padding, a hole mid-sequence, a fully masked row, plus a step with
    only some features equal to mask_value (valid), a NaN step (valid) and a -0.0 step (masked when v == 0)."""
    x = np.random.default_rng(1).normal(size=(4, 4, 3)) + 5.0
    x[0, 2:] = mask_value  # post-padding
    x[1, :3] = mask_value  # pre-padding
    x[2, 1] = mask_value  # a hole
    x[3] = mask_value  # fully masked row
    x[0, 1, :2] = mask_value  # partly equal: valid
    x[1, 3] = np.nan  # NaN != v: valid
    x[2, 2] = -0.0 if mask_value == 0.0 else x[2, 2]
    return x


@pytest.mark.parametrize("mask_value", [0.0, 1.5, -1.0])
@pytest.mark.parametrize("convert", [np.asarray, jnp.asarray, lambda x: np.asarray(x, np.float32)])
def test_compute_mask_matches_loop_reference(mask_value, convert):
    x = mask_input(mask_value)
    expected = ref_compute_mask(x, mask_value)
    assert expected[3].sum() == 0 and expected[2].tolist() == [True, False, mask_value != 0.0, True]
    mask = jm.compute_mask(convert(x), mask_value)
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(jax.jit(jm.compute_mask)(convert(x), mask_value), expected)


def test_compute_mask_nan_mask_value_marks_every_step_valid():
    np.testing.assert_array_equal(jm.compute_mask(np.full((2, 3, 1), np.nan), np.nan), np.ones((2, 3), bool))


@pytest.mark.keras
def test_compute_mask_equals_keras_masking(keras):
    for mask_value in (0.0, 1.5):
        x = mask_input(mask_value).astype(np.float32)
        ref = np.asarray(keras.layers.Masking(mask_value=mask_value).compute_mask(x))
        np.testing.assert_array_equal(jm.compute_mask(x, mask_value), ref)


def test_compute_mask_errors():
    rank = r"`x` must have rank 3 with layout \[B, T, F\]; received shape \(2, 3\) \(rank 2\)\..*x\[\.\.\., None\]"
    with pytest.raises(ValueError, match=rank):
        jm.compute_mask(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`mask_value` must be a scalar .*received shape \(3,\)"):
        jm.compute_mask(np.zeros((2, 3, 3)), np.zeros(3))


# ---------------------------------------------------------------- lengths_to_mask / mask_to_lengths

LENGTHS = [0, 4, 2, 1]  # B == T == 4, with an empty row and a full row


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize(
    "convert",
    [list, np.array, lambda v: np.array(v, np.uint8), lambda v: jnp.array(v, jnp.int32)],
    ids=["list", "int64", "uint8", "jax_int32"],
)
def test_lengths_to_mask_matches_loop_reference(padding, convert):
    expected = ref_lengths_to_mask(LENGTHS, 4, padding)
    mask = jm.lengths_to_mask(convert(LENGTHS), 4, padding=padding)
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, expected)
    for lengths, maxlen in (([2, 0, 5], 5), ([0, 0], 0)):  # B != T, and T == 0
        np.testing.assert_array_equal(
            jm.lengths_to_mask(convert(lengths), maxlen, padding), ref_lengths_to_mask(lengths, maxlen, padding)
        )


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_lengths_to_mask_under_jit_skips_the_value_check_and_clips(padding):
    fn = jax.jit(jm.lengths_to_mask, static_argnames=("maxlen", "padding"))
    expected = ref_lengths_to_mask(LENGTHS, 4, padding)
    np.testing.assert_array_equal(fn(jnp.array(LENGTHS), maxlen=4, padding=padding), expected)
    clipped = ref_lengths_to_mask([0, 4, 3], 4, padding)
    np.testing.assert_array_equal(fn(jnp.array([-2, 9, 3]), maxlen=4, padding=padding), clipped)


@pytest.mark.keras
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_lengths_to_mask_matches_keras_pad_sequences_layout(keras, padding):
    seqs = [[1] * n for n in LENGTHS]
    padded = keras.utils.pad_sequences(seqs, maxlen=4, padding=padding)
    np.testing.assert_array_equal(jm.lengths_to_mask(np.array(LENGTHS), 4, padding), padded != 0)


def test_lengths_to_mask_errors():
    with pytest.raises(ValueError, match=r"`lengths` must have rank 1 with layout \[B\]; received shape \(2, 1\)"):
        jm.lengths_to_mask(np.array([[1], [2]]), 3)
    with pytest.raises(TypeError, match=r"`lengths` must be integers .*received dtype float32.*astype\(np\.int32\)"):
        jm.lengths_to_mask(np.array([1.0, 2.0], np.float32), 3)
    with pytest.raises(ValueError, match=r"\[0, maxlen\] = \[0, 4\]; received lengths\[1\] = 5\. Raise maxlen .* = 5"):
        jm.lengths_to_mask(np.array([1, 5, 2]), 4)
    with pytest.raises(ValueError, match=r"= \[0, 4\]; received lengths\[0\] = -1\."):
        jm.lengths_to_mask(jnp.array([-1, 2]), 4, padding="pre")
    with pytest.raises(ValueError, match=r"`maxlen` must be >= 0; received -1"):
        jm.lengths_to_mask(np.array([0]), -1)
    with pytest.raises(TypeError, match=r"`maxlen` must be a non-negative Python int .*received 2\.5 .*static_argn"):
        jm.lengths_to_mask(np.array([1]), 2.5)
    with pytest.raises(ValueError, match=r"`padding` must be one of \['post', 'pre'\]; received 'left'"):
        jm.lengths_to_mask(np.array([1]), 2, padding="left")


MASKS = [
    np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 1], [0, 0, 0, 0]], dtype=bool),  # post, pre, hole, all masked
    np.array([[1, 0, 1], [0, 0, 0]], dtype=np.int32),
    np.array([[1.0, 1.0], [0.0, 1.0]], dtype=np.float32),
]


@pytest.mark.parametrize("mask", MASKS, ids=["bool_BeqT", "int", "float"])
def test_mask_to_lengths_matches_loop_reference(mask):
    for fn in (jm.mask_to_lengths, jax.jit(jm.mask_to_lengths)):
        lengths = fn(mask)
        assert lengths.dtype == jnp.int32
        np.testing.assert_array_equal(lengths, ref_mask_to_lengths(mask))


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_lengths_mask_round_trip(padding):
    lengths = np.array([3, 0, 7, 7, 1, 5, 2])  # B == T == 7
    np.testing.assert_array_equal(jm.mask_to_lengths(jm.lengths_to_mask(lengths, 7, padding)), lengths)


def test_mask_to_lengths_errors():
    with pytest.raises(ValueError, match=r"`mask` must have rank 2 with layout \[B, T\]; received shape \(2, 3, 1\)"):
        jm.mask_to_lengths(np.ones((2, 3, 1), bool))
    with pytest.raises(TypeError, match=r"`mask` must be bool \(True = valid step\) or 0/1 numbers; received dtype <U"):
        jm.mask_to_lengths(np.array([["a", "b"]]))


# ---------------------------------------------------------------- MaskedStandardScaler

SCALER_MASK = np.array(
    [
        [1, 1, 1, 0, 0],  # post-padding
        [0, 0, 1, 1, 1],  # pre-padding
        [1, 1, 0, 1, 1],  # a hole mid-sequence
        [0, 0, 0, 0, 0],  # fully masked row
        [1, 1, 1, 1, 1],
    ],
    dtype=bool,
)  # B == T == 5


def scaler_input(dtype=np.float64):
    """[5, 5, 3] with NaN, +-Inf and arbitrary values in the padding; feature 2 is constant (0.1) on valid steps."""
    x = np.random.default_rng(2).normal(loc=[2.0, -30.0, 0.0], scale=[1.0, 8.0, 1.0], size=(5, 5, 3))
    x[..., 2] = 0.1
    pad = np.argwhere(~SCALER_MASK)
    fill = [np.nan, np.inf, -np.inf, 0.0, 7.25, -0.0]
    for k, (b, t) in enumerate(pad):
        x[b, t] = fill[k % len(fill)]
    return x.astype(dtype)


def test_scaler_statistics_match_loop_reference():
    x = scaler_input()
    scaler = jm.MaskedStandardScaler().fit(x, SCALER_MASK)
    mean, var, scale = ref_scaler(x, SCALER_MASK)
    np.testing.assert_allclose(scaler.mean_, mean, **TOL["float64"])
    np.testing.assert_allclose(scaler.var_, var, **TOL["float64"])
    np.testing.assert_allclose(scaler.scale_, scale, **TOL["float64"])
    assert scaler.scale_[2] == 1.0  # constant feature (0.1 is inexact in binary): scale 1, as scikit-learn
    assert (scaler.n_samples_seen_, scaler.n_features_in_) == (int(SCALER_MASK.sum()), 3)
    assert scaler.mean_.dtype == scaler.scale_.dtype == np.float64


def test_scaler_transform_numpy_float64_scales_valid_steps_and_keeps_padding_bits():
    x = scaler_input()
    quiet_nan_with_payload = np.array([0x7FF8_0000_0000_0123], np.uint64).view(np.float64)[0]
    x[3, 0, 1] = quiet_nan_with_payload
    scaler = jm.MaskedStandardScaler().fit(x, SCALER_MASK)
    out = scaler.transform(x, SCALER_MASK)
    assert type(out) is np.ndarray and out.dtype == np.float64
    expected = ref_transform(x, SCALER_MASK, *ref_scaler(x, SCALER_MASK)[::2])
    np.testing.assert_allclose(out[SCALER_MASK], expected[SCALER_MASK], **TOL["float64"])
    assert same_bits(out[~SCALER_MASK], x[~SCALER_MASK])
    back = scaler.inverse_transform(out, SCALER_MASK)
    np.testing.assert_allclose(back[SCALER_MASK], x[SCALER_MASK], **TOL["float64"])
    assert same_bits(back[~SCALER_MASK], x[~SCALER_MASK])


def test_scaler_transform_jax_float32_under_jit_keeps_padding_bits():
    x = scaler_input(np.float32)
    scaler = jm.MaskedStandardScaler().fit(x, SCALER_MASK)
    out = jax.jit(scaler.transform)(jnp.asarray(x), jnp.asarray(SCALER_MASK))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    expected = ref_transform(x, SCALER_MASK, *ref_scaler(x, SCALER_MASK)[::2])
    np.testing.assert_allclose(np.asarray(out)[SCALER_MASK], expected[SCALER_MASK], **TOL["float32"])
    assert same_bits(np.asarray(out)[~SCALER_MASK], x[~SCALER_MASK])
    back = jax.jit(scaler.inverse_transform)(out, jnp.asarray(SCALER_MASK))
    np.testing.assert_allclose(np.asarray(back)[SCALER_MASK], x[SCALER_MASK], **TOL["float32"])
    assert same_bits(np.asarray(back)[~SCALER_MASK], x[~SCALER_MASK])


def test_scaler_default_mask_is_the_zero_sentinel_before_scaling():
    """The seed's problem: scaling every step moves the zero padding, so Masking(0.0) loses it. Here the
    mask comes from the raw x and padding stays exactly zero, so compute_mask still finds it afterwards."""
    x = scaler_input()
    x[~SCALER_MASK] = 0.0
    mask = ref_compute_mask(x, 0.0)
    np.testing.assert_array_equal(mask, SCALER_MASK)
    naive = (x - x.reshape(-1, 3).mean(0)) / x.reshape(-1, 3).std(0)  # what StandardScaler on reshape(-1, F) does
    assert ref_compute_mask(naive, 0.0).all()  # padding no longer looks like padding

    scaled = jm.MaskedStandardScaler().fit_transform(x)
    expected = ref_transform(x, mask, *ref_scaler(x, mask)[::2])
    np.testing.assert_allclose(scaled, expected, **TOL["float64"])
    np.testing.assert_array_equal(jm.compute_mask(scaled), SCALER_MASK)
    scaler = jm.MaskedStandardScaler().fit(x)
    np.testing.assert_allclose(scaler.transform(x), expected, **TOL["float64"])


def test_scaler_integer_input_becomes_float():
    x = np.arange(2 * 4 * 2).reshape(2, 4, 2) % 5
    mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
    scaler = jm.MaskedStandardScaler().fit(x, mask)
    mean, _, scale = ref_scaler(x, mask)
    out = scaler.transform(x, mask)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref_transform(x, mask, mean, scale), **TOL["float64"])
    assert scaler.transform(jnp.asarray(x, jnp.int32), mask).dtype == jnp.float32


def test_scaler_accepts_0_1_masks_and_matches_bool():
    x = scaler_input()
    scaler = jm.MaskedStandardScaler().fit(x, SCALER_MASK.astype(np.float32))
    np.testing.assert_allclose(scaler.mean_, ref_scaler(x, SCALER_MASK)[0], **TOL["float64"])
    assert same_bits(scaler.transform(x, SCALER_MASK.astype(np.int32)), scaler.transform(x, SCALER_MASK))


def test_scaler_errors():
    x = scaler_input()
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit\(x, mask\) before transform"):
        jm.MaskedStandardScaler().transform(x, SCALER_MASK)
    with pytest.raises(ValueError, match=r"not fitted yet; call fit\(x, mask\) before inverse_transform"):
        jm.MaskedStandardScaler().inverse_transform(x, SCALER_MASK)
    scaler = jm.MaskedStandardScaler().fit(x, SCALER_MASK)
    with pytest.raises(ValueError, match=r"`x` has F = 2 features but this MaskedStandardScaler was fitted with F = 3"):
        scaler.transform(x[..., :2], SCALER_MASK)
    mask_shape = r"`mask` must be a \[B, T\] array matching the input's \(B, T\) = \(5, 5\); received shape \(5, 4\)"
    with pytest.raises(ValueError, match=mask_shape):
        scaler.transform(x, SCALER_MASK[:, :4])
    with pytest.raises(ValueError, match=r"`x` must have rank 3 with layout \[B, T, F\]; received shape \(5, 5\)"):
        scaler.fit(x[..., 0], SCALER_MASK)
    with pytest.raises(TypeError, match=r"`x` must be real numbers; received dtype complex128"):
        scaler.fit(x.astype(complex), SCALER_MASK)
    with pytest.raises(ValueError, match=r"`mask` marks no valid step"):
        scaler.fit(x, np.zeros((5, 5), bool))
    bad = x.copy()
    bad[2, 3, 1] = np.inf
    with pytest.raises(ValueError, match=r"non-finite value inf at the valid step \(b, t\) = \(2, 3\), feature 1\."):
        scaler.fit(bad, SCALER_MASK)
    with pytest.raises(ValueError, match=r"`mask` is required for inverse_transform"):
        scaler.inverse_transform(x)
    with pytest.raises(TypeError, match=r"fit needs concrete arrays"):
        jax.jit(lambda v: scaler.fit(v, SCALER_MASK).mean_)(jnp.asarray(x))
    np.testing.assert_allclose(scaler.mean_, ref_scaler(x, SCALER_MASK)[0], **TOL["float64"])  # failed fits kept state
