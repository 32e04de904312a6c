"""Keras 3's optimizers, each its ``update_step`` transcribed operation for operation (keras/src/optimizers/*.py,
Keras 3.15.1) inside the shared machinery of :mod:`jaxmask.optimizers._base`.

Why not ``optax.adam`` & co.: optax's rules are the same algorithms written differently, and the differences
show within 20 steps. ``optax.adam`` divides by ``sqrt(v_hat) + eps`` where Keras folds the bias corrections
into the step size (``eps`` is effectively scaled by ``sqrt(1 - beta_2^t)``; ~3e-4 relative after 20 steps);
optax's RMSprop and Adagrad multiply by ``rsqrt`` where Keras divides by ``sqrt``, optax's momentum keeps the
learning rate outside the trace where Keras' SGD folds it in (they differ under a schedule), and optax's weight
decay is not Keras' ``w -= w·wd·lr`` before the rule. Every Keras rule below is written in Keras' own
operations and constants (``1 - beta`` computed in Python double, as Keras does), so the float32 results agree
to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmask.optimizers._base import Optimizer, _number, _tree

_COMMON = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "gradient_accumulation_steps": None,
    "name": None,
}

_BASE_DOC = """
    Common arguments (Keras' base optimizer; the order of application is in :mod:`jaxmask.optimizers`):
      weight_decay: decoupled decay ``w -= w·weight_decay·lr`` before the rule (None: off).
      clipnorm: clip each gradient tensor to this L2 norm. clipvalue: clip each element to [-c, c].
        global_clipnorm: clip all gradients together to this global norm. At most one of the three.
      use_ema: keep an exponential moving average of the weights (``ema_momentum``); the Trainer's ``fit`` ends
        with the weights replaced by it, as Keras' ``fit`` does (:func:`finalize_variable_values`).
      ema_overwrite_frequency: replace the weights by the average every that many iterations (None: never).
      gradient_accumulation_steps: k >= 2: update every k calls with the mean of the k gradients.
      name: a name (default the class name).

    Returns an ``optax.GradientTransformation``; ``update`` needs ``params``.
"""


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _zeros(params):
    return _tree(jnp.zeros_like, params)


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, exactly as Keras 3.

    .. math:: m \\leftarrow \\mu m - \\eta g;\\quad w \\leftarrow w + m \\;\\text{(or } w + \\mu m - \\eta g
              \\text{ with nesterov)};\\quad \\text{without momentum } w \\leftarrow w - \\eta g

    Args:
      learning_rate: float >= 0 or a ``step -> lr`` schedule (default 0.01).
      momentum: in [0, 1] (default 0: no momentum variable).
      nesterov: Nesterov momentum.
    """

    _defaults = {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.SGD``.\n"

    @classmethod
    def _check(cls, config):
        config["momentum"] = _number("momentum", config["momentum"], "SGD", low=0.0, high=1.0)
        config["nesterov"] = bool(config["nesterov"])
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        momentum, nesterov = config["momentum"], config["nesterov"]

        def init(params):
            return (_zeros(params),) if momentum != 0 else ()

        def step(grads, params, slots, lr, iterations):
            if momentum == 0:
                return _tree(lambda g, w: -(g.astype(w.dtype) * lr.astype(w.dtype)), grads, params), slots

            def one(g, w, m):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                mu = jnp.asarray(momentum, w.dtype)
                m = m * mu - g * lr_
                return (m * mu - g * lr_ if nesterov else m), m

            out = _tree(one, grads, params, slots[0])
            return _split(out, params, 2)

        return init, step


def _split(out, params, n):
    """Unzip a tree of n-tuples (shaped like ``params``) into (first tree, (other trees...))."""
    treedef = jax.tree_util.tree_structure(params)
    leaves = treedef.flatten_up_to(out)
    parts = [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(n)]
    return parts[0], tuple(parts[1:])


class Adam(Optimizer):
    """Adam, exactly as Keras 3 (not ``optax.adam``: Keras folds the bias corrections into the step size).

    .. math:: \\alpha = \\eta \\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t);\\; m \\mathrel{+}= (g - m)(1 - \\beta_1);\\;
              v \\mathrel{+}= (g^2 - v)(1 - \\beta_2);\\; w \\mathrel{-}= m \\alpha / (\\sqrt v + \\epsilon)

    with ``t`` = iterations + 1 and, with ``amsgrad``, ``v`` replaced by its running maximum.

    Args:
      learning_rate: float >= 0 or a ``step -> lr`` schedule (default 0.001).
      beta_1, beta_2: moment decay rates (0.9, 0.999).
      epsilon: 1e-7 (Keras' default; optax's is 1e-8).
      amsgrad: use the maximum of past ``v``.
    """

    _defaults = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Adam``.\n"

    @classmethod
    def _check(cls, config):
        for key in ("beta_1", "beta_2", "epsilon"):
            config[key] = _number(key, config[key], cls.__name__)
        config["amsgrad"] = bool(config["amsgrad"])
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        beta_1, beta_2, epsilon, amsgrad = config["beta_1"], config["beta_2"], config["epsilon"], config["amsgrad"]

        def init(params):
            return (_zeros(params), _zeros(params)) + ((_zeros(params),) if amsgrad else ())

        def step(grads, params, slots, lr, iterations):
            local_step = (iterations + 1).astype(jnp.float32)
            beta_1_power = jnp.power(_f32(beta_1), local_step)
            beta_2_power = jnp.power(_f32(beta_2), local_step)
            alpha = lr * jnp.sqrt(1 - beta_2_power) / (1 - beta_1_power)

            def one(g, w, m, v, *v_hat):
                g = g.astype(w.dtype)
                m = m + (g - m) * (1 - beta_1)
                v = v + (jnp.square(g) - v) * (1 - beta_2)
                used = v
                if amsgrad:
                    v_hat = jnp.maximum(v_hat[0], v)
                    used = v_hat
                inc = -((m * alpha.astype(w.dtype)) / (jnp.sqrt(used) + epsilon))
                return (inc, m, v, v_hat) if amsgrad else (inc, m, v)

            out = _tree(one, grads, params, *slots)
            return _split(out, params, 4 if amsgrad else 3)

        return init, step


class AdamW(Adam):
    """Adam with decoupled weight decay, exactly as Keras 3 (Keras' ``AdamW`` is ``Adam`` with a required
    ``weight_decay``, default 0.004, applied as ``w -= w·wd·lr`` before the Adam step).

    Args:
      learning_rate, beta_1, beta_2, epsilon, amsgrad: as :class:`Adam`.
      weight_decay: the decay (default 0.004; None is refused, as in Keras).
    """

    _defaults = {
        "learning_rate": 0.001, "weight_decay": 0.004, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
        "amsgrad": False, **{k: v for k, v in _COMMON.items() if k != "weight_decay"},
    }
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.AdamW``.\n"

    @classmethod
    def _check(cls, config):
        if config["weight_decay"] is None:
            raise ValueError("`weight_decay` of AdamW must be a float (Keras' default is 0.004); received None.")
        return super()._check(config)


class RMSprop(Optimizer):
    """RMSprop (optionally centered, with momentum), exactly as Keras 3.

    .. math:: v \\leftarrow \\rho v + (1 - \\rho) g^2;\\; \\bar g \\leftarrow \\rho \\bar g + (1 - \\rho) g
              \\text{ (centered)};\\; \\Delta = \\eta g / \\sqrt{v - \\bar g^2 + \\epsilon};\\;
              w \\mathrel{-}= \\Delta \\text{ (or } p \\leftarrow \\mu p + \\Delta,\\ w \\mathrel{-}= p)

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001).
      rho: 0.9. momentum: 0.0. epsilon: 1e-7. centered: False.
    """

    _defaults = {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.RMSprop``.\n"

    @classmethod
    def _check(cls, config):
        for key in ("rho", "momentum", "epsilon"):
            config[key] = _number(key, config[key], "RMSprop")
        config["centered"] = bool(config["centered"])
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        rho, momentum, epsilon, centered = config["rho"], config["momentum"], config["epsilon"], config["centered"]

        def init(params):
            return (_zeros(params),) + ((_zeros(params),) if momentum > 0 else ()) + ((_zeros(params),) if centered else ())

        def step(grads, params, slots, lr, iterations):
            def one(g, w, velocity, *rest):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                rest = list(rest)
                mom = rest.pop(0) if momentum > 0 else None
                avg = rest.pop(0) if centered else None
                velocity = rho * velocity + (1 - rho) * jnp.square(g)
                if centered:
                    avg = rho * avg + (1 - rho) * g
                    denominator = velocity - jnp.square(avg) + epsilon
                else:
                    denominator = velocity + epsilon
                increment = (lr_ * g) / jnp.sqrt(denominator)
                if momentum > 0:
                    mom = momentum * mom + increment
                    inc = -mom
                else:
                    inc = -increment
                return (inc, velocity) + ((mom,) if momentum > 0 else ()) + ((avg,) if centered else ())

            out = _tree(one, grads, params, *slots)
            return _split(out, params, 1 + len(slots))

        return init, step


class Adagrad(Optimizer):
    """Adagrad, exactly as Keras 3.

    .. math:: a \\mathrel{+}= g^2;\\quad w \\mathrel{-}= \\eta g / \\sqrt{a + \\epsilon}

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001).
      initial_accumulator_value: starting value of ``a`` (0.1). epsilon: 1e-7.
    """

    _defaults = {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Adagrad``.\n"

    @classmethod
    def _check(cls, config):
        config["initial_accumulator_value"] = _number(
            "initial_accumulator_value", config["initial_accumulator_value"], "Adagrad", low=0.0
        )
        config["epsilon"] = _number("epsilon", config["epsilon"], "Adagrad")
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        initial, epsilon = config["initial_accumulator_value"], config["epsilon"]

        def init(params):
            return (_tree(lambda p: jnp.full_like(p, initial), params),)

        def step(grads, params, slots, lr, iterations):
            def one(g, w, acc):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                acc = acc + jnp.square(g)
                return -((lr_ * g) / jnp.sqrt(acc + epsilon)), acc

            return _split(_tree(one, grads, params, slots[0]), params, 2)

        return init, step


class Adadelta(Optimizer):
    """Adadelta, exactly as Keras 3.

    .. math:: a \\leftarrow \\rho a + (1 - \\rho) g^2;\\; \\delta = -\\sqrt{d + \\epsilon}\\, g / \\sqrt{a + \\epsilon};\\;
              d \\leftarrow \\rho d + (1 - \\rho) \\delta^2;\\; w \\mathrel{+}= \\eta \\delta

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001; the Adadelta paper's 1.0 is ``learning_rate=1.0``).
      rho: 0.95. epsilon: 1e-7.
    """

    _defaults = {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Adadelta``.\n"

    @classmethod
    def _check(cls, config):
        for key in ("rho", "epsilon"):
            config[key] = _number(key, config[key], "Adadelta")
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        rho, epsilon = config["rho"], config["epsilon"]

        def init(params):
            return (_zeros(params), _zeros(params))

        def step(grads, params, slots, lr, iterations):
            def one(g, w, acc_grad, acc_delta):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                acc_grad = rho * acc_grad + (1 - rho) * jnp.square(g)
                delta = -((jnp.sqrt(acc_delta + epsilon) * g) / jnp.sqrt(acc_grad + epsilon))
                acc_delta = rho * acc_delta + (1 - rho) * jnp.square(delta)
                return lr_ * delta, acc_grad, acc_delta

            return _split(_tree(one, grads, params, *slots), params, 3)

        return init, step


class Adamax(Optimizer):
    """Adamax (Adam with the infinity norm), exactly as Keras 3.

    .. math:: m \\mathrel{+}= (g - m)(1 - \\beta_1);\\; u \\leftarrow \\max(\\beta_2 u, |g|);\\;
              w \\mathrel{-}= \\eta m / ((1 - \\beta_1^t)(u + \\epsilon))

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001). beta_1: 0.9. beta_2: 0.999. epsilon: 1e-7.
    """

    _defaults = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Adamax``.\n"

    @classmethod
    def _check(cls, config):
        for key in ("beta_1", "beta_2", "epsilon"):
            config[key] = _number(key, config[key], "Adamax")
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        beta_1, beta_2, epsilon = config["beta_1"], config["beta_2"], config["epsilon"]

        def init(params):
            return (_zeros(params), _zeros(params))

        def step(grads, params, slots, lr, iterations):
            beta_1_power = jnp.power(_f32(beta_1), (iterations + 1).astype(jnp.float32))

            def one(g, w, m, u):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                m = m + (g - m) * (1 - beta_1)
                u = jnp.maximum(beta_2 * u, jnp.abs(g))
                return -((lr_ * m) / ((1 - beta_1_power) * (u + epsilon))), m, u

            return _split(_tree(one, grads, params, *slots), params, 3)

        return init, step


class Nadam(Optimizer):
    """Nadam (Adam with Nesterov momentum and Dozat's momentum schedule), exactly as Keras 3.

    .. math:: \\mu_t = \\beta_1 (1 - 0.5 \\cdot 0.96^t);\\; \\Pi_t = \\Pi_{t-1} \\mu_t;\\;
              \\hat m = \\mu_{t+1} m / (1 - \\Pi_t \\mu_{t+1}) + (1 - \\mu_t) g / (1 - \\Pi_t);\\;
              \\hat v = v / (1 - \\beta_2^t);\\; w \\mathrel{-}= \\eta \\hat m / (\\sqrt{\\hat v} + \\epsilon)

    (``m``, ``v`` updated as in Adam.) ``Π`` is one scalar of the state (Keras' ``_u_product``).

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001). beta_1: 0.9. beta_2: 0.999. epsilon: 1e-7.
    """

    _defaults = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Nadam``.\n"

    @classmethod
    def _check(cls, config):
        for key in ("beta_1", "beta_2", "epsilon"):
            config[key] = _number(key, config[key], "Nadam")
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        beta_1_py, beta_2_py, epsilon = config["beta_1"], config["beta_2"], config["epsilon"]

        def init(params):
            leaves = jax.tree_util.tree_leaves(params)
            dtype = leaves[0].dtype if leaves else jnp.float32
            return (_zeros(params), _zeros(params), jnp.ones((), dtype))

        def step(grads, params, slots, lr, iterations):
            m_tree, v_tree, u_product = slots
            dtype = u_product.dtype
            local_step = (iterations + 1).astype(dtype)
            next_step = (iterations + 2).astype(dtype)
            # Keras' Nadam._backend_update_step, once per step before the variables
            u_product = u_product * beta_1_py * (1.0 - 0.5 * jnp.power(jnp.asarray(0.96, dtype), local_step))
            decay = jnp.asarray(0.96, dtype)
            beta_1, beta_2 = jnp.asarray(beta_1_py, dtype), jnp.asarray(beta_2_py, dtype)
            u_t = beta_1 * (1.0 - 0.5 * jnp.power(decay, local_step))
            u_t_1 = beta_1 * (1.0 - 0.5 * jnp.power(decay, next_step))
            u_product_t = u_product
            u_product_t_1 = u_product_t * u_t_1
            beta_2_power = jnp.power(beta_2, local_step)

            def one(g, w, m, v):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                m = m + (g - m) * (1 - beta_1)
                v = v + (jnp.square(g) - v) * (1 - beta_2)
                m_hat = (u_t_1 * m) / (1 - u_product_t_1) + ((1 - u_t) * g) / (1 - u_product_t)
                v_hat = v / (1 - beta_2_power)
                return -((m_hat * lr_) / (jnp.sqrt(v_hat) + epsilon)), m, v

            new, (m_tree, v_tree) = _split(_tree(one, grads, params, m_tree, v_tree), params, 3)
            return new, (m_tree, v_tree, u_product)

        return init, step


class Lion(Optimizer):
    """Lion (sign of an interpolated momentum), exactly as Keras 3.

    .. math:: w \\mathrel{-}= \\eta\\, \\mathrm{sign}(\\beta_1 m + (1 - \\beta_1) g);\\quad
              m \\leftarrow \\beta_2 m + (1 - \\beta_2) g

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001; tf_keras' default is 1e-4).
      beta_1: in (0, 1] (0.9). beta_2: 0.99.
    """

    _defaults = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.99, **_COMMON}
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Lion``.\n"

    @classmethod
    def _check(cls, config):
        config["beta_1"] = _number("beta_1", config["beta_1"], "Lion")
        config["beta_2"] = _number("beta_2", config["beta_2"], "Lion")
        if not 0 < config["beta_1"] <= 1:
            raise ValueError(
                f"`beta_1` of Lion must be in (0, 1] (at 0 it degenerates to SignSGD); received {config['beta_1']}."
            )
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        beta_1_py, beta_2_py = config["beta_1"], config["beta_2"]

        def init(params):
            return (_zeros(params),)

        def step(grads, params, slots, lr, iterations):
            def one(g, w, m):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                beta_1, beta_2 = jnp.asarray(beta_1_py, w.dtype), jnp.asarray(beta_2_py, w.dtype)
                inc = -(lr_ * jnp.sign(m * beta_1 + g * (1.0 - beta_1)))
                return inc, m * beta_2 + g * (1.0 - beta_2)

            return _split(_tree(one, grads, params, slots[0]), params, 2)

        return init, step


class Ftrl(Optimizer):
    """FTRL-proximal, exactly as Keras 3 (the weights are assigned, not incremented).

    .. math:: n' = n + g^2;\\; z \\mathrel{+}= g + 2\\lambda_s w - (n'^{-p} - n^{-p}) w / \\eta;\\;
              w = (\\mathrm{clip}(z, -\\lambda_1, \\lambda_1) - z) / (n'^{-p} / \\eta + 2(\\lambda_2 + \\beta / 2\\eta))

    with ``p = learning_rate_power``.

    Args:
      learning_rate: float >= 0 or a schedule (default 0.001).
      learning_rate_power: <= 0 (-0.5). initial_accumulator_value: >= 0 (0.1).
      l1_regularization_strength, l2_regularization_strength, l2_shrinkage_regularization_strength: >= 0 (0.0).
      beta: 0.0.
    """

    _defaults = {
        "learning_rate": 0.001, "learning_rate_power": -0.5, "initial_accumulator_value": 0.1,
        "l1_regularization_strength": 0.0, "l2_regularization_strength": 0.0,
        "l2_shrinkage_regularization_strength": 0.0, "beta": 0.0, **_COMMON,
    }
    __doc__ += _BASE_DOC + "\n    Keras equivalent: ``keras.optimizers.Ftrl``.\n"

    @classmethod
    def _check(cls, config):
        config["learning_rate_power"] = _number("learning_rate_power", config["learning_rate_power"], "Ftrl", high=0.0)
        for key in ("initial_accumulator_value", "l1_regularization_strength", "l2_regularization_strength",
                    "l2_shrinkage_regularization_strength"):
            config[key] = _number(key, config[key], "Ftrl", low=0.0)
        config["beta"] = _number("beta", config["beta"], "Ftrl")
        return super()._check(config)

    @classmethod
    def _rule(cls, config):
        lr_power = config["learning_rate_power"]
        initial = config["initial_accumulator_value"]
        l1 = config["l1_regularization_strength"]
        l2 = config["l2_regularization_strength"]
        shrink = config["l2_shrinkage_regularization_strength"]
        beta = config["beta"]

        def init(params):
            return (_tree(lambda p: jnp.full_like(p, initial), params), _zeros(params))

        def step(grads, params, slots, lr, iterations):
            def one(g, w, accum, linear):
                lr_, g = lr.astype(w.dtype), g.astype(w.dtype)
                l2_reg = l2 + beta / (2.0 * lr_)
                grad_to_use = g + (2 * shrink) * w
                new_accum = accum + jnp.square(g)
                linear = linear + (
                    grad_to_use - ((jnp.power(new_accum, -lr_power) - jnp.power(accum, -lr_power)) / lr_) * w
                )
                quadratic = jnp.power(new_accum, -lr_power) / lr_ + 2 * l2_reg
                linear_clipped = jnp.clip(linear, -l1, l1)
                return (linear_clipped - linear) / quadratic - w, new_accum, linear  # Keras assigns w

            return _split(_tree(one, grads, params, *slots), params, 3)

        return init, step


ALL = {cls.__name__.lower(): cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, Nadam, Lion, Ftrl)}
"""Keras' string names (``keras.optimizers.get``, case-insensitive) -> class."""
