"""parity: proof, number by number, that jaxmask computes what Keras computes.

``import parity`` does not import Keras, TensorFlow or tf_keras; they are loaded when a function needs them.
"""

from parity._keras import KerasNotInstalled as KerasNotInstalled
from parity.convert import from_keras as from_keras
from parity.convert import to_keras as to_keras
from parity.compare import Report as Report
from parity.compare import check_model as check_model
