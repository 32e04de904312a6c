"""Strict JAX for the whole suite: implicit rank promotion is an error (a [B, T] mask silently broadcast
against [B, T, H] fails loudly). Float64 is enabled per test with ``jax.enable_x64(True)`` where needed."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
