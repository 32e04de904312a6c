"""Host-side data handling for the Trainer: input validation, per-epoch batch plans (shuffles derived
from ``(seed, epoch)``), length bucketing, and placing batches on a device mesh.

Arrays stay in host memory as NumPy; one batch at a time is gathered and placed, sharded along the
mesh's ``"batch"`` axis.
"""

from __future__ import annotations

import dataclasses
import math

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
        return np.asarray(value, dtype=dtype)
    except ValueError:
        raise ValueError(
            f"`{name}` could not be turned into one array (a ragged list of sequences of different lengths?). "
            "Pad first with jm.pad_sequences(seqs, padding='post', dtype='float32') and pass the mask from "
            "jm.lengths_to_mask or jm.compute_mask."
        ) from None


@dataclasses.dataclass
class ArrayData:
    """Validated host arrays: ``x`` [N, T, ...], optional ``y`` [N, ...], ``mask`` bool [N, T],
    ``sample_weight`` [N], [N, 1] or [N, T]."""

    x: np.ndarray
    y: np.ndarray | None = None
    mask: np.ndarray | None = None
    sample_weight: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def t(self) -> int:
        return self.x.shape[1]

    def subset(self, idx) -> "ArrayData":
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return ArrayData(self.x[idx], pick(self.y), pick(self.mask), pick(self.sample_weight))

    def batch(self, idx: np.ndarray, length: int | None = None, *, y_has_time: bool = False) -> dict:
        """Rows ``idx`` as a batch dict; with ``length``, every time axis is cut to its first ``length`` steps
        (``y`` and ``[N, T]`` sample weights too when ``y_has_time``)."""
        cut = slice(None) if length is None else slice(0, length)
        x = self.x[idx][:, cut]
        mask = None if self.mask is None else self.mask[idx][:, cut]
        y = None
        if self.y is not None:
            y = self.y[idx][:, cut] if y_has_time and length is not None else self.y[idx]
        sw = None
        if self.sample_weight is not None:
            sw = self.sample_weight[idx]
            if sw.ndim == 2 and sw.shape[1] == self.t and length is not None:
                sw = sw[:, cut]
        return {"x": x, "y": y, "mask": mask, "sample_weight": sw}


def unpack_x(x, mask):
    """Accept ``x`` or ``(x, mask)``; return ``(x, mask)``."""
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(
                f"`x` given as a tuple must be (x, mask); received a tuple of {len(x)} items. Pass the array "
                "itself, or (x, mask) with mask bool [N, T]."
            )
        if mask is not None:
            raise ValueError("The mask was given twice: as `x=(x, mask)` and as `mask=`. Pass it once.")
        x, mask = x
    return x, mask


def prepare(x, y=None, *, mask=None, sample_weight=None, require_y: bool = True, prefix: str = "") -> ArrayData:
    """Validate and convert user inputs (argument names in errors get ``prefix``, e.g. ``"validation_data "``).

    Raises:
      ValueError: missing ``x``/``y``, bad ranks, x/y/mask/sample_weight sample counts or shapes that differ.
      TypeError: a mask that is not bool or 0/1 numbers.
    """
    x, mask = unpack_x(x, mask)
    if x is None:
        raise ValueError(f"{prefix}`x` is required: an array [N, T, F] (or int token ids [N, T]).")
    x = _host(prefix + "x", x)
    if x.ndim < 2:
        raise ValueError(
            f"{prefix}`x` must be [N, T, F] (or int token ids [N, T]); received shape {x.shape}. "
            "Add a feature axis with x[..., None]."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{prefix}`x` holds no samples (shape {x.shape}).")
    n, t = x.shape[:2]
    if mask is not None:
        mask = _host(prefix + "mask", mask)
        if mask.shape != (n, t):
            raise ValueError(
                f"{prefix}`mask` must be bool [N, T] = {(n, t)} matching x; received shape {mask.shape}. Build one "
                "with jm.lengths_to_mask(lengths, T) or jm.compute_mask(x)."
            )
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"{prefix}`mask` must be bool (True = valid step) or 0/1 numbers; received {mask.dtype}.")
        mask = mask.astype(bool)
    if y is None:
        if require_y:
            raise ValueError(f"{prefix}`y` is required: labels with one row per sample of x.")
    else:
        y = _host(prefix + "y", y)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(
                f"{prefix}`x` and `y` must hold the same number of samples (first axis); received x with {n} "
                f"samples (shape {x.shape}) and y with {y.shape[0] if y.ndim else 'no'} (shape {y.shape})."
            )
    if sample_weight is not None:
        sample_weight = _host(prefix + "sample_weight", sample_weight)
        if sample_weight.shape not in ((n,), (n, 1), (n, t)):
            raise ValueError(
                f"{prefix}`sample_weight` must be [N] = ({n},), [N, 1] or [N, T] = {(n, t)}; received shape "
                f"{sample_weight.shape}."
            )
        if sample_weight.dtype.kind not in "biuf":
            raise TypeError(f"{prefix}`sample_weight` must be numeric; received dtype {sample_weight.dtype}.")
        sample_weight = sample_weight.astype(np.float32)
    return ArrayData(x, y, mask, sample_weight)


def split_validation(data: ArrayData, fraction) -> tuple[ArrayData, ArrayData]:
    """Keras' ``validation_split``: the last ``fraction`` of the samples (before any shuffling) validate.

    Raises:
      ValueError: ``fraction`` outside (0, 1), or a split that leaves either side empty.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(
            f"`validation_split` must be a float in (0, 1), the fraction of samples held out; received {fraction!r}."
        )
    n_val = int(math.floor(data.n * fraction))
    if n_val == 0 or n_val == data.n:
        raise ValueError(
            f"`validation_split={fraction}` of N = {data.n} samples leaves {data.n - n_val} for training and "
            f"{n_val} for validation; both need at least one sample."
        )
    cut = data.n - n_val
    return data.subset(slice(0, cut)), data.subset(slice(cut, None))


def check_batch_size(batch_size, n: int, what: str = "training") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if batch_size > n:
        raise ValueError(
            f"`batch_size` = {batch_size} is larger than the number of {what} samples N = {n}. Use "
            f"batch_size <= {n} (e.g. batch_size={n} for one full batch)."
        )
    return int(batch_size)


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
    from one device to many. For several hosts, call ``jax.distributed.initialize()`` first in every
    process; ``jax.devices()`` then lists all hosts' devices, and every process must pass the same
    arrays (each places only its own devices' rows).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def place_batch(batch: dict, mesh: Mesh | None) -> dict:
    """Put a host batch on the mesh: split along ``"batch"`` when the batch size divides by the number of
    devices, replicated otherwise (a small last batch). Without a mesh: default device."""
    out = {}
    for key, value in batch.items():
        if value is None:
            out[key] = None
        elif mesh is None:
            out[key] = jnp.asarray(value)
        else:
            value = np.asarray(value)
            split = value.shape[0] % mesh.shape[BATCH_AXIS] == 0
            sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS) if split else PartitionSpec())
            out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
    return out
