"""Running one check on each side: the Keras reference (TensorFlow tape or JAX ``stateless_call``) and
jaxmask (``jax.value_and_grad``), both returning the same :class:`Result` record.

What is computed: the outputs (every output tensor, e.g. sequence and states), the output mask Keras
attaches (``_keras_mask``), the loss, its gradient w.r.t. every weight (named as in Keras) and optionally a
loss trajectory of N optimizer steps. Dropout is off on both sides (``training=False`` / ``model.eval()``).
Without a loss spec the loss is the probe ``Σ_k mean(output_k²)`` over every output, so that gradients
through states and masked positions are still compared.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxmask as jm
from parity import optim
from parity._keras import keras_module
from parity._losses import LossSpec, jax_loss, keras_loss, reference_uses_logits


@dataclasses.dataclass(frozen=True)
class MultiLoss:
    """Losses of a model with several outputs, as Keras' ``compile(loss=[...], loss_weights=[...])``:
    ``Σ_k w_k · loss_k(y_k, output_k)``, each output with its own mask. ``losses``: ``((LossSpec, w_k), ...)``."""

    losses: tuple


@dataclasses.dataclass
class Result:
    outputs: list  # np arrays
    mask: np.ndarray | None
    loss: float | None  # the scalar differentiated: the loss, or its sum for reduction="none"
    grads: dict  # binding name -> np array
    loss_values: np.ndarray | None = None  # the loss as returned (an array for reduction="none")
    uses_logits: bool = False
    trajectory: np.ndarray | None = None


def flatten(out) -> list:
    if isinstance(out, (list, tuple)):
        return [leaf for item in out for leaf in flatten(item)]
    return [out]


@dataclasses.dataclass
class KerasTarget:
    """A Keras model or layer, the keyword arguments it is called with, and the weights to differentiate."""

    obj: object
    bindings: list
    flavor: str
    backend: str
    call_kwargs: dict = dataclasses.field(default_factory=dict)

    @property
    def K(self):
        return keras_module(self.flavor)

    def _get_mask(self, tensor):
        if self.flavor == "tf_keras":
            return getattr(tensor, "_keras_mask", None)
        from keras.src.backend import get_keras_mask

        return get_keras_mask(tensor)

    def _loss(self, spec, outs, y, sw):
        if spec is None:
            if self.flavor == "tf_keras" or self.backend == "tensorflow":
                import tensorflow as tf

                return tf.add_n([tf.reduce_mean(tf.square(o)) for o in outs])
            ops = self.K.ops
            total = ops.mean(ops.square(outs[0]))
            for o in outs[1:]:
                total = total + ops.mean(ops.square(o))
            return total
        if isinstance(spec, MultiLoss):
            total = None
            for (one, weight), y_k, out in zip(spec.losses, y, outs):
                value = weight * keras_loss(self.K, self.flavor, self.backend, one, y_k, out, sw)
                total = value if total is None else total + value
            return total
        return keras_loss(self.K, self.flavor, self.backend, spec, y, outs[0], sw)

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(self, x, y=None, sw=None, spec: LossSpec | None = None) -> Result:
        if self.backend == "tensorflow":
            return self._evaluate_tf(x, y, sw, spec)
        return self._evaluate_jax(x, y, sw, spec)

    def _evaluate_tf(self, x, y, sw, spec):
        import tensorflow as tf

        variables = [b.keras_variable for b in self.bindings]
        kwargs = jax.tree.map(tf.constant, self.call_kwargs)  # tf_keras wants tensors for initial_state
        with tf.GradientTape() as tape:
            outs = flatten(self.obj(x, training=False, **kwargs))
            mask = self._get_mask(outs[0])
            logits = isinstance(spec, LossSpec) and reference_uses_logits(self.K, "tensorflow", spec, y, outs[0])
            values = self._loss(spec, outs, y, sw)
            loss = tf.reduce_sum(values)
        grads = tape.gradient(loss, variables)
        return Result(
            outputs=[np.asarray(o) for o in outs],
            mask=None if mask is None else np.asarray(mask).astype(bool),
            loss=float(np.asarray(loss)),
            loss_values=np.asarray(values),
            grads={b.name: _dense_grad(g, b.keras_variable) for b, g in zip(self.bindings, grads)},
            uses_logits=logits,
        )

    @functools.cached_property
    def _jax_fn(self):
        obj = self.obj
        trainable = list(obj.trainable_variables)
        position = {id(v): i for i, v in enumerate(trainable)}
        index = [position[id(b.keras_variable)] for b in self.bindings]

        def f(tv, ntv, x, y, sw, kwargs, spec):
            out, _ = obj.stateless_call(tv, ntv, x, training=False, **kwargs)
            outs = flatten(out)
            mask = self._get_mask(outs[0])
            values = self._loss(spec, outs, y, sw)
            return jax.numpy.sum(values), (outs, mask, values)

        def value_and_grad(tv, ntv, x, y, sw, kwargs, spec):
            (loss, aux), g = jax.value_and_grad(f, has_aux=True)(tv, ntv, x, y, sw, kwargs, spec)
            return loss, aux, [g[i] for i in index]

        return jax.jit(value_and_grad, static_argnums=(6,))

    def _evaluate_jax(self, x, y, sw, spec):
        tv = [v.value for v in self.obj.trainable_variables]
        ntv = [v.value for v in self.obj.non_trainable_variables]
        loss, (outs, mask, values), grads = self._jax_fn(tv, ntv, x, y, sw, self.call_kwargs, spec)
        if mask is None and "mask" in self.call_kwargs:
            # stateless_call runs `call`, not `__call__`, so a layer's output mask is not attached: ask the
            # layer, as `__call__` does.
            mask = flatten(self.obj.compute_mask(x, self.call_kwargs["mask"]))[0]
        return Result(
            outputs=[np.asarray(o) for o in outs],
            mask=None if mask is None else np.asarray(mask).astype(bool),
            loss=float(loss),
            loss_values=np.asarray(values),
            grads={b.name: np.asarray(g) for b, g in zip(self.bindings, grads)},
        )

    # ---------------------------------------------------------------------------------- training
    def trajectory(self, x, y, sw, spec, steps: int, optimizer: str, learning_rate: float) -> np.ndarray:
        """Loss before each of ``steps`` optimizer steps and after the last; weights restored afterwards."""
        weights = list(self.obj.weights)
        saved = [np.array(v.numpy()) for v in weights]
        opt = optim.keras_optimizer(self.K, optimizer, learning_rate)
        variables = [b.keras_variable for b in self.bindings]
        losses = []
        try:
            for _ in range(steps):
                if self.backend == "tensorflow":
                    import tensorflow as tf

                    with tf.GradientTape() as tape:
                        outs = flatten(self.obj(x, training=False, **jax.tree.map(tf.constant, self.call_kwargs)))
                        loss = tf.reduce_sum(self._loss(spec, outs, y, sw))
                    grads = [_as_tensor(g, v) for g, v in zip(tape.gradient(loss, variables), variables)]
                else:
                    r = self._evaluate_jax(x, y, sw, spec)
                    loss, grads = r.loss, [r.grads[b.name] for b in self.bindings]
                losses.append(float(np.asarray(loss)))
                opt.apply_gradients(zip(grads, variables))
            losses.append(self.evaluate(x, y, sw, spec).loss)
        finally:
            for v, s in zip(weights, saved):
                v.assign(s)
        return np.asarray(losses)


def _dense_grad(g, variable) -> np.ndarray:
    if g is None:
        return np.zeros(tuple(variable.shape), np.float32)
    import tensorflow as tf

    return np.asarray(tf.convert_to_tensor(g))


def _as_tensor(g, variable):
    import tensorflow as tf

    if g is None:
        return tf.zeros(tuple(variable.shape), tf.float32)
    return tf.convert_to_tensor(g)


# ------------------------------------------------------------------------------------------ jaxmask side


def _pre_activation(layer, x):
    """The logits the last layer applied its sigmoid/softmax to (Dense or Activation)."""
    if isinstance(layer, jm.nn.Activation):
        return x
    if isinstance(layer, jm.nn.Dense):
        z = x @ layer.kernel[...]
        if layer.bias is not None:
            z = z + layer.bias[...].reshape((1,) * (z.ndim - 1) + (-1,))
        return z
    raise ValueError(
        f"the reference computed the loss from the logits of the last layer, but jaxmask cannot recover them "
        f"from a final {type(layer).__name__}; end the model with Dense(activation=...) or Activation."
    )


def jm_forward(module, x, kwargs, want_logits=False):
    """(outputs list, output mask, logits or None) of a jaxmask Sequential or single layer."""
    if isinstance(module, jm.nn.Sequential):
        mask, logits = None, None
        layers = list(module.layers)
        for i, layer in enumerate(layers):
            next_mask = layer.compute_output_mask(x, mask)
            if want_logits and i == len(layers) - 1:
                logits = _pre_activation(layer, x)
            x = layer(x, mask=mask)
            mask = next_mask
        return [x], mask, logits
    if isinstance(module, jm.nn.Model):  # returns (outputs, output masks): only the outputs enter the loss
        outs, masks = module(x, **kwargs)
        return flatten(outs), masks, None
    outs = flatten(module(x, **kwargs))
    return outs, module.compute_output_mask(x, kwargs.get("mask")), None


def _jm_loss(spec, outs, mask, logits, y, sw):
    if isinstance(spec, MultiLoss):
        masks = mask if isinstance(mask, list) else [mask] * len(outs)
        return sum(weight * jax_loss(one, y_k, out, m, sw) for (one, weight), y_k, out, m
                   in zip(spec.losses, y, outs, masks))
    if spec is None:
        total = jnp.mean(jnp.square(outs[0]))
        for o in outs[1:]:
            total = total + jnp.mean(jnp.square(o))
        return total
    return jax_loss(spec, y, outs[0], mask, sw, logits)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _jm_value_and_grad(graphdef, spec, want_logits, params, rest, x, y, sw, kwargs):
    def f(params):
        module = nnx.merge(graphdef, params, rest)
        outs, mask, logits = jm_forward(module, x, kwargs, want_logits)
        values = _jm_loss(spec, outs, mask, logits, y, sw)
        return jnp.sum(values), (outs, mask, values)

    return jax.value_and_grad(f, has_aux=True)(params)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _jm_train_step(graphdef, spec, want_logits, tx_key, params, opt_state, rest, x, y, sw, kwargs):
    def f(params):
        module = nnx.merge(graphdef, params, rest)
        outs, mask, logits = jm_forward(module, x, kwargs, want_logits)
        return jnp.sum(_jm_loss(spec, outs, mask, logits, y, sw))

    loss, grads = jax.value_and_grad(f)(params)
    updates, opt_state = optim.make(*tx_key).update(grads, opt_state, params)
    return loss, optax.apply_updates(params, updates), opt_state


def _at(state, path):
    for key in path:
        state = state[key]
    return np.asarray(state[...])


def jm_evaluate(module, bindings, x, y=None, sw=None, spec=None, want_logits=False, kwargs=None) -> Result:
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    (loss, (outs, mask, values)), grads = _jm_value_and_grad(graphdef, spec, want_logits, params, rest, x, y, sw,
                                                             kwargs or {})
    mask = mask[0] if isinstance(mask, list) else mask  # the first output's, as the Keras side reports
    return Result(
        outputs=[np.asarray(o) for o in outs],
        mask=None if mask is None else np.asarray(mask).astype(bool),
        loss=float(loss),
        loss_values=np.asarray(values),
        grads={b.name: _at(grads, b.path) for b in bindings},
        uses_logits=want_logits,
    )


def jm_trajectory(module, x, y, sw, spec, steps, optimizer, learning_rate, want_logits=False, kwargs=None):
    """Losses before each of ``steps`` updates and after the last (the module is not modified)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    tx_key = (optimizer, float(learning_rate))
    opt_state = optim.make(*tx_key).init(params)
    losses = []
    for _ in range(steps):
        loss, params, opt_state = _jm_train_step(graphdef, spec, want_logits, tx_key, params, opt_state, rest, x, y, sw,
                                                 kwargs or {})
        losses.append(float(loss))
    (loss, _), _ = _jm_value_and_grad(graphdef, spec, want_logits, params, rest, x, y, sw, kwargs or {})
    losses.append(float(loss))
    return np.asarray(losses)
