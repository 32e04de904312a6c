"""Fast path for the standard LSTM (sigmoid gates, tanh): a masked recurrence with a hand-written VJP.

Measured on XLA:CPU (see benchmarks/), three things dominate autodiff of a plain ``lax.scan`` LSTM:
the time-parallel input projection ``[T·B, F] x [F, 4H]`` with a small F (slow in the CPU matmul library),
the [T, B, 4H] buffers it and the stacked residuals need, and the recurrent-weight gradient formed as T
small matmuls inside the backward loop. Here each step does one matmul ``[x_t, h ⊙ r] W`` with
``W = [kernel; recurrent_kernel]``; the backward loop carries only (dh, dc) and emits the gate gradients
dZ; the weight gradient is one large matmul ``dW = [X, H_prev ⊙ r]ᵀ dZ`` and the input gradient another.

Forward, per step (m = mask, r = recurrent dropout mask or 1):

.. math::
    z = [x_t, h ⊙ r] W + b,\\; i, f, o = σ(z_{i,f,o}),\\; g = \\tanh z_c,\\;
    \\tilde c = f c + i g,\\; \\tilde h = o \\tanh \\tilde c,\\;
    (h, c) \\leftarrow m\\,?\\,(\\tilde h, \\tilde c) : (h, c)

The numbers equal :func:`jaxmask.functional.rnn.masked_scan` with ``fused=False`` (tested).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _gates(z):
    zi, zf, zc, zo = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zc), jax.nn.sigmoid(zo)


@functools.lru_cache(maxsize=None)
def lstm_scan(has_mask: bool, has_dropout: bool, unroll: int | bool, remat: bool):
    """Build ``scan(W, b, x, mask, h0, c0, r) -> (H [T, B, H], h_T, c_T)`` with a custom VJP.

    Args of the built function: W [F + H, 4H] (kernel stacked over recurrent_kernel); b [4H];
    x [T, B, F] time-major inputs (padding already zeroed); mask bool [T, B] (ignored unless ``has_mask``);
    h0, c0 [B, H]; r [B, H] recurrent dropout, scaled (ignored unless ``has_dropout``). H[t] is the (held)
    hidden state after step t. ``remat=True`` keeps only c per step and recomputes the gates in the backward
    pass (one more matmul per step, [T, B, 4H] less memory: for very long sequences).
    """

    def step_gates(W, b, x_t, hr):
        return _gates(jnp.concatenate([x_t, hr], axis=-1) @ W + b[None, :])

    def forward(W, b, x, mask, h0, c0, r, keep_residuals):
        def body(carry, inputs):
            h, c = carry
            x_t, m_t = inputs
            i, f, g, o = step_gates(W, b, x_t, h * r if has_dropout else h)
            c_new = f * c + i * g
            tc = jnp.tanh(c_new)
            h_new = o * tc
            if has_mask:
                keep = m_t[:, None]
                h_new = jnp.where(keep, h_new, h)
                c_new = jnp.where(keep, c_new, c)
            if not keep_residuals:
                saved = None
            elif remat:
                saved = c
            else:
                saved = (jnp.concatenate([i, f, g, o], axis=-1), c, tc)
            return (h_new, c_new), (h_new, saved)

        (h_t, c_t), (hs, saved) = lax.scan(body, (h0, c0), (x, mask if has_mask else None), unroll=unroll)
        return hs, h_t, c_t, saved

    @jax.custom_vjp
    def scan(W, b, x, mask, h0, c0, r):
        hs, h_t, c_t, _ = forward(W, b, x, mask, h0, c0, r, False)
        return hs, h_t, c_t

    def scan_fwd(W, b, x, mask, h0, c0, r):
        hs, h_t, c_t, saved = forward(W, b, x, mask, h0, c0, r, True)
        return (hs, h_t, c_t), (W, b, x, mask, h0, r, hs, saved)

    def scan_bwd(res, cotangents):
        W, b, x, mask, h0, r, hs, saved = res
        d_hs, d_ht, d_ct = cotangents
        n_in = x.shape[-1]
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # [T, B, H]: the h each step started from
        if has_dropout:
            h_prev = h_prev * r[None]
        u_t = W[n_in:].T

        def body(carry, inputs):
            dh, dc = carry
            d_h_t, m_t, step_inputs = inputs
            dh = dh + d_h_t
            if remat:
                x_t, hp_t, c_prev = step_inputs
                i, f, g, o = step_gates(W, b, x_t, hp_t)
                tc = jnp.tanh(f * c_prev + i * g)
            else:
                gates, c_prev, tc = step_inputs
                i, f, g, o = jnp.split(gates, 4, axis=-1)
            dcn = dc + dh * o * (1.0 - tc * tc)
            dz = jnp.concatenate(
                [dcn * g * i * (1.0 - i), dcn * c_prev * f * (1.0 - f), dcn * i * (1.0 - g * g), dh * tc * o * (1.0 - o)],
                axis=-1,
            )
            dc_prev = dcn * f
            if has_mask:
                keep = m_t[:, None]
                dz = jnp.where(keep, dz, jnp.zeros((), dz.dtype))
                dc_prev = jnp.where(keep, dc_prev, dc)
            dh_prev = dz @ u_t
            if has_dropout:
                dh_prev = dh_prev * r
            if has_mask:
                dh_prev = jnp.where(keep, dh_prev, dh)
            return (dh_prev, dc_prev), dz

        step_inputs = (x, h_prev, saved) if remat else saved
        xs = (d_hs, mask if has_mask else None, step_inputs)
        # the cotangent of h_T enters with the last step's, so it starts the carry
        (dh0, dc0), dz = lax.scan(body, (d_ht, d_ct), xs, reverse=True, unroll=unroll)
        t, bsz, g4 = dz.shape
        dz_flat = dz.reshape(t * bsz, g4)
        inputs = jnp.concatenate([x, h_prev], axis=-1).reshape(t * bsz, -1)
        d_w = inputs.T @ dz_flat
        d_x = (dz_flat @ W[:n_in].T).reshape(t, bsz, n_in)
        return d_w, jnp.sum(dz_flat, axis=0), d_x, None, dh0, dc0, None

    scan.defvjp(scan_fwd, scan_bwd)
    return scan
