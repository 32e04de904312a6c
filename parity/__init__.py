"""parity: proof, number by number, that jaxmask computes what Keras computes.

``from_keras`` / ``to_keras`` convert models both ways (Keras 3 on TensorFlow or JAX, tf_keras);
``check_model`` compares a Keras model with its jaxmask twin (outputs at valid and masked steps, output
masks, loss, gradients, optimizer trajectories); ``python -m parity`` runs the catalogue in
:mod:`parity.cases`. ``import parity`` does not import Keras, TensorFlow or tf_keras: they are loaded
when a function needs them.
"""

from parity._keras import KerasNotInstalled as KerasNotInstalled
from parity.compare import Report as Report
from parity.compare import check_model as check_model
from parity.convert import from_keras as from_keras
from parity.convert import to_keras as to_keras
