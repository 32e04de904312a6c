"""Independent NumPy references: plain Python loops over batch and time, float64, written from the Keras
equations and not from jaxmask's code. Tests compare jaxmask against these and against Keras itself."""

from __future__ import annotations

import numpy as np

TOL = {  # one tolerance table for the suite
    "float32": dict(atol=1e-5, rtol=1e-5),
    "float64": dict(atol=1e-10, rtol=1e-10),
    "grad32": dict(atol=1e-4, rtol=1e-4),
}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(p, state, x):
    h, c = state
    z = x @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
    n = h.shape[-1]
    i, f, g, o = (z[k * n : (k + 1) * n] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return h, [h, c]


def gru_step(p, state, x, reset_after=True):
    (h,) = state
    n = h.shape[-1]
    k, u = p["kernel"], p["recurrent_kernel"]
    if reset_after:
        bx, bh = p["bias"][0], p["bias"][1]
        mx = x @ k + bx
        mh = h @ u + bh
        z = sigmoid(mx[:n] + mh[:n])
        r = sigmoid(mx[n : 2 * n] + mh[n : 2 * n])
        hh = np.tanh(mx[2 * n :] + r * mh[2 * n :])
    else:
        b = p["bias"]
        z = sigmoid(x @ k[:, :n] + b[:n] + h @ u[:, :n])
        r = sigmoid(x @ k[:, n : 2 * n] + b[n : 2 * n] + h @ u[:, n : 2 * n])
        hh = np.tanh(x @ k[:, 2 * n :] + b[2 * n :] + (r * h) @ u[:, 2 * n :])
    h = z * h + (1 - z) * hh
    return h, [h]


def simple_step(p, state, x):
    (h,) = state
    h = np.tanh(x @ p["kernel"] + p["bias"] + h @ p["recurrent_kernel"])
    return h, [h]


STEPS = {
    "lstm": lstm_step,
    "gru": gru_step,
    "gru_v1": lambda p, s, x: gru_step(p, s, x, reset_after=False),
    "simple": simple_step,
}


def rnn(kind, params, x, mask=None, initial_state=None, go_backwards=False, zero_output_for_mask=False):
    """Keras' masked RNN on the TF backend, one sample and one step at a time.

    Returns (outputs [B, T, H] in processed order, last_output [B, H], final states list of [B, H]).
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    h_units = p["recurrent_kernel"].shape[0]
    n_states = 2 if kind == "lstm" else 1
    mask = np.ones((b, t), bool) if mask is None else np.asarray(mask, bool)
    outputs = np.zeros((b, t, h_units))
    finals = [np.zeros((b, h_units)) for _ in range(n_states)]
    for i in range(b):
        state = [np.zeros(h_units) if initial_state is None else np.asarray(s[i], np.float64) for s in initial_state or [None] * n_states]
        prev = np.zeros(h_units)
        order = range(t - 1, -1, -1) if go_backwards else range(t)
        for k, step in enumerate(order):
            if mask[i, step]:
                out, state = STEPS[kind](p, state, x[i, step])
            else:
                out = np.zeros(h_units) if zero_output_for_mask else prev
            outputs[i, k] = out
            prev = out
        for j in range(n_states):
            finals[j][i] = state[j]
    return outputs, outputs[:, -1], finals


def bidirectional(kind, fw_params, bw_params, x, mask=None, merge_mode="concat", return_sequences=True):
    """Keras Bidirectional: zero_output_for_mask = return_sequences on both; backward outputs flipped back."""
    fw, fw_last, _ = rnn(kind, fw_params, x, mask, zero_output_for_mask=return_sequences)
    bw, bw_last, _ = rnn(kind, bw_params, x, mask, go_backwards=True, zero_output_for_mask=return_sequences)
    if return_sequences:
        a, c = fw, bw[:, ::-1]
    else:
        a, c = fw_last, bw_last
    return {
        "concat": lambda: np.concatenate([a, c], -1),
        "sum": lambda: a + c,
        "mul": lambda: a * c,
        "ave": lambda: (a + c) / 2,
        None: lambda: [a, c],
    }[merge_mode]()
