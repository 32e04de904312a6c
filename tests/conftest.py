"""Strict JAX for the whole suite: implicit rank promotion is an error, float64 available for check_grads."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)
