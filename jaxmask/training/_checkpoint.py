"""Atomic, crash-safe checkpoints of pytrees, written through ``orbax-checkpoint``, plus JSON metadata.

A checkpoint is a directory ``<root>/<name>/`` holding::

    <item>/     one orbax PyTree checkpoint per item (e.g. ``state/``: params, optimizer state, RNG, step,
                accumulators); sharded and multi-process arrays are written by orbax, each process its shards;
                readable without jaxmask: ``orbax.checkpoint.PyTreeCheckpointer().restore("<name>/state")``
    meta.json   ``{"meta": <caller's JSON metadata>, "items": {item: [[leaf path, shape, dtype], ...]}}``
    COMMIT      ``{relative path: SHA-256}`` of every other file, written last

It is written as (every process calls ``save``; process 0 does the file work, barriers in between)::

    <root>/.tmp-<name>/   orbax writes each <item>/ (its own tmp dir + rename inside ours)
                          meta.json (fsync'ed); every file fsync'ed and hashed; COMMIT (fsync'ed)
    fsync(every directory in tmp); rename(tmp -> <root>/<name>); fsync(<root>)

so a process killed at any instant leaves either a complete, committed checkpoint or a ``.tmp-*`` directory
that readers ignore and the next writer deletes. There is no "latest" pointer that could go stale (maxtext
PR #5260): readers list the committed directories and take the newest name; names sort chronologically. A
checkpoint whose files do not match its COMMIT (a torn copy, a flipped bit, a file added or missing) is
skipped with a warning and the previous one is used. Only the newest ``max_to_keep`` up to the one just saved
are kept (broken directories with later names never count), and an old one is deleted only after a newer one
is committed.

Saves are synchronous on purpose, so that "killed during a save" has one well-defined meaning and bit-exact
resume is easy to reason about. In a multi-process run all processes must see the same directory (a shared
file system, as orbax itself requires).
"""

from __future__ import annotations

import collections.abc
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings

import jax
import numpy as np
from jax.experimental import multihost_utils

_META = "meta.json"
_COMMIT = "COMMIT"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_WEIGHTS = "weights"


def _is_primary() -> bool:
    return jax.process_index() == 0


def _sync(tag: str) -> None:
    """A barrier over all processes (no-op in a one-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxmask.checkpoint:{tag}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: str, *, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _files(directory: str) -> list[str]:
    """Relative paths of every file under ``directory`` except COMMIT, sorted."""
    out = []
    for base, _, files in os.walk(directory):
        for f in files:
            rel = os.path.relpath(os.path.join(base, f), directory)
            if rel != _COMMIT:
                out.append(rel)
    return sorted(out)


def _leaf_table(tree) -> list[list]:
    """``[[path, shape, dtype], ...]`` of ``tree``'s leaves (checked against a template on restore)."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        rows.append([jax.tree_util.keystr(path), [int(d) for d in np.shape(leaf)], np.dtype(leaf.dtype).str])
    return rows


def _check_items(items) -> None:
    if not isinstance(items, collections.abc.Mapping):
        raise TypeError(f"checkpoint items must be a dict {{item name: pytree}}; received {type(items).__name__}.")
    for key, tree in items.items():
        if not isinstance(key, str) or not _NAME.match(key) or key in (_META, _COMMIT):
            raise ValueError(
                f"checkpoint item name {key!r} must use letters, digits, '_', '.' and '-' only (and not be "
                f"{_META!r} or {_COMMIT!r})."
            )
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not hasattr(leaf, "dtype") or np.dtype(leaf.dtype).kind not in "biufc":
                raise TypeError(
                    f"checkpoint leaf {key}{jax.tree_util.keystr(path)} must be a numeric or bool array; received "
                    f"{type(leaf).__name__} of dtype {getattr(leaf, 'dtype', None)}. Convert it with np.asarray(..., "
                    "dtype) or leave it out of the checkpoint."
                )


def _orbax():
    import orbax.checkpoint as ocp  # imported on first use: ~2 s, and most imports of jaxmask never save

    return ocp


def write_checkpoint(directory: str, items: dict, meta: dict) -> str:
    """Write one checkpoint atomically at ``directory`` (which must not exist yet); return its path.

    Every process of a multi-process run calls it with the same arguments (global arrays: each process writes
    its shards; NumPy leaves: process 0 writes them).

    Args:
      directory: the final path ``<root>/<name>``; ``<root>`` is created if needed.
      items: ``{item name: pytree}``; names use letters, digits, ``_.-``; leaves are numeric or bool arrays
        (``jax.Array``, sharded or not, or NumPy).
      meta: JSON-serialisable metadata.

    Raises:
      FileExistsError: ``directory`` exists already.
      ValueError: a bad item name. TypeError: a leaf that is not a numeric or bool array.
    """
    directory = os.path.abspath(os.fspath(directory))
    root, name = os.path.split(directory)
    _check_items(items)
    _sync(f"begin:{directory}")
    if os.path.exists(directory):
        raise FileExistsError(f"checkpoint {directory!r} exists already; checkpoints are never overwritten.")
    tmp = os.path.join(root, f".tmp-{name}")
    if _is_primary():
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.mkdir(tmp)
    _sync(f"mkdir:{directory}")
    ocp = _orbax()
    checkpointer = ocp.PyTreeCheckpointer()
    for key, tree in items.items():
        checkpointer.save(os.path.join(tmp, key), tree)
    _sync(f"items:{directory}")
    if _is_primary():
        record = {"meta": meta, "items": {key: _leaf_table(tree) for key, tree in items.items()}}
        _write_file(os.path.join(tmp, _META), json.dumps(record, sort_keys=True, allow_nan=True).encode())
        commit = {rel: _sha256(os.path.join(tmp, rel), fsync=True) for rel in _files(tmp)}
        _write_file(os.path.join(tmp, _COMMIT), json.dumps(commit, sort_keys=True).encode())
        for base, _, _ in sorted(os.walk(tmp), key=lambda w: -len(w[0])):
            _fsync_dir(base)
        os.rename(tmp, directory)
        _fsync_dir(root)
    _sync(f"committed:{directory}")
    return directory


def is_committed(directory: str) -> bool:
    """True if ``directory`` holds a complete checkpoint: COMMIT lists exactly the other files, with their hashes."""
    try:
        with open(os.path.join(directory, _COMMIT), "rb") as f:
            commit = json.loads(f.read())
        if not isinstance(commit, dict) or sorted(commit) != _files(directory) or _META not in commit:
            return False
        return all(_sha256(os.path.join(directory, rel)) == digest for rel, digest in commit.items())
    except (OSError, ValueError):
        return False


class Checkpoint(collections.abc.Mapping):
    """A committed checkpoint, read lazily: ``checkpoint[item]`` is the item as host NumPy arrays (in orbax's
    nested-dict form), ``checkpoint.restore(item, template)`` rebuilds it shaped and placed like ``template``.

    Attributes:
      path: the checkpoint directory.
      meta: the caller's metadata.
    """

    def __init__(self, path: str, record: dict):
        self.path = path
        self.meta = record["meta"]
        self._items = record["items"]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, item: str):
        if item not in self._items:
            raise KeyError(f"checkpoint {self.path!r} has no item {item!r}; it has {sorted(self._items)}.")
        ocp = _orbax()
        checkpointer = ocp.PyTreeCheckpointer()
        path = os.path.join(self.path, item)
        tree = checkpointer.metadata(path).item_metadata.tree
        as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))

    def restore(self, item: str, template):
        """The item rebuilt with ``template``'s structure: leaves that are ``jax.Array`` (or
        ``jax.ShapeDtypeStruct`` with a sharding) come back as ``jax.Array`` placed with that sharding (any mesh,
        any number of processes), the others as NumPy.

        Raises:
          KeyError: no such item.
          ValueError: the stored structure, a shape or a dtype differs from the template's.
        """
        if item not in self._items:
            raise KeyError(f"checkpoint {self.path!r} has no item {item!r}; it has {sorted(self._items)}.")
        stored = self._items[item]
        expected = _leaf_table(template)
        if [row[0] for row in stored] != [row[0] for row in expected]:
            raise ValueError(
                f"checkpoint part {item!r} does not fit the model/optimizer it is restored into: it stores "
                f"{len(stored)} leaves ({[r[0] for r in stored[:3]]}...), the template has {len(expected)} "
                f"({[r[0] for r in expected[:3]]}...). Restore with the same model architecture and optimizer that "
                "wrote it."
            )
        for (path, shape, dtype), (_, want_shape, want_dtype) in zip(stored, expected):
            if shape != want_shape or dtype != want_dtype:
                raise ValueError(
                    f"checkpoint leaf {item}{path} has shape {tuple(shape)} and dtype {np.dtype(dtype)}; the template "
                    f"expects {tuple(want_shape)} and {np.dtype(want_dtype)}."
                )
        ocp = _orbax()

        def restore_args(leaf):
            sharding = getattr(leaf, "sharding", None)
            if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) and sharding is not None:
                return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=tuple(leaf.shape), dtype=leaf.dtype)
            return ocp.RestoreArgs(restore_type=np.ndarray)

        def abstract(leaf):
            return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=getattr(leaf, "sharding", None))

        args = ocp.args.PyTreeRestore(
            item=jax.tree_util.tree_map(abstract, template), restore_args=jax.tree_util.tree_map(restore_args, template)
        )
        out = ocp.PyTreeCheckpointer().restore(os.path.join(self.path, item), args=args)
        leaves = jax.tree_util.tree_leaves(out)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def read_checkpoint(directory: str) -> tuple[Checkpoint, dict]:
    """Return ``(checkpoint, meta)`` of a committed checkpoint (arrays are read on demand from ``checkpoint``).

    Raises:
      ValueError: the checkpoint is incomplete or corrupt, or not in this format.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not is_committed(directory):
        raise ValueError(
            f"{directory!r} is not a complete checkpoint (missing COMMIT or hashes do not match); it was "
            "interrupted while being written or has been modified."
        )
    with open(os.path.join(directory, _META), "rb") as f:
        record = json.loads(f.read())
    if not isinstance(record, dict) or set(record) != {"meta", "items"}:
        raise ValueError(
            f"{directory!r} is a committed checkpoint of another format (an arrays.npz checkpoint of jaxmask "
            "before orbax?): its meta.json lacks 'meta' and 'items'. Load it with the jaxmask version that wrote it "
            "and save it again."
        )
    checkpoint = Checkpoint(directory, record)
    return checkpoint, checkpoint.meta


class CheckpointManager:
    """A directory of atomic checkpoints, newest name wins.

    Args:
      directory: the root directory.
      max_to_keep: how many committed checkpoints to keep (at least 1; 2 keeps one spare).

    Example::

        manager = CheckpointManager("/tmp/run", max_to_keep=2)
        manager.save("e000003_b000000010", {"state": train_state}, {"epoch": 3})
        checkpoint, meta = manager.restore_latest()
        train_state = checkpoint.restore("state", train_state)   # same shardings as the template
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be a positive int; received {max_to_keep!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep

    def names(self) -> list[str]:
        """Names of the checkpoint directories, oldest first (tmp directories excluded; not checked for integrity)."""
        if not os.path.isdir(self.directory):
            return []
        found = [n for n in os.listdir(self.directory) if not n.startswith(".") and _NAME.match(n)]
        return sorted(n for n in found if os.path.isdir(os.path.join(self.directory, n)))

    def clean_tmp(self) -> None:
        """Delete ``.tmp-*`` directories left by a writer killed mid-save (process 0; all processes call it)."""
        if _is_primary() and os.path.isdir(self.directory):
            for n in os.listdir(self.directory):
                if n.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)
        _sync(f"clean:{self.directory}")

    def save(self, name: str, items: dict, meta: dict) -> str:
        """Commit checkpoint ``name`` (a no-op if it is already committed), then prune old ones.

        Every process calls it (see :func:`write_checkpoint` for ``items`` and ``meta``).
        """
        path = os.path.join(self.directory, name)
        self.clean_tmp()
        if os.path.exists(path):
            if is_committed(path):
                return path
            _sync(f"broken:{path}")
            if _is_primary():
                shutil.rmtree(path)
        write_checkpoint(path, items, meta)
        if _is_primary():
            # Prune among the names up to this one: a later name can only be a broken leftover (a resume starts
            # from the newest intact checkpoint), e.g. of a run killed while deleting its backups; counting it
            # would delete the checkpoint just written. It is replaced when the run reaches its name.
            for old in [n for n in self.names() if n <= name][: -self.max_to_keep]:
                shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        _sync(f"pruned:{path}")
        return path

    def restore_latest(self) -> tuple[Checkpoint, dict] | None:
        """``(checkpoint, meta)`` of the newest intact checkpoint, or None when there is none."""
        for name in reversed(self.names()):
            path = os.path.join(self.directory, name)
            if is_committed(path):
                return read_checkpoint(path)
            warnings.warn(f"Skipping incomplete or corrupt checkpoint {path!r}.", RuntimeWarning, stacklevel=2)
        return None

    def delete_all(self) -> None:
        """Remove the whole directory (after a run that finished)."""
        _sync(f"delete:{self.directory}")
        if _is_primary():
            shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Single pytrees (model weights)
# --------------------------------------------------------------------------------------------------


def save_tree(path, tree) -> str:
    """Write the pytree ``tree`` as an atomic checkpoint directory ``path`` (item ``weights``), replacing an
    existing one. Every process calls it.

    The new checkpoint is committed under a temporary name and swapped in with two renames; a crash between them
    leaves the previous version as ``<path>.old-*``.
    """
    path = os.path.abspath(os.fspath(path))
    root, name = os.path.split(path)
    fresh = os.path.join(root, f".new-{name}")
    if _is_primary() and os.path.exists(fresh):
        shutil.rmtree(fresh)
    write_checkpoint(fresh, {_WEIGHTS: tree}, {})
    if _is_primary():
        if os.path.exists(path):
            old = os.path.join(root, f"{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(fresh, path)
            shutil.rmtree(old)
        else:
            os.rename(fresh, path)
        _fsync_dir(root)
    _sync(f"swapped:{path}")
    return path


def load_tree(path, template):
    """Read a checkpoint written by :func:`save_tree` into a pytree shaped (and placed) like ``template``.

    Raises:
      ValueError: the checkpoint is incomplete/corrupt, or does not fit the template.
    """
    checkpoint, _ = read_checkpoint(path)
    return checkpoint.restore(_WEIGHTS, template)
