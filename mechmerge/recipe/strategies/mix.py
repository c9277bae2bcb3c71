import numpy as np

from . import strategy
from ..view import ScoreView
from .share import shares


@strategy("mix", grid={"scale": [1.0, 1.25, 1.5, 1.75, 2.0], "alpha": [0.5, 0.75, 1.0]}, bounds={"alpha": (0.0, 1.0)})
def mix(view: ScoreView, *, scale: float = 1.0, alpha: float = 0.5, power: float = 1.0) -> np.ndarray:
    """Uniform interpolated with share, both at `scale`: (1 - alpha) * uniform + alpha * share.

    alpha = 0 is uniform task arithmetic, alpha = 1 is share.
    """
    return scale * ((1.0 - alpha) + alpha * shares(view, power))
