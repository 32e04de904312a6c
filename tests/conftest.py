"""Strict JAX for the whole suite: implicit rank promotion is an error (a [B, T] mask silently broadcast
against [B, T, H] fails loudly). Float64 is enabled per test with ``jax.enable_x64(True)`` where needed.

Hypothesis profiles: "ci" (the default: derandomized, few examples, no example database) and "slow"
(``HYPOTHESIS_PROFILE=slow``: 10,000 examples per property, random; see tests/PROPERTIES.md). Tests that
pin ``max_examples`` in their own ``@settings`` keep it under both profiles."""

import os

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None, database=None, print_blob=True)
settings.register_profile(
    "slow",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
