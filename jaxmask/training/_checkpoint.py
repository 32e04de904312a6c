"""Atomic, crash-safe checkpoints of flat array dictionaries plus JSON metadata.

A checkpoint is a directory ``<root>/<name>/`` holding ``arrays.npz`` (NumPy, never pickled),
``meta.json`` and ``COMMIT``. It is written as::

    <root>/.tmp-<name>-<pid>-<nonce>/   arrays.npz, meta.json   (each fsync'ed)
                                         COMMIT  = SHA-256 of both files (fsync'ed last)
    fsync(tmp dir); rename(tmp dir -> <root>/<name>); fsync(<root>)

so a process killed at any instant leaves either a complete, committed checkpoint or a ``.tmp-*``
directory that readers ignore and the next writer deletes. There is no "latest" pointer that could go
stale (maxtext PR #5260): readers list the committed directories and take the newest name; names sort
chronologically. A checkpoint whose files do not match its COMMIT hashes (a torn copy, a flipped bit) is
skipped with a warning and the previous one is used. Only the newest ``max_to_keep`` up to the one just
saved are kept (broken directories with later names never count), and an old one is deleted only after a
newer one is committed.

Orbax (``orbax-checkpoint``) writes the same tmp-dir/commit/rename sequence, asynchronously and for
sharded arrays; this writer is synchronous and small on purpose, so that "killed during a save" has
one well-defined meaning and bit-exact resume is easy to reason about.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
import warnings

import jax
import numpy as np

_ARRAYS = "arrays.npz"
_META = "meta.json"
_COMMIT = "COMMIT"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def write_checkpoint(directory: str, arrays: dict, meta: dict) -> str:
    """Write one checkpoint atomically at ``directory`` (which must not exist yet); return its path.

    Args:
      directory: the final path ``<root>/<name>``; ``<root>`` is created if needed.
      arrays: ``{key: array}`` with keys that are valid Python identifiers-ish (letters, digits, ``_.-``).
      meta: JSON-serialisable metadata.

    Raises:
      FileExistsError: ``directory`` exists already.
      ValueError: a key with other characters.
    """
    directory = os.path.abspath(directory)
    root, name = os.path.split(directory)
    for key in arrays:
        if not _NAME.match(key):
            raise ValueError(f"checkpoint array key {key!r} must use letters, digits, '_', '.' and '-' only.")
    if os.path.exists(directory):
        raise FileExistsError(f"checkpoint {directory!r} exists already; checkpoints are never overwritten.")
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)
    _write_file(os.path.join(tmp, _ARRAYS), _npz_bytes(arrays))
    _write_file(os.path.join(tmp, _META), json.dumps(meta, sort_keys=True, allow_nan=True).encode())
    commit = {f: _sha256(os.path.join(tmp, f)) for f in (_ARRAYS, _META)}
    _write_file(os.path.join(tmp, _COMMIT), json.dumps(commit, sort_keys=True).encode())
    _fsync_dir(tmp)
    os.rename(tmp, directory)
    _fsync_dir(root)
    return directory


def is_committed(directory: str) -> bool:
    """True if ``directory`` holds a complete checkpoint whose files match their COMMIT hashes."""
    try:
        with open(os.path.join(directory, _COMMIT), "rb") as f:
            commit = json.loads(f.read())
        return all(_sha256(os.path.join(directory, name)) == digest for name, digest in commit.items()) and set(
            commit
        ) == {_ARRAYS, _META}
    except (OSError, ValueError):
        return False


def read_checkpoint(directory: str) -> tuple[dict, dict]:
    """Return ``(arrays, meta)`` of a committed checkpoint (NumPy arrays; pickles are refused).

    Raises:
      ValueError: the checkpoint is incomplete or corrupt.
    """
    if not is_committed(directory):
        raise ValueError(
            f"{directory!r} is not a complete checkpoint (missing COMMIT or hashes do not match); it was "
            "interrupted while being written or has been modified."
        )
    with np.load(os.path.join(directory, _ARRAYS), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    with open(os.path.join(directory, _META), "rb") as f:
        meta = json.loads(f.read())
    return arrays, meta


class CheckpointManager:
    """A directory of atomic checkpoints, newest name wins.

    Args:
      directory: the root directory.
      max_to_keep: how many committed checkpoints to keep (at least 1; 2 keeps one spare).

    Example::

        manager = CheckpointManager("/tmp/run", max_to_keep=2)
        manager.save("e000003_b000000010", {"w": w}, {"epoch": 3})
        arrays, meta = manager.restore_latest()
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be a positive int; received {max_to_keep!r}.")
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep

    def names(self) -> list[str]:
        """Names of the committed checkpoints, oldest first (tmp directories excluded)."""
        if not os.path.isdir(self.directory):
            return []
        found = [n for n in os.listdir(self.directory) if not n.startswith(".") and _NAME.match(n)]
        return sorted(n for n in found if os.path.isdir(os.path.join(self.directory, n)))

    def clean_tmp(self) -> None:
        """Delete ``.tmp-*`` directories left by a writer that was killed mid-save."""
        if os.path.isdir(self.directory):
            for n in os.listdir(self.directory):
                if n.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)

    def save(self, name: str, arrays: dict, meta: dict) -> str:
        """Commit checkpoint ``name`` (a no-op if it is already committed), then prune old ones."""
        if jax.process_index() != 0:
            return os.path.join(self.directory, name)
        path = os.path.join(self.directory, name)
        if os.path.exists(path):
            if is_committed(path):
                return path
            shutil.rmtree(path)
        self.clean_tmp()
        write_checkpoint(path, arrays, meta)
        # Prune among the names up to this one: a later name can only be a broken leftover (a resume starts
        # from the newest intact checkpoint), e.g. of a run killed while deleting its backups; counting it
        # would delete the checkpoint just written. It is replaced when the run reaches its name.
        for old in [n for n in self.names() if n <= name][: -self.max_to_keep]:
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        return path

    def restore_latest(self) -> tuple[dict, dict] | None:
        """``(arrays, meta)`` of the newest intact checkpoint, or None when there is none."""
        for name in reversed(self.names()):
            path = os.path.join(self.directory, name)
            if is_committed(path):
                return read_checkpoint(path)
            warnings.warn(f"Skipping incomplete or corrupt checkpoint {path!r}.", RuntimeWarning, stacklevel=2)
        return None

    def delete_all(self) -> None:
        """Remove the whole directory (after a run that finished)."""
        if jax.process_index() == 0:
            shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Pytrees <-> flat array dictionaries
# --------------------------------------------------------------------------------------------------


def flatten_tree(tree, prefix: str) -> tuple[dict, list[str]]:
    """``({f"{prefix}.{i}": leaf}, [path strings])`` for the leaves of ``tree`` (host NumPy copies)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays, paths = {}, []
    for i, (path, leaf) in enumerate(leaves):
        arrays[f"{prefix}.{i}"] = np.asarray(jax.device_get(leaf))
        paths.append(jax.tree_util.keystr(path))
    return arrays, paths


def unflatten_like(template, arrays: dict, paths: list[str], prefix: str):
    """Rebuild a pytree shaped like ``template`` from ``flatten_tree``'s output, checking every leaf.

    Raises:
      ValueError: the stored structure, a shape or a dtype differs from the template's.
    """
    leaves = jax.tree_util.tree_flatten_with_path(template)[0]
    expected = [jax.tree_util.keystr(p) for p, _ in leaves]
    if expected != list(paths):
        raise ValueError(
            f"checkpoint part {prefix!r} does not fit the model/optimizer it is restored into: it stores "
            f"{len(paths)} leaves ({paths[:3]}...), the template has {len(expected)} ({expected[:3]}...). "
            "Restore with the same model architecture and optimizer that wrote it."
        )
    out = []
    for i, (path, leaf) in enumerate(leaves):
        value = arrays[f"{prefix}.{i}"]
        want_dtype = np.dtype(leaf.dtype)
        want_shape = tuple(np.shape(leaf))
        if value.shape != want_shape or value.dtype != want_dtype:
            raise ValueError(
                f"checkpoint leaf {prefix}{expected[i]} has shape {value.shape} and dtype {value.dtype}; the "
                f"template expects {want_shape} and {want_dtype}."
            )
        out.append(value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out)


def save_tree(path, tree) -> str:
    """Write the pytree ``tree`` as an atomic checkpoint directory ``path``, replacing an existing one.

    The new checkpoint is committed under a temporary name and swapped in with two renames; a crash
    between them leaves the previous version as ``<path>.old-*``.
    """
    path = os.path.abspath(os.fspath(path))
    arrays, paths = flatten_tree(tree, "tree")
    if jax.process_index() != 0:
        return path
    nonce = uuid.uuid4().hex[:8]
    root, name = os.path.split(path)
    fresh = write_checkpoint(os.path.join(root, f".new-{name}-{nonce}"), arrays, {"paths": paths})
    if os.path.exists(path):
        old = os.path.join(root, f"{name}.old-{nonce}")
        os.rename(path, old)
        os.rename(fresh, path)
        shutil.rmtree(old)
    else:
        os.rename(fresh, path)
    _fsync_dir(root)
    return path


def load_tree(path, template):
    """Read a checkpoint written by :func:`save_tree` into a pytree shaped like ``template``."""
    arrays, meta = read_checkpoint(os.fspath(path))
    return unflatten_like(template, arrays, meta["paths"], "tree")
