"""Sequential: a stack of layers that propagates the mask exactly as Keras does."""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxmask._checks import check_mask
from jaxmask.nn._core import Layer


class Sequential(Layer):
    """A stack of jaxmask layers; ``model(x, mask=None) -> (outputs, output_mask)``.

    Each layer receives the mask produced by the layers before it (Masking and ``Embedding(mask_zero=True)``
    create one; Dense, Dropout, Activation and TimeDistributed pass it on; an RNN with
    ``return_sequences=True`` passes it on and with ``False`` drops it; GlobalAveragePooling1D consumes it).
    The returned ``output_mask`` is what Keras attaches to the model output (``_keras_mask``) and what
    ``jm.masked_loss`` should receive.

    Keras equivalent: ``keras.Sequential([...])`` with ``model(x)._keras_mask``.

    Example::

        model = jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(8, 100, return_sequences=True, rngs=rngs),
                                  jm.nn.Dense(100, 1, activation="sigmoid", rngs=rngs)])
        y, mask = model(x)       # y [B, T, 1], mask bool [B, T]
    """

    returns_mask = True

    def __init__(self, layers):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"`layers[{i}]` must be a jm.nn layer; received {type(layer).__name__}. "
                    "Wrap plain functions in jm.nn.Activation or write a jm.nn.Layer."
                )
            if getattr(layer, "return_state", False):
                raise ValueError(
                    f"`layers[{i}]` ({type(layer).__name__}) has return_state=True, which a Sequential model cannot "
                    "pass on (Keras refuses it too); call the layer directly."
                )
        self.layers = nnx.List(layers)

    def __call__(self, x, mask=None):
        if mask is not None:
            mask = check_mask(mask, np.shape(x)[:2])
        for layer in self.layers:
            if getattr(layer, "returns_mask", False):  # a nested Sequential or Model
                x, mask = layer(x, mask=mask)
                continue
            next_mask = layer.compute_output_mask(x, mask)
            x = layer(x, mask=mask)
            mask = next_mask
        return x, mask

    def reset_states(self) -> None:
        """Zero the carried state of every stateful layer (Keras' ``model.reset_states()``)."""
        for layer in self.layers:
            if hasattr(layer, "reset_states") and getattr(layer, "stateful", True):
                layer.reset_states()
