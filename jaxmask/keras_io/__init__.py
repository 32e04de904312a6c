"""TF-free, safe reading and writing of Keras files: ``.keras`` archives, Keras 3 ``.weights.h5`` and legacy
``.h5``. Never imports TensorFlow or Keras and never executes anything named in a file; every refusal is a
``jaxmask.UnsafeFileError``. See SECURITY.md for what is refused and why."""

from jaxmask.keras_io._api import load_model as load_model
from jaxmask.keras_io._api import load_weights as load_weights
from jaxmask.keras_io._api import save_weights as save_weights
from jaxmask.keras_io._limits import Limits as Limits
