"""Padded batches for graph cases: token ids and feature sequences with post-, pre-padding or holes."""

from __future__ import annotations

import zlib

import numpy as np

B, T, F, VOCAB = 4, 7, 3, 20


def _rng(key: str):
    return np.random.default_rng(zlib.crc32(key.encode()))


def valid(padding: str, t: int = T, full_row: bool = True) -> np.ndarray:
    """bool [B, t]: row 0 full, rows 1-2 of lengths t-2 and 2 (holes: two gaps), row 3 fully padded (or of
    length t-1 with ``full_row=False``)."""
    m = np.ones((B, t), bool)
    lengths = [t, t - 2, 2, 0 if full_row else t - 1]
    for i, n in enumerate(lengths):
        if padding == "post":
            m[i, n:] = False
        elif padding == "pre":
            m[i, : t - n] = False
        elif padding == "holes":
            m[i] = True
            if i == 1:
                m[i, [1, 4]] = False
            if i == 2:
                m[i, 2:5] = False
            if i == 3:
                m[i] = not full_row
        else:
            raise ValueError(padding)
    return m


def tokens(padding: str, key: str, t: int = T, vocab: int = VOCAB, full_row: bool = True) -> np.ndarray:
    """int32 [B, t] token ids in [1, vocab), 0 at padded steps."""
    ids = _rng(key).integers(1, vocab, size=(B, t)).astype(np.int32)
    return np.where(valid(padding, t, full_row), ids, 0).astype(np.int32)


def features(padding: str, key: str, t: int = T, f: int = F, full_row: bool = True) -> np.ndarray:
    """float32 [B, t, f] normal features, 0 at padded steps (what Masking() looks for)."""
    x = _rng(key).normal(size=(B, t, f)).astype(np.float32)
    return np.where(valid(padding, t, full_row)[:, :, None], x, 0.0).astype(np.float32)


def static(key: str, f: int = 2) -> np.ndarray:
    return _rng(key).normal(size=(B, f)).astype(np.float32)
