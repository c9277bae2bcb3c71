import numpy as np

from . import strategy
from ..view import ScoreView


def shares(view: ScoreView, power: float = 1.0) -> np.ndarray:
    """Each unit's split across experts, proportional to max(score, 0)**power.

    Columns sum to 1; a unit no expert scores above 0 is split evenly.
    """
    s = np.clip(view.matrix(), 0.0, None) ** power
    total = s.sum(0, keepdims=True)
    even = np.full_like(s, 1.0 / s.shape[0])
    return np.where(total > 0, s / np.where(total > 0, total, 1.0), even)


def top_units(m: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (experts x units): each expert's k highest-scoring units, ties broken by
    unit order so recipes are reproducible, keeping only units it scores above 0."""
    top = np.zeros_like(m, dtype=bool)
    for i in range(m.shape[0]):
        order = np.argsort(-m[i], kind="stable")[: max(0, min(k, m.shape[1]))]
        top[i, order[m[i, order] > 0]] = True
    return top


@strategy("share", grid={"scale": [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]})
def share(view: ScoreView, *, scale: float = 1.0, power: float = 1.0) -> np.ndarray:
    """Each unit's weight split across experts in proportion to their scores.

    w[e, u] = scale * share[e, u]: a unit only one expert needs goes to it at full
    `scale`; a unit several need is shared. With one expert every unit gets `scale`.
    """
    return scale * shares(view, power)
