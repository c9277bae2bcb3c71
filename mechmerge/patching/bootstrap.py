"""--bootstrap N: confidence intervals for every exact score by resampling probes.

Each replicate draws the probe set with replacement (multinomial weights w_p) and
recomputes every ratio from per-probe sums: m* = Σ w_p Σlog p / Σ w_p n_p. The anchor
direction v is held fixed at its full-data estimate (re-estimating it per replicate
would change what the score measures). Attribution estimates get no interval.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def _vec(x) -> Optional[np.ndarray]:
    return None if x is None else np.asarray(x, dtype=np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(np.isfinite(r), r, 0.0)


def intervals(result, n_tok: np.ndarray, replicates: int, seed: int, level: float,
              phases: Sequence[str], units: Sequence[str]) -> Dict[str, Dict[str, List[float]]]:
    """unit -> score key -> [low, high] at `level` (percentile intervals)."""
    P = len(n_tok)
    rng = np.random.default_rng(seed)
    W = rng.multinomial(P, np.full(P, 1.0 / P), size=replicates).astype(np.float64)  # [R, P]
    N = W @ n_tok
    lp_b, lp_e = _vec(result.base.lp_probe), _vec(result.expert.lp_probe)
    m_b, m_e = W @ lp_b / N, W @ lp_e / N
    gap = m_e - m_b
    a_b_p, a_e_p = _vec(result.anchor.per_probe(result.base)), _vec(result.anchor.per_probe(result.expert))
    a_b, a_e = W @ a_b_p / N, W @ a_e_p / N
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out: Dict[str, Dict[str, List[float]]] = {}
    for u in units:
        ci: Dict[str, List[float]] = {}
        if result.same[u]:
            out[u] = {p: [0.0, 0.0] for p in phases}
            continue
        for phase in phases:
            m = result.raw[phase].get(u)
            if m is None or m.lp_probe is None:
                continue
            mu = W @ _vec(m.lp_probe) / N
            score = _ratio(mu - m_b, gap) if phase == "patch_in" else _ratio(m_e - mu, gap)
            ci[phase] = [float(x) for x in np.percentile(score, q)]
            if phase == "patch_in" and m.a_probe is not None:
                au = W @ _vec(m.a_probe) / N
                ci["anchor"] = [float(x) for x in np.percentile(_ratio(au - a_b, a_e - a_b), q)]
        out[u] = ci
    return out


def ties(ranked: Sequence[str], ci: Dict[str, Dict[str, List[float]]], key: str) -> List[bool]:
    """tie[i]: unit i's interval overlaps unit i+1's (their order is not established)."""
    out = []
    for a, b in zip(ranked, ranked[1:]):
        ia, ib = ci.get(a, {}).get(key), ci.get(b, {}).get(key)
        out.append(bool(ia and ib and ia[0] <= ib[1]))
    return out + [False] if ranked else []
