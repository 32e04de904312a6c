"""TF-free, safe reading and writing of Keras files: ``.keras`` archives, Keras 3 ``.weights.h5`` and legacy
``.h5``. Never imports TensorFlow or Keras and never executes anything named in a file; every refusal is a
``jaxmask.UnsafeFileError``. See SECURITY.md for what is refused and why."""

from jaxmask.keras_io._api import load_model as load_model
from jaxmask.keras_io._api import load_weights as load_weights
from jaxmask.keras_io._api import save_weights as save_weights
from jaxmask.keras_io._limits import Limits as Limits
from jaxmask.keras_io._registry import REGISTRY as REGISTRY
from jaxmask.keras_io._registry import Entry as Entry
from jaxmask.keras_io._registry import register as register

SUPPORTED = tuple(sorted(k for k, e in REGISTRY.items() if e.module == "keras.layers"))
"""The Keras layer classes jaxmask reads, writes and converts (the registry's allow-list)."""
