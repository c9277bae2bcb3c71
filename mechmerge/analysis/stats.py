"""Rank statistics shared by track and agreement (numpy only: no torch behind them)."""

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing their mean rank (ordinal ranks would order a block of
    tied zeros, e.g. units a fine-tune left untouched, by position and invent a correlation)."""
    x = np.asarray(x)
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=float)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / counts)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])
