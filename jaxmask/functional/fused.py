"""Fast path for the standard LSTM (sigmoid gates, tanh): a masked recurrence with a hand-written VJP.

Autodiff of ``lax.scan`` forms the recurrent-weight gradient as T small [H, B] x [B, 4H] matmuls
accumulated in the loop carry. Here the backward scan only carries (dh, dc) and emits the gate
gradients dZ [T, B, 4H]; the weight gradient is then one large matmul
``dU = Σ_t (h_{t-1} ⊙ r)ᵀ dZ_t``, which is how cuDNN-class kernels win.

Forward, per step (m = mask, r = recurrent dropout mask or 1):

.. math::
    z = x_t + (h ⊙ r) U,\\; i, f, o = σ(z_{i,f,o}),\\; g = \\tanh z_c,\\;
    \\tilde c = f c + i g,\\; \\tilde h = o \\tanh \\tilde c,\\;
    (h, c) \\leftarrow m\\,?\\,(\\tilde h, \\tilde c) : (h, c)

The numbers equal :func:`jaxmask.functional.rnn.masked_scan` with ``lstm_cell()`` (tested).
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
    """Build ``scan(U, xp, mask, h0, c0, r) -> (H [T, B, H], h_T, c_T)`` with a custom VJP.

    Args of the built function: U [H, 4H]; xp [T, B, 4H] projected inputs (x W + b); mask bool [T, B]
    (ignored unless ``has_mask``); h0, c0 [B, H]; r [B, H] recurrent dropout (ignored unless
    ``has_dropout``). H[t] is the (held) hidden state after step t. ``remat=True`` stores only h and c per
    step and recomputes the gates in the backward pass (memory T·B·2H instead of T·B·7H).
    """

    def cell(U, xp_t, h, c, r):
        hr = h * r if has_dropout else h
        i, f, g, o = _gates(xp_t + hr @ U)
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        return i, f, g, o, c_new, tc, o * tc

    def forward(U, xp, mask, h0, c0, r):
        def body(carry, inputs):
            h, c = carry
            xp_t, m_t = inputs
            i, f, g, o, c_new, tc, h_new = cell(U, xp_t, h, c, r)
            if has_mask:
                keep = m_t[:, None]
                h_new = jnp.where(keep, h_new, h)
                c_new = jnp.where(keep, c_new, c)
            saved = (c,) if remat else (jnp.concatenate([i, f, g, o], axis=-1), tc, c)
            return (h_new, c_new), (h_new, saved)

        (h_t, c_t), (hs, saved) = lax.scan(body, (h0, c0), (xp, mask if has_mask else None), unroll=unroll)
        return hs, h_t, c_t, saved

    @jax.custom_vjp
    def scan(U, xp, mask, h0, c0, r):
        hs, h_t, c_t, _ = forward(U, xp, mask, h0, c0, r)
        return hs, h_t, c_t

    def scan_fwd(U, xp, mask, h0, c0, r):
        hs, h_t, c_t, saved = forward(U, xp, mask, h0, c0, r)
        return (hs, h_t, c_t), (U, xp if remat else None, mask, h0, r, hs, saved)

    def scan_bwd(res, cotangents):
        U, xp, mask, h0, r, hs, saved = res
        d_hs, d_ht, d_ct = cotangents
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        if has_dropout:
            h_prev = h_prev * r[None]
        u_t = U.T

        def body(carry, inputs):
            dh, dc = carry
            d_h_t, m_t, hp_t, xp_t, saved_t = inputs
            dh = dh + d_h_t
            if remat:
                (c_prev,) = saved_t
                i, f, g, o = _gates(xp_t + hp_t @ U)
                tc = jnp.tanh(f * c_prev + i * g)
            else:
                gates, tc, c_prev = saved_t
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

        d_hs = d_hs.at[-1].add(d_ht)
        xs = (d_hs, mask if has_mask else None, h_prev, xp if remat else None, saved)
        (dh0, dc0), dz = lax.scan(body, (jnp.zeros_like(h0), d_ct), xs, reverse=True, unroll=unroll)
        t, b, g4 = dz.shape
        d_u = h_prev.reshape(t * b, -1).T @ dz.reshape(t * b, g4)
        return d_u, dz, None, dh0, dc0, None

    scan.defvjp(scan_fwd, scan_bwd)
    return scan
