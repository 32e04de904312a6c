"""Keras 3's learning-rate schedules as jit-able ``step -> lr`` callables (see :mod:`jaxmask.optimizers._schedules`)."""

from jaxmask.optimizers._schedules import CosineDecay as CosineDecay
from jaxmask.optimizers._schedules import CosineDecayRestarts as CosineDecayRestarts
from jaxmask.optimizers._schedules import ExponentialDecay as ExponentialDecay
from jaxmask.optimizers._schedules import InverseTimeDecay as InverseTimeDecay
from jaxmask.optimizers._schedules import LearningRateSchedule as LearningRateSchedule
from jaxmask.optimizers._schedules import PiecewiseConstantDecay as PiecewiseConstantDecay
from jaxmask.optimizers._schedules import PolynomialDecay as PolynomialDecay
from jaxmask.optimizers._schedules import get as get
