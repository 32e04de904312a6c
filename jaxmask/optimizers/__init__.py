"""Keras 3's optimizers as optax transformations, number for number.

``jm.optimizers.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, ...)`` and the others take
Keras' argument names and defaults, including the base optimizer's ``clipnorm``, ``clipvalue``,
``global_clipnorm``, ``weight_decay``, ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency`` and
``gradient_accumulation_steps``, applied in Keras' order (see :mod:`jaxmask.optimizers._base`). Each is an
``optax.GradientTransformation``: use it in any optax loop, or give it (or its Keras name, ``"adam"``) to
:class:`jaxmask.Trainer`. The learning rate lives in the optimizer state, so callbacks can change it between
compiled steps (:func:`get_learning_rate`, :func:`set_learning_rate`); schedules are in
:mod:`jaxmask.optimizers.schedules`.

Example::

    tx = jm.optimizers.AdamW(learning_rate=jm.optimizers.schedules.CosineDecay(1e-3, 1000), clipnorm=1.0)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
"""

from jaxmask.optimizers import schedules as schedules
from jaxmask.optimizers._base import Optimizer as Optimizer
from jaxmask.optimizers._base import OptimizerState as OptimizerState
from jaxmask.optimizers._base import finalize_variable_values as finalize_variable_values
from jaxmask.optimizers._base import get_learning_rate as get_learning_rate
from jaxmask.optimizers._base import set_learning_rate as set_learning_rate
from jaxmask.optimizers._get import get as get
from jaxmask.optimizers._optimizers import SGD as SGD
from jaxmask.optimizers._optimizers import Adadelta as Adadelta
from jaxmask.optimizers._optimizers import Adagrad as Adagrad
from jaxmask.optimizers._optimizers import Adam as Adam
from jaxmask.optimizers._optimizers import Adamax as Adamax
from jaxmask.optimizers._optimizers import AdamW as AdamW
from jaxmask.optimizers._optimizers import Ftrl as Ftrl
from jaxmask.optimizers._optimizers import Lion as Lion
from jaxmask.optimizers._optimizers import Nadam as Nadam
from jaxmask.optimizers._optimizers import RMSprop as RMSprop
