"""Lazy access to the reference libraries: Keras 3 (``keras``) and tf_keras.

Nothing here imports Keras, TensorFlow or tf_keras at module import time: ``import parity`` stays cheap
and works where Keras is not installed. Every entry point that needs a reference calls
:func:`keras_module` (or inspects a model it was given, which proves the library is already loaded).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

FLAVORS = ("keras3", "tf_keras")
REFERENCES = ("keras3", "keras3-jax", "tf_keras")
"""The references the catalogue runs against: Keras 3 on TensorFlow (in process), Keras 3 on JAX (one
subprocess with ``KERAS_BACKEND=jax``) and tf_keras 2.x."""

INSTALL_HINT = "pip install 'jaxmask[parity]' (tensorflow, tf_keras, keras>=3.5)"


class KerasNotInstalled(ImportError):
    """The reference library a parity check needs cannot be imported."""


def keras_module(flavor: str = "keras3"):
    """Import and return ``keras`` (``flavor="keras3"``) or ``tf_keras``.

    Raises:
      KerasNotInstalled: the library is missing, with the command that installs it.
      ValueError: unknown ``flavor``.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"`flavor` must be one of {list(FLAVORS)}; received {flavor!r}.")
    name = "keras" if flavor == "keras3" else "tf_keras"
    _quiet_tensorflow()
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise KerasNotInstalled(f"parity needs {name!r} for this reference but it cannot be imported ({e}). "
                                f"Install it with: {INSTALL_HINT}") from None
    if flavor == "keras3" and not str(getattr(module, "__version__", "3")).startswith("3"):
        raise KerasNotInstalled(f"parity needs Keras 3 for the 'keras3' reference; found keras {module.__version__}. "
                                f"Install it with: {INSTALL_HINT}")
    return module


def preload(flavors, *, quiet: bool = True) -> None:
    """Import the reference libraries now; with ``quiet``, TensorFlow's C++ start-up chatter (absl lines that
    ignore TF_CPP_MIN_LOG_LEVEL) is kept off the terminal and shown only if the import fails."""
    import tempfile

    for flavor in flavors:
        name = "keras" if flavor == "keras3" else "tf_keras"
        if name in sys.modules:
            continue
        if not quiet:
            keras_module(flavor)
            continue
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                keras_module(flavor)
                _warm_up_tensorflow()
            except BaseException:
                os.dup2(saved, 2)
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)


def _warm_up_tensorflow() -> None:
    """Initialise TensorFlow's devices and oneDNN kernels (each logs once, on first use)."""
    if "tensorflow" not in sys.modules:
        return
    tf = sys.modules["tensorflow"]
    m = tf.constant([[True, False]])
    v = tf.where(m, tf.ones((1, 2)), tf.zeros((1, 2)))
    tf.reduce_sum(tf.cast(tf.transpose(tf.logical_and(m, tf.reduce_any(m, axis=-1, keepdims=True))), tf.float32))
    tf.reduce_sum(v)


def is_available(name: str) -> bool:
    """Whether the top-level module ``name`` ("keras", "tf_keras", "tensorflow") is installed, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def keras3_backend() -> str:
    """The backend Keras 3 runs (or will run) on in this process."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def flavor_of(obj) -> str:
    """``"tf_keras"`` for tf_keras models/layers, ``"keras3"`` for Keras 3 ones.

    Raises:
      TypeError: ``obj`` is neither.
    """
    for cls in type(obj).__mro__:
        root = (cls.__module__ or "").split(".")[0]
        if root == "tf_keras":
            return "tf_keras"
        if root == "keras":
            return "keras3"
    kind = f"{type(obj).__module__}.{type(obj).__name__}"
    raise TypeError(f"expected a Keras 3 or tf_keras model or layer; received {kind}.")


def backend_of(obj) -> str:
    """``"tensorflow"`` or ``"jax"``: the backend a Keras model or layer computes with (tf_keras: tensorflow)."""
    if flavor_of(obj) == "tf_keras":
        return "tensorflow"
    return sys.modules["keras"].backend.backend()


def reference_of(obj) -> str:
    """The catalogue reference name of a Keras model: "keras3", "keras3-jax" or "tf_keras"."""
    if flavor_of(obj) == "tf_keras":
        return "tf_keras"
    return "keras3-jax" if backend_of(obj) == "jax" else "keras3"


def versions() -> dict:
    """Versions of the loaded reference libraries (only those already imported) and of jax / jaxmask."""
    out = {}
    for name in ("keras", "tf_keras", "tensorflow", "jax", "flax", "optax"):
        if name in sys.modules:
            out[name] = str(getattr(sys.modules[name], "__version__", "?"))
    if "keras" in sys.modules:
        out["keras_backend"] = sys.modules["keras"].backend.backend()
    return out
