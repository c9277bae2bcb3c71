"""Patch a *set* of units at once and measure how much behaviour it carries, plus the
two controls every reported top-K set comes with: a random set of the same size and
the set of the same size with the largest task-vector norms."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from ..models.units import Unit
from ..patching.engine import measure_m, safe_ratio


def m_of(setup, batches) -> float:
    lp, n = measure_m(setup.runner, batches)
    return lp / n


def baselines(setup, name: str, batches=None) -> Dict[str, float]:
    """m(B) and m(E) of expert `name` on `batches` (default: its own probes)."""
    batches = batches if batches is not None else setup.batches[name]
    m_b = m_of(setup, batches)
    with setup.swapper.swapped_to(setup.experts[name], setup.base, setup.param_names):
        m_e = m_of(setup, batches)
    return {"base": m_b, "expert": m_e}


def recovery(setup, name: str, units: Sequence[Unit], bl: Dict[str, float], batches=None) -> float:
    """(m(B ⊕ E[S]) − m(B)) / (m(E) − m(B)): the share of the expert's behaviour S carries."""
    batches = batches if batches is not None else setup.batches[name]
    with setup.swapper.patched(list(units), setup.experts[name]):
        m = m_of(setup, batches)
    return safe_ratio(m - bl["base"], bl["expert"] - bl["base"])


def knockout(setup, name: str, units: Sequence[Unit], bl: Dict[str, float], batches=None) -> float:
    """(m(E) − m(E ⊕ B[S])) / (m(E) − m(B)): what reverting S inside the expert breaks."""
    batches = batches if batches is not None else setup.batches[name]
    with setup.swapper.swapped_to(setup.experts[name], setup.base, setup.param_names):
        with setup.swapper.patched(list(units), setup.base):
            m = m_of(setup, batches)
    return safe_ratio(bl["expert"] - m, bl["expert"] - bl["base"])


def top_k(modules: Dict[str, dict], k: int, key: str = "patch_in", among: Sequence[str] | None = None) -> List[str]:
    """The k units with the largest positive `key` score (fewer if fewer carry anything)."""
    names = [u for u in (among if among is not None else modules) if (modules[u].get(key) or 0.0) > 0]
    return sorted(names, key=lambda u: -modules[u][key])[:k]


def controls(units: Sequence[str], k: int, norms: np.ndarray, seed: int) -> Dict[str, List[str]]:
    """Same-size control sets: random (seeded) and largest ‖E − B‖."""
    rng = np.random.default_rng(seed)
    rand = [units[i] for i in sorted(rng.choice(len(units), size=min(k, len(units)), replace=False))]
    mag = [units[i] for i in np.argsort(-norms, kind="stable")[:k]]
    return {"random": rand, "magnitude": mag}
