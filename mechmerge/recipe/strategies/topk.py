import numpy as np

from . import strategy
from ..view import ScoreView
from .share import shares, top_units


@strategy("topk", grid={"k": [4, 8, 16, 32], "background": [0.0, 0.25, 0.5]}, bounds={"k": (1, None)})
def topk(view: ScoreView, *, k: int = 8, background: float = 0.25, scale: float = 1.0, power: float = 1.0) -> np.ndarray:
    """Each expert owns its top-k units (by score) at full `scale`; all other units at
    `background * scale`. A unit in several experts' top-k is split between its claimants in
    proportion to their scores, so the claimants' total stays `scale` (experts that do not
    claim it still add their background)."""
    m = view.matrix()
    n_e = m.shape[0]
    top = top_units(m, k)
    w = np.full_like(m, background)
    claimed = top.sum(0)
    split = shares(view, power)
    for i in range(n_e):
        own = top[i] & (claimed == 1)
        w[i, own] = 1.0
        shared = top[i] & (claimed > 1)
        if shared.any():
            # renormalise the share among the claimants only
            claim = np.where(top[:, shared], split[:, shared], 0.0)
            tot = claim.sum(0)
            w[i, shared] = np.where(tot > 0, claim[i] / np.where(tot > 0, tot, 1.0), 1.0 / claimed[shared])
    return scale * w
