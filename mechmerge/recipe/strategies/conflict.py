import numpy as np

from . import strategy
from ..view import ScoreView
from .share import shares, top_units


@strategy("conflict", grid={"k": [4, 8, 16, 32], "background": [0.0, 0.25, 0.5]},
          bounds={"k": (1, None), "agree": (-1.0, 1.0)})
def conflict(view: ScoreView, *, k: int = 8, background: float = 0.25, scale: float = 1.0,
             agree: float = 0.0) -> np.ndarray:
    """topk, but a unit several experts claim is resolved by the conflict between them:
    where their task vectors agree on the unit (cosine > `agree`) every claimant keeps it
    at full `scale`; where they disagree the highest-scoring claimant takes it alone."""
    m = view.matrix()
    top = top_units(m, k)
    w = np.full_like(m, background)
    w[top] = 1.0
    contested = np.flatnonzero(top.sum(0) > 1)
    if contested.size:
        cos = view.cosines()
        split = shares(view)
        for u in contested:
            who = np.flatnonzero(top[:, u])
            pair = cos[u][np.ix_(who, who)]
            if (pair[np.triu_indices(len(who), 1)] <= agree).any():
                winner = who[np.argmax(split[who, u])]
                w[who, u] = 0.0
                w[winner, u] = 1.0
    return scale * w
