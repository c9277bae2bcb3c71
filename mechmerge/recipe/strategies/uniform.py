import numpy as np

from . import strategy
from ..view import ScoreView


@strategy("uniform", grid={"scale": [0.3, 0.5, 0.7, 0.85, 1.0, 1.2]})
def uniform(view: ScoreView, *, scale: float = 1.0) -> np.ndarray:
    """Plain task arithmetic, the baseline: every unit of every expert at `scale`."""
    return np.full((len(view.experts), len(view.units)), scale)
