"""Keras 3's optimizer machinery (``BaseOptimizer.apply``) as one optax ``GradientTransformation``.

Keras 3.15 (keras/src/optimizers/base_optimizer.py; the TF and JAX backends' ``_backend_apply_gradients``
compute the same values) does, on every ``apply_gradients`` call:

1. ``gradient_accumulation_steps = k``: on k - 1 of every k calls the gradients are added to accumulators and
   nothing else changes; on the k-th, ``g = (g + acc) / k`` goes on and the accumulators are reset;
2. clipping, at most one of: ``clipnorm`` (each tensor to that L2 norm, ``g·c / max(‖g‖, c)``),
   ``global_clipnorm`` (all tensors together, ``g · c·min(1/‖g‖, 1/c)``), ``clipvalue`` (``clip(g, -c, c)``);
3. decoupled weight decay ``w ← w - w·weight_decay·lr``, before the rule, with the current learning rate;
4. the optimizer's rule (``update_step``) on every variable, with ``iterations = _iterations // k``;
5. ``use_ema``: ``average ← μ·average + (1 - μ)·w`` with ``μ = ema_momentum``, and ``μ = 0`` at iteration 0
   (the average starts at the first updated weights); every ``ema_overwrite_frequency`` iterations the weights
   are replaced by the average. This runs on every call, accumulation calls included;
6. ``_iterations += 1``. A learning-rate schedule sees ``_iterations`` before the increment (every call counts,
   accumulation calls included).

The transformation keeps Keras' variables in :class:`OptimizerState` and computes in Keras' order of
operations. Where Keras' last operation is ``w ± x`` (every rule here but Ftrl, without weight decay or an EMA
overwrite) the update is ``±x`` itself, so ``optax.apply_updates`` gives Keras' float32 weights bit for bit;
otherwise it is ``new - params``, which gives them exactly whenever old and new weight are within a factor 2
of each other (Sterbenz) and to one rounding otherwise.

The learning rate is a float32 leaf of the state (``OptimizerState.learning_rate``), so it can be changed
between jit-compiled steps without recompiling (:func:`set_learning_rate`; the LR callbacks use it) and it is
saved and restored with the rest of the state. A schedule (any ``step -> lr`` callable, e.g.
``jm.optimizers.schedules.*`` or an optax schedule) is evaluated inside the step instead and is not settable,
as in Keras.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_BASE_ARGS = (
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "gradient_accumulation_steps",
    "name",
)


class OptimizerState(NamedTuple):
    """The variables of a Keras optimizer, as arrays.

    Attributes:
      iterations: int32 []: Keras' ``optimizer._iterations`` (every call, accumulation calls included).
      learning_rate: float32 []: the learning rate (settable); None when the optimizer has a schedule.
      slots: the rule's own variables (e.g. ``(momentums, velocities)`` for Adam), each shaped like the params.
      accumulated_gradients: like the params with ``gradient_accumulation_steps``, else None.
      average: the exponential moving average of the weights with ``use_ema``, else None.
    """

    iterations: jax.Array
    learning_rate: Any
    slots: Any
    accumulated_gradients: Any
    average: Any


def _tree(fn, *trees):
    return jax.tree_util.tree_map(fn, *trees)


def _number(name, value, owner, *, low=None, high=None, allow_none=False, integer=False, strict_low=False):
    """Validate a hyperparameter: a real (or int) number in [low, high]; return it as float (or int)."""
    if value is None and allow_none:
        return None
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(float(value)):
        kind = "an int" if integer else "a finite number"
        raise TypeError(f"`{name}` of {owner} must be {kind}{' or None' if allow_none else ''}; received {value!r}.")
    if low is not None and (value <= low if strict_low else value < low):
        raise ValueError(f"`{name}` of {owner} must be {'>' if strict_low else '>='} {low}; received {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"`{name}` of {owner} must be <= {high}; received {value!r}.")
    return int(value) if integer else float(value)


def _clip_by_norm(g, clipnorm):
    """Keras' ``_clip_by_norm`` (= ``tf.clip_by_norm``): ``g·c / max(‖g‖, c)``, NaN-safe at ‖g‖ = 0."""
    l2sum = jnp.sum(jnp.square(g), keepdims=True)
    pred = l2sum > 0
    l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, jnp.ones_like(l2sum))), l2sum)
    return (g * clipnorm) / jnp.maximum(l2norm, clipnorm)


def _clip_by_global_norm(grads, clip_norm):
    """Keras' ``clip_by_global_norm``: ``g · c·min(1/‖g‖, 1/c)`` (NaN scale for a non-finite norm)."""
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(jnp.sum(jnp.stack([jnp.sum(jnp.square(g)) for g in leaves])))
    scale = clip_norm * jnp.minimum(1.0 / norm, 1.0 / clip_norm)
    scale = scale + (norm - norm)
    return _tree(lambda g: g * scale.astype(g.dtype), grads)


def _clipper(clipnorm, clipvalue, global_clipnorm):
    """The one clipping Keras applies (``_clip_gradients``: a value of 0 or None means off)."""
    if clipnorm:
        return lambda grads: _tree(lambda g: _clip_by_norm(g, clipnorm), grads)
    if global_clipnorm:
        return lambda grads: _clip_by_global_norm(grads, global_clipnorm)
    if clipvalue:
        clip = optax.clip(clipvalue)  # jnp.clip(g, -c, c): Keras' ops.clip
        return lambda grads: clip.update(grads, clip.init(grads))[0]
    return lambda grads: grads


class Optimizer(optax.GradientTransformation):
    """Base class of the Keras optimizers: an ``optax.GradientTransformation`` with Keras' update, order of
    operations and variables.

    ``init(params) -> OptimizerState``; ``update(grads, state, params) -> (updates, state)`` (``params`` is
    required). Use it like any optax transformation, or pass it to :class:`jaxmask.Trainer`.

    Attributes:
      name: the optimizer's name (Keras' ``name``; default the class name).
      learning_rate: the float or schedule it was built with (the current value lives in the state:
        :func:`get_learning_rate`).
      config: Keras' ``get_config()`` for this optimizer (``get_config()`` returns a copy).

    Subclasses define ``_rule(config) -> (init_slots, step)`` with ``init_slots(params) -> slots`` and
    ``step(grads, params, slots, lr, iterations) -> (increments, slots)`` transcribing Keras' ``update_step``
    (Keras' new weights are ``params + increments``).
    """

    _defaults: dict = {}

    def __new__(cls, *args, **kwargs):
        if cls is Optimizer:
            raise TypeError("jm.optimizers.Optimizer is abstract: use jm.optimizers.Adam(...), SGD(...), ...")
        names = list(cls._defaults)
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional arguments; received {len(args)}.")
        config = dict(cls._defaults)
        for key, value in zip(names, args):
            config[key] = value
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            hint = ""
            if "loss_scale_factor" in unknown:
                hint = " (loss scaling is not supported: jaxmask trains float32 weights)"
            raise TypeError(f"{cls.__name__}() got unknown argument(s) {unknown}{hint}; it takes {names}.")
        for key in kwargs:
            if key in names[: len(args)]:
                raise TypeError(f"{cls.__name__}() got multiple values for argument `{key}`.")
        config.update(kwargs)
        config["name"] = cls.__name__ if config.get("name") is None else str(config["name"])
        config = cls._check(config)
        init, update = _keras_transform(cls._rule(config), config)
        obj = super().__new__(cls, init, update)
        obj.config = config
        obj.name = config["name"]
        obj.learning_rate = config["learning_rate"]
        return obj

    def __repr__(self):
        shown = ", ".join(
            f"{k}={v!r}" for k, v in self.config.items() if k != "name" and v != self._defaults.get(k, object())
        )
        return f"jm.optimizers.{type(self).__name__}({shown})"

    def get_config(self) -> dict:
        """Keras' ``get_config()``: the arguments, with a schedule as its own ``{"class_name", "config"}``."""
        config = dict(self.config)
        lr = config["learning_rate"]
        if hasattr(lr, "get_config"):
            config["learning_rate"] = {"class_name": type(lr).__name__, "config": lr.get_config()}
        return config

    @classmethod
    def from_config(cls, config: dict):
        """Rebuild from :meth:`get_config` (or a Keras optimizer's ``get_config()``)."""
        config = dict(config)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            from jaxmask.optimizers import _schedules

            config["learning_rate"] = _schedules.get(lr)
        for key in ("jit_compile", "is_legacy_optimizer"):  # tf_keras-only entries with no effect here
            config.pop(key, None)
        if config.get("loss_scale_factor", 0) is None:
            del config["loss_scale_factor"]
        return cls(**config)

    @classmethod
    def _check(cls, config: dict) -> dict:
        """Keras' argument checks (base optimizer), with errors that name the argument."""
        owner = cls.__name__
        lr = config["learning_rate"]
        if not callable(lr):
            config["learning_rate"] = _number("learning_rate", lr, owner, low=0.0)
        config["weight_decay"] = _number("weight_decay", config["weight_decay"], owner, allow_none=True)
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            config[key] = _number(key, config[key], owner, low=0.0, allow_none=True)
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if config[k] is not None]
        if len(clips) > 1:
            raise ValueError(
                f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set (as in Keras); {owner} received "
                + ", ".join(f"{k}={config[k]}" for k in clips)
                + "."
            )
        config["use_ema"] = bool(config["use_ema"])
        config["ema_momentum"] = _number("ema_momentum", config["ema_momentum"], owner, low=0.0, high=1.0)
        config["ema_overwrite_frequency"] = _number(
            "ema_overwrite_frequency", config["ema_overwrite_frequency"], owner, low=1, allow_none=True, integer=True
        )
        steps = config["gradient_accumulation_steps"]
        config["gradient_accumulation_steps"] = _number(
            "gradient_accumulation_steps", steps, owner, low=2, allow_none=True, integer=True
        )
        return config

    @classmethod
    def _rule(cls, config):
        raise NotImplementedError


def _keras_transform(rule, config):
    """``(init, update)`` of Keras' ``BaseOptimizer.apply`` around ``rule`` (see the module docstring)."""
    init_slots, step = rule
    learning_rate = config["learning_rate"]
    schedule = learning_rate if callable(learning_rate) else None
    weight_decay = config["weight_decay"]
    clip = _clipper(config["clipnorm"], config["clipvalue"], config["global_clipnorm"])
    use_ema, ema_momentum = config["use_ema"], config["ema_momentum"]
    overwrite = config["ema_overwrite_frequency"] if use_ema else None
    k = config["gradient_accumulation_steps"]

    def init(params):
        zeros = lambda: _tree(jnp.zeros_like, params)  # noqa: E731
        return OptimizerState(
            iterations=jnp.zeros((), jnp.int32),
            learning_rate=None if schedule is not None else jnp.asarray(learning_rate, jnp.float32),
            slots=init_slots(params),
            accumulated_gradients=zeros() if k else None,
            average=zeros() if use_ema else None,
        )

    def apply(grads, params, slots, lr, iterations):
        """``(updates, slots)``: Keras' weights are ``params + updates``."""
        grads = clip(grads)
        if weight_decay is None:
            return step(grads, params, slots, lr, iterations)
        decayed = _tree(lambda p: p - p * jnp.asarray(weight_decay, p.dtype) * lr.astype(p.dtype), params)
        increments, slots = step(grads, decayed, slots, lr, iterations)
        return _tree(lambda d, i, p: (d + i) - p, decayed, increments, params), slots

    def update(grads, state, params=None):
        if params is None:
            raise ValueError(
                "Keras optimizers need the parameters: call optimizer.update(grads, state, params) (weight decay and "
                "some rules, e.g. Ftrl, read the weights)."
            )
        it = state.iterations
        if schedule is not None:
            lr = jnp.asarray(schedule(it), jnp.float32)
        else:
            lr = state.learning_rate
        iterations = it // k if k else it
        acc = state.accumulated_gradients
        if k:

            def on_update(_):
                averaged = _tree(lambda g, a: (g + a) / k, grads, acc)
                updates, slots = apply(averaged, params, state.slots, lr, iterations)
                return updates, slots, _tree(jnp.zeros_like, acc)

            def on_accumulate(_):
                return _tree(jnp.zeros_like, params), state.slots, _tree(lambda g, a: g + a, grads, acc)

            updates, slots, acc = jax.lax.cond((it + 1) % k == 0, on_update, on_accumulate, None)
        else:
            updates, slots = apply(grads, params, state.slots, lr, iterations)
        average = state.average
        if use_ema:
            new = optax.apply_updates(params, updates)
            momentum = (iterations != 0).astype(jnp.float32) * ema_momentum
            average = _tree(lambda a, w: momentum.astype(w.dtype) * a + (1 - momentum.astype(w.dtype)) * w, average, new)
            if overwrite:
                now = (iterations + 1) % overwrite == 0
                updates = _tree(lambda a, u, p: jnp.where(now, a - p, u), average, updates, params)
        return updates, OptimizerState(it + 1, state.learning_rate, slots, acc, average)

    return init, update


# ------------------------------------------------------------------------------------------ learning rate

_INJECT = tuple(
    t for t in (getattr(optax, "InjectHyperparamsState", None), getattr(optax, "InjectStatefulHyperparamsState", None))
    if t is not None
)


def _is_lr_node(x) -> bool:
    return isinstance(x, OptimizerState) or (isinstance(x, _INJECT) and "learning_rate" in x.hyperparams)


def _lr_node(opt_state, what: str):
    nodes = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_lr_node) if _is_lr_node(x)]
    if not nodes:
        raise ValueError(
            f"Cannot {what} the learning rate: the optimizer state holds none. A plain optax transformation such as "
            "optax.adam(1e-3) fixes it when it is built; use a jm.optimizers optimizer (e.g. jm.optimizers.Adam(1e-3) "
            "or the name 'adam') or optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
        )
    if len(nodes) > 1:
        raise ValueError(
            f"Cannot {what} the learning rate: the optimizer state holds {len(nodes)} learning rates (several "
            "optimizers chained); set them on each part's state yourself."
        )
    return nodes[0]


def get_learning_rate(opt_state, optimizer=None) -> float:
    """The learning rate the next step will use (Keras' ``float(optimizer.learning_rate)``).

    Args:
      opt_state: the state of a ``jm.optimizers`` optimizer or of ``optax.inject_hyperparams(...)``, possibly
        inside a larger optax state (``optax.chain`` ...).
      optimizer: the ``jm.optimizers`` optimizer, needed when its learning rate is a schedule (the value is
        ``schedule(iterations)``).

    Returns:
      A Python float.

    Raises:
      ValueError: the state has no learning rate (a plain optax transformation), or a schedule without ``optimizer``.
    """
    node = _lr_node(opt_state, "read")
    if isinstance(node, OptimizerState):
        if node.learning_rate is not None:
            return float(np.asarray(jax.device_get(node.learning_rate)))
        schedule = getattr(optimizer, "learning_rate", None)
        if not callable(schedule):
            raise ValueError(
                "The optimizer's learning rate is a schedule: pass the optimizer too, "
                "get_learning_rate(opt_state, optimizer), to evaluate it at the current iteration."
            )
        return float(np.asarray(jax.device_get(schedule(node.iterations)), np.float32))
    return float(np.asarray(jax.device_get(node.hyperparams["learning_rate"])))


def set_learning_rate(opt_state, value):
    """A copy of ``opt_state`` whose learning rate is ``value`` (Keras' ``optimizer.learning_rate = value``).

    The new leaf has the old one's dtype, shape and placement, so a jit-compiled step that takes the state
    does not recompile.

    Args:
      opt_state: as for :func:`get_learning_rate`.
      value: a finite number >= 0.

    Returns:
      The new optimizer state (the old one is not modified).

    Raises:
      TypeError: the learning rate is a schedule (not settable, as in Keras), or ``value`` is not a number.
      ValueError: the state has no learning rate.
    """
    try:
        value = float(np.asarray(value))
    except (TypeError, ValueError):
        raise TypeError(f"The learning rate must be a number; received {value!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"The learning rate must be a finite number >= 0; received {value!r}.")
    node = _lr_node(opt_state, "set")

    def put(old):
        new = jnp.asarray(value, old.dtype)
        sharding = getattr(old, "sharding", None)
        return jax.device_put(new, sharding) if sharding is not None else new

    if isinstance(node, OptimizerState):
        if node.learning_rate is None:
            raise TypeError(
                "This optimizer was created with a learning-rate schedule, so its learning rate is not settable (as "
                "in Keras). Build it with a float learning_rate to change it from a callback."
            )
        new_node = node._replace(learning_rate=put(node.learning_rate))
    else:
        if "learning_rate" in getattr(node, "hyperparams_states", {}):
            raise TypeError(
                "optax.inject_hyperparams was given a schedule for learning_rate, so it is recomputed every step and not "
                "settable; inject a float instead."
            )
        hyper = dict(node.hyperparams)
        hyper["learning_rate"] = put(hyper["learning_rate"])
        new_node = node._replace(hyperparams=hyper)
    return jax.tree_util.tree_map(lambda x: new_node if x is node else x, opt_state, is_leaf=_is_lr_node)


def finalize_variable_values(params, opt_state):
    """The weights Keras' ``fit`` ends with: the moving average with ``use_ema=True`` (once at least one step has
    run), else ``params`` unchanged (Keras' ``optimizer.finalize_variable_values``).

    Args:
      params: the current parameters.
      opt_state: the optimizer state (any optax state; only a ``jm.optimizers`` state with ``use_ema`` acts).

    Returns:
      The parameters to keep.
    """
    nodes = [
        x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_lr_node)
        if isinstance(x, OptimizerState) and x.average is not None
    ]
    if len(nodes) != 1:
        return params
    node = nodes[0]
    ran = node.iterations > 0
    return _tree(lambda a, p: jnp.where(ran, a, p).astype(p.dtype), node.average, params)
