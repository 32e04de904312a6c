"""Host-side data handling for the Trainer: input validation (arrays, ragged lists, several inputs and
outputs), streams of batches (iterables and PyDataset-like objects), per-epoch batch plans (shuffles derived
from ``(seed, epoch)``), length bucketing, one-batch-ahead prefetching, and placing batches on a device mesh.

Arrays stay in host memory as NumPy; one batch at a time is gathered and placed, sharded along the
mesh's ``"batch"`` axis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import queue
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _host(name: str, value, dtype=None) -> np.ndarray:
    if isinstance(value, jax.Array):
        value = jax.device_get(value)
    try:
        out = np.asarray(value, dtype=dtype)
    except ValueError:
        out = None
    if out is None or (out.dtype == object and isinstance(value, (list, tuple))):
        raise ValueError(
            f"`{name}` could not be turned into one array: a list of sequences whose lengths do not line up with the "
            "sequences of `x` (or with each other), or of mismatched feature shapes. Pass ragged sequences as a list "
            "of [T_i, F] (or [T_i]) arrays for x, and for y / sample_weight either one row per sample or a list of "
            "[T_i, ...] arrays with the same T_i as x."
        ) from None
    return out


def _each(fn, value):
    """``fn`` applied to one array, or to every entry of a list (one per input or output); None stays None."""
    if value is None:
        return None
    if isinstance(value, list):
        return [None if v is None else fn(v) for v in value]
    return fn(value)


def _leaves(value) -> list:
    return [v for v in (value if isinstance(value, list) else [value]) if v is not None]


def padded_length(t: int, lengths=None) -> int:
    """The time length a batch of ``t`` steps is padded up to, from a small set so that compilations stay few.

    With ``lengths`` (a list of ints, e.g. ``bucket_by_length=[16, 32, 64]``): the smallest one >= ``t``. Else,
    and for ``t`` beyond the largest of them, the smallest ``m · 2**k >= t`` with m in {4, 5, 6, 7} and k >= 1:
    8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, ... (at most four lengths per doubling of T, and fewer than 25%
    added steps for t > 8).
    """
    t = int(t)
    if lengths:
        fits = [b for b in lengths if b >= t]
        if fits:
            return int(min(fits))
    if t <= 8:
        return 8
    k = t.bit_length() - 3
    return -(-t // (1 << k)) << k


# --------------------------------------------------------------------------------------------------
# Model layout: several inputs and outputs, padding values, declared time lengths
# --------------------------------------------------------------------------------------------------


def _masking_value(layer):
    """The ``mask_value`` of ``layer`` when it is (or, for a Sequential, starts with) a Masking layer; 0 for
    ``Embedding(mask_zero=True)``; else None."""
    from jaxmask import nn as jm_nn

    if isinstance(layer, jm_nn.Sequential) and len(layer.layers):
        return _masking_value(layer.layers[0])
    if isinstance(layer, jm_nn.Masking):
        return float(layer.mask_value)
    return None


@dataclasses.dataclass(frozen=True)
class Layout:
    """The data layout of one model: its inputs and outputs, and how to pad each input's time axis.

    Attributes:
      input_names: the names in call order when the model takes several inputs (``model.input_names``), else None.
      output_names: the names in output order when the model returns a list (``model.output_names``), else None.
      pad_values: per input, the value padded steps get: the ``mask_value`` of a ``Masking`` layer that reads the
        input (so the model masks them itself), else 0.
      time_lengths: per input, the time length the model declares (``jm.nn.Input((T, F))``), None when it is free
        (``Input((None, F))``, any ``Sequential``), or -1 when the input has no time axis the Trainer may pad.
      bucket_lengths: the lengths batches of varying T are padded up to (see :func:`padded_length`), or None.
    """

    input_names: tuple | None = None
    output_names: tuple | None = None
    pad_values: tuple = (0.0,)
    time_lengths: tuple = (None,)
    bucket_lengths: tuple | None = None

    @classmethod
    def of(cls, model) -> "Layout":
        """The layout of ``model``: a ``jm.nn.Sequential``, a ``jm.nn.Model``, or any NNX module (several inputs or
        outputs need ``input_names`` / ``output_names`` attributes, as ``jm.nn.Model`` has)."""
        inputs = getattr(model, "input_names", None)
        inputs = tuple(inputs) if inputs is not None and len(inputs) > 1 else None
        outputs = getattr(model, "output_names", None)
        several = outputs is not None and (len(outputs) > 1 or getattr(model, "single_output", True) is False)
        outputs = tuple(outputs) if several else None
        n = 1 if inputs is None else len(inputs)
        graph = getattr(model, "graph", None)
        pad_values, time_lengths = [0.0] * n, [None if inputs is None else -1] * n
        if graph is not None and hasattr(graph, "inputs") and len(graph.inputs) == n:
            for i, (_, shape, _) in enumerate(graph.inputs):
                time_lengths[i] = (shape[1] if len(shape) >= 3 or (len(shape) == 2 and shape[1] is None) else -1)
            for step in getattr(graph, "steps", ()):
                value = _masking_value(model.layers[step.layer])
                refs = [r for r in step.leaves if getattr(r, "kind", None) == "input"]
                if value is not None and refs:
                    pad_values[refs[0].index] = value
        else:
            layers = getattr(model, "layers", None)
            if inputs is None and layers is not None and len(layers):
                value = _masking_value(layers[0])
                pad_values[0] = 0.0 if value is None else value
        return cls(inputs, outputs, tuple(pad_values), tuple(time_lengths))

    @property
    def n_inputs(self) -> int:
        return 1 if self.input_names is None else len(self.input_names)

    def input_label(self, i: int) -> str:
        return "x" if self.input_names is None else f"x[{self.input_names[i]!r}]"

    def output_label(self, what: str, j: int) -> str:
        return what if self.output_names is None else f"{what}[{self.output_names[j]!r}]"

    def split(self, value, what: str, prefix: str, names) -> list:
        """``value`` as a list with one entry per name (a list in order, or a dict by name); ``[value]`` when
        ``names`` is None (one input or output)."""
        if names is None:
            return [value]
        if isinstance(value, dict):
            if set(value) - set(names) or (what == "x" and set(names) - set(value)):
                raise ValueError(
                    f"{prefix}`{what}` is a dict with keys {sorted(value)}; the model's {'inputs' if what == 'x' else 'outputs'} "
                    f"are {list(names)}. Use exactly those names{'' if what == 'x' else ' (a missing output gets None)'}."
                )
            return [value.get(k) for k in names]
        if isinstance(value, list) and len(value) == len(names):
            return list(value)
        kind = "inputs" if what in ("x", "mask") else "outputs"
        got = f"a list of {len(value)} entries" if isinstance(value, list) else f"one {type(value).__name__}"
        raise ValueError(
            f"{prefix}`{what}` must be a list with one entry per model {kind[:-1]} ({len(names)}: {list(names)}) or a "
            f"dict keyed by those names; received {got}."
        )

    def time_length(self, i: int, t: int, label: str) -> int:
        """The time length input ``i`` with ``t`` steps is padded to."""
        declared = self.time_lengths[i]
        if declared is None:
            return padded_length(t, self.bucket_lengths)
        if declared == -1:
            return t
        if t > declared:
            raise ValueError(f"`{label}` has sequences of {t} steps; the model's input takes T = {declared}.")
        return declared


def _is_sequence_list(value) -> bool:
    """A Python list of sequences (arrays or lists with a first axis) rather than nested numbers of one array."""
    return isinstance(value, list) and len(value) > 0 and all(
        hasattr(v, "shape") and len(v.shape) >= 1 or isinstance(v, (list, tuple)) for v in value
    )


def _ragged_lengths(value) -> np.ndarray | None:
    """The lengths T_i of a list of sequences when they differ (a ragged list), else None."""
    if not _is_sequence_list(value):
        return None
    lengths = np.asarray([len(v) for v in value], np.int64)
    return lengths if len(set(lengths.tolist())) > 1 else None


def _pad_sequences(label: str, seqs, t: int, value: float) -> np.ndarray:
    from jaxmask.masks import pad_sequences

    arrays = [np.asarray(s) for s in seqs]
    kinds = {a.dtype.kind for a in arrays}
    dtype = "int32" if kinds <= {"i", "u"} else "float32"
    try:
        return pad_sequences(arrays, maxlen=t, dtype=dtype, padding="post", truncating="post", value=value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"`{label}`: its sequences could not be padded into one array ({e}).") from None


def _labels(label: str, value, lengths, t) -> np.ndarray:
    """Labels or weights of one output: an array, or (when x is ragged) a list of per-step [T_i, ...] arrays,
    padded to ``t`` with zeros."""
    if lengths is not None and _is_sequence_list(value) and len(value) == len(lengths):
        own = np.asarray([len(v) for v in value])
        if np.array_equal(own, lengths):
            return _pad_sequences(label, value, t, 0.0)
    return _host(label, value)


@dataclasses.dataclass
class ArrayData:
    """Validated host arrays.

    ``x`` [N, T, ...] (or a list with one array per input), optional ``y`` [N, ...] (or a list per output), ``mask``
    bool [N, T] (or a list per input, None entries allowed), ``sample_weight`` [N], [N, 1] or [N, T] (or a list
    per output). ``lengths`` [N] are the sequence lengths when ``x`` came as a ragged list (padded here);
    ``source_t`` the time length of a batch before :func:`pad_time` padded it.
    """

    x: np.ndarray | list
    y: np.ndarray | list | None = None
    mask: np.ndarray | list | None = None
    sample_weight: np.ndarray | list | None = None
    lengths: np.ndarray | None = None
    source_t: int | None = None

    @property
    def n(self) -> int:
        return _leaves(self.x)[0].shape[0]

    @property
    def t(self) -> int:
        timed = [a for a in _leaves(self.x) if a.ndim >= 2]
        return timed[0].shape[1] if timed else 1

    @property
    def shapes(self) -> list:
        """Per-sample shapes of the inputs (the run's data layout, for fingerprints)."""
        return [list(a.shape[1:]) for a in _leaves(self.x)]

    def subset(self, idx) -> "ArrayData":
        pick = lambda a: a[idx]  # noqa: E731
        lengths = None if self.lengths is None else self.lengths[idx]
        return ArrayData(_each(pick, self.x), _each(pick, self.y), _each(pick, self.mask), _each(pick, self.sample_weight),
                         lengths)

    def batch(self, idx: np.ndarray, length: int | None = None, *, y_has_time: bool = False) -> dict:
        """Rows ``idx`` as a batch dict; with ``length``, every time axis is cut to its first ``length`` steps
        (``y`` and ``[N, T]`` sample weights too when ``y_has_time``; one input and one output only)."""
        cut = slice(None) if length is None else slice(0, length)
        rows = lambda a: a[idx]  # noqa: E731
        if length is None:
            return {"x": _each(rows, self.x), "y": _each(rows, self.y), "mask": _each(rows, self.mask),
                    "sample_weight": _each(rows, self.sample_weight)}
        x = self.x[idx][:, cut]
        mask = None if self.mask is None else self.mask[idx][:, cut]
        y = None
        if self.y is not None:
            y = self.y[idx][:, cut] if y_has_time else self.y[idx]
        sw = None
        if self.sample_weight is not None:
            sw = self.sample_weight[idx]
            if sw.ndim == 2 and sw.shape[1] == self.t:
                sw = sw[:, cut]
        return {"x": x, "y": y, "mask": mask, "sample_weight": sw}


def unpack_x(x, mask):
    """Accept ``x`` or ``(x, mask)``; return ``(x, mask)``."""
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(
                f"`x` given as a tuple must be (x, mask); received a tuple of {len(x)} items. Pass the array "
                "itself, or (x, mask) with mask bool [N, T]. Several inputs go in a list or a dict by input name."
            )
        if mask is not None:
            raise ValueError("The mask was given twice: as `x=(x, mask)` and as `mask=`. Pass it once.")
        x, mask = x
    return x, mask


def _check_mask(label: str, mask, n: int, t: int) -> np.ndarray:
    mask = _host(label, mask)
    if mask.shape != (n, t):
        raise ValueError(
            f"{label} must be bool [N, T] = {(n, t)} matching x; received shape {mask.shape}. Build one "
            "with jm.lengths_to_mask(lengths, T) or jm.compute_mask(x)."
        )
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{label} must be bool (True = valid step) or 0/1 numbers; received {mask.dtype}.")
    return mask.astype(bool)


def prepare(x, y=None, *, mask=None, sample_weight=None, require_y: bool = True, prefix: str = "",
            layout: Layout | None = None) -> ArrayData:
    """Validate and convert user inputs (argument names in errors get ``prefix``, e.g. ``"validation_data "``).

    ``x`` is an array, ``(x, mask)``, a ragged list of [T_i, F] (or [T_i] token) sequences, or, for a model with
    several inputs, a list in input order or a dict by input name (whose entries may be ragged lists). A ragged
    list is padded at the end (with the ``mask_value`` of the model's ``Masking`` layer, else 0) to
    :func:`padded_length` of its longest sequence, and masked from the lengths; ``y`` and ``sample_weight`` may
    then be lists of per-step [T_i, ...] arrays too. For several outputs ``y`` and ``sample_weight`` are lists in
    output order or dicts by output name (one ``sample_weight`` array serves every output).

    Raises:
      ValueError: missing ``x``/``y``, bad ranks, x/y/mask/sample_weight sample counts or shapes that differ,
        inputs or outputs that do not match the model's.
      TypeError: a mask that is not bool or 0/1 numbers.
    """
    layout = layout or Layout()
    x, mask = unpack_x(x, mask)
    if x is None:
        raise ValueError(f"{prefix}`x` is required: an array [N, T, F] (or int token ids [N, T]).")
    single = layout.input_names is None
    xs = layout.split(x, "x", prefix, layout.input_names)
    masks = [None] * len(xs) if mask is None else layout.split(mask, "mask", prefix, layout.input_names)
    arrays, lengths = [], None
    for i, (value, m) in enumerate(zip(xs, masks)):
        label = prefix + layout.input_label(i)
        if value is None:
            raise ValueError(f"{prefix}`x` has no data for input {layout.input_names[i]!r}.")
        ragged = _ragged_lengths(value)
        if ragged is not None:
            if m is not None:
                raise ValueError(
                    f"{prefix}a mask was given for `{layout.input_label(i)}`, a ragged list whose mask comes from the "
                    "sequence lengths. Drop the mask, or pad the sequences yourself and keep it."
                )
            t = layout.time_length(i, int(ragged.max()), layout.input_label(i))
            value = _pad_sequences(label, value, t, layout.pad_values[i])
            masks[i] = np.arange(t)[None, :] < ragged[:, None]
            lengths = ragged if lengths is None else lengths
        arrays.append(_host(label, value))
    a0 = arrays[0]
    if single and a0.ndim < 2:
        raise ValueError(
            f"{prefix}`x` must be [N, T, F] (or int token ids [N, T]); received shape {a0.shape}. "
            "Add a feature axis with x[..., None]."
        )
    n = a0.shape[0] if a0.ndim else 0
    if n == 0:
        raise ValueError(f"{prefix}`x` holds no samples (shape {a0.shape}).")
    for i, a in enumerate(arrays):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"{prefix}`{layout.input_label(i)}` holds {a.shape[0] if a.ndim else 'no'} samples (shape {a.shape}) and "
                f"`{layout.input_label(0)}` holds {n}; every input needs one row per sample."
            )
    for i, m in enumerate(masks):
        if m is not None:
            if arrays[i].ndim < 2:
                raise ValueError(f"{prefix}`mask` for `{layout.input_label(i)}`: that input has no time axis.")
            name = "`mask`" if single else f"`mask[{layout.input_names[i]!r}]`"
            masks[i] = _check_mask(prefix + name, m, n, arrays[i].shape[1])
    t = ArrayData(arrays).t
    ys = None
    if y is None:
        if require_y:
            raise ValueError(f"{prefix}`y` is required: labels with one row per sample of x.")
    else:
        ys = layout.split(y, "y", prefix, layout.output_names)
        for j, value in enumerate(ys):
            if value is None:
                continue
            label = layout.output_label("y", j)
            value = _labels(prefix + label, value, lengths, t)
            if value.ndim == 0 or value.shape[0] != n:
                x_desc = f"x with {n} samples (shape {a0.shape})" if single else f"x with {n} samples"
                raise ValueError(
                    f"{prefix}`x` and `{label}` must hold the same number of samples (first axis); received {x_desc} "
                    f"and {label} with {value.shape[0] if value.ndim else 'no'} (shape {value.shape})."
                )
            ys[j] = value
    weights = None
    if sample_weight is not None:
        several = layout.output_names is not None and isinstance(sample_weight, (list, dict))
        weights = layout.split(sample_weight, "sample_weight", prefix, layout.output_names if several else None)
        for j, value in enumerate(weights):
            if value is None:
                continue
            label = layout.output_label("sample_weight", j) if several else "sample_weight"
            value = _labels(prefix + label, value, lengths, t)
            allowed = ((n,), (n, 1), (n, t)) if single else ((n,), (n, 1))
            if value.shape not in allowed and not (not single and value.ndim == 2 and value.shape[0] == n):
                raise ValueError(
                    f"{prefix}`{label}` must be [N] = ({n},), [N, 1] or [N, T] = {(n, t)}; received shape "
                    f"{value.shape}."
                )
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{prefix}`{label}` must be numeric; received dtype {value.dtype}.")
            weights[j] = value.astype(np.float32)
        weights = weights if several else weights[0]
    x_out = arrays[0] if single else arrays
    mask_out = masks[0] if single else (None if all(m is None for m in masks) else masks)
    y_out = None if ys is None else (ys[0] if layout.output_names is None else ys)
    return ArrayData(x_out, y_out, mask_out, weights, lengths)


def split_validation(data: ArrayData, fraction) -> tuple[ArrayData, ArrayData]:
    """Keras' ``validation_split``: the last samples (before any shuffling) validate; the first
    ``floor(N · (1 - fraction))`` train, as Keras 3 splits.

    Raises:
      ValueError: ``fraction`` outside (0, 1), or a split that leaves either side empty.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(
            f"`validation_split` must be a float in (0, 1), the fraction of samples held out; received {fraction!r}."
        )
    cut = int(math.floor(data.n * (1.0 - fraction)))
    if cut == 0 or cut == data.n:
        raise ValueError(
            f"`validation_split={fraction}` of N = {data.n} samples leaves {cut} for training and "
            f"{data.n - cut} for validation; both need at least one sample."
        )
    return data.subset(slice(0, cut)), data.subset(slice(cut, None))


def check_batch_size(batch_size, n: int, what: str = "training") -> int:
    """``batch_size`` checked, capped at ``n``: fewer samples than ``batch_size`` make one batch of all of them,
    as in Keras."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    return int(min(batch_size, n))


# --------------------------------------------------------------------------------------------------
# Streams of batches: iterables and PyDataset-like objects
# --------------------------------------------------------------------------------------------------


def is_stream(x) -> bool:
    """True for an iterable of batches or a PyDataset-like object (``__len__`` + ``__getitem__``), as opposed
    to arrays, ``(x, mask)`` tuples, lists (of inputs or ragged sequences) and dicts."""
    if x is None or isinstance(x, (np.ndarray, jax.Array, list, tuple, dict, str, bytes)) or hasattr(x, "__array__"):
        return False
    kind = type(x)
    return hasattr(kind, "__iter__") or (hasattr(kind, "__len__") and hasattr(kind, "__getitem__"))


def check_steps(name: str, steps) -> int | None:
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`{name}` must be a positive int or None; received {steps!r}.")
    return int(steps)


class Stream:
    """Batches of a Python iterable or of a PyDataset-like object, one epoch at a time, as Keras 3 reads them.

    * An object with ``__len__`` and ``__getitem__`` (Keras' ``PyDataset`` protocol; a ``num_batches``
      attribute, None for endless, wins over ``len``) gives batches ``source[i]``; with ``shuffle`` their order
      is permuted every pass (as Keras does for a ``PyDataset``), from the Trainer's seed. ``on_epoch_end()`` is
      called after every epoch when the object has one.
    * Any other iterable gives the batches of ``iter(source)``; a generator, ``iter(...)`` or tf.data's
      ``as_numpy_iterator()`` is one-shot (``iter`` returns itself), a DataLoader, a ``tf.data.Dataset`` or any
      re-iterable object starts a new pass each time.

    Without ``steps`` an epoch is one pass, until the source is exhausted. With ``steps`` an epoch is ``steps``
    batches and the next epoch goes on where this one stopped (Keras' ``steps_per_epoch``); a pass that ends
    early ends the epoch with Keras' warning, and the next epoch starts a new pass.

    Raises (from :meth:`epoch`):
      ValueError: an epoch that gets no batch at all (an empty source, or a one-shot iterator already
        used up), naming the argument. Keras 3.15 (run) raises for an empty generator too, but for a used-up one
        it warns "Your input ran out of data" and replays, every later epoch, the first batches it peeked at
        to infer shapes (``GeneratorDataAdapter``): a named deviation, jaxmask does not train on stale batches.
    """

    def __init__(self, source, name: str = "x", *, steps: int | None = None, shuffle: bool = False):
        self.source = source
        self.name = name
        self.steps = check_steps("steps_per_epoch" if name == "x" else "validation_steps", steps)
        kind = type(source)
        self.indexed = hasattr(kind, "__len__") and hasattr(kind, "__getitem__")
        self.shuffle = bool(shuffle) and self.indexed
        self.one_shot = not self.indexed and hasattr(kind, "__next__")
        self.batches_seen = 0
        self._current = None

    def __len__(self):
        """Batches per epoch when known (``steps``, or a PyDataset-like object's length), else TypeError."""
        known = self.steps if self.steps is not None else (self._length() if self.indexed else None)
        if known is None:
            raise TypeError(f"`{self.name}` has no known number of batches per epoch.")
        return known

    def known_length(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    def _length(self):
        n = getattr(self.source, "num_batches", None) if hasattr(self.source, "num_batches") else len(self.source)
        return None if n is None else int(n)

    def _pass(self, rng: np.random.Generator | None):
        if not self.indexed:
            return iter(self.source)
        n = self._length()
        if n is None:
            return (self.source[i] for i in itertools.count())
        order = rng.permutation(n) if self.shuffle and rng is not None else range(n)
        return (self.source[int(i)] for i in order)

    def _exhausted(self, epoch: int) -> ValueError:
        before = f" (it gave {self.batches_seen} batches before)" if self.batches_seen else ""
        return ValueError(
            f"`{self.name}` gave no batch for epoch {epoch}{before}. A one-shot iterator (a generator, iter(...), "
            "tf.data's as_numpy_iterator()) serves one pass only: use epochs=1, make it endless and pass "
            f"{'steps_per_epoch' if self.name == 'x' else 'validation_steps'}, or pass a re-iterable source (a "
            "DataLoader, a tf.data.Dataset, or an object with __len__ and __getitem__ returning batches)."
        )

    def epoch(self, epoch: int = 0, rng: np.random.Generator | None = None, skip: int = 0):
        """The raw batches of one epoch (after skipping ``skip`` of them: a resumed epoch)."""
        count = 0
        if self.steps is None:
            for raw in self._pass(rng):
                count += 1
                self.batches_seen += 1
                if count > skip:
                    yield raw
        else:
            if self._current is None:
                self._current = self._pass(rng)
            while count < self.steps:
                try:
                    raw = next(self._current)
                except StopIteration:
                    self._current = None
                    if count == 0 and not self.one_shot:
                        self._current = self._pass(rng)
                        raw = next(self._current, None)
                        if raw is None:
                            self._current = None
                            break
                    else:
                        if count:
                            warnings.warn(
                                f"`{self.name}` ran out of data after {count} of {self.steps} steps of epoch {epoch}; "
                                "the epoch ends here. Make sure that your dataset or generator can generate at least "
                                "`steps_per_epoch * epochs` batches (Keras' warning), or make it endless.",
                                stacklevel=2,
                            )
                        break
                count += 1
                self.batches_seen += 1
                if count > skip:
                    yield raw
        if count == 0:
            raise self._exhausted(epoch)

    def end_epoch(self) -> None:
        hook = getattr(self.source, "on_epoch_end", None)
        if self.indexed and callable(hook):
            hook()


def unpack_batch(raw, where: str, *, require_y: bool) -> tuple:
    """One batch of a stream as ``(x, y, sample_weight, mask)``: a tuple (or list) ``(x,)``, ``(x, y)``,
    ``(x, y, sample_weight)`` or ``(x, y, sample_weight, mask)`` (``sample_weight`` may be None); a bare array
    is ``(x,)``."""
    if isinstance(raw, (np.ndarray, jax.Array)) or hasattr(raw, "__array__"):
        raw = (raw,)
    if isinstance(raw, list):
        raw = tuple(raw)
    if not isinstance(raw, tuple) or not 1 <= len(raw) <= 4:
        got = f"a tuple of {len(raw)} items" if isinstance(raw, tuple) else type(raw).__name__
        raise ValueError(
            f"{where} must be a tuple (x,), (x, y), (x, y, sample_weight) or (x, y, sample_weight, mask); received "
            f"{got}. Several inputs go in a list or dict inside the tuple: ([x1, x2], y)."
        )
    x, y, sw, mask = raw + (None,) * (4 - len(raw))
    if require_y and y is None:
        raise ValueError(f"{where} has no labels: training and evaluation batches are (x, y) or (x, y, sample_weight).")
    return x, y, sw, mask


def pad_time(data: ArrayData, layout: Layout, y_has_time) -> ArrayData:
    """Pad a batch's time axes up to :func:`padded_length` (one length per input), so that batches of varying T
    compile a bounded number of times: ``x`` with the layout's pad value, ``mask`` with False (a mask of ones
    is made for the real steps when the batch has none), per-step ``y`` and [B, T] sample weights with 0.

    ``y_has_time``: per output (a bool for one output), whether its labels have the input's time axis.
    """
    single = layout.input_names is None
    xs = [data.x] if single else list(data.x)
    masks = [data.mask] if single else list(data.mask or [None] * len(xs))
    grew, touched = None, False
    for i, a in enumerate(xs):
        if a.ndim < 2 or layout.time_lengths[i] == -1:
            continue
        touched = True
        t = a.shape[1]
        target = layout.time_length(i, t, layout.input_label(i))
        if target == t:  # still give a mask: every batch then has the same structure (one compilation per length)
            masks[i] = np.ones(a.shape[:2], bool) if masks[i] is None else masks[i]
            continue
        extra = target - t
        width = [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)
        xs[i] = np.pad(a, width, constant_values=np.asarray(layout.pad_values[i]).astype(a.dtype))
        m = np.ones(a.shape[:2], bool) if masks[i] is None else masks[i]
        masks[i] = np.pad(m, [(0, 0), (0, extra)], constant_values=False)
        grew = (t, target) if grew is None else grew
    if not touched:
        return data
    if grew is None:
        return ArrayData(xs[0] if single else xs, data.y, masks[0] if single else masks, data.sample_weight, data.lengths,
                         data.t)
    t, target = grew

    def stretch(v, timed):
        if v is None or not timed or v.ndim < 2 or v.shape[1] != t:
            return v
        return np.pad(v, [(0, 0), (0, target - v.shape[1])] + [(0, 0)] * (v.ndim - 2))

    several = layout.output_names is not None
    flags = list(y_has_time) if several else [y_has_time]
    ys = None if data.y is None else (list(data.y) if several else [data.y])
    if ys is not None:
        ys = [stretch(v, f) for v, f in zip(ys, flags)]
    sw = data.sample_weight
    if isinstance(sw, list):
        sw = [stretch(v, True) for v in sw]
    else:
        sw = stretch(sw, True)
    return ArrayData(
        xs[0] if single else xs,
        None if ys is None else (ys if several else ys[0]),
        masks[0] if single else masks,
        sw,
        data.lengths,
        t,
    )


class Prefetch:
    """Iterate ``items`` in a background thread, one item ahead of the consumer.

    The producer (loading a batch, checking it, placing it on the devices with ``jax.device_put``) runs while
    the consumer's step runs, so a slow loader costs max(load, step) per batch, not their sum. Exceptions of the
    producer are raised by ``next`` where they happened; :meth:`close` (or leaving a ``with`` block) stops the
    producer after the item it is making.
    """

    _STOP = object()

    def __init__(self, items, depth: int = 1):
        self._queue = queue.Queue(maxsize=depth)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="jaxmask-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._STOP, None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
            self._put((self._STOP, e))

    def __iter__(self):
        return self

    def __next__(self):
        item, error = self._queue.get()
        if item is self._STOP:
            self._queue.put((self._STOP, None))
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._halt.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------
# Batch plans and bucketing
# --------------------------------------------------------------------------------------------------


def epoch_rng(seed: int, start_step: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's shuffle: a pure function of (seed, step at fit start, epoch)."""
    return np.random.default_rng([int(seed), int(start_step), int(epoch)])


def valid_lengths(mask: np.ndarray) -> np.ndarray:
    """Per row, the index of the last valid step + 1 (0 for a fully masked row): how far post-padded data
    can be right-trimmed without dropping a valid step (holes mid-sequence are kept)."""
    mask = np.asarray(mask, dtype=bool)
    t = mask.shape[1]
    last = t - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0).astype(np.int64)


def default_boundaries(lengths: np.ndarray, t: int, num_buckets: int = 4, multiple: int = 8) -> list[int]:
    """Up to ``num_buckets`` bucket lengths at the length quantiles, rounded up to a ``multiple``, the
    last one covering the longest sequence."""
    qs = np.quantile(np.maximum(lengths, 1), np.linspace(0, 1, num_buckets + 1)[1:])
    return sorted({min(t, int(math.ceil(q / multiple) * multiple)) for q in qs})


def check_boundaries(boundaries, lengths: np.ndarray, t: int) -> list[int]:
    try:
        bounds = sorted({int(b) for b in boundaries})
    except (TypeError, ValueError):
        raise ValueError(
            f"`bucket_by_length` must be True/False or a list of bucket lengths (ints); received {boundaries!r}."
        ) from None
    if not bounds or bounds[0] < 1 or bounds[-1] > t:
        raise ValueError(f"bucket lengths must lie in [1, T] = [1, {t}]; received {boundaries!r}.")
    if lengths.max() > bounds[-1]:
        bounds.append(t)
    return bounds


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Bucket lengths and the bucket of every sample (the smallest bucket length >= its valid length)."""

    boundaries: tuple
    assignment: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, lengths: np.ndarray, boundaries) -> "Buckets":
        bounds = tuple(int(b) for b in boundaries)
        assignment = np.searchsorted(np.asarray(bounds), lengths, side="left")
        return cls(bounds, assignment, lengths)


def epoch_plan(
    n: int, batch_size: int, *, rng: np.random.Generator | None, buckets: Buckets | None = None
) -> list[tuple[np.ndarray, int | None]]:
    """The batches of one epoch as ``(row indices, time length or None)``.

    Without buckets: one permutation (or ``arange`` when ``rng`` is None, i.e. no shuffle) cut into
    batches, the last one possibly smaller. With buckets, from the shortest bucket up: the bucket's rows
    (permuted) join the rows left over from the shorter buckets, full batches are cut and padded only to
    this bucket's length, and what is left over moves on to the next bucket; the last bucket emits the
    final partial batch. All batches are then shuffled together. The number of batches of each shape is
    the same every epoch, so there are at most ``len(boundaries) + 1`` shapes and no recompilation after
    the first epoch.
    """
    if buckets is None:
        order = rng.permutation(n) if rng is not None else np.arange(n)
        return [(order[i : i + batch_size], None) for i in range(0, n, batch_size)]
    batches = []
    carry = np.zeros((0,), np.int64)
    for b, length in enumerate(buckets.boundaries):
        rows = np.flatnonzero(buckets.assignment == b)
        pool = np.concatenate([carry, rng.permutation(rows) if rng is not None else rows])
        last = b == len(buckets.boundaries) - 1
        full = len(pool) if last else len(pool) // batch_size * batch_size
        batches += [(pool[i : min(i + batch_size, full)], length) for i in range(0, full, batch_size)]
        carry = pool[full:]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_report(plan, t: int, valid_steps: np.ndarray) -> dict:
    """``padding_saved``: share of the fully padded steps (N·T) that bucketing did not compute;
    ``padding_waste``: share of the computed steps that are padding (masked)."""
    full = sum(len(rows) * t for rows, _ in plan)
    computed = sum(len(rows) * (t if length is None else length) for rows, length in plan)
    valid = sum(int(valid_steps[rows].sum()) for rows, _ in plan)
    return {"padding_saved": 1.0 - computed / full, "padding_waste": (computed - valid) / computed}


# --------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------


def batch_mesh(devices=None) -> Mesh:
    """A 1-D ``Mesh`` named ``"batch"`` over ``devices`` (default: every device of every process).

    Parameters are replicated over it and batches split along it: data parallelism that works unchanged
    from one device to many and from one process to many. For several processes (hosts), call
    ``jax.distributed.initialize()`` first in every process; ``jax.devices()`` then lists every process's
    devices, process 0's first, so process p holds the p-th contiguous block of rows of every batch.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicate(tree, mesh: Mesh):
    """``tree`` (arrays, NumPy or Python scalars) replicated on every device of ``mesh``.

    In a multi-process run every process passes the same values, and each one places its own copy with
    ``jax.make_array_from_process_local_data``: no device collective runs. (``jax.device_put`` of host values
    onto devices of several processes first checks with an all-gather that the processes agree; called from a
    prefetch thread while the step runs, that collective can interleave with the step's in a different order in
    each process, and both wait forever.) Arrays already spread over several processes are resharded with
    ``jax.device_put``.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(value):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return value if value.sharding == sharding else jax.device_put(value, sharding)
        host = np.asarray(jnp.asarray(value))  # jnp: the dtype device_put would give (float32 for a Python float)
        return jax.make_array_from_process_local_data(sharding, host, host.shape)

    return jax.tree_util.tree_map(one, tree)


def process_rows(n: int, mesh: Mesh) -> slice:
    """The rows of a global batch of ``n`` rows that this process's devices hold when it is split along
    ``"batch"`` (``slice(0, n)`` when it is replicated: ``n`` does not divide by the devices on the axis).

    Raises:
      ValueError: this process's devices do not hold one contiguous block of rows (a hand-made mesh whose
        ``"batch"`` axis interleaves processes).
    """
    if n % mesh.shape[BATCH_AXIS] != 0:
        return slice(0, n)
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    starts = sorted({idx[0].start or 0 for idx in sharding.addressable_devices_indices_map((n,)).values()})
    per_device = n // mesh.shape[BATCH_AXIS]
    if starts != list(range(starts[0], starts[0] + per_device * len(starts), per_device)):
        raise ValueError(
            f"process {jax.process_index()}'s devices hold rows {starts} (blocks of {per_device}) of the batch axis: "
            "not one contiguous block. Order the mesh's devices by process, e.g. jm.training.batch_mesh()."
        )
    return slice(starts[0], starts[0] + per_device * len(starts))


_SHARE_ROUNDS = itertools.count()


def _check_same_shapes(batch) -> None:
    """Raise unless every process holds a batch share of the same structure, shapes and dtypes (else the global
    arrays would not line up and the step would wait forever for the others).

    Compared through the ``jax.distributed`` key-value store (host RPCs, no device program), so it is safe from a
    prefetch thread while the step runs. Every process places its shares in the same order, so the n-th call of
    each process compares the n-th shares.
    """
    from jax._src import distributed  # noqa: PLC0415  (the coordination client: JAX's own, as orbax uses it)

    client = distributed.global_state.client
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    layout = repr((str(treedef), [(tuple(np.shape(v)), np.asarray(v).dtype.str) for v in leaves]))
    n, me = next(_SHARE_ROUNDS), jax.process_index()
    client.key_value_set(f"jaxmask/share/{n}/{me}", layout)
    for other in range(jax.process_count()):
        theirs = client.blocking_key_value_get(f"jaxmask/share/{n}/{other}", 300_000)
        if theirs != layout:
            raise ValueError(
                f"process {me}'s batch share has the layout {layout}, process {other}'s has {theirs}: with "
                "place_batch(..., process_local=True) (a per-process loader) every process must give shares of the "
                "same shapes, e.g. the same batch size and sequences padded to the same T."
            )
    if n >= 2:  # every process has read round n - 2 once it has reached round n - 1
        client.key_value_delete(f"jaxmask/share/{n - 2}/{me}")


def place_batch(batch: dict, mesh: Mesh | None, *, process_local: bool = False) -> dict:
    """Put a host batch (a dict of arrays, lists of arrays or None) on the mesh, as global ``jax.Array``s.

    Each array is split along ``"batch"`` when its rows divide by the number of devices on the axis, and
    replicated otherwise (a small last batch). Without a mesh: the default device.

    Args:
      batch: host arrays with the batch on axis 0.
      mesh: a mesh with a ``"batch"`` axis, or None.
      process_local: False (default): ``batch`` is the whole global batch, the same in every process (arrays
        given to ``fit``); each process hands only its own rows (:func:`process_rows`) to
        ``jax.make_array_from_process_local_data``. True: ``batch`` is this process's share (what a
        per-process loader yields); the global batch is the shares of processes 0, 1, ... one after another.
        Every process must then give shares of the same shapes (checked), whose rows divide by the process's
        devices (a global batch that does not split is replicated: pass it whole, ``process_local=False``).

    Returns:
      The batch with every array replaced by a ``jax.Array`` on ``mesh``.

    Raises:
      ValueError: with ``process_local``, shares of different shapes in different processes, or a share whose rows
        do not divide by this process's devices.
    """
    if mesh is None:
        return jax.tree_util.tree_map(jnp.asarray, batch)
    processes = jax.process_count()
    if process_local and processes > 1:
        _check_same_shapes(batch)

    def place(value):
        value = np.asarray(value)
        if process_local and processes > 1:
            local_devices = mesh.shape[BATCH_AXIS] // processes
            if value.shape[0] % local_devices != 0:
                raise ValueError(
                    f"A per-process batch share of {value.shape[0]} rows does not split over this process's "
                    f"{local_devices} devices. Give every process shares whose rows divide by {local_devices} (e.g. "
                    "drop the last partial batch), or pass the whole batch in every process (process_local=False)."
                )
            sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
            shape = (value.shape[0] * processes,) + value.shape[1:]
            return jax.make_array_from_process_local_data(sharding, value, shape)
        split = value.shape[0] % mesh.shape[BATCH_AXIS] == 0
        sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS) if split else PartitionSpec())
        return jax.make_array_from_process_local_data(sharding, value[process_rows(value.shape[0], mesh)], value.shape)

    return jax.tree_util.tree_map(place, batch)
