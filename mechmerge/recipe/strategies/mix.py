import numpy as np

from . import strategy
from ..view import ScoreView
from .share import shares


@strategy("mix", grid={"scale": [0.6, 0.8, 1.0, 1.2, 1.5], "alpha": [0.25, 0.5, 0.75]})
def mix(view: ScoreView, *, scale: float = 1.0, alpha: float = 0.5, power: float = 1.0) -> np.ndarray:
    """Uniform interpolated with share, both at `scale`: (1 - alpha) * uniform + alpha * share.

    alpha = 0 is uniform task arithmetic, alpha = 1 is share.
    """
    return scale * ((1.0 - alpha) + alpha * shares(view, power))
