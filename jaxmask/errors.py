"""Exception types raised by jaxmask."""

from __future__ import annotations


class UnsafeFileError(ValueError):
    """A Keras file that ``jaxmask.keras_io`` refuses to read.

    Raised for anything the loader will not trust or cannot map onto a jaxmask model: a class or module
    outside the allow-list (``Lambda``, ``{"module": "os", ...}``), a function-valued config field, an HDF5
    soft or external link, an external or virtual dataset, a non-numeric weight, a declared shape that
    differs from the architecture or that the file does not actually store, an unsafe zip member (absolute
    path, ``..``, symlink, decompression bomb), a size over the limits, or a malformed file. The message
    says what was refused, where in the file, and why. Subclass of ``ValueError``.
    """
