"""Flax NNX recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional) over the one masked scan driver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask._checks import check_choice, check_mask
from jaxmask.functional import precision
from jaxmask.functional import rnn as F
from jaxmask.nn._core import Layer, as_input, dropout_keep_mask, keras_init, rng_stream

_KERAS_DOC = """
    ``stateful=True`` (with ``batch_size=B``) carries the final state of each call into the next, row by row, as
    Keras does: under a mask that is the state after each row's last valid step, so a long sequence fed in
    chunks gives what one call on the whole gives at every valid step — and at every step with
    ``initial_output="initial_state"``, where a chunk's leading masked steps repeat the carried output (Keras' JAX
    backend; its TF backend outputs 0 there). ``reset_states()`` zeroes the state.
    What a masked step outputs: the previous step's output (0 before the first valid step), or 0 with
    ``zero_output_for_mask=True``; every state is held. Padded inputs never reach the cell, so NaN/Inf in
    padding cannot leak. ``go_backwards=True`` processes the whole padded sequence reversed and returns
    outputs in that reversed order, while the output mask passed on is the *input* mask, unreversed
    (Keras' behaviour, reproduced on purpose).
"""


class RNNState(nnx.Variable):
    """The carried state of a stateful recurrent layer: [n_states, B, H] (h, then c for an LSTM)."""


class _RNN(Layer):
    """Shared machinery of LSTM, GRU and SimpleRNN: parameters, validation, dropout, the scan call."""

    _gates = 1

    def __init__(
        self,
        in_features: int,
        units: int,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        zero_output_for_mask: bool = False,
        activation: str | None = "tanh",
        use_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        unroll: int | bool = 1,
        initial_output: str = "zeros",
        remat: bool = False,
        use_cudnn: bool | str = "auto",
        dtype_policy: str | None = None,
        stateful: bool = False,
        batch_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("in_features", in_features), ("units", units)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
        for name, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1); received {value!r}.")
        check_choice("initial_output", initial_output, {"zeros", "initial_state"})
        if stateful and (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
                         or batch_size < 1):
            raise ValueError(f"`stateful=True` needs the fixed batch size the state is kept for: pass "
                             f"batch_size=B (a positive int); received batch_size={batch_size!r}.")
        F.get_activation(activation, "activation")
        self.in_features = int(in_features)
        self.units = int(units)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.zero_output_for_mask = zero_output_for_mask
        self.activation = activation
        self.use_bias = use_bias
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.unroll = unroll
        self.initial_output = initial_output
        self.remat = remat
        F.cudnn.check_use_cudnn(use_cudnn)
        self.use_cudnn = use_cudnn
        self.dtype_policy = precision.get_policy(dtype_policy)
        self.stateful = bool(stateful)
        self.batch_size = int(batch_size) if stateful else None
        self.deterministic = False
        self.rngs = rng_stream(rngs)
        g = self._gates * self.units
        self.kernel = nnx.Param(keras_init("glorot_uniform", rngs.params(), (self.in_features, g)))
        self.recurrent_kernel = nnx.Param(keras_init("orthogonal", rngs.params(), (self.units, g)))
        if use_bias:
            self.bias = nnx.Param(self._initial_bias())
        else:
            self.bias = nnx.data(None)
        if self.stateful:
            self.states = RNNState(jnp.zeros((self.state_size, self.batch_size, self.units), jnp.float32))
        else:
            self.states = nnx.data(None)

    # subclasses: cell() and _initial_bias()
    def _initial_bias(self):
        return jnp.zeros((self._gates * self.units,), jnp.float32)

    def cell(self) -> F.Cell:
        raise NotImplementedError

    @property
    def state_size(self) -> int:
        return len(self.cell().state_names)

    def params(self) -> dict:
        p = {"kernel": self.kernel[...], "recurrent_kernel": self.recurrent_kernel[...]}
        if self.bias is not None:
            p["bias"] = self.bias[...]
        return p

    def config(self) -> dict:
        """Constructor arguments (without ``rngs``): enough to build a twin layer."""
        keys = (
            "in_features units return_sequences return_state go_backwards zero_output_for_mask activation "
            "use_bias dropout recurrent_dropout unroll initial_output remat stateful batch_size use_cudnn dtype_policy"
        ).split()
        return {k: getattr(self, k) for k in keys} | self._extra_config()

    def _extra_config(self) -> dict:
        return {}

    def _dropout_masks(self, batch: int, dtype):
        if self.deterministic:
            return None, None
        masks = []
        for rate, width in ((self.dropout, self.in_features), (self.recurrent_dropout, self.units)):
            if rate == 0.0:
                masks.append(None)
                continue
            keep = dropout_keep_mask(self.rngs(), rate, (batch, width))
            masks.append(keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype))
        return tuple(masks)

    def __call__(self, x, mask=None, initial_state=None):
        """Run the layer.

        Args:
          x: [B, T, F] with F = ``in_features``.
          mask: bool [B, T], True = valid step, or None.
          initial_state: None (zeros, or the carried state when ``stateful``) or a list of [B, H] arrays, one
            per state.

        Returns:
          [B, T, H] if ``return_sequences`` else [B, H]; with ``return_state`` a tuple
          ``(outputs, *final_states)``.
        """
        name = type(self).__name__
        x = as_input(x, name, dtype="float")
        x = self.dtype_policy.cast(x)  # compute dtype; the recurrent state stays float32 under a mixed policy
        b, t, f = x.shape
        if self.stateful and b != self.batch_size:
            raise ValueError(f"{name}(stateful=True, batch_size={self.batch_size}) received a batch of {b} rows "
                             f"(x.shape={x.shape}); a stateful layer keeps one state per row of a fixed batch.")
        if f != self.in_features:
            raise ValueError(
                f"{name}(in_features={self.in_features}) received x with {f} features (x.shape={x.shape}); "
                f"build the layer with in_features={f} or fix the input."
            )
        if t == 0:
            raise ValueError(f"{name} needs at least one time step; received x.shape={x.shape}.")
        if mask is not None:
            mask = check_mask(mask, (b, t))
        cell = self.cell()
        if self.stateful and initial_state is None:
            state = tuple(self.states[...].astype(self.dtype_policy.state_dtype(x.dtype)))
        else:
            state = self._initial_state(initial_state, b, self.dtype_policy.state_dtype(x.dtype), len(cell.state_names))
        in_dp, rec_dp = self._dropout_masks(b, x.dtype)
        outputs, last, final = F.masked_scan(
            cell,
            self.dtype_policy.cast(self.params()),
            x,
            mask,
            state,
            go_backwards=self.go_backwards,
            zero_output_for_mask=self.zero_output_for_mask,
            initial_output=self.initial_output,
            input_dropout=in_dp,
            recurrent_dropout=rec_dp,
            unroll=self.unroll,
            remat=self.remat,
            use_cudnn=self.use_cudnn,
        )
        if self.stateful:
            self.states[...] = jnp.stack(final).astype(self.states.dtype)
        outputs, last, final = self.dtype_policy.cast((outputs, last, final))
        y = outputs if self.return_sequences else last
        return (y, *final) if self.return_state else y

    def reset_states(self, states=None) -> None:
        """Set the carried state of a stateful layer to zeros (or to ``states``, a list of [B, H] arrays).

        Keras equivalent: ``layer.reset_states()``.
        """
        if not self.stateful:
            raise ValueError(f"{type(self).__name__}.reset_states() needs stateful=True.")
        if states is None:
            self.states[...] = jnp.zeros_like(self.states[...])
        else:
            self.states[...] = jnp.stack(self._initial_state(states, self.batch_size, jnp.float32, self.state_size))

    def _initial_state(self, initial_state, batch, dtype, n):
        name = type(self).__name__
        if initial_state is None:
            return tuple(jnp.zeros((batch, self.units), dtype) for _ in range(n))
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        if len(initial_state) != n:
            raise ValueError(
                f"`initial_state` of {name} must be a list of {n} arrays of shape [B, H] = {(batch, self.units)}; "
                f"received {len(initial_state)} arrays."
            )
        out = []
        for s in initial_state:
            s = jnp.asarray(s)
            if s.shape != (batch, self.units):
                raise ValueError(
                    f"`initial_state` of {name} must hold arrays of shape [B, H] = {(batch, self.units)}; "
                    f"received shape {s.shape}."
                )
            out.append(s.astype(dtype))
        return tuple(out)

    def compute_output_mask(self, x, mask):
        return mask if self.return_sequences else None


class LSTM(_RNN):
    __doc__ = (
        """Keras-exact masked LSTM (gates i, f, c, o; weights kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H]).

    Keras equivalent: ``keras.layers.LSTM(units, ...)`` (unit_forget_bias=True: forget-gate bias starts at 1).
    """
        + _KERAS_DOC
        + """
    Example::

        lstm = jm.nn.LSTM(8, 100, return_sequences=True, rngs=nnx.Rngs(0))
        y = lstm(x, mask=jm.lengths_to_mask(lengths, x.shape[1]))   # [B, T, 100]
    """
    )

    _gates = 4

    def __init__(self, in_features, units, *, recurrent_activation="sigmoid", unit_forget_bias=True, rngs, **kw):
        F.get_activation(recurrent_activation, "recurrent_activation")
        self.recurrent_activation = recurrent_activation
        self.unit_forget_bias = unit_forget_bias
        super().__init__(in_features, units, rngs=rngs, **kw)

    def _initial_bias(self):
        h = self.units
        b = np.zeros((4 * h,), np.float32)
        if self.unit_forget_bias:
            b[h : 2 * h] = 1.0
        return jnp.asarray(b)

    def _extra_config(self):
        return {"recurrent_activation": self.recurrent_activation, "unit_forget_bias": self.unit_forget_bias}

    def cell(self):
        return F.lstm_cell(self.activation, self.recurrent_activation)


class GRU(_RNN):
    __doc__ = (
        """Keras-exact masked GRU (gates z, r, h; kernel [F, 3H], recurrent_kernel [H, 3H], bias [2, 3H] with
    ``reset_after=True`` (Keras 3 default) or [3H] with ``reset_after=False``).

    Keras equivalent: ``keras.layers.GRU(units, ...)``.
    """
        + _KERAS_DOC
    )

    _gates = 3

    def __init__(self, in_features, units, *, recurrent_activation="sigmoid", reset_after=True, rngs, **kw):
        F.get_activation(recurrent_activation, "recurrent_activation")
        self.recurrent_activation = recurrent_activation
        self.reset_after = reset_after
        super().__init__(in_features, units, rngs=rngs, **kw)

    def _initial_bias(self):
        shape = (2, 3 * self.units) if self.reset_after else (3 * self.units,)
        return jnp.zeros(shape, jnp.float32)

    def _extra_config(self):
        return {"recurrent_activation": self.recurrent_activation, "reset_after": self.reset_after}

    def cell(self):
        return F.gru_cell(self.activation, self.recurrent_activation, self.reset_after)


class SimpleRNN(_RNN):
    __doc__ = (
        """Keras-exact masked SimpleRNN: h' = tanh(x W + b + h U); kernel [F, H], recurrent_kernel [H, H], bias [H].

    Keras equivalent: ``keras.layers.SimpleRNN(units, ...)``.
    """
        + _KERAS_DOC
    )

    def cell(self):
        return F.simple_rnn_cell(self.activation)


_MERGES = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: (a + b) / 2,
    None: None,
}


class Bidirectional(Layer):
    """Runs a recurrent layer forwards and a twin backwards and merges them, as Keras' Bidirectional.

    As in Keras, both directions get ``zero_output_for_mask = return_sequences``, the backward layer has
    ``go_backwards`` flipped, and its sequence outputs are flipped back to input order before merging.
    Correct for pre-padding, post-padding and holes. With ``backward_layer=None`` the twin is built from the
    forward layer's config with fresh weights drawn from the forward layer's RNG stream.

    Args:
      forward_layer: an LSTM, GRU or SimpleRNN.
      merge_mode: "concat" | "sum" | "mul" | "ave" | None (returns ``[forward, backward]``).
      backward_layer: optional twin with the same ``units``, ``return_sequences`` and ``return_state``.

    Keras equivalent: ``keras.layers.Bidirectional(layer, merge_mode="concat", backward_layer=None)``.
    """

    def __init__(self, forward_layer: _RNN, merge_mode: str | None = "concat", backward_layer: _RNN | None = None):
        if not isinstance(forward_layer, _RNN):
            raise TypeError(
                f"`forward_layer` must be a jm.nn LSTM, GRU or SimpleRNN; received {type(forward_layer).__name__}."
            )
        if merge_mode not in _MERGES:
            raise ValueError(
                f"`merge_mode` must be one of 'concat', 'sum', 'mul', 'ave' or None; received {merge_mode!r}."
            )
        if backward_layer is None:
            cfg = forward_layer.config() | {"go_backwards": not forward_layer.go_backwards}
            backward_layer = type(forward_layer)(rngs=nnx.Rngs(forward_layer.rngs()), **cfg)
        else:
            if not isinstance(backward_layer, _RNN):
                raise TypeError(
                    f"`backward_layer` must be a jm.nn LSTM, GRU or SimpleRNN; "
                    f"received {type(backward_layer).__name__}."
                )
            for attr in ("return_sequences", "return_state", "in_features", "stateful"):
                if getattr(backward_layer, attr) != getattr(forward_layer, attr):
                    raise ValueError(
                        f"`backward_layer.{attr}` must equal `forward_layer.{attr}` = "
                        f"{getattr(forward_layer, attr)!r}; received {getattr(backward_layer, attr)!r}."
                    )
            if backward_layer.go_backwards == forward_layer.go_backwards:
                raise ValueError(
                    "`backward_layer.go_backwards` must be the opposite of `forward_layer.go_backwards`; "
                    f"both are {forward_layer.go_backwards}."
                )
        seq = forward_layer.return_sequences
        forward_layer.zero_output_for_mask = seq
        backward_layer.zero_output_for_mask = seq
        self.forward_layer = forward_layer
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = seq
        self.return_state = forward_layer.return_state
        self.in_features = forward_layer.in_features

    @property
    def stateful(self) -> bool:
        return self.forward_layer.stateful

    def reset_states(self) -> None:
        """Zero both directions' carried states. Keras equivalent: ``layer.reset_states()``."""
        self.forward_layer.reset_states()
        self.backward_layer.reset_states()

    @property
    def units(self) -> int:
        u = self.forward_layer.units + self.backward_layer.units
        return u if self.merge_mode == "concat" else self.forward_layer.units

    def __call__(self, x, mask=None, initial_state=None):
        """Args: x [B, T, F]; mask bool [B, T]; initial_state: forward states followed by backward states.

        Returns the merged output ([B, T, ·] or [B, ·]); with ``return_state`` ``(output, *fw_states, *bw_states)``.
        """
        fw_state = bw_state = None
        if initial_state is not None:
            n = len(initial_state)
            if n % 2:
                raise ValueError(
                    f"`initial_state` of Bidirectional must hold the forward states then the backward states "
                    f"(an even count); received {n} arrays."
                )
            fw_state, bw_state = list(initial_state[: n // 2]), list(initial_state[n // 2 :])
        fw = self.forward_layer(x, mask, fw_state)
        bw = self.backward_layer(x, mask, bw_state)
        states = ()
        if self.return_state:
            fw, states = fw[0], tuple(fw[1:]) + tuple(bw[1:])
            bw = bw[0]
        if self.return_sequences:
            bw = jnp.flip(bw, axis=1)
        merge = _MERGES[self.merge_mode]
        y = [fw, bw] if merge is None else merge(fw, bw)
        return (y, *states) if self.return_state else y

    def compute_output_mask(self, x, mask):
        return mask if self.return_sequences else None
