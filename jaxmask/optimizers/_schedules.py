"""Keras 3's learning-rate schedules (keras/src/optimizers/schedules/learning_rate_schedule.py) as jit-able
``step -> lr`` callables: Keras' class and argument names, Keras' formulas in Keras' order of float32
operations. Pass one as ``learning_rate=`` to any ``jm.optimizers`` optimizer (it is called with the
optimizer's iteration count, as Keras does) or to an optax optimizer (optax calls schedules the same way).

Where optax has the same formula it is named in the docstring; the classes here exist for Keras' argument
names, ``staircase``/``cycle`` options, warmup parametrisation and bit-level agreement with Keras' values.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxmask.optimizers._base import _number

_F32 = jnp.float32


def _step(step):
    return jnp.asarray(step).astype(_F32)


class LearningRateSchedule:
    """Base class: ``schedule(step) -> float32 scalar``; ``get_config()`` / ``from_config(config)`` as Keras."""

    def __call__(self, step):
        raise NotImplementedError(f"Learning rate schedule {type(self).__name__!r} must override __call__(self, step).")

    def get_config(self) -> dict:
        raise NotImplementedError(f"Learning rate schedule {type(self).__name__!r} must override get_config().")

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self):
        return f"jm.optimizers.schedules.{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _decay_steps(value, owner, name="decay_steps"):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` of {owner} must be > 0; received {value!r}.")
    return value


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate · decay_rate^(step / decay_steps)`` (the exponent floored with ``staircase``).

    Args:
      initial_learning_rate: float. decay_steps: > 0. decay_rate: float. staircase: integer division.
      name: Keras' name.

    optax equivalent: ``optax.exponential_decay(init_value, transition_steps, decay_rate, staircase=...)``.
    Keras equivalent: ``keras.optimizers.schedules.ExponentialDecay``.
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, "ExponentialDecay")
        self.decay_steps = _decay_steps(decay_steps, "ExponentialDecay")
        self.decay_rate = _number("decay_rate", decay_rate, "ExponentialDecay")
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _step(step) / jnp.asarray(self.decay_steps, _F32)
        if self.staircase:
            p = jnp.floor(p)
        return jnp.asarray(self.initial_learning_rate, _F32) * jnp.power(jnp.asarray(self.decay_rate, _F32), p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` for ``step <= boundaries[0]``, ``values[i]`` for ``boundaries[i-1] < step <= boundaries[i]``,
    ``values[-1]`` after the last boundary.

    Args:
      boundaries: increasing step numbers. values: one more float than ``boundaries``. name: Keras' name.

    Raises:
      ValueError: ``len(values) != len(boundaries) + 1``.

    optax equivalent: none (``optax.piecewise_constant_schedule`` multiplies by scales at the boundaries).
    Keras equivalent: ``keras.optimizers.schedules.PiecewiseConstantDecay``.
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "`values` of PiecewiseConstantDecay must have one more element than `boundaries`; received "
                f"boundaries={boundaries} (length {len(boundaries)}) and values={values} (length {len(values)})."
            )
        self.boundaries = boundaries
        self.values = [_number("values", v, "PiecewiseConstantDecay") for v in values]
        self.name = name

    def __call__(self, step):
        step = jnp.asarray(step)
        bounds = [jnp.asarray(b).astype(step.dtype) for b in self.boundaries]
        values = [jnp.asarray(v, _F32) for v in self.values]
        result = jnp.zeros((), _F32)
        if not bounds:
            return result + values[0]
        result = result + (step <= bounds[0]).astype(_F32) * values[0]
        result = result + (step > bounds[-1]).astype(_F32) * values[-1]
        for low, high, value in zip(bounds[:-1], bounds[1:], values[1:-1]):
            result = result + ((step > low) & (step <= high)).astype(_F32) * value
        return result

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """``(initial - end) · (1 - step / decay_steps)^power + end`` with ``step`` capped at ``decay_steps``; with
    ``cycle``, ``decay_steps`` is multiplied by ``ceil(step / decay_steps)`` (1 at step 0) instead.

    Args:
      initial_learning_rate: float. decay_steps: > 0. end_learning_rate: 1e-4. power: 1.0. cycle: False.
      name: Keras' name.

    optax equivalent (cycle=False): ``optax.polynomial_schedule(init_value, end_value, power, transition_steps)``.
    Keras equivalent: ``keras.optimizers.schedules.PolynomialDecay``.
    """

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0, cycle=False,
                 name="PolynomialDecay"):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, "PolynomialDecay")
        self.decay_steps = _decay_steps(decay_steps, "PolynomialDecay")
        self.end_learning_rate = _number("end_learning_rate", end_learning_rate, "PolynomialDecay")
        self.power = _number("power", power, "PolynomialDecay")
        self.cycle = bool(cycle)
        self.name = name

    def __call__(self, step):
        initial = jnp.asarray(self.initial_learning_rate, _F32)
        end = jnp.asarray(self.end_learning_rate, _F32)
        power = jnp.asarray(self.power, _F32)
        step = _step(step)
        decay_steps = jnp.asarray(self.decay_steps, _F32)
        if self.cycle:
            multiplier = jnp.where(step == 0, 1.0, jnp.ceil(step / self.decay_steps))
            decay_steps = decay_steps * multiplier
        else:
            step = jnp.minimum(step, decay_steps)
        p = step / decay_steps
        return (initial - end) * jnp.power(1 - p, power) + end

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "end_learning_rate": self.end_learning_rate, "power": self.power, "cycle": self.cycle,
                "name": self.name}


class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate · step / decay_steps)`` (``floor(step / decay_steps)`` with
    ``staircase``).

    Args:
      initial_learning_rate: float. decay_steps: > 0. decay_rate: float. staircase: False. name: Keras' name.

    optax equivalent: none. Keras equivalent: ``keras.optimizers.schedules.InverseTimeDecay``.
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="InverseTimeDecay"):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, "InverseTimeDecay")
        self.decay_steps = _decay_steps(decay_steps, "InverseTimeDecay")
        self.decay_rate = _number("decay_rate", decay_rate, "InverseTimeDecay")
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _step(step) / jnp.asarray(self.decay_steps, _F32)
        if self.staircase:
            p = jnp.floor(p)
        denom = jnp.asarray(1, _F32) + jnp.asarray(self.decay_rate, _F32) * p
        return jnp.asarray(self.initial_learning_rate, _F32) / denom

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


def _cosine(step, decay_steps, decay_from, alpha):
    """Keras' ``CosineDecay._decay_function``."""
    completed = step / decay_steps
    cosine = 0.5 * (1.0 + jnp.cos(jnp.asarray(math.pi, _F32) * completed))
    return decay_from * ((1 - alpha) * cosine + alpha)


class CosineDecay(LearningRateSchedule):
    """Cosine decay with optional linear warmup (Keras 3's parametrisation).

    Without ``warmup_target``: ``initial · ((1 - alpha) · 0.5 (1 + cos(π min(step, decay_steps) / decay_steps)) +
    alpha)``. With it: a linear ramp from ``initial_learning_rate`` to ``warmup_target`` over ``warmup_steps``, then
    the cosine decay from ``warmup_target`` over ``decay_steps`` (the step capped at ``warmup_steps +
    decay_steps``).

    Args:
      initial_learning_rate: float. decay_steps: > 0 (after the warmup). alpha: the final fraction (0.0).
      name: Keras' name. warmup_target: None (no warmup) or the peak learning rate. warmup_steps: 0.

    optax equivalent: ``optax.cosine_decay_schedule(init_value, decay_steps, alpha)`` without warmup;
    ``optax.warmup_cosine_decay_schedule`` counts ``decay_steps`` differently (warmup included).
    Keras equivalent: ``keras.optimizers.schedules.CosineDecay``.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, "CosineDecay")
        self.decay_steps = _decay_steps(decay_steps, "CosineDecay")
        self.alpha = _number("alpha", alpha, "CosineDecay")
        self.name = name
        self.warmup_target = _number("warmup_target", warmup_target, "CosineDecay", allow_none=True)
        self.warmup_steps = _number("warmup_steps", warmup_steps, "CosineDecay", low=0)

    def __call__(self, step):
        initial = jnp.asarray(self.initial_learning_rate, _F32)
        decay_steps = jnp.asarray(self.decay_steps, _F32)
        step = _step(step)
        if self.warmup_target is None:
            return _cosine(jnp.minimum(step, decay_steps), decay_steps, initial, self.alpha)
        target = jnp.asarray(self.warmup_target, _F32)
        warmup_steps = jnp.asarray(self.warmup_steps, _F32)
        step = jnp.minimum(step, decay_steps + warmup_steps)
        # Keras' ops.cond, as a where: the branch not taken may divide by warmup_steps = 0
        safe_warmup = jnp.where(warmup_steps > 0, warmup_steps, 1.0)
        warm = (target - initial) * (step / safe_warmup) + initial
        decayed = _cosine(step - warmup_steps, decay_steps, target, self.alpha)
        return jnp.where(step < warmup_steps, warm, decayed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR): periods of ``first_decay_steps · t_mul^i`` steps, the i-th restart
    starting at ``initial_learning_rate · m_mul^i`` and decaying to ``alpha`` times that.

    Args:
      initial_learning_rate: float. first_decay_steps: > 0. t_mul: 2.0. m_mul: 1.0. alpha: 0.0.
      name: Keras' name.

    optax equivalent: none with these arguments (``optax.sgdr_schedule`` takes explicit periods).
    Keras equivalent: ``keras.optimizers.schedules.CosineDecayRestarts``.
    """

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0, name="SGDRDecay"):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, "CosineDecayRestarts")
        self.first_decay_steps = _decay_steps(first_decay_steps, "CosineDecayRestarts", "first_decay_steps")
        self.t_mul = _number("t_mul", t_mul, "CosineDecayRestarts")
        self.m_mul = _number("m_mul", m_mul, "CosineDecayRestarts")
        self.alpha = _number("alpha", alpha, "CosineDecayRestarts")
        self.name = name

    def __call__(self, step):
        initial = jnp.asarray(self.initial_learning_rate, _F32)
        first = jnp.asarray(self.first_decay_steps, _F32)
        alpha = jnp.asarray(self.alpha, _F32)
        t_mul = jnp.asarray(self.t_mul, _F32)
        m_mul = jnp.asarray(self.m_mul, _F32)
        completed = _step(step) / first
        if self.t_mul == 1.0:
            i_restart = jnp.floor(completed)
            completed = completed - i_restart
        else:
            i_restart = jnp.floor(jnp.log((1.0 - completed * (1.0 - t_mul)).astype(_F32)) / jnp.log(t_mul))
            sum_r = (1.0 - jnp.power(t_mul, i_restart)) / (1.0 - t_mul)
            completed = (completed - sum_r) / jnp.power(t_mul, i_restart)
        m_fac = jnp.power(m_mul, i_restart)
        cosine = 0.5 * m_fac * (1.0 + jnp.cos(jnp.asarray(math.pi, _F32) * completed))
        return initial * ((1 - alpha) * cosine + alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "first_decay_steps": self.first_decay_steps,
                "t_mul": self.t_mul, "m_mul": self.m_mul, "alpha": self.alpha, "name": self.name}


ALL = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, PolynomialDecay, InverseTimeDecay,
                                      CosineDecay, CosineDecayRestarts)}


def get(identifier):
    """A schedule from an instance, a callable, or a ``{"class_name": ..., "config": {...}}`` dict (Keras'
    ``keras.optimizers.schedules.serialize`` output; Keras' class names).

    Raises:
      ValueError: an unknown class name. TypeError: anything else.
    """
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        if name not in ALL:
            raise ValueError(
                f"Unknown learning-rate schedule {name!r}; jm.optimizers.schedules has {sorted(ALL)}."
            )
        config = dict(identifier.get("config", {}))
        return ALL[name].from_config(config)
    if callable(identifier):
        return identifier
    raise TypeError(f"A learning-rate schedule must be a callable step -> lr or a config dict; received {identifier!r}.")
