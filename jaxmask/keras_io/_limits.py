"""Size and count limits of the Keras file reader, and the one helper that raises ``UnsafeFileError``."""

from __future__ import annotations

import dataclasses
from typing import NoReturn

from jaxmask.errors import UnsafeFileError

MiB = 2**20
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps applied before anything is read or allocated; every cap exceeded is an ``UnsafeFileError``.

    Attributes:
      max_file_bytes: size of the file on disk, and of the HDF5 weights member of a ``.keras`` archive.
      max_config_bytes: size of ``config.json`` (or of the ``model_config`` attribute of a legacy ``.h5``).
      max_json_containers: objects and arrays in one JSON document (bounds the memory parsing takes).
      max_metadata_bytes: size of ``metadata.json``.
      max_zip_members: number of members of a ``.keras`` archive.
      max_zip_ratio: largest uncompressed/compressed ratio of a zip member above 1 MiB (decompression bombs).
      max_params: total number of weights the architecture may declare (float32: 4 bytes each).
      max_layers: number of layers in the config.
      max_json_depth: nesting depth of the config JSON.
      max_h5_objects: number of links visited in the HDF5 file.
      max_h5_depth: group nesting depth of the HDF5 file (also stops hard-link cycles).
      max_attr_elements: elements of one HDF5 attribute (layer and weight name lists).
    """

    max_file_bytes: int = 2 * GiB
    max_config_bytes: int = 4 * MiB
    max_json_containers: int = 100_000
    max_metadata_bytes: int = 1 * MiB
    max_zip_members: int = 64
    max_zip_ratio: int = 100
    max_params: int = 2**28
    max_layers: int = 1024
    max_json_depth: int = 64
    max_h5_objects: int = 100_000
    max_h5_depth: int = 32
    max_attr_elements: int = 100_000


DEFAULT_LIMITS = Limits()


def refuse(what: str) -> NoReturn:
    """Raise ``UnsafeFileError(what)``; ``what`` says what was refused, where, and why."""
    raise UnsafeFileError(what)


def human_bytes(n: int) -> str:
    """``4398046511104`` -> ``'4 TiB'`` (for messages)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    x, i = float(n), 0
    while x >= 1024 and i < len(units) - 1:
        x, i = x / 1024, i + 1
    return f"{n} B" if i == 0 else f"{x:.3g} {units[i]}"
