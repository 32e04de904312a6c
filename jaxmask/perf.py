"""Process-level settings that make XLA:CPU training faster without changing any number it computes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_configured = False


def configure_cpu_allocator() -> bool:
    """Keep freed XLA:CPU buffers in the process instead of returning them to the OS.

    glibc serves large allocations with ``mmap`` and unmaps them on free, so every jitted step that
    allocates its [T, B, 4H] temporaries page-faults them in again: on the 2-core benchmark machine that
    was ~9,500 minor faults and ~12 ms of CPU per seed-model train step (``benchmarks/run.py``). This sets
    glibc's ``M_MMAP_MAX = 0`` and a maximal ``M_TRIM_THRESHOLD`` so freed memory is reused. The cost is
    that the process keeps its peak heap. Idempotent; a no-op (returning False) off glibc.

    ``jm.Trainer`` calls it on the CPU backend; call it yourself in a custom loop.
    """
    global _configured
    if _configured:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _configured = ok
    return ok


def enable_compilation_cache(directory: str | None = None) -> str:
    """Keep compiled XLA programs on disk, so a fresh process skips compiling what an earlier one compiled.

    A new Python process compiles the train step again (seconds on XLA:CPU for an LSTM step; Keras 3 on
    TensorFlow re-traces its ``tf.function`` in every process too). With this on, the first ``train_on_batch``
    of any later process with the same model, shapes, JAX version and flags loads the executable instead
    (``python benchmarks/api.py`` measures both). This sets JAX's own persistent cache
    (``jax_compilation_cache_dir``) for every program, however short its compile time; entries are keyed by
    the program and compiler, so a stale one is never used. Call it before the first compilation.

    Args:
      directory: where to keep the programs; default ``$JAXMASK_CACHE_DIR`` or ``~/.cache/jaxmask/xla``.

    Returns:
      The directory used.
    """
    import jax

    directory = directory or os.environ.get("JAXMASK_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxmask", "xla")
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
