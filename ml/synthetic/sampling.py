"""Vectorised sampling: CDFs searched for many draws at once, also within groups, and hex ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

HASH_HEX = 32  # Coveo uses sha256 (64); half the width halves the CSV bytes
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_strings(rng: np.random.Generator, n: int, width: int = HASH_HEX) -> pa.StringArray:
    """n random lowercase hex strings, built straight into Arrow buffers."""
    raw = np.frombuffer(rng.bytes(n * width // 2), dtype=np.uint8).reshape(n, width // 2)
    text = np.empty((n, width), dtype=np.uint8)
    text[:, 0::2] = _HEX[raw >> 4]
    text[:, 1::2] = _HEX[raw & 15]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def count(rng: np.random.Generator, mu_sigma: tuple[float, float], n: int, cap: int) -> np.ndarray:
    """floor(lognormal): a count with a long right tail."""
    draw = np.floor(np.exp(rng.normal(mu_sigma[0], mu_sigma[1], n)))
    return np.minimum(draw, cap).astype(np.int64)


def cdf(weights: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(weights, dtype=np.float64)
    cumulative /= cumulative[-1]
    cumulative[-1] = 1.0
    return cumulative


def draw(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)


def grouped_cdf(group: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and keys `group + within-group CDF`, so one searchsorted samples every group."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    w = weight[order].astype(np.float64)
    keys = within_cdf(g, w)
    return order, keys


def within_cdf(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`g + cumulative share within g` for rows sorted by g; each group ends exactly at g + 1."""
    n_groups = int(g.max()) + 1 if len(g) else 0
    total = np.bincount(g, weights=w, minlength=n_groups)
    before = np.concatenate([[0.0], np.cumsum(total)])[:-1]
    within = (np.cumsum(w) - before[g]) / np.where(total > 0, total, 1.0)[g]
    last = np.flatnonzero(np.diff(np.append(g, -1)) != 0)
    within[last] = 1.0
    return g + within


def grouped_draw(
    order: np.ndarray, keys: np.ndarray, groups: np.ndarray, u: np.ndarray
) -> np.ndarray:
    return order[np.searchsorted(keys, groups + u, side="right")]


def group_heads(
    group: np.ndarray, pop: np.ndarray, n_groups: int, head: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of each group's `head` most popular living products, with normalised popularity."""
    order = np.lexsort((-pop, group))
    g = group[order]
    first = np.searchsorted(g, np.arange(n_groups))
    rank = np.arange(len(g)) - first[g]
    keep = (rank < head) & (pop[order] > 0)
    members, g = order[keep], g[keep]
    ptr = np.zeros(n_groups + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(g, minlength=n_groups))
    total = np.bincount(g, weights=pop[members], minlength=n_groups)
    return ptr, members, pop[members] / total[g]


def expand(
    groups: np.ndarray, ptr: np.ndarray, members: np.ndarray, share: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each source (by its group), one row per member of its group's CSR list."""
    lengths = ptr[groups + 1] - ptr[groups]
    source = np.repeat(np.arange(len(groups)), lengths)
    ends = np.cumsum(lengths)
    at = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)
    at += np.repeat(ptr[groups], lengths)
    return source, members[at], share[at]
